"""What the tokens in buyer emails stand for: the ledger's half of ``signed_tokens``.

A buyer email's unsubscribe links and its Reply-To carry an id and a MAC only; the
rows here say what each id means. The send writes them with its claim, in the claim's
own transaction (``SendLedger.claim``), so no email goes out with a link the ledger
cannot resolve, and a retry or resend, whose ids are the same, writes nothing new.

An unsubscribe row names the deal, the email (Message-ID) and the recipient's place in
its To list, and the recipient by the suppression list's keyed hash only: the one click
suppresses that hash, and the deal, which knows who it sent the email to, learns who
opted out from the place.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from ledger.addresses import address_key
from ledger.database import DriverStatement, LedgerDatabase
from ledger.tables import LEDGER_SECRETS, REPLY_TOKENS, UNSUBSCRIBE_TOKENS

# Addresses whose keyed hash a writer remembers (normalising and hashing cost ~0.2 ms).
KEYS_REMEMBERED = 20_000


@dataclass(frozen=True)
class UnsubscribeLink:
    """The link in one recipient's copy: its id, and who it opts out."""

    token_id: str
    position: int
    address: str  # hashed before it is written; never stored


@dataclass(frozen=True)
class EmailTokens:
    """The tokens one buyer email carries, as its send writes them."""

    deal_id: str
    message_id: str
    reply_token_id: str
    links: tuple[UnsubscribeLink, ...]


@dataclass(frozen=True)
class OptOutLink:
    """A resolved unsubscribe link: the recipient at ``position`` of ``message_id``."""

    token_id: str
    deal_id: str
    message_id: str
    position: int
    address_key: str


def _insert_or_ignore(dialect: str, table: Any) -> Insert:
    insert = (sqlite if dialect == "sqlite" else postgresql).insert
    return insert(table).on_conflict_do_nothing(index_elements=["token_id"])


class TokenWriter:
    """Writes a batch of sends' tokens inside the claims' transaction (no trip of its own)."""

    def __init__(self, is_sqlite: bool) -> None:
        dialect = "sqlite" if is_sqlite else "postgresql"
        self._links = _insert_or_ignore(dialect, UNSUBSCRIBE_TOKENS)
        self._replies = _insert_or_ignore(dialect, REPLY_TOKENS)
        self._links_on_driver = DriverStatement(self._links)
        self._replies_on_driver = DriverStatement(self._replies)
        self._hash_key: bytes | None = None
        self._keys: dict[str, str] = {}

    def _key_of(self, connection: Connection, address: str) -> str:
        if self._hash_key is None:
            value = connection.execute(
                select(LEDGER_SECRETS.c.value).where(LEDGER_SECRETS.c.name == "address_key")
            ).scalar_one()
            self._hash_key = binascii.unhexlify(value)
        key = self._keys.get(address)
        if key is None:
            if len(self._keys) >= KEYS_REMEMBERED:
                self._keys.clear()
            key = self._keys[address] = address_key(address, self._hash_key)
        return key

    def write(self, connection: Connection, sends: Sequence[EmailTokens], now: datetime) -> None:
        """Every send's rows, inserted or (already there: a retry, a resend) left alone."""
        links = [
            {
                "token_id": link.token_id,
                "deal_id": send.deal_id,
                "message_id": send.message_id,
                "position": link.position,
                "address_key": self._key_of(connection, link.address),
                "created_at": now,
            }
            for send in sends
            for link in send.links
        ]
        replies = {
            send.reply_token_id: {
                "token_id": send.reply_token_id,
                "deal_id": send.deal_id,
                "created_at": now,
            }
            for send in sends
            if send.reply_token_id
        }
        # In id order, so two processes' batches take their locks in one order.
        for rows, statement, on_driver in (
            (links, self._links, self._links_on_driver),
            (list(replies.values()), self._replies, self._replies_on_driver),
        ):
            rows.sort(key=lambda row: row["token_id"])
            if not rows:
                continue
            if on_driver.applies(connection):
                on_driver.run_many(connection, rows)
            else:
                connection.execute(statement, rows)


_LINK = select(UNSUBSCRIBE_TOKENS).where(UNSUBSCRIBE_TOKENS.c.token_id == bindparam("wanted"))
_REPLY = select(REPLY_TOKENS.c.deal_id).where(REPLY_TOKENS.c.token_id == bindparam("wanted"))
# Found by the address's index: a person has a row for each email they were sent.
_MAILED = (
    select(UNSUBSCRIBE_TOKENS.c.deal_id)
    .where(UNSUBSCRIBE_TOKENS.c.address_key == bindparam("key"))
    .where(UNSUBSCRIBE_TOKENS.c.message_id == bindparam("wanted"))
    .limit(1)
)


class TokenBook:
    """Resolves the ids the endpoints and the mailbox reader get back from buyers."""

    def __init__(self, database: LedgerDatabase) -> None:
        self.database = database

    async def opt_out_link(self, token_id: str) -> OptOutLink | None:
        """What the unsubscribe link ``token_id`` opts out; None when the ledger has no such
        link (its email never reached the relay, or its row was erased)."""

        def read(connection: Connection) -> OptOutLink | None:
            row = connection.execute(_LINK, {"wanted": token_id}).one_or_none()
            return None if row is None else _link(row._mapping)

        return await self.database.run(read)

    async def deal_of_reply(self, token_id: str) -> str | None:
        """The deal whose Reply-To carries ``token_id``; None when the ledger has none."""
        return await self.database.run(
            lambda connection: connection.execute(_REPLY, {"wanted": token_id}).scalar()
        )

    async def deal_that_mailed(self, message_id: str, address_key: str) -> str | None:
        """The deal whose email ``message_id`` went to the address of ``address_key`` (its
        link row says so); None when that email went to no such recipient."""
        return await self.database.run(
            lambda connection: connection.execute(
                _MAILED, {"wanted": message_id, "key": address_key}
            ).scalar()
        )


def forget_links(connection: Connection, key: str) -> int:
    """Erasure: the person's links go (the suppression entry already stops their mail,
    and the rows would only say which emails they got). How many went."""
    gone = connection.execute(
        delete(UNSUBSCRIBE_TOKENS).where(UNSUBSCRIBE_TOKENS.c.address_key == key)
    )
    return int(gone.rowcount or 0)


def _link(values: Mapping[str, Any]) -> OptOutLink:
    return OptOutLink(
        token_id=values["token_id"],
        deal_id=values["deal_id"],
        message_id=values["message_id"],
        position=values["position"],
        address_key=values["address_key"],
    )
