"""The ledger's group commit on both real databases: concurrent writes share transactions,
each caller gets its own result once its batch committed, and one bad write fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from ledger.database import LedgerDatabase
from ledger.send_ledger import ClaimOutcome, SendLedger, SendState
from ledger.suppression_list import SuppressionList, SuppressionReason, SuppressionSource
from ledger.tables import SENT_EMAILS
from tests.conftest import on_both_databases

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


def claim_of(number: int, attempt: int = 1, **fields: object) -> dict[str, object]:
    values: dict[str, object] = {
        "message_id": f"<m{number}@seller.example.com>",
        "deal_id": f"D-{number}",
        "template": "proposal",
        "attempt": attempt,
        "worker": f"worker-{attempt}",
        "now": NOW + timedelta(minutes=attempt),
    }
    return {**values, **fields}


class Transactions:
    """Counts the transactions the database committed, and what the callers knew then."""

    def __init__(self, database: LedgerDatabase) -> None:
        self.commits = 0
        self.answered_at_commit: list[int] = []
        self.callers: list[asyncio.Task[object]] = []
        event.listen(database.engine, "commit", self._committed)

    def _committed(self, _connection: object) -> None:
        self.commits += 1
        self.answered_at_commit.append(sum(task.done() for task in self.callers))

    async def gather(self, *calls: object) -> list[object]:
        self.callers = [asyncio.ensure_future(call) for call in calls]  # type: ignore[arg-type]
        return await asyncio.gather(*self.callers, return_exceptions=True)


@pytest.fixture
async def db(ledger_url: str) -> AsyncIterator[LedgerDatabase]:
    opened = LedgerDatabase(ledger_url)
    yield opened
    await opened.dispose()


@on_both_databases
async def test_concurrent_claims_share_transactions_and_each_gets_its_own_claim(
    db: LedgerDatabase,
) -> None:
    ledger = SendLedger(db)
    transactions = Transactions(db)
    claims = await transactions.gather(*(ledger.claim(**claim_of(n)) for n in range(50)))
    assert transactions.commits < 50 / 5  # one for the first, a few for the rest
    for number, claim in enumerate(claims):
        assert not isinstance(claim, BaseException), claim
        assert claim.outcome is ClaimOutcome.CLAIMED  # type: ignore[union-attr]
        assert claim.record.message_id == f"<m{number}@seller.example.com>"  # type: ignore[union-attr]
        assert claim.record.deal_id == f"D-{number}"  # type: ignore[union-attr]
    # Nobody was answered before the transaction that holds their claim committed.
    assert transactions.answered_at_commit[0] == 0
    found = await ledger.find("<m49@seller.example.com>")
    assert found is not None and found.state is SendState.CLAIMED


@on_both_databases
async def test_racing_claims_in_one_batch_one_wins_among_others(db: LedgerDatabase) -> None:
    ledger = SendLedger(db)
    await ledger.claim(**claim_of(900))  # first in a batch of its own: the rest queue behind it
    await ledger.sent("<m900@seller.example.com>", "250 ok", NOW)
    calls = [ledger.claim(**claim_of(n)) for n in range(10)]
    calls += [ledger.claim(**claim_of(7, attempt=a)) for a in (2, 3, 4)]  # three more for m7
    calls.append(ledger.claim(**claim_of(900, attempt=2)))  # sent in an earlier batch
    transactions = Transactions(db)
    claims = await transactions.gather(*calls)
    outcomes = [claim.outcome for claim in claims]  # type: ignore[union-attr]
    assert outcomes[:10] == [ClaimOutcome.CLAIMED] * 10
    assert outcomes[10:13] == [ClaimOutcome.MAYBE_SENT] * 3
    assert outcomes[13] is ClaimOutcome.ALREADY_SENT
    assert [claim.record.attempt for claim in claims[10:13]] == [1, 1, 1]  # type: ignore[union-attr]
    assert transactions.commits == 1


@on_both_databases
async def test_sent_and_failed_marks_share_a_transaction(db: LedgerDatabase) -> None:
    ledger = SendLedger(db)
    await asyncio.gather(*(ledger.claim(**claim_of(n)) for n in range(20)))
    transactions = Transactions(db)
    marks = [
        ledger.sent(f"<m{n}@seller.example.com>", f"250 queued {n}", NOW)
        if n % 2
        else ledger.failed(f"<m{n}@seller.example.com>", f"451 busy {n}", NOW)
        for n in range(20)
    ]
    await transactions.gather(*marks)
    assert transactions.commits == 1
    for number in range(20):
        row = await ledger.find(f"<m{number}@seller.example.com>")
        assert row is not None
        if number % 2:
            assert (row.state, row.smtp_reply, row.error) == (
                SendState.SENT, f"250 queued {number}", None
            )  # fmt: skip
        else:
            assert (row.state, row.smtp_reply, row.error) == (
                SendState.FAILED, None, f"451 busy {number}"
            )  # fmt: skip


def _duplicate_row(connection: object) -> None:
    """A write that breaks a constraint: the primary key of a row that exists."""
    connection.execute(  # type: ignore[attr-defined]
        insert(SENT_EMAILS).values(
            message_id="<m0@seller.example.com>", deal_id="D-0", template="proposal",
            state="claimed", attempt=9, worker="intruder", claimed_at=NOW,
        )
    )  # fmt: skip


@on_both_databases
async def test_one_failing_write_fails_alone(db: LedgerDatabase) -> None:
    ledger = SendLedger(db)
    await ledger.claim(**claim_of(0))
    calls = [ledger.claim(**claim_of(n)) for n in range(1, 11)]
    calls.insert(5, db.run(_duplicate_row, write=True))
    results = await Transactions(db).gather(*calls)
    assert isinstance(results[5], IntegrityError)
    claims = results[:5] + results[6:]
    assert [claim.outcome for claim in claims] == [ClaimOutcome.CLAIMED] * 10  # type: ignore[union-attr]
    assert db.stats.retried_alone == 11
    rows = await db.run(
        lambda c: c.execute(select(SENT_EMAILS.c.message_id, SENT_EMAILS.c.worker)).all()
    )
    assert len(rows) == 11 and ("<m0@seller.example.com>", "worker-1") in rows


def _database_gone(connection: object) -> None:
    raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))


@on_both_databases
async def test_a_failed_batch_fails_every_caller_in_it_and_keeps_nothing(
    db: LedgerDatabase,
) -> None:
    ledger = SendLedger(db)
    await ledger.claim(**claim_of(0))
    calls = [ledger.claim(**claim_of(n)) for n in range(1, 6)]
    calls.append(db.run(_database_gone, write=True))
    results = await Transactions(db).gather(*calls)
    assert all(isinstance(result, OperationalError) for result in results), results
    assert db.stats.retried_alone == 0
    assert await ledger.find("<m1@seller.example.com>") is None
    # They retry, as after any ledger outage, and claim.
    again = await asyncio.gather(*(ledger.claim(**claim_of(n)) for n in range(1, 6)))
    assert {claim.outcome for claim in again} == {ClaimOutcome.CLAIMED}


@on_both_databases
async def test_a_caller_gone_before_its_batch_leaves_no_claim(db: LedgerDatabase) -> None:
    ledger = SendLedger(db)
    gone = asyncio.ensure_future(ledger.claim(**claim_of(1)))
    await asyncio.sleep(0)  # queued, its batch not begun
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert (await ledger.claim(**claim_of(1, attempt=2))).outcome is ClaimOutcome.CLAIMED


@on_both_databases
async def test_look_ups_share_a_query_and_see_every_entry_added_before_them(
    db: LedgerDatabase,
) -> None:
    suppressions = SuppressionList(db)
    await suppressions.add("anna@example.com", SuppressionReason.OPTED_OUT,
                           SuppressionSource.CLI, now=NOW)  # fmt: skip
    before = db.stats.transactions
    asked = [[f"buyer{n}@example.com", "Anna@Example.com"] for n in range(30)]
    found = await asyncio.gather(*(suppressions.find(addresses) for addresses in asked))
    assert all(list(each) == ["Anna@Example.com"] for each in found)
    assert db.stats.transactions - before < 30 / 5

    # An opt-out written before the look-ups were asked: every one of them sees it.
    await suppressions.add(
        "bob@example.com", SuppressionReason.BOUNCED, SuppressionSource.SMTP_BOUNCE, now=NOW
    )
    after = await asyncio.gather(*(suppressions.find(["bob@example.com"]) for _ in range(5)))
    assert all("bob@example.com" in each for each in after)
    lifted = await suppressions.lift("bob@example.com", "asked by phone", NOW)
    assert not lifted.standing
    assert await suppressions.find(["bob@example.com"]) == {}
