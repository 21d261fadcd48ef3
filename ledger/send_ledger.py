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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ledger.database import LedgerDatabase
from ledger.tables import SENT_EMAILS


class SendState(StrEnum):
    CLAIMED = "claimed"
    SENT = "sent"
    FAILED = "failed"


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


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    record: SendRecord


class SendLedger:
    def __init__(self, database: LedgerDatabase) -> None:
        self.database = database
        self._insert = (sqlite if database.is_sqlite else postgresql).insert

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
    ) -> Claim:
        """Claim ``message_id`` for this attempt, unless the ledger says it must not send.

        ``resend``: ops checked a held (maybe sent) email and asked for it again.
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

        def transaction(connection: Connection) -> Claim:
            inserted = connection.execute(
                self._insert(SENT_EMAILS)
                .values(message_id=message_id, **fields)
                .on_conflict_do_nothing(index_elements=["message_id"])
                .returning(*SENT_EMAILS.c)
            ).one_or_none()
            if inserted is not None:
                return Claim(ClaimOutcome.CLAIMED, _record(inserted))
            existing = _find(connection, message_id)
            assert existing is not None
            if existing.state is SendState.SENT:
                return Claim(ClaimOutcome.ALREADY_SENT, existing)
            if existing.state is SendState.CLAIMED and not resend:
                return Claim(ClaimOutcome.MAYBE_SENT, existing)
            # Failed before the relay took it (or ops resend): take it over, but only if
            # nobody else changed the row since we read it.
            taken = connection.execute(
                update(SENT_EMAILS)
                .where(SENT_EMAILS.c.message_id == message_id)
                .where(SENT_EMAILS.c.state == existing.state.value)
                .where(SENT_EMAILS.c.attempt == existing.attempt)
                .where(SENT_EMAILS.c.worker == existing.worker)
                .values(**fields)
            )
            now_found = _find(connection, message_id)
            assert now_found is not None
            outcome = ClaimOutcome.CLAIMED if taken.rowcount == 1 else ClaimOutcome.MAYBE_SENT
            return Claim(outcome, now_found)

        return await self.database.run(transaction, write=True)

    async def sent(self, message_id: str, smtp_reply: str, now: datetime) -> None:
        await self._finish(message_id, SendState.SENT, now, smtp_reply=smtp_reply[:1000])

    async def failed(self, message_id: str, error: str, now: datetime) -> None:
        """The relay refused it, or never got it: a retry (or resend) may claim it again."""
        await self._finish(message_id, SendState.FAILED, now, error=error[:2000])

    async def _finish(
        self, message_id: str, state: SendState, now: datetime, **values: str
    ) -> None:
        statement = (
            update(SENT_EMAILS)
            .where(SENT_EMAILS.c.message_id == message_id)
            .where(SENT_EMAILS.c.state == SendState.CLAIMED.value)
            .values(state=state.value, finished_at=now, **values)
        )
        await self.database.run(lambda c: c.execute(statement), write=True)


def _find(connection: Connection, message_id: str) -> SendRecord | None:
    row = connection.execute(
        select(SENT_EMAILS).where(SENT_EMAILS.c.message_id == message_id)
    ).one_or_none()
    return None if row is None else _record(row)


def _record(row: Row[Any]) -> SendRecord:
    values = row._mapping
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
    )
