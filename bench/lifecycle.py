"""Scenario 1, lifecycle throughput: N deals through RFP -> Won, against the skeleton.

Every deal sends its ten emails (proposal, final offer, order confirmation,
fulfilment hand-over, delivery notice, invoice task, check-in, check-in call
task, win-loss invitation, interview task), takes four buyer signals from the
driver (price agreed, order placed, delivered, interview recorded) and waits on
two timers that fire (check-in, win-loss: five seconds here) and four that are
cancelled by a signal. The skeleton (``bench.skeletons.DealSkeleton``) does the
same with empty bodies, on the same server, right before and right after the
deals; the baseline is the mean of its two runs. Figure 1b: the same deals against
themselves without the ledger's deal records (``bench.unrecorded``), run right before
and right after them (the baseline is the mean): what keeping a deal's records costs.
The deals run twice in a row, and ours is the mean of the two: a run of them varies
most (a fifth between runs of one hour), and the six runs stay symmetric in time, as
the server's tables grow with every run.

All N deals are in flight at once (started as ``bulk-start`` would), which keeps
the server saturated for the skeleton and the worker for the deals. Figure:
deals/s = N / (last close - first start), as recorded by the server.

Under that load a deal's two sends before the check-in (or the win-loss) timer
can take longer than the timer: the deal then skips it (no timer, one workflow
task less), as it would in production. The skeleton, being faster, rarely does.
The histories of sampled deals and skeletons are compared and the difference
reported; a skipped timer lightens the deal's work, so it flatters our figure.
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
    start_skeleton,
)
from bench.harness import CpuMeter, Row, Stack, stack, wait_until
from starter import start_deal, workflow_id
from workflows.models import DealInput

NAME = "lifecycle"
DEFAULT_N = 300
# Short, since all deals wait on them at about the same time and the server idles
# meanwhile; long enough that an unloaded deal's two sends do not outlast them.
TIMINGS = cadence(check_in_after="PT5S", win_loss_after="PT5S")
SHAPE_SAMPLE = 10
# What the SDK names the marker of a local activity's result (the deal's records).
LOCAL_ACTIVITY_MARKER = "core_local_activity"
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
    """Drive N deals (or skeletons) to the end, all at once; deals/s as the server saw it."""
    queue = f"{NAME}-{label}"
    settings = stack.settings(queue)
    deals = [deal_input(settings, f"{label}-{i:05d}", TIMINGS) for i in range(n)]
    async with stack.worker(kind, queue) as worker:
        meter = CpuMeter(stack, worker)
        driver = SignalDriver(stack.client, queue, plan(WON_PATH))
        driving = asyncio.create_task(driver.run())
        start = start_skeleton if kind == "skeletons" else start_deal
        slots = asyncio.Semaphore(settings.bulk_start_concurrency)

        async def one(deal: DealInput) -> None:
            async with slots:
                handle = await start(stack.client, settings, deal)
            await handle.result()

        try:
            await asyncio.wait_for(asyncio.gather(*(one(deal) for deal in deals)), 60 + n)
        finally:
            driving.cancel()
        cpu = meter.summary()
    closed = f"TaskQueue = '{queue}' AND ExecutionStatus != 'Running'"
    await wait_until(lambda: _closed(stack, closed, n), "visibility of closed deals", 30)
    runs = await closed_runs(stack.client, queue)
    if runs.other:
        print(f"  {label}: {len(runs.other)} did not complete, e.g. {runs.other[:3]}")
    for problem in driver.problems[:3]:
        print(f"  {label}: signal problem: {problem}")
    rate = n / runs.seconds
    print(f"  {label:>3}: {n} {kind} in {runs.seconds:5.1f} s = {rate:4.1f}/s; {cpu}")
    return rate


async def _closed(stack: Stack, query: str, n: int) -> bool:
    return await count(stack.client, query) >= n


async def shape(client: Client, deal_id: str) -> Counter[str]:
    history = await client.get_workflow_handle(workflow_id(deal_id)).fetch_history()
    types = Counter(event.event_type for event in history.events)
    return Counter({name: types[event] for name, event in SHAPE_EVENTS.items()})


async def recordings(client: Client, deal_id: str) -> int:
    """How many record batches the deal handed the ledger (local activities: markers)."""
    history = await client.get_workflow_handle(workflow_id(deal_id)).fetch_history()
    return sum(
        1
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    )


async def run(args: argparse.Namespace) -> list[Row]:
    n = args.lifecycle_n
    print(f"lifecycle: {n} deals RFP -> Won vs the skeleton (before and after)")
    async with stack(args.server, args.smtp_latency) as s:
        before = await run_once(s, "skeletons", n, "S1")
        bare_before = await run_once(s, "unrecorded-deals", n, "U1")
        first = await run_once(s, "deals", n, "D1")
        second = await run_once(s, "deals", n, "D2")
        ours = (first + second) / 2
        bare_after = await run_once(s, "unrecorded-deals", n, "U2")
        after = await run_once(s, "skeletons", n, "S2")
        unrecorded = (bare_before + bare_after) / 2
        sample = [n * i // SHAPE_SAMPLE for i in range(SHAPE_SAMPLE)]
        # The skeleton has no ledger records: the deals without them are compared to it.
        deal_shapes = [await shape(s.client, f"U1-{i:05d}") for i in sample]
        records = [await recordings(s.client, f"D1-{i:05d}") for i in sample]
        skeleton_shapes = [await shape(s.client, f"S1-{i:05d}") for i in sample]
        emails = len(s.sink.arrivals)
    notes = [
        f"skeleton before {before:.1f}/s, after {after:.1f}/s; "
        f"deals {first:.1f}/s, then {second:.1f}/s"
    ]
    recording = [
        f"without the ledger's deal records {bare_before:.1f}/s before, {bare_after:.1f}/s "
        "after; "
        f"{min(records)}-{max(records)} record batches a deal (sampled)"
    ]
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
        skipped = [diff for diff in odd if set(diff) <= {"timers", "fired"}]
        if skipped:
            timers = -sum(diff["timers"] for diff in skipped)
            notes.append(
                f"{len(skipped)} of {len(shapes)} sampled {name} skipped {timers} timer(s) "
                "in all: their sends outlasted the timer"
            )
            print(f"  {notes[-1]}")
        if len(skipped) < len(odd):
            notes.append(f"sampled {name} differ from the path's shape: {odd}")
            print(f"  WARNING: {notes[-1]}")
    if emails != 4 * n * EMAILS_PER_DEAL:  # two runs of deals, two without records
        notes.append(f"the sink accepted {emails} emails, expected {4 * n * EMAILS_PER_DEAL}")
        print(f"  WARNING: {notes[-1]}")
    baseline = (before + after) / 2
    return [
        Row("1 lifecycle RFP->Won", ours, baseline, "deals/s", 0.7, "min", notes),
        Row("1b lifecycle, ledger recording", ours, unrecorded, "deals/s", 0.9, "min", recording),
    ]
