"""Scenario 1, lifecycle throughput: N deals through RFP -> Won, against the skeleton.

Every deal sends its ten emails (proposal, final offer, order confirmation,
fulfilment hand-over, delivery notice, invoice task, check-in, check-in call
task, win-loss invitation, interview task), takes four buyer signals from the
driver (price agreed, order placed, delivered, interview recorded) and waits on
two timers that fire (check-in, win-loss: a couple of seconds here) and four
that are cancelled by a signal. The skeleton (``bench.skeletons.DealSkeleton``)
does the same with empty bodies, on the same server, right before and right
after the deals; the baseline is the mean of its two runs.

Figure: deals/s = N / (last close - first start), both as recorded by the server.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.driver import (
    WON_PATH,
    SignalDriver,
    cadence,
    closed_runs,
    count,
    deal_input,
    plan,
    start_all,
)
from bench.harness import CpuMeter, Row, Stack, stack, wait_until
from starter import workflow_id

NAME = "lifecycle"
DEFAULT_N = 500
# Long enough that the two sends before each timer rarely outlast it under load
# (a deal whose sends did skips that timer: its history no longer has the shape).
TIMINGS = cadence(check_in_after="PT5S", win_loss_after="PT5S")
SHAPE_SAMPLE = 10
EMAILS_PER_DEAL = 10
SHAPE_EVENTS = {
    "activities": EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    "timers": EventType.EVENT_TYPE_TIMER_STARTED,
    "fired": EventType.EVENT_TYPE_TIMER_FIRED,
    "cancelled": EventType.EVENT_TYPE_TIMER_CANCELED,
    "updates": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    "signals": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    "upserts": EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lifecycle-n", type=int, default=DEFAULT_N, metavar="N")


async def run_once(stack: Stack, kind: str, n: int, label: str) -> float:
    """Drive N deals (or skeletons) to the end; deals/s as the server saw it."""
    queue = f"{NAME}-{label}"
    settings = stack.settings(queue)
    deals = [deal_input(settings, f"{label}-{i:05d}", TIMINGS) for i in range(n)]
    async with stack.worker(kind, queue) as worker:
        meter = CpuMeter(stack, worker)
        driver = SignalDriver(stack.client, queue, plan(WON_PATH))
        driving = asyncio.create_task(driver.run())
        try:
            await start_all(stack.client, settings, kind, deals, settings.bulk_start_concurrency)
            query = f"TaskQueue = '{queue}' AND ExecutionStatus != 'Running'"
            await wait_until(
                lambda: _closed(stack.client, query, n), f"{label}: {n} deals closed", 30 + n
            )
        finally:
            driving.cancel()
        cpu = meter.summary()
    runs = await closed_runs(stack.client, queue)
    if runs.other:
        print(f"  {label}: {len(runs.other)} did not complete, e.g. {runs.other[:3]}")
    for problem in driver.problems[:3]:
        print(f"  {label}: signal problem: {problem}")
    rate = n / runs.seconds
    print(f"  {label:>10}: {n} {kind} in {runs.seconds:5.1f} s = {rate:6.1f}/s; {cpu}")
    return rate


async def _closed(client: Client, query: str, n: int) -> bool:
    return await count(client, query) >= n


async def shape(client: Client, deal_id: str) -> Counter[str]:
    history = await client.get_workflow_handle(workflow_id(deal_id)).fetch_history()
    types = Counter(event.event_type for event in history.events)
    return Counter({name: types[event] for name, event in SHAPE_EVENTS.items()})


async def run(args: argparse.Namespace) -> list[Row]:
    n = args.lifecycle_n
    print(f"lifecycle: {n} deals RFP -> Won vs the skeleton (before and after)")
    async with stack(args.server) as s:
        before = await run_once(s, "skeletons", n, "S1")
        ours = await run_once(s, "deals", n, "D")
        after = await run_once(s, "skeletons", n, "S2")
        sample = [n * i // SHAPE_SAMPLE for i in range(SHAPE_SAMPLE)]
        deal_shapes = [await shape(s.client, f"D-{i:05d}") for i in sample]
        skeleton_shapes = [await shape(s.client, f"S1-{i:05d}") for i in sample]
        emails = len(s.sink.arrivals)
    notes = [f"skeleton before {before:.1f}/s, after {after:.1f}/s"]
    # The skeleton's usual history is the reference: what a deal on this path records.
    usual = Counter(tuple(sorted(found.items())) for found in skeleton_shapes).most_common(1)
    expected = Counter(dict(usual[0][0]))
    print(f"  shape of a deal's history: {dict(expected)}")
    for name, shapes in (("deals", deal_shapes), ("skeletons", skeleton_shapes)):
        odd = [
            {key: found[key] - expected[key] for key in SHAPE_EVENTS if found[key] != expected[key]}
            for found in shapes
            if found != expected
        ]
        if odd:
            notes.append(f"{len(odd)} of {len(shapes)} sampled {name} differ in shape: {odd[0]}")
            print(f"  WARNING: {notes[-1]}")
    if emails != n * EMAILS_PER_DEAL:
        notes.append(f"the sink accepted {emails} emails, expected {n * EMAILS_PER_DEAL}")
        print(f"  WARNING: {notes[-1]}")
    baseline = (before + after) / 2
    return [Row("1 lifecycle RFP->Won", ours, baseline, "deals/s", 0.7, "min", notes)]
