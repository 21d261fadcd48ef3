"""Forgetting a person (GDPR art. 17): their name and address leave every ledger record.

What stays is the suppression entry, keyed by the keyed hash of the address, so the
forgotten person is never mailed again (erasure comes with an objection to further
mail, art. 21). The hash finds the person again only for someone who already knows
the address.

Deleted: the person's unsubscribe links (``email_tokens``): they hold only the keyed
hash, but say which emails the person got, and erasure suppresses them anyway.

Scrubbed: the deal contacts' name and address, and every place free text may quote
them: stage-event notes, interview answers, outcome notes, and the relay's replies
and errors in the send ledger. A name is scrubbed in the deals the person was a
contact of; the address everywhere. Running it again changes nothing more.

Temporal still holds an open deal's contacts (encrypted by the payload codec) until
the deal ends and the namespace's retention passes; ``forget`` names such deals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Column, Connection, Table, func, or_, select, update

from ledger.addresses import normalized_address
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
# Name parts shorter than this are not scrubbed on their own ("Li" would eat "Lisbon").
SHORTEST_NAME_PART = 3

# Free text that may quote a person, and the key columns to write it back by.
_TEXTS: tuple[tuple[Table, tuple[Column, ...], tuple[str, ...]], ...] = (
    (STAGE_EVENTS, (STAGE_EVENTS.c.event_key,), ("note",)),
    (DEALS, (DEALS.c.deal_id,), ("outcome_note",)),
    (
        INTERVIEWS,
        (INTERVIEWS.c.deal_id,),
        ("participants", "why_decided", "decision_process", "free_text"),
    ),
    (SENT_EMAILS, (SENT_EMAILS.c.message_id,), ("smtp_reply", "error")),
)


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
            detail="erasure requested (forget)",
        )

    def transaction(connection: Connection) -> Forgotten:
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
        connection.execute(
            update(SUPPRESSIONS).where(SUPPRESSIONS.c.address_key == key).values(address=None)
        )
        result.links = forget_links(connection, key)
        scrubbed: set[tuple[object, ...]] = set()
        everywhere = _pattern(addresses)
        in_their_deals = _pattern(addresses | _name_words(names))
        for table, keys, columns in _TEXTS:
            assert everywhere is not None
            mentions = or_(*(_mentions(table, columns, a) for a in addresses))
            scrubbed |= _scrub(connection, table, keys, columns, everywhere, mentions)
            if in_their_deals is not None and result.deals and "deal_id" in table.c:
                theirs = table.c.deal_id.in_(result.deals)
                scrubbed |= _scrub(connection, table, keys, columns, in_their_deals, theirs)
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
