"""``make bench`` / ``python -m bench``: run the scenarios and print one table.

Every figure is a ratio against a baseline measured in the same run, on the
same dev server and SMTP sink, because the machines are shared and noisy.
Nothing here asserts anything about time: the table says which goals are met.

    python -m bench                          # every scenario, default sizes
    python -m bench --only reports           # reports on 100,000 deals in PostgreSQL
    python -m bench --only burst --n 10000   # one scenario at full size
    DEALFLOW_SMTP_POOL_SIZE=8 python -m bench --only send   # try a knob
    python -m bench --only send --smtp-latency 50            # as against a remote relay
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import ModuleType

from bench import bulk_start, burst, lifecycle, memory, reports, send_path
from bench.harness import SERVER_MODES, Row
from settings import load_settings

SCENARIOS: dict[str, ModuleType] = {
    lifecycle.NAME: lifecycle,
    burst.NAME: burst,
    send_path.NAME: send_path,
    memory.NAME: memory,
    bulk_start.NAME: bulk_start,
    reports.NAME: reports,
}
DEFAULT_SCENARIOS = list(SCENARIOS)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated scenarios to run (default: {', '.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--n", type=int, help="size N for every scenario selected (overrides the --X-n options)"
    )
    parser.add_argument(
        "--server",
        choices=list(SERVER_MODES),
        default="embedded",
        help="dev server storage: "
        + "; ".join(f"{name}: {text}" for name, (text, _, _) in SERVER_MODES.items()),
    )
    parser.add_argument(
        "--smtp-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="the sink answers each message this much later, as a remote relay (default 0)",
    )
    for module in SCENARIOS.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; pick from {', '.join(SCENARIOS)}")
    if args.n is not None:
        for name in args.only:
            setattr(args, f"{name}_n", args.n)
    return args


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} x {model}, {memory_gib:.0f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def knobs() -> str:
    settings = load_settings()
    return (
        f"max_cached_workflows={settings.max_cached_workflows} "
        f"max_concurrent_activities={settings.max_concurrent_activities} "
        f"smtp_pool_size={settings.smtp_pool_size} "
        f"bulk_start_concurrency={settings.bulk_start_concurrency}"
    )


def _figure(value: float) -> str:
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"


def table(rows: list[Row]) -> str:
    header = ("scenario", "ours", "baseline", "ratio", "goal", "")
    lines = [
        (
            row.scenario,
            f"{_figure(row.ours)} {row.unit}",
            f"{_figure(row.baseline)} {row.unit}",
            f"{row.ratio:.2f}",
            row.goal_text,
            row.met,
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in lines)])


async def main(args: argparse.Namespace) -> int:
    began = time.monotonic()
    print(f"dealflow bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"knobs: {knobs()}")
    print(
        f"dev server: {SERVER_MODES[args.server][0]}; SMTP sink latency {args.smtp_latency:g} ms; "
        "deals without a business calendar (DEALFLOW_SEND_WINDOW=always)\n"
    )
    rows: list[Row] = []
    failed: list[str] = []
    for name in args.only:
        started = time.monotonic()
        scenario: Callable[[argparse.Namespace], Awaitable[list[Row]]] = SCENARIOS[name].run
        try:
            rows += await scenario(args)
        except Exception:  # one broken scenario must not hide the others' figures
            failed.append(name)
            traceback.print_exc()
        print(f"  ({name}: {time.monotonic() - started:.0f} s)\n", flush=True)
    print(table(rows))
    for row in rows:
        for note in row.notes:
            print(f"  {row.scenario}: {note}")
    print(f"\ntotal {time.monotonic() - began:.0f} s")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = asyncio.run(main(parse(sys.argv[1:])))
    sys.stdout.flush()
    # Skip the interpreter's teardown, where a temporalio client can abort after
    # the work is done (temporalio/sdk-python#300, as starter.main does).
    os._exit(code)
