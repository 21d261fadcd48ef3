"""Per-mailbox throttling: a burst of sends is spread out by Temporal, none dropped or doubled."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from email.utils import parsedate_to_datetime

from temporalio.client import Client

from deal_intake import build_deal
from devstack import OutboxSink
from settings import Settings
from starter import start_deal
from worker import build_mailer, build_send_worker, build_worker

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
