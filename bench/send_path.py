"""Scenario 3, send path: messages/s through our send activity vs raw aiosmtplib.

Ours is ``Mailer.send_email`` exactly as the worker registers it (built by
``worker.build_mailer`` and wired by ``worker.build_worker``: cached templates,
the SMTP pool of ``DEALFLOW_SMTP_POOL_SIZE`` connections, the suppression-list
look-up), called directly, as many at once as the worker runs activities
(``DEALFLOW_MAX_CONCURRENT_ACTIVITIES``); each call renders the template, builds
the MIME message, looks the recipient up and sends it. The same without the
look-up is reported too, to tell the two costs apart. The baselines send
the very same messages, rendered and flattened to bytes beforehand, with
aiosmtplib: over one persistent connection, and over as many persistent
connections as our pool holds. All three go to the same sink process. Each is
run three times, interleaved; the figures are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiosmtplib

from activities.email_models import (
    DealFacts,
    EmailContext,
    EmailRequest,
    Party,
    PricedLine,
    StepFacts,
)
from activities.mailer import Mailer
from activities.mime import OutgoingMessage
from bench.driver import cadence, deal_input
from bench.harness import Row, Stack, median, stack, wait_until
from settings import Settings
from worker import build_mailer, build_worker
from workflows import pricing

NAME = "send"
DEFAULT_N = 1000
ROUNDS = 3
# A mix of buyer emails and rep tasks, as a deal sends them.
STEPS = ("proposal", "final_offer", "order_confirmation", "check_in", "task_check_in_call")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--send-n", type=int, default=DEFAULT_N, metavar="N")


def email_requests(settings: Settings, n: int) -> list[EmailRequest]:
    """N send requests as a delivered RFP deal makes them, cycling through ``STEPS``."""
    deal = deal_input(settings, "SEND-1", cadence())
    now = datetime.now(UTC)
    margin = deal.cadence.reserved_margin_percent
    facts = DealFacts(
        deal_id=deal.deal_id,
        company=deal.company,
        kind=deal.kind.value,
        stage="Delivered",
        currency=deal.currency,
        owner=str(deal.owner),
        lines=[
            PricedLine(
                name=item.name,
                quantity=item.quantity,
                unit_price=item.list_price,
                line_total=pricing.money(item.list_price * item.quantity),
            )
            for item in deal.items
        ],
        list_total=pricing.list_total(deal.items),
        floor_total=pricing.floor_total(deal.items, margin),
        price=pricing.list_total(deal.items),
        order_value=pricing.list_total(deal.items),
        purchase_order="PO-1",
        delivery_date=now.date(),
        delivered_at=now,
    )
    contact = deal.buyer
    buyer = Party(name=contact.name, email=str(contact.email), time_zone=contact.time_zone)
    rep = Party(name="Deal owner", email=str(deal.owner), role="rep")
    requests = []
    for number in range(n):
        step = STEPS[number % len(STEPS)]
        recipient = rep if step.startswith("task_") else buyer
        requests.append(
            EmailRequest(
                message_id=f"<{deal.deal_id}.{number:06d}-{step}@{deal.message_domain}>",
                template=step,
                to=[recipient],
                date=now,
                context=EmailContext(
                    deal=facts,
                    recipient=recipient,
                    buyer=buyer,
                    step=StepFacts(interview_due=now + timedelta(days=21)),
                ),
            )
        )
    return requests


async def ours(mailer: Mailer, requests: list[EmailRequest], concurrency: int) -> None:
    # New Message-IDs each time: the send ledger would (rightly) not send a repeat at all.
    run = uuid.uuid4().hex[:8]
    requests = [
        r.model_copy(update={"message_id": f"{r.message_id[:-1]}.{run}>"}) for r in requests
    ]
    slots = asyncio.Semaphore(concurrency)

    async def one(request: EmailRequest) -> None:
        async with slots:
            await mailer.send_email(request)

    await asyncio.gather(*(one(request) for request in requests))


async def raw(port: int, messages: list[tuple[str, list[str], bytes]], connections: int) -> None:
    """Prebuilt messages over ``connections`` persistent connections, each sending in turn."""

    async def one(share: list[tuple[str, list[str], bytes]]) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        for sender, recipients, data in share:
            await smtp.sendmail(sender, recipients, data)
        await smtp.quit()

    await asyncio.gather(*(one(messages[i::connections]) for i in range(connections)))


def ledger_cost_ms(figures: dict[str, list[float]]) -> float:
    """What the send ledger adds to one send, from the throughput with and without it."""
    return 1000 * (1 / median(figures["bare"]) - 1 / median(figures["unrecorded"]))


def flatten(message: OutgoingMessage) -> tuple[str, list[str], bytes]:
    return message.sender, message.recipients, message.data


async def timed(stack: Stack, n: int, send: object) -> float:
    """Messages/s from the first send until the sink holds all N."""
    expected = len(stack.sink.arrivals) + n
    began = time.time()
    await send  # type: ignore[misc]
    await wait_until(lambda: len(stack.sink.arrivals) >= expected, "sink", 60, every=0.01)
    return n / (stack.sink.arrivals[-1].at - began)


async def run(args: argparse.Namespace) -> list[Row]:
    n = args.send_n
    async with stack(args.server, args.smtp_latency) as s:
        settings = s.settings(NAME)
        pool = settings.smtp_pool_size
        concurrency = settings.max_concurrent_activities
        print(
            f"send path: {n} messages x {ROUNDS} rounds; ours with {concurrency} at once "
            f"over a pool of {pool}; raw over 1 and over {pool} connections"
        )
        requests = email_requests(settings, n)
        mailer = build_mailer(settings)
        build_worker(s.client, settings, mailer)  # wires the mailer as the worker does
        bare = build_mailer(settings)  # the same, without the suppression look-up
        bare.suppressions = None
        unrecorded = build_mailer(settings)  # and without the send ledger either
        assert unrecorded.ledger is not None
        await unrecorded.ledger.database.dispose()
        unrecorded.ledger = unrecorded.suppressions = None
        messages = [flatten(mailer.build(request)) for request in requests]
        figures: dict[str, list[float]] = {
            "ours": [], "bare": [], "unrecorded": [], "raw-1": [], "raw-pool": []
        }  # fmt: skip
        try:
            for _ in range(ROUNDS):
                figures["raw-1"].append(await timed(s, n, raw(s.sink.port, messages, 1)))
                figures["raw-pool"].append(await timed(s, n, raw(s.sink.port, messages, pool)))
                figures["ours"].append(await timed(s, n, ours(mailer, requests, concurrency)))
                figures["bare"].append(await timed(s, n, ours(bare, requests, concurrency)))
                figures["unrecorded"].append(
                    await timed(s, n, ours(unrecorded, requests, concurrency))
                )
        finally:
            for each in (mailer, bare, unrecorded):
                await each.pool.close()
                if each.ledger is not None:
                    await each.ledger.database.dispose()
    for name, values in figures.items():
        print(f"  {name:>8}: " + ", ".join(f"{value:6.0f}" for value in values) + " msg/s")
    size = sum(len(data) for _, _, data in messages) / len(messages)
    notes = [
        f"messages of {size / 1024:.1f} KiB; pool {pool}, {concurrency} sends at once",
        f"without the suppression look-up: {median(figures['bare']):.0f} msg/s",
        f"without the look-up and the send ledger: {median(figures['unrecorded']):.0f} msg/s; "
        f"the ledger's own cost: {ledger_cost_ms(figures):.2f} ms a send",
    ]
    return [
        Row("3 send path vs raw pool", median(figures["ours"]), median(figures["raw-pool"]),
            "msg/s", 0.5, "min", notes),
        Row("3 send path vs raw 1 conn", median(figures["ours"]), median(figures["raw-1"]),
            "msg/s", None),
    ]  # fmt: skip
