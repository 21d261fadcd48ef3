"""Scenario 3, send path: messages/s through our send activity vs raw aiosmtplib.

Ours is ``Mailer.send_email`` exactly as the worker registers it (built by
``worker.build_mailer`` and wired by ``worker.build_worker``: cached templates,
the SMTP pool of ``DEALFLOW_SMTP_POOL_SIZE`` connections, the suppression-list
look-up), called directly, as many at once as the worker runs activities
(``DEALFLOW_MAX_CONCURRENT_ACTIVITIES``); each call renders the template, builds
the MIME message, looks the recipient up, claims the send in the ledger, sends it
and marks it sent. The same without the look-up, and without the look-up and the
send ledger, run too: the table reports the ledger's own cost per send (look-up,
claim and sent mark) from those rounds, in CPU of the sending process (its threads
too), which other jobs on the machine move much less than the throughput. The
baselines send the very same messages, rendered and flattened to bytes beforehand,
with aiosmtplib: over one persistent connection, and over as many persistent
connections as our pool holds. All go to the same sink process. Each is run five
times, interleaved; the figures are medians, and the notes give the range of each
round's ratio (other jobs on the machine move single rounds a lot). The process runs
with the garbage collector set as the worker's process sets it (``worker_heap``), for
ours and the baselines alike.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiosmtplib

import worker_heap
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
ROUNDS = 5
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
        to_buyer = not step.startswith("task_")
        recipient = buyer if to_buyer else rep
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
                # As the deal workflow sends them: a buyer email carries the Reply-To
                # token and the unsubscribe links and is looked up; a rep task is neither.
                buyer_facing=to_buyer,
            )
        )
    return requests


def fresh(requests: list[EmailRequest]) -> list[EmailRequest]:
    """The requests with new Message-IDs: the send ledger would (rightly) not send a
    repeat at all. Made before the clock starts, as the baselines' messages are."""
    run = uuid.uuid4().hex[:8]
    return [r.model_copy(update={"message_id": f"{r.message_id[:-1]}.{run}>"}) for r in requests]


async def ours(mailer: Mailer, requests: list[EmailRequest], concurrency: int) -> None:
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


def cost_ms(cpu: dict[str, list[float]], with_it: str, without: str) -> float:
    """The CPU a send costs more in ``with_it`` than in ``without`` (ms): the median of
    each round's difference (the two ran one after the other). CPU time, unlike the
    throughput, hardly moves when other jobs take the machine's cores for a while."""
    return median([a - b for a, b in zip(cpu[with_it], cpu[without], strict=True)])


def flatten(message: OutgoingMessage) -> tuple[str, list[str], bytes]:
    return message.sender, message.recipients, message.data


# CPU ms a message of this process (its threads too: the SQLite ledger's), by figure.
CPU: dict[str, list[float]] = {}


async def timed(stack: Stack, n: int, send: object, name: str = "") -> float:
    """Messages/s from the first send until the sink holds all N (its CPU to ``CPU``)."""
    expected = len(stack.sink.arrivals) + n
    began, cpu = time.time(), time.process_time()
    await send  # type: ignore[misc]
    await wait_until(lambda: len(stack.sink.arrivals) >= expected, "sink", 60, every=0.01)
    CPU.setdefault(name, []).append(1000 * (time.process_time() - cpu) / n)
    return n / (stack.sink.arrivals[-1].at - began)


async def run(args: argparse.Namespace) -> list[Row]:
    # The sends run in this process: with the collector set as the worker's process sets it.
    with worker_heap.settled():
        return await measure(args)


async def measure(args: argparse.Namespace) -> list[Row]:
    n = args.send_n
    CPU.clear()
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
                figures["raw-1"].append(await timed(s, n, raw(s.sink.port, messages, 1), "raw-1"))
                raw_pool = raw(s.sink.port, messages, pool)
                figures["raw-pool"].append(await timed(s, n, raw_pool, "raw-pool"))
                for name, each in (("ours", mailer), ("bare", bare), ("unrecorded", unrecorded)):
                    sending = ours(each, fresh(requests), concurrency)
                    figures[name].append(await timed(s, n, sending, name))
        finally:
            assert mailer.ledger is not None
            stats = mailer.ledger.database.stats
            for each in (mailer, bare, unrecorded):
                await each.pool.close()
                if each.ledger is not None:
                    await each.ledger.database.dispose()
    for name, values in figures.items():
        cpu = f"; CPU {median(CPU[name]):.2f} ms a message" if name in CPU else ""
        print(f"  {name:>10}: " + ", ".join(f"{value:6.0f}" for value in values) + f" msg/s{cpu}")
    size = sum(len(data) for _, _, data in messages) / len(messages)
    without_ledger = median(figures["unrecorded"])
    ratios = sorted(a / b for a, b in zip(figures["ours"], figures["raw-pool"], strict=True))
    notes = [
        f"messages of {size / 1024:.1f} KiB; pool {pool}, {concurrency} sends at once",
        f"each round's ratio to the raw pool: {', '.join(f'{r:.2f}' for r in ratios)}",
        f"without the suppression look-up: {median(figures['bare']):.0f} msg/s",
        f"without the look-up and the send ledger: {without_ledger:.0f} msg/s, "
        f"{without_ledger / median(figures['raw-pool']):.2f}x the raw pool (the path's ceiling)",
    ]
    cost_notes = [
        f"CPU of the sending process: look-up {cost_ms(CPU, 'ours', 'bare'):.2f} ms, "
        f"claim + sent mark {cost_ms(CPU, 'bare', 'unrecorded'):.2f} ms; "
        "baseline: the CPU of the rest of a send",
        f"ledger batches: {stats.describe()}",
    ]
    return [
        Row("3 send path vs raw pool", median(figures["ours"]), median(figures["raw-pool"]),
            "msg/s", 0.6, "min", notes),
        Row("3 send path vs raw 1 conn", median(figures["ours"]), median(figures["raw-1"]),
            "msg/s", None),
        Row("3 ledger's own cost a send", cost_ms(CPU, "ours", "unrecorded"),
            median(CPU["unrecorded"]), "ms", None, notes=cost_notes),
    ]  # fmt: skip
