"""Scenario 5, bulk start: ``starter.py bulk-start FILE.csv`` vs raw ``client.start_workflow``.

Ours is the real command, run as a process on a CSV of N valid deals, with its
Rich progress bar drawn as on a terminal (into a file). The raw baseline starts
the same N deals (the same ``DealInput`` payloads, built beforehand) with bare
``client.start_workflow`` calls at the same concurrency
(``DEALFLOW_BULK_START_CONCURRENCY``) from this process. Raw and ours take
turns (raw, ours, raw, ours, raw) on fresh deal ids; each figure is the median
of its runs. No worker runs: this measures starting deals, not what they do next.

The command's fixed cost (interpreter start, imports, connecting to Temporal)
is measured with a CSV holding only the header and left out of its rate; it is
reported apart.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import resource
import sys
import time
from pathlib import Path

from bench.harness import ROOT, Row, Stack, median, stack
from deal_intake import CSV_COLUMNS, deal_from_row
from settings import Settings
from workflows.models import DealInput

NAME = "bulk"
DEFAULT_N = 1000
RAW_TURNS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bulk-n", type=int, default=DEFAULT_N, metavar="N")


def rows(n: int, prefix: str) -> list[dict[str, str]]:
    return [
        {
            "deal_id": f"{prefix}-{number:05d}",
            "company": f"Buyer {number} GmbH",
            "contact_name": "Bea Buyer",
            "contact_email": f"bea{number}@buyer.example.org",
            "time_zone": "Europe/Berlin",
            "owner": "rep@seller.example.com",
            "kind": "rfp",
            "currency": "EUR",
            "items": "Conveyor X1:2:5000;Installation:1:1000",
        }
        for number in range(n)
    ]


def write_csv(path: Path, data: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(data)
    return path


async def cli(stack: Stack, settings: Settings, csv_file: Path) -> tuple[float, float]:
    """Seconds the real ``bulk-start`` command takes, start to exit, and its CPU seconds."""
    env = {
        **os.environ,
        "DEALFLOW_TEMPORAL_ADDRESS": stack.server.address,
        "DEALFLOW_TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "DEALFLOW_SEND_WINDOW": "always",
        # Draw the progress bar as on an interactive terminal.
        "TTY_COMPATIBLE": "1",
        "TTY_INTERACTIVE": "1",
        "COLUMNS": "100",
    }
    log = csv_file.with_suffix(".log")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "starter.py", "bulk-start", str(csv_file),
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
        )  # fmt: skip
        code = await process.wait()
    seconds = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        tail = log.read_text(errors="replace")[-500:]
        raise RuntimeError(f"starter.py bulk-start exited with {code}: {tail}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu


async def raw(stack: Stack, settings: Settings, deals: list[DealInput]) -> float:
    """Seconds for bare ``start_workflow`` calls, at the command's concurrency."""
    slots = asyncio.Semaphore(settings.bulk_start_concurrency)

    async def one(deal: DealInput) -> None:
        async with slots:
            await stack.client.start_workflow(
                "DealWorkflow",
                deal,
                id=f"deal-{deal.deal_id}",
                task_queue=settings.temporal_task_queue,
            )

    began = time.monotonic()
    await asyncio.gather(*(one(deal) for deal in deals))
    return time.monotonic() - began


async def run(args: argparse.Namespace) -> list[Row]:
    n = args.bulk_n
    async with stack(args.server, args.smtp_latency) as s:
        settings = s.settings(NAME)
        print(
            f"bulk start: {n} deals from a CSV, {settings.bulk_start_concurrency} at once, "
            "starter.py bulk-start vs raw start_workflow"
        )
        fixed, fixed_cpu = await cli(s, settings, write_csv(s.folder / "empty.csv", []))
        raw_rates, ours_rates, totals, cpus = [], [], [], []
        for turn in range(RAW_TURNS):
            deals = [deal_from_row(settings, row) for row in rows(n, f"R{turn}")]
            raw_rates.append(n / await raw(s, settings, deals))
            if turn < RAW_TURNS - 1:
                csv_file = write_csv(s.folder / f"deals-{turn}.csv", rows(n, f"C{turn}"))
                total, cpu = await cli(s, settings, csv_file)
                totals.append(total)
                cpus.append(1000 * (cpu - fixed_cpu) / n)
                ours_rates.append(n / (totals[-1] - fixed))
    print(
        "  raw " + ", ".join(f"{rate:.0f}" for rate in raw_rates) + " deals/s; bulk-start "
        + ", ".join(f"{rate:.0f}" for rate in ours_rates)
        + f" deals/s ({', '.join(f'{t:.1f}' for t in totals)} s in all, less {fixed:.1f} s fixed)"
    )  # fmt: skip
    notes = [
        f"bulk-start's fixed {fixed:.1f} s (start-up, connect; empty CSV) left out",
        f"bulk-start's CPU beyond the fixed part: {median(cpus):.2f} ms a deal",
    ]
    return [
        Row("5 bulk start", median(ours_rates), median(raw_rates), "deals/s", 0.8, "min", notes)
    ]
