"""A generated history of deals with known outcomes, for the report tests and the bench.

Each deal walks its kind's path a stage at a time, from a seeded random generator and
fixed instants: it goes on, ends (Lost, No Response, Disqualified, Cancelled) or stays
open. The generator writes the ledger rows the deal's recording would have written and
keeps, beside them, what it knows by construction (the stages reached, every finished
stay, which follow-up the buyer answered), which the tests hold the reports against.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert

from ledger import deal_facts
from ledger.tables import DEAL_EMAILS, DEALS, INTERVIEW_REASONS, INTERVIEWS, STAGE_EVENTS
from workflows.stages import Stage

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
OWNERS = ("anna@seller.example", "ben@seller.example", "cleo@seller.example")
CURRENCIES = ("EUR", "USD")
LOST_REASONS = ("price", "timing", "competitor", "no_budget")
INTERVIEW_CODES = ("price", "quality", "support", "timing", "relationship")

_TAIL = (
    Stage.PRICE_AGREED,
    Stage.OFFER_RECEIVED,
    Stage.ORDER_PLACED,
    Stage.ORDER_CONFIRMED,
    Stage.DELIVERED,
    Stage.CHECKED_IN,
    Stage.WIN_LOSS_INVITED,
)
PATHS: dict[str, tuple[Stage, ...]] = {
    "rfi": (Stage.INQUIRY_RECEIVED, Stage.REQUIREMENTS_CLARIFIED, Stage.PROPOSAL_RECEIVED, *_TAIL),
    "rfp": (Stage.REQUIREMENTS_CLARIFIED, Stage.PROPOSAL_RECEIVED, *_TAIL),
    "rfq": (Stage.QUOTE_REQUESTED, *_TAIL),
}
# The stage's follow-up template, where the deal chases the buyer.
FOLLOW_UP = {
    Stage.INQUIRY_RECEIVED: "inquiry_follow_up",
    Stage.PROPOSAL_RECEIVED: "proposal_follow_up",
    Stage.QUOTE_REQUESTED: "quote_follow_up",
    Stage.OFFER_RECEIVED: "offer_follow_up",
    Stage.WIN_LOSS_INVITED: "win_loss_reminder",
}
# The buyer's signal that moves a deal on from a stage (the system's for the others).
MOVED_BY = {
    Stage.INQUIRY_RECEIVED: "requirements_clarified",
    Stage.PROPOSAL_RECEIVED: "price_agreed",
    Stage.QUOTE_REQUESTED: "price_agreed",
    Stage.OFFER_RECEIVED: "order_placed",
    Stage.WIN_LOSS_INVITED: "interview_recorded",
}
# Endings that leave the path early, each with the signal that makes it.
ENDINGS = {
    Stage.LOST: "lost",
    Stage.NO_RESPONSE: "no_response",
    Stage.DISQUALIFIED: "disqualified",
    Stage.CANCELLED: "cancelled",
}


@dataclass
class Touch:
    stage: Stage
    number: int
    answered: bool


@dataclass
class GeneratedDeal:
    row: dict[str, Any]
    reached: list[Stage]
    stays: list[tuple[Stage, timedelta]]
    touches: list[Touch]
    left_to: dict[Stage, Stage]  # stage -> where the deal went from it
    interview: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def deal_id(self) -> str:
        return str(self.row["deal_id"])


@dataclass
class GeneratedHistory:
    deals: list[GeneratedDeal]
    events: list[dict[str, Any]]
    emails: list[dict[str, Any]]
    interviews: list[dict[str, Any]]
    reasons: list[dict[str, Any]]


class _Deal:
    """One deal being generated: its clock and the rows it writes."""

    def __init__(self, deal_id: str, at: datetime, history: GeneratedHistory) -> None:
        self.deal_id = deal_id
        self.at = at
        self.history = history
        self.events = 0
        self.emails = 0

    def later(self, minutes: int) -> datetime:
        self.at += timedelta(minutes=minutes)
        return self.at

    def event(
        self,
        signal: str,
        from_stage: Stage | None,
        to_stage: Stage | None,
        *,
        accepted: bool = True,
    ) -> None:
        self.history.events.append(
            {
                "event_key": f"{self.deal_id}/e{self.events}",
                "deal_id": self.deal_id,
                "at": self.at,
                "signal": signal,
                "from_stage": from_stage.value if from_stage else None,
                "to_stage": to_stage.value if to_stage else None,
                "accepted": accepted,
                "refusal": None if accepted else f"{signal} is not accepted here",
                "source": "cli",
                "note": "",
                "source_event_id": None,
            }
        )
        self.events += 1

    def email(self, template: str, outcome: str = "sent") -> None:
        self.history.emails.append(
            {
                "message_id": f"<{self.deal_id}.{self.emails}@seller.example>",
                "deal_id": self.deal_id,
                "step": f"{self.emails:03d}-{template}",
                "template": template,
                "recipients": 1,
                "at": self.at,
                "outcome": outcome,
            }
        )
        self.emails += 1


def generate(count: int, seed: int = 11) -> GeneratedHistory:
    """``count`` deals, created an hour or so apart from ``START``; the same for a seed."""
    rng = random.Random(seed)
    history = GeneratedHistory(deals=[], events=[], emails=[], interviews=[], reasons=[])
    created = START
    for number in range(count):
        created += timedelta(minutes=rng.randrange(30, 180))
        history.deals.append(_one(rng, f"D-{number:06d}", created, history))
    return history


def _one(rng: random.Random, deal_id: str, created: datetime, history: GeneratedHistory) -> Any:
    kind = rng.choice(tuple(PATHS))
    path = PATHS[kind]
    deal = _Deal(deal_id, created, history)
    reached: list[Stage] = []
    stays: list[tuple[Stage, timedelta]] = []
    touches: list[Touch] = []
    left_to: dict[Stage, Stage] = {}
    stage: Stage | None = None
    outcome: Stage | None = None
    lost_reason: str | None = None
    for place, here in enumerate(path):
        deal.event("started" if stage is None else _signal(stage), stage, here)
        if stage is not None:
            left_to[stage] = here
        reached.append(here)
        entered, stage = deal.at, here
        # What happens in this stage: go on, end, or stay (the deal is still open).
        fate = rng.random()
        ending: Stage | None = None
        if fate < 0.14:
            ending = rng.choice(tuple(ENDINGS))
        elif fate < 0.22:
            ending = None  # stays open here
        goes_on = fate >= 0.22
        if place == len(path) - 1 and goes_on:
            ending = Stage.WON
        _stay(rng, deal, here, ending, goes_on, touches)
        if ending is None and not goes_on:
            break  # still open in this stage
        if ending is not None and ending is not Stage.WON:
            deal.later(rng.randrange(60, 60 * 24 * 4))
            deal.event(ENDINGS[ending], here, ending)
            left_to[here] = ending
            stays.append((here, deal.at - entered))
            outcome = ending
            break
        deal.later(rng.randrange(60, 60 * 24 * 6))
        if ending is Stage.WON:
            deal.event("interview_recorded", here, Stage.WON)
            left_to[here] = Stage.WON
            stays.append((here, deal.at - entered))
            reached.append(Stage.WON)
            outcome = Stage.WON
            break
        stays.append((here, deal.at - entered))
    if outcome is Stage.LOST:
        lost_reason = rng.choice(LOST_REASONS) if rng.random() < 0.8 else None
    value = Decimal(rng.randrange(50_000, 5_000_000)) / 100
    row = {
        "deal_id": deal_id,
        "company": f"Buyer {deal_id} & Sons",
        "owner": rng.choice(OWNERS),
        "kind": kind,
        "currency": rng.choice(CURRENCIES),
        "value": value,
        "stage": (outcome or stage or path[0]).value,
        "created_at": created,
        "closed_at": deal.at if outcome else None,
        "outcome": outcome.value if outcome else None,
        "lost_reason": lost_reason,
        "outcome_note": "",
        "next_touch_at": None if outcome else deal.at + timedelta(days=3),
        "updated_at": deal.at,
    }
    generated = GeneratedDeal(row, reached, stays, touches, left_to)
    if outcome in (Stage.WON, Stage.LOST) and rng.random() < 0.7:
        _interview(rng, deal, generated, outcome)
    return generated


def _signal(stage: Stage) -> str:
    return MOVED_BY.get(stage, f"after_{stage.value.lower().replace(' ', '_')}")


def _stay(
    rng: random.Random,
    deal: _Deal,
    stage: Stage,
    ending: Stage | None,
    goes_on: bool,
    touches: list[Touch],
) -> None:
    """The deal's emails and minor events in ``stage``."""
    deal.later(1)
    deal.email(f"opening_{stage.value.lower().replace(' ', '_')}")
    if rng.random() < 0.1:
        deal.later(5)
        deal.event("discount_requested", stage, None, accepted=False)  # refused: no reply
    template = FOLLOW_UP.get(stage)
    if template is None:
        return
    sent = rng.randrange(0, 4)
    for number in range(1, sent + 1):
        deal.later(60 * 24 * 3)
        if rng.random() < 0.1:
            deal.email(template, outcome="bounced")  # not a touch: it never arrived
            deal.later(10)
        deal.email(template)
        touches.append(Touch(stage, number, answered=False))
        if rng.random() < 0.15:
            deal.later(30)
            deal.event("out_of_office", stage, stage)  # an auto-reply is no answer
    # The buyer answers the last touch when the deal goes on or says no; a silent ending
    # (no response, or still open) leaves it unanswered.
    answered = goes_on or ending is Stage.LOST
    if answered and rng.random() < 0.5:
        deal.later(rng.randrange(60, 60 * 24))
        deal.event("buyer_replied", stage, stage)
    if answered and sent:
        touches[-1].answered = True


def _interview(rng: random.Random, deal: _Deal, generated: GeneratedDeal, outcome: Stage) -> None:
    recorded = deal.at + timedelta(minutes=rng.randrange(0, 60 * 24 * 5))
    said = rng.choice(("", "Their price was clearer.", "Your team <b>listened</b> [x]."))
    interview = {
        "deal_id": deal.deal_id,
        "recorded_at": recorded,
        "outcome": outcome.value,
        "participants": "Dana Buyer",
        "rep_rating": rng.choice((None, 1, 2, 3, 4, 5)),
        "cooperation_rating": rng.choice((None, 2, 3, 4, 5)),
        "why_decided": said,
        "decision_process": "committee",
        "free_text": rng.choice(("", "We will order again.")),
    }
    reasons = rng.sample(INTERVIEW_CODES, rng.randrange(0, 3))
    generated.interview = interview
    generated.reasons = reasons
    deal.history.interviews.append(interview)
    deal.history.reasons.extend({"deal_id": deal.deal_id, "code": code} for code in reasons)


def store(connection: Connection, history: GeneratedHistory) -> None:
    """The history's rows, straight into the ledger's deal tables, and the facts the
    writer would have kept of them (``ledger.deal_facts``)."""
    connection.execute(insert(DEALS), [deal.row for deal in history.deals])
    connection.execute(insert(STAGE_EVENTS), history.events)
    connection.execute(insert(DEAL_EMAILS), history.emails)
    if history.interviews:
        connection.execute(insert(INTERVIEWS), history.interviews)
    if history.reasons:
        connection.execute(insert(INTERVIEW_REASONS), history.reasons)
    deal_facts.refresh_all(connection)
