"""An outgoing email as the bytes SMTP sends: multipart/alternative, text and HTML.

The standard library's ``EmailMessage`` (``policy.default``) cost about 3.4 ms a
message here, built and flattened: it makes a header class per header, parses
every value it was just given and folds and quoted-printable-encodes in pure
Python. That was most of a send's CPU, more than rendering or SMTP. Our emails
always have one shape (a fixed set of headers, a text part and an HTML part),
so they are written directly, with the standard library's encoders where
encoding is needed: RFC 2047 encoded words (``email.header``) for non-ASCII
header text, quoted-printable bodies (``binascii``, in C).

Every header line is folded at 78 characters where its content allows, and none
exceeds 998 (RFC 5322 §2.1.1): text is folded between its words, an address list
between addresses and between the words of a name, and a name or subject with a
word too long for a line, or not ASCII, goes out as encoded words of at most 75
characters each (RFC 2047 §2), one a line if need be. Only a single token that may
not be broken or encoded stays longer than 78: a Message-ID, a link, an address.
(``policy.SMTP``'s own folder does this too, but slowly, and Python 3.11 reads a
name it split back with a space at each split: cpython gh-128110.) A header that
already fits on its line, the common case, is written as it is.

The boundary is derived from the Message-ID, so a retried send is byte for
byte the same message.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass, field
from email.header import Header
from email.utils import escapesre, specialsre

CRLF = "\r\n"
_BREAK = re.compile(r" (?=[^ ])")
MAX_LINE = 78
# An encoded word on a line of its own, after the fold's space: at most 75 (RFC 2047).
ENCODED_LINE = 76


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


def _width(text: str, utf8: bool) -> int:
    # Line limits count octets (RFC 6532 §3.4): a UTF-8 header's characters may be several.
    return len(text.encode()) if utf8 else len(text)


def _words(value: str) -> list[str]:
    """``value`` split at the last space of each run: joined with spaces, the words are
    ``value`` again, and none is empty, so a folded line is never blank."""
    return _BREAK.split(value) if "  " in value else value.split(" ")


def _fold_words(name: str, words: list[str], utf8: bool) -> str:
    """``Name: w1 w2 ...``, a line break before a word that would end past 78 characters.

    Only ever before a space that is there already, so unfolding (dropping the CRLF)
    gives back exactly the value, and never right after ``Name:``, so a long first token
    stays by it.
    """
    line, lines = f"{name}:", []
    width, empty = len(line), True
    for word in words:
        size = _width(word, utf8)
        if width + 1 + size > MAX_LINE and not empty:
            lines.append(line)
            line, width = f" {word}", 1 + size
        else:
            line, width = f"{line} {word}", width + 1 + size
        empty = False
    lines.append(line)
    return CRLF.join(lines)


def _fold(name: str, value: str, utf8: bool = False) -> str:
    """``Name: value``, folded at its spaces; never encoded (ids and links are read as written)."""
    if len(name) + 2 + _width(value, utf8) <= MAX_LINE:
        return f"{name}: {value}"
    return _fold_words(name, _words(value), utf8)


def _encoded_words(name: str, text: str) -> list[str]:
    """``text`` as RFC 2047 encoded words split at character boundaries: the first fits on
    the ``name:`` line, each other one on a line of its own (at most 75 characters)."""
    encoded = Header(text, "utf-8", maxlinelen=ENCODED_LINE, header_name=name).encode("\n")
    return [word.strip() for word in encoded.split("\n")]


def _readable(text: str, utf8: bool) -> bool:
    """Whether ``text`` may go as it is; if not, it goes as encoded words."""
    if "=?" in text:  # would read as the start of an encoded word
        return False
    if text.isascii():
        return True
    # Readers (Python's parser too) take other spaces (U+00A0, U+3000) for folding
    # whitespace and drop them at a word's edge: only an encoded word keeps them.
    return utf8 and text.split() == [word for word in text.split(" ") if word]


def _text_header(name: str, value: str, utf8: bool) -> str:
    """Free text (the subject): as it is, folded between words, if every word fits on a
    line; else all of it as encoded words, which may be split anywhere."""
    value = _clean(value)
    if _readable(value, utf8):
        if len(name) + 2 + _width(value, utf8) <= MAX_LINE:
            return f"{name}: {value}"
        words = _words(value)
        room = MAX_LINE - len(name) - 2  # any word may fit right after "Name: "
        if all(_width(word, utf8) <= room for word in words):
            return _fold_words(name, words, utf8)
    return f"{name}: " + f"{CRLF} ".join(_encoded_words(name, value))


def _phrase(name: str, utf8: bool) -> str | None:
    """A display name as written: an atom, or quoted when it holds specials or spaces
    that an atom would lose (leading, trailing, doubled); None when it must be encoded."""
    if not _readable(name, utf8):
        return None
    if specialsre.search(name) or "  " in name or name.startswith(" ") or name.endswith(" "):
        return '"{}"'.format(escapesre.sub(r"\\\g<0>", name))
    return name


def _written(mailbox: Mailbox, utf8: bool) -> str | None:
    """``Name <address>`` on one line, or None when the name must be encoded."""
    name = _clean(mailbox.name)
    if not name:
        return mailbox.address
    phrase = _phrase(name, utf8)
    return None if phrase is None else f"{phrase} <{mailbox.address}>"


def _mailbox_words(header: str, mailbox: Mailbox, utf8: bool) -> list[str]:
    """A mailbox as the words a fold may go between: its name's, then ``<address>``."""
    name = _clean(mailbox.name)
    if not name:
        return [mailbox.address]
    phrase = _phrase(name, utf8)
    words = _words(phrase) if phrase is not None else []
    room = MAX_LINE - len(header) - 2  # any word may fit right after "To: "
    if phrase is None or any(_width(word, utf8) > room for word in words):
        words = _encoded_words(header, name)
    return [*words, f"<{mailbox.address}>"]


def _address_header(header: str, mailboxes: list[Mailbox], utf8: bool) -> str:
    """``To: a, b``, folded between addresses and between the words of a name."""
    written = [_written(mailbox, utf8) for mailbox in mailboxes]
    if None not in written:
        value = ", ".join(written)  # type: ignore[arg-type]
        if len(header) + 2 + _width(value, utf8) <= MAX_LINE:
            return f"{header}: {value}"
    words: list[str] = []
    for mailbox in mailboxes:
        if words:
            words[-1] += ","
        words += _mailbox_words(header, mailbox, utf8)
    return _fold_words(header, words, utf8)


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
    # A local part that is not ASCII needs SMTPUTF8, and then headers are UTF-8 as they
    # are. (The mailer hands over a domain that is not ASCII in IDNA A-labels.)
    utf8 = not all(address.isascii() for address in addresses)
    boundary = "=_" + hashlib.sha256(message_id.encode()).hexdigest()[:32]
    lines = [
        _address_header("From", [sender], utf8),
        _address_header("To", to, utf8),
        *([_address_header("Reply-To", [reply_to], utf8)] if reply_to else []),
        _text_header("Subject", subject, utf8),
        _fold("Message-ID", _clean(message_id), utf8),
        # Date, threading ids and links: folded between tokens, never encoded.
        *(_fold(name, _clean(value), utf8) for name, value in headers),
        "MIME-Version: 1.0",
        # Folded: on one line it would be 82 characters.
        f'Content-Type: multipart/alternative;{CRLF} boundary="{boundary}"',
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
