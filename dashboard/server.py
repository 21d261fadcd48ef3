"""Serving the dashboard on its own port (``DEALFLOW_DASHBOARD_HOST:DEALFLOW_DASHBOARD_PORT``),
next to the worker in ``make dev`` or alone (``python -m dashboard``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

import uvicorn

from dashboard.access import Access, DashboardRefused
from dashboard.app import build_app
from ledger.database import LedgerDatabase
from settings import Settings


class DashboardUnavailable(Exception):
    """The dashboard cannot listen (port taken, bad host, no sign-in beyond loopback)."""


class _Server(uvicorn.Server):
    # Whoever runs us owns SIGINT/SIGTERM (the worker stops everything on one event).
    def capture_signals(self) -> Any:
        return nullcontext()


def _listen(host: str, port: int) -> socket.socket:
    # Bound here, not by uvicorn, which answers a taken port with sys.exit().
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        # Listening now, not when uvicorn starts: the port is ours before we say so.
        listener.listen()
    except (OSError, OverflowError) as error:
        listener.close()
        reason = getattr(error, "strerror", None) or str(error)
        raise DashboardUnavailable(
            f"the dashboard cannot listen on {host}:{port} ({reason}); "
            "set DEALFLOW_DASHBOARD_HOST / DEALFLOW_DASHBOARD_PORT"
        ) from None
    return listener


@asynccontextmanager
async def running_dashboard(settings: Settings) -> AsyncIterator[str]:
    """Serve the dashboard while the block runs; yields the URL it listens on."""
    try:
        Access(settings).check_listening(settings.dashboard_host)
    except DashboardRefused as refused:
        raise DashboardUnavailable(str(refused)) from None
    listener = _listen(settings.dashboard_host, settings.dashboard_port)
    database = LedgerDatabase(settings.ledger_url)
    app = build_app(settings, database)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        # The page is the same for everyone signed in; a log of who looked adds nothing.
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    host, port = listener.getsockname()[:2]
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    finally:
        server.should_exit = True
        await serving
        listener.close()
        await database.dispose()


async def serve_dashboard(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or forever)."""
    async with running_dashboard(settings) as url:
        print(f"dashboard: listening on {url}", flush=True)
        await (stop or asyncio.Event()).wait()
