"""Scenario 2, check-in burst: N delivered deals whose check-ins come due at one instant.

Parking: N RFP deals are started and driven to Delivered (proposal, order
placed, delivered: five emails each), all with ``delivered_at`` set so that
``delivered_at + check_in_after`` is the same instant for every deal, a little
after the last one is parked. Then nothing happens until that instant, when
every deal's check-in timer fires at once and each sends its check-in email and
its check-in call task. The figure is the time from the due instant until the
sink holds all N check-in emails, with the lag (arrival - due) percentiles.

Baselines, same server and sink, same worker settings:
(a) ``BurstSkeleton``: N workflows parked on a timer due at one instant, then
    the same two sends as no-op activities (the Temporal side of the burst);
(b) raw aiosmtplib sending N copies of the check-in email over as many
    connections as our SMTP pool holds (the SMTP side).
The goal is against (a); the slower of (a) and (b) is the binding one: our
burst cannot drain faster than it.

Ours and (a) each run twice, in the order ours, (a), (a), ours, and each figure is the
mean of its two: one burst moves a fifth between runs, and a later run meets a server
whose tables hold every earlier run's histories, so the order stays symmetric in time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from statistics import fmean

from bench.driver import (
    SignalDriver,
    cadence,
    count,
    deal_input,
    plan,
    stamp,
    start_all,
)
from bench.harness import Arrival, CpuMeter, Row, Stack, percentile, stack, wait_until
from bench.send_path import email_requests, flatten, raw
from bench.skeleton_inputs import BurstInput
from bench.skeletons import BurstSkeleton
from worker import build_mailer
from workflows.stages import BuyerSignal, Stage

NAME = "burst"
DEFAULT_N = 600
CHECK_IN_AFTER = timedelta(hours=1)
# Margin between the last deal parked and the due instant.
MARGIN = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst-n", type=int, default=DEFAULT_N, metavar="N")


class Burst:
    """Arrivals of one burst, measured from its due instant."""

    def __init__(self, label: str, due: float, arrivals: list[Arrival]) -> None:
        self.label = label
        self.lags = sorted(arrival.at - due for arrival in arrivals)
        self.late = False  # parking ran into the due instant: the lags include parking

    @property
    def drain(self) -> float:
        return self.lags[-1]

    def describe(self) -> str:
        p50, p99 = percentile(self.lags, 0.5), percentile(self.lags, 0.99)
        return f"lag p50 {p50:.1f} s, p99 {p99:.1f} s, max {self.drain:.1f} s"


def stage_count(stack: Stack, queue: str, stage: Stage) -> object:
    query = f"TaskQueue = '{queue}' AND DealStage = '{stage.value}'"
    return lambda: _at_least(stack, query)


async def _at_least(stack: Stack, query: str) -> int:
    return await count(stack.client, query)


async def drive_until(stack: Stack, driver: SignalDriver, queue: str, stage: Stage, n: int) -> None:
    driving = asyncio.create_task(driver.run())
    try:
        await wait_until(
            lambda: _reached(stack, queue, stage, n), f"{n} deals {stage.value}", 60 + n
        )
    finally:
        driving.cancel()
        for problem in driver.problems[:3]:
            print(f"  signal problem: {problem}")


async def _reached(stack: Stack, queue: str, stage: Stage, n: int) -> bool:
    query = f"TaskQueue = '{queue}' AND DealStage = '{stage.value}'"
    return await count(stack.client, query) >= n


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def ours(stack: Stack, n: int, label: str) -> tuple[Burst, float]:
    """Our burst, and how long starting the N deals took (to size the skeletons' wait)."""
    queue = f"{NAME}-deals-{label}"
    settings = stack.settings(queue)
    timings = cadence(check_in_after=f"PT{int(CHECK_IN_AFTER.total_seconds())}S")
    deals = [deal_input(settings, f"B{label}-{i:05d}", timings) for i in range(n)]
    ids = {deal.deal_id for deal in deals}
    check_ins, call_tasks = stack.sink.steps["check_in"], stack.sink.steps["task_check_in_call"]
    async with stack.worker("deals", queue) as worker:
        clock = stamp()
        # The shortest way to Delivered: order straight from the proposal.
        order = SignalDriver(
            stack.client, queue, plan({Stage.PROPOSAL_RECEIVED: BuyerSignal.ORDER_PLACED})
        )
        driving = asyncio.create_task(order.run())
        try:
            await start_all(stack.client, settings, "deals", deals, settings.bulk_start_concurrency)
            starting = clock()
            await wait_until(
                lambda: _reached(stack, queue, Stage.ORDER_CONFIRMED, n), "order confirmed", 60 + n
            )
        finally:
            driving.cancel()
        ordering = clock()
        # Delivery takes two sends per deal, getting to Order Confirmed took three.
        due = time.time() + 0.6 * ordering + MARGIN
        delivered_at = datetime.fromtimestamp(due, UTC) - CHECK_IN_AFTER
        deliver = SignalDriver(
            stack.client, queue, plan({Stage.ORDER_CONFIRMED: BuyerSignal.DELIVERED}, delivered_at)
        )
        await drive_until(stack, deliver, queue, Stage.DELIVERED, n)
        parked = clock()
        print(
            f"  parking {n} deals: started in {starting:.0f} s, order confirmed at "
            f"{ordering:.0f} s, delivered at {parked:.0f} s; "
            f"{due - time.time():.1f} s to the due instant"
        )
        late = time.time() > due - 1
        if late:
            print("  WARNING: parking ran into the due instant; the burst overlaps it")
        await sleep_until(due)
        meter = CpuMeter(stack, worker)
        await wait_until(
            lambda: stack.sink.steps["check_in"] >= check_ins + n, "check-ins", 60 + n, 0.05
        )
        arrivals = [a for a in stack.sink.arrivals if a.step == "check_in" and a.workflow in ids]
        burst = Burst(f"ours {label}", due, arrivals)
        burst.late = late
        await wait_until(
            lambda: stack.sink.steps["task_check_in_call"] >= call_tasks + n,
            "call tasks",
            60 + n,
            0.05,
        )
        print(f"  ours {label}:   {burst.describe()}; {meter.summary()}")
    return burst, starting


async def no_op(stack: Stack, n: int, starting: float, label: str) -> Burst:
    queue = f"{NAME}-noop-{label}"
    settings = stack.settings(queue)
    async with stack.worker("skeletons", queue, stamp=True) as worker:
        due = time.time() + 1.2 * starting + MARGIN
        spec = BurstInput(due=datetime.fromtimestamp(due, UTC))
        slots = asyncio.Semaphore(settings.bulk_start_concurrency)

        async def one(number: int) -> None:
            async with slots:
                await stack.client.start_workflow(
                    BurstSkeleton.run, spec, id=f"burst-noop-{label}-{number:05d}", task_queue=queue
                )

        await asyncio.gather(*(one(number) for number in range(n)))
        await wait_until(lambda: _reached(stack, queue, Stage.DELIVERED, n), "parked", 60 + n)
        late = time.time() > due - 1
        if late:
            print("  WARNING: the no-op workflows were parked too late; the burst overlaps")
        await sleep_until(due)
        meter = CpuMeter(stack, worker)

        def check_ins() -> list[Arrival]:
            return [a for a in worker.activities if a.step == "check_in"]

        await wait_until(lambda: len(check_ins()) >= n, "no-op check-ins", 60 + n, 0.05)
        burst = Burst(f"(a) no-op {label}", due, check_ins())
        burst.late = late
        print(f"  (a) no-op {label}: {burst.describe()}; {meter.summary()}")
    return burst


async def raw_smtp(stack: Stack, n: int) -> Burst:
    settings = stack.settings(NAME)
    mailer = build_mailer(settings)
    check_in = next(r for r in email_requests(settings, 10) if r.template == "check_in")
    message = flatten(mailer.build(check_in))
    before = len(stack.sink.arrivals)
    began = time.time()
    await raw(stack.sink.port, [message] * n, settings.smtp_pool_size)
    await wait_until(lambda: len(stack.sink.arrivals) >= before + n, "raw sends", 60, 0.01)
    burst = Burst("raw SMTP", began, stack.sink.arrivals[before:])
    print(f"  (b) raw SMTP over {settings.smtp_pool_size} connections: {burst.describe()}")
    return burst


async def run(args: argparse.Namespace) -> list[Row]:
    n = args.burst_n
    print(f"check-in burst: {n} delivered deals due at one instant; ours, (a), (a), ours")
    async with stack(args.server, args.smtp_latency) as s:
        first, starting = await ours(s, n, "1")
        baselines = [await no_op(s, n, starting, "1"), await no_op(s, n, starting, "2")]
        second, _ = await ours(s, n, "2")
        smtp = await raw_smtp(s, n)
    mine = [first, second]
    drain, baseline = fmean(b.drain for b in mine), fmean(b.drain for b in baselines)
    binding = "(a) no-op workflows" if baseline >= smtp.drain else "(b) raw SMTP"
    notes = [
        *(f"{b.label}: {b.describe()}" for b in mine + baselines),
        f"(b) {smtp.describe()}",
        f"binding baseline: {binding}",
        *(f"WARNING: {b.label} parked late, its burst overlaps parking"
          for b in mine + baselines if b.late),
    ]  # fmt: skip
    print(f"  binding baseline: {binding}")
    return [
        Row("2 check-in burst vs no-op (a)", drain, baseline, "s", 1.5, "max", notes),
        Row("2 check-in burst vs raw SMTP (b)", drain, smtp.drain, "s", None, "max"),
    ]
