"""The deal-record writer: each batch's rows by their keys, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Table, func, select, update
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.deal_records import DealRecorder
from ledger.database import LedgerDatabase
from ledger.deal_records import DealRecords
from ledger.tables import (
    DEAL_CONTACTS,
    DEAL_EMAILS,
    DEALS,
    INTERVIEW_REASONS,
    INTERVIEWS,
    REP_TASKS,
    STAGE_EVENTS,
)
from tests.conftest import on_both_databases
from workflows.deal_record import (
    ContactRecord,
    DealRecordBatch,
    DealSnapshot,
    EmailRecord,
    InterviewRecord,
    Recorded,
    StageEventRecord,
    TaskRecord,
    batch_since,
)
from workflows.models import Contact, DealStatus
from workflows.stages import InquiryKind, Stage

AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[LedgerDatabase]:
    database = LedgerDatabase(ledger_url)
    yield database
    await database.dispose()


def snapshot(
    stage: Stage = Stage.QUOTE_REQUESTED, at: datetime = AT, **fields: Any
) -> DealSnapshot:
    return DealSnapshot(
        deal_id="ACME-1", company="Acme Robotics", owner="rep@seller.example",
        kind=InquiryKind.RFQ, currency="EUR", value=Decimal("9000.00"), stage=stage,
        created_at=AT, updated_at=at, **fields,
    )  # fmt: skip


def first_batch() -> DealRecordBatch:
    return DealRecordBatch(
        deal=snapshot(next_touch_at=AT + timedelta(days=3)),
        contacts=[ContactRecord(position=0, name="Dana Buyer", address="Dana@Acme.example")],
        events=[
            StageEventRecord(
                event_key="ACME-1/0", at=AT, signal="started", to_stage=Stage.QUOTE_REQUESTED,
                source="cli",
            ),
            StageEventRecord(
                event_key="ACME-1/1", at=AT + timedelta(hours=1), signal="discount_requested",
                from_stage=Stage.QUOTE_REQUESTED, accepted=False,
                refusal="20% is below the floor (at most 10%)", source="cli",
            ),
        ],
        emails=[
            EmailRecord(
                message_id="<q1@seller.example>", step="quotation", template="quotation",
                recipients=1, at=AT, outcome="sending",
            )
        ],
        tasks=[
            TaskRecord(
                task_key="ACME-1/task/0", template="task_negotiate",
                assignee="rep@seller.example", at=AT,
            )
        ],
    )  # fmt: skip


async def rows(ledger: LedgerDatabase, table: Table) -> list[dict[str, Any]]:
    found = await ledger.run(lambda c: c.execute(select(table)).all())
    return [dict(row._mapping) for row in found]


async def counts(ledger: LedgerDatabase) -> dict[str, int]:
    tables = (DEALS, DEAL_CONTACTS, STAGE_EVENTS, DEAL_EMAILS, REP_TASKS, INTERVIEWS)

    def count(connection: Any) -> dict[str, int]:
        return {
            t.name: connection.execute(select(func.count()).select_from(t)).scalar_one()
            for t in tables
        }

    return await ledger.run(count)


@on_both_databases
async def test_a_batch_writes_every_record_once(ledger: LedgerDatabase) -> None:
    records = DealRecords(ledger)
    await records.record(first_batch())
    await records.record(first_batch())  # a retried activity, a replayed history

    assert await counts(ledger) == {
        "deals": 1, "deal_contacts": 1, "stage_events": 2, "deal_emails": 1, "rep_tasks": 1,
        "interviews": 0,
    }  # fmt: skip
    (deal,) = await rows(ledger, DEALS)
    assert (deal["stage"], deal["kind"], deal["outcome"]) == ("Quote Requested", "rfq", None)
    assert deal["value"] == Decimal("9000.00")
    refused = next(e for e in await rows(ledger, STAGE_EVENTS) if e["event_key"] == "ACME-1/1")
    assert refused["accepted"] is False
    assert refused["refusal"] == "20% is below the floor (at most 10%)"
    assert refused["to_stage"] is None
    (contact,) = await rows(ledger, DEAL_CONTACTS)
    assert contact["address_key"] and contact["address_key"] != contact["address"]


@on_both_databases
async def test_an_older_snapshot_never_moves_a_deal_back(ledger: LedgerDatabase) -> None:
    records = DealRecords(ledger)
    await records.record(first_batch())
    won = snapshot(Stage.WON, AT + timedelta(days=9), outcome=Stage.WON, closed_at=AT)
    sent = first_batch().emails[0].model_copy(update={"outcome": "sent"})
    await records.record(DealRecordBatch(deal=won, emails=[sent]))
    await records.record(first_batch())  # a late retry of the first batch

    (deal,) = await rows(ledger, DEALS)
    assert (deal["stage"], deal["outcome"], deal["next_touch_at"]) == ("Won", "Won", None)
    (email,) = await rows(ledger, DEAL_EMAILS)
    assert email["outcome"] == "sent"


@on_both_databases
async def test_an_erased_contact_stays_erased_when_the_deal_records_again(
    ledger: LedgerDatabase,
) -> None:
    records = DealRecords(ledger)
    await records.record(first_batch())
    await ledger.run(
        lambda c: c.execute(update(DEAL_CONTACTS).values(name=None, address=None)), write=True
    )
    await records.record(first_batch())

    (contact,) = await rows(ledger, DEAL_CONTACTS)
    assert (contact["name"], contact["address"]) == (None, None)


@on_both_databases
async def test_the_interview_is_replaced_whole_with_its_reason_codes(
    ledger: LedgerDatabase,
) -> None:
    records = DealRecords(ledger)
    answers = InterviewRecord(
        recorded_at=AT, outcome=Stage.WON, participants="CFO, ops lead", rep_rating=4,
        cooperation_rating=5, why_decided="lead time", reasons=["timing", "price"],
    )  # fmt: skip
    await records.record(DealRecordBatch(deal=snapshot(), interview=answers))
    corrected = answers.model_copy(update={"rep_rating": 5, "reasons": ["timing"]})
    await records.record(DealRecordBatch(deal=snapshot(), interview=corrected))

    (interview,) = await rows(ledger, INTERVIEWS)
    assert (interview["rep_rating"], interview["why_decided"]) == (5, "lead time")
    assert [r["code"] for r in await rows(ledger, INTERVIEW_REASONS)] == ["timing"]


@on_both_databases
async def test_text_longer_than_its_column_is_cut_not_refused(ledger: LedgerDatabase) -> None:
    records = DealRecords(ledger)
    long_note = "n" * 5000
    batch = first_batch()
    batch.events[0].note = long_note
    batch.deal.outcome_note = long_note
    await records.record(batch)

    (deal,) = await rows(ledger, DEALS)
    assert deal["outcome_note"] == long_note[:1000]
    started = next(e for e in await rows(ledger, STAGE_EVENTS) if e["event_key"] == "ACME-1/0")
    assert started["note"] == long_note[:1000]


@on_both_databases
async def test_a_stage_change_keeps_its_source_event_id_and_older_histories_decode(
    ledger: LedgerDatabase,
) -> None:
    """A deal's status from before stage changes kept the source's event id (no
    ``event_id`` in its history) still decodes and records; a change with one keeps it."""
    older = {
        "deal_id": "ACME-1", "company": "Acme Robotics", "kind": "rfq",
        "owner": "rep@seller.example", "currency": "EUR", "stage": "Quote Requested",
        "value": "9000.00", "list_total": "9000.00", "floor_total": "8100.00",
        "discount_percent": "0",
        "history": [
            {"at": AT.isoformat(), "stage": "Quote Requested", "signal": "", "source": "cli"},
            {"at": (AT + timedelta(hours=2)).isoformat(), "stage": "Quote Requested",
             "signal": "buyer_replied", "source": "mailbox"},
        ],
    }  # fmt: skip
    status = DealStatus.model_validate(older)
    assert [change.event_id for change in status.history] == ["", ""]
    status.history[1].event_id = "<re-quote.1@acme.example>"
    contacts = [Contact(name="Dana Buyer", email="dana@acme.example")]
    batch = batch_since(status, contacts, AT + timedelta(hours=3), Recorded(), False)
    assert [e.source_event_id for e in batch.events] == [None, "<re-quote.1@acme.example>"]

    await DealRecords(ledger).record(batch)
    stored = {e["event_key"]: e["source_event_id"] for e in await rows(ledger, STAGE_EVENTS)}
    assert stored == {"ACME-1/e0": None, "ACME-1/e1": "<re-quote.1@acme.example>"}


async def test_the_recording_activity_writes_its_batch(ledger: LedgerDatabase) -> None:
    await ActivityEnvironment().run(DealRecorder(ledger).record, first_batch())

    assert (await counts(ledger))["stage_events"] == 2


async def test_an_unreachable_ledger_fails_the_attempt_with_one_line_for_a_retry() -> None:
    down = LedgerDatabase("postgresql://postgres@127.0.0.1:9/ledger")
    try:
        with pytest.raises(ApplicationError) as failed:
            await ActivityEnvironment().run(DealRecorder(down).record, first_batch())
    finally:
        await down.dispose()

    assert failed.value.type == "LedgerUnavailable" and not failed.value.non_retryable
    assert "cannot reach the ledger database on 127.0.0.1:9/ledger" in str(failed.value)
    assert "\n" not in str(failed.value)
