"""The buyer's path: stage names and which buyer signal moves a deal where.

This module is the one definition of the stage list. The workflow, the CLI, the
templates (through ``deal.stage``) and the pipeline report all read it.
Stage names say what the buyer has reached, in the past tense (docs/sales-process.md).
"""

from __future__ import annotations

from enum import StrEnum


class InquiryKind(StrEnum):
    """What the buyer's first inquiry was: RFI, RFP or RFQ (docs/sales-process.md)."""

    RFI = "rfi"
    RFP = "rfp"
    RFQ = "rfq"


class Stage(StrEnum):
    INQUIRY_RECEIVED = "Inquiry Received"
    REQUIREMENTS_CLARIFIED = "Requirements Clarified"
    PROPOSAL_RECEIVED = "Proposal Received"
    QUOTE_REQUESTED = "Quote Requested"
    PRICE_AGREED = "Price Agreed"
    OFFER_RECEIVED = "Offer Received"
    ORDER_PLACED = "Order Placed"
    ORDER_CONFIRMED = "Order Confirmed"
    DELIVERED = "Delivered"
    CHECKED_IN = "Checked In"
    WIN_LOSS_INVITED = "Win-Loss Invited"
    WON = "Won"
    LOST = "Lost"
    DISQUALIFIED = "Disqualified"
    NO_RESPONSE = "No Response"
    CANCELLED = "Cancelled"
    OPTED_OUT = "Opted Out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STAGES

    @property
    def is_pre_order(self) -> bool:
        return self in PRE_ORDER_STAGES


PRE_ORDER_STAGES = frozenset(
    {
        Stage.INQUIRY_RECEIVED,
        Stage.REQUIREMENTS_CLARIFIED,
        Stage.PROPOSAL_RECEIVED,
        Stage.QUOTE_REQUESTED,
        Stage.PRICE_AGREED,
        Stage.OFFER_RECEIVED,
    }
)
TERMINAL_STAGES = frozenset(
    {
        Stage.WON,
        Stage.LOST,
        Stage.DISQUALIFIED,
        Stage.NO_RESPONSE,
        Stage.CANCELLED,
        Stage.OPTED_OUT,
    }
)

# Stages in which the deal waits on the buyer with a follow-up cadence.
FOLLOW_UP_STAGES = frozenset(
    {
        Stage.INQUIRY_RECEIVED,
        Stage.PROPOSAL_RECEIVED,
        Stage.QUOTE_REQUESTED,
        Stage.OFFER_RECEIVED,
        Stage.WIN_LOSS_INVITED,
    }
)


class BuyerSignal(StrEnum):
    """Everything that can move a deal; each is one workflow update of the same name."""

    REQUIREMENTS_CLARIFIED = "requirements_clarified"
    DECLINED_TO_TALK = "declined_to_talk"
    DISCOUNT_REQUESTED = "discount_requested"
    PRICE_AGREED = "price_agreed"
    NEXT_STEP_AGREED = "next_step_agreed"
    ORDER_PLACED = "order_placed"
    DELIVERY_DATE_CHANGED = "delivery_date_changed"
    DELIVERED = "delivered"
    INTERVIEW_RECORDED = "interview_recorded"
    LOST = "lost"
    DISQUALIFIED = "disqualified"
    CANCELLED = "cancelled"
    BUYER_REPLIED = "buyer_replied"
    OUT_OF_OFFICE = "out_of_office"
    PAUSED = "paused"
    RESUMED = "resumed"
    TOUCH_SKIPPED = "touch_skipped"
    OPTED_OUT = "opted_out"


OPEN_STAGES = frozenset(Stage) - TERMINAL_STAGES

# Where each signal is accepted. Anything else is refused by the update's
# validator with the reason, before it reaches the deal's history.
ACCEPTED_IN: dict[BuyerSignal, frozenset[Stage]] = {
    BuyerSignal.REQUIREMENTS_CLARIFIED: frozenset({Stage.INQUIRY_RECEIVED}),
    BuyerSignal.DECLINED_TO_TALK: frozenset({Stage.INQUIRY_RECEIVED}),
    BuyerSignal.DISCOUNT_REQUESTED: frozenset({Stage.PROPOSAL_RECEIVED, Stage.QUOTE_REQUESTED}),
    BuyerSignal.PRICE_AGREED: frozenset({Stage.PROPOSAL_RECEIVED, Stage.QUOTE_REQUESTED}),
    BuyerSignal.NEXT_STEP_AGREED: FOLLOW_UP_STAGES,
    BuyerSignal.ORDER_PLACED: frozenset(
        {Stage.PROPOSAL_RECEIVED, Stage.QUOTE_REQUESTED, Stage.OFFER_RECEIVED}
    ),
    BuyerSignal.DELIVERY_DATE_CHANGED: frozenset(
        {Stage.ORDER_PLACED, Stage.ORDER_CONFIRMED, Stage.DELIVERED}
    ),
    BuyerSignal.DELIVERED: frozenset({Stage.ORDER_PLACED, Stage.ORDER_CONFIRMED}),
    # The interview can also be recorded on a lost deal: that is the loss analysis.
    BuyerSignal.INTERVIEW_RECORDED: frozenset({Stage.WIN_LOSS_INVITED, Stage.LOST}),
    BuyerSignal.LOST: PRE_ORDER_STAGES,
    BuyerSignal.DISQUALIFIED: PRE_ORDER_STAGES,
    BuyerSignal.CANCELLED: OPEN_STAGES,
    BuyerSignal.BUYER_REPLIED: OPEN_STAGES,
    BuyerSignal.OUT_OF_OFFICE: OPEN_STAGES,
    BuyerSignal.PAUSED: OPEN_STAGES,
    BuyerSignal.RESUMED: OPEN_STAGES,
    BuyerSignal.TOUCH_SKIPPED: OPEN_STAGES,
    # An opt-out is honoured whatever the stage, even on a closed deal still inviting.
    BuyerSignal.OPTED_OUT: OPEN_STAGES | {Stage.LOST},
}


def refusal(signal: BuyerSignal, stage: Stage) -> str | None:
    """Why ``signal`` makes no sense in ``stage``, or None when it is accepted."""
    accepted = ACCEPTED_IN[signal]
    if stage in accepted:
        return None
    where = ", ".join(sorted(s.value for s in accepted)) or "no stage"
    return f"{signal.value} is not accepted while the deal is '{stage.value}' (only in: {where})"


def opening_stage(kind: InquiryKind) -> Stage:
    """Where a deal starts: an RFI needs its requirements clarified, an RFP has them (its
    proposal goes out at once), an RFQ asks for a price."""
    if kind is InquiryKind.RFI:
        return Stage.INQUIRY_RECEIVED
    if kind is InquiryKind.RFP:
        return Stage.REQUIREMENTS_CLARIFIED
    return Stage.QUOTE_REQUESTED
