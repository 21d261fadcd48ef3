"""The ledger's half of the tokens in buyer emails, on both real databases: the rows a
send's claim writes, idempotent for retries and resends, and what resolves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from activities.signed_tokens import TokenSigner
from ledger.database import LedgerDatabase
from ledger.email_tokens import EmailTokens, TokenBook, UnsubscribeLink
from ledger.send_ledger import ClaimOutcome, SendLedger
from ledger.suppression_list import SuppressionList
from ledger.tables import REPLY_TOKENS, UNSUBSCRIBE_TOKENS
from tests.conftest import on_both_databases

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
SIGNER = TokenSigner("the-secret-these-tests-sign-their-links-with")
MESSAGE = "<D-7.001-proposal@seller.example.com>"


@pytest.fixture
async def ledger_database(ledger_url: str) -> AsyncIterator[LedgerDatabase]:
    database = LedgerDatabase(ledger_url)
    yield database
    await database.dispose()


def tokens_for(*addresses: str, message_id: str = MESSAGE) -> EmailTokens:
    links = tuple(
        UnsubscribeLink(SIGNER.unsubscribe_token_id(message_id, place, address), place, address)
        for place, address in enumerate(addresses)
    )
    return EmailTokens("D-7", message_id, SIGNER.reply_token_id("D-7"), links)


async def claim(ledger: SendLedger, attempt: int, tokens: EmailTokens, **more: object) -> None:
    await ledger.claim(
        message_id=tokens.message_id, deal_id="D-7", template="proposal", attempt=attempt,
        worker=f"w-{attempt}", now=NOW + timedelta(minutes=attempt), tokens=tokens, **more,
    )  # fmt: skip


async def rows(database: LedgerDatabase) -> list[dict[str, object]]:
    return await database.run(
        lambda c: [dict(r._mapping) for r in c.execute(select(UNSUBSCRIBE_TOKENS)).all()]
    )


@on_both_databases
async def test_the_claim_writes_one_row_a_recipient_and_a_retry_writes_none_again(
    ledger_database: LedgerDatabase,
) -> None:
    database = ledger_database
    ledger, book = SendLedger(database), TokenBook(database)
    tokens = tokens_for("eve@buyer.example.org", "Tom@Buyer.example.org")
    await claim(ledger, 1, tokens)
    await ledger.failed(MESSAGE, "451 4.3.0 try later", NOW)
    # The retry makes the same ids (nothing in them changes between attempts).
    again = tokens_for("eve@buyer.example.org", "Tom@Buyer.example.org")
    assert again == tokens
    await claim(ledger, 2, again)
    written = await rows(database)
    assert len(written) == 2
    # The rows hold the keyed hash, never an address (nor a part of one).
    assert not any(
        "buyer.example" in str(value).lower() for row in written for value in row.values()
    )
    suppressions = SuppressionList(database)
    toms = await book.opt_out_link(tokens.links[1].token_id)
    assert toms is not None
    assert (toms.deal_id, toms.message_id, toms.position) == ("D-7", MESSAGE, 1)
    assert toms.address_key == await suppressions.key_of("tom@buyer.example.org")
    assert await book.deal_of_reply(SIGNER.reply_token_id("D-7")) == "D-7"
    replies = await database.run(lambda c: c.execute(select(REPLY_TOKENS)).all())
    assert len(replies) == 1
    assert await book.opt_out_link("0" * 32) is None and await book.deal_of_reply("0" * 20) is None


@on_both_databases
async def test_a_resend_writes_nothing_twice_and_a_changed_to_list_gets_its_own_links(
    ledger_database: LedgerDatabase,
) -> None:
    database = ledger_database
    ledger, book = SendLedger(database), TokenBook(database)
    first = tokens_for("eve@buyer.example.org", "tom@buyer.example.org")
    await claim(ledger, 1, first)  # this attempt dies: held as maybe sent
    # Ops resend it; Eve has bounced meanwhile, so Tom stands first in its To list now.
    resent = tokens_for("tom@buyer.example.org")
    outcome = await ledger.claim(
        message_id=MESSAGE, deal_id="D-7", template="proposal", attempt=5, worker="w-5",
        now=NOW + timedelta(hours=1), resend=True, tokens=resent,
    )  # fmt: skip
    assert outcome.outcome is ClaimOutcome.CLAIMED
    assert resent.links[0].token_id not in {link.token_id for link in first.links}
    assert len(await rows(database)) == 3
    # Eve's link in the first copy opts out Eve, whatever stands at her place now.
    eves = await book.opt_out_link(first.links[0].token_id)
    toms = await book.opt_out_link(resent.links[0].token_id)
    suppressions = SuppressionList(database)
    assert eves is not None and eves.address_key == await suppressions.key_of(
        "eve@buyer.example.org"
    )
    assert toms is not None and toms.address_key == await suppressions.key_of(
        "tom@buyer.example.org"
    )
    assert toms.position == 0
    # A third resend with the same list: the same ids, no new row.
    await ledger.failed(MESSAGE, "451 4.3.0 try later", NOW + timedelta(hours=2))
    await claim(ledger, 6, tokens_for("tom@buyer.example.org"), resend=True)
    assert len(await rows(database)) == 3


def test_a_link_is_an_id_and_a_mac_and_refuses_any_change() -> None:
    token_id = SIGNER.unsubscribe_token_id(MESSAGE, 0, "bea@buyer.example.org")
    token = SIGNER.ledger_unsubscribe_token(token_id)
    # 16 bytes of id and 16 of MAC (128 bits), base64url: no deal, no address in it.
    assert token.startswith("t2.") and len(token) == 3 + 43
    assert SIGNER.unsubscribe_token_id_of(token) == token_id
    for altered in (token[:-1] + ("A" if token[-1] != "A" else "B"), token[:-4], token + "AAAA"):
        with pytest.raises(ValueError):
            SIGNER.unsubscribe_token_id_of(altered)
    other = TokenSigner("another-secret-that-nobody-rotated-to-us")
    with pytest.raises(ValueError):
        other.unsubscribe_token_id_of(token)


def test_the_reply_address_fits_a_local_part_for_the_longest_deal_id() -> None:
    longest = "D" + "x" * 63  # DealInput allows 64 characters
    address = SIGNER.reply_address("sales@seller.example.com", longest)
    local = address.partition("@")[0]
    assert len(local) <= 64 and longest not in address and "x" * 8 not in address
    assert SIGNER.reply_token_id_of(address) == SIGNER.reply_token_id(longest)
    # Mail systems may lower- or upper-case a local part: the token still checks.
    assert SIGNER.reply_token_id_of(address.upper()) == SIGNER.reply_token_id(longest)
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@seller.example.com"
    assert SIGNER.reply_token_id_of(forged) is None
    # The form of emails sent before it is still read, and only when signed by us.
    old = SIGNER.old_reply_address("sales@seller.example.com", "D-7")
    assert SIGNER.deal_of_reply_address(old) == "D-7"
    assert SIGNER.reply_token_id_of(old) is None
