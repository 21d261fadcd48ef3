"""Writing a deal's records: the rows that outlive the deal's Temporal history.

One batch (``workflows.deal_record.DealRecordBatch``) is one transaction, and every
row in it is written by its key so that the same batch written twice (a retried
activity, a replayed history) leaves the ledger as writing it once did:

- the deal row is replaced only by a snapshot at least as new as the stored one, so a
  late retry of an older batch cannot move a deal back;
- contacts, stage events and rep tasks are inserted once and never changed: a contact
  that ``forget`` erased stays erased when the still-running deal records again;
- an email's row is inserted as the deal first saw it and updated only while it is
  still ``sending`` or ``failed`` (ops may resend it); a final outcome is never
  overwritten;
- the interview is replaced whole, with its reason codes.

No write brings back a person ``forget`` erased (``ledger.erasure.Erased``): a deal
that had a person erased gets its new free text withheld (``[forgotten]``) and keeps
the texts ``forget`` scrubbed, while its stages, values, dates and codes update; a
forgotten person's contact row is written empty and their address is taken out of
any deal's new text.

Text longer than its column is cut to fit rather than refused: a buyer's long note
must not keep a deal's records out of the ledger.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from enum import Enum
from functools import partial
from typing import Any

from sqlalchemy import Connection, String, Table, bindparam, case, delete, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from ledger import deal_facts
from ledger.addresses import address_key
from ledger.database import Batched, DriverStatement, LedgerDatabase
from ledger.erasure import Erased, erased_for
from ledger.tables import (
    DEAL_CONTACTS,
    DEAL_EMAILS,
    DEALS,
    INTERVIEW_REASONS,
    INTERVIEWS,
    LEDGER_SECRETS,
    REP_TASKS,
    STAGE_EVENTS,
)
from workflows.deal_record import DealRecordBatch, DealSnapshot, EmailRecord, StageEventRecord
from workflows.models import SignalPayload

# An email still in flight, or failed and perhaps resent (under the same Message-ID):
# any other outcome is final.
_NOT_FINAL = ("sending", "failed")


_Write = Callable[[Connection], None]


def _write_each(connection: Connection, items: list[tuple[str, _Write]]) -> list[None]:
    for _, write in items:
        write(connection)
    return [None] * len(items)


# A deal's batch is a few indexed rows: batches of several deals share a transaction (one
# commit), never two of one deal, and on SQLite they run on the event loop, without a
# trip to a thread, as a send's claim does (``ledger.database``).
_BATCHES: Batched[tuple[str, _Write], None] = Batched(
    "deal records", _write_each, key=lambda item: item[0]
)


# The interview's free text (the rest are codes, ratings and dates).
_INTERVIEW_TEXTS = ("participants", "why_decided", "decision_process", "free_text")


def _texts(batch: DealRecordBatch) -> list[str | None]:
    """Every text of ``batch`` that may name a person."""
    texts: list[str | None] = [batch.deal.outcome_note]
    for event in batch.events:
        texts += [event.note, event.refusal, event.source_event_id]
    if batch.interview is not None:
        texts += [getattr(batch.interview, name) for name in _INTERVIEW_TEXTS]
    return texts


def _withheld_event(event: StageEventRecord, erased: Erased) -> StageEventRecord:
    return event.model_copy(
        update={
            "note": erased.text(event.note),
            "refusal": erased.text(event.refusal) if event.refusal else event.refusal,
            "source_event_id": erased.id(event.source_event_id or "") or None,
        }
    )


def _kept(table: Table, columns: tuple[str, ...], excluded: Any) -> dict[str, Any]:
    """On a deal that had a person erased: the texts already stored (scrubbed by
    ``forget``) stay; an empty one takes the new (withheld) text."""
    return {
        name: case((table.c[name] == "", excluded[name]), else_=table.c[name]) for name in columns
    }


@functools.cache
def _lengths(table: Table) -> dict[str, int]:
    """The length of each of ``table``'s text columns that has one."""
    return {
        column.name: column.type.length
        for column in table.c
        if isinstance(column.type, String) and column.type.length
    }


def _fitted(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its text cut to the column lengths (PostgreSQL refuses longer), and
    enums as their plain values (asyncpg wants a ``str``)."""
    lengths = _lengths(table)
    fitted: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, Enum):
            value = value.value
        if isinstance(value, str) and name in lengths:
            value = value[: lengths[name]]
        fitted[name] = value
    return fitted


class DealRecords:
    """The ledger's deal records, written a batch at a time."""

    def __init__(self, database: LedgerDatabase) -> None:
        self.database = database
        self._insert: Callable[[Table], Any] = (sqlite if database.is_sqlite else postgresql).insert
        self._hash_key: bytes | None = None
        # Each statement built once, and on SQLite run on the driver's cursor (a batch is
        # a few milliseconds of the worker's CPU, half of it SQLAlchemy's work around
        # each statement): every value a bind parameter, so one compiled statement runs
        # for any row.
        self._deal_upserts = {
            kept: DriverStatement(self._deal_upsert(kept)) for kept in (False, True)
        }
        email = self._bound(DEAL_EMAILS, ("deal_id", *EmailRecord.model_fields))
        self._email_upsert = DriverStatement(
            email.on_conflict_do_update(
                index_elements=["message_id"],
                set_={"outcome": email.excluded.outcome, "at": email.excluded.at},
                # Not ``in_``: an expanding list cannot run as executemany.
                where=or_(*(DEAL_EMAILS.c.outcome == outcome for outcome in _NOT_FINAL)),
            )
        )
        self._inserts_once: dict[tuple[str, tuple[str, ...]], DriverStatement] = {}

    def _bound(self, table: Table, names: Iterable[str]) -> Any:
        """An insert of ``names`` into ``table``, each value a bind parameter."""
        return self._insert(table).values(
            {name: bindparam(name, type_=table.c[name].type) for name in names}
        )

    async def record(self, batch: DealRecordBatch) -> None:
        """Write ``batch`` (idempotent), in a transaction it may share with other deals'
        batches; once this returns, it is committed."""
        hash_key = await self._key()
        write = partial(self._write, batch=batch, hash_key=hash_key)
        await self.database.write(_BATCHES, (batch.deal.deal_id, write))

    async def refused(
        self, deal_id: str, signal: str, payload: SignalPayload, refusal: str, at: datetime
    ) -> None:
        """A signal the deal refused (its validator said why): kept with the audit trail.
        Keyed by the source's event id when it gave one, so a retried webhook writes once."""
        seed = payload.event_id or f"{at.isoformat()} {payload.model_dump_json()}"
        digest = hashlib.sha256(f"{signal} {seed}".encode()).hexdigest()[:32]
        event = StageEventRecord(
            event_key=f"{deal_id}/r-{digest}",
            at=at,
            signal=signal,
            accepted=False,
            refusal=refusal,
            source=payload.source,
            note=payload.note,
            source_event_id=payload.event_id or None,
        )
        hash_key = await self._key()

        def write(connection: Connection) -> None:
            texts = (event.refusal, event.note, event.source_event_id)
            erased = erased_for(connection, deal_id, texts, (), hash_key)
            row = {"deal_id": deal_id, **_withheld_event(event, erased).model_dump(mode="python")}
            self._insert_once(connection, STAGE_EVENTS, ["event_key"], [row])

        await self.database.run(write, write=True)

    async def _key(self) -> bytes:
        if self._hash_key is None:
            value = await self.database.run(
                lambda c: c.execute(
                    select(LEDGER_SECRETS.c.value).where(LEDGER_SECRETS.c.name == "address_key")
                ).scalar_one()
            )
            self._hash_key = binascii.unhexlify(value)
        return self._hash_key

    def _write(self, connection: Connection, batch: DealRecordBatch, hash_key: bytes) -> None:
        deal_id = batch.deal.deal_id
        keys = [address_key(contact.address, hash_key) for contact in batch.contacts]
        erased = erased_for(connection, deal_id, _texts(batch), keys, hash_key)
        self._write_deal(connection, batch, erased)
        self._insert_once(
            connection,
            DEAL_CONTACTS,
            ["deal_id", "position"],
            [
                {
                    "deal_id": deal_id,
                    "position": contact.position,
                    "address_key": key,
                    "name": None if key in erased.keys else contact.name,
                    "address": None if key in erased.keys else contact.address,
                    "role": contact.role,
                }
                for contact, key in zip(batch.contacts, keys, strict=True)
            ],
        )
        self._insert_once(
            connection,
            STAGE_EVENTS,
            ["event_key"],
            [
                {"deal_id": deal_id, **_withheld_event(event, erased).model_dump(mode="python")}
                for event in batch.events
            ],
        )
        self._insert_once(
            connection,
            REP_TASKS,
            ["task_key"],
            [{"deal_id": deal_id, **task.model_dump(mode="python")} for task in batch.tasks],
        )
        if batch.emails:
            self._email_upsert.run_each(
                connection,
                [
                    _fitted(DEAL_EMAILS, {"deal_id": deal_id, **email.model_dump(mode="python")})
                    for email in batch.emails
                ],
            )
        if batch.interview is not None:
            self._write_interview(connection, batch, erased)
        if batch.events or batch.emails:
            deal_facts.refresh_deal(connection, deal_id)

    def _deal_upsert(self, erased_in_deal: bool) -> Any:
        """The deal row's upsert: a snapshot replaces an older one, never a newer one."""
        statement = self._bound(DEALS, DealSnapshot.model_fields)
        changed = {
            name: statement.excluded[name]
            for name in DealSnapshot.model_fields
            if name != "deal_id"
        }
        if erased_in_deal:
            changed |= _kept(DEALS, ("outcome_note",), statement.excluded)
        return statement.on_conflict_do_update(
            index_elements=["deal_id"],
            set_=changed,
            where=DEALS.c.updated_at <= statement.excluded.updated_at,
        )

    def _write_deal(self, connection: Connection, batch: DealRecordBatch, erased: Erased) -> None:
        deal = batch.deal
        deal = deal.model_copy(update={"outcome_note": erased.text(deal.outcome_note)})
        row = _fitted(DEALS, deal.model_dump(mode="python"))
        self._deal_upserts[erased.in_deal].run_each(connection, [row])

    def _write_interview(
        self, connection: Connection, batch: DealRecordBatch, erased: Erased
    ) -> None:
        interview = batch.interview
        assert interview is not None
        deal_id = batch.deal.deal_id
        interview = interview.model_copy(
            update={name: erased.text(getattr(interview, name)) for name in _INTERVIEW_TEXTS}
        )
        row = _fitted(
            INTERVIEWS,
            {"deal_id": deal_id, **interview.model_dump(mode="python", exclude={"reasons"})},
        )
        statement = self._insert(INTERVIEWS).values(row)
        changed = {name: statement.excluded[name] for name in row if name != "deal_id"}
        if erased.in_deal:
            changed |= _kept(INTERVIEWS, _INTERVIEW_TEXTS, statement.excluded)
        connection.execute(
            statement.on_conflict_do_update(index_elements=["deal_id"], set_=changed)
        )
        connection.execute(delete(INTERVIEW_REASONS).where(INTERVIEW_REASONS.c.deal_id == deal_id))
        codes = sorted({code[:32] for code in interview.reasons if code})
        if codes:
            connection.execute(
                insert(INTERVIEW_REASONS), [{"deal_id": deal_id, "code": code} for code in codes]
            )

    def _insert_once(
        self, connection: Connection, table: Table, key: list[str], rows: list[dict[str, Any]]
    ) -> None:
        if not rows:
            return
        fitted = [_fitted(table, row) for row in rows]
        names = tuple(fitted[0])  # a table's rows all come from one model
        statement = self._inserts_once.get((table.name, names))
        if statement is None:
            inserted = self._bound(table, names).on_conflict_do_nothing(index_elements=key)
            statement = self._inserts_once[(table.name, names)] = DriverStatement(inserted)
        statement.run_each(connection, fitted)
