"""The suppression list on both real databases: one key per mailbox, first entry kept,
lifts audited, and an entry that keeps working after its readable address is erased."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from ledger import schema
from ledger.addresses import NotAnAddress, normalized_address
from ledger.database import LedgerDatabase
from ledger.suppression_list import (
    NotSuppressed,
    SuppressionList,
    SuppressionReason,
    SuppressionSource,
)
from ledger.tables import SUPPRESSIONS
from tests.conftest import on_both_databases

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
OPTED_OUT, BOUNCED = SuppressionReason.OPTED_OUT, SuppressionReason.BOUNCED


@pytest.fixture
async def listed(ledger_url: str) -> AsyncIterator[SuppressionList]:
    database = LedgerDatabase(ledger_url)
    yield SuppressionList(database)
    await database.dispose()


@pytest.mark.parametrize(
    ("written", "same"),
    [
        (" Anna.Berg@Example.COM ", "anna.berg@example.com"),
        ("anna@bücher.example", "anna@xn--bcher-kva.example"),
        ("ANNA@BÜCHER.EXAMPLE.", "anna@xn--bcher-kva.example"),
        # "é" as one code point and as "e" + combining accent: one mailbox.
        ("ren\u00e9@example.com", "rene\u0301@example.com"),
    ],
)
def test_what_the_normal_form_folds(written: str, same: str) -> None:
    assert normalized_address(written) == normalized_address(same)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("anna.berg@gmail.com", "annaberg@gmail.com"),  # dots matter outside Gmail
        ("anna+quotes@example.com", "anna@example.com"),  # a sub-address is its own
        ("anna@googlemail.com", "anna@gmail.com"),  # provider aliases are not known
    ],
)
def test_what_the_normal_form_keeps_apart(one: str, other: str) -> None:
    assert normalized_address(one) != normalized_address(other)


@pytest.mark.parametrize("text", ["", "anna", "@example.com", "anna@", "anna@ ."])
def test_text_without_an_address_shape_is_refused(text: str) -> None:
    with pytest.raises(NotAnAddress, match="is not an email address"):
        normalized_address(text)


@on_both_databases
async def test_an_entry_stops_every_spelling_of_the_address(listed: SuppressionList) -> None:
    await listed.add(
        "Anna@Bücher.example", OPTED_OUT, SuppressionSource.CLI, now=NOW, deal_id="D-1"
    )
    asked = ["ANNA@xn--bcher-kva.example", "bob@bücher.example", "not an address"]
    found = await listed.find(asked)
    assert list(found) == ["ANNA@xn--bcher-kva.example"]
    entry = found["ANNA@xn--bcher-kva.example"]
    assert (entry.address, entry.reason, entry.source) == (
        "anna@xn--bcher-kva.example", OPTED_OUT, "cli"
    )  # fmt: skip
    assert (entry.deal_id, entry.suppressed_at) == ("D-1", NOW)


@on_both_databases
async def test_suppressing_again_keeps_the_first_entry(listed: SuppressionList) -> None:
    await listed.add("anna@example.com", BOUNCED, SuppressionSource.SMTP_BOUNCE, now=NOW,
                     detail="550 5.1.1", deal_id="D-1")  # fmt: skip
    again = await listed.add(
        "anna@example.com", OPTED_OUT, SuppressionSource.DEAL, now=NOW + timedelta(hours=1)
    )
    assert (again.reason, again.source, again.detail) == (BOUNCED, "smtp bounce", "550 5.1.1")
    assert len(await listed.entries()) == 1


@on_both_databases
async def test_a_lift_is_kept_and_a_later_opt_out_suppresses_again(
    listed: SuppressionList,
) -> None:
    await listed.add("anna@example.com", OPTED_OUT, SuppressionSource.MAILTO, now=NOW)
    lifted = await listed.lift("ANNA@example.com", "asked us by phone to mail her", NOW)
    assert lifted.lifted_at == NOW and not lifted.standing
    assert await listed.find(["anna@example.com"]) == {}
    assert await listed.entries() == []
    assert [e.lift_reason for e in await listed.entries(lifted=True)] == [
        "asked us by phone to mail her"
    ]
    with pytest.raises(NotSuppressed, match=r"anna@example\.com is not on the suppression list"):
        await listed.lift("anna@example.com", "twice", NOW)

    # A deal's late write of the old opt-out (made before the lift) does not undo the lift.
    await listed.add("anna@example.com", OPTED_OUT, SuppressionSource.DEAL, now=NOW)
    assert await listed.find(["anna@example.com"]) == {}
    # A new opt-out after the lift does suppress again.
    later = NOW + timedelta(days=1)
    await listed.add("anna@example.com", OPTED_OUT, SuppressionSource.ONE_CLICK, now=later)
    entry = (await listed.find(["anna@example.com"]))["anna@example.com"]
    assert (entry.source, entry.suppressed_at, entry.lifted_at) == ("one-click", later, None)


@on_both_databases
async def test_an_erased_address_still_stops_mail_and_is_not_readable(
    listed: SuppressionList,
) -> None:
    await listed.add("anna@example.com", OPTED_OUT, SuppressionSource.CLI, now=NOW)

    def keys_and_addresses(connection):  # type: ignore[no-untyped-def]
        return connection.execute(select(SUPPRESSIONS.c.address_key, SUPPRESSIONS.c.address)).all()

    [(key, address)] = await listed.database.run(keys_and_addresses)
    assert address == "anna@example.com"
    assert "anna" not in key and len(key) == 64  # a keyed hash, not the address
    await listed.database.run(
        lambda c: c.execute(update(SUPPRESSIONS).values(address=None)), write=True
    )
    found = await listed.find(["Anna@Example.com"])
    assert found["Anna@Example.com"].address is None
    assert "(address not kept)" in found["Anna@Example.com"].describe()


async def test_each_ledger_hashes_with_its_own_key(ledger_url: str, tmp_path: Path) -> None:
    """The key is made at migration: two installations never share address hashes."""
    other_url = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    await schema.upgrade(other_url)
    keys = []
    for url in (ledger_url, other_url):
        database = LedgerDatabase(url)
        await SuppressionList(database).add(
            "anna@example.com", OPTED_OUT, SuppressionSource.CLI, now=NOW
        )
        keys.append(
            await database.run(lambda c: c.execute(select(SUPPRESSIONS.c.address_key)).scalar())
        )
        await database.dispose()
    assert keys[0] != keys[1]
