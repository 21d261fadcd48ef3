"""``starter.py forget ADDRESS``: a person leaves every deal record and stays suppressed."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert, select

from ledger.database import LedgerDatabase
from ledger.suppression_list import SuppressionList
from ledger.tables import (
    DEAL_CONTACTS,
    DEALS,
    INTERVIEWS,
    SENT_EMAILS,
    STAGE_EVENTS,
    SUPPRESSIONS,
    UNSUBSCRIBE_TOKENS,
)
from tests.conftest import on_both_databases

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
