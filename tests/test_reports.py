"""Every report against a generated history whose answers are known by construction,
on SQLite and PostgreSQL, whole and filtered.

The expected figures are computed here in plain Python from what the generator knows
(the stages each deal reached, its finished stays, which follow-up was answered), not
from the rows the reports read.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from alembic import command
from sqlalchemy import insert

from ledger import reports, schema
from ledger.database import LedgerDatabase
from ledger.reports import ReportFilter
from ledger.tables import DEAL_EMAILS, DEALS, STAGE_EVENTS
from tests.conftest import on_both_databases
from tests.report_history import (
    OWNERS,
    START,
    GeneratedDeal,
    GeneratedHistory,
    generate,
    store,
)
from workflows.stages import TERMINAL_STAGES, Stage

HISTORY = generate(400)
CENT = Decimal("0.01")

FILTERS = {
    "all": ReportFilter(),
    "owner": ReportFilter(owner=OWNERS[1]),
    "kind": ReportFilter(kind="rfq"),
    "window": ReportFilter(since=START + timedelta(days=5), until=START + timedelta(days=20)),
    "nobody": ReportFilter(owner="nobody@seller.example"),
}


def chosen(f: ReportFilter) -> list[GeneratedDeal]:
    def keep(deal: GeneratedDeal) -> bool:
        row = deal.row
        return (
            (f.since is None or row["created_at"] >= f.since)
            and (f.until is None or row["created_at"] < f.until)
            and (f.owner is None or row["owner"] == f.owner)
            and (f.kind is None or row["kind"] == f.kind)
        )

    return [deal for deal in HISTORY.deals if keep(deal)]


async def write(db: LedgerDatabase, history: GeneratedHistory) -> None:
    await db.run(lambda connection: store(connection, history), write=True)


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[LedgerDatabase]:
    database = LedgerDatabase(ledger_url)
    await write(database, HISTORY)
    yield database
    await database.dispose()


def rate(numerator: int, deals: int) -> reports.Rate:
    return reports.Rate(
        numerator=numerator,
        deals=deals,
        value=numerator / deals if deals else None,
        enough=deals >= reports.MIN_DEALS,
    )


def spread(durations: list[timedelta]) -> tuple[timedelta | None, timedelta | None]:
    if not durations:
        return None, None
    ordered = sorted(durations)
    p90 = ordered[math.ceil(0.9 * len(ordered)) - 1]
    return statistics.median(ordered), p90


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


# Stages in path order, as the reports list them.
PATH = [stage for stage in Stage if stage not in TERMINAL_STAGES] + [Stage.WON]
DECIDED = {Stage.WON.value, Stage.LOST.value, Stage.NO_RESPONSE.value}


def expected_funnel(picked: list[GeneratedDeal]) -> reports.Funnel:
    rows = []
    for place, stage in enumerate(PATH):
        here = [d for d in picked if stage in d.reached]
        left = [d for d in here if d.row["stage"] != stage.value]
        went_on = [d for d in left if any(s in PATH[place + 1 :] for s in d.reached)]
        closed = [d for d in here if d.row["outcome"] is not None]
        won = [d for d in closed if d.row["outcome"] == Stage.WON.value]
        rows.append(
            reports.FunnelRow(
                stage=stage.value,
                reached=len(here),
                to_next=rate(len(went_on), len(left)),
                to_won=rate(len(won), len(closed)),
            )
        )
    return reports.Funnel(deals=len(picked), rows=rows)


def expected_win_rate(picked: list[GeneratedDeal]) -> reports.Rate:
    decided = [d for d in picked if d.row["outcome"] in DECIDED]
    return rate(sum(d.row["outcome"] == Stage.WON.value for d in decided), len(decided))


def won_cycles(picked: list[GeneratedDeal]) -> list[timedelta]:
    return [
        d.row["closed_at"] - d.row["created_at"]
        for d in picked
        if d.row["outcome"] == Stage.WON.value
    ]


def expected_average_won(picked: list[GeneratedDeal]) -> list[reports.MoneyFigure]:
    won: dict[str, list[Decimal]] = {}
    for d in picked:
        if d.row["outcome"] == Stage.WON.value:
            won.setdefault(d.row["currency"], []).append(d.row["value"])
    return [
        reports.MoneyFigure(
            currency=currency, deals=len(values), average=money(sum(values) / len(values))
        )
        for currency, values in sorted(won.items())
    ]


@on_both_databases
@pytest.mark.parametrize("name", list(FILTERS))
async def test_funnel_win_rate_and_deals(ledger: LedgerDatabase, name: str) -> None:
    f = FILTERS[name]
    picked = chosen(f)
    assert (await reports.funnel(ledger, f)) == expected_funnel(picked)
    assert (await reports.win_rate(ledger, f)) == expected_win_rate(picked)
    rows = await reports.deals(ledger, f, limit=50)
    newest = sorted(picked, key=lambda d: (-d.row["created_at"].timestamp(), d.deal_id))[:50]
    assert [row.deal_id for row in rows] == [d.deal_id for d in newest]
    for row, deal in zip(rows, newest, strict=True):
        assert row.value == deal.row["value"]
        assert row.created_at == deal.row["created_at"]
        assert row.closed_at == deal.row["closed_at"]
        assert (row.stage, row.outcome) == (deal.row["stage"], deal.row["outcome"])


@on_both_databases
@pytest.mark.parametrize("name", list(FILTERS))
async def test_times_cycle_and_money(ledger: LedgerDatabase, name: str) -> None:
    f = FILTERS[name]
    picked = chosen(f)
    times = await reports.stage_times(ledger, f)
    assert [t.stage for t in times] == [s.value for s in PATH if s is not Stage.WON]
    for time in times:
        stays = [length for d in picked for stage, length in d.stays if stage.value == time.stage]
        median, p90 = spread(stays)
        assert (time.deals, time.median, time.p90) == (len(stays), median, p90), time.stage

    cycles = won_cycles(picked)
    median, p90 = spread(cycles)
    assert (await reports.cycle(ledger, f)) == reports.Cycle(
        deals=len(cycles), median=median, p90=p90
    )

    averages = expected_average_won(picked)
    assert (await reports.average_won_size(ledger, f)) == averages

    win = expected_win_rate(picked)
    by_currency = {figure.currency: figure.average for figure in averages}
    opened = Counter(d.row["currency"] for d in picked if d.row["outcome"] is None)
    expected = []
    for currency in sorted(set(opened) | set(by_currency)):
        average = by_currency.get(currency)
        per_day = None
        if win.enough and average is not None and median:
            days = Decimal(median.total_seconds()) / 86400
            per_day = money(Decimal(opened[currency]) * win.numerator * average / win.deals / days)
        expected.append(
            reports.Velocity(
                currency=currency,
                open_deals=opened[currency],
                win_rate=win,
                average_won=average,
                cycle_days=median.total_seconds() / 86400 if median else None,
                per_day=per_day,
            )
        )
    found = await reports.velocity(ledger, f)
    assert [v.model_dump(exclude={"per_day"}) for v in found] == [
        v.model_dump(exclude={"per_day"}) for v in expected
    ]
    # The same formula in another order may differ in the last cent's rounding.
    for got, want in zip(found, expected, strict=True):
        if want.per_day is None:
            assert got.per_day is None
        else:
            assert got.per_day is not None and abs(got.per_day - want.per_day) <= CENT


@on_both_databases
@pytest.mark.parametrize("name", list(FILTERS))
async def test_forecast(ledger: LedgerDatabase, name: str) -> None:
    f = FILTERS[name]
    picked = chosen(f)
    to_won = {row.stage: row.to_won for row in expected_funnel(picked).rows}
    groups: dict[tuple[str, str], list[Decimal]] = {}
    for d in picked:
        if d.row["outcome"] is None:
            groups.setdefault((d.row["currency"], d.row["stage"]), []).append(d.row["value"])
    place = {stage.value: n for n, stage in enumerate(Stage)}
    expected = []
    for (currency, stage), values in sorted(
        groups.items(), key=lambda g: (g[0][0], place[g[0][1]])
    ):
        conversion = to_won[stage]
        total = sum(values, Decimal("0"))
        weighted = None
        if conversion.enough:
            weighted = money(total * conversion.numerator / conversion.deals)
        expected.append(
            reports.ForecastRow(
                currency=currency,
                stage=stage,
                open_deals=len(values),
                open_value=total,
                to_won=conversion,
                weighted=weighted,
            )
        )
    assert (await reports.forecast(ledger, f)) == expected
    if name == "all":  # the whole history has enough deals for some weights, not all
        assert any(row.weighted is not None for row in expected)


@on_both_databases
@pytest.mark.parametrize("name", list(FILTERS))
async def test_follow_up_effectiveness(ledger: LedgerDatabase, name: str) -> None:
    f = FILTERS[name]
    picked = chosen(f)
    sent: Counter[int] = Counter()
    answered: Counter[int] = Counter()
    for d in picked:
        for touch in d.touches:
            sent[touch.number] += 1
            answered[touch.number] += touch.answered
    found = await reports.follow_up_effectiveness(ledger, f)
    assert found.replies == [
        reports.TouchReplies(touch=n, replies=rate(answered[n], sent[n])) for n in sorted(sent)
    ]
    expected = []
    for stage in PATH:
        if stage is Stage.WON:
            continue
        left = [d for d in picked if stage in d.left_to]
        silent = [d for d in left if d.left_to[stage] is Stage.NO_RESPONSE]
        expected.append(reports.StageRate(stage=stage.value, rate=rate(len(silent), len(left))))
    assert found.no_response == expected
    if name == "all":
        assert any(r.replies.numerator for r in found.replies)
        assert any(s.rate.numerator for s in found.no_response)


@on_both_databases
@pytest.mark.parametrize("name", list(FILTERS))
async def test_win_loss_findings(ledger: LedgerDatabase, name: str) -> None:
    f = FILTERS[name]
    picked = [d for d in chosen(f)]
    interviewed = [d for d in picked if d.interview is not None]
    codes = Counter((d.interview["outcome"], code) for d in interviewed for code in d.reasons)  # type: ignore[index]
    lost = Counter(
        d.row["lost_reason"]
        for d in picked
        if d.row["outcome"] == Stage.LOST.value and d.row["lost_reason"]
    )
    found = await reports.win_loss(ledger, f)
    assert found.reasons == [
        reports.ReasonCount(outcome=outcome, code=code, deals=count)
        for (outcome, code), count in sorted(codes.items(), key=lambda i: (i[0][0], -i[1], i[0][1]))
    ]
    assert found.lost_reasons == [
        reports.LostReasonCount(code=code, deals=count)
        for code, count in sorted(lost.items(), key=lambda i: (-i[1], i[0]))
    ]

    def average(values: list[int | None]) -> float | None:
        given = [v for v in values if v is not None]
        return statistics.fmean(given) if given else None

    expected_ratings = []
    for outcome in sorted({d.interview["outcome"] for d in interviewed}):  # type: ignore[index]
        those = [d.interview for d in interviewed if d.interview["outcome"] == outcome]  # type: ignore[index]
        expected_ratings.append(
            (
                outcome,
                len(those),
                average([i["rep_rating"] for i in those]),  # type: ignore[index]
                average([i["cooperation_rating"] for i in those]),  # type: ignore[index]
            )
        )
    got = [(r.outcome, r.interviews, r.rep_rating, r.cooperation_rating) for r in found.ratings]
    assert [g[:2] for g in got] == [e[:2] for e in expected_ratings]
    for g, e in zip(got, expected_ratings, strict=True):
        assert g[2:] == pytest.approx(e[2:])

    said: Callable[[dict[str, Any]], str] = lambda i: i["why_decided"] or i["free_text"]  # noqa: E731
    quoted = [d.interview for d in interviewed if said(d.interview)]  # type: ignore[arg-type]
    quoted.sort(key=lambda i: (-i["recorded_at"].timestamp(), i["deal_id"]))  # type: ignore[index]
    assert (
        [(q.deal_id, q.outcome, q.text, q.at) for q in found.quotes]
        == [
            (i["deal_id"], i["outcome"], said(i), i["recorded_at"])  # type: ignore[index, arg-type]
            for i in quoted[: reports.QUOTES_SHOWN]
        ]
    )
    if name == "all":
        assert found.reasons and found.lost_reasons and found.quotes


@on_both_databases
async def test_a_rate_on_too_few_deals_says_so(ledger: LedgerDatabase) -> None:
    # One owner's rfq deals in a short window: a handful, under the threshold.
    f = ReportFilter(owner=OWNERS[0], kind="rfq", until=START + timedelta(days=6))
    picked = chosen(f)
    assert 0 < len([d for d in picked if d.row["outcome"] in DECIDED]) < reports.MIN_DEALS
    found = await reports.win_rate(ledger, f)
    assert not found.enough and found.value is not None
    assert (await reports.win_rate(ledger, f, min_deals=1)).enough
    assert all(row.weighted is None for row in await reports.forecast(ledger, f))


@on_both_databases
async def test_exports_read_page_by_page_lose_and_double_nothing(ledger: LedgerDatabase) -> None:
    f = ReportFilter(kind="rfp")
    picked = sorted(chosen(f), key=lambda d: d.deal_id)
    pages = [page async for page in reports.deal_pages(ledger, f, size=7)]
    assert max(len(page) for page in pages) == 7
    assert [row.deal_id for page in pages for row in page] == [d.deal_id for d in picked]

    ours = {d.deal_id for d in picked}
    # The generator numbers each deal's events in the order they happened.
    expected = [e["event_key"] for e in HISTORY.events if e["deal_id"] in ours]
    expected.sort(key=lambda key: (key.split("/")[0], int(key.split("/e")[1])))
    found = [event async for page in reports.stage_event_pages(ledger, f, size=7) for event in page]
    assert [event.event_key for event in found] == expected
    assert all(event.at.tzinfo is not None for event in found)


@on_both_databases
async def test_upgrading_a_ledger_fills_the_facts_of_the_deals_it_holds(ledger_url: str) -> None:
    """Deals recorded before the report facts existed count as soon as the ledger is
    migrated: the migration computes their stages reached, stays and follow-ups."""
    database = LedgerDatabase(ledger_url)

    def recorded_before_the_facts(connection: Any) -> None:
        command.downgrade(schema._config(connection), "0007")
        connection.execute(insert(DEALS), [deal.row for deal in HISTORY.deals])
        connection.execute(insert(STAGE_EVENTS), HISTORY.events)
        connection.execute(insert(DEAL_EMAILS), HISTORY.emails)

    try:
        await database.run(recorded_before_the_facts, write=True)
        await database.run(lambda c: command.upgrade(schema._config(c), "head"), write=True)
        picked = HISTORY.deals
        assert (await reports.funnel(database, ReportFilter())) == expected_funnel(picked)
        for time in await reports.stage_times(database, ReportFilter()):
            stays = [length for d in picked for stage, length in d.stays if stage == time.stage]
            assert (time.deals, time.median, time.p90) == (len(stays), *spread(stays))
        replies = (await reports.follow_up_effectiveness(database, ReportFilter())).replies
        sent = Counter(touch.number for d in picked for touch in d.touches)
        assert [(r.touch, r.replies.deals) for r in replies] == sorted(sent.items())
    finally:
        await database.dispose()
