"""Rotating the signing secret: what emails already sent carry (reply tokens, unsubscribe
links, sealed Message-IDs) keeps working through DEALFLOW_SIGNING_SECRET_PREVIOUS, and
stops working once the old secret is dropped from it."""

from __future__ import annotations

import pytest

from activities.signed_tokens import BadToken
from settings import load_settings
from tests.test_settings_and_intake import run_with_env

OLD, NEW = "o" * 40, "n" * 40


def test_tokens_and_ids_of_the_previous_secret_are_still_accepted() -> None:
    before = load_settings(_env_file=None, signing_secret=OLD).token_signer()
    sealed = before.seal_message_id("<ACME-1.001-proposal@example.com>")
    unsubscribe = before.unsubscribe_token("ACME-1", ["bea@buyer.example.org"])
    reply = before.old_reply_address("sales@example.com", "ACME-1")
    link_id = before.unsubscribe_token_id("<ACME-1.001-proposal@example.com>", 0, "bea@b.example")
    link = before.ledger_unsubscribe_token(link_id)
    ledger_reply = before.reply_address("sales@example.com", "ACME-1")

    after = load_settings(
        _env_file=None, signing_secret=NEW, signing_secret_previous=OLD
    ).token_signer()
    assert after.open_message_id(sealed) == "<ACME-1.001-proposal@example.com>"
    assert after.unsubscribe(unsubscribe).deal_id == "ACME-1"
    assert after.deal_of_reply_address(reply) == "ACME-1"
    # The ledger's tokens: the old secret's MAC still checks, so the row it names is found.
    assert after.unsubscribe_token_id_of(link) == link_id
    assert after.reply_token_id_of(ledger_reply) == before.reply_token_id("ACME-1")
    # What it makes now is the new secret's, and the old secret alone cannot read it.
    assert after.seal_message_id("<ACME-1.001-proposal@example.com>") != sealed
    assert before.open_message_id(after.seal_message_id("<A.001-x@example.com>")) is None

    dropped = load_settings(_env_file=None, signing_secret=NEW).token_signer()
    assert dropped.open_message_id(sealed) is None
    assert dropped.deal_of_reply_address(reply) is None
    assert dropped.reply_token_id_of(ledger_reply) is None
    with pytest.raises(BadToken):
        dropped.unsubscribe(unsubscribe)
    with pytest.raises(BadToken):
        dropped.unsubscribe_token_id_of(link)


def test_a_short_previous_secret_is_refused_in_one_line_without_showing_it() -> None:
    result = run_with_env(
        DEALFLOW_SIGNING_SECRET=NEW, DEALFLOW_SIGNING_SECRET_PREVIOUS=f"{OLD},tiny-old-one"
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "DEALFLOW_SIGNING_SECRET_PREVIOUS (entry 2)" in line and "at least 32" in line
    assert "tiny-old-one" not in result.stderr
