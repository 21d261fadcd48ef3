"""The send-email activity: render, build a MIME message, hand it to SMTP.

Failure policy: what retrying cannot fix (unknown template, missing variable,
malformed address, a 5xx answer, an address the relay cannot carry) raises a
non-retryable ``ApplicationError`` whose ``type`` the workflow records on the deal;
anything else (4xx, refused connection, time-out) raises so that Temporal retries
with backoff.

Addresses go out as every relay takes them: a domain that is not ASCII in its IDNA
A-labels (``bea@xn--bcher-kva.example``), in MAIL FROM, RCPT TO and the headers. Only a
local part that is not ASCII (``béa@…``) needs SMTPUTF8 (RFC 6531); through a relay
that does not offer it, that send fails at once, for good.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import aiosmtplib
from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.email_models import EmailReceipt, EmailRequest, Party, SendTrouble
from activities.mailbox_quota import MailboxQuota
from activities.mime import Mailbox, OutgoingMessage, compose
from activities.rendering import RenderedEmail, TemplateLibrary, TemplateProblem
from activities.signed_tokens import TokenSigner
from activities.smtp_pool import SmtpPool

if TYPE_CHECKING:
    # SQLAlchemy is imported where a send needs it: the workflow imports this module for
    # the activity's name, and every CLI command imports the workflow.
    from ledger.email_tokens import EmailTokens
    from ledger.send_ledger import SendLedger, SendRecord
    from ledger.suppression_list import SuppressionList

SEND_EMAIL = "send_email"
# The signal a failing attempt sends its deal (``SendTrouble``): status shows it, retrying.
SEND_TROUBLE = "send_trouble"
# RFC 5321 4.5.3.2.6: wait up to 10 minutes for the final reply after DATA.
FINAL_REPLY_TIMEOUT = 600.0


HEARTBEAT_EVERY = 5.0

# Test-only: ``<point>:<marker file>`` makes the first send that reaches ``point`` kill its
# own worker (SIGKILL, as a crash would), once: the marker file records that it happened.
# Points: before-data (after RCPT, before the ledger claim), after-reply (the relay said
# 250, the ledger not yet written), after-record (the ledger says sent, the activity has
# not completed). Off unless the variable is set.
DIE_AT_VARIABLE = "DEALFLOW_TEST_DIE_AT"


# Read once: a worker's environment is set before it starts (three checks a send).
_DIE_AT, _, _DIE_MARKER = os.environ.get(DIE_AT_VARIABLE, "").partition(":")


def _die_here_for_a_test(point: str) -> None:
    if point != _DIE_AT or not _DIE_MARKER:
        return
    marker = _DIE_MARKER
    try:
        with open(marker, "x") as written:
            written.write(f"{os.getpid()} {point}\n")
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


@asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    if not activity.in_activity():  # called directly (the send-path benchmark)
        yield
        return

    # The first beat only once a send has taken a while: every beat is a write on the
    # server, and a send that is over in milliseconds needs none (the server's heartbeat
    # timeout runs from the attempt's start all the same).
    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            activity.heartbeat()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()


class _AlreadySent(Exception):
    """The ledger says an earlier attempt sent this email: complete without sending."""


class FailureType:
    """``ApplicationError.type`` values the workflow tells apart."""

    TEMPLATE = "TemplateProblem"
    ADDRESS = "InvalidAddress"
    BOUNCE = "MailboxRejected"
    REJECTED = "SmtpRejected"
    OPTED_OUT = "OptedOut"
    SUPPRESSED = "Suppressed"
    # An earlier attempt died after claiming the send: the relay may have it. Held for ops.
    MAYBE_SENT = "MaybeSent"
    # A local part that is not ASCII, and a relay without SMTPUTF8. Raised non-retryable,
    # so it needs no place in NON_RETRYABLE (the deals' retry policy, kept as it is).
    NO_SMTPUTF8 = "RelayLacksSmtputf8"


NON_RETRYABLE = [
    FailureType.TEMPLATE,
    FailureType.ADDRESS,
    FailureType.BOUNCE,
    FailureType.REJECTED,
    FailureType.OPTED_OUT,
    FailureType.SUPPRESSED,
]


@dataclass(frozen=True)
class Sender:
    name: str
    address: str
    company: str
    postal_address: str
    reply_to: str | None = None

    def as_context(self) -> dict[str, str]:
        return {
            "name": self.name,
            "address": self.address,
            "company": self.company,
            "postal_address": self.postal_address,
            "reply_to": self.reply_to or self.address,
        }


def unsubscribe_mailbox(reply_base: str) -> str:
    """Where the mailto: unsubscribe link writes: the reply mailbox, tagged ``+unsubscribe``."""
    local, _, domain = reply_base.rpartition("@")
    return f"{local}+unsubscribe@{domain}"


@dataclass(frozen=True)
class BuyerLinks:
    """What makes a buyer email answerable by machine: the deal's own Reply-To address
    and the one-click unsubscribe links (RFC 8058), all signed so that none can be forged,
    and none naming a deal or an address: the ledger resolves them (``email_tokens``)."""

    signer: TokenSigner
    reply_base: str
    public_url: str

    @property
    def unsubscribe_mailbox(self) -> str:
        return unsubscribe_mailbox(self.reply_base)

    def unsubscribe_url(self, request: EmailRequest, parties: Sequence[Party]) -> str:
        """The link for the copy that goes to ``parties`` (one recipient: a buyer's copy)."""
        if len(parties) != 1:
            # Each link opts out exactly one person; a copy to nobody has nothing to link.
            raise ApplicationError(
                f"a buyer email's copy goes to one recipient, not {len(parties)}",
                type=FailureType.ADDRESS,
                non_retryable=True,
            )
        (party,) = parties
        token_id = self.signer.unsubscribe_token_id(
            request.message_id, request.to.index(party), party.email
        )
        token = self.signer.ledger_unsubscribe_token(token_id)
        return f"{self.public_url.rstrip('/')}/unsubscribe/{token}"

    def tokens(self, request: EmailRequest, parties: Sequence[Party]) -> EmailTokens:
        """What the links in the copies to ``parties`` and the Reply-To stand for."""
        from ledger.email_tokens import EmailTokens, UnsubscribeLink

        deal_id = request.context.deal.deal_id
        links = []
        for party in parties:
            position = request.to.index(party)
            token_id = self.signer.unsubscribe_token_id(request.message_id, position, party.email)
            links.append(UnsubscribeLink(token_id, position, party.email))
        return EmailTokens(
            deal_id=deal_id,
            message_id=request.message_id,
            reply_token_id=self.signer.reply_token_id(deal_id),
            links=tuple(links),
        )

    def headers(self, request: EmailRequest, unsubscribe_url: str) -> dict[str, str]:
        token = unsubscribe_url.rsplit("/", 1)[1]
        mailto = f"mailto:{_wire(self.unsubscribe_mailbox)}?subject=unsubscribe%20{token}"
        return {
            "Reply-To": self.signer.reply_address(self.reply_base, request.context.deal.deal_id),
            "List-Unsubscribe": f"<{unsubscribe_url}>, <{mailto}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }


# Addresses whose checked form is remembered: checking one (email_validator) cost about
# 0.05 ms, twice a recipient a send. Only valid ones are kept, so a malformed address
# raises a new ``ApplicationError`` every time.
ADDRESSES_REMEMBERED = 4096


def _address(party: Party) -> Mailbox:
    return _checked_address(party.name, party.email)


@functools.lru_cache(maxsize=ADDRESSES_REMEMBERED)
def _checked_address(name: str, email: str) -> Mailbox:
    try:
        checked = validate_email(email, check_deliverability=False)
    except EmailNotValidError as error:
        raise ApplicationError(
            f"{email!r} is not a valid email address: {error}",
            type=FailureType.ADDRESS,
            non_retryable=True,
        ) from None
    if _CONTROL.search(name):
        # Intake refuses these; one that got past it would break the header (a line feed
        # starts a header of its own), so it fails for good rather than retry for a day.
        raise ApplicationError(
            f"the name {name!r} of {email} holds a control character",
            type=FailureType.ADDRESS,
            non_retryable=True,
        )
    return Mailbox(name, _on_the_wire(checked))


def _on_the_wire(checked: ValidatedEmail) -> str:
    """The address as it goes out: the domain in IDNA A-labels (``xn--``), which every relay
    takes, and the same name the ledger's normal form gives it (ledger/addresses.py); an
    ASCII address is its normal form as it was."""
    return checked.ascii_email or f"{checked.local_part}@{checked.ascii_domain}"


def _wire(address: str) -> str:
    """Our own addresses (sender, Reply-To) as they go out, see ``_on_the_wire``."""
    return address if address.isascii() else _checked_address("", address).address


# What intake refuses in names and subjects (workflows/bounds.py check_text): C0 and C1
# controls (a C1 CSI drives a terminal as ESC [ does), line and paragraph separators, and
# lone surrogates, which no encoder can write.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@functools.lru_cache(maxsize=ADDRESSES_REMEMBERED)
def _sealed(signer: TokenSigner, message_id: str) -> str:
    # A send seals its id for the message, the receipt and maybe a refusal: once will do.
    return signer.seal_message_id(message_id)


async def _tell_the_deal(request: EmailRequest, error: BaseException) -> str:
    """A failure Temporal will retry: one line in the log, and a signal to the deal so that
    ``status`` shows why the email is late. Neither may hide the failure itself."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    problem = f"{type(error).__name__}: {text}"[:500]
    if not activity.in_activity():
        return problem
    info = activity.info()
    activity.logger.warning("%s attempt %d failed, retrying: %s", request.message_id,
                            info.attempt, problem)  # fmt: skip
    trouble = SendTrouble(
        message_id=request.message_id, attempt=info.attempt, problem=problem, at=datetime.now(UTC)
    )
    try:
        deal = activity.client().get_workflow_handle(info.workflow_id or "")
        await deal.signal(SEND_TROUBLE, trouble)
    except Exception as unsent:  # Temporal away too: the retry itself still happens
        activity.logger.info("deal not told of the failed attempt: %s", unsent)
    return problem


@dataclass
class _Sending:
    """Where one attempt's copies stand."""

    claimed: bool = False  # this attempt holds the send's ledger row
    delivered: frozenset[int] = frozenset()  # places (in the To list) of copies sent
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    reply: str | None = None  # the relay's last final reply
    # What the copies' links and the Reply-To stand for: written with the claim.
    tokens: EmailTokens | None = None


def _subject(request: EmailRequest, rendered: str) -> str:
    """A follow-up answers the thread it follows: its subject is the thread's, with Re:."""
    if request.thread is None:
        return rendered
    subject = request.thread.subject
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"


def _places(request: EmailRequest, parties: Sequence[Party]) -> frozenset[int]:
    """Where ``parties`` stand in the email's To list, which every retry sends alike."""
    return frozenset(request.to.index(party) for party in parties)


def _expected(message: str, kind: str) -> ApplicationError:
    """A refusal the policy expects (suppressed, held as maybe sent): one line in the log.

    Marked benign, so the SDK logs it at debug rather than as a warning with a traceback.
    """
    if activity.in_activity():
        info = activity.info()
        activity.logger.warning("%s not sent (%s): %s", info.activity_id, kind, message)
    return ApplicationError(
        message, type=kind, non_retryable=True, category=ApplicationErrorCategory.BENIGN
    )


def _maybe_sent(held: SendRecord, wire_id: str) -> ApplicationError:
    return _expected(
        f"maybe sent: attempt {held.attempt} on {held.worker} claimed it at "
        f"{held.claimed_at:%Y-%m-%d %H:%M:%S} and never recorded the relay's reply; "
        f"held so the buyer gets no second copy: look for {wire_id} in the relay's log, "
        "then resend (with --delivered MESSAGE-ID if the log has it)",
        FailureType.MAYBE_SENT,
    )


def _ledger_down(error: Exception, url: str) -> ApplicationError:
    """A retryable failure for a send that cannot read or write the ledger: it waits for
    the database rather than mail an address the list might hold. Expected while the
    database is down, so benign: the one line ``_tell_the_deal`` logs, no traceback."""
    from ledger.database import explain

    return ApplicationError(
        str(explain(error, url)),
        type="LedgerUnavailable",
        category=ApplicationErrorCategory.BENIGN,
    )


def _cannot_carry(request: EmailRequest, message: OutgoingMessage) -> ApplicationError:
    """The relay lacks SMTPUTF8 and this email names an address that needs it: no retry
    brings the extension, so it fails now rather than retry for a day."""
    named = [message.sender, *(_address(party).address for party in request.to)]
    needing = ", ".join(address for address in named if not address.isascii())
    return ApplicationError(
        f"{needing}: the relay does not offer SMTPUTF8, which an address whose local part "
        "is not ASCII needs; send through a relay that does, or use an ASCII address",
        type=FailureType.NO_SMTPUTF8,
        non_retryable=True,
    )


def _first_code(error: aiosmtplib.SMTPRecipientsRefused) -> tuple[int, str]:
    refused = error.recipients[0]
    return refused.code, f"{refused.recipient}: {refused.code} {refused.message}"


class Mailer:
    """Holds what every send needs: the sender's identity, the templates and the SMTP pool."""

    def __init__(
        self,
        sender: Sender,
        templates: TemplateLibrary,
        pool: SmtpPool,
        suppressions: SuppressionList | None = None,
        quota: MailboxQuota | None = None,
        links: BuyerLinks | None = None,
        ledger: SendLedger | None = None,
    ) -> None:
        self.sender = sender
        self.templates = templates
        self.pool = pool
        self.suppressions = suppressions
        self.quota = quota
        self.links = links
        self.ledger = ledger
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def build(self, request: EmailRequest) -> OutgoingMessage:
        """The exact message of ``request``'s first copy: the same bytes on every retry."""
        return self.build_copies(request)[0]

    def build_copies(self, request: EmailRequest) -> list[OutgoingMessage]:
        """Every copy of ``request`` (``copies``), exactly as each goes out."""
        recipients = [_address(party) for party in request.to]
        built = []
        for parties in self.copies(request):
            unsubscribe_url = self._unsubscribe_url(request, parties)
            rendered = self._render(request, unsubscribe_url)
            message = self._message(request, recipients, rendered, unsubscribe_url)
            built.append(replace(message, recipients=[_address(p).address for p in parties]))
        return built

    def copies(self, request: EmailRequest) -> list[list[Party]]:
        """Who gets which copy. A buyer email goes as one copy per recipient, each with
        its own unsubscribe link, so one click opts out exactly the person who clicked it
        and a forwarded email cannot opt out the rest of the committee; the To line still
        names everyone. Anything else (our own people) is one copy for all."""
        if self._buyer_links(request) is None or len(request.to) < 2:
            return [list(request.to)]
        return [[party] for party in request.to]

    def _render(self, request: EmailRequest, unsubscribe_url: str) -> RenderedEmail:
        context: dict[str, Any] = request.context.model_dump()
        context["sender"] = self.sender.as_context()
        context["unsubscribe_url"] = unsubscribe_url
        try:
            rendered = self.templates.render(request.template, context)
        except TemplateProblem as error:
            raise ApplicationError(
                str(error), type=FailureType.TEMPLATE, non_retryable=True
            ) from None
        if _CONTROL.search(rendered.subject):
            raise ApplicationError(
                f"the subject {rendered.subject!r} holds a control character",
                type=FailureType.TEMPLATE,
                non_retryable=True,
            )
        return rendered

    def _buyer_links(self, request: EmailRequest) -> BuyerLinks | None:
        return self.links if request.buyer_facing else None

    def _unsubscribe_url(self, request: EmailRequest, parties: Sequence[Party]) -> str:
        links = self._buyer_links(request)
        return links.unsubscribe_url(request, parties) if links else ""

    def _message(
        self,
        request: EmailRequest,
        recipients: list[Mailbox],
        rendered: RenderedEmail,
        unsubscribe_url: str,
    ) -> OutgoingMessage:
        """``unsubscribe_url``: the copy's own link, made with its rendering."""
        headers = []
        subject = _subject(request, rendered.subject)
        if request.thread is not None:
            headers.append(("In-Reply-To", request.thread.message_ids[-1]))
            headers.append(("References", " ".join(request.thread.message_ids)))
        headers.append(("Date", format_datetime(request.date)))
        if not request.buyer_facing:
            # For the rep's own mail tools; a buyer's email names no internal id at all.
            headers.append(("X-Dealflow-Deal", request.context.deal.deal_id))
            headers.append(("X-Dealflow-Step", request.template))
        reply_to = self.sender.reply_to
        links = self._buyer_links(request)
        if links is not None:
            extra = links.headers(request, unsubscribe_url)
            reply_to = extra.pop("Reply-To")
            headers.extend(extra.items())
        return compose(
            sender=Mailbox(self.sender.name, _wire(self.sender.address)),
            to=recipients,
            reply_to=Mailbox("", _wire(reply_to)) if reply_to else None,
            subject=subject,
            text=rendered.text,
            html=rendered.html,
            headers=headers,
            message_id=self.wire_id(request),
        )

    async def _unsuppressed(self, request: EmailRequest) -> EmailRequest:
        """The request without suppressed recipients; none left is a non-retryable failure.

        Only buyer email is checked: opt-outs and bounces are about buyers, and a rep's
        task must not vanish because that address once bounced (it fails loudly instead).
        """
        if self.suppressions is None or request.buyer_facing is False:
            return request
        try:
            found = await self.suppressions.find([party.email for party in request.to])
        except Exception as error:
            raise _ledger_down(error, self.suppressions.database.url) from None
        if not found:
            return request
        allowed = [party for party in request.to if party.email not in found]
        if allowed:
            return request.model_copy(update={"to": allowed})
        entries = list(found.values())
        opted_out = any(entry.reason == "opted_out" for entry in entries)
        kind = FailureType.OPTED_OUT if opted_out else FailureType.SUPPRESSED
        detail = "; ".join(entry.describe() for entry in entries)
        raise _expected(f"suppressed: {detail}", kind)

    async def _suppress_bounced(self, request: EmailRequest, detail: str) -> None:
        """A 5xx for a buyer's address puts it on the list before the deal hears of it."""
        if self.suppressions is None or request.buyer_facing is False:
            return
        from ledger.suppression_list import SuppressionReason, SuppressionSource

        for party in request.to:
            # The relay names the address as it went out (an IDN domain in A-labels).
            if _address(party).address.lower() not in detail.lower():
                continue
            try:
                await self.suppressions.add(
                    party.email,
                    SuppressionReason.BOUNCED,
                    SuppressionSource.SMTP_BOUNCE,
                    now=datetime.now(UTC),
                    detail=detail,
                    deal_id=request.context.deal.deal_id,
                )
            except Exception as error:
                # Retried: the relay refuses again, and the next attempt writes the entry.
                raise _ledger_down(error, self.suppressions.database.url) from None

    @activity.defn(name=SEND_EMAIL)
    async def send_email(self, request: EmailRequest) -> EmailReceipt:
        # Heartbeats while talking SMTP: an attempt the server gave up on is cancelled
        # here, so it is never still inside DATA when the next attempt starts.
        async with _heartbeating():
            try:
                return await self._send_email(request)
            except ApplicationError as error:
                if error.non_retryable:
                    raise
                await _tell_the_deal(request, error)
                raise
            except (OSError, TimeoutError, aiosmtplib.SMTPException) as error:
                # The relay down or saying 4xx: expected, and retried. One line, no
                # traceback (benign), with the same type for the retry policy to see.
                problem = await _tell_the_deal(request, error)
                raise ApplicationError(
                    problem, type=type(error).__name__, category=ApplicationErrorCategory.BENIGN
                ) from error
            except Exception as error:
                await _tell_the_deal(request, error)  # a bug: the SDK logs its traceback
                raise

    async def _send_email(self, request: EmailRequest) -> EmailReceipt:
        for party in request.to:
            _address(party)  # a malformed address fails before anything else is done
        # Each copy rendered before a connection is taken, keyed by its recipients'
        # places in the To list: a copy's bytes depend on nothing else, so every retry
        # sends the same ones, whoever the suppression list leaves in.
        renderings = {
            _places(request, parties): self._rendering(request, parties)
            for parties in self.copies(request)
        }
        if self.quota is not None:
            slot = await self.quota.slot(request.message_id)
            # The server's clock, as the quota's slots are (it also skips time in tests).
            wait = slot - activity.info().current_attempt_scheduled_time
            if wait > timedelta(0):
                # Over the mailbox's 24-hour cap: come back when the slot frees up.
                raise ApplicationError(
                    f"mailbox cap reached; this email goes out at {slot.isoformat()}",
                    type="MailboxCapReached",
                    next_retry_delay=wait,
                )
        first_url, first = next(iter(renderings.values()))
        earlier = await self._settled_earlier(request, first, first_url)
        if earlier is not None:
            return earlier
        sending = _Sending()
        try:
            async with self.pool.connection() as smtp:
                # The suppression list is read last, holding the connection, right before
                # MAIL FROM: an opt-out committed a moment ago by any path stops this email.
                allowed = await self._unsuppressed(request)
                recipients = [_address(party) for party in allowed.to]
                links = self._buyer_links(request)
                if links is not None:
                    sending.tokens = links.tokens(request, allowed.to)
                for parties in self.copies(allowed):
                    places = _places(request, parties)
                    if places <= sending.delivered:
                        continue  # an earlier attempt sent this copy
                    url, rendered = renderings[places]
                    message = replace(
                        self._message(allowed, recipients, rendered, url),
                        recipients=[_address(party).address for party in parties],
                    )
                    await self._transmit(smtp, request, message, places, sending)
            if sending.reply is None and not sending.claimed:
                # Every copy's recipient refused: nothing was claimed, nothing went out.
                raise aiosmtplib.SMTPRecipientsRefused(
                    [aiosmtplib.SMTPRecipientRefused(code, text, address)
                     for address, (code, text) in sending.refused.items()]
                )  # fmt: skip
            # The connection is back in the pool (it is what the sends wait for): the relay
            # said 250, now the ledger records it as sent.
            await self._record(request, sending.reply or "every copy sent earlier", sent=True)
            _die_here_for_a_test("after-record")
        except _AlreadySent:
            return self._receipt(request, first.subject, request.to)
        except aiosmtplib.SMTPRecipientsRefused as error:
            code, detail = _first_code(error)
            if code >= 500:
                await self._suppress_bounced(request, detail)
                raise ApplicationError(
                    f"recipient refused: {detail}", type=FailureType.BOUNCE, non_retryable=True
                ) from None
            raise  # 4xx: the mailbox may accept later
        except aiosmtplib.SMTPResponseException as error:
            if error.code >= 500:
                raise ApplicationError(
                    f"SMTP server refused the message: {error.code} {error.message}",
                    type=FailureType.REJECTED,
                    non_retryable=True,
                ) from None
            raise
        kept = [p for p in allowed.to if _address(p).address not in sending.refused]
        return self._receipt(request, first.subject, kept)

    def _rendering(
        self, request: EmailRequest, parties: Sequence[Party]
    ) -> tuple[str, RenderedEmail]:
        unsubscribe_url = self._unsubscribe_url(request, parties)
        return unsubscribe_url, self._render(request, unsubscribe_url)

    def _receipt(
        self, request: EmailRequest, subject: str, parties: Sequence[Party]
    ) -> EmailReceipt:
        """``message_id``: the one the email carries (the deal threads its replies on it)."""
        subject = _subject(request, subject)
        accepted = [_address(party).address for party in parties]
        return EmailReceipt(message_id=self.wire_id(request), subject=subject, accepted=accepted)

    async def _transmit(
        self,
        smtp: aiosmtplib.SMTP,
        request: EmailRequest,
        message: OutgoingMessage,
        places: frozenset[int],
        sending: _Sending,
    ) -> None:
        """One copy's SMTP transaction: MAIL, RCPT, then (for the first copy that gets
        that far) claim the send in the ledger, then DATA.

        The claim comes after the relay accepted the envelope and right before DATA, so
        an attempt that dies earlier leaves nothing behind and the retry simply sends.
        The claim also says which copies an earlier attempt sent: those are skipped.
        A copy whose recipients the relay refuses is left out; the rest still go.
        """
        # SMTPUTF8 only for a local part that is not ASCII (``compose``); else ASCII.
        encoding = "utf-8" if message.mail_options else "ascii"
        try:
            await smtp.mail(message.sender, options=message.mail_options, encoding=encoding)
        except aiosmtplib.SMTPNotSupported:
            raise _cannot_carry(request, message) from None
        refused: dict[str, tuple[int, str]] = {}
        for recipient in message.recipients:
            try:
                await smtp.rcpt(recipient, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as error:
                refused[recipient] = (error.code, error.message)
        sending.refused.update(refused)
        if len(refused) == len(message.recipients):
            await smtp.rset()
            return
        _die_here_for_a_test("before-data")
        if not sending.claimed:
            sending.delivered |= await self._claim(smtp, request, sending.tokens)
            sending.claimed = True
            if places <= sending.delivered:
                await smtp.rset()
                return
        try:
            reply = await smtp.data(message.data, timeout=FINAL_REPLY_TIMEOUT)
        except aiosmtplib.SMTPResponseException as error:
            # The relay answered: it did not take this copy, so a retry may send it (and
            # only it: the copies it did take are in the ledger already).
            await self._record(request, f"{error.code} {error.message}", sent=False)
            raise
        # Anything else (a dropped connection, no final reply) leaves the claim standing:
        # the relay may have the message, and the next attempt holds it as maybe sent.
        _die_here_for_a_test("after-reply")
        sending.reply = f"{reply.code} {reply.message}"
        sending.delivered |= places
        if len(request.to) > 1:
            await self._copy_delivered(request, sending.delivered)

    async def _copy_delivered(self, request: EmailRequest, delivered: frozenset[int]) -> None:
        if self.ledger is None:
            return
        try:
            await self.ledger.copy_delivered(request.message_id, delivered)
        except Exception as error:
            # As for the sent mark: past the relay's answer, write and say if not.
            activity.logger.warning("send ledger not updated for %s: %s", request.message_id, error)

    async def _claim(
        self, smtp: aiosmtplib.SMTP, request: EmailRequest, tokens: EmailTokens | None
    ) -> frozenset[int]:
        """Claim the send, writing what its tokens stand for in the same transaction;
        returns the copies an earlier attempt sent (their places)."""
        if self.ledger is None:
            return frozenset()
        from ledger.send_ledger import ClaimOutcome

        # Outside an activity (the send-path benchmark calls it directly) it is a first try.
        attempt = activity.info().attempt if activity.in_activity() else 1
        try:
            claim = await self.ledger.claim(
                message_id=request.message_id,
                deal_id=request.context.deal.deal_id,
                template=request.template,
                attempt=attempt,
                worker=self.worker,
                now=datetime.now(UTC),
                resend=request.resend,
                tokens=tokens,
            )
        except Exception as error:
            await smtp.rset()
            raise _ledger_down(error, self.ledger.database.url) from None
        if claim.outcome is ClaimOutcome.CLAIMED:
            return claim.record.delivered_copies
        await smtp.rset()
        if claim.outcome is ClaimOutcome.ALREADY_SENT:
            raise _AlreadySent()
        raise _maybe_sent(claim.record, self.wire_id(request))

    def wire_id(self, request: EmailRequest) -> str:
        """The Message-ID on the wire: the deal's own, sealed (``TokenSigner``) so that it
        names no deal and shows no sequence; the same for every retry and resend."""
        if self.links is None:
            return request.message_id
        return _sealed(self.links.signer, request.message_id)

    async def _settled_earlier(
        self, request: EmailRequest, rendered: RenderedEmail, unsubscribe_url: str
    ) -> EmailReceipt | None:
        """A retry (or resend) asks the ledger first, before the suppression list: an
        email an earlier attempt sent stays sent, even if the buyer opted out since, and
        one it may have sent stays held."""
        if self.ledger is None:
            return None
        attempt = activity.info().attempt if activity.in_activity() else 1
        if attempt == 1 and not request.resend:
            return None  # a first attempt finds no row: skip the read
        from ledger.send_ledger import SendState

        try:
            record = await self.ledger.find(request.message_id)
        except Exception as error:
            raise _ledger_down(error, self.ledger.database.url) from None
        if record is None or record.state is SendState.FAILED:
            return None
        if record.state is SendState.SENT:
            return self._receipt(request, rendered.subject, request.to)
        if request.resend:
            return None  # ops checked the held email: the claim below takes it over
        raise _maybe_sent(record, self.wire_id(request))

    async def _record(self, request: EmailRequest, reply: str, sent: bool) -> None:
        if self.ledger is None:
            return
        now = datetime.now(UTC)
        # Past the relay's answer, a ledger outage must not turn a sent email into a retry
        # (which would hold it as maybe sent, the safe side) - so write, and say if not.
        try:
            if sent:
                await self.ledger.sent(request.message_id, reply, now)
            else:
                await self.ledger.failed(request.message_id, reply, now)
        except Exception as error:
            activity.logger.warning("send ledger not updated for %s: %s", request.message_id, error)
