"""What each deal's records add up to, kept beside them: the stages it reached, every
stay in a stage, and every follow-up with its number and whether the buyer answered it.

A report over a year of deals would otherwise re-read and re-sort every stage event
(a million rows is seconds); with these rows it is a grouped count. They are facts of
the deal's own rows alone, so ``refresh`` recomputes a deal's whole set from its events
and emails whenever the writer stores new ones, and a retried or replayed batch leaves
them as they were. The migration that created the tables filled them for the deals
already recorded.

Definitions (the reports' docstring states them for managers):

- A deal *reached* a stage when one of its accepted events has it as ``to_stage``.
- A *move* is an accepted event that changed the stage (the opening one too); a *stay*
  runs from a move into a stage to the deal's next move. A deal's events are in the
  order they happened: by instant, then by the deal's own numbering (``<deal>/e9``
  before ``<deal>/e10``). A deal stays in a stage once: its path only goes forward.
- A *touch* is a sent follow-up email; its number counts the follow-ups since the deal
  last changed stage. It was answered when the buyer responded (``REPLY_SIGNALS``) after
  it and before the next touch, at the latest with the next stage change. At one instant
  events come before emails, and an answer before a change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from ledger.database import DriverStatement
from ledger.tables import DEAL_EMAILS, DEAL_STAYS, DEALS, FOLLOW_UP_TOUCHES, STAGE_EVENTS
from workflows.outbound import FOLLOW_UPS
from workflows.stages import TERMINAL_STAGES, BuyerSignal, Stage

# The buyer's path in order: every open stage, then Won (the other endings leave the path).
FUNNEL_STAGES: tuple[Stage, ...] = (
    *(stage for stage in Stage if stage not in TERMINAL_STAGES),
    Stage.WON,
)

# A stage's bit in ``deals.stages_reached``. Stored in the ledger, so a bit never changes
# meaning: a new stage takes the next free bit.
STAGE_BITS: dict[Stage, int] = {
    Stage.INQUIRY_RECEIVED: 1 << 0,
    Stage.REQUIREMENTS_CLARIFIED: 1 << 1,
    Stage.PROPOSAL_RECEIVED: 1 << 2,
    Stage.QUOTE_REQUESTED: 1 << 3,
    Stage.PRICE_AGREED: 1 << 4,
    Stage.OFFER_RECEIVED: 1 << 5,
    Stage.ORDER_PLACED: 1 << 6,
    Stage.ORDER_CONFIRMED: 1 << 7,
    Stage.DELIVERED: 1 << 8,
    Stage.CHECKED_IN: 1 << 9,
    Stage.WIN_LOSS_INVITED: 1 << 10,
    Stage.WON: 1 << 11,
    Stage.LOST: 1 << 12,
    Stage.DISQUALIFIED: 1 << 13,
    Stage.NO_RESPONSE: 1 << 14,
    Stage.CANCELLED: 1 << 15,
    Stage.OPTED_OUT: 1 << 16,
}

# Signals that mean the buyer answered (an out-of-office or an opt-out is no answer).
REPLY_SIGNALS: frozenset[str] = frozenset(
    signal.value
    for signal in (
        BuyerSignal.BUYER_REPLIED,
        BuyerSignal.REQUIREMENTS_CLARIFIED,
        BuyerSignal.DECLINED_TO_TALK,
        BuyerSignal.DISCOUNT_REQUESTED,
        BuyerSignal.PRICE_AGREED,
        BuyerSignal.NEXT_STEP_AGREED,
        BuyerSignal.ORDER_PLACED,
        BuyerSignal.LOST,
        BuyerSignal.INTERVIEW_RECORDED,
    )
)
FOLLOW_UP_TEMPLATES: frozenset[str] = frozenset(f.template for f in FOLLOW_UPS.values())

# How many deals ``refresh_all`` recomputes a transaction.
PAGE = 2000

_FUNNEL_PLACE = {stage.value: place for place, stage in enumerate(FUNNEL_STAGES)}
_BITS = {stage.value: bit for stage, bit in STAGE_BITS.items()}


@dataclass(frozen=True)
class Event:
    """An accepted stage event, as the facts need it."""

    key: str
    at: datetime
    signal: str
    from_stage: str | None
    to_stage: str | None

    @property
    def moves(self) -> bool:
        return self.to_stage is not None and self.from_stage != self.to_stage

    @property
    def order(self) -> tuple[datetime, int, str]:
        return (self.at, len(self.key), self.key)


@dataclass(frozen=True)
class Email:
    """A sent follow-up email."""

    message_id: str
    at: datetime


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive UTC; the ledger stores UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _milliseconds(length: timedelta) -> int:
    """A duration to the millisecond, half up; never negative (clocks of two sources)."""
    return max((length // timedelta(microseconds=1) + 500) // 1000, 0)


def reached(events: Iterable[Event]) -> tuple[int, str | None]:
    """The bits of the stages ``events`` reached, and the furthest one on the path."""
    bits = 0
    furthest: str | None = None
    for event in events:
        if event.to_stage is None:
            continue
        bits |= _BITS.get(event.to_stage, 0)
        place = _FUNNEL_PLACE.get(event.to_stage)
        if place is not None and (furthest is None or place > _FUNNEL_PLACE[furthest]):
            furthest = event.to_stage
    return bits, furthest


def stays(deal_id: str, events: Sequence[Event]) -> list[dict[str, Any]]:
    """Every stay of the deal, finished or not, as ``deal_stays`` rows."""
    moves = sorted((e for e in events if e.moves), key=lambda e: e.order)
    rows = []
    for position, move in enumerate(moves):
        after = moves[position + 1] if position + 1 < len(moves) else None
        rows.append(
            {
                "deal_id": deal_id,
                "position": position,
                "stage": move.to_stage,
                "entered_at": move.at,
                "left_at": after.at if after else None,
                "next_stage": after.to_stage if after else None,
                "milliseconds": _milliseconds(after.at - move.at) if after else None,
            }
        )
    return rows


def touches(deal_id: str, events: Sequence[Event], emails: Sequence[Email]) -> list[dict[str, Any]]:
    """Every sent follow-up of the deal as ``follow_up_touches`` rows."""
    # The timeline: (instant, kind, not an answer, tie-break, what it is). Events (kind 0)
    # before emails at one instant, and an answer before a change.
    timeline: list[tuple[datetime, int, int, tuple[int, str], Event | Email]] = []
    for event in events:
        answer = event.signal in REPLY_SIGNALS
        if answer or event.moves:
            timeline.append((event.at, 0, 0 if answer else 1, event.order[1:], event))
    for email in emails:
        timeline.append((email.at, 1, 1, (len(email.message_id), email.message_id), email))
    timeline.sort(key=lambda item: item[:4])

    rows: list[dict[str, Any]] = []
    number = 0  # the touch's number since the last stage change
    open_touch: dict[str, Any] | None = None  # the latest touch, while still unsettled
    for *_, item in timeline:
        if isinstance(item, Email):
            number += 1
            open_touch = {
                "deal_id": deal_id,
                "position": len(rows),
                "message_id": item.message_id,
                "at": item.at,
                "touch": number,
                "answered": False,
            }
            rows.append(open_touch)
            continue
        if open_touch is not None and item.signal in REPLY_SIGNALS:
            open_touch["answered"] = True
        if item.moves:
            # A change settles the touch before it (answered or not) and starts the count
            # again; an answer after the change is the new stage's.
            number = 0
            open_touch = None
        elif open_touch is not None and open_touch["answered"]:
            open_touch = None
    return rows


def _events(connection: Connection, deal_ids: Sequence[str]) -> dict[str, list[Event]]:
    found: dict[str, list[Event]] = {deal_id: [] for deal_id in deal_ids}
    query = select(
        STAGE_EVENTS.c.deal_id,
        STAGE_EVENTS.c.event_key,
        STAGE_EVENTS.c.at,
        STAGE_EVENTS.c.signal,
        STAGE_EVENTS.c.from_stage,
        STAGE_EVENTS.c.to_stage,
    ).where(STAGE_EVENTS.c.deal_id.in_(deal_ids), STAGE_EVENTS.c.accepted.is_(True))
    for deal_id, key, at, signal, from_stage, to_stage in connection.execute(query):
        found[deal_id].append(Event(key, _utc(at), signal, from_stage, to_stage))
    return found


def _emails(connection: Connection, deal_ids: Sequence[str]) -> dict[str, list[Email]]:
    found: dict[str, list[Email]] = {deal_id: [] for deal_id in deal_ids}
    query = select(DEAL_EMAILS.c.deal_id, DEAL_EMAILS.c.message_id, DEAL_EMAILS.c.at).where(
        DEAL_EMAILS.c.deal_id.in_(deal_ids),
        DEAL_EMAILS.c.template.in_(sorted(FOLLOW_UP_TEMPLATES)),
        DEAL_EMAILS.c.outcome == "sent",
    )
    for deal_id, message_id, at in connection.execute(query):
        found[deal_id].append(Email(message_id, _utc(at)))
    return found


# One deal's refresh, as the writer does it after each batch: a few statements built
# once, run on SQLite's own cursor (``DriverStatement``), since SQLAlchemy's work around
# each execution costs more than the statement and the writer shares the worker's CPU
# with the sends.
_EVENTS_OF = DriverStatement(
    select(
        STAGE_EVENTS.c.event_key,
        STAGE_EVENTS.c.at,
        STAGE_EVENTS.c.signal,
        STAGE_EVENTS.c.from_stage,
        STAGE_EVENTS.c.to_stage,
    ).where(STAGE_EVENTS.c.deal_id == bindparam("deal"), STAGE_EVENTS.c.accepted.is_(True)),
    (
        STAGE_EVENTS.c.event_key,
        STAGE_EVENTS.c.at,
        STAGE_EVENTS.c.signal,
        STAGE_EVENTS.c.from_stage,
        STAGE_EVENTS.c.to_stage,
    ),
)
_SENT_OF = DriverStatement(
    select(DEAL_EMAILS.c.message_id, DEAL_EMAILS.c.at, DEAL_EMAILS.c.template).where(
        DEAL_EMAILS.c.deal_id == bindparam("deal"), DEAL_EMAILS.c.outcome == "sent"
    ),
    (DEAL_EMAILS.c.message_id, DEAL_EMAILS.c.at, DEAL_EMAILS.c.template),
)
_SET_REACHED = DriverStatement(
    update(DEALS)
    .where(DEALS.c.deal_id == bindparam("deal"))
    .values(stages_reached=bindparam("bits"), furthest_stage=bindparam("furthest"))
)
_NO_STAYS = DriverStatement(delete(DEAL_STAYS).where(DEAL_STAYS.c.deal_id == bindparam("deal")))
_NO_TOUCHES = DriverStatement(
    delete(FOLLOW_UP_TOUCHES).where(FOLLOW_UP_TOUCHES.c.deal_id == bindparam("deal"))
)
_STAY = DriverStatement(insert(DEAL_STAYS))
_TOUCH = DriverStatement(insert(FOLLOW_UP_TOUCHES))


def _each(connection: Connection, statement: DriverStatement, many: list[dict[str, Any]]) -> None:
    statement.run_each(connection, many)


def refresh_deal(connection: Connection, deal_id: str) -> None:
    """Recompute one deal's facts from its stored events and emails."""
    values = {"deal": deal_id}
    events = [
        Event(row["event_key"], _utc(row["at"]), row["signal"], row["from_stage"], row["to_stage"])
        for row in _EVENTS_OF.fetch(connection, values)
    ]
    emails = [
        Email(row["message_id"], _utc(row["at"]))
        for row in _SENT_OF.fetch(connection, values)
        if row["template"] in FOLLOW_UP_TEMPLATES
    ]
    bits, furthest = reached(events)
    _each(connection, _SET_REACHED, [{"deal": deal_id, "bits": bits, "furthest": furthest}])
    _each(connection, _NO_STAYS, [values])
    _each(connection, _STAY, stays(deal_id, events))
    # A sent email stays sent: a deal with no follow-up sent has never had a touch row.
    if emails:
        _each(connection, _NO_TOUCHES, [values])
        _each(connection, _TOUCH, touches(deal_id, events, emails))


def refresh(connection: Connection, deal_ids: Sequence[str]) -> None:
    """Recompute the facts of ``deal_ids`` from their stored events and emails, in a few
    statements for them all (a page of deals: the migration, ``refresh_all``)."""
    if not deal_ids:
        return
    events = _events(connection, deal_ids)
    emails = _emails(connection, deal_ids)
    stay_rows: list[dict[str, Any]] = []
    touch_rows: list[dict[str, Any]] = []
    reach_rows: list[dict[str, Any]] = []
    for deal_id in deal_ids:
        stay_rows += stays(deal_id, events[deal_id])
        touch_rows += touches(deal_id, events[deal_id], emails[deal_id])
        bits, furthest = reached(events[deal_id])
        reach_rows.append({"deal": deal_id, "bits": bits, "furthest": furthest})
    connection.execute(
        update(DEALS)
        .where(DEALS.c.deal_id == bindparam("deal"))
        .values(stages_reached=bindparam("bits"), furthest_stage=bindparam("furthest")),
        reach_rows,
    )
    connection.execute(delete(DEAL_STAYS).where(DEAL_STAYS.c.deal_id.in_(deal_ids)))
    connection.execute(delete(FOLLOW_UP_TOUCHES).where(FOLLOW_UP_TOUCHES.c.deal_id.in_(deal_ids)))
    if stay_rows:
        connection.execute(insert(DEAL_STAYS), stay_rows)
    if touch_rows:
        connection.execute(insert(FOLLOW_UP_TOUCHES), touch_rows)


def refresh_all(connection: Connection) -> int:
    """Recompute every recorded deal's facts, a page of deals at a time; how many deals."""
    after = ""
    count = 0
    while True:
        page = list(
            connection.execute(
                select(DEALS.c.deal_id)
                .where(DEALS.c.deal_id > after)
                .order_by(DEALS.c.deal_id)
                .limit(PAGE)
            ).scalars()
        )
        if not page:
            return count
        refresh(connection, page)
        count += len(page)
        after = page[-1]
