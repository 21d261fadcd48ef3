"""The global suppression list: addresses that opted out or hard-bounced, never mailed again.

Every path that learns of an opt-out or a hard bounce writes here first and tells
the deal after: the CLI, the one-click unsubscribe, the mailbox reader (mailto
unsubscribe and DSNs), and the send activity on an SMTP 5xx. So an entry holds for
every deal at once, whatever the deal is doing, and also when it has closed or
never existed. Every buyer send reads it with one indexed query, right before
``MAIL FROM``.

An address stays on the list until ops lift it with a reason. Of an opt-out and a
lift the later one stands; a second opt-out of a suppressed address keeps the first.

Look-ups made at the same moment (the sends of a burst, the deals of a bulk start)
share one query (``LedgerDatabase.read``); it is made after every one of them asked,
so a look-up never answers from before its call.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, and_, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ledger.addresses import address_key, normalized_address
from ledger.database import Batched, DriverStatement, LedgerDatabase
from ledger.tables import LEDGER_SECRETS, SUPPRESSIONS

# Keys of one look-up query at most (SQLite allows 32766 parameters a statement).
KEYS_A_QUERY = 1000
# Addresses whose key a list remembers (normalising and hashing one costs about 0.2 ms).
KEYS_REMEMBERED = 20_000

_STANDING = (
    select(SUPPRESSIONS)
    .where(SUPPRESSIONS.c.address_key.in_(bindparam("keys", expanding=True)))
    .where(SUPPRESSIONS.c.lifted_at.is_(None))
)
# The same for one key (most look-ups: one buyer), without rendering an IN list each time.
_STANDING_ONE = (
    select(SUPPRESSIONS)
    .where(SUPPRESSIONS.c.address_key == bindparam("key"))
    .where(SUPPRESSIONS.c.lifted_at.is_(None))
)
# On SQLite: that one run on the driver's cursor, once a key (each an index look-up).
_STANDING_ONE_ON_DRIVER = DriverStatement(_STANDING_ONE, SUPPRESSIONS.c)


class SuppressionReason(StrEnum):
    OPTED_OUT = "opted_out"
    BOUNCED = "bounced"


class SuppressionSource(StrEnum):
    CLI = "cli"
    ONE_CLICK = "one-click"
    MAILTO = "mailto"
    SMTP_BOUNCE = "smtp bounce"
    DSN = "dsn"
    DEAL = "deal"  # the deal's own write: a repeat of one of the above
    IMPORTED = "imported"  # from a SuppressedAddress workflow of an earlier version
    ERASURE = "erasure"  # ``forget``: erasure includes objecting to any further mail


@dataclass(frozen=True)
class SuppressionEntry:
    address: str | None  # None once erased; the entry still stops mail
    reason: SuppressionReason
    source: str
    detail: str
    deal_id: str
    suppressed_at: datetime
    lifted_at: datetime | None = None
    lift_reason: str | None = None

    @property
    def standing(self) -> bool:
        return self.lifted_at is None

    def describe(self) -> str:
        """One line: who, what, where from, when."""
        what = self.reason.value.replace("_", " ")
        where = f" on deal {self.deal_id}" if self.deal_id else ""
        return (
            f"{self.address or '(address not kept)'} {what}{where} "
            f"({self.source}) on {self.suppressed_at:%Y-%m-%d}"
        )


class NotSuppressed(LookupError):
    """The address has no standing entry."""


class SuppressionList:
    def __init__(self, database: LedgerDatabase) -> None:
        self.database = database
        self._insert = (sqlite if database.is_sqlite else postgresql).insert
        self._key: bytes | None = None
        self._address_keys: dict[str, str] = {}

    async def _hash_key(self) -> bytes:
        if self._key is None:
            value = await self.database.run(
                lambda c: c.execute(
                    select(LEDGER_SECRETS.c.value).where(LEDGER_SECRETS.c.name == "address_key")
                ).scalar_one()
            )
            self._key = binascii.unhexlify(value)
        return self._key

    async def key_of(self, address: str) -> str:
        """The keyed hash the list (and every deal record) knows ``address`` by."""
        return address_key(address, await self._hash_key())

    async def add(
        self,
        address: str,
        reason: SuppressionReason,
        source: SuppressionSource | str,
        *,
        now: datetime,
        detail: str = "",
        deal_id: str = "",
    ) -> SuppressionEntry:
        """Suppress ``address`` (idempotent); the entry that stands afterwards."""
        key = address_key(address, await self._hash_key())
        normal = normalized_address(address)[:320]
        return await self._add(key, normal, reason, source, now, detail, deal_id)

    async def add_key(
        self,
        key: str,
        reason: SuppressionReason,
        source: SuppressionSource | str,
        *,
        now: datetime,
        detail: str = "",
        deal_id: str = "",
    ) -> SuppressionEntry:
        """Suppress the address whose keyed hash is ``key``, without knowing the address
        (an unsubscribe link names none); an entry that has the address keeps it."""
        return await self._add(key, None, reason, source, now, detail, deal_id)

    async def _add(
        self,
        key: str,
        address: str | None,
        reason: SuppressionReason,
        source: SuppressionSource | str,
        now: datetime,
        detail: str,
        deal_id: str,
    ) -> SuppressionEntry:
        fields = {
            "address": address,
            "reason": SuppressionReason(reason).value,
            "source": str(source)[:32],
            "detail": detail[:1000],
            "deal_id": deal_id[:64],
            "suppressed_at": now,
            "lifted_at": None,
            "lift_reason": None,
        }
        table = SUPPRESSIONS
        statement = self._insert(table).values(address_key=key, **fields)
        statement = statement.on_conflict_do_update(
            index_elements=["address_key"],
            set_={name: value for name, value in fields.items() if value is not None}
            | {"lifted_at": None, "lift_reason": None},
            # Only a lift older than this event gives way; a standing entry keeps its first.
            where=and_(table.c.lifted_at.is_not(None), table.c.lifted_at < now),
        )

        def transaction(connection: Connection) -> SuppressionEntry:
            connection.execute(statement)
            found = _standing_or_lifted(connection, [key])
            return found[key]

        return await self.database.run(transaction, write=True)

    async def find(self, addresses: Sequence[str]) -> dict[str, SuppressionEntry]:
        """The standing entries among ``addresses``, by the address as given: one query
        (shared with the look-ups asked at the same moment)."""
        hash_key = await self._hash_key()
        keys: dict[str, str] = {}
        for address in addresses:
            key = self._address_keys.get(address)
            if key is None:
                try:
                    key = address_key(address, hash_key)
                except ValueError:
                    continue  # not an address: nothing can be suppressed under it
                if len(self._address_keys) >= KEYS_REMEMBERED:
                    self._address_keys.clear()
                self._address_keys[address] = key
            keys[address] = key
        if not keys:
            return {}
        found = await self.database.read(_LOOK_UP, frozenset(keys.values()))
        return {a: found[k] for a, k in keys.items() if k in found}

    async def show(self, address: str) -> SuppressionEntry | None:
        """The address's entry, standing or lifted."""
        key = address_key(address, await self._hash_key())
        return (await self.database.run(lambda c: _standing_or_lifted(c, [key]))).get(key)

    async def entries(self, *, lifted: bool = False) -> list[SuppressionEntry]:
        """Every standing entry (with ``lifted``, the lifted ones too), newest first."""
        statement = select(SUPPRESSIONS).order_by(SUPPRESSIONS.c.suppressed_at.desc())
        if not lifted:
            statement = statement.where(SUPPRESSIONS.c.lifted_at.is_(None))
        rows = await self.database.run(lambda c: c.execute(statement).all())
        return [_entry(row._mapping) for row in rows]

    async def lift(self, address: str, reason: str, now: datetime) -> SuppressionEntry:
        """Take a standing entry off the list; it stays, lifted, with ``reason``."""
        key = address_key(address, await self._hash_key())

        def transaction(connection: Connection) -> SuppressionEntry:
            lifted = connection.execute(
                update(SUPPRESSIONS)
                .where(SUPPRESSIONS.c.address_key == key)
                .where(SUPPRESSIONS.c.lifted_at.is_(None))
                .values(lifted_at=now, lift_reason=reason[:1000])
            )
            if lifted.rowcount != 1:
                raise NotSuppressed(f"{normalized_address(address)} is not on the suppression list")
            return _standing_or_lifted(connection, [key])[key]

        return await self.database.run(transaction, write=True)


def _look_up(
    connection: Connection, asked: list[frozenset[str]]
) -> list[dict[str, SuppressionEntry]]:
    """Several look-ups in one query: for each, its keys' standing entries."""
    keys = sorted(frozenset().union(*asked))
    standing: dict[str, SuppressionEntry] = {}
    if _STANDING_ONE_ON_DRIVER.applies(connection):
        for key in keys:
            for found in _STANDING_ONE_ON_DRIVER.rows(connection, {"key": key}):
                standing[found["address_key"]] = _entry(found)
        return [{key: standing[key] for key in each if key in standing} for each in asked]
    for start in range(0, len(keys), KEYS_A_QUERY):
        some = keys[start : start + KEYS_A_QUERY]
        if len(some) == 1:
            rows = connection.execute(_STANDING_ONE, {"key": some[0]})
        else:
            rows = connection.execute(_STANDING, {"keys": some})
        standing.update((row.address_key, _entry(row._mapping)) for row in rows)
    return [{key: standing[key] for key in each if key in standing} for each in asked]


_LOOK_UP: Batched[frozenset[str], dict[str, SuppressionEntry]] = Batched(
    "suppression look-up", _look_up
)


def _standing_or_lifted(connection: Connection, keys: list[str]) -> dict[str, SuppressionEntry]:
    rows = connection.execute(select(SUPPRESSIONS).where(SUPPRESSIONS.c.address_key.in_(keys)))
    return {row.address_key: _entry(row._mapping) for row in rows}


def _entry(values: Mapping[str, Any]) -> SuppressionEntry:
    return SuppressionEntry(
        address=values["address"],
        reason=SuppressionReason(values["reason"]),
        source=values["source"],
        detail=values["detail"],
        deal_id=values["deal_id"],
        suppressed_at=_aware(values["suppressed_at"]),
        lifted_at=_aware(values["lifted_at"]) if values["lifted_at"] else None,
        lift_reason=values["lift_reason"],
    )


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time in the ledger is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
