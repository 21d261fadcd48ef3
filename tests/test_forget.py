"""``starter.py forget ADDRESS``: a person leaves every deal record and stays suppressed."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select

from ledger.database import LedgerDatabase
from ledger.deal_records import DealRecords
from ledger.erasure import ERASURE_DETAIL, FORGOTTEN
from ledger.erasure import forget as forget_in
from ledger.suppression_list import SuppressionList, SuppressionReason, SuppressionSource
from ledger.tables import (
    DEAL_CONTACTS,
    DEALS,
    INTERVIEW_REASONS,
    INTERVIEWS,
    REP_TASKS,
    SENT_EMAILS,
    STAGE_EVENTS,
    SUPPRESSIONS,
    UNSUBSCRIBE_TOKENS,
)
from tests.conftest import on_both_databases
from workflows.deal_record import (
    ContactRecord,
    DealRecordBatch,
    DealSnapshot,
    InterviewRecord,
    Recorded,
    StageEventRecord,
    batch_since,
)
from workflows.models import Contact, DealStatus, InterviewRecorded, SignalPayload, StageChange
from workflows.stages import InquiryKind, Stage

ROOT = Path(__file__).resolve().parent.parent
AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ANNA = "Anna.Berg@Buyer.example"
WORDS_OF_ANNA = ("anna", "berg")


def forget(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
    env["DEALFLOW_DATABASE_URL"] = url
    env["DEALFLOW_TEMPORAL_ADDRESS"] = "127.0.0.1:9"  # forget needs no Temporal
    return subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), "forget", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, input="",
    )  # fmt: skip


def deal(deal_id: str, outcome: str | None) -> dict[str, object]:
    return {
        "deal_id": deal_id, "company": "Buyer AG", "owner": "rep@seller.example",
        "kind": "rfq", "currency": "EUR", "value": Decimal("1200.00"),
        "stage": outcome or "Quote Requested", "created_at": AT,
        "closed_at": AT if outcome else None, "outcome": outcome,
        "outcome_note": "Anna Berg chose a rival" if outcome else "", "updated_at": AT,
    }  # fmt: skip


def event(key: str, deal_id: str, note: str) -> dict[str, object]:
    return {
        "event_key": key, "deal_id": deal_id, "at": AT, "signal": "buyer_replied",
        "from_stage": "Quote Requested", "to_stage": "Quote Requested", "accepted": True,
        "source": "mailbox", "note": note,
    }  # fmt: skip


async def seed(database: LedgerDatabase, suppressions: SuppressionList) -> None:
    anna = await suppressions.key_of(ANNA)
    other = await suppressions.key_of("olaf@buyer.example")

    def write(connection) -> None:  # type: ignore[no-untyped-def]
        connection.execute(insert(DEALS), [deal("D-1", "Lost"), deal("D-2", None)])
        connection.execute(
            insert(DEAL_CONTACTS),
            [
                {"deal_id": "D-1", "position": 0, "address_key": anna, "name": "Anna Berg",
                 "address": ANNA.lower(), "role": "buyer"},
                {"deal_id": "D-1", "position": 1, "address_key": other, "name": "Olaf Lind",
                 "address": "olaf@buyer.example", "role": "finance"},
                {"deal_id": "D-2", "position": 0, "address_key": anna, "name": "Anna Berg",
                 "address": ANNA.lower(), "role": "buyer"},
            ],
        )  # fmt: skip
        connection.execute(
            insert(STAGE_EVENTS),
            [
                event("D-1/1", "D-1", "reply from anna.berg@buyer.example: Berg says no"),
                event("D-1/2", "D-1", "Olaf Lind asked for the invoice"),
                event("D-2/1", "D-2", "call with Anna tomorrow"),
                # Another deal quotes her address (a forwarded reply): scrubbed too.
                event("X-9/1", "X-9", "forwarded by ANNA.BERG@buyer.example"),
                # Not hers: someone else called Anna at another deal keeps the name.
                event("X-9/2", "X-9", "Anna from purchasing called"),
            ],
        )
        connection.execute(
            insert(INTERVIEWS),
            [{"deal_id": "D-1", "recorded_at": AT, "outcome": "Lost",
              "participants": "Anna Berg, Olaf Lind", "why_decided": "Berg found it dear",
              "decision_process": "Anna decided alone", "free_text": "",
              "rep_rating": 4, "cooperation_rating": 3}],
        )  # fmt: skip
        connection.execute(
            insert(SENT_EMAILS),
            [{"message_id": "<m1@seller.example>", "deal_id": "D-1", "template": "quotation",
              "state": "failed", "attempt": 1, "worker": "w", "claimed_at": AT,
              "error": "550 5.1.1 <anna.berg@buyer.example>: mailbox unknown"}],
        )  # fmt: skip
        # The unsubscribe links of one email to both of them.
        connection.execute(
            insert(UNSUBSCRIBE_TOKENS),
            [{"token_id": "a" * 32, "deal_id": "D-1", "message_id": "<m1@seller.example>",
              "position": 0, "address_key": anna, "created_at": AT},
             {"token_id": "b" * 32, "deal_id": "D-1", "message_id": "<m1@seller.example>",
              "position": 1, "address_key": other, "created_at": AT}],
        )  # fmt: skip

    await database.run(write, write=True)


@on_both_databases
async def test_forget_erases_the_person_everywhere_and_keeps_them_suppressed(
    ledger_url: str,
) -> None:
    database = LedgerDatabase(ledger_url)
    suppressions = SuppressionList(database)
    try:
        await seed(database, suppressions)
        done = forget(ANNA, "--yes", url=ledger_url)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert lines[0] == (
            "anna.berg@buyer.example: forgotten in 2 deal(s) (D-1, D-2): 2 contact record(s), "
            "6 text(s) scrubbed, 1 unsubscribe link(s) deleted; still suppressed "
            "(by keyed hash), never mailed again"
        )
        assert lines[1].startswith("D-2: still open; Temporal keeps this person")

        def everything(connection) -> str:  # type: ignore[no-untyped-def]
            tables = (DEALS, DEAL_CONTACTS, STAGE_EVENTS, INTERVIEWS, SENT_EMAILS, SUPPRESSIONS)
            rows = [row for table in tables for row in connection.execute(select(table))]
            return "\n".join(str(tuple(row)) for row in rows)

        left = await database.run(everything)
        hers = [line for line in left.lower().splitlines() if "x-9/2" not in line]
        for word in WORDS_OF_ANNA:
            assert not any(word in line for line in hers), word
        assert "Olaf Lind asked for the invoice" in left  # others stay
        assert "Anna from purchasing called" in left  # a namesake on another deal stays
        links = await database.run(
            lambda c: c.execute(select(UNSUBSCRIBE_TOKENS.c.token_id)).scalars().all()
        )
        assert links == ["b" * 32]  # her link is gone (she is suppressed), Olaf's stays
        entry = (await suppressions.find([ANNA]))[ANNA]
        assert entry.address is None and entry.standing  # still never mailed

        again = forget(ANNA, "--yes", url=ledger_url)
        assert again.returncode == 0, again.stderr
        assert "0 contact record(s), 0 text(s) scrubbed" in again.stdout
    finally:
        await database.dispose()


@on_both_databases
async def test_forget_asks_first_and_refuses_what_is_no_address(ledger_url: str) -> None:
    database = LedgerDatabase(ledger_url)
    suppressions = SuppressionList(database)
    try:
        await seed(database, suppressions)
        unconfirmed = forget(ANNA, url=ledger_url)  # no --yes, and "no" on stdin
        assert unconfirmed.returncode == 1
        refusal = "dealflow: nothing erased (confirm, or pass --yes)"
        assert unconfirmed.stderr.strip().endswith(refusal)
        assert await suppressions.find([ANNA]) == {}

        bad = forget("not-an-address", "--yes", url=ledger_url)
        assert bad.returncode == 1
        assert bad.stderr.strip().splitlines() == [
            "dealflow: 'not-an-address' is not an email address (local@domain)"
        ]
    finally:
        await database.dispose()


# --- Nothing written after ``forget`` brings the person back -----------------------

EVERY_TABLE = (
    DEALS, DEAL_CONTACTS, STAGE_EVENTS, INTERVIEWS, INTERVIEW_REASONS, REP_TASKS, SENT_EMAILS,
    SUPPRESSIONS,
)  # fmt: skip


async def lines_naming_anna(database: LedgerDatabase) -> list[str]:
    def everything(connection: Connection) -> list[str]:
        rows = [row for table in EVERY_TABLE for row in connection.execute(select(table))]
        return [str(tuple(row)) for row in rows]

    # X-9/2 is a namesake's event on a deal that is not hers: it keeps the name.
    return [
        line
        for line in await database.run(everything)
        if any(word in line.lower() for word in WORDS_OF_ANNA) and "'X-9/2'" not in line
    ]


async def row(database: LedgerDatabase, table: Any, **key: object) -> dict[str, Any]:
    query = select(table).where(*(table.c[name] == value for name, value in key.items()))
    found = await database.run(lambda c: c.execute(query).one())
    return dict(found._mapping)


@on_both_databases
async def test_forget_erases_what_the_persons_suppression_entry_says(ledger_url: str) -> None:
    database = LedgerDatabase(ledger_url)
    suppressions = SuppressionList(database)
    try:
        await seed(database, suppressions)
        # As the send activity writes it on a 5xx: the relay's reply names her.
        await suppressions.add(
            ANNA, SuppressionReason.BOUNCED, SuppressionSource.SMTP_BOUNCE, now=AT,
            detail="550 5.1.1 <anna.berg@buyer.example>: Recipient address rejected",
            deal_id="D-1",
        )  # fmt: skip
        # Olaf's own entry on her deal, with a rep's note about her: his stays, hers goes.
        await suppressions.add(
            "olaf@buyer.example", SuppressionReason.OPTED_OUT, SuppressionSource.CLI, now=AT,
            detail="Olaf Lind left; Anna Berg buys now", deal_id="D-1",
        )  # fmt: skip

        await forget_in(suppressions, ANNA, AT + timedelta(days=1))

        assert await lines_naming_anna(database) == []
        entry = (await suppressions.find([ANNA]))[ANNA]
        assert (entry.address, entry.detail) == (None, ERASURE_DETAIL)
        # Still what it was: a hard bounce, from the relay, on her deal, on that day.
        assert (entry.reason, entry.source, entry.deal_id, entry.suppressed_at) == (
            SuppressionReason.BOUNCED, "smtp bounce", "D-1", AT
        )  # fmt: skip
        olaf = (await suppressions.find(["olaf@buyer.example"]))["olaf@buyer.example"]
        assert (olaf.address, olaf.detail) == (
            "olaf@buyer.example", f"Olaf Lind left; {FORGOTTEN} buys now"
        )  # fmt: skip
    finally:
        await database.dispose()


@on_both_databases
async def test_forget_erases_refusals_naming_the_person_then_and_later(ledger_url: str) -> None:
    database = LedgerDatabase(ledger_url)
    suppressions = SuppressionList(database)
    records = DealRecords(database)
    not_a_contact = "anna.berg@buyer.example is not a contact of this deal"
    try:
        await seed(database, suppressions)
        # An opt-out for her sent to a deal she is no contact of, as the CLI keeps it.
        ops = SignalPayload(source="cli")
        await records.refused("X-9", "opted_out", ops, not_a_contact, AT)

        await forget_in(suppressions, ANNA, AT + timedelta(days=1))
        assert await lines_naming_anna(database) == []

        # The same mistake after the erasure, and a later note quoting her on that deal.
        later = AT + timedelta(days=2)
        await records.refused("X-9", "opted_out", ops, not_a_contact, later)
        quoting = StageEventRecord(
            event_key="X-9/e7", at=later, signal="buyer_replied", source="mailbox",
            note="forwarded by <Anna.Berg@BUYER.example>", source_event_id="<x9@buyer.example>",
        )  # fmt: skip
        x9 = DealSnapshot(
            deal_id="X-9", company="Other AG", owner="rep@seller.example", kind=InquiryKind.RFQ,
            currency="EUR", value=Decimal(1), stage=Stage.QUOTE_REQUESTED, created_at=AT,
            updated_at=later,
        )  # fmt: skip
        await records.record(DealRecordBatch(deal=x9, events=[quoting]))

        assert await lines_naming_anna(database) == []
        refusals = await database.run(
            lambda c: c.execute(
                select(STAGE_EVENTS.c.refusal).where(STAGE_EVENTS.c.accepted.is_(False))
            ).scalars().all()
        )  # fmt: skip
        assert refusals == [f"{FORGOTTEN} is not a contact of this deal"] * 2
        event = await row(database, STAGE_EVENTS, event_key="X-9/e7")
        assert event["note"] == f"forwarded by <{FORGOTTEN}>"  # X-9 is not hers: only the address
        assert event["source_event_id"] == "<x9@buyer.example>"
        # A namesake on another deal keeps her name: only the address is known to be hers.
        assert (await row(database, STAGE_EVENTS, event_key="X-9/2"))["note"] == (
            "Anna from purchasing called"
        )
    finally:
        await database.dispose()


def lost_deal(deal_id: str) -> DealStatus:
    """A lost deal as Temporal reports it: what ``ledger backfill`` reads."""
    return DealStatus(
        deal_id=deal_id, company="Buyer AG", kind=InquiryKind.RFQ, owner="rep@seller.example",
        currency="EUR", stage=Stage.LOST, value=Decimal("1100.00"),
        list_total=Decimal("1200.00"), floor_total=Decimal("1000.00"),
        discount_percent=Decimal(0), outcome_reason="Anna Berg chose a rival",
        lost_reason="price",
        history=[
            StageChange(at=AT, stage=Stage.QUOTE_REQUESTED, signal="inquiry", source="start"),
            StageChange(at=AT + timedelta(hours=1), stage=Stage.QUOTE_REQUESTED,
                        signal="buyer_replied", source="mailbox",
                        note="reply from anna.berg@buyer.example: Berg wants a call"),
            StageChange(at=AT + timedelta(hours=2), stage=Stage.LOST, signal="lost",
                        source="cli", note="Anna Berg chose a rival"),
        ],
        interview=InterviewRecorded(
            why_decided="Berg found it dear", decision_process="Anna decided alone",
            rep_rating=4, cooperation_rating=3, reasons=["price"],
            participants="Anna Berg, Olaf Lind", note="Anna: too dear",
        ),
    )  # fmt: skip


COMMITTEE = [
    Contact(name="Anna Berg", email=ANNA),
    Contact(name="Olaf Lind", email="olaf@buyer.example", role="finance"),
]


@on_both_databases
async def test_backfill_after_forget_brings_no_one_back(ledger_url: str) -> None:
    database = LedgerDatabase(ledger_url)
    suppressions = SuppressionList(database)
    records = DealRecords(database)
    try:
        # D-1 recorded itself before the erasure; D-3 never did (the ledger came later).
        recorded = batch_since(lost_deal("D-1"), COMMITTEE, AT + timedelta(hours=2),
                               Recorded(), True)  # fmt: skip
        await records.record(recorded)
        await forget_in(suppressions, ANNA, AT + timedelta(days=1))
        assert await lines_naming_anna(database) == []
        kept = await row(database, DEALS, deal_id="D-1")
        assert kept["outcome_note"] == f"{FORGOTTEN} chose a rival"

        # What ``ledger backfill`` writes: every record again, from a fresh ``Recorded``.
        for deal_id in ("D-1", "D-3"):
            later = AT + timedelta(days=2)
            await records.record(batch_since(lost_deal(deal_id), COMMITTEE, later,
                                             Recorded(), True))  # fmt: skip

        assert await lines_naming_anna(database) == []
        # D-1 keeps what forget left of its texts; D-3's texts never had her scrubbed
        # out (the ledger does not know her name any more), so they are withheld whole.
        assert (await row(database, DEALS, deal_id="D-1"))["outcome_note"] == (
            f"{FORGOTTEN} chose a rival"
        )
        assert (await row(database, INTERVIEWS, deal_id="D-1"))["participants"] == (
            f"{FORGOTTEN}, Olaf Lind"
        )
        fresh = await row(database, DEALS, deal_id="D-3")
        assert fresh["outcome_note"] == FORGOTTEN
        interview = await row(database, INTERVIEWS, deal_id="D-3")
        assert (interview["participants"], interview["why_decided"], interview["free_text"]) == (
            FORGOTTEN, FORGOTTEN, FORGOTTEN
        )  # fmt: skip
        contacts = await database.run(
            lambda c: c.execute(
                select(DEAL_CONTACTS.c.name, DEAL_CONTACTS.c.address)
                .where(DEAL_CONTACTS.c.deal_id == "D-3").order_by(DEAL_CONTACTS.c.position)
            ).all()
        )  # fmt: skip
        assert [tuple(c) for c in contacts] == [(None, None), ("Olaf Lind", "olaf@buyer.example")]
        # The figures reports read are all there, for both deals.
        for deal_id in ("D-1", "D-3"):
            deal = await row(database, DEALS, deal_id=deal_id)
            assert (deal["stage"], deal["outcome"], deal["lost_reason"], deal["value"]) == (
                "Lost", "Lost", "price", Decimal("1100.00")
            )  # fmt: skip
            interview = await row(database, INTERVIEWS, deal_id=deal_id)
            assert (interview["rep_rating"], interview["cooperation_rating"]) == (4, 3)
            assert (await row(database, INTERVIEW_REASONS, deal_id=deal_id))["code"] == "price"
            events = await database.run(
                lambda c, d=deal_id: c.execute(
                    select(STAGE_EVENTS.c.to_stage).where(STAGE_EVENTS.c.deal_id == d)
                    .order_by(STAGE_EVENTS.c.at)
                ).scalars().all()
            )  # fmt: skip
            assert events == ["Quote Requested", "Quote Requested", "Lost"]
    finally:
        await database.dispose()


@on_both_databases
async def test_a_running_deal_records_no_one_back_after_forget(ledger_url: str) -> None:
    database = LedgerDatabase(ledger_url)
    suppressions = SuppressionList(database)
    records = DealRecords(database)

    def snapshot(at: datetime, **fields: Any) -> DealSnapshot:
        return DealSnapshot(
            deal_id="D-5", company="Buyer AG", owner="rep@seller.example", kind=InquiryKind.RFQ,
            currency="EUR", created_at=AT, updated_at=at, **fields,
        )  # fmt: skip

    try:
        opened = DealRecordBatch(
            deal=snapshot(AT, value=Decimal("1200.00"), stage=Stage.QUOTE_REQUESTED),
            contacts=[ContactRecord(position=0, name="Anna Berg", address=ANNA)],
            events=[
                StageEventRecord(event_key="D-5/e0", at=AT, signal="inquiry",
                                 to_stage=Stage.QUOTE_REQUESTED, source="start"),
                StageEventRecord(event_key="D-5/e1", at=AT, signal="buyer_replied",
                                 from_stage=Stage.QUOTE_REQUESTED,
                                 to_stage=Stage.QUOTE_REQUESTED, source="mailbox",
                                 note="Anna Berg asked for a call"),
            ],
        )  # fmt: skip
        await records.record(opened)
        await forget_in(suppressions, ANNA, AT + timedelta(hours=1))

        # The deal goes on, and its next batch (no contacts: it sent them already)
        # still quotes her in its notes, its outcome and its interview.
        closed_at = AT + timedelta(hours=3)
        closing = DealRecordBatch(
            deal=snapshot(closed_at, value=Decimal("1100.00"), stage=Stage.LOST,
                          closed_at=closed_at, outcome=Stage.LOST, lost_reason="price",
                          outcome_note="Anna Berg chose a rival"),
            events=[
                StageEventRecord(event_key="D-5/e2", at=closed_at, signal="lost",
                                 from_stage=Stage.QUOTE_REQUESTED, to_stage=Stage.LOST,
                                 source="cli", note="call with Berg: no"),
            ],
            interview=InterviewRecord(recorded_at=closed_at, outcome=Stage.LOST,
                                      participants="Anna Berg", why_decided="Berg found it dear",
                                      rep_rating=2, cooperation_rating=5, reasons=["price"]),
        )  # fmt: skip
        await records.record(closing)
        await records.record(closing)  # a retried batch

        assert await lines_naming_anna(database) == []
        deal = await row(database, DEALS, deal_id="D-5")
        assert (deal["stage"], deal["outcome"], deal["lost_reason"], deal["value"]) == (
            "Lost", "Lost", "price", Decimal("1100.00")
        )  # fmt: skip
        assert deal["closed_at"] is not None and deal["outcome_note"] == FORGOTTEN
        notes = await database.run(
            lambda c: c.execute(
                select(STAGE_EVENTS.c.event_key, STAGE_EVENTS.c.to_stage, STAGE_EVENTS.c.note)
                .where(STAGE_EVENTS.c.deal_id == "D-5").order_by(STAGE_EVENTS.c.event_key)
            ).all()
        )  # fmt: skip
        assert [tuple(n) for n in notes] == [
            ("D-5/e0", "Quote Requested", ""),
            ("D-5/e1", "Quote Requested", f"{FORGOTTEN} asked for a call"),
            ("D-5/e2", "Lost", FORGOTTEN),
        ]
        interview = await row(database, INTERVIEWS, deal_id="D-5")
        assert (interview["participants"], interview["why_decided"]) == (FORGOTTEN, FORGOTTEN)
        assert (interview["rep_rating"], interview["cooperation_rating"]) == (2, 5)
        assert (await row(database, INTERVIEW_REASONS, deal_id="D-5"))["code"] == "price"
    finally:
        await database.dispose()
