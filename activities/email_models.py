"""What the send-email activity takes and returns.

The workflow decides everything that must be stable across retries (the
Message-ID, the Date, the thread); the activity adds the sender's identity
from settings, renders the template and talks SMTP.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, Field


class Party(BaseModel):
    name: str
    email: str
    time_zone: str = "UTC"
    role: str = ""


class PricedLine(BaseModel):
    name: str
    quantity: Decimal
    unit_price: Decimal
    line_total: Decimal


class DealFacts(BaseModel):
    """The deal as templates see it (``deal.*``)."""

    deal_id: str
    company: str
    kind: str
    stage: str
    currency: str
    owner: str
    lines: list[PricedLine] = Field(default_factory=list)
    list_total: Decimal = Decimal(0)
    floor_total: Decimal = Decimal(0)
    price: Decimal = Decimal(0)
    discount_percent: Decimal = Decimal(0)
    order_value: Decimal | None = None
    purchase_order: str = ""
    delivery_date: date | None = None
    delivered_at: datetime | None = None


class StepFacts(BaseModel):
    """What only this step knows (``step.*``); unused fields stay None."""

    touch: int | None = None
    reason: str = ""
    # What the buyer wrote, when a reply from the mailbox triggered this step.
    quote: str = ""
    previous_delivery_date: date | None = None
    next_step_at: datetime | None = None
    outcome: str = ""
    interview_due: datetime | None = None


class EmailContext(BaseModel):
    deal: DealFacts
    recipient: Party
    buyer: Party
    step: StepFacts = Field(default_factory=StepFacts)


class EmailThread(BaseModel):
    """The conversation a follow-up belongs to: same subject, In-Reply-To the last message."""

    subject: str
    message_ids: list[str]


class EmailRequest(BaseModel):
    message_id: str
    template: str
    to: list[Party]
    date: datetime
    context: EmailContext
    thread: EmailThread | None = None
    # To the buyer: carries the deal's Reply-To token and the List-Unsubscribe links.
    # False (a rep task, the hand-over): our own people, never on the suppression list.
    # None: sent by a deal older than this field; treated as the buyer's, to stay safe.
    buyer_facing: bool | None = None
    # Ops asked to send this Message-ID again (resend): a send held as maybe sent goes.
    resend: bool = False


class EmailReceipt(BaseModel):
    message_id: str
    subject: str
    accepted: list[str]


class SendTrouble(BaseModel):
    """A send attempt failed in a way a retry may fix (relay down, 4xx, ledger away).

    The activity tells its deal, which shows it until the email goes out or fails for good.
    """

    message_id: str
    attempt: int
    problem: str
    at: datetime
