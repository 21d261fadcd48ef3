"""What managers measure, computed from the ledger's deal records (never from Temporal,
which forgets a closed deal after its retention).

This module is the one place with the reports' SQL: the CLI (``starter.py report``,
``export``) and the managers' dashboard call these functions and hold no SQL of their own.
Counting, grouping and durations run in the database; on SQLite, which has no percentile
function, medians and 90th percentiles are taken from one ordered query's durations.
Reports over every deal read the facts the writer keeps beside the events
(``ledger.deal_facts``: stages reached, stays, follow-ups), so they count rows a deal or
a stay rather than sorting every event.

Definitions (docs/ledger.md repeats them for BI users; ``ledger.deal_facts`` says when a
deal reached a stage, what a stay and a touch are):

- Funnel ``to_next``: of the deals that reached a stage and are no longer in it, the share
  that reached a later stage of the path (``FUNNEL_STAGES`` order). ``to_won``: of the
  closed deals that reached it, the share Won. The forecast weighs open value by the
  latter, so a stage's rate rests only on deals whose ending is known.
- Time in a stage: a finished stay's length; a deal still in the stage is not counted.
- Cycle: a Won deal's ``created_at`` (its inquiry) to its ``closed_at``.
- Win rate: Won / (Won + Lost + No Response); Disqualified, Cancelled and Opted Out deals
  were never winnable and count in neither.
- Follow-ups: of the touches with a number, the share answered; no response: of the
  deals that left a stage, the share that left it for No Response.
- Percentiles are nearest-rank: the p-th of n sorted values is the ceil(p*n)-th; the
  median of an even count is the mean of the middle two. Durations are to the millisecond.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Select,
    case,
    cast,
    func,
    literal,
    or_,
    select,
)

from ledger.database import LedgerDatabase
from ledger.deal_facts import FUNNEL_STAGES, STAGE_BITS
from ledger.tables import (
    DEAL_STAYS,
    DEALS,
    FOLLOW_UP_TOUCHES,
    INTERVIEW_REASONS,
    INTERVIEWS,
    STAGE_EVENTS,
)
from workflows.stages import TERMINAL_STAGES, Stage

__all__ = [
    "FUNNEL_STAGES",
    "MIN_DEALS",
    "Cycle",
    "DealRow",
    "EventRow",
    "FollowUps",
    "ForecastRow",
    "Funnel",
    "FunnelRow",
    "LostReasonCount",
    "MoneyFigure",
    "Quote",
    "Rate",
    "Ratings",
    "ReasonCount",
    "ReportFilter",
    "StageRate",
    "StageTime",
    "TouchReplies",
    "Velocity",
    "WinLoss",
    "average_won_size",
    "cycle",
    "deal_pages",
    "deals",
    "follow_up_effectiveness",
    "forecast",
    "funnel",
    "stage_event_pages",
    "stage_times",
    "velocity",
    "win_loss",
    "win_rate",
]

T = TypeVar("T")

# A rate resting on fewer deals than this is "not enough data" (DEALFLOW_REPORT_MIN_DEALS).
MIN_DEALS = 10

# The endings a win rate weighs: deals that could have been won.
DECIDED = (Stage.WON, Stage.LOST, Stage.NO_RESPONSE)
# An export reads this many deals (and their events) a transaction.
EXPORT_PAGE = 2000
# How many of the latest interview quotes the win-loss findings show.
QUOTES_SHOWN = 10

CENT = Decimal("0.01")


@dataclass(frozen=True)
class ReportFilter:
    """Which deals a report covers; None is no restriction."""

    since: datetime | None = None  # deals created at or after (aware datetime)
    until: datetime | None = None  # deals created before
    owner: str | None = None
    kind: str | None = None  # "rfi" | "rfp" | "rfq"


class Rate(BaseModel):
    numerator: int
    deals: int  # what the rate rests on (its denominator)
    value: float | None  # None when deals == 0
    enough: bool  # deals >= the threshold


class FunnelRow(BaseModel):
    stage: str
    reached: int
    to_next: Rate
    to_won: Rate


class Funnel(BaseModel):
    deals: int  # deals the filter covers
    rows: list[FunnelRow]


class StageTime(BaseModel):
    stage: str
    deals: int  # finished stays in the stage
    median: timedelta | None
    p90: timedelta | None


class Cycle(BaseModel):
    deals: int  # Won deals
    median: timedelta | None
    p90: timedelta | None


class MoneyFigure(BaseModel):
    currency: str
    deals: int
    average: Decimal


class Velocity(BaseModel):
    """Sales velocity: open deals x win rate x average won size / cycle length in days."""

    currency: str
    open_deals: int
    win_rate: Rate
    average_won: Decimal | None
    cycle_days: float | None
    per_day: Decimal | None  # None when a factor is unknown or rests on too few deals


class ForecastRow(BaseModel):
    currency: str
    stage: str
    open_deals: int
    open_value: Decimal
    to_won: Rate  # the stage's historical conversion to Won
    weighted: Decimal | None  # open value x to_won; None when not enough data


class TouchReplies(BaseModel):
    touch: int  # 1 = the first follow-up since the stage began
    replies: Rate  # numerator: answered touches; deals: touches sent


class StageRate(BaseModel):
    stage: str
    rate: Rate


class FollowUps(BaseModel):
    replies: list[TouchReplies]
    # Of the deals that left a stage, the share that left it closed as No Response.
    no_response: list[StageRate]


class ReasonCount(BaseModel):
    outcome: str
    code: str
    deals: int


class LostReasonCount(BaseModel):
    code: str
    deals: int


class Ratings(BaseModel):
    outcome: str
    interviews: int
    rep_rating: float | None
    cooperation_rating: float | None


class Quote(BaseModel):
    deal_id: str
    outcome: str
    text: str
    at: datetime


class WinLoss(BaseModel):
    reasons: list[ReasonCount]  # interview reason codes, by the interview's outcome
    lost_reasons: list[LostReasonCount]  # the lost deals' reason codes
    ratings: list[Ratings]
    quotes: list[Quote]  # the latest first


class DealRow(BaseModel):
    deal_id: str
    company: str
    owner: str
    kind: str
    currency: str
    value: Decimal
    stage: str
    created_at: datetime
    closed_at: datetime | None
    outcome: str | None
    lost_reason: str | None
    outcome_note: str
    next_touch_at: datetime | None
    updated_at: datetime


class EventRow(BaseModel):
    event_key: str
    deal_id: str
    at: datetime
    signal: str
    from_stage: str | None
    to_stage: str | None
    accepted: bool
    refusal: str | None
    source: str
    note: str
    source_event_id: str | None


# --- helpers ---


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC, aware (SQLite hands back naive UTC; the ledger stores UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _maybe_utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else _utc(moment)


def _where(f: ReportFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if f.since is not None:
        conditions.append(DEALS.c.created_at >= _utc(f.since))
    if f.until is not None:
        conditions.append(DEALS.c.created_at < _utc(f.until))
    if f.owner is not None:
        conditions.append(DEALS.c.owner == f.owner)
    if f.kind is not None:
        conditions.append(DEALS.c.kind == f.kind)
    return conditions


def _deal_ids(f: ReportFilter) -> Select[Any]:
    """The filter's deals' ids, to restrict a query of another table."""
    return select(DEALS.c.deal_id).where(*_where(f))


def _only(column: Any, f: ReportFilter) -> list[ColumnElement[bool]]:
    """``column`` (a deal id) restricted to the filter's deals; nothing when it takes all."""
    return [column.in_(_deal_ids(f))] if _where(f) else []


def _rate(numerator: int, deals: int, min_deals: int) -> Rate:
    return Rate(
        numerator=numerator,
        deals=deals,
        value=numerator / deals if deals else None,
        enough=deals >= min_deals,
    )


def _nearest_rank(ordered: Sequence[float], share: float) -> float:
    return ordered[max(math.ceil(share * len(ordered)), 1) - 1]


def _median(ordered: Sequence[float]) -> float:
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _spread(ordered: Sequence[float]) -> tuple[timedelta | None, timedelta | None]:
    """Median and p90 of sorted durations in milliseconds."""
    if not ordered:
        return None, None
    return (
        timedelta(milliseconds=_median(ordered)),
        timedelta(milliseconds=_nearest_rank(ordered, 0.9)),
    )


def _milliseconds(connection: Connection, start: Any, end: Any) -> ColumnElement[float]:
    """``end - start`` in whole milliseconds, in the database's own date arithmetic:
    SQLite's julianday is a few microseconds off, and rounding makes equal lengths equal."""
    if connection.dialect.name == "sqlite":
        # Stored as ISO text; julianday counts days as a float.
        return func.round((func.julianday(end) - func.julianday(start)) * 86_400_000.0)
    return func.round(func.extract("epoch", end - start) * 1000)


def _cents(column: Any) -> ColumnElement[int]:
    """A money column as whole cents: summed exactly on both databases (SQLite's NUMERIC
    is a float)."""
    return cast(func.round(column * 100), BigInteger)


def _money(cents: int | None, count: int = 1) -> Decimal:
    """``cents / count`` as money (two places, half up)."""
    return (Decimal(cents or 0) / count / 100).quantize(CENT, rounding=ROUND_HALF_UP)


def _event_order() -> list[Any]:
    """A deal's events in the order they happened: by instant, then by the deal's own
    numbering (``<deal>/e9`` before ``<deal>/e10``: the shorter key first)."""
    return [STAGE_EVENTS.c.at, func.length(STAGE_EVENTS.c.event_key), STAGE_EVENTS.c.event_key]


# PostgreSQL's default of 4 MB a sort makes a report over a million events sort on disk;
# a report's transaction takes more, for itself only.
REPORT_WORK_MEM = "64MB"


async def _run(db: LedgerDatabase, work: Callable[[Connection], T]) -> T:
    def report(connection: Connection) -> T:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'")
        return work(connection)

    return await db.run(report)


# --- the reports ---


def _funnel_rows(connection: Connection, f: ReportFilter, min_deals: int) -> Funnel:
    # The deals grouped by what the funnel asks of each (the stages it reached, the
    # furthest, where it is, how it ended): a few hundred groups, counted here.
    query = (
        select(
            DEALS.c.stages_reached,
            DEALS.c.furthest_stage,
            DEALS.c.stage,
            DEALS.c.outcome,
            func.count(),
        )
        .where(*_where(f))
        .group_by(DEALS.c.stages_reached, DEALS.c.furthest_stage, DEALS.c.stage, DEALS.c.outcome)
    )
    place = {stage.value: number for number, stage in enumerate(FUNNEL_STAGES)}
    counts = [[0] * 5 for _ in FUNNEL_STAGES]  # reached, left, went on, closed, won
    total = 0
    for bits, furthest, now, outcome, many in connection.execute(query):
        total += many
        for n, stage in enumerate(FUNNEL_STAGES):
            if not bits & STAGE_BITS[stage]:
                continue
            row = counts[n]
            row[0] += many
            if now != stage.value:
                row[1] += many
                if place.get(furthest, -1) > n:
                    row[2] += many
            if outcome is not None:
                row[3] += many
                if outcome == Stage.WON.value:
                    row[4] += many
    rows = [
        FunnelRow(
            stage=stage.value,
            reached=reached,
            to_next=_rate(went, left, min_deals),
            to_won=_rate(won, closed, min_deals),
        )
        for stage, (reached, left, went, closed, won) in zip(FUNNEL_STAGES, counts, strict=True)
    ]
    return Funnel(deals=total, rows=rows)


async def funnel(db: LedgerDatabase, f: ReportFilter, *, min_deals: int = MIN_DEALS) -> Funnel:
    """Deals that reached each stage of the path, and how many went on and were won."""
    return await _run(db, lambda c: _funnel_rows(c, f, min_deals))


Spread = tuple[int, timedelta | None, timedelta | None]


def _spreads(connection: Connection, durations: Select[Any]) -> dict[Any, Spread]:
    """Count, median and p90 per key of ``durations`` (rows of key, milliseconds).

    PostgreSQL takes them itself (``percentile_cont`` is the median's mean of the middle
    two, ``percentile_disc`` the nearest rank); SQLite has no such function, so its
    durations come sorted, in one query, and are counted here.
    """
    rows = durations.subquery("durations")
    length = rows.c.milliseconds
    if connection.dialect.name != "sqlite":
        query = select(
            rows.c.key,
            func.count(),
            func.percentile_cont(0.5).within_group(length),
            func.percentile_disc(0.9).within_group(length),
        ).group_by(rows.c.key)
        return {
            key: (
                int(count),
                timedelta(milliseconds=float(middle)),
                timedelta(milliseconds=float(p90)),
            )
            for key, count, middle, p90 in connection.execute(query)
        }
    found: dict[Any, list[float]] = {}
    for key, milliseconds in connection.execute(
        select(rows.c.key, length).order_by(rows.c.key, length)
    ):
        found.setdefault(key, []).append(max(float(milliseconds), 0.0))
    return {key: (len(ordered), *_spread(ordered)) for key, ordered in found.items()}


def _stays(f: ReportFilter) -> Select[Any]:
    """Every finished stay in a stage: (key: the stage, milliseconds)."""
    return select(
        DEAL_STAYS.c.stage.label("key"), DEAL_STAYS.c.milliseconds.label("milliseconds")
    ).where(DEAL_STAYS.c.left_at.is_not(None), *_only(DEAL_STAYS.c.deal_id, f))


def _stage_times(connection: Connection, f: ReportFilter) -> list[StageTime]:
    found = _spreads(connection, _stays(f))
    times = []
    for stage in FUNNEL_STAGES:
        if stage in TERMINAL_STAGES:
            continue
        count, median, p90 = found.get(stage.value, (0, None, None))
        times.append(StageTime(stage=stage.value, deals=count, median=median, p90=p90))
    return times


async def stage_times(db: LedgerDatabase, f: ReportFilter) -> list[StageTime]:
    """How long deals stayed in each open stage: median and 90th percentile."""
    return await _run(db, lambda c: _stage_times(c, f))


def _cycle(connection: Connection, f: ReportFilter) -> Cycle:
    length = _milliseconds(connection, DEALS.c.created_at, DEALS.c.closed_at)
    query = select(literal("won").label("key"), length.label("milliseconds")).where(
        *_where(f), DEALS.c.outcome == Stage.WON.value, DEALS.c.closed_at.is_not(None)
    )
    count, median, p90 = _spreads(connection, query).get("won", (0, None, None))
    return Cycle(deals=count, median=median, p90=p90)


async def cycle(db: LedgerDatabase, f: ReportFilter) -> Cycle:
    """From inquiry to Won: median and 90th percentile of the Won deals."""
    return await _run(db, lambda c: _cycle(c, f))


def _win_rate(connection: Connection, f: ReportFilter, min_deals: int) -> Rate:
    query = select(
        func.count().filter(DEALS.c.outcome == Stage.WON.value),
        func.count(),
    ).where(*_where(f), DEALS.c.outcome.in_([stage.value for stage in DECIDED]))
    won, decided = connection.execute(query).one()
    return _rate(int(won), int(decided), min_deals)


async def win_rate(db: LedgerDatabase, f: ReportFilter, *, min_deals: int = MIN_DEALS) -> Rate:
    """Won / (Won + Lost + No Response)."""
    return await _run(db, lambda c: _win_rate(c, f, min_deals))


def _average_won_size(connection: Connection, f: ReportFilter) -> list[MoneyFigure]:
    query = (
        select(DEALS.c.currency, func.count(), func.sum(_cents(DEALS.c.value)))
        .where(*_where(f), DEALS.c.outcome == Stage.WON.value)
        .group_by(DEALS.c.currency)
        .order_by(DEALS.c.currency)
    )
    return [
        MoneyFigure(currency=currency, deals=int(count), average=_money(int(cents), int(count)))
        for currency, count, cents in connection.execute(query)
    ]


async def average_won_size(db: LedgerDatabase, f: ReportFilter) -> list[MoneyFigure]:
    """The average value of a Won deal, per currency."""
    return await _run(db, lambda c: _average_won_size(c, f))


def _velocity(connection: Connection, f: ReportFilter, min_deals: int) -> list[Velocity]:
    rate = _win_rate(connection, f, min_deals)
    middle = _cycle(connection, f).median
    # Whole microseconds: the median as a timedelta holds it, exactly in Decimal.
    cycle_seconds = None if middle is None else Decimal(middle // timedelta(microseconds=1)) / 10**6
    averages = {figure.currency: figure for figure in _average_won_size(connection, f)}
    open_query = (
        select(DEALS.c.currency, func.count())
        .where(*_where(f), DEALS.c.outcome.is_(None))
        .group_by(DEALS.c.currency)
    )
    open_deals = {currency: int(count) for currency, count in connection.execute(open_query)}
    rows = []
    for currency in sorted(set(open_deals) | set(averages)):
        count = open_deals.get(currency, 0)
        average = averages[currency].average if currency in averages else None
        per_day = None
        if rate.enough and rate.deals and average is not None and cycle_seconds:
            # open x (won / decided) x average / (seconds / 86400), all in Decimal.
            per_day = (
                Decimal(count) * rate.numerator * average * 86400 / (rate.deals * cycle_seconds)
            ).quantize(CENT, rounding=ROUND_HALF_UP)
        rows.append(
            Velocity(
                currency=currency,
                open_deals=count,
                win_rate=rate,
                average_won=average,
                cycle_days=float(cycle_seconds) / 86400 if cycle_seconds is not None else None,
                per_day=per_day,
            )
        )
    return rows


async def velocity(
    db: LedgerDatabase, f: ReportFilter, *, min_deals: int = MIN_DEALS
) -> list[Velocity]:
    """Value the pipeline makes a day, per currency: open deals x win rate x average won
    size / median cycle in days (the win rate and cycle over every currency's deals)."""
    return await _run(db, lambda c: _velocity(c, f, min_deals))


def _stage_to_won(connection: Connection, f: ReportFilter, min_deals: int) -> dict[str, Rate]:
    return {row.stage: row.to_won for row in _funnel_rows(connection, f, min_deals).rows}


def _forecast(connection: Connection, f: ReportFilter, min_deals: int) -> list[ForecastRow]:
    to_won = _stage_to_won(connection, f, min_deals)
    query = (
        select(DEALS.c.currency, DEALS.c.stage, func.count(), func.sum(_cents(DEALS.c.value)))
        .where(*_where(f), DEALS.c.outcome.is_(None))
        .group_by(DEALS.c.currency, DEALS.c.stage)
    )
    order = {stage.value: number for number, stage in enumerate(Stage)}
    rows = []
    for currency, stage, count, cents in connection.execute(query):
        value = _money(int(cents or 0))
        rate = to_won.get(stage, _rate(0, 0, min_deals))
        weighted = None
        if rate.enough and rate.deals:
            weighted = (value * rate.numerator / rate.deals).quantize(CENT, rounding=ROUND_HALF_UP)
        rows.append(
            ForecastRow(
                currency=currency,
                stage=stage,
                open_deals=int(count),
                open_value=value,
                to_won=rate,
                weighted=weighted,
            )
        )
    rows.sort(key=lambda row: (row.currency, order.get(row.stage, len(order))))
    return rows


async def forecast(
    db: LedgerDatabase, f: ReportFilter, *, min_deals: int = MIN_DEALS
) -> list[ForecastRow]:
    """Open value per currency and stage, weighted by the stage's historical Won rate."""
    return await _run(db, lambda c: _forecast(c, f, min_deals))


def _follow_ups(connection: Connection, f: ReportFilter, min_deals: int) -> FollowUps:
    answered = case((FOLLOW_UP_TOUCHES.c.answered.is_(True), 1), else_=0)
    query = (
        select(FOLLOW_UP_TOUCHES.c.touch, func.count(), func.sum(answered))
        .where(*_only(FOLLOW_UP_TOUCHES.c.deal_id, f))
        .group_by(FOLLOW_UP_TOUCHES.c.touch)
        .order_by(FOLLOW_UP_TOUCHES.c.touch)
    )
    replies = [
        TouchReplies(touch=int(touch), replies=_rate(int(yes), int(sent), min_deals))
        for touch, sent, yes in connection.execute(query)
    ]
    # A stay that ended is the deal leaving that stage (once: the path only goes
    # forward); where to, its next stage says.
    left = (
        select(
            DEAL_STAYS.c.stage,
            func.count().label("left"),
            func.count()
            .filter(DEAL_STAYS.c.next_stage == Stage.NO_RESPONSE.value)
            .label("no_response"),
        )
        .where(DEAL_STAYS.c.left_at.is_not(None), *_only(DEAL_STAYS.c.deal_id, f))
        .group_by(DEAL_STAYS.c.stage)
    )
    found = {row.stage: row for row in connection.execute(left)}
    no_response = [
        StageRate(
            stage=stage.value,
            rate=_rate(
                int(found[stage.value].no_response) if stage.value in found else 0,
                int(found[stage.value].left) if stage.value in found else 0,
                min_deals,
            ),
        )
        for stage in FUNNEL_STAGES
        if stage not in TERMINAL_STAGES
    ]
    return FollowUps(replies=replies, no_response=no_response)


async def follow_up_effectiveness(
    db: LedgerDatabase, f: ReportFilter, *, min_deals: int = MIN_DEALS
) -> FollowUps:
    """Which follow-up the buyers answer, and where deals go silent."""
    return await _run(db, lambda c: _follow_ups(c, f, min_deals))


def _win_loss(connection: Connection, f: ReportFilter) -> WinLoss:
    ours = _only(INTERVIEWS.c.deal_id, f)
    reasons_query = (
        select(INTERVIEWS.c.outcome, INTERVIEW_REASONS.c.code, func.count())
        .join(INTERVIEW_REASONS, INTERVIEW_REASONS.c.deal_id == INTERVIEWS.c.deal_id)
        .where(*ours)
        .group_by(INTERVIEWS.c.outcome, INTERVIEW_REASONS.c.code)
        .order_by(INTERVIEWS.c.outcome, func.count().desc(), INTERVIEW_REASONS.c.code)
    )
    reasons = [
        ReasonCount(outcome=outcome, code=code, deals=int(count))
        for outcome, code, count in connection.execute(reasons_query)
    ]
    lost_query = (
        select(DEALS.c.lost_reason, func.count())
        .where(*_where(f), DEALS.c.outcome == Stage.LOST.value, DEALS.c.lost_reason.is_not(None))
        .group_by(DEALS.c.lost_reason)
        .order_by(func.count().desc(), DEALS.c.lost_reason)
    )
    lost_reasons = [
        LostReasonCount(code=code, deals=int(count))
        for code, count in connection.execute(lost_query)
    ]
    ratings_query = (
        select(
            INTERVIEWS.c.outcome,
            func.count(),
            func.avg(cast(INTERVIEWS.c.rep_rating, Integer) * literal(1.0)),
            func.avg(cast(INTERVIEWS.c.cooperation_rating, Integer) * literal(1.0)),
        )
        .where(*ours)
        .group_by(INTERVIEWS.c.outcome)
        .order_by(INTERVIEWS.c.outcome)
    )
    ratings = [
        Ratings(
            outcome=outcome,
            interviews=int(count),
            rep_rating=None if rep is None else float(rep),
            cooperation_rating=None if cooperation is None else float(cooperation),
        )
        for outcome, count, rep, cooperation in connection.execute(ratings_query)
    ]
    said = case(
        (INTERVIEWS.c.why_decided != "", INTERVIEWS.c.why_decided),
        else_=INTERVIEWS.c.free_text,
    )
    quotes_query = (
        select(INTERVIEWS.c.deal_id, INTERVIEWS.c.outcome, said, INTERVIEWS.c.recorded_at)
        .where(*ours, or_(INTERVIEWS.c.why_decided != "", INTERVIEWS.c.free_text != ""))
        .order_by(INTERVIEWS.c.recorded_at.desc(), INTERVIEWS.c.deal_id)
        .limit(QUOTES_SHOWN)
    )
    quotes = [
        Quote(deal_id=deal_id, outcome=outcome, text=text, at=_utc(at))
        for deal_id, outcome, text, at in connection.execute(quotes_query)
    ]
    return WinLoss(reasons=reasons, lost_reasons=lost_reasons, ratings=ratings, quotes=quotes)


async def win_loss(db: LedgerDatabase, f: ReportFilter) -> WinLoss:
    """What the interviews found: reason codes by outcome, average ratings, the latest quotes."""
    return await _run(db, lambda c: _win_loss(c, f))


def _deal_row(row: Any) -> DealRow:
    return DealRow(
        deal_id=row.deal_id,
        company=row.company,
        owner=row.owner,
        kind=row.kind,
        currency=row.currency,
        value=Decimal(str(row.value)).quantize(CENT),
        stage=row.stage,
        created_at=_utc(row.created_at),
        closed_at=_maybe_utc(row.closed_at),
        outcome=row.outcome,
        lost_reason=row.lost_reason,
        outcome_note=row.outcome_note,
        next_touch_at=_maybe_utc(row.next_touch_at),
        updated_at=_utc(row.updated_at),
    )


def _deals(connection: Connection, f: ReportFilter, limit: int | None) -> list[DealRow]:
    query = select(DEALS).where(*_where(f)).order_by(DEALS.c.created_at.desc(), DEALS.c.deal_id)
    if limit is not None:
        query = query.limit(limit)
    return [_deal_row(row) for row in connection.execute(query)]


async def deals(db: LedgerDatabase, f: ReportFilter, limit: int | None = 500) -> list[DealRow]:
    """The filtered deals, newest first (all of them with ``limit`` None)."""
    return await _run(db, lambda c: _deals(c, f, limit))


def _event_row(row: Any) -> EventRow:
    return EventRow(
        event_key=row.event_key,
        deal_id=row.deal_id,
        at=_utc(row.at),
        signal=row.signal,
        from_stage=row.from_stage,
        to_stage=row.to_stage,
        accepted=bool(row.accepted),
        refusal=row.refusal,
        source=row.source,
        note=row.note,
        source_event_id=row.source_event_id,
    )


def _page_of_deals(f: ReportFilter, after: str | None, size: int) -> Select[Any]:
    query = select(DEALS).where(*_where(f))
    if after is not None:
        query = query.where(DEALS.c.deal_id > after)
    return query.order_by(DEALS.c.deal_id).limit(size)


async def deal_pages(
    db: LedgerDatabase, f: ReportFilter, size: int = EXPORT_PAGE
) -> AsyncIterator[list[DealRow]]:
    """Every filtered deal, by deal id, ``size`` a page (each page its own read), so
    that an export of the whole ledger never holds it all in memory."""
    after: str | None = None
    while True:
        query = _page_of_deals(f, after, size)
        page = await _run(db, lambda c, q=query: [_deal_row(row) for row in c.execute(q)])
        if not page:
            return
        yield page
        after = page[-1].deal_id


def _events_of_page(
    connection: Connection, f: ReportFilter, after: str | None, size: int
) -> tuple[str | None, list[EventRow]]:
    page = _page_of_deals(f, after, size).with_only_columns(DEALS.c.deal_id)
    ids = list(connection.execute(page).scalars())
    if not ids:
        return None, []
    query = (
        select(STAGE_EVENTS)
        .where(
            STAGE_EVENTS.c.deal_id.between(ids[0], ids[-1]),
            *_only(STAGE_EVENTS.c.deal_id, f),
        )
        .order_by(STAGE_EVENTS.c.deal_id, *_event_order())
    )
    return ids[-1], [_event_row(row) for row in connection.execute(query)]


async def stage_event_pages(
    db: LedgerDatabase, f: ReportFilter, size: int = EXPORT_PAGE
) -> AsyncIterator[list[EventRow]]:
    """Every stage event of the filtered deals, deal by deal (by deal id) in the order
    they happened: the events of ``size`` deals a page."""
    after: str | None = None
    while True:
        last, events = await _run(db, lambda c, after=after: _events_of_page(c, f, after, size))
        if last is None:
            return
        if events:
            yield events
        after = last
