"""Forgetting a person (GDPR art. 17): their name and address leave every ledger record.

What stays is the suppression entry, keyed by the keyed hash of the address, so the
forgotten person is never mailed again (erasure comes with an objection to further
mail, art. 21). The hash finds the person again only for someone who already knows
the address. The entry keeps its reason, source, deal and date; its free text (the
relay's reply, a DSN's subject, a rep's note: all about the person) becomes
``ERASURE_DETAIL``, which is also how the ledger knows the person was forgotten (a
lift keeps that; a new opt-out or bounce after a lift writes the entry anew, and the
person is back).

Deleted: the person's unsubscribe links (``email_tokens``): they hold only the keyed
hash, but say which emails the person got, and erasure suppresses them anyway.

Scrubbed: the deal contacts' name and address, and every place free text may quote
them: stage-event notes and refusals, interview answers, outcome notes, the relay's
replies and errors in the send ledger, and other suppression entries' details. A name
is scrubbed in the deals the person was a contact of; the address everywhere (and
from the ids sources gave events, such as an inbound Message-ID). Running it again
changes nothing more.

Nothing written later brings the person back (``Erased``, applied by
``ledger.deal_records`` to every batch and refusal, ``ledger backfill``'s too):

- a deal that had a person erased (a contact row whose name and address are empty)
  gets no new free text: each non-empty text it sends is written as ``[forgotten]``,
  and a text the ledger already holds for it (scrubbed by ``forget``) is kept as it
  is. The ledger no longer knows the name, so it cannot scrub it from new text; it
  withholds the text instead. Stages, values, dates, outcomes, reason codes and
  ratings keep updating, so the reports stay right;
- a contact whose address is a forgotten person's is written without name and
  address (a deal the ledger first hears of after the erasure);
- a forgotten person's address quoted in any deal's new text becomes ``[forgotten]``.

On PostgreSQL a write that names addresses holds a shared advisory lock that
``forget`` takes exclusively, and a write reads its deal's contacts ``FOR SHARE``, so
an erasure and a write at the same moment never miss each other's rows (SQLite runs
one writer at a time anyway).

Temporal still holds an open deal's contacts (encrypted by the payload codec) until
the deal ends and the namespace's retention passes; ``forget`` names such deals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Table,
    bindparam,
    func,
    literal,
    or_,
    select,
    update,
)

from ledger.addresses import address_key, normalized_address
from ledger.database import DriverStatement
from ledger.email_tokens import forget_links
from ledger.suppression_list import SuppressionList, SuppressionReason, SuppressionSource
from ledger.tables import (
    DEAL_CONTACTS,
    DEALS,
    INTERVIEWS,
    SENT_EMAILS,
    STAGE_EVENTS,
    SUPPRESSIONS,
)

FORGOTTEN = "[forgotten]"
# A forgotten person's suppression entry says only this (and keeps no address).
ERASURE_DETAIL = "erasure requested (forget)"
# Name parts shorter than this are not scrubbed on their own ("Li" would eat "Lisbon").
SHORTEST_NAME_PART = 3
# The PostgreSQL advisory lock between ``forget`` (exclusive) and writes naming addresses.
ERASING = 0x6465616C666F7267
# What looks like an address in free text (to test against the forgotten ones).
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
# A deal's contact addresses (None where erased), FOR SHARE on PostgreSQL. Asked by
# nearly every batch a deal records (its events carry their sources' ids): on SQLite
# it runs on the driver's cursor, where SQLAlchemy's work around it was a third of a
# batch's CPU.
_CONTACT_ADDRESSES = DriverStatement(
    select(DEAL_CONTACTS.c.address)
    .where(DEAL_CONTACTS.c.deal_id == bindparam("deal"))
    .with_for_update(read=True),
    (DEAL_CONTACTS.c.address,),
)

# Free text that may quote a person, and the key columns to write it back by.
_TEXTS: tuple[tuple[Table, tuple[Column, ...], tuple[str, ...]], ...] = (
    (STAGE_EVENTS, (STAGE_EVENTS.c.event_key,), ("note", "refusal")),
    (DEALS, (DEALS.c.deal_id,), ("outcome_note",)),
    (
        INTERVIEWS,
        (INTERVIEWS.c.deal_id,),
        ("participants", "why_decided", "decision_process", "free_text"),
    ),
    (SENT_EMAILS, (SENT_EMAILS.c.message_id,), ("smtp_reply", "error")),
    (SUPPRESSIONS, (SUPPRESSIONS.c.address_key,), ("detail", "lift_reason")),
)
# Ids that may hold an address but no name (an inbound Message-ID): the address only.
_IDS = ((STAGE_EVENTS, (STAGE_EVENTS.c.event_key,), ("source_event_id",)),)


@dataclass
class Forgotten:
    address: str
    deals: list[str] = field(default_factory=list)
    contacts: int = 0
    texts: int = 0
    links: int = 0  # unsubscribe links deleted
    # Deals still running: Temporal keeps the person until they end and retention passes.
    open_deals: list[str] = field(default_factory=list)


def _pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = sorted({w for w in words if w}, key=len, reverse=True)
    if not alternatives:
        return None
    joined = "|".join(re.escape(word) for word in alternatives)
    return re.compile(rf"(?<!\w)(?:{joined})(?!\w)", re.IGNORECASE)


def _name_words(names: Iterable[str]) -> set[str]:
    words = set()
    for name in names:
        words.add(name.strip())
        words.update(part for part in name.split() if len(part) >= SHORTEST_NAME_PART)
    return words


def _scrub(
    connection: Connection,
    table: Table,
    keys: tuple[Column, ...],
    columns: tuple[str, ...],
    pattern: re.Pattern[str],
    where: object,
) -> set[tuple[object, ...]]:
    changed: set[tuple[object, ...]] = set()
    rows = connection.execute(select(*keys, *(table.c[c] for c in columns)).where(where))
    for row in rows.all():
        values = row._mapping
        scrubbed = {c: pattern.sub(FORGOTTEN, values[c]) for c in columns if values[c] is not None}
        scrubbed = {c: text for c, text in scrubbed.items() if text != values[c]}
        if scrubbed:
            condition = [key == values[key.name] for key in keys]
            connection.execute(update(table).where(*condition).values(**scrubbed))
            changed.add((table.name, *(values[key.name] for key in keys)))
    return changed


def _mentions(table: Table, columns: tuple[str, ...], text: str) -> object:
    needle = f"%{text.lower()}%"
    return or_(*(func.lower(table.c[c]).like(needle) for c in columns))


async def forget(suppressions: SuppressionList, address: str, now: datetime) -> Forgotten:
    """Erase ``address`` (and its contacts' names) from every record; keep it suppressed."""
    normal = normalized_address(address)
    key = await suppressions.key_of(normal)
    entry = await suppressions.show(normal)
    if entry is None or not entry.standing:
        await suppressions.add(
            normal,
            SuppressionReason.OPTED_OUT,
            SuppressionSource.ERASURE,
            now=now,
            detail=ERASURE_DETAIL,
        )

    def transaction(connection: Connection) -> Forgotten:
        _lock(connection, exclusive=True)
        result = Forgotten(address=normal)
        contacts = connection.execute(
            select(DEAL_CONTACTS).where(DEAL_CONTACTS.c.address_key == key)
        ).all()
        result.deals = sorted({row.deal_id for row in contacts})
        names = [row.name for row in contacts if row.name]
        addresses = {normal, address.strip(), *(row.address for row in contacts if row.address)}
        result.contacts = sum(row.name is not None or row.address is not None for row in contacts)
        connection.execute(
            update(DEAL_CONTACTS)
            .where(DEAL_CONTACTS.c.address_key == key)
            .values(name=None, address=None)
        )
        scrubbed: set[tuple[object, ...]] = set()
        entry = update(SUPPRESSIONS).where(SUPPRESSIONS.c.address_key == key)
        said = connection.execute(
            entry.where(SUPPRESSIONS.c.detail != ERASURE_DETAIL).values(detail=ERASURE_DETAIL)
        )
        if said.rowcount:
            scrubbed.add((SUPPRESSIONS.name, key))
        connection.execute(entry.values(address=None))
        result.links = forget_links(connection, key)
        everywhere = _pattern(addresses)
        in_their_deals = _pattern(addresses | _name_words(names))
        for table, keys, columns in _TEXTS:
            assert everywhere is not None
            mentions = or_(*(_mentions(table, columns, a) for a in addresses))
            scrubbed |= _scrub(connection, table, keys, columns, everywhere, mentions)
            if in_their_deals is not None and result.deals and "deal_id" in table.c:
                theirs = table.c.deal_id.in_(result.deals)
                scrubbed |= _scrub(connection, table, keys, columns, in_their_deals, theirs)
        for table, keys, columns in _IDS:
            assert everywhere is not None
            mentions = or_(*(_mentions(table, columns, a) for a in addresses))
            scrubbed |= _scrub(connection, table, keys, columns, everywhere, mentions)
        result.texts = len(scrubbed)
        result.open_deals = sorted(
            connection.execute(
                select(DEALS.c.deal_id)
                .where(DEALS.c.deal_id.in_(result.deals))
                .where(DEALS.c.outcome.is_(None))
            ).scalars()
        )
        return result

    return await suppressions.database.run(transaction, write=True)


@dataclass(frozen=True)
class Erased:
    """What one write must leave out, because ``forget`` erased it (module docstring)."""

    # A person of the write's deal was erased: its new free text is withheld.
    in_deal: bool = False
    # Forgotten people's keys among the addresses the write names.
    keys: frozenset[str] = frozenset()
    # The key of each address quoted in the write's texts.
    quoted: Mapping[str, str] = field(default_factory=dict)

    def text(self, value: str) -> str:
        """Free text as it may be written: whole, without forgotten addresses, or withheld."""
        if not value:
            return value
        if self.in_deal:
            return FORGOTTEN
        return self.id(value)

    def id(self, value: str) -> str:
        """An id a source made (a Message-ID): without forgotten addresses, never withheld."""
        if not value or not self.keys:
            return value
        return _ADDRESS.sub(
            lambda found: FORGOTTEN if self.quoted.get(found[0]) in self.keys else found[0],
            value,
        )


def erased_for(
    connection: Connection,
    deal_id: str,
    texts: Iterable[str | None],
    contact_keys: Iterable[str],
    hash_key: bytes,
) -> Erased:
    """What a write of ``deal_id``'s ``texts`` and contacts must leave out. One query
    when the write names addresses, one more when it has text to write."""
    written = [text for text in texts if text]
    contacts = set(contact_keys)
    quoted: dict[str, str] = {}
    for text in written:
        for found in _ADDRESS.findall(text):
            with suppress(ValueError):  # no address after all: nothing to test
                quoted[found] = address_key(found, hash_key)
    named = contacts | set(quoted.values())
    keys: frozenset[str] = frozenset()
    if named:
        _lock(connection, exclusive=False)
        keys = frozenset(
            connection.execute(
                select(SUPPRESSIONS.c.address_key)
                .where(SUPPRESSIONS.c.address_key.in_(sorted(named)))
                .where(SUPPRESSIONS.c.address.is_(None))
                .where(SUPPRESSIONS.c.detail == ERASURE_DETAIL)
            ).scalars()
        )
    in_deal = bool(keys & contacts)
    if written and not in_deal:
        # FOR SHARE: a ``forget`` erasing one of them now waits for this write to commit.
        found = _CONTACT_ADDRESSES.fetch(connection, {"deal": deal_id})
        in_deal = any(row["address"] is None for row in found)
    return Erased(in_deal=in_deal, keys=keys, quoted=quoted)


def _lock(connection: Connection, *, exclusive: bool) -> None:
    if connection.dialect.name != "postgresql":
        return  # SQLite: one writer at a time
    lock = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
    connection.execute(select(lock(literal(ERASING, BigInteger))))
