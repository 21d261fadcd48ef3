"""Reading the reply mailbox over IMAP: the I/O half of the mailbox poller.

One activity call reads the messages that arrived after a cursor (UIDVALIDITY and
the last UID seen), classifies each one and finds its deal (``inbound_mail``), and
returns them with the new cursor. A mailto unsubscribe and a permanent bounce of our
mail go on the suppression list here, before the batch is returned, so the list holds
before any deal hears of them and whether or not the deal is still open. It never
changes the mailbox (BODY.PEEK: unread stays unread; people and other tools read it
too). The poller workflow keeps the cursor and signals the deals, so a crash anywhere
re-reads at worst, and each deal applies a given Message-ID once.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aioimaplib
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.inbound_mail import InboundKind, match_deal, read_inbound
from activities.signed_tokens import BadToken, TokenSigner

if TYPE_CHECKING:
    from ledger.suppression_list import SuppressionList

READ_MAILBOX = "read_mailbox"
_UID = re.compile(rb"UID (\d+)")
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")


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
    ) -> None:
        self.endpoint = endpoint
        self.signer = signer
        self.own_addresses = list(own_addresses)
        self.unsubscribe_address = unsubscribe_address
        self.domains = list(domains)
        self.batch_size = batch_size
        self.suppressions = suppressions

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

    @activity.defn(name=READ_MAILBOX)
    async def read_mailbox(self, cursor: MailboxCursor) -> MailboxBatch:
        try:
            imap, uid_validity = await self._open()
        except (OSError, TimeoutError, aioimaplib.Abort) as error:
            raise MailboxProblem(
                f"cannot reach IMAP {self.endpoint.host}:{self.endpoint.port}: {error}"
            ) from None
        try:
            rescanned = uid_validity != cursor.uid_validity
            after = 0 if rescanned else cursor.last_uid
            uids = await self._uids_after(imap, after)
            chosen = uids[: self.batch_size]
            entries = [await self._read(imap, uid) for uid in chosen]
        finally:
            with contextlib.suppress(OSError, TimeoutError, aioimaplib.Abort):
                await imap.logout()
        await self._suppress(entries)
        last = chosen[-1] if chosen else after
        return MailboxBatch(
            cursor=MailboxCursor(uid_validity=uid_validity, last_uid=last),
            entries=entries,
            more=len(uids) > len(chosen),
            rescanned=rescanned and cursor.uid_validity != 0,
        )

    async def _suppress(self, entries: list[InboxEntry]) -> None:
        """The batch's opt-outs and hard bounces onto the list; a failed write is retried
        with the whole batch (the cursor has not moved), so none is lost."""
        if self.suppressions is None:
            return
        from ledger.suppression_list import SuppressionReason, SuppressionSource

        for entry in entries:
            if entry.kind is InboundKind.UNSUBSCRIBE:
                reason, source, detail = (
                    SuppressionReason.OPTED_OUT, SuppressionSource.MAILTO, "mailto unsubscribe"
                )  # fmt: skip
                addresses = entry.unsubscribe_addresses
            elif entry.kind is InboundKind.BOUNCE and entry.permanent and entry.deal_id:
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

    async def _read(self, imap: aioimaplib.IMAP4, uid: int) -> InboxEntry:
        fetched = await _ok(imap.uid("fetch", str(uid), "(UID BODY.PEEK[])"), f"fetch UID {uid}")
        raw = next((bytes(line) for line in fetched.lines if isinstance(line, bytearray)), b"")
        activity.heartbeat(uid)
        return self.understand(uid, raw)

    def understand(self, uid: int, raw: bytes) -> InboxEntry:
        """Classify one message and find its deal (no I/O: the corpus tests call this)."""
        mail = read_inbound(raw, self.own_addresses, self.unsubscribe_address)
        match = match_deal(mail, self.domains, self.signer)
        addresses: list[str] = []
        if mail.kind is InboundKind.UNSUBSCRIBE and mail.unsubscribe_token and match.deal_id:
            try:
                addresses = list(self.signer.unsubscribe(mail.unsubscribe_token).addresses)
            except BadToken:
                addresses = []
        return InboxEntry(
            uid=uid,
            message_id=mail.message_id,
            read_at=datetime.now(UTC),
            sender=mail.sender,
            subject=mail.subject,
            kind=mail.kind,
            why=mail.why,
            deal_id=match.deal_id,
            how=match.how,
            outcome=match.reason,
            returns_on=mail.returns_on.isoformat() if mail.returns_on else "",
            failed_recipient=mail.failed_recipient or "",
            bounce_status=mail.bounce_status or "",
            permanent=mail.permanent if mail.permanent is not None else True,
            snippet=mail.snippet,
            unsubscribe_addresses=addresses,
        )


async def _ok(call, what: str) -> aioimaplib.Response:  # type: ignore[no-untyped-def]
    response: aioimaplib.Response = await call
    if response.result != "OK":
        detail = b" ".join(bytes(line) for line in response.lines).decode(errors="replace")
        if what.startswith("login"):
            # Wrong credentials do not fix themselves: say so loudly, keep retrying slowly.
            raise ApplicationError(f"IMAP {what} refused: {detail}", type="MailboxLoginRefused")
        raise MailboxProblem(f"IMAP {what} failed: {detail}")
    return response
