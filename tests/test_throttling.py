"""Per-mailbox throttling: a burst of sends is spread out by Temporal, none dropped or doubled."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from email.utils import parsedate_to_datetime

from temporalio.client import Client

from deal_intake import build_deal
from devstack import OutboxSink
from settings import Settings
from starter import record, start_deal
from tests.conftest import Deals, all_idle
from tests.test_lifecycle import deal_id
from worker import build_mailer, build_send_worker, build_worker
from workflows.models import Closed
from workflows.stages import BuyerSignal

BURST = 1000
RATE = 100.0  # sends per second allowed for the mailbox
# The most sends the rate limiter may let through before it throttles (measured: up to
# about 280 of 1,000 on a loaded machine); the rest must keep to RATE.
BURST_ALLOWANCE = 400


async def test_a_burst_of_sends_is_spread_to_the_mailbox_rate(
    client: Client, settings: Settings, sink: OutboxSink
) -> None:
    throttled = settings.model_copy(
        update={"send_rate_per_second": RATE, "temporal_task_queue": f"t-{uuid.uuid4().hex[:8]}"}
    )
    mailer = build_mailer(throttled)
    deals = [
        build_deal(
            throttled,
            {
                "deal_id": f"B-{n:04d}",
                "company": "Burst Ltd",
                "kind": "rfp",
                "contacts": [{"name": "B", "email": f"buyer{n}@example.org"}],
                "items": [{"name": "Widget", "list_price": "10"}],
            },
        )
        for n in range(BURST)
    ]
    assert deals[0].send_task_queue == throttled.send_task_queue
    async with (
        build_worker(client, throttled, mailer),
        build_send_worker(client, throttled, mailer),
    ):
        await asyncio.gather(*(start_deal(client, throttled, deal) for deal in deals))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240  # 10 s of sending at the limit; generous for a busy CI
        while len(sink.received) < BURST:
            assert loop.time() < deadline, f"{len(sink.received)} of {BURST} emails arrived"
            await asyncio.sleep(0.2)
        handles = [client.get_workflow_handle(f"deal-{deal.deal_id}") for deal in deals]
        await all_idle(handles)  # every send has completed: nothing more can arrive
    ids = Counter(str(m.message["Message-ID"]) for m in sink.received)
    assert len(ids) == BURST, f"{len(ids)} distinct emails of {BURST}"
    assert max(ids.values()) == 1, "an email was sent twice"
    # Temporal's task-queue rate limiter is a token bucket: it may let a first burst through
    # at once, then hands out sends at RATE per second. So the rate is measured after the
    # burst allowance, and it may only be lower than RATE (a loaded machine), never higher.
    arrivals = sorted(m.received_at for m in sink.received)
    steady = arrivals[BURST_ALLOWANCE:]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert rate <= RATE * 1.25, f"{rate:.0f} sends/s after the burst, limit {RATE:.0f}/s"
    assert all(parsedate_to_datetime(str(m.message["Date"])) for m in sink.received)


async def test_the_rolling_cap_holds_the_rest_until_a_slot_frees(deals: Deals) -> None:
    # A 4-second window stands in for 24 hours: activity retries run on real time.
    capped = deals.settings.model_copy(
        update={
            "send_cap_per_24h": 3,
            "send_cap_window": timedelta(seconds=4),
            "temporal_task_queue": f"c-{uuid.uuid4().hex[:8]}",
        }
    )
    async with build_worker(deals.client, capped):
        before = asyncio.get_running_loop().time()
        handles = [
            await start_deal(deals.client, capped, deals.input(contacts=[
                {"name": "B", "email": f"capped{n}@example.org"}
            ]))
            for n in range(5)
        ]  # fmt: skip
        messages = await deals.settle(5)
        # The first slot was handed out after ``before``; the cap holds the fourth and fifth
        # email until that slot is one window old, however slowly the first three went out.
        held = deals.sink.received[3:]
        window = capped.send_cap_window.total_seconds()
        assert min(m.received_at for m in held) - before >= window
        assert len({str(m["Message-ID"]) for m in messages}) == 5
        for handle in handles:
            await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="x"))
