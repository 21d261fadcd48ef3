"""Reading one inbound email: what kind of message it is, and which deal it belongs to.

The mailbox poller and the webhook hand us raw bytes; ``read_inbound`` turns them into an
``InboundMail`` (parse + classify) and ``match_deal`` names its deal (and how we know). No
I/O and no clock: the same bytes always give the same answer, so re-reading a mailbox after
a crash is harmless.

Classification looks at headers and at the message's *own* text only. Quoted text is cut
off before anything reads the body, because a buyer who quotes our follow-up (which may say
"unsubscribe" or "out of office") is still a buyer replying.

The module is longer than most: parsing, classifying and matching share the header and
body helpers, and each rule only makes sense next to the ones checked before it.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable, Iterator
from datetime import date
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from enum import StrEnum

from pydantic import BaseModel

from activities.signed_tokens import BadToken, TokenSigner, is_ledger_token

__all__ = [
    "MAX_PARTS",
    "DealMatch",
    "InboundKind",
    "InboundMail",
    "deal_of_message_id",
    "match_deal",
    "read_inbound",
]


class InboundKind(StrEnum):
    HUMAN_REPLY = "human_reply"  # a person answering one of our emails
    AUTO_REPLY = "auto_reply"  # an out-of-office notice: the buyer is away
    # Any other automatic answer (ticket opened, "message received", read receipt): the
    # buyer has not read or answered anything, so it holds nothing; it is only listed.
    AUTO_ACKNOWLEDGEMENT = "auto_acknowledgement"
    BOUNCE = "bounce"  # delivery-status notification, standard (RFC 3464) or not
    LIST_MAIL = "list_mail"  # list or bulk mail
    OWN_MESSAGE = "own_message"  # a message we sent ourselves (our own copy in the mailbox)
    UNSUBSCRIBE = "unsubscribe"  # a mailto: List-Unsubscribe request
    UNRELATED = "unrelated"  # a human message that answers nothing of ours
    QUARANTINED = "quarantined"  # could not be read safely: listed, given to no deal


class InboundMail(BaseModel):
    """One inbound email, parsed and classified; every field is safe to log."""

    message_id: str
    sender: str
    recipients: list[str]
    subject: str
    kind: InboundKind
    why: str
    references: list[str]
    returns_on: date | None = None
    failed_recipient: str | None = None
    bounce_status: str | None = None
    permanent: bool | None = None
    original_message_id: str | None = None
    unsubscribe_token: str | None = None
    snippet: str = ""
    # Kept apart from ``references`` because matching trusts In-Reply-To before References.
    in_reply_to: str | None = None
    # Recipients with a +tag, case kept: a reply token's deal id is signed case-sensitively.
    tagged_recipients: list[str] = []


class DealMatch(BaseModel):
    """The deal an inbound email belongs to, or why it belongs to none."""

    deal_id: str | None
    how: str = ""
    reason: str = ""
    # A token we signed that only the ledger resolves (``ledger.email_tokens``): the deal,
    # and for an unsubscribe who opted out, are what its row says (the mailbox reader asks).
    unsubscribe_token_id: str = ""
    reply_token_id: str = ""
    # A bounce of one of our emails (its own id, opened): it acts only once the ledger
    # says the failed address was a recipient of that email (the mailbox reader asks).
    bounced_message_id: str = ""


# --- our own identifiers ---

# <{deal_id}.{seq:03d}-{template}@{domain}>; template names have no dots, so a greedy deal id
# still splits correctly when the deal id itself contains ".NNN-".
_OUR_MESSAGE_ID = re.compile(
    r"^<(?P<deal>[A-Za-z0-9][A-Za-z0-9._-]{0,63})\.\d{3,}-[A-Za-z0-9_]+@(?P<domain>[^<>@\s]+)>$"
)
_MESSAGE_ID = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
# Starts only where an address can start and is bounded, so a long run without "@" stays linear.
_ADDRESS_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9._%+=-])[A-Za-z0-9._%+=-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+"
)
# Hostile or huge messages must not stall the poller: real diagnostics, out-of-office texts and
# new reply text sit at the top, so the heuristics read a bounded prefix.
_MAX_TEXT = 100_000
_MAX_DIAGNOSTIC = 20_000
_MAX_AUTO_REPLY_TEXT = 5_000
# Parts a message may have, itself included; one with more is quarantined unread. Replies,
# notices and bounces have a few, a reply with its attachments and inline images a few
# dozen; 100 parts cost well under a second to read.
MAX_PARTS = 100


def deal_of_message_id(message_id: str, domains: Iterable[str]) -> str | None:
    """The deal named by a Message-ID we generated on one of ``domains``, else None."""
    found = _OUR_MESSAGE_ID.match(message_id.strip())
    if found is None or found["domain"].lower() not in {d.lower() for d in domains}:
        return None
    return found["deal"]


# --- evidence patterns ---

_AUTO_REPLY_HEADERS = (
    "X-Autoreply",
    "X-Autorespond",
    "X-Auto-Reply",
    "X-Mail-Autoreply",
    "X-Auto-Response-Suppress",
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto[- ]?reply|auto[- ]?response|autoresponder|out of (the )?office"
    r"|abwesenheitsnotiz|abwesend|automatische antwort|r[ée]ponse automatique|absence"
    r"|respuesta autom[áa]tica|fuera de la oficina|risposta automatica|fuori sede"
    r"|automatisch antwoord|auto:)",
    re.IGNORECASE,
)
# What an out-of-office notice says, unlike a ticket acknowledgement or a read receipt.
_AWAY = re.compile(
    r"out of (the )?office|\bOOO\b|on (annual |parental |sick |maternity )?leave|vacation"
    r"|on holiday|away from (the office|my desk)|not in the office|limited access"
    r"|travel?ling|be back|return(ing)? on|until my return|after my return"
    r"|abwesen|nicht im b[üu]ro|urlaub|au[ßs]er haus|zur[üu]ck|dienstreise"
    r"|absente?\b|cong[ée]s|hors du bureau|de retour"
    r"|fuera de la oficina|vacaciones|de vuelta|ausente"
    r"|fuori (sede|ufficio)|in ferie|assente"
    r"|afwezig|met vakantie|niet op kantoor",
    re.IGNORECASE,
)
_DAEMON_LOCAL_PART = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mdaemon)$", re.I)
_DAEMON_NAME = re.compile(r"mail delivery (subsystem|system|service)|mailer-daemon", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"^\s*(undeliverable|undelivered mail|delivery status notification|delivery failure"
    r"|delivery has failed|mail delivery failed|returned mail|failure notice|non[- ]?delivery"
    r"|unzustellbar|nicht zustellbar|non remis|delivery delayed|warning: could not send)",
    re.IGNORECASE,
)
_BOUNCE_PHRASE = re.compile(
    r"could not be delivered|couldn't be delivered|wasn't able to deliver|delivery has failed"
    r"|failed permanently|undeliverable|permanent error|user unknown|mailbox unavailable",
    re.IGNORECASE,
)
# Where a non-standard bounce starts quoting the message it returns.
_BOUNCE_COPY = re.compile(
    r"^[ \t]*-*[ \t]*(below this line is a copy of the message|this is a copy of the message"
    r"|original message|undelivered message|message headers follow)",
    re.IGNORECASE | re.MULTILINE,
)
_ENHANCED_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"(?:^|said:|\s)([45][0-5]\d)[\s-](?!\d)", re.MULTILINE)
_PERMANENT_PHRASE = re.compile(
    r"permanent(ly)? (error|failure|fatal)|failed permanently|i've given up|does not exist"
    r"|user unknown|no such user|address rejected",
    re.IGNORECASE,
)
_TRANSIENT_PHRASE = re.compile(
    r"temporar(y|ily)|delayed|will (retry|keep trying|try again)|still trying", re.IGNORECASE
)
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*unsubscribe(?:\s+(?P<token>\S.*?))?\s*$", re.IGNORECASE)

# --- reading headers and text without ever raising ---


def _decode_bytes(data: bytes, charset: str | None = None) -> str:
    for candidate in (charset, "utf-8"):
        if candidate:
            try:
                return data.decode(candidate)
            except (LookupError, ValueError):  # unknown, malformed or lying charset names
                continue
    # cp1252 is what undeclared 8-bit mail nearly always is; "replace" keeps us total.
    return data.decode("cp1252", errors="replace")


def _has_raw_bytes(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _unfold(text: str) -> str:
    return re.sub(r"\s*\r?\n\s*", " ", text).strip()


def _decode_words(text: str) -> str:
    """RFC 2047 encoded-words decoded; text that is not valid encoding stays as it is."""
    try:
        return str(make_header(decode_header(text)))
    except Exception:  # unknown charsets and broken encoded-words raise from the stdlib
        return text


def _raw_headers(msg: Message, name: str) -> list[str]:
    """Every value of header ``name``, unfolded, undeclared 8-bit bytes guessed; not decoded."""
    values = []
    for key, raw in msg.raw_items():
        if key.lower() == name.lower():
            if _has_raw_bytes(raw):
                raw = _decode_bytes(raw.encode("utf-8", "surrogateescape"))
            values.append(_unfold(raw))
    return values


def _headers(msg: Message, name: str) -> list[str]:
    """Every value of header ``name``, decoded.

    Decoded with ``decode_header`` rather than the policy's structured parser: the latter is
    quadratic on long headers and raises on some hostile ones.
    """
    return [_unfold(_decode_words(value)) for value in _raw_headers(msg, name)]


def _header(msg: Message, name: str) -> str:
    values = _headers(msg, name)
    return values[0] if values else ""


def _addresses(msg: Message, *names: str) -> list[tuple[str, str]]:
    """(display name, address as written) pairs from the named headers, unique, in order."""
    seen: dict[str, tuple[str, str]] = {}
    for name in names:
        # Split before decoding: a decoded display name may hold a comma ("Müller, Petra").
        for display, address in getaddresses(_raw_headers(msg, name)):
            address = address.strip().strip("<>")
            if "@" in address and address.lower() not in seen:
                seen[address.lower()] = (_decode_words(display), address)
    return list(seen.values())


def _message_ids(text: str) -> list[str]:
    found = [f"<{value}>" for value in _MESSAGE_ID.findall(text)]
    if not found and "@" in text and " " not in text.strip():
        found = [f"<{text.strip().strip('<>')}>"]
    return found


def _own_parts(part: Message) -> Iterator[Message]:
    """The parts of this message, not descending into attached messages or report blocks."""
    yield part
    if part.get_content_maintype() == "multipart":
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                yield from _own_parts(sub)


def _part_text(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except Exception:
        pass
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return _decode_bytes(payload, part.get_content_charset())
    raw = part.get_payload()
    return raw if isinstance(raw, str) else ""


def _drop_elements(markup: str, tag: str) -> str:
    """``markup`` without ``<tag>...</tag>`` elements (unclosed: to the end), in linear time."""
    lower, kept, position = markup.lower(), [], 0
    while (start := lower.find(f"<{tag}", position)) != -1:
        kept.append(markup[position:start])
        end = lower.find(f"</{tag}", start)
        if end == -1:
            return "".join(kept)
        position = lower.find(">", end) + 1 or len(markup)
    kept.append(markup[position:])
    return "".join(kept)


def _html_to_text(markup: str) -> str:
    markup = re.split(r"(?i)<div[^>]{0,200}gmail_quote", markup[:_MAX_TEXT], maxsplit=1)[0]
    # Outlook and Apple put the quoted original in blockquotes; drop it before it can be read.
    for tag in ("style", "script", "blockquote"):
        markup = _drop_elements(markup, tag)
    markup = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", markup)
    return html.unescape(re.sub(r"<[^<>]*>", "", markup))


def _body_text(msg: Message) -> str:
    """The message's own text: its first text/plain part, else its first text/html part."""
    plain = markup = None
    for part in _own_parts(msg):
        kind = part.get_content_type()
        if part.get_content_disposition() == "attachment":
            continue
        if kind == "text/plain" and plain is None:
            plain = _part_text(part)
        elif kind == "text/html" and markup is None:
            markup = _part_text(part)
    if not (plain and plain.strip()):
        plain = _html_to_text(markup) if markup else ""
    return plain[:_MAX_TEXT].replace("\r\n", "\n")


# --- the buyer's new text ---

_QUOTE_SEPARATOR = re.compile(
    r"^\s*(-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original"
    r"|messaggio originale|forwarded message|weitergeleitete nachricht)\s*-{2,}|_{10,})\s*$",
    re.IGNORECASE,
)
_QUOTE_ATTRIBUTION = re.compile(
    r"\s*(on|am|le|el|il|op)\s.{0,300}(wrote|schrieb|a écrit|escribió|ha scritto|schreef)\s?:\s*",
    re.IGNORECASE,
)
_HEADER_BLOCK_FROM = re.compile(r"^\s*\*?(from|von|de|da|van)\s?\*?:\s*\S", re.IGNORECASE)
_HEADER_BLOCK_NEXT = re.compile(
    r"^\s*\*?(sent|date|gesendet|datum|envoyé|enviado|inviato|to|an|à|para|a)\s?\*?:", re.I
)
_SIGNATURE = re.compile(
    r"^(--\s?|sent from my \w+.*|gesendet von meinem .*|envoyé de mon .*|get outlook for .*)$",
    re.IGNORECASE,
)
_VALEDICTION = re.compile(
    r"^(best|kind|warm|many thanks|thanks|thank you|cheers|regards|best regards|kind regards"
    r"|mit freundlichen grüßen|viele grüße|beste grüße|freundliche grüße|cordialement"
    r"|bien à vous|saludos|un saludo|cordiali saluti)[,.!]?$",
    re.IGNORECASE,
)


def _new_text(text: str) -> str:
    """``text`` without the quoted original, the attribution line and the signature."""
    lines = text.split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(">"):
            continue
        if _QUOTE_SEPARATOR.match(line) or _SIGNATURE.match(stripped):
            break
        if any(
            _QUOTE_ATTRIBUTION.fullmatch(" ".join(lines[index : index + size]))
            for size in (1, 2, 3)
        ):
            break
        if _HEADER_BLOCK_FROM.match(line) and any(
            _HEADER_BLOCK_NEXT.match(following) for following in lines[index + 1 : index + 5]
        ):
            break
        if _VALEDICTION.match(stripped) and any(k.strip() for k in kept):
            break
        kept.append(line)
    return "\n".join(kept).strip()


def _snippet(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[:limit].rsplit(" ", 1)[0] + "…"


# --- return dates in out-of-office text ---

_MONTH_NAMES = (
    ("january", "jan", "januar", "jänner", "janvier", "janv", "enero", "gennaio"),
    ("february", "feb", "februar", "février", "fevrier", "févr", "febrero", "febbraio"),
    ("march", "mar", "märz", "maerz", "mars", "marzo"),
    ("april", "apr", "avril", "avr", "abril", "aprile"),
    ("may", "mai", "mayo", "maggio"),
    ("june", "jun", "juni", "juin", "junio", "giugno"),
    ("july", "jul", "juli", "juillet", "juil", "julio", "luglio"),
    ("august", "aug", "août", "aout", "agosto"),
    ("september", "sep", "sept", "septembre", "septiembre", "settembre"),
    ("october", "oct", "oktober", "okt", "octobre", "octubre", "ottobre"),
    ("november", "nov", "novembre", "noviembre"),
    ("december", "dec", "dezember", "dez", "décembre", "decembre", "diciembre", "dicembre"),
)
_MONTHS = {name: number for number, names in enumerate(_MONTH_NAMES, 1) for name in names}
_MONTH_NAME = "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True))
_ISO_DATE = re.compile(r"(?<!\d)(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?!\d)")
_DAY_MONTH = re.compile(
    rf"(?<![\d.])(?P<d>\d{{1,2}})(?:st|nd|rd|th|er|\.)?\s*(?:de\s+)?(?P<mon>{_MONTH_NAME})\b\.?"
    r"(?:,?\s*(?:de\s+)?(?P<y>\d{4}))?",
    re.IGNORECASE,
)
_MONTH_DAY = re.compile(
    rf"\b(?P<mon>{_MONTH_NAME})\.?\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?(?![\d:])"
    r"(?:,?\s+(?P<y>\d{4}))?",
    re.IGNORECASE,
)
_NUMERIC_DATE = re.compile(
    r"(?<![\d./-])(?P<a>\d{1,2})(?P<sep>[./])(?P<b>\d{1,2})"
    r"(?:(?P=sep)(?P<y>\d{4}|\d{2})(?!\d))?(?![\d/])"
)
# Words before a date that make it the return date; "until" names the last day away, which
# is what most out-of-office texts give, so it ranks just below an explicit return.
_RETURN_WORDS = (
    r"back|return|returning|returns|available again|reachable again|zurück|wieder|de retour"
    r"|retour|reviendrai|rentrerai|de vuelta|regreso|regresaré|volveré|vuelvo|rientro"
    r"|rientrerò|di ritorno|tornerò"
)
_UNTIL_WORDS = "until|till|through|thru|bis|jusqu['\u2019](?:au|à)|hasta|fino al"
_RETURN_BEFORE = re.compile(rf"\b({_RETURN_WORDS})\b[^\n\d]{{0,35}}$", re.IGNORECASE)
_UNTIL_BEFORE = re.compile(rf"\b({_UNTIL_WORDS})(?!\w)[^\n\d]{{0,25}}$", re.IGNORECASE)
_RETURN_AFTER = re.compile(r"^[^\n\d]{0,30}?\b(wieder|zurück)\b", re.IGNORECASE)
_LANGUAGE_WORDS = {
    "de": r"ich|bin|bis|zurück|wieder|büro|abwesend|urlaub|und|nicht|ihre|grüße",
    "fr": r"je|suis|de retour|absent|absente|jusqu|congés|bureau|cordialement|merci|votre",
    "es": r"estoy|hasta|oficina|vacaciones|regreso|gracias|su|correo",
    "it": r"sono|fuori|ufficio|rientro|fino|grazie|della",
    "en": r"i|am|the|until|back|office|return|and|will|my|your",
}


_Reading = tuple[int | None, int, int]  # (year or None, month, day)


def _language(text: str) -> str:
    counts = {
        lang: len(re.findall(rf"\b({words})\b", text, re.IGNORECASE))
        for lang, words in _LANGUAGE_WORDS.items()
    }
    best = max(counts, key=lambda lang: counts[lang])
    return best if counts[best] > counts["en"] else "en"


def _resolve(year: int | None, month: int, day: int, today: date | None) -> date | None:
    """The calendar date, a year-less one being its next occurrence from ``today``."""
    if year is not None:
        year = year + 2000 if year < 100 else year
        try:
            return date(year, month, day)
        except ValueError:
            return None
    if today is None:
        return None
    for candidate_year in range(today.year, today.year + 5):  # 29 February waits up to 4 years
        try:
            candidate = date(candidate_year, month, day)
        except ValueError:
            continue
        if candidate >= today:
            return candidate
    return None


def _date_mentions(text: str, language: str) -> Iterator[tuple[int, int, list[_Reading]]]:
    """(start, end, readings) of each date in ``text``; a reading is (year, month, day)."""
    taken: list[range] = []
    for pattern in (_ISO_DATE, _DAY_MONTH, _MONTH_DAY, _NUMERIC_DATE):
        for found in pattern.finditer(text):
            span = range(found.start(), found.end())
            if any(span.start < other.stop and other.start < span.stop for other in taken):
                continue
            taken.append(span)
            fields = found.groupdict()
            year = int(fields["y"]) if fields.get("y") else None
            if pattern is _NUMERIC_DATE:
                a, b = int(fields["a"]), int(fields["b"])
                # Dotted dates are day-first everywhere; slashed ones follow the language.
                month_first = fields["sep"] == "/" and language == "en"
                readings = [(year, a, b), (year, b, a)] if month_first else [(year, b, a)]
                if fields["sep"] == "/" and not month_first:
                    readings.append((year, a, b))
            elif pattern is _ISO_DATE:
                readings = [(year, int(fields["m"]), int(fields["d"]))]
            else:
                readings = [(year, _MONTHS[fields["mon"].lower()], int(fields["d"]))]
            yield found.start(), found.end(), readings


def _return_date(text: str, today: date | None) -> date | None:
    """The return date an out-of-office text announces, when a return word points at one."""
    language = _language(text)
    best: tuple[int, int, date] | None = None
    for start, end, readings in _date_mentions(text, language):
        before = text[max(0, start - 60) : start]
        if _RETURN_BEFORE.search(before) or _RETURN_AFTER.search(text[end : end + 40]):
            rank = 2
        elif _UNTIL_BEFORE.search(before):
            rank = 1
        else:
            continue
        for year, month, day in readings:
            resolved = _resolve(year, month, day, today)
            # A return date before the message was written is a misreading, not a return.
            if resolved is not None and (today is None or resolved >= today):
                if best is None or (rank, -start) > (best[0], -best[1]):
                    best = (rank, start, resolved)
                break
    return best[2] if best else None


# --- classification ---


def _base_address(address: str) -> str:
    """``sales+anything@example.com`` -> ``sales@example.com``."""
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def _is_daemon(address: str, display_name: str) -> bool:
    local = address.rpartition("@")[0]
    return bool(_DAEMON_LOCAL_PART.match(local) or _DAEMON_NAME.search(display_name))


def _attached_headers(msg: Message) -> Message | None:
    """The headers of the message a report returns: message/rfc822 or text/rfc822-headers."""
    for part in _own_parts(msg):
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]
        elif kind in ("text/rfc822-headers", "message/rfc822-headers"):
            return HeaderParser(policy=policy.default).parsestr(_part_text(part))
    return None


def _status_blocks(msg: Message) -> list[Message]:
    blocks: list[Message] = []
    for part in _own_parts(msg):
        if part.get_content_type() not in (
            "message/delivery-status",
            "message/global-delivery-status",
        ):
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            blocks.extend(payload)
        else:
            text = _part_text(part).replace("\r\n", "\n")
            parser = HeaderParser(policy=policy.default)
            blocks.extend(parser.parsestr(chunk) for chunk in re.split(r"\n\s*\n", text))
    return blocks


def _address_field(value: str) -> str | None:
    """``rfc822; <Jane@Globex.example>`` -> ``jane@globex.example``."""
    address = value.rpartition(";")[2].strip().strip("<>").lower()
    return address if "@" in address else None


def _permanence(status: str | None, text: str) -> bool | None:
    if status:
        return {"5": True, "4": False}.get(status[0])
    if _PERMANENT_PHRASE.search(text):
        return True
    if _TRANSIENT_PHRASE.search(text):
        return False
    return None


def _bounce(
    msg: Message, sender: str, sender_name: str, subject: str, body: str, own: set[str]
) -> dict[str, object] | None:
    """The bounce fields when the message is a delivery-status notification, else None."""
    report_type = str(msg.get_param("report-type") or "").lower()
    standard = msg.get_content_type() == "multipart/report" and report_type == "delivery-status"
    if standard:
        why = "multipart/report; report-type=delivery-status"
    elif sender and _is_daemon(sender, sender_name):
        why = f"From {sender}"
    elif _BOUNCE_SUBJECT.match(subject):
        why = f"subject {subject[:40]!r}"
    elif _header(msg, "Return-Path").strip() == "<>" and _BOUNCE_PHRASE.search(body):
        why = "empty Return-Path and delivery-failure text"
    else:
        return None
    copy = _BOUNCE_COPY.search(body)
    diagnostic = (body[: copy.start()] if copy else body)[:_MAX_DIAGNOSTIC]
    recipient = status = None
    recipients = [b for b in _status_blocks(msg) if _header(b, "Final-Recipient")]
    order = {"failed": 0, "delayed": 1}
    recipients.sort(key=lambda b: order.get(_header(b, "Action").strip().lower(), 2))
    if recipients:
        block = recipients[0]
        recipient = _address_field(_header(block, "Original-Recipient")) or _address_field(
            _header(block, "Final-Recipient")
        )
        found = _ENHANCED_STATUS.search(_header(block, "Status")) or _ENHANCED_STATUS.search(
            _header(block, "Diagnostic-Code")
        )
        status = found.group(1) if found else None
        if status:
            why = f"{why}; Status: {status}"
    if recipient is None:
        quoted = re.search(r"^[ \t]*<([^\s<>@]+@[^\s<>]+)>:[ \t]*$", diagnostic, re.MULTILINE)
        candidates = [quoted.group(1)] if quoted else _ADDRESS_IN_TEXT.findall(diagnostic)
        recipient = next(
            (
                a.lower()
                for a in candidates
                if _base_address(a.lower()) not in own
                and a.lower() != sender
                and not _is_daemon(a, "")
            ),
            None,
        )
    if status is None:
        found = _ENHANCED_STATUS.search(diagnostic) or _SMTP_CODE.search(diagnostic)
        status = found.group(1) if found else None
    attached = _attached_headers(msg)
    original = _message_ids(_header(attached, "Message-ID")) if attached is not None else []
    if not original:
        quoted_id = re.search(r"^[ \t>]*Message-ID:\s*(<[^<>\s]+>)", body, re.I | re.MULTILINE)
        original = [quoted_id.group(1)] if quoted_id else []
    return {
        "why": why,
        "failed_recipient": recipient,
        "bounce_status": status,
        "permanent": _permanence(status, diagnostic),
        "original_message_id": original[0] if original else None,
    }


def _auto_reply(msg: Message, subject: str, list_evidence: bool) -> str | None:
    """The evidence that the message is an automatic answer, else None."""
    submitted = _header(msg, "Auto-Submitted").strip()
    if submitted:
        # RFC 3834: "no" is an explicit statement that a person wrote this one.
        if re.split(r"[\s;(]", submitted.lower(), maxsplit=1)[0] == "no":
            return None
        return f"Auto-Submitted: {submitted}"
    for name in _AUTO_REPLY_HEADERS:
        value = _header(msg, name).strip()
        # Bulk senders set X-Auto-Response-Suppress to silence out-of-office answers; only
        # without list evidence is it Exchange marking its own auto-reply.
        if name == "X-Auto-Response-Suppress" and list_evidence:
            continue
        if _headers(msg, name) and value.lower() not in ("no", "false", "0"):
            return f"{name}: {value}"
    if _header(msg, "Precedence").strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    if msg.get_content_type() == "multipart/report":
        return f"report-type={msg.get_param('report-type')}"
    if _AUTO_REPLY_SUBJECT.match(subject):
        return f"subject {subject[:40]!r}"
    return None


def _list_mail(msg: Message) -> str | None:
    list_id = _header(msg, "List-Id")
    if list_id:
        return f"List-Id: {list_id}"
    if _headers(msg, "List-Unsubscribe"):
        return "List-Unsubscribe header"
    precedence = _header(msg, "Precedence").strip().lower()
    if precedence in ("list", "bulk", "junk"):
        return f"Precedence: {precedence}"
    if any(part.get_content_type() == "multipart/digest" for part in _own_parts(msg)):
        return "multipart/digest"
    return None


def _message_date(msg: Message) -> date | None:
    try:
        return parsedate_to_datetime(_header(msg, "Date")).date()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class TooManyParts(Exception):
    """The message has more than ``MAX_PARTS`` MIME parts: it is not read further."""


class _CountedParts:
    """Makes the parser's message objects, and stops the parse at part ``MAX_PARTS + 1``:
    each part costs the parser and every rule here a few header parses, so a 256 KiB
    message of 37,000 empty parts took seconds to read."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, **options: object) -> EmailMessage:
        self.made += 1
        if self.made > MAX_PARTS:
            raise TooManyParts(f"more than {MAX_PARTS} MIME parts")
        return EmailMessage(**options)  # type: ignore[arg-type]


def _parse_counted(raw: bytes) -> Message:
    counted = policy.default.clone(message_factory=_CountedParts())
    return BytesParser(policy=counted).parsebytes(raw)


def _parse(raw: bytes) -> Message:
    try:
        return _parse_counted(raw)
    except TooManyParts:
        raise
    except Exception:  # the parser is lenient; this is for the inputs it still chokes on
        return _parse_counted(b"\r\n" + raw)


def read_inbound(
    raw: bytes,
    own_addresses: Iterable[str],
    unsubscribe_address: str | None = None,
    today: date | None = None,
) -> InboundMail:
    """Parse and classify one raw email; never raises.

    Args:
        raw: the message exactly as the mailbox returned it.
        own_addresses: our sending and reply addresses; ``local+tag@domain`` variants count.
        unsubscribe_address: the mailto: List-Unsubscribe target, e.g.
            ``sales+unsubscribe@example.com``.
        today: the day a year-less return date is counted from; default the Date header's.

    Checks, first match wins: own message, unsubscribe request, bounce, auto-reply, list
    mail, then human reply (threading headers or a reply address) or unrelated. A message
    of more than ``MAX_PARTS`` MIME parts is quarantined unread.
    """
    own = {address.strip().lower() for address in own_addresses if "@" in address}
    try:
        return _read(_parse(raw), raw, own, (unsubscribe_address or "").strip().lower(), today)
    except TooManyParts as error:
        return InboundMail(
            message_id=_fallback_id(raw),
            sender="",
            recipients=[],
            subject="",
            kind=InboundKind.QUARANTINED,
            why=str(error),
            references=[],
        )
    except Exception as error:  # a classification bug must not stop the mailbox poller
        return InboundMail(
            message_id=_fallback_id(raw),
            sender="",
            recipients=[],
            subject="",
            kind=InboundKind.UNRELATED,
            why=f"unreadable message ({type(error).__name__})",
            references=[],
        )


def _fallback_id(raw: bytes) -> str:
    # Derived from the bytes, so a re-read of the same message dedups against the first read.
    return f"<{hashlib.sha256(raw).hexdigest()}@dealflow.invalid>"


def _read(
    msg: Message, raw: bytes, own: set[str], unsubscribe: str, today: date | None
) -> InboundMail:
    ids = _message_ids(_header(msg, "Message-ID"))
    senders = _addresses(msg, "From")
    sender_name, sender = senders[0] if senders else ("", "")
    written = [a for _, a in _addresses(msg, "To", "Cc", "Delivered-To", "X-Original-To")]
    subject = _header(msg, "Subject")
    in_reply_to = next(iter(_message_ids(_header(msg, "In-Reply-To"))), None)
    references = list(
        dict.fromkeys(
            ([in_reply_to] if in_reply_to else [])
            + _message_ids(" ".join(_headers(msg, "References")))
        )
    )
    mail = InboundMail(
        message_id=ids[0] if ids else _fallback_id(raw),
        sender=sender.lower(),
        recipients=[address.lower() for address in written],
        subject=subject,
        kind=InboundKind.UNRELATED,
        why="",
        references=references,
        in_reply_to=in_reply_to,
        tagged_recipients=[a for a in written if "+" in a.rpartition("@")[0]],
    )
    fields = _classify(msg, mail, sender_name, own, unsubscribe, today)
    return mail.model_copy(update=fields)


def _classify(
    msg: Message,
    mail: InboundMail,
    sender_name: str,
    own: set[str],
    unsubscribe: str,
    today: date | None,
) -> dict[str, object]:
    if mail.sender and _base_address(mail.sender) in own:
        return {"kind": InboundKind.OWN_MESSAGE, "why": f"From is our address {mail.sender}"}
    if _headers(msg, "X-Dealflow-Deal"):
        return {"kind": InboundKind.OWN_MESSAGE, "why": "X-Dealflow-Deal header"}
    if unsubscribe and unsubscribe in mail.recipients:
        request = _UNSUBSCRIBE_SUBJECT.match(mail.subject)
        if request:
            return {
                "kind": InboundKind.UNSUBSCRIBE,
                "why": f"sent to {unsubscribe} with subject 'unsubscribe'",
                "unsubscribe_token": request["token"],
            }
    body = _body_text(msg)
    bounce = _bounce(msg, mail.sender, sender_name, mail.subject, body, own)
    if bounce is not None:
        return {"kind": InboundKind.BOUNCE, **bounce}
    listed = _list_mail(msg)
    automatic = _auto_reply(msg, mail.subject, listed is not None)
    if automatic is not None:
        text = f"{mail.subject}\n{_new_text(body)}"[:_MAX_AUTO_REPLY_TEXT]
        returns_on = _return_date(text, today or _message_date(msg))
        if returns_on is None and not _AWAY.search(text):
            why = f"{automatic}, not an out-of-office notice"
            return {"kind": InboundKind.AUTO_ACKNOWLEDGEMENT, "why": why}
        return {"kind": InboundKind.AUTO_REPLY, "why": automatic, "returns_on": returns_on}
    if listed is not None:
        return {"kind": InboundKind.LIST_MAIL, "why": listed}
    snippet = _snippet(_new_text(body))
    if mail.in_reply_to:
        return {"kind": InboundKind.HUMAN_REPLY, "why": "In-Reply-To header", "snippet": snippet}
    if mail.references:
        why = "References header (no In-Reply-To)"
        return {"kind": InboundKind.HUMAN_REPLY, "why": why, "snippet": snippet}
    for address in mail.recipients:
        base = _base_address(address)
        if address not in (unsubscribe, base) and base in own:
            why = f"sent to reply address {address}"
            return {"kind": InboundKind.HUMAN_REPLY, "why": why, "snippet": snippet}
    why = "no In-Reply-To, References or reply address"
    return {"kind": InboundKind.UNRELATED, "why": why, "snippet": snippet}


# --- matching ---

_TOKEN_LIKE = re.compile(r"\+(?:[^@]*\.[0-9a-f]{10}|r[a-z2-7]{32})@", re.IGNORECASE)


def match_deal(mail: InboundMail, domains: Iterable[str], signer: TokenSigner) -> DealMatch:
    """The deal ``mail`` belongs to, by evidence we issued ourselves; never by subject.

    Order: In-Reply-To; References, newest first (each must be a Message-ID we sealed, on
    one of ``domains``); a signed reply token in a recipient address. An unsubscribe
    request is matched by its signed token alone, since that token names the deal and
    address the buyer opts out of; a bounce by the message it returns alone
    (``_bounced``). Own messages and list mail never match.
    """
    domains = [domain.lower() for domain in domains]
    if mail.kind is InboundKind.OWN_MESSAGE:
        return DealMatch(deal_id=None, reason=f"own message ({mail.why})")
    if mail.kind is InboundKind.LIST_MAIL:
        return DealMatch(deal_id=None, reason=f"list or bulk mail ({mail.why})")
    if mail.kind is InboundKind.QUARANTINED:
        return DealMatch(deal_id=None, reason=f"quarantined ({mail.why})")
    if mail.kind is InboundKind.BOUNCE:
        return _bounced(mail, domains, signer)
    if mail.kind is InboundKind.UNSUBSCRIBE:
        if not mail.unsubscribe_token:
            return DealMatch(deal_id=None, reason="unsubscribe request without a token")
        try:
            if is_ledger_token(mail.unsubscribe_token):
                token_id = signer.unsubscribe_token_id_of(mail.unsubscribe_token)
                return DealMatch(
                    deal_id=None,
                    how="unsubscribe token",
                    reason="unsubscribe token for the ledger to resolve",
                    unsubscribe_token_id=token_id,
                )
            deal_id = signer.unsubscribe(mail.unsubscribe_token).deal_id
        except BadToken as error:
            return DealMatch(deal_id=None, reason=f"unsubscribe token is not ours: {error}")
        return DealMatch(deal_id=deal_id, how="unsubscribe token")
    reasons: list[str] = []

    def ours(message_id: str) -> str | None:
        # Only an id we sealed counts: a plain <D-100.001-proposal@...> is easy to forge.
        opened = signer.open_message_id(message_id)
        return deal_of_message_id(opened, domains) if opened else None

    if mail.in_reply_to:
        deal_id = ours(mail.in_reply_to)
        if deal_id:
            return DealMatch(deal_id=deal_id, how="in-reply-to")
    older = [ref for ref in mail.references if ref != mail.in_reply_to]
    for reference in reversed(older):
        deal_id = ours(reference)
        if deal_id:
            return DealMatch(deal_id=deal_id, how="references")
    for address in dict.fromkeys(mail.tagged_recipients + mail.recipients):
        deal_id = signer.deal_of_reply_address(address)
        if deal_id:
            return DealMatch(deal_id=deal_id, how="reply-to token")
        token_id = signer.reply_token_id_of(address)
        if token_id:
            return DealMatch(
                deal_id=None,
                how="reply-to token",
                reason="reply-to token for the ledger to resolve",
                reply_token_id=token_id,
            )
    if mail.references:
        newest = mail.in_reply_to or mail.references[-1]
        reasons.append(f"replies to {newest}, not a message we sent")
    forged = [address for address in mail.tagged_recipients if _TOKEN_LIKE.search(address)]
    if forged:
        reasons.append(f"reply token in {forged[0]} is not signed by us")
    if not reasons:
        reasons.append("no In-Reply-To, References or reply token")
    return DealMatch(deal_id=None, reason="; ".join(reasons))


def _bounced(mail: InboundMail, domains: list[str], signer: TokenSigner) -> DealMatch:
    """A bounce names no deal by itself: at most the email of ours it returns.

    Only the returned original's Message-ID counts (the message/rfc822 or
    text/rfc822-headers part, or the copy a non-standard bounce quotes), never the
    bounce's own In-Reply-To, References or the Reply-To token it was sent to: those say
    what a message answers, and every buyer email and every forward shows them. Even the
    original's id is no proof on its own, since a sealed id is not secret (every
    recipient holds it). So a bounce that returns one of our emails is only a candidate:
    the mailbox reader lets it act (suppress, tell the deal) only if the ledger says the
    failed address was a recipient of that very email. A forger then cannot name anyone
    we did not mail, and without our sealed id cannot name anyone at all.
    """
    original = mail.original_message_id
    opened = signer.open_message_id(original) if original else None
    if opened is None or deal_of_message_id(opened, domains) is None:
        reason = (
            f"bounced {original}, not a message we sent"
            if original
            else "the bounce does not return a message of ours"
        )
        return DealMatch(deal_id=None, reason=reason)
    if not mail.failed_recipient:
        return DealMatch(deal_id=None, reason="the bounce names no failed recipient")
    return DealMatch(
        deal_id=None,
        how="bounced message",
        reason="the bounced email's recipients for the ledger to check",
        bounced_message_id=opened,
    )
