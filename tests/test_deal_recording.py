"""A running deal keeps its records in the ledger, on the time-skipping Temporal server,
real SMTP on loopback and the ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Table, select, text
from temporalio.client import WorkflowHandle
from temporalio.worker import Replayer

from ledger.database import LedgerDatabase
from ledger.tables import DEAL_EMAILS, DEALS, INTERVIEW_REASONS, INTERVIEWS, REP_TASKS, STAGE_EVENTS
from starter import Refused, record
from tests.conftest import MAIL_WITHIN, Deals, codec_data_converter, on_both_databases, sent_at
from workflows.deal import INBOUND_MESSAGE, DealWorkflow
from workflows.models import (
    Closed,
    DealStatus,
    InboundKind,
    InboundMessage,
    InterviewRecorded,
    OrderPlaced,
    PriceAgreed,
)
from workflows.stages import BuyerSignal, Stage

ANSWERS = InterviewRecorded(
    why_decided="a cheaper supplier with a shorter lead time",
    decision_process="ops lead and CFO, two calls",
    rep_rating=4,
    cooperation_rating=3,
    reasons=["price", "timing"],
    participants="Bea Buyer (ops lead)",
    note="would consider us for the next line",
)


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[LedgerDatabase]:
    database = LedgerDatabase(ledger_url)
    yield database
    await database.dispose()


async def rows(ledger: LedgerDatabase, table: Table, deal_id: str, order: str) -> list[Any]:
    query = select(table).where(table.c.deal_id == deal_id).order_by(table.c[order])
    return await ledger.run(lambda c: list(c.execute(query).mappings()))


async def rename(ledger: LedgerDatabase, table: str, to: str) -> None:
    statement = text(f"ALTER TABLE {table} RENAME TO {to}")
    await ledger.run(lambda c: c.execute(statement), write=True)


def deal_id(handle: WorkflowHandle) -> str:
    return handle.id.removeprefix("deal-")


async def recorded(
    ledger: LedgerDatabase, final: DealStatus, within: float = MAIL_WITHIN
) -> list[Any]:
    """The deal's stage events, once the ledger holds as many as its history."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        events = await rows(ledger, STAGE_EVENTS, final.deal_id, "at")
        if len(events) >= len(final.history) or loop.time() > deadline:
            return events
        await asyncio.sleep(0.1)


@on_both_databases
async def test_a_closed_deal_keeps_every_record_in_the_ledger(
    deals: Deals, ledger: LedgerDatabase
) -> None:
    handle = await deals.start(kind="rfp")
    await deals.settle(1)
    lost = Closed(reason="chose a cheaper supplier", code="price")
    await record(deals.client, deal_id(handle), BuyerSignal.LOST, lost)
    await deals.skip(timedelta(days=21, hours=1))
    await deals.mail(3)
    # Ratings are numbers now: words, as older interviews held, are refused.
    worded = ANSWERS.model_copy(update={"rep_rating": "responsive"})
    with pytest.raises(Refused, match="rep_rating must be a whole number from 1"):
        await record(deals.client, deal_id(handle), BuyerSignal.INTERVIEW_RECORDED, worded)
    await record(deals.client, deal_id(handle), BuyerSignal.INTERVIEW_RECORDED, ANSWERS)
    final: DealStatus = await handle.result()

    # The deal ends only once its records are in: nothing to wait for here.
    [row] = await rows(ledger, DEALS, final.deal_id, "deal_id")
    assert row["stage"] == row["outcome"] == Stage.LOST.value
    assert row["lost_reason"] == "price"
    assert row["outcome_note"] == "chose a cheaper supplier"
    assert Decimal(row["value"]) == final.value == Decimal("11000.00")
    assert (row["company"], row["owner"], row["kind"]) == (
        final.company,
        final.owner,
        "rfp",
    )
    assert row["closed_at"] is not None and row["next_touch_at"] is None

    events = await rows(ledger, STAGE_EVENTS, final.deal_id, "at")
    assert [(e["to_stage"], e["source"]) for e in events] == [
        (change.stage.value, change.source) for change in final.history
    ]
    assert events[0]["from_stage"] is None
    assert [e["from_stage"] for e in events[1:]] == [e["to_stage"] for e in events[:-1]]
    assert all(e["accepted"] for e in events)

    emails = await rows(ledger, DEAL_EMAILS, final.deal_id, "at")
    assert sorted((e["message_id"], e["outcome"]) for e in emails) == sorted(
        (m.message_id, m.outcome) for m in final.messages
    )
    assert all(e["outcome"] == "sent" for e in emails)
    tasks = await rows(ledger, REP_TASKS, final.deal_id, "at")
    assert [t["template"] for t in tasks] == ["task_win_loss_interview"]
    assert tasks[0]["assignee"] == "rep@seller.example.com"

    [interview] = await rows(ledger, INTERVIEWS, final.deal_id, "deal_id")
    assert (interview["rep_rating"], interview["cooperation_rating"]) == (4, 3)
    assert interview["outcome"] == Stage.LOST.value
    assert interview["participants"] == "Bea Buyer (ops lead)"
    assert interview["free_text"] == "would consider us for the next line"
    reasons = await rows(ledger, INTERVIEW_REASONS, final.deal_id, "code")
    assert [r["code"] for r in reasons] == ["price", "timing"]

    # Replaying the history writes nothing and decides the same: no activity runs again.
    history = await handle.fetch_history()
    replayer = Replayer(workflows=[DealWorkflow], data_converter=codec_data_converter())
    await replayer.replay_workflow(history)
    assert len(await rows(ledger, STAGE_EVENTS, final.deal_id, "at")) == len(events)


@on_both_databases
async def test_records_that_cannot_be_written_hold_up_no_email(
    deals: Deals, ledger: LedgerDatabase
) -> None:
    """The deal-record tables refuse every write for a while (renamed away, as a broken
    migration or a revoked grant would): the deal goes on sending on time, and the
    ledger catches up, losing nothing, once they are back."""
    handle = await deals.start(kind="rfp")
    await deals.settle(1)
    before = await recorded(ledger, await handle.query(DealWorkflow.status))
    await ledger.run(
        lambda c: c.execute(text("ALTER TABLE deals RENAME TO deals_away")), write=True
    )

    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    offered = await deals.now()
    await deals.mail(2)
    await deals.skip(timedelta(minutes=2))
    order = OrderPlaced(
        purchase_order="PO-4711", delivery_date=(offered + timedelta(days=8)).date()
    )
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    messages = await deals.mail(4)
    # Sent while the records were failing, at the moment the signals came.
    for message in messages[1:]:
        assert abs(sent_at(message) - offered) < timedelta(minutes=5), message["Subject"]
    assert len(await rows(ledger, STAGE_EVENTS, deal_id(handle), "at")) == len(before)
    waiting = await handle.query(DealWorkflow.status)
    assert waiting.stage is Stage.ORDER_CONFIRMED

    await ledger.run(
        lambda c: c.execute(text("ALTER TABLE deals_away RENAME TO deals")), write=True
    )
    await deals.skip(timedelta(minutes=2))  # the recorder's next retry
    events = await recorded(ledger, waiting)
    assert [e["to_stage"] for e in events] == [c.stage.value for c in waiting.history]
    [row] = await rows(ledger, DEALS, waiting.deal_id, "deal_id")
    assert row["stage"] == Stage.ORDER_CONFIRMED.value
    emails = await rows(ledger, DEAL_EMAILS, waiting.deal_id, "at")
    assert sorted(e["message_id"] for e in emails) == sorted(m.message_id for m in waiting.messages)


@on_both_databases
async def test_a_stage_event_keeps_the_id_its_source_gave_it(
    deals: Deals, ledger: LedgerDatabase
) -> None:
    """The audit trail can be matched to the mailbox and the ERP: a buyer's reply keeps
    its Message-ID, a signal with an event id (the webhook's) keeps that id, and what
    ops or the deal itself did keeps none."""
    handle = await deals.start(kind="rfp")
    # Idle, not merely mailed: the proposal arrives a moment before the deal records it.
    await deals.settle(1)
    reply_id = "<re-proposal.4711@buyer.example.org>"
    # As the mailbox poller signals a reply (workflows/mailbox_poller.inbound_message).
    reply = InboundMessage(
        kind=InboundKind.REPLY,
        event_id=reply_id,
        source="mailbox",
        sender="bea@buyer.example.org",
        subject="Re: your proposal",
    )
    await handle.signal(INBOUND_MESSAGE, reply)
    agreed = PriceAgreed(source="webhook", event_id="erp-agreed-77")
    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, agreed)
    await deals.mail(2)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="test done"))
    final: DealStatus = await handle.result()

    assert [(c.signal, c.event_id) for c in final.history if c.event_id] == [
        (BuyerSignal.BUYER_REPLIED.value, reply_id),
        (BuyerSignal.PRICE_AGREED.value, "erp-agreed-77"),
    ]
    events = await rows(ledger, STAGE_EVENTS, final.deal_id, "at")
    assert len(events) == len(final.history)
    kept = {(e["signal"], e["source_event_id"]) for e in events if e["source_event_id"]}
    assert kept == {
        (BuyerSignal.BUYER_REPLIED.value, reply_id),
        (BuyerSignal.PRICE_AGREED.value, "erp-agreed-77"),
    }
    moved = next(e for e in events if e["signal"] == BuyerSignal.PRICE_AGREED.value)
    assert (moved["from_stage"], moved["to_stage"]) == (
        Stage.PROPOSAL_RECEIVED.value,
        Stage.PRICE_AGREED.value,
    )
    cancelled = next(e for e in events if e["signal"] == BuyerSignal.CANCELLED.value)
    assert cancelled["source_event_id"] is None
