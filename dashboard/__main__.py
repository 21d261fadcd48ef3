"""``python -m dashboard``: the managers' dashboard alone (the worker need not run)."""

from __future__ import annotations

import asyncio
import sys
from signal import SIGINT, SIGTERM

from dashboard.server import DashboardUnavailable, serve_dashboard
from settings import load_settings


async def _main() -> None:
    settings = load_settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (SIGINT, SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        await serve_dashboard(settings, stop)
    except DashboardUnavailable as error:
        print(f"dashboard: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print("dashboard: stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(_main())
