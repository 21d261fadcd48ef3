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
from tests.conftest import Deals
from tests.test_lifecycle import deal_id
from worker import build_mailer, build_send_worker, build_worker
from workflows.models import Closed
from workflows.stages import BuyerSignal

BURST = 1000
RATE = 100.0  # sends per second allowed for the mailbox


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
        for _ in range(450):  # at most 90 s
            if len(sink.received) >= BURST:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
    ids = Counter(str(m.message["Message-ID"]) for m in sink.received)
    assert len(ids) == BURST, f"{len(ids)} distinct emails of {BURST}"
    assert max(ids.values()) == 1, "an email was sent twice"
    arrivals = sorted(m.received_at for m in sink.received)
    spread = arrivals[-1] - arrivals[0]
    # The server hands out sends at RATE per second: the burst takes at least that long.
    assert spread >= (BURST - 1) / RATE * 0.8, spread
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
        handles = [
            await start_deal(deals.client, capped, deals.input(contacts=[
                {"name": "B", "email": f"capped{n}@example.org"}
            ]))
            for n in range(5)
        ]  # fmt: skip
        first = await deals.mail(3)
        await asyncio.sleep(1.5)
        assert len(deals.sink.received) == 3  # the cap holds the other two back
        messages = await deals.settle(5)
        held = [m for m in deals.sink.received[3:]]
        assert min(m.received_at for m in held) - deals.sink.received[0].received_at >= 3.5
        assert len({str(m["Message-ID"]) for m in messages}) == 5
        assert len(first) == 3
        for handle in handles:
            await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="x"))
