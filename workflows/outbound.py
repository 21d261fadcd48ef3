"""What a deal sends: the queued emails of a step and who they go to.

Buyer emails belong to a thread (one conversation per step: the proposal and
its follow-ups, the order and its notices...). Rep tasks and the fulfilment
hand-over are internal emails and never thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.email_models import StepFacts

from workflows.stages import Stage


class Audience(StrEnum):
    BUYER = "buyer"
    REP = "rep"
    FULFILMENT = "fulfilment"
    INTERVIEWER = "interviewer"


class Thread(StrEnum):
    INQUIRY = "inquiry"
    PROPOSAL = "proposal"
    QUOTE = "quote"
    OFFER = "offer"
    ORDER = "order"
    CHECK_IN = "check_in"
    WIN_LOSS = "win_loss"


@dataclass
class Outbound:
    """One email waiting in the deal's outbox."""

    template: str
    audience: Audience
    step: StepFacts = field(default_factory=StepFacts)
    thread: Thread | None = None
    # The stage the deal reaches once this email has gone out (e.g. Order Confirmed).
    then_stage: Stage | None = None
    # Sent buyer emails restart the stage's follow-up clock.
    restarts_cadence: bool = True
    queued_in: Stage | None = None
    # Set once a send of it failed for good: ops' resend reuses this Message-ID, so the
    # send ledger (and any receiver) can tell it is the same email.
    message_id: str | None = None


@dataclass(frozen=True)
class FollowUp:
    """How a waiting stage chases the buyer: which cadence, template and thread."""

    cadence: str
    template: str
    thread: Thread


FOLLOW_UPS: dict[Stage, FollowUp] = {
    Stage.INQUIRY_RECEIVED: FollowUp("inquiry", "inquiry_follow_up", Thread.INQUIRY),
    Stage.PROPOSAL_RECEIVED: FollowUp("proposal", "proposal_follow_up", Thread.PROPOSAL),
    Stage.QUOTE_REQUESTED: FollowUp("quote", "quote_follow_up", Thread.QUOTE),
    Stage.OFFER_RECEIVED: FollowUp("offer", "offer_follow_up", Thread.OFFER),
    Stage.WIN_LOSS_INVITED: FollowUp("win_loss", "win_loss_reminder", Thread.WIN_LOSS),
}


def task(template: str, **facts: object) -> Outbound:
    return Outbound(template, Audience.REP, StepFacts.model_validate(facts), restarts_cadence=False)


def to_buyer(
    template: str, thread: Thread, then_stage: Stage | None = None, **facts: object
) -> Outbound:
    return Outbound(template, Audience.BUYER, StepFacts.model_validate(facts), thread, then_stage)
