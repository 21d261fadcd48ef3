"""Reading the reply mailbox over IMAP: the I/O half of the mailbox poller.

One activity call reads the messages that arrived after a cursor (UIDVALIDITY and
the last UID seen), as many as its time and byte budgets allow, classifies each one
and finds its deal (``inbound_mail``), and returns them with the new cursor. A mailto
unsubscribe and a permanent bounce of our mail go on the suppression list here, before
the batch is returned, so the list holds before any deal hears of them and whether or
not the deal is still open. It never changes the mailbox (BODY.PEEK: unread stays
unread; people and other tools read it too). The poller workflow keeps the cursor and
signals the deals, so a crash anywhere re-reads at worst, and each deal applies a given
Message-ID once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aioimaplib
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.inbound_mail import InboundKind, match_deal, read_inbound
from activities.signed_tokens import BadToken, TokenSigner

if TYPE_CHECKING:
    from ledger.email_tokens import TokenBook
    from ledger.suppression_list import SuppressionList

READ_MAILBOX = "read_mailbox"
# Signal to the poller: the mailbox could not be read (and why), until a read succeeds.
MAILBOX_TROUBLE = "mailbox_trouble"
_UID = re.compile(rb"UID (\d+)")
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_SIZE = re.compile(rb"UID (\d+).*?RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+).*?UID (\d+)")

# Anyone can mail the reply mailbox, so nothing it holds reaches the poller's workflow
# unbounded: a message is read up to MAX_FETCH bytes (headers and the start of the body,
# where replies, notices and diagnostics are), and every text field is cut to its bound.
MAX_FETCH = 256 * 1024
MAX_MESSAGE_ID = 998  # RFC 5322's line limit; a deal applies each Message-ID once
LIMITS = {
    "sender": 320, "subject": 300, "why": 300, "how": 100, "outcome": 300,
    "failed_recipient": 320, "bounce_status": 20, "snippet": 500, "returns_on": 10,
}  # fmt: skip
MAX_ADDRESSES = 50
# A batch stops reading once it has spent BATCH_SECONDS or holds BATCH_BYTES of entries,
# and returns what it has, the cursor after the last message it finished: far inside the
# read's 5-minute timeout and Temporal's 2 MB payload limit, whatever the mailbox holds
# (200 worst-case entries made 1.8 MB). A message's own work is bounded (MAX_FETCH bytes,
# ``inbound_mail.MAX_PARTS``), so one message overshoots a budget by little, and the
# first message is always read, so every batch moves the cursor.
BATCH_SECONDS = 60.0
BATCH_BYTES = 512 * 1024
_DEAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


class MailboxCursor(BaseModel):
    """Where reading stopped. UIDs only mean something under one UIDVALIDITY."""

    uid_validity: int = 0
    last_uid: int = 0


class InboxEntry(BaseModel):
    """One inbound message as the poller understood it (``starter.py inbox``)."""

    uid: int
    message_id: str
    read_at: datetime
    sender: str
    subject: str
    kind: InboundKind
    why: str
    deal_id: str | None = None
    how: str = ""
    # Why no deal, or what was done with it.
    outcome: str = ""
    returns_on: str = ""
    failed_recipient: str = ""
    bounce_status: str = ""
    permanent: bool = True
    snippet: str = ""
    unsubscribe_addresses: list[str] = Field(default_factory=list)
    # An unsubscribe by a ledger token: the email whose link it was, and the recipient's
    # place in its To list (the deal knows who stood there).
    unsubscribed_from: str = ""
    recipient_position: int | None = None
    # Tokens only the ledger resolves, and what it said: used by the reader, never
    # handed to the poller (``exclude``: not in its history, not in ``inbox``).
    unsubscribe_token_id: str = Field(default="", exclude=True)
    reply_token_id: str = Field(default="", exclude=True)
    unsubscribe_address_key: str = Field(default="", exclude=True)
    # A bounce's returned email (our own id): it acts once the ledger says the failed
    # address was a recipient of that email.
    bounced_message_id: str = Field(default="", exclude=True)


class MailboxTrouble(BaseModel):
    """A read of the mailbox failed and is being retried (``inbox`` shows it)."""

    problem: str
    attempt: int
    at: datetime


def clean(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters: control characters become a space."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def as_contacts_are_written(address: str) -> str:
    """``address`` as a deal's contacts are written (email_validator's normal form, which
    pydantic's EmailStr gives them: an IDN domain in Unicode), so that a reply or a bounce
    from ``bea@xn--bcher-kva.example``, the form our emails go to, names the contact
    ``bea@bücher.example``. One that is not a valid address stays as it is."""
    if address.isascii() and "xn--" not in address.lower():
        return address  # nothing to convert: the common case
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return address


def bounded(entry: InboxEntry) -> InboxEntry:
    """``entry`` with every field inside its bound, or quarantined when its id is unusable."""
    if len(entry.message_id) > MAX_MESSAGE_ID or _CONTROL.search(entry.message_id):
        return quarantined(
            entry.uid,
            entry.message_id.encode(errors="replace"),
            f"Message-ID of {len(entry.message_id)} characters, or with control characters "
            f"(at most {MAX_MESSAGE_ID}, none)",
            sender=entry.sender,
        )
    fields = {name: clean(getattr(entry, name), limit) for name, limit in LIMITS.items()}
    addresses = [clean(a, LIMITS["sender"]) for a in entry.unsubscribe_addresses]
    deal_id = entry.deal_id
    if deal_id is not None and not _DEAL_ID.fullmatch(deal_id):
        deal_id, fields["outcome"] = None, "matched no valid deal id"
    return entry.model_copy(
        update={**fields, "deal_id": deal_id, "unsubscribe_addresses": addresses[:MAX_ADDRESSES]}
    )


def quarantined(uid: int, raw: bytes, reason: str, sender: str = "") -> InboxEntry:
    """A message that could not be read safely: listed with the reason, given to no deal."""
    return InboxEntry(
        uid=uid,
        # From the bytes, so a re-read of the same message is recognised as the same.
        message_id=f"<{hashlib.sha256(raw).hexdigest()}@quarantine.dealflow.invalid>",
        read_at=datetime.now(UTC),
        sender=clean(sender, LIMITS["sender"]),
        subject="",
        kind=InboundKind.QUARANTINED,
        why=clean(reason, LIMITS["why"]),
        outcome="quarantined: given to no deal",
    )


class MailboxBatch(BaseModel):
    cursor: MailboxCursor
    entries: list[InboxEntry]
    # More messages wait beyond this batch: read again at once.
    more: bool = False
    rescanned: bool = False


@dataclass(frozen=True)
class ImapEndpoint:
    host: str
    port: int
    tls: str  # "implicit" (port 993) or "none" (loopback only); aioimaplib has no STARTTLS
    username: str
    password: str = field(repr=False)  # never in a log or a traceback
    folder: str = "INBOX"
    timeout: float = 30.0


class MailboxProblem(Exception):
    """The mailbox cannot be read (refused login, missing folder): retried with backoff."""


class MailboxReader:
    def __init__(
        self,
        endpoint: ImapEndpoint,
        signer: TokenSigner,
        own_addresses: Sequence[str],
        unsubscribe_address: str,
        domains: Sequence[str],
        batch_size: int = 200,
        suppressions: SuppressionList | None = None,
        batch_seconds: float = BATCH_SECONDS,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.signer = signer
        self.own_addresses = list(own_addresses)
        self.unsubscribe_address = unsubscribe_address
        self.domains = list(domains)
        self.batch_size = batch_size
        self.suppressions = suppressions
        self.batch_seconds = batch_seconds
        self.batch_bytes = batch_bytes

    async def _open(self) -> tuple[aioimaplib.IMAP4, int]:
        e = self.endpoint
        if e.tls == "implicit":
            context = ssl.create_default_context()
            imap: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                host=e.host, port=e.port, timeout=e.timeout, ssl_context=context
            )
        else:
            imap = aioimaplib.IMAP4(host=e.host, port=e.port, timeout=e.timeout)
        await imap.wait_hello_from_server()
        await _ok(imap.login(e.username, e.password), f"login as {e.username}")
        # SELECT, not EXAMINE: aioimaplib allows SEARCH only after SELECT. BODY.PEEK keeps
        # every message unread all the same.
        selected = await _ok(imap.select(e.folder), f"open folder {e.folder!r}")
        found = next((m for line in selected.lines if (m := _UIDVALIDITY.search(line))), None)
        if found is None:
            raise MailboxProblem(f"{e.host} did not report the UIDVALIDITY of {e.folder!r}")
        return imap, int(found[1])

    async def _connected(self) -> tuple[aioimaplib.IMAP4, int]:
        try:
            return await self._open()
        except (OSError, TimeoutError, aioimaplib.Abort) as error:
            raise MailboxProblem(
                f"cannot reach IMAP {self.endpoint.host}:{self.endpoint.port}: {error}"
            ) from None

    async def check_login(self) -> None:
        """Log in, open the folder, log out: raises what a read would (at worker start)."""
        imap, _ = await self._connected()
        with contextlib.suppress(OSError, TimeoutError, aioimaplib.Abort):
            await imap.logout()

    @activity.defn(name=READ_MAILBOX)
    async def read_mailbox(self, cursor: MailboxCursor) -> MailboxBatch:
        try:
            return await self._read_batch(cursor)
        except (MailboxProblem, ApplicationError) as error:
            await _tell_the_poller(str(error))
            raise

    async def _read_batch(self, cursor: MailboxCursor) -> MailboxBatch:
        started = time.monotonic()
        imap, uid_validity = await self._connected()
        entries: list[InboxEntry] = []
        try:
            rescanned = uid_validity != cursor.uid_validity
            after = 0 if rescanned else cursor.last_uid
            uids = await self._uids_after(imap, after)
            chosen = uids[: self.batch_size]
            sizes = await self._sizes(imap, chosen)
            held = 0
            for uid in chosen:
                spent = time.monotonic() - started
                if entries and (spent >= self.batch_seconds or held >= self.batch_bytes):
                    break  # the rest is read by the next batch, at once (``more``)
                entries.append(await self._read(imap, uid, sizes.get(uid, 0)))
                held += len(entries[-1].model_dump_json().encode())  # bytes, not characters
        except (OSError, TimeoutError, aioimaplib.Abort) as error:
            raise MailboxProblem(f"IMAP {self.endpoint.host} failed mid-read: {error}") from None
        finally:
            with contextlib.suppress(OSError, TimeoutError, aioimaplib.Abort):
                await imap.logout()
        await self._resolve(entries)
        await self._suppress(entries)
        last = entries[-1].uid if entries else after
        return MailboxBatch(
            cursor=MailboxCursor(uid_validity=uid_validity, last_uid=last),
            entries=entries,
            more=len(uids) > len(entries),
            rescanned=rescanned and cursor.uid_validity != 0,
        )

    async def _resolve(self, entries: list[InboxEntry]) -> None:
        """The deal (and for an unsubscribe, who opted out) of each entry whose only
        evidence is a token the ledger resolves, or a bounce of one of our emails; a failed
        read is retried with the batch."""
        pending = [
            e for e in entries if e.unsubscribe_token_id or e.reply_token_id or e.bounced_message_id
        ]
        if not pending:
            return
        if self.suppressions is None:
            for entry in pending:
                entry.outcome = "no ledger to resolve its token or check its recipient"
            return
        from ledger.email_tokens import TokenBook

        book = TokenBook(self.suppressions.database)
        try:
            for entry in pending:
                if entry.unsubscribe_token_id:
                    link = await book.opt_out_link(entry.unsubscribe_token_id)
                    if link is None:
                        entry.outcome = "unsubscribe token unknown to the ledger"
                        continue
                    entry.deal_id, entry.outcome = link.deal_id, ""
                    entry.unsubscribed_from = link.message_id
                    entry.recipient_position = link.position
                    entry.unsubscribe_address_key = link.address_key
                elif entry.bounced_message_id:
                    await self._check_bounce(book, entry)
                else:
                    deal_id = await book.deal_of_reply(entry.reply_token_id)
                    if deal_id is None:
                        entry.outcome = "reply-to token unknown to the ledger"
                        continue
                    entry.deal_id, entry.outcome = deal_id, ""
        except Exception as error:
            raise MailboxProblem(f"ledger not read for the batch's tokens: {error}") from None

    async def _check_bounce(self, book: TokenBook, entry: InboxEntry) -> None:
        """The bounce gets its deal only if the email it returns went to the address it
        names: a sealed id is no secret (everyone the email reached holds it), so this is
        what keeps a forged bounce from suppressing someone we never mailed."""
        assert self.suppressions is not None
        try:
            key = await self.suppressions.key_of(entry.failed_recipient)
        except ValueError:  # not an address: nobody we mailed
            entry.outcome = "the bounce names no address we mailed: no action"
            return
        deal_id = await book.deal_that_mailed(entry.bounced_message_id, key)
        if deal_id is None:
            entry.outcome = (
                f"{entry.failed_recipient} was not a recipient of the bounced email: no action"
            )
            return
        entry.deal_id, entry.outcome = deal_id, ""

    async def _suppress(self, entries: list[InboxEntry]) -> None:
        """The batch's opt-outs and hard bounces onto the list; a failed write is retried
        with the whole batch (the cursor has not moved), so none is lost."""
        if self.suppressions is None:
            return
        from ledger.suppression_list import SuppressionReason, SuppressionSource

        for entry in entries:
            if entry.kind is InboundKind.UNSUBSCRIBE and entry.unsubscribe_address_key:
                try:
                    await self.suppressions.add_key(
                        entry.unsubscribe_address_key, SuppressionReason.OPTED_OUT,
                        SuppressionSource.MAILTO, now=entry.read_at,
                        detail="mailto unsubscribe", deal_id=entry.deal_id or "",
                    )  # fmt: skip
                except Exception as error:
                    raise MailboxProblem(f"suppression list not written: {error}") from None
                continue
            if entry.kind is InboundKind.UNSUBSCRIBE:
                reason, source, detail = (
                    SuppressionReason.OPTED_OUT, SuppressionSource.MAILTO, "mailto unsubscribe"
                )  # fmt: skip
                addresses = entry.unsubscribe_addresses
            elif entry.kind is InboundKind.BOUNCE and entry.permanent and entry.deal_id:
                # A bounce has a deal only once ``_check_bounce`` found its address among
                # the recipients of the email it returns.
                reason, source = SuppressionReason.BOUNCED, SuppressionSource.DSN
                detail = f"{entry.bounce_status or 'no status'} permanent: {entry.subject}"
                addresses = [entry.failed_recipient] if entry.failed_recipient else []
            else:
                continue
            for address in addresses:
                try:
                    await self.suppressions.add(
                        address, reason, source, now=entry.read_at, detail=detail,
                        deal_id=entry.deal_id or "",
                    )  # fmt: skip
                except ValueError:
                    continue  # not an address: nothing is mailed under it
                except Exception as error:
                    raise MailboxProblem(f"suppression list not written: {error}") from None

    async def _uids_after(self, imap: aioimaplib.IMAP4, after: int) -> list[int]:
        found = await _ok(imap.uid_search(f"UID {after + 1}:*"), "search new messages")
        uids = [int(u) for line in found.lines[:1] for u in line.split() if u.isdigit()]
        # "n:*" always includes the highest UID, even when it is below n.
        return sorted(u for u in uids if u > after)

    async def _sizes(self, imap: aioimaplib.IMAP4, uids: list[int]) -> dict[int, int]:
        """RFC822.SIZE of each message, in one command, before any is fetched."""
        if not uids:
            return {}
        wanted = ",".join(map(str, uids))
        found = await _ok(imap.uid("fetch", wanted, "(RFC822.SIZE)"), "read message sizes")
        sizes = {}
        for line in found.lines:
            if isinstance(line, (bytes, bytearray)) and (m := _SIZE.search(bytes(line))):
                uid, size = (m[1], m[2]) if m[1] else (m[4], m[3])
                sizes[int(uid)] = int(size)
        return sizes

    async def _read(self, imap: aioimaplib.IMAP4, uid: int, size: int) -> InboxEntry:
        # At most MAX_FETCH bytes, whatever the message's size: a 25 MB attachment is
        # never read, and its headers and first lines still are.
        part = f"(UID BODY.PEEK[]<0.{MAX_FETCH}>)"
        fetched = await _ok(imap.uid("fetch", str(uid), part), f"fetch UID {uid}")
        raw = next((bytes(line) for line in fetched.lines if isinstance(line, bytearray)), b"")
        _heartbeat(uid)
        # Off the event loop: parsing a hostile message must not stall the heartbeat (or
        # the sends this worker has in flight).
        entry = await asyncio.to_thread(self.read_safely, uid, raw, size)
        _heartbeat(uid)
        return entry

    def read_safely(self, uid: int, raw: bytes, size: int) -> InboxEntry:
        """``understand``, bounded; quarantined if it cannot be read (``size``: the whole
        message's, when only its start was fetched)."""
        try:
            entry = bounded(self.understand(uid, raw))
        except Exception as error:  # whatever it is, the message is listed and passed over
            return quarantined(uid, raw, f"could not be read: {type(error).__name__}: {error}")
        if size > len(raw):
            read = f" (read its first {len(raw) // 1024} KiB of {size // 1024} KiB)"
            entry.why = clean(entry.why, LIMITS["why"] - len(read)) + read
        return entry

    def understand(self, uid: int, raw: bytes) -> InboxEntry:
        """Classify one message and find its deal (no I/O: the corpus tests call this)."""
        mail = read_inbound(raw, self.own_addresses, self.unsubscribe_address)
        if mail.kind is InboundKind.QUARANTINED:
            return quarantined(uid, raw, mail.why)
        match = match_deal(mail, self.domains, self.signer)
        addresses: list[str] = []
        if (
            mail.kind is InboundKind.UNSUBSCRIBE
            and mail.unsubscribe_token
            and match.deal_id
            and not match.unsubscribe_token_id
        ):
            try:
                addresses = list(self.signer.unsubscribe(mail.unsubscribe_token).addresses)
            except BadToken:
                addresses = []
        return InboxEntry(
            uid=uid,
            message_id=mail.message_id,
            read_at=datetime.now(UTC),
            sender=as_contacts_are_written(mail.sender),
            # An unsubscribe's subject is its token, which opts out whoever it names: it
            # stays here, out of the poller's state and ``inbox``.
            subject="unsubscribe" if mail.kind is InboundKind.UNSUBSCRIBE else mail.subject,
            kind=mail.kind,
            why=mail.why,
            deal_id=match.deal_id,
            how=match.how,
            outcome=match.reason,
            returns_on=mail.returns_on.isoformat() if mail.returns_on else "",
            failed_recipient=as_contacts_are_written(mail.failed_recipient or ""),
            bounce_status=mail.bounce_status or "",
            permanent=mail.permanent if mail.permanent is not None else True,
            snippet=mail.snippet,
            unsubscribe_addresses=addresses,
            unsubscribe_token_id=match.unsubscribe_token_id,
            reply_token_id=match.reply_token_id,
            bounced_message_id=match.bounced_message_id,
        )


def _heartbeat(uid: int) -> None:
    """Tell Temporal the read is alive, with the last UID (outside an activity: a test)."""
    if activity.in_activity():
        activity.heartbeat(uid)


async def _tell_the_poller(problem: str) -> None:
    """A failed read is retried by Temporal, silently: tell the poller, so ``inbox`` says."""
    if not activity.in_activity():
        return
    info = activity.info()
    activity.logger.warning("mailbox read attempt %d failed: %s", info.attempt, problem)
    trouble = MailboxTrouble(problem=problem[:500], attempt=info.attempt, at=datetime.now(UTC))
    try:
        poller = activity.client().get_workflow_handle(info.workflow_id or "")
        await poller.signal(MAILBOX_TROUBLE, trouble)
    except Exception as unsent:  # Temporal away too: the retry still happens
        activity.logger.info("poller not told of the failed read: %s", unsent)


async def _ok(call, what: str) -> aioimaplib.Response:  # type: ignore[no-untyped-def]
    response: aioimaplib.Response = await call
    if response.result != "OK":
        detail = b" ".join(bytes(line) for line in response.lines).decode(errors="replace")
        if what.startswith("login"):
            # Wrong credentials do not fix themselves: say so loudly, keep retrying slowly.
            raise ApplicationError(f"IMAP {what} refused: {detail}", type="MailboxLoginRefused")
        raise MailboxProblem(f"IMAP {what} failed: {detail}")
    return response
