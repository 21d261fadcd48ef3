"""The send-email activity: render, build a MIME message, hand it to SMTP.

Failure policy: what retrying cannot fix (unknown template, missing variable,
malformed address, a 5xx answer) raises a non-retryable ``ApplicationError``
whose ``type`` the workflow records on the deal; anything else (4xx, refused
connection, time-out) raises so that Temporal retries with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.utils import format_datetime
from typing import Any

import aiosmtplib
from email_validator import EmailNotValidError, validate_email
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email_models import EmailReceipt, EmailRequest, Party
from activities.mailbox_quota import MailboxQuota
from activities.mime import Mailbox, OutgoingMessage, compose
from activities.rendering import RenderedEmail, TemplateLibrary, TemplateProblem
from activities.signed_tokens import TokenSigner
from activities.smtp_pool import SmtpPool
from activities.suppression import Suppression, SuppressionList

SEND_EMAIL = "send_email"


class FailureType:
    """``ApplicationError.type`` values the workflow tells apart."""

    TEMPLATE = "TemplateProblem"
    ADDRESS = "InvalidAddress"
    BOUNCE = "MailboxRejected"
    REJECTED = "SmtpRejected"
    OPTED_OUT = "OptedOut"
    SUPPRESSED = "Suppressed"


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
    and the one-click unsubscribe links (RFC 8058), all signed so that none can be forged."""

    signer: TokenSigner
    reply_base: str
    public_url: str

    @property
    def unsubscribe_mailbox(self) -> str:
        return unsubscribe_mailbox(self.reply_base)

    def unsubscribe_url(self, request: EmailRequest) -> str:
        token = self.signer.unsubscribe_token(
            request.context.deal.deal_id, [party.email for party in request.to]
        )
        return f"{self.public_url.rstrip('/')}/unsubscribe/{token}"

    def headers(self, request: EmailRequest, unsubscribe_url: str) -> dict[str, str]:
        token = unsubscribe_url.rsplit("/", 1)[1]
        mailto = f"mailto:{self.unsubscribe_mailbox}?subject=unsubscribe%20{token}"
        return {
            "Reply-To": self.signer.reply_address(self.reply_base, request.context.deal.deal_id),
            "List-Unsubscribe": f"<{unsubscribe_url}>, <{mailto}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }


def _address(party: Party) -> Address:
    try:
        checked = validate_email(party.email, check_deliverability=False)
    except EmailNotValidError as error:
        raise ApplicationError(
            f"{party.email!r} is not a valid email address: {error}",
            type=FailureType.ADDRESS,
            non_retryable=True,
        ) from None
    return Address(display_name=party.name, addr_spec=checked.normalized)


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
    ) -> None:
        self.sender = sender
        self.templates = templates
        self.pool = pool
        self.suppressions = suppressions
        self.quota = quota
        self.links = links

    def build(self, request: EmailRequest) -> OutgoingMessage:
        """The exact message for ``request``: the same bytes on every retry."""
        recipients = [_address(party) for party in request.to]
        return self._message(request, recipients, self._render(request))

    def _render(self, request: EmailRequest) -> RenderedEmail:
        context: dict[str, Any] = request.context.model_dump()
        context["sender"] = self.sender.as_context()
        context["unsubscribe_url"] = self._unsubscribe_url(request)
        try:
            return self.templates.render(request.template, context)
        except TemplateProblem as error:
            raise ApplicationError(
                str(error), type=FailureType.TEMPLATE, non_retryable=True
            ) from None

    def _buyer_links(self, request: EmailRequest) -> BuyerLinks | None:
        return self.links if request.buyer_facing else None

    def _unsubscribe_url(self, request: EmailRequest) -> str:
        links = self._buyer_links(request)
        return links.unsubscribe_url(request) if links else ""

    def _message(
        self, request: EmailRequest, recipients: list[Address], rendered: RenderedEmail
    ) -> OutgoingMessage:
        headers = []
        subject = rendered.subject
        if request.thread is not None:
            subject = request.thread.subject
            if not subject.lower().startswith("re:"):
                subject = f"Re: {subject}"
            headers.append(("In-Reply-To", request.thread.message_ids[-1]))
            headers.append(("References", " ".join(request.thread.message_ids)))
        headers.append(("Date", format_datetime(request.date)))
        headers.append(("X-Dealflow-Deal", request.context.deal.deal_id))
        headers.append(("X-Dealflow-Step", request.template))
        reply_to = self.sender.reply_to
        links = self._buyer_links(request)
        if links is not None:
            extra = links.headers(request, self._unsubscribe_url(request))
            reply_to = extra.pop("Reply-To")
            headers.extend(extra.items())
        return compose(
            sender=Mailbox(self.sender.name, self.sender.address),
            to=[Mailbox(a.display_name, a.addr_spec) for a in recipients],
            reply_to=Mailbox("", reply_to) if reply_to else None,
            subject=subject,
            text=rendered.text,
            html=rendered.html,
            headers=headers,
            message_id=request.message_id,
        )

    async def _unsuppressed(self, request: EmailRequest) -> EmailRequest:
        """The request without suppressed recipients; none left is a non-retryable failure.

        Only buyer email is checked: opt-outs and bounces are about buyers, and a rep's
        task must not vanish because that address once bounced (it fails loudly instead).
        """
        if self.suppressions is None or request.buyer_facing is False:
            return request
        allowed, found = [], []
        for party in request.to:
            entry = await self.suppressions.find(party.email)
            if entry is None:
                allowed.append(party)
            else:
                found.append(entry)
        if not found:
            return request
        if allowed:
            return request.model_copy(update={"to": allowed})
        opted_out = [e for e in found if e.reason == "opted_out"]
        kind = FailureType.OPTED_OUT if opted_out else FailureType.SUPPRESSED
        detail = "; ".join(f"{e.address} {e.reason.replace('_', ' ')} ({e.deal_id})" for e in found)
        raise ApplicationError(f"suppressed: {detail}", type=kind, non_retryable=True)

    async def _suppress_bounced(self, request: EmailRequest, detail: str) -> None:
        if self.suppressions is None or request.buyer_facing is False:
            return
        for party in request.to:
            if party.email.lower() in detail.lower():
                entry = Suppression(
                    address=party.email,
                    reason="bounced",
                    detail=detail,
                    deal_id=request.context.deal.deal_id,
                    at=datetime.now(UTC),
                )
                await self.suppressions.add(entry)

    @activity.defn(name=SEND_EMAIL)
    async def send_email(self, request: EmailRequest) -> EmailReceipt:
        recipients = [_address(party) for party in request.to]
        rendered = self._render(request)
        # The suppression list is checked last, right before SMTP: an opt-out
        # recorded a second ago by another deal still stops this email.
        allowed = await self._unsuppressed(request)
        if allowed is not request:  # some recipients are suppressed: leave them out
            request, recipients = allowed, [_address(party) for party in allowed.to]
        message = self._message(request, recipients, rendered)
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
        try:
            async with self.pool.connection() as smtp:
                refused, _ = await smtp.sendmail(
                    message.sender,
                    message.recipients,
                    message.data,
                    mail_options=message.mail_options,
                )
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
        accepted = [address for address in message.recipients if address not in refused]
        return EmailReceipt(
            message_id=request.message_id, subject=message.subject, accepted=accepted
        )
