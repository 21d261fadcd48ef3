"""Typed data that crosses the deal workflow's boundary: its input, the buyer
signals (one model per update) and the status it reports.

Fields are added with defaults, never as new required fields, so that running
deals keep decoding.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    field_validator,
    model_validator,
)

from workflows.business_calendar import BusinessCalendar, DelayField
from workflows.stages import InquiryKind, Stage


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("needs a time zone offset, e.g. 2026-12-01T10:00+01:00")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Contact(Model):
    """A person on the buyer's side. ``time_zone`` is an IANA name (checked by the CLI)."""

    name: str = Field(min_length=1)
    email: EmailStr
    time_zone: str = "UTC"
    role: str = "buyer"
    # ISO country code whose public holidays are no sending days (default: settings).
    country: str | None = None


class LineItem(Model):
    """One catalogue line. ``floor_price`` defaults to the list price less the reserved margin."""

    name: str = Field(min_length=1)
    quantity: Decimal = Field(default=Decimal(1), gt=0)
    list_price: Money
    floor_price: Money | None = None

    @field_validator("floor_price")
    @classmethod
    def _floor_not_above_list(cls, floor: Decimal | None, info) -> Decimal | None:  # type: ignore[no-untyped-def]
        list_price = info.data.get("list_price")
        if floor is not None and list_price is not None and floor > list_price:
            raise ValueError(f"floor price {floor} is above the list price {list_price}")
        return floor


Delays = list[DelayField]


class ShiftPolicy(StrEnum):
    """What a send pushed into the next window slot does to the steps after it.

    shift: later steps count from when the email really went out (as Outreach does).
    anchor: later steps keep counting from when it was due (as HubSpot does).
    """

    SHIFT = "shift"
    ANCHOR = "anchor"


class Cadence(Model):
    """Every timing of a deal. Defaults come from settings; a deal may override any field.

    Follow-up lists give the silence to wait before each touch, counted from
    the previous outbound email of the stage.
    """

    inquiry: Delays = Field(default_factory=lambda: [timedelta(days=2), timedelta(days=4)])
    proposal: Delays = Field(
        default_factory=lambda: [timedelta(days=2), timedelta(days=4), timedelta(days=7)]
    )
    quote: Delays = Field(default_factory=lambda: [timedelta(days=2), timedelta(days=4)])
    offer: Delays = Field(
        default_factory=lambda: [timedelta(days=2), timedelta(days=4), timedelta(days=7)]
    )
    win_loss: Delays = Field(default_factory=lambda: [timedelta(days=5)])
    no_response_after: timedelta = timedelta(days=7)
    delivery_overdue_after: timedelta = timedelta(days=1)
    check_in_after: DelayField = timedelta(days=1)
    win_loss_after: DelayField = timedelta(days=21)
    out_of_office_pause: timedelta = timedelta(days=7)
    win_loss_min_order_value: Money = Decimal(5000)
    reserved_margin_percent: Decimal = Field(default=Decimal(10), ge=0, lt=100)

    def follow_ups(self, cadence_name: str) -> Delays:
        """The follow-up delays of one stage's cadence (named in ``outbound.FOLLOW_UPS``)."""
        delays: Delays = getattr(self, cadence_name)
        return delays


# The deal revision Dealflow's intake starts deals under (``DealInput.revision``).
REVISION = 1


class DealInput(Model):
    """Everything a deal needs to run; resolved by the starter from settings and the deal file."""

    deal_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    company: str = Field(min_length=1)
    contacts: list[Contact] = Field(min_length=1)
    owner: EmailStr
    kind: InquiryKind
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    items: list[LineItem] = Field(default_factory=list)
    cadence: Cadence = Field(default_factory=Cadence)
    fulfilment_address: EmailStr
    win_loss_interviewer: EmailStr | None = None
    message_domain: str = "example.com"
    # The buyer's business calendar; None sends at any time.
    calendar: BusinessCalendar | None = None
    shift_policy: ShiftPolicy = ShiftPolicy.SHIFT
    # Where sends run (a rate-limited queue per sending mailbox); None: the deal's own queue.
    send_task_queue: str | None = None
    # Template -> the buying-committee roles it goes to (from templates/<step>/roles.txt).
    routing: dict[str, list[str]] = Field(default_factory=dict)
    # How long a send may keep failing transiently (SMTP down) before it is recorded as failed.
    send_retry_for: timedelta = timedelta(hours=24)
    # How long a closed deal keeps emails that failed for good, for ops to resend, before
    # it ends (they are then dropped, and the deal's problems say so).
    resend_window: timedelta = timedelta(days=14)
    # The revision the deal started under, set by intake (never by a deal file). A deal of
    # revision 1 or later takes every change made behind a code patch before revision 1
    # without asking ``workflow.patched``: each patch asked costs every deal a marker and
    # a search-attribute write, the server's dearest writes on a small machine. Deals
    # started before it decode as 0 and replay as they ran.
    revision: int = 0

    @model_validator(mode="after")
    def _priced_inquiry_has_items(self) -> DealInput:
        if self.kind is not InquiryKind.RFI and not self.items:
            raise ValueError(f"an {self.kind.value.upper()} deal needs at least one line item")
        return self

    @property
    def buyer(self) -> Contact:
        return self.contacts[0]


# --- Buyer signals: one payload per update (see stages.BuyerSignal) ---


class SignalPayload(Model):
    """Who recorded the signal and why: kept in the stage history for audit."""

    source: str = "ops"
    note: str = ""
    # The id the source gave this event (an inbound Message-ID, a webhook event id):
    # the deal applies each id once, so a re-read mailbox or a replayed webhook changes nothing.
    event_id: str = Field(default="", max_length=998)


class RequirementsClarified(SignalPayload):
    items: list[LineItem] = Field(default_factory=list)


class DeclinedToTalk(SignalPayload):
    pass


class DiscountRequested(SignalPayload):
    percent: Decimal = Field(gt=0, lt=100)


class PriceAgreed(SignalPayload):
    pass


class NextStepAgreed(SignalPayload):
    at: AwareDatetime


class OrderPlaced(SignalPayload):
    delivery_date: date
    order_value: Money | None = None
    purchase_order: str = ""


class DeliveryDateChanged(SignalPayload):
    delivery_date: date
    reason: str = Field(min_length=1)


class Delivered(SignalPayload):
    delivered_at: AwareDatetime | None = None


# A rating from the buyer: 1 (poor) to 5 (excellent). Interviews recorded before ratings
# were numbers hold the buyer's words instead; they still decode.
Rating = Annotated[int, Field(ge=1, le=5)] | Annotated[str, Field(min_length=1)]


def score(rating: int | str) -> int | None:
    """The rating as a number 1-5, None for the words of an older interview."""
    return rating if isinstance(rating, int) else None


class InterviewRecorded(SignalPayload):
    """The four question groups of the win-loss interview (docs/sales-process.md), with
    the decision reasons as codes and the buyer's own words in ``note``."""

    why_decided: str = Field(min_length=1)
    decision_process: str = Field(min_length=1)
    rep_rating: Rating
    cooperation_rating: Rating
    reasons: list[str] = Field(default_factory=list, max_length=20)
    participants: str = ""


class BuyerReplied(SignalPayload):
    """A reply from any contact of the deal: the automatic follow-ups stop, the rep takes over."""

    contact: str = ""


class OutOfOffice(SignalPayload):
    """An auto-reply: follow-ups wait until ``until`` (or the cadence's default pause)."""

    until: AwareDatetime | None = None


class Paused(SignalPayload):
    """Ops pause: nothing is sent until resumed, or until ``until`` when given."""

    until: AwareDatetime | None = None


class OptedOut(SignalPayload):
    """The buyer asked for no more email: the address is suppressed for every deal."""

    address: EmailStr | None = None


class InboundKind(StrEnum):
    """What a message in the reply mailbox means for its deal (activities/inbound_mail.py)."""

    REPLY = "reply"
    OUT_OF_OFFICE = "out_of_office"
    BOUNCE = "bounce"
    UNSUBSCRIBE = "unsubscribe"


class InboundMessage(SignalPayload):
    """A message from the mailbox, matched to this deal; ``event_id`` is its Message-ID."""

    # Bounded well above what the mailbox reader passes on: a signal over a bound is
    # dropped by the SDK before it reaches the deal, so it cannot bloat the deal's state.
    kind: InboundKind
    sender: str = Field(default="", max_length=320)
    subject: str = Field(default="", max_length=1000)
    snippet: str = Field(default="", max_length=2000)
    # Out-of-office: the day the buyer is back, when the auto-reply says.
    returns_on: date | None = None
    # Bounce: who failed, the status (5.1.1), and whether retrying can help.
    failed_recipient: str = Field(default="", max_length=320)
    bounce_status: str = Field(default="", max_length=20)
    permanent: bool = True
    # Unsubscribe by an older token of an email already sent: the addresses it named.
    addresses: list[Annotated[str, Field(max_length=320)]] = Field(
        default_factory=list, max_length=50
    )
    # Unsubscribe by a ledger token (``t2.``), which names no address: the email whose
    # link it was, and its recipient's place in that email's To list.
    unsubscribed_from: str = Field(default="", max_length=998)
    recipient_position: int | None = Field(default=None, ge=0, le=1000)


class Closed(SignalPayload):
    """Lost, disqualified or cancelled: always with the reason."""

    reason: str = Field(min_length=1)
    # A lost deal's reason code (``DEALFLOW_LOST_REASONS``); ``reason`` says it in words.
    code: str = ""


# --- What the deal reports ---


class StageChange(Model):
    at: datetime
    stage: Stage
    signal: str = ""
    source: str = ""
    note: str = ""
    # The source's id of the event (an inbound Message-ID, a webhook event id), so the
    # ledger's audit trail can be matched to the mailbox or the ERP; empty for ops and timers.
    event_id: str = ""


# "sending": in flight (see DealStatus.sending_problems for why one is late).
MessageOutcome = Literal["sending", "sent", "bounced", "failed", "skipped"]


class MessageRecord(Model):
    step: str
    template: str
    to: list[str]
    at: datetime
    outcome: MessageOutcome
    message_id: str = ""
    subject: str = ""
    error: str = ""


class NextTouch(Model):
    what: str
    at: datetime


class PlannedSend(Model):
    """One email the deal will send on its own if no buyer signal comes first."""

    at: datetime
    step: str
    template: str
    to: list[str]


class DealStatus(Model):
    deal_id: str
    company: str
    kind: InquiryKind
    owner: str
    currency: str
    stage: Stage
    value: Decimal
    list_total: Decimal
    floor_total: Decimal
    discount_percent: Decimal
    delivery_date: date | None = None
    delivered_at: datetime | None = None
    outcome_reason: str = ""
    # A lost deal's reason code (``lost --reason``).
    lost_reason: str = ""
    next_touch: NextTouch | None = None
    history: list[StageChange] = Field(default_factory=list)
    messages: list[MessageRecord] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    # Emails in flight whose last attempt failed and that Temporal retries (relay down).
    sending_problems: list[str] = Field(default_factory=list)
    interview: InterviewRecorded | None = None
    buyer_time_zone: str = "UTC"
    # The contacts' addresses, the main one first.
    contacts: list[str] = Field(default_factory=list)
    paused: bool = False
    held_until: datetime | None = None
    replied: bool = False
