"""A worker in a process of its own, as in production: ``python -m bench.worker_process``.

``--kind deals`` is the product's worker (``worker.build_worker`` with the
settings from the environment, pointed at the benchmark's server and sink);
``--kind unrecorded-deals`` the same without the ledger's deal records;
``--kind skeletons`` runs the baselines of ``bench.skeletons`` with the same
cache, activity slots and sandbox. Keeping the worker out of the driver's
process means the driver's own work (starting deals, sending signals, watching
visibility) never competes with the worker for the GIL, and the worker's RSS
is its own.

It prints ``ready`` once polling, then every ``--report`` seconds
``stats<TAB>rss KiB<TAB>cached workflows<TAB>cpu seconds<TAB>mean loop lag<TAB>max loop lag``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys

from temporalio.client import Client
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import worker_heap
from bench import noop, skeletons
from bench.unrecorded import UnrecordedDeal
from connection import data_converter
from settings import SmtpTls, load_settings
from worker import build_mailer, build_worker, workflow_runner
from workflows.deal import DealWorkflow

CACHE_GAUGE = "temporal_sticky_cache_size"
# The event loop's lag is sampled this often: a loop that wakes a sleeper late
# also answers SMTP servers and Temporal late.
LAG_PROBE = 0.01


def rss_kib() -> int:
    """Resident set size now (not the peak), from /proc."""
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def report(buffer: MetricBuffer, every: float) -> None:
    """Stats every ``every`` seconds, with how late the event loop woke this task (its lag)."""
    cached, lag, ticks, worst = 0, 0.0, 0, 0.0
    loop = asyncio.get_running_loop()
    due = loop.time() + every
    while True:
        asked = loop.time()
        await asyncio.sleep(LAG_PROBE)
        late = loop.time() - asked - LAG_PROBE
        lag, ticks, worst = lag + late, ticks + 1, max(worst, late)
        if loop.time() < due:
            continue
        for update in buffer.retrieve_updates():
            if update.metric.name == CACHE_GAUGE:
                cached = int(update.value)
        mean = lag / ticks
        print(
            f"stats\t{rss_kib()}\t{cached}\t{cpu_seconds():.2f}\t{mean:.4f}\t{worst:.4f}",
            flush=True,
        )
        due, lag, ticks, worst = loop.time() + every, 0.0, 0, 0.0


async def main(args: argparse.Namespace) -> None:
    settings = load_settings(
        temporal_address=args.address,
        temporal_task_queue=args.task_queue,
        smtp_host="127.0.0.1",
        smtp_port=args.smtp_port,
        smtp_tls=SmtpTls.NONE,
    )
    buffer = MetricBuffer(100_000)
    runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer))
    client = await Client.connect(
        settings.temporal_address, data_converter=data_converter(settings), runtime=runtime
    )
    mailer = None
    if args.kind in ("deals", "unrecorded-deals"):
        mailer = build_mailer(settings)
        deal = UnrecordedDeal if args.kind == "unrecorded-deals" else DealWorkflow
        worker = build_worker(client, settings, mailer, deal_workflow=deal)
    else:
        skeletons.STAMP = args.stamp
        worker = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=[skeletons.DealSkeleton, skeletons.BurstSkeleton, noop.WaitingNoop],
            activities=[skeletons.noop],
            max_cached_workflows=settings.max_cached_workflows,
            max_concurrent_activities=settings.max_concurrent_activities,
            # Passed through as the product's worker passes its workflow modules.
            workflow_runner=SandboxedWorkflowRunner(
                restrictions=workflow_runner().restrictions.with_passthrough_modules("bench")
            ),
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    # Every kind runs with the product worker's collector settings (``worker.serve``).
    worker_heap.settle()
    reporter = asyncio.create_task(report(buffer, args.report))
    try:
        async with worker:
            print("ready", flush=True)
            await stop.wait()
    finally:
        reporter.cancel()
        if mailer is not None:
            await mailer.pool.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["deals", "unrecorded-deals", "skeletons"], required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--stamp", action="store_true", help="report when each no-op ran")
    parser.add_argument("--report", type=float, default=1.0, help="seconds between stats")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
    sys.stdout.flush()
    # Skip the interpreter's teardown, where a temporalio client can abort
    # (temporalio/sdk-python#300, see starter.main).
    os._exit(0)


if __name__ == "__main__":
    cli()
