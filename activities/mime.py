"""An outgoing email as the bytes SMTP sends: multipart/alternative, text and HTML.

The standard library's ``EmailMessage`` (``policy.default``) cost about 3.4 ms a
message here, built and flattened: it makes a header class per header, parses
every value it was just given and folds and quoted-printable-encodes in pure
Python. That was most of a send's CPU, more than rendering or SMTP. Our emails
always have one shape (a fixed set of headers, a text part and an HTML part),
so they are written directly, with the standard library's encoders where
encoding is needed: RFC 2047 encoded words (``email.header``, ``formataddr``)
for non-ASCII header text, quoted-printable bodies (``binascii``, in C).

The boundary is derived from the Message-ID, so a retried send is byte for
byte the same message.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass, field
from email.header import Header
from email.utils import escapesre, formataddr, specialsre

CRLF = "\r\n"
MAX_LINE = 78


@dataclass(frozen=True)
class Mailbox:
    name: str
    address: str


@dataclass(frozen=True)
class OutgoingMessage:
    """What ``SMTP.sendmail`` takes: the envelope and the flattened message."""

    sender: str
    recipients: list[str]
    subject: str
    data: bytes
    mail_options: list[str] = field(default_factory=list)


def _clean(value: str) -> str:
    # A line break in a header value would start a header of its own.
    return " ".join(value.splitlines()) if "\r" in value or "\n" in value else value


def _fold(name: str, value: str) -> str:
    """``Name: value``, folded at spaces so that lines stay within 78 characters if they can."""
    if len(name) + 2 + len(value) <= MAX_LINE:  # fits: the loop below would not fold it
        return f"{name}: {value}"
    line, lines = f"{name}:", []
    for word in value.split(" "):
        if len(line) + 1 + len(word) > MAX_LINE and line != f"{name}:":
            lines.append(line)
            line = f" {word}"
        else:
            line = f"{line} {word}"
    lines.append(line)
    return CRLF.join(lines)


def _text_header(name: str, value: str, utf8: bool, *, free_text: bool = False) -> str:
    value = _clean(value)
    # Free text (the subject): a word too long for a line (no space to fold at) goes out
    # as encoded words, which may be split anywhere: no header line then exceeds 78
    # characters, let alone 998. Not the other headers: Message-IDs (In-Reply-To,
    # References) and List-Unsubscribe's links are read as they are, never decoded (and
    # they are ours, far shorter than 998).
    room = MAX_LINE - len(name) - 2
    long_word = free_text and any(len(word) > room for word in value.split(" "))
    if (value.isascii() or utf8) and not long_word:
        return _fold(name, value)
    encoded = Header(value, "utf-8", maxlinelen=MAX_LINE, header_name=name).encode(linesep=CRLF)
    return f"{name}: {encoded}"


def _mailbox(mailbox: Mailbox, utf8: bool) -> str:
    name = _clean(mailbox.name)
    if not utf8:
        return formataddr((name, mailbox.address), charset="utf-8")
    # SMTPUTF8 (RFC 6532): headers may carry UTF-8 as is; only quoting applies.
    if name and specialsre.search(name):
        name = '"{}"'.format(escapesre.sub(r"\\\g<0>", name))
    return f"{name} <{mailbox.address}>" if name else mailbox.address


def _quoted_printable(text: str) -> str:
    data = text.replace("\r\n", "\n").encode("utf-8")
    return binascii.b2a_qp(data, istext=True).decode("ascii").replace("\n", CRLF)


def compose(
    *,
    sender: Mailbox,
    to: list[Mailbox],
    subject: str,
    text: str,
    html: str,
    headers: list[tuple[str, str]],
    message_id: str,
    reply_to: Mailbox | None = None,
) -> OutgoingMessage:
    """The message; ``headers`` (Date, threading, X-*) follow Subject and Message-ID."""
    addresses = [sender.address, *(mailbox.address for mailbox in to)]
    if reply_to is not None:
        addresses.append(reply_to.address)
    # Internationalised addresses need SMTPUTF8, and then headers are UTF-8 as they are.
    utf8 = not all(address.isascii() for address in addresses)
    boundary = "=_" + hashlib.sha256(message_id.encode()).hexdigest()[:32]
    lines = [
        _fold("From", _mailbox(sender, utf8)),
        _fold("To", ", ".join(_mailbox(mailbox, utf8) for mailbox in to)),
        *([_fold("Reply-To", _mailbox(reply_to, utf8))] if reply_to else []),
        _text_header("Subject", subject, utf8, free_text=True),
        _fold("Message-ID", _clean(message_id)),
        *(_text_header(name, value, utf8) for name, value in headers),
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "",
    ]
    for subtype, body in (("plain", text), ("html", html)):
        lines += [
            f"--{boundary}",
            f'Content-Type: text/{subtype}; charset="utf-8"',
            "Content-Transfer-Encoding: quoted-printable",
            "",
            _quoted_printable(body),
        ]
    lines += [f"--{boundary}--", ""]
    data = CRLF.join(lines).encode("utf-8" if utf8 else "ascii")
    return OutgoingMessage(
        sender=sender.address,
        recipients=[mailbox.address for mailbox in to],
        subject=subject,
        data=data,
        mail_options=["SMTPUTF8"] if utf8 else [],
    )
