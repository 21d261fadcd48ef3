"""The send ledger on both real databases: claims, the maybe-sent policy, and schema checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledger import schema
from ledger.database import LedgerDatabase, LedgerProblem
from ledger.send_ledger import ClaimOutcome, SendLedger, SendState
from tests.conftest import empty_database, on_both_databases
from tests.databases import PostgresCluster

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


def claim_of(attempt: int, **fields: object) -> dict[str, object]:
    values: dict[str, object] = {
        "message_id": "<a1@seller.example.com>",
        "deal_id": "D-1",
        "template": "proposal",
        "attempt": attempt,
        "worker": f"worker-{attempt}",
        "now": NOW + timedelta(minutes=attempt),
    }
    return {**values, **fields}


@pytest.fixture
async def ledger(ledger_url: str) -> SendLedger:
    database = LedgerDatabase(ledger_url)
    yield SendLedger(database)
    await database.dispose()


@on_both_databases
async def test_a_sent_email_is_never_claimed_again(ledger: SendLedger) -> None:
    first = await ledger.claim(**claim_of(1))
    assert first.outcome is ClaimOutcome.CLAIMED
    assert first.record.state is SendState.CLAIMED and first.record.worker == "worker-1"
    await ledger.sent("<a1@seller.example.com>", "250 2.0.0 Ok: queued as 4F2", NOW)
    retry = await ledger.claim(**claim_of(2))
    assert retry.outcome is ClaimOutcome.ALREADY_SENT
    assert retry.record.smtp_reply == "250 2.0.0 Ok: queued as 4F2"
    assert retry.record.attempt == 1
    # Not even ops' resend sends a recorded email twice.
    assert (await ledger.claim(**claim_of(3), resend=True)).outcome is ClaimOutcome.ALREADY_SENT


@on_both_databases
async def test_a_claim_left_by_a_dead_attempt_is_held_as_maybe_sent(ledger: SendLedger) -> None:
    assert (await ledger.claim(**claim_of(1))).outcome is ClaimOutcome.CLAIMED
    # Attempt 1 died after claiming: the relay may have the email, or not.
    held = await ledger.claim(**claim_of(2))
    assert held.outcome is ClaimOutcome.MAYBE_SENT
    assert (held.record.attempt, held.record.worker) == (1, "worker-1")
    again = await ledger.claim(**claim_of(3))
    assert again.outcome is ClaimOutcome.MAYBE_SENT
    # Ops checked the relay's log and resend: the row is theirs now.
    resent = await ledger.claim(**claim_of(4), resend=True)
    assert resent.outcome is ClaimOutcome.CLAIMED and resent.record.attempt == 4


@on_both_databases
async def test_a_failed_send_may_be_claimed_by_the_retry(ledger: SendLedger) -> None:
    await ledger.claim(**claim_of(1))
    await ledger.failed("<a1@seller.example.com>", "451 4.3.0 try later", NOW)
    failed = await ledger.find("<a1@seller.example.com>")
    assert failed is not None and failed.state is SendState.FAILED
    assert failed.error == "451 4.3.0 try later"
    retry = await ledger.claim(**claim_of(2))
    assert retry.outcome is ClaimOutcome.CLAIMED
    assert retry.record.state is SendState.CLAIMED and retry.record.error is None


@on_both_databases
async def test_only_one_of_two_racing_claims_wins(ledger: SendLedger) -> None:
    import asyncio

    outcomes = await asyncio.gather(*(ledger.claim(**claim_of(n)) for n in (1, 2, 3, 4)))
    assert sorted(o.outcome.value for o in outcomes) == ["claimed"] + ["maybe sent"] * 3


@on_both_databases
async def test_a_worker_refuses_an_old_schema_and_upgrade_fixes_it(
    database: str, tmp_path, request: pytest.FixtureRequest
) -> None:
    url = await empty_database(database, tmp_path, request)
    database = LedgerDatabase(url)
    try:
        with pytest.raises(LedgerProblem, match=r"run 'python starter.py db upgrade'"):
            await schema.check(database)
        before, now = await schema.upgrade(url)
        assert (before, now) == (None, schema.head())
        await schema.check(database)
        assert await schema.upgrade(url) == (schema.head(), schema.head())  # idempotent
    finally:
        await database.dispose()


async def test_a_missing_postgres_database_says_how_to_create_it(
    postgres: PostgresCluster,
) -> None:
    with pytest.raises(LedgerProblem) as problem:
        await schema.upgrade(postgres.url("no_such_db"))
    assert "'no_such_db' does not exist" in str(problem.value)
    assert "createdb no_such_db" in str(problem.value)
    assert "\n" not in str(problem.value)


async def test_an_unreachable_database_says_what_to_do() -> None:
    from devstack import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/dealflow"
    with pytest.raises(LedgerProblem) as problem:
        await schema.upgrade(url)
    message = str(problem.value)
    assert message.startswith("cannot reach the ledger database on 127.0.0.1:")
    assert "DEALFLOW_DATABASE_URL" in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://x@localhost/dealflow", "the ledger runs on sqlite or postgresql"),
        ("not a url", "is not a database URL"),
    ],
)
def test_a_bad_database_url_is_one_line(url: str, says: str) -> None:
    from ledger.database import async_url

    with pytest.raises(LedgerProblem, match=says):
        async_url(url)
