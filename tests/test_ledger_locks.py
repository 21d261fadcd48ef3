"""A send's claim while another process holds the database's write lock: it waits for
the lock rather than fail (on SQLite the claim, first tried on the event loop without
waiting, goes on in a thread), then claims as usual once the lock is released."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy.engine import make_url

from ledger.database import LedgerDatabase
from ledger.send_ledger import ClaimOutcome, SendLedger, SendState
from realstack.waiting import wait_for
from tests.conftest import on_both_databases

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
MESSAGE_ID = "<m1@seller.example.com>"


def claim_of(message_id: str) -> dict[str, object]:
    return {
        "message_id": message_id, "deal_id": "D-1", "template": "proposal",
        "attempt": 1, "worker": "worker-1", "now": NOW,
    }  # fmt: skip


@asynccontextmanager
async def write_lock_held(url: str) -> AsyncIterator[None]:
    """Another process's transaction holding the write lock on the send ledger's table."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        other = sqlite3.connect(parsed.database or "", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("LOCK TABLE sent_emails IN EXCLUSIVE MODE")
        yield
        await transaction.rollback()
    finally:
        await connection.close()


@on_both_databases
async def test_a_claim_waits_for_another_process_lock_then_claims(
    ledger_url: str,
) -> None:
    database = LedgerDatabase(ledger_url)
    ledger = SendLedger(database)
    try:
        # A worker that has sent before: its connections are open.
        await ledger.claim(**claim_of("<m0@seller.example.com>"))  # type: ignore[arg-type]
        async with write_lock_held(ledger_url):
            claim = asyncio.create_task(ledger.claim(**claim_of(MESSAGE_ID)))  # type: ignore[arg-type]
            tried = database.stats.transactions
            await wait_for(lambda: database.stats.transactions > tried, "the claim is tried")
            assert not claim.done()  # the lock is held: it cannot have claimed
        got = await claim
        assert got.outcome is ClaimOutcome.CLAIMED
        found = await ledger.find(MESSAGE_ID)
        assert found is not None and found.state is SendState.CLAIMED
    finally:
        await database.dispose()
