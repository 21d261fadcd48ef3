"""The MIME composer, over generated headers (hypothesis), at the intake bounds: a contact
name of up to ``MAX_NAME`` characters, any character intake accepts, internationalised
addresses, and every header a send writes (From, To, Reply-To, Subject, Message-ID,
In-Reply-To, References, Date, List-Unsubscribe, X-Dealflow-*).

What a mail reader parses back is exactly the names, addresses, subject and ids we
meant; threading ids and links are written as they are (folded between them, never
encoded); no line is over 998 octets (RFC 5322 §2.1.1), no encoded word over 75
characters (RFC 2047 §2), and a line over 78 octets is one token that may not be
broken: an address, a Message-ID or a link.
"""

from __future__ import annotations

import re
from datetime import datetime
from email import message_from_string, policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses

from hypothesis import given, settings
from hypothesis import strategies as st

from activities.mime import Mailbox, compose
from workflows.bounds import MAX_NAME

# What intake lets through (workflows/bounds.py check_text): no control characters, line
# or paragraph separators or lone surrogates; any other Unicode, spaces anywhere.
allowed = st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"])
names = st.one_of(
    st.text(alphabet=allowed, max_size=MAX_NAME),
    st.text(alphabet=allowed, min_size=MAX_NAME - 10, max_size=MAX_NAME),
    st.sampled_from(["Prof. Dr. Jürgen Müller-Lüdenscheidt, Geschäftsführung Einkauf",
                     "\U0001f600" * MAX_NAME, "a" * MAX_NAME, "=?utf-8?q?Mallory?=",
                     "  Bea  Buyer ", '"Bea" \\ <Buyer>', "Анна Петровна Сидорова " * 8]),
)  # fmt: skip
# A subject as rendering leaves it: its whitespace runs made single spaces.
subjects = st.text(alphabet=allowed, max_size=1200).map(lambda t: " ".join(t.split()))
local_parts = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,62}[a-z0-9]", fullmatch=True),
    st.sampled_from(["jürgen", "анна", "李"]),  # SMTPUTF8: headers go out as UTF-8
).filter(lambda local: ".." not in local)
domains = st.sampled_from(
    ["buyer.example.org", "bücher.example", "a" * 63 + "." + "b" * 63 + ".example.com"]
)
addresses = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)
mailboxes = st.builds(Mailbox, names, addresses)
# Sealed Message-IDs as the mailer writes them (72 base32 characters) and a thread's.
message_ids = st.from_regex(r"<[a-z2-7]{72}@seller\.example\.com>", fullmatch=True)
tokens = st.from_regex(r"t2\.[A-Za-z0-9_-]{20,200}", fullmatch=True)

ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
# The tokens no fold may break: an address (bare or in <>), a Message-ID, a link.
UNBREAKABLE = re.compile(rb"(<[^<>\s]+>|[^\s<>\"]+@[^\s<>\"]+),?")


def read(data: bytes) -> EmailMessage:
    # As text: an SMTPUTF8 message's headers are UTF-8 (RFC 6532), which the bytes
    # parser would leave as surrogate escapes in addresses.
    message = message_from_string(data.decode("utf-8"), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def mailboxes_read(message: EmailMessage, written: str, name: str) -> list[tuple[str, str]]:
    """``name``'s (display name, address) pairs as a reader gets them: Python's parser,
    and for a name written as encoded words the standard library's RFC 2047 decoder.
    Python 3.11's address parser misreads those: it keeps the space between two encoded
    words, which RFC 2047 §6.2 says to drop (cpython gh-128110), and reads a run of
    spaces inside one as a single space."""
    pairs = []
    parsed: tuple[Address, ...] = message[name].addresses
    for address, (phrase, addr_spec) in zip(parsed, getaddresses([written]), strict=True):
        assert address.addr_spec == addr_spec
        display_name = address.display_name
        if ENCODED_WORD.search(phrase.encode()):
            # A name goes as encoded words whole, or not at all.
            assert re.fullmatch(rb"\S+( \S+)*", phrase.encode()), phrase
            assert all(ENCODED_WORD.fullmatch(word) for word in phrase.encode().split()), phrase
            display_name = str(make_header(decode_header(phrase)))
        pairs.append((display_name, address.addr_spec))
    return pairs


def unfolded(head: bytes) -> dict[str, str]:
    """Each header's value as written, line breaks of folds removed (RFC 5322 §2.2.3)."""
    values = {}
    for line in re.sub(rb"\r\n(?=[ \t])", b"", head).split(b"\r\n"):
        name, _, value = line.decode().partition(": ")
        values.setdefault(name, value)
    return values


def check_lines(data: bytes) -> None:
    head = data.split(b"\r\n\r\n", 1)[0]
    parts = [part.split(b"\r\n\r\n", 1)[0] for part in data.split(b"\r\n--")[1:]]
    for line in (head + b"\r\n" + b"\r\n".join(parts)).split(b"\r\n"):
        assert len(line) <= 998, line
        words = [word for word in line.split(b" ") if word]
        for word in ENCODED_WORD.findall(line):
            assert len(word) <= 75, line
        if len(line) > 78:
            # Only "Name: token" or " token", the token one that may not be broken.
            token = words[-1]
            assert len(words) == (1 if line[:1] == b" " else 2), line
            assert UNBREAKABLE.fullmatch(token) and not ENCODED_WORD.search(token), line


@settings(max_examples=400, deadline=None, database=None)
@given(
    sender=mailboxes,
    to=st.lists(mailboxes, min_size=1, max_size=6, unique_by=lambda m: m.address),
    subject=subjects,
    thread=st.lists(message_ids, max_size=25),
    message_id=message_ids,
    buyer_facing=st.booleans(),
    reply_local=local_parts,
    token=tokens,
    body=st.text(max_size=2000),
)
def test_composed_headers_round_trip_exactly_within_their_line_limits(
    sender: Mailbox,
    to: list[Mailbox],
    subject: str,
    thread: list[str],
    message_id: str,
    buyer_facing: bool,
    reply_local: str,
    token: str,
    body: str,
) -> None:
    # The headers Mailer._message passes, in its order.
    headers = []
    if thread:
        headers += [("In-Reply-To", thread[-1]), ("References", " ".join(thread))]
    headers.append(("Date", "Mon, 07 Dec 2026 09:30:00 +0100"))
    reply_to = None
    if buyer_facing:
        reply_to = Mailbox("", f"{reply_local}+r{'a' * 32}@replies.seller.example.com")
        url = f"https://deals.seller.example.com/unsubscribe/{token}"
        mailto = f"mailto:replies+unsubscribe@seller.example.com?subject=unsubscribe%20{token}"
        headers += [("List-Unsubscribe", f"<{url}>, <{mailto}>"),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]  # fmt: skip
    else:
        headers += [("X-Dealflow-Deal", "D-100"), ("X-Dealflow-Step", "task_check_in_call")]
    composed = compose(
        sender=sender, to=to, subject=subject, text=body or "-", html="<p>-</p>",
        headers=headers, message_id=message_id, reply_to=reply_to,
    )  # fmt: skip
    check_lines(composed.data)

    parsed = read(composed.data)
    written = unfolded(composed.data.split(b"\r\n\r\n", 1)[0])
    assert str(parsed["Subject"]) == subject
    assert composed.recipients == [mailbox.address for mailbox in to]
    assert composed.sender == sender.address
    for name, meant in (("From", [sender]), ("To", to), ("Reply-To", [reply_to])):
        if meant == [None]:
            assert parsed[name] is None
        else:
            assert mailboxes_read(parsed, written[name], name) == [
                (m.name, m.address) for m in meant if m is not None
            ]
    # Ids, dates and links are read as written: folded between tokens at most, never
    # encoded (threading matches them byte for byte).
    assert written["Message-ID"] == str(parsed["Message-ID"]) == message_id
    for name, value in headers:
        assert written[name] == str(parsed[name]) == value
    assert parsed.get_content_type() == "multipart/alternative"


def test_a_realistic_long_name_is_folded_in_encoded_words_of_at_most_75() -> None:
    """The auditor's case: unfolded, the To line was about 95 characters with one
    encoded word over 75; with 200 emoji it was 1,084 characters long."""
    for name in ("Prof. Dr. Jürgen Müller-Lüdenscheidt, Geschäftsführung Einkauf",
                 "\U0001f600" * MAX_NAME):  # fmt: skip
        composed = compose(
            sender=Mailbox("Sam Seller", "sam@seller.example.com"),
            to=[Mailbox(name, "juergen@buyer.example.org"), Mailbox("Bea", "bea@x.example")],
            subject="Quotation", text="-", html="-", headers=[], message_id="<a@b.example>",
        )  # fmt: skip
        check_lines(composed.data)
        head = composed.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        assert max(len(line) for line in head) <= 78
        to = unfolded(composed.data.split(b"\r\n\r\n", 1)[0])["To"]
        assert [n for n, _ in mailboxes_read(read(composed.data), to, "To")] == [name, "Bea"]


def test_a_short_ascii_header_is_written_as_it_is() -> None:
    """The common case takes the fast path: one line each, nothing quoted or encoded."""
    composed = compose(
        sender=Mailbox("Sam Seller", "sam@seller.example.com"),
        to=[Mailbox("Bea Buyer", "bea@buyer.example.org")],
        subject="Quotation for ACME (D-100)", text="-", html="-",
        headers=[("Date", format_datetime(datetime(2026, 12, 7)))],
        message_id="<a@b.example>",
    )  # fmt: skip
    head = composed.data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith(
        "From: Sam Seller <sam@seller.example.com>\r\n"
        "To: Bea Buyer <bea@buyer.example.org>\r\n"
        "Subject: Quotation for ACME (D-100)\r\n"
        "Message-ID: <a@b.example>\r\n"
        "Date: Mon, 07 Dec 2026 00:00:00 -0000\r\n"
    )
