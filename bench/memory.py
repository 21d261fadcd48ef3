"""Scenario 4, memory: worker RSS per open deal waiting on a buyer signal vs a no-op waiter.

Each side runs in its own worker process (``bench.worker_process``) with a
cache sized to hold every workflow (``DEALFLOW_MAX_CACHED_WORKFLOWS`` = N plus
the warm-up), so every open workflow stays in memory as it would in production.
A warm-up batch first loads the sandbox and the modules; RSS is read from
/proc after it, and again once all N more are open and cached (the worker's
sticky-cache gauge says so) and RSS has settled. KiB per workflow =
(RSS after - RSS before) / N.

Ours: RFP deals that sent their proposal and wait in Proposal Received for the
buyer (with their follow-up timer). Baseline: ``WaitingNoop``, a workflow that
waits for one signal.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.driver import cadence, count, deal_input, start_all
from bench.harness import Row, Stack, WorkerProcess, median, stack, wait_until
from bench.noop import WaitingNoop
from workflows.stages import Stage

NAME = "memory"
DEFAULT_N = 1000
WARM_UP = 100
# RSS is read as the median of this many one-second-apart samples once settled.
SAMPLES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-n", type=int, default=DEFAULT_N, metavar="N")


async def settled_rss(worker: WorkerProcess) -> float:
    """Median RSS over a few reports, after two quiet seconds."""
    await asyncio.sleep(2)
    samples = []
    for _ in range(SAMPLES):
        await asyncio.sleep(1)
        samples.append(worker.stats.rss_kib)
    return median(samples)


async def measure(stack: Stack, kind: str, n: int) -> float:
    """KiB of worker RSS per open workflow of ``kind``."""
    queue = f"{NAME}-{kind}"
    settings = stack.settings(queue)
    env = {"DEALFLOW_MAX_CACHED_WORKFLOWS": str(n + WARM_UP + 100)}
    async with stack.worker(kind, queue, env=env) as worker:
        if kind == "deals":
            deals = [deal_input(settings, f"M-{i:05d}", cadence()) for i in range(n + WARM_UP)]

            async def open_deals(first: int, last: int) -> None:
                batch = deals[first:last]
                await start_all(
                    stack.client, settings, kind, batch, settings.bulk_start_concurrency
                )
                query = f"TaskQueue = '{queue}' AND DealStage = '{Stage.PROPOSAL_RECEIVED.value}'"
                await wait_until(
                    lambda: _waiting(stack, query, worker, last), "deals waiting", 60 + n
                )

            opening = open_deals
        else:

            async def open_noops(first: int, last: int) -> None:
                slots = asyncio.Semaphore(settings.bulk_start_concurrency)

                async def one(number: int) -> None:
                    async with slots:
                        await stack.client.start_workflow(
                            WaitingNoop.run, id=f"noop-{number:05d}", task_queue=queue
                        )

                await asyncio.gather(*(one(number) for number in range(first, last)))
                await wait_until(lambda: worker.stats.cached >= last, "no-ops cached", 60 + n)

            opening = open_noops
        await opening(0, WARM_UP)
        before = await settled_rss(worker)
        await opening(WARM_UP, WARM_UP + n)
        after = await settled_rss(worker)
    per = (after - before) / n
    print(
        f"  {kind:>9}: RSS {before / 1024:.0f} MiB with {WARM_UP} open, "
        f"{after / 1024:.0f} MiB with {WARM_UP + n}: {per:.1f} KiB each"
    )
    return per


async def _waiting(stack: Stack, query: str, worker: WorkerProcess, total: int) -> bool:
    return worker.stats.cached >= total and await count(stack.client, query) >= total


async def run(args: argparse.Namespace) -> list[Row]:
    n = args.memory_n
    print(f"memory: worker RSS with {n} open workflows (cache holds them all)")
    async with stack(args.server, args.smtp_latency) as s:
        baseline = await measure(s, "skeletons", n)
        ours = await measure(s, "deals", n)
    return [Row("4 memory per open deal", ours, baseline, "KiB", 2.0, "max")]
