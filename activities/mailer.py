"""The send-email activity: render, build a MIME message, hand it to SMTP.

Failure policy: what retrying cannot fix (unknown template, missing variable,
malformed address, a 5xx answer) raises a non-retryable ``ApplicationError``
whose ``type`` the workflow records on the deal; anything else (4xx, refused
connection, time-out) raises so that Temporal retries with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiosmtplib
from email_validator import EmailNotValidError, validate_email
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email_models import EmailReceipt, EmailRequest, Party
from activities.rendering import RenderedEmail, TemplateLibrary, TemplateProblem
from activities.smtp_pool import SmtpPool

SEND_EMAIL = "send_email"


class FailureType:
    """``ApplicationError.type`` values the workflow tells apart."""

    TEMPLATE = "TemplateProblem"
    ADDRESS = "InvalidAddress"
    BOUNCE = "MailboxRejected"
    REJECTED = "SmtpRejected"


NON_RETRYABLE = [
    FailureType.TEMPLATE,
    FailureType.ADDRESS,
    FailureType.BOUNCE,
    FailureType.REJECTED,
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

    def __init__(self, sender: Sender, templates: TemplateLibrary, pool: SmtpPool) -> None:
        self.sender = sender
        self.templates = templates
        self.pool = pool

    def build(self, request: EmailRequest) -> EmailMessage:
        """The exact message for ``request``: the same bytes on every retry."""
        recipients = [_address(party) for party in request.to]
        context: dict[str, Any] = request.context.model_dump()
        context["sender"] = self.sender.as_context()
        try:
            rendered = self.templates.render(request.template, context)
        except TemplateProblem as error:
            raise ApplicationError(
                str(error), type=FailureType.TEMPLATE, non_retryable=True
            ) from None
        return self._message(request, recipients, rendered)

    def _message(
        self, request: EmailRequest, recipients: list[Address], rendered: RenderedEmail
    ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = Address(display_name=self.sender.name, addr_spec=self.sender.address)
        message["To"] = recipients
        if self.sender.reply_to:
            message["Reply-To"] = self.sender.reply_to
        subject = rendered.subject
        if request.thread is not None:
            subject = request.thread.subject
            if not subject.lower().startswith("re:"):
                subject = f"Re: {subject}"
            message["In-Reply-To"] = request.thread.message_ids[-1]
            message["References"] = " ".join(request.thread.message_ids)
        message["Subject"] = subject
        message["Date"] = format_datetime(request.date)
        message["Message-ID"] = request.message_id
        message["X-Dealflow-Deal"] = request.context.deal.deal_id
        message["X-Dealflow-Step"] = request.template
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
        return message

    @activity.defn(name=SEND_EMAIL)
    async def send_email(self, request: EmailRequest) -> EmailReceipt:
        message = self.build(request)
        try:
            async with self.pool.connection() as smtp:
                refused, _ = await smtp.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as error:
            code, detail = _first_code(error)
            if code >= 500:
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
        accepted = [str(a.addr_spec) for a in message["To"].addresses if a.addr_spec not in refused]
        return EmailReceipt(
            message_id=request.message_id, subject=str(message["Subject"]), accepted=accepted
        )
