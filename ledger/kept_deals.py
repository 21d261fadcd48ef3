"""A deal as the ledger keeps it: what ``status`` shows once Temporal has forgotten the deal.

Temporal deletes a closed deal when the namespace's retention runs out; the ledger's
deal records stay, so ``status`` still answers for it from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel
from sqlalchemy import Connection, select

from ledger.database import LedgerDatabase
from ledger.tables import DEAL_EMAILS, DEALS, INTERVIEW_REASONS, INTERVIEWS, STAGE_EVENTS


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time in the ledger is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Moment = Annotated[datetime, AfterValidator(_utc)]


class KeptEvent(BaseModel):
    at: Moment
    signal: str
    from_stage: str | None
    to_stage: str | None
    accepted: bool
    refusal: str | None
    source: str
    note: str


class KeptEmail(BaseModel):
    at: Moment
    step: str
    template: str
    recipients: int
    outcome: str


class KeptInterview(BaseModel):
    recorded_at: Moment
    outcome: str
    participants: str
    rep_rating: int | None
    cooperation_rating: int | None
    why_decided: str
    decision_process: str
    free_text: str
    reasons: list[str]


class KeptDeal(BaseModel):
    deal_id: str
    company: str
    owner: str
    kind: str
    currency: str
    value: Decimal
    stage: str
    created_at: Moment
    closed_at: Moment | None
    outcome: str | None
    lost_reason: str | None
    outcome_note: str
    next_touch_at: Moment | None
    events: list[KeptEvent]
    emails: list[KeptEmail]
    interview: KeptInterview | None


async def kept_deal(database: LedgerDatabase, deal_id: str) -> KeptDeal | None:
    return await database.run(lambda c: _read(c, deal_id))


def _read(connection: Connection, deal_id: str) -> KeptDeal | None:
    deal = connection.execute(select(DEALS).where(DEALS.c.deal_id == deal_id)).mappings().first()
    if deal is None:
        return None
    events = connection.execute(
        select(STAGE_EVENTS)
        .where(STAGE_EVENTS.c.deal_id == deal_id)
        .order_by(STAGE_EVENTS.c.at, STAGE_EVENTS.c.event_key)
    ).mappings()
    emails = connection.execute(
        select(DEAL_EMAILS).where(DEAL_EMAILS.c.deal_id == deal_id).order_by(DEAL_EMAILS.c.at)
    ).mappings()
    interview = (
        connection.execute(select(INTERVIEWS).where(INTERVIEWS.c.deal_id == deal_id))
        .mappings()
        .first()
    )
    reasons = connection.execute(
        select(INTERVIEW_REASONS.c.code)
        .where(INTERVIEW_REASONS.c.deal_id == deal_id)
        .order_by(INTERVIEW_REASONS.c.code)
    ).scalars()
    return KeptDeal.model_validate(
        {
            **deal,
            "events": [dict(e) for e in events],
            "emails": [dict(e) for e in emails],
            "interview": {**interview, "reasons": list(reasons)} if interview else None,
        }
    )
