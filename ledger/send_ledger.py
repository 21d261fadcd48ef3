"""The send ledger: what was sent, by Message-ID, so that no retry sends an email twice.

A send claims its Message-ID right before SMTP DATA and marks it sent after the
relay's ``250``. A retry then finds one of three things:

- nothing, or a *failed* row: the email never reached the relay; claim it and send.
- a *sent* row: the email went out; complete without sending.
- a *claimed* row of an earlier attempt: that attempt died between claiming and
  recording the reply, so the relay may or may not have the email. The policy is
  **maybe sent**: hold it, show it on the deal, and let ops ``resend`` after checking.

The one window left for a duplicate is between the relay's ``250`` and the write of
*sent*: a process that dies there leaves a *claimed* row, which the policy holds
rather than sends, so even that window yields a held email, not a second copy.

Claims and sent/failed marks go through the ledger's batch writer
(``ledger.database``): the claims of a batch are one ``INSERT ... ON CONFLICT DO
NOTHING RETURNING`` for all their Message-IDs, and only those that found a row
already there look at it one by one, exactly as a claim alone does; the marks are one
``UPDATE`` run for every Message-ID. Two claims of one Message-ID never share the
statement: the later one finds the earlier one's row, so exactly one of them wins.
On SQLite, which runs in this process, the claims of a batch are that statement run
for each Message-ID in turn, and both run on the driver's cursor
(``ledger.database.DriverStatement``): SQLAlchemy's work around each statement cost
more than SQLite's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Update

from ledger.database import Batched, DriverStatement, LedgerDatabase
from ledger.email_tokens import EmailTokens, TokenWriter
from ledger.tables import SENT_EMAILS


class SendState(StrEnum):
    CLAIMED = "claimed"
    SENT = "sent"
    FAILED = "failed"


class NotHeld(ValueError):
    """An email ops named as delivered that the ledger does not hold as maybe sent."""


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # this attempt may send
    ALREADY_SENT = "already sent"  # an earlier attempt sent it: do not send again
    MAYBE_SENT = "maybe sent"  # an earlier attempt died mid-send: hold it


@dataclass(frozen=True)
class SendRecord:
    message_id: str
    deal_id: str
    template: str
    state: SendState
    attempt: int
    worker: str
    claimed_at: datetime
    finished_at: datetime | None
    smtp_reply: str | None
    error: str | None
    # Positions in the email's To list whose copy the relay took (one copy a recipient).
    delivered_copies: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    record: SendRecord


@dataclass(frozen=True)
class _ClaimRequest:
    message_id: str
    fields: dict[str, Any]
    resend: bool
    tokens: EmailTokens | None = None


# Statements built once: building one per call cost more than running it.
_FIND = select(SENT_EMAILS).where(SENT_EMAILS.c.message_id == bindparam("wanted"))


def _finish_statement(**values: Any) -> Update:
    """Mark a claimed row done; the other states are left as they are."""
    return (
        update(SENT_EMAILS)
        .where(SENT_EMAILS.c.message_id == bindparam("finished"))
        .where(SENT_EMAILS.c.state == SendState.CLAIMED.value)
        .values(finished_at=bindparam("at"), **values)
    )


_MARK_SENT = _finish_statement(state=SendState.SENT.value, smtp_reply=bindparam("reply"))
_MARK_FAILED = _finish_statement(state=SendState.FAILED.value, error=bindparam("problem"))
# A copy of a several-recipient email went: written before the next copy is sent.
_MARK_COPY = (
    update(SENT_EMAILS)
    .where(SENT_EMAILS.c.message_id == bindparam("finished"))
    .where(SENT_EMAILS.c.state == SendState.CLAIMED.value)
    .values(delivered_copies=bindparam("copies"))
)


def _marks(name: str, statement: Update) -> Batched[dict[str, Any], None]:
    on_driver = DriverStatement(statement)

    def run(connection: Connection, marks: list[dict[str, Any]]) -> list[None]:
        # In order, one after the other.
        if on_driver.applies(connection):
            on_driver.run_many(connection, marks)
        else:
            connection.execute(statement, marks)
        return [None] * len(marks)

    return Batched(name, run)


_SENT_MARKS = _marks("mark sent", _MARK_SENT)
_FAILED_MARKS = _marks("mark failed", _MARK_FAILED)
_COPY_MARKS = _marks("mark copy", _MARK_COPY)


def copies_text(copies: frozenset[int]) -> str:
    return ",".join(str(position) for position in sorted(copies))


def _copies(text: str | None) -> frozenset[int]:
    return frozenset(int(part) for part in (text or "").split(",") if part.strip().isdigit())


class SendLedger:
    def __init__(self, database: LedgerDatabase) -> None:
        self.database = database
        self._insert = (sqlite if database.is_sqlite else postgresql).insert
        self._claim_rows = (
            self._insert(SENT_EMAILS)
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(*SENT_EMAILS.c)
        )
        self._claim_row = DriverStatement(self._claim_rows, SENT_EMAILS.c)
        self._claims: Batched[_ClaimRequest, Claim] = Batched(
            "claim", self._claim_all, key=lambda claim: claim.message_id
        )
        self._tokens = TokenWriter(database.is_sqlite)

    async def find(self, message_id: str) -> SendRecord | None:
        return await self.database.run(lambda c: _find(c, message_id))

    async def claim(
        self,
        *,
        message_id: str,
        deal_id: str,
        template: str,
        attempt: int,
        worker: str,
        now: datetime,
        resend: bool = False,
        tokens: EmailTokens | None = None,
    ) -> Claim:
        """Claim ``message_id`` for this attempt, unless the ledger says it must not send.

        ``resend``: ops checked a held (maybe sent) email and asked for it again.
        ``tokens``: what the email's links and Reply-To stand for, written in the claim's
        transaction (whatever its outcome: the same ids as any earlier attempt's).
        """
        fields = {
            "deal_id": deal_id,
            "template": template,
            "state": SendState.CLAIMED.value,
            "attempt": attempt,
            "worker": worker[:255],
            "claimed_at": now,
            "finished_at": None,
            "smtp_reply": None,
            "error": None,
        }
        claim = _ClaimRequest(message_id, fields, resend, tokens)
        return await self.database.write(self._claims, claim)

    def _claim_all(self, connection: Connection, claims: list[_ClaimRequest]) -> list[Claim]:
        """Claims of distinct Message-IDs: one insert for all, then those that found a row."""
        # In Message-ID order, so two processes' batches lock rows in one order.
        rows = [
            {"message_id": claim.message_id, **claim.fields}
            for claim in sorted(claims, key=lambda claim: claim.message_id)
        ]
        tokens = [claim.tokens for claim in claims if claim.tokens is not None]
        if tokens:
            self._tokens.write(connection, tokens, claims[0].fields["claimed_at"])
        if self._claim_row.applies(connection):
            inserted = {
                found["message_id"]: _record(found)
                for row in rows
                for found in self._claim_row.rows(connection, row)
            }
        else:
            inserted = {
                row.message_id: _record(row._mapping)
                for row in connection.execute(self._claim_rows, rows)
            }
        return [
            Claim(ClaimOutcome.CLAIMED, inserted[claim.message_id])
            if claim.message_id in inserted
            else _claim_existing(connection, claim)
            for claim in claims
        ]

    async def sent(self, message_id: str, smtp_reply: str, now: datetime) -> None:
        mark = {"finished": message_id, "at": now, "reply": smtp_reply[:1000]}
        await self.database.write(_SENT_MARKS, mark)

    async def copy_delivered(self, message_id: str, copies: frozenset[int]) -> None:
        """The relay took the copies at ``copies`` (positions in the To list) so far: a
        retry or a resend after a crash sends only the others."""
        await self.database.write(
            _COPY_MARKS, {"finished": message_id, "copies": copies_text(copies)}
        )

    async def mark_delivered(self, message_id: str, note: str, now: datetime) -> SendRecord:
        """Ops found a held (maybe sent) email in the relay's log: it was sent. A resend of
        it then completes without sending. Marking it again changes nothing."""
        record = await self.find(message_id)
        if record is None:
            raise NotHeld(f"{message_id} is not in the send ledger: no attempt reached DATA")
        if record.state is SendState.FAILED:
            raise NotHeld(
                f"{message_id} failed before the relay took it ({record.error}): "
                "resend it without --delivered"
            )
        if record.state is SendState.CLAIMED:
            await self.sent(message_id, f"marked delivered by ops: {note}", now)
            record = await self.find(message_id)
            assert record is not None
        return record

    async def failed(self, message_id: str, error: str, now: datetime) -> None:
        """The relay refused it, or never got it: a retry (or resend) may claim it again."""
        mark = {"finished": message_id, "at": now, "problem": error[:2000]}
        await self.database.write(_FAILED_MARKS, mark)


def _claim_existing(connection: Connection, claim: _ClaimRequest) -> Claim:
    """The claim of a Message-ID that has a row already: the row says what this attempt does."""
    message_id = claim.message_id
    existing = _find(connection, message_id)
    assert existing is not None
    if existing.state is SendState.SENT:
        return Claim(ClaimOutcome.ALREADY_SENT, existing)
    if existing.state is SendState.CLAIMED and not claim.resend:
        return Claim(ClaimOutcome.MAYBE_SENT, existing)
    # Failed before the relay took it (or ops resend): take it over, but only if
    # nobody else changed the row since we read it.
    taken = connection.execute(
        update(SENT_EMAILS)
        .where(SENT_EMAILS.c.message_id == message_id)
        .where(SENT_EMAILS.c.state == existing.state.value)
        .where(SENT_EMAILS.c.attempt == existing.attempt)
        .where(SENT_EMAILS.c.worker == existing.worker)
        .values(**claim.fields)
    )
    now_found = _find(connection, message_id)
    assert now_found is not None
    outcome = ClaimOutcome.CLAIMED if taken.rowcount == 1 else ClaimOutcome.MAYBE_SENT
    return Claim(outcome, now_found)


def _find(connection: Connection, message_id: str) -> SendRecord | None:
    row = connection.execute(_FIND, {"wanted": message_id}).one_or_none()
    return None if row is None else _record(row._mapping)


def _record(values: Mapping[str, Any]) -> SendRecord:
    return SendRecord(
        message_id=values["message_id"],
        deal_id=values["deal_id"],
        template=values["template"],
        state=SendState(values["state"]),
        attempt=values["attempt"],
        worker=values["worker"],
        claimed_at=values["claimed_at"],
        finished_at=values["finished_at"],
        smtp_reply=values["smtp_reply"],
        error=values["error"],
        delivered_copies=_copies(values.get("delivered_copies")),
    )
