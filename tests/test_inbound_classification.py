"""Inbound email classification and deal matching, over a corpus of real-shaped messages.

Each fixture in ``tests/inbound_corpus`` copies the header shapes of the system it stands
for (Exchange, Gmail, Zimbra, Postfix, qmail, Exim, Mailman...); ``expected.csv`` says what
each one is, which deal it belongs to, and the detail that matters (return date, status).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
from datetime import date
from pathlib import Path

import pytest

from activities.inbound_mail import (
    MAX_PARTS,
    InboundKind,
    InboundMail,
    deal_of_message_id,
    match_deal,
    read_inbound,
)
from activities.signed_tokens import BadToken, TokenSigner

CORPUS = Path(__file__).parent / "inbound_corpus"
OWN = ["sales@example.com"]
UNSUBSCRIBE = "sales+unsubscribe@example.com"
DOMAINS = ["example.com"]
SIGNER = TokenSigner("corpus-secret")


def _rows() -> list[dict[str, str]]:
    with (CORPUS / "expected.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _read(raw: bytes, today: date | None = None) -> InboundMail:
    return read_inbound(raw, OWN, UNSUBSCRIBE, today=today)


def _fixture(name: str) -> InboundMail:
    return _read((CORPUS / name).read_bytes())


def test_corpus_is_complete() -> None:
    listed = {row["file"] for row in _rows()}
    on_disk = {path.name for path in CORPUS.glob("*.eml")}
    assert listed == on_disk
    assert len(listed) >= 30


@pytest.mark.parametrize("row", _rows(), ids=lambda row: row["file"])
def test_corpus_message_is_classified_and_matched(row: dict[str, str]) -> None:
    mail = _fixture(row["file"])
    match = match_deal(mail, DOMAINS, SIGNER)

    assert mail.kind == row["kind"], mail.why
    # A bounce names our email only: its deal is the ledger's to confirm (the reader asks).
    found = deal_of_message_id(match.bounced_message_id, DOMAINS) or match.deal_id
    assert found == (row["deal"] or None), match.reason
    assert mail.why
    assert match.how if found else match.reason
    detail = row["detail"]
    if mail.kind is InboundKind.BOUNCE:
        assert f"status={mail.bounce_status}" == detail
        assert mail.permanent is (detail.startswith("status=5"))
        assert mail.failed_recipient and "@" in mail.failed_recipient
    elif mail.kind is InboundKind.AUTO_REPLY:
        assert mail.returns_on == (date.fromisoformat(detail) if detail else None)
    else:
        assert detail == ""


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("dsn_postfix_511.eml", "bounced message"),
        ("ndr_exchange.eml", "bounced message"),
        ("reply_gmail_quoting.eml", "in-reply-to"),
        ("reply_gmail_references_only.eml", "references"),
        ("reply_token_only.eml", "reply-to token"),
        ("unsubscribe_valid.eml", "unsubscribe token"),
    ],
)
def test_match_says_which_evidence_named_the_deal(name: str, how: str) -> None:
    assert match_deal(_fixture(name), DOMAINS, SIGNER).how == how


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("reply_other_domain.eml", "replies to <CAHk7pQ2=zA9@mail.gmail.com>, not a message"),
        ("reply_forged_token.eml", "is not signed by us"),
        ("unsubscribe_tampered.eml", "unsubscribe token is not ours"),
        ("own_sent_copy.eml", "own message"),
        ("newsletter_bulk.eml", "list or bulk mail"),
        ("cold_email.eml", "no In-Reply-To, References or reply token"),
    ],
)
def test_no_match_says_why(name: str, reason: str) -> None:
    match = match_deal(_fixture(name), DOMAINS, SIGNER)
    assert match.deal_id is None
    assert reason in match.reason


def test_bounce_names_recipient_and_original_message() -> None:
    mail = _fixture("bounce_qmail.eml")
    assert mail.failed_recipient == "h.schmidt@globex.example"
    assert SIGNER.open_message_id(mail.original_message_id or "") == (
        "<GLOBEX-7.003-offer_follow_up@example.com>"
    )
    full = _fixture("dsn_mailbox_full_422.eml")
    assert (full.failed_recipient, full.permanent) == ("p.mueller@globex.example", False)
    assert SIGNER.open_message_id(full.original_message_id or "") == (
        "<GLOBEX-7.004-offer_follow_up@example.com>"
    )


def test_missing_message_id_falls_back_to_a_stable_hash() -> None:
    raw = (CORPUS / "broken_mime_latin1.eml").read_bytes()
    first, again = _read(raw), _read(raw)
    assert first.message_id == again.message_id
    assert first.message_id == f"<{hashlib.sha256(raw).hexdigest()}@dealflow.invalid>"
    assert _read(raw + b"\n").message_id != first.message_id
    # Undeclared latin-1 bytes come out as text, not as replacement characters.
    assert "Größe" in first.subject and "Größe" in first.snippet
    first.model_dump_json()


def test_quoted_text_does_not_change_the_class() -> None:
    original = (CORPUS / "reply_gmail_quoting.eml").read_bytes()
    quote = b"> I wanted to follow up on the proposal we sent last week."
    loud = (
        b"> Automatic reply: Out of Office. Mail delivery failed: returning message to sender.\n"
        b"> Undeliverable. To unsubscribe reply with unsubscribe. I am back on 3 January 2027."
    )
    assert quote in original
    plain, noisy = _read(original), _read(original.replace(quote, loud))
    assert plain.kind is noisy.kind is InboundKind.HUMAN_REPLY
    assert noisy.snippet == plain.snippet == SNIPPETS["reply_gmail_quoting.eml"]
    assert noisy.returns_on is None


SNIPPETS = {
    "reply_gmail_quoting.eml": "Hi Sam, Thanks for following up. We reviewed the proposal "
    "internally and would like to set up a call next week to go through the pricing for phase two.",
    "reply_outlook_quotes_our_words.eml": "Hello Sam, We are interested. Please send the updated "
    "quotation with the 3-year maintenance option, and keep me in the loop.",
    "reply_outlook_from_sent_block.eml": "Hi Sam, Jane is out of office this week, so I am "
    "picking this up. Could you send a revised timeline that starts in February?",
    "reply_outlook_german.eml": "Guten Tag Herr Seller, wir nehmen das Angebot an, bitte "
    "schicken Sie uns die Auftragsbestätigung.",
    "reply_apple_mail_inline.eml": "Hallo Herr Seller, kurze Rückfrage zu Position 3 im "
    "Angebot: ist die Montage enthalten?",
    "reply_gmail_references_only.eml": "Yeah, if you could go ahead and send the contract "
    "draft, that would be great.",
    "reply_committee_cc.eml": "Hi Sam, I run finance at ACME and Jane asked me to weigh in: we "
    "need the payment terms split 40/60 before we can sign.",
    "reply_token_only.eml": "Hi Sam, I lost the thread, sorry - can we meet on Tuesday at 10:00 "
    "to sign off the rollout plan? Jane",
    "reply_auto_submitted_no.eml": "Hello Sam, I will be out of office next week. Could we move "
    "the call to Monday 14 December? The offer itself looks good to us. Petra",
}


@pytest.mark.parametrize(("name", "snippet"), SNIPPETS.items(), ids=list(SNIPPETS))
def test_snippet_is_the_new_text_without_quote_or_signature(name: str, snippet: str) -> None:
    assert _fixture(name).snippet == snippet


def test_html_only_reply_drops_the_gmail_quote() -> None:
    raw = (
        b"From: j.doe@acme.example\nTo: sales@example.com\nSubject: Re: x\n"
        b"In-Reply-To: <ACME-1.001-proposal@example.com>\nContent-Type: text/html\n\n"
        b'<div>Yes &amp; thanks.</div><div class="gmail_quote">On Mon Sam wrote:'
        b"<blockquote>reply unsubscribe to stop</blockquote></div>"
    )
    mail = _read(raw)
    assert (mail.kind, mail.snippet) == (InboundKind.HUMAN_REPLY, "Yes & thanks.")


def test_quoted_dates_are_not_the_return_date() -> None:
    # The quoted follow-up says "back on 4 January 2027"; the auto-reply itself gives none.
    assert _fixture("ooo_quoting_original.eml").returns_on is None


def test_auto_submitted_no_overrides_an_out_of_office_subject() -> None:
    raw = (CORPUS / "reply_auto_submitted_no.eml").read_bytes()
    assert _read(raw).kind is InboundKind.HUMAN_REPLY
    without = raw.replace(b"Auto-Submitted: no\n", b"")
    assert _read(without).kind is InboundKind.AUTO_REPLY


def test_own_address_with_plus_tag_is_own() -> None:
    for sender in (b"sales+ACME-1.91c095d0dc@example.com", b"SALES@Example.COM"):
        raw = (
            b"From: Sam <" + sender + b">\nTo: j.doe@acme.example\nSubject: Re: hello\n"
            b"In-Reply-To: <ACME-1.001-proposal@example.com>\n\nhello\n"
        )
        mail = _read(raw)
        assert mail.kind is InboundKind.OWN_MESSAGE
        assert match_deal(mail, DOMAINS, SIGNER).deal_id is None
    stranger = b"From: sales+x@example.org\nTo: sales@example.com\nSubject: hi\n\nhi\n"
    assert _read(stranger).kind is InboundKind.UNRELATED


def _out_of_office(text: str, day: str = "Mon, 30 Nov 2026 10:00:00 +0000") -> bytes:
    return (
        f"From: j.doe@acme.example\nTo: sales@example.com\nDate: {day}\n"
        f"Subject: Automatic reply: proposal\nAuto-Submitted: auto-replied\n"
        f"Content-Type: text/plain; charset=utf-8\n\n{text}\n"
    ).encode()


def test_a_date_without_a_year_rolls_to_the_next_occurrence() -> None:
    after_new_year = _out_of_office("I will be back on 5 January.")
    assert _read(after_new_year, today=date(2026, 12, 20)).returns_on == date(2027, 1, 5)
    assert _read(after_new_year, today=date(2027, 1, 2)).returns_on == date(2027, 1, 5)
    # Without ``today`` the Date header's day counts.
    german = _out_of_office("Ich bin bis 14.12. nicht im Büro.")
    assert _read(german).returns_on == date(2026, 12, 14)
    late = _out_of_office("Ich bin bis 14.12. nicht im Büro.", "Tue, 15 Dec 2026 08:00 +0100")
    assert _read(late).returns_on == date(2027, 12, 14)


def test_slashed_dates_are_read_in_the_language_of_the_text() -> None:
    english = _out_of_office("I am out of the office until 05/06/2026.")
    french = _out_of_office("Je suis absent, de retour le 05/06/2026. Cordialement")
    today = date(2026, 1, 10)
    assert _read(english, today=today).returns_on == date(2026, 5, 6)
    assert _read(french, today=today).returns_on == date(2026, 6, 5)


def test_return_wins_over_until_and_text_without_return_word_gives_none() -> None:
    both = _out_of_office("Away until December 11, 2026 and back on December 14, 2026.")
    assert _read(both).returns_on == date(2026, 12, 14)
    bare = _out_of_office("Our office party is on 18 December 2026.")
    assert _read(bare).returns_on is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage without headers",
        b"From: <<<>>>\nTo: ,,,@@\nSubject: =?bogus?Q?x?=\nContent-Type: multipart/mixed\n\n--",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
        b"Content-Type: message/delivery-status\n\nFinal-Recipient: ;\nStatus: nope\n--x--",
        b"Message-ID: not an id\nReferences: <unterminated\nIn-Reply-To: >\xe9<\n\n\xe9",
    ],
)
def test_weird_input_never_raises(raw: bytes) -> None:
    mail = _read(raw)
    assert mail.message_id.startswith("<") and mail.message_id.endswith(">")
    match_deal(mail, DOMAINS, SIGNER)
    mail.model_dump_json()


def test_subject_never_names_a_deal() -> None:
    raw = b"From: x@y.example\nTo: sales@example.com\nSubject: About ACME-1\n\nACME-1?\n"
    assert match_deal(_read(raw), DOMAINS, SIGNER).deal_id is None


def test_our_message_id_needs_our_shape_and_domain() -> None:
    assert deal_of_message_id("<ACME-1.003-proposal_follow_up@example.com>", DOMAINS) == "ACME-1"
    assert deal_of_message_id("<D.001-x.002-proposal@EXAMPLE.com>", DOMAINS) == "D.001-x"
    assert deal_of_message_id("<ACME-1.003-proposal@example.org>", DOMAINS) is None
    assert deal_of_message_id("<CAHk7pQ2=zA9@mail.gmail.com>", DOMAINS) is None


def test_unsubscribe_needs_our_address_and_subject() -> None:
    token = SIGNER.unsubscribe_token("ACME-1", "j.doe@acme.example")
    to_sales = f"From: j.doe@acme.example\nTo: sales@example.com\nSubject: unsubscribe {token}\n\n"
    assert _read(to_sales.encode()).kind is not InboundKind.UNSUBSCRIBE
    to_unsub = to_sales.replace("To: sales@", "To: sales+unsubscribe@")
    mail = _read(to_unsub.encode())
    assert (mail.kind, mail.unsubscribe_token) == (InboundKind.UNSUBSCRIBE, token)
    assert match_deal(mail, DOMAINS, SIGNER).deal_id == "ACME-1"


def _dsn(recipient: str, returned: str, *, in_reply_to: str = "", to: str = OWN[0]) -> bytes:
    """A DSN (5.1.1) for ``recipient``, returning the headers of ``returned``."""
    threading = f"In-Reply-To: {in_reply_to}\n" if in_reply_to else ""
    return (
        f"From: MAILER-DAEMON@mx.evil.example\nTo: {to}\nSubject: Undelivered Mail\n"
        f"{threading}MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nfailed\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n"
        f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: 5.1.1\n\n"
        f"--B\nContent-Type: text/rfc822-headers\n\nMessage-ID: {returned}\n\n--B--\n"
    ).encode()


def test_a_bounce_names_at_most_the_email_it_returns_never_its_threading() -> None:
    """Only the returned original's sealed id makes a bounce a candidate; its In-Reply-To,
    References and the Reply-To token it went to count for nothing."""
    sealed = SIGNER.seal_message_id("<ACME-1.001-proposal@example.com>")
    reply_box = SIGNER.reply_address(OWN[0], "ACME-1")
    candidate = match_deal(_read(_dsn("j.doe@acme.example", sealed)), DOMAINS, SIGNER)
    assert (candidate.deal_id, candidate.how) == (None, "bounced message")
    assert candidate.bounced_message_id == "<ACME-1.001-proposal@example.com>"
    plain_bounce = (
        f"From: Mail Delivery System <MAILER-DAEMON@evil.example>\nTo: {reply_box}\n"
        "Subject: Undelivered Mail Returned to Sender\n\n"
        "<victim@anywhere.example>: host said: 550 5.1.1 user unknown\n"
    ).encode()
    forged = {
        "to the reply-to token": plain_bounce,
        "sealed in-reply-to": _dsn("x@evil.example", "<f@evil.example>", in_reply_to=sealed),
        "threading only": _dsn("x@evil.example", "", in_reply_to=sealed, to=reply_box),
        "guessable original": _dsn("j.doe@acme.example", "<ACME-1.001-proposal@example.com>"),
    }
    for name, raw in forged.items():
        mail = _read(raw)
        assert mail.kind is InboundKind.BOUNCE, name
        match = match_deal(mail, DOMAINS, SIGNER)
        assert (match.deal_id, match.bounced_message_id, match.reply_token_id) == (None, "", ""), (
            name
        )
        assert match.reason, name


def test_only_a_sealed_message_id_names_a_deal() -> None:
    plain = "<ACME-1.001-proposal@example.com>"
    sealed = SIGNER.seal_message_id(plain)
    assert "ACME" not in sealed and "proposal" not in sealed and "001" not in sealed
    assert sealed == SIGNER.seal_message_id(plain)  # retries and resends keep their id
    assert SIGNER.open_message_id(sealed) == plain

    def reply(in_reply_to: str) -> bytes:
        return (
            f"From: mallory@evil.example\nTo: sales@example.com\nSubject: Re: x\n"
            f"In-Reply-To: {in_reply_to}\n\nPay to this account instead.\n"
        ).encode()

    # The guessable form, an id sealed with another secret, or one altered by a character.
    altered = sealed[:5] + ("a" if sealed[5] != "a" else "b") + sealed[6:]
    for forged in (plain, TokenSigner("another-secret").seal_message_id(plain), altered):
        assert match_deal(_read(reply(forged)), DOMAINS, SIGNER).deal_id is None, forged
    assert match_deal(_read(reply(sealed)), DOMAINS, SIGNER).deal_id == "ACME-1"


def test_an_unsubscribe_token_names_no_address_and_old_links_still_work() -> None:
    token = SIGNER.unsubscribe_token("ACME-1", ["j.doe@acme.example"])
    readable = token + base64.urlsafe_b64decode(token[3:] + "==").decode("latin-1")
    assert "j.doe" not in readable and "acme" not in readable.lower()
    assert SIGNER.unsubscribe(token).addresses == ("j.doe@acme.example",)
    altered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(BadToken):
        SIGNER.unsubscribe(altered)

    # The readable, HMAC-signed form in emails sent before: still honoured.
    payload = base64.urlsafe_b64encode(b'["ACME-1",["j.doe@acme.example"]]').rstrip(b"=").decode()
    mac = hmac.new(b"corpus-secret", f"unsubscribe:{payload}".encode(), hashlib.sha256).digest()
    old = f"{payload}.{base64.urlsafe_b64encode(mac[:16]).rstrip(b'=').decode()}"
    assert SIGNER.unsubscribe(old).deal_id == "ACME-1"


def _parts(count: int) -> bytes:
    """A message of ``count`` MIME parts, itself included."""
    parts = b"--b\nContent-Type: text/plain\n\nx\n" * (count - 1)
    return (
        b"From: j.doe@acme.example\nTo: sales@example.com\nSubject: Re: x\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n' + parts + b"--b--\n"
    )


def test_a_message_of_too_many_parts_is_quarantined_unread() -> None:
    assert _read(_parts(MAX_PARTS)).kind is InboundKind.UNRELATED
    mail = _read(_parts(MAX_PARTS + 1))
    assert (mail.kind, mail.why) == (InboundKind.QUARANTINED, f"more than {MAX_PARTS} MIME parts")
    assert match_deal(mail, DOMAINS, SIGNER).deal_id is None
