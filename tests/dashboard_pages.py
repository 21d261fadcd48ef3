"""Helpers of the dashboard tests: seeding the ledger's deal tables with a generated
history, and what the page should show for it, from the report functions themselves or
from what ``starter.py report ... --format json`` printed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from html.parser import HTMLParser

from pydantic import TypeAdapter

from dashboard import figures
from dashboard.app import DEALS_SHOWN, Figures, gather
from ledger import reports
from ledger.database import LedgerDatabase
from ledger.reports import ReportFilter
from tests.report_history import GeneratedHistory, store

# ``starter.py report NAME --format json``: between them, every figure the page shows
# but the deals table (``starter.py export deals --format jsonl``).
CLI_REPORTS = ("funnel", "stages", "cycle", "forecast", "follow-ups", "win-loss")


async def seed(db: LedgerDatabase, history: GeneratedHistory) -> None:
    """The history's rows, straight into the ledger's deal tables."""
    await db.run(lambda connection: store(connection, history), write=True)


class _Figures(HTMLParser):
    """Collects the text of every element with a ``data-figure``."""

    TAGS = ("td", "div", "span")

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, str] = {}
        self._open: list[tuple[str | None, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.TAGS:
            self._open.append((dict(attrs).get("data-figure"), []))

    def handle_data(self, data: str) -> None:
        for key, parts in self._open:
            if key is not None:
                parts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.TAGS and self._open:
            key, parts = self._open.pop()
            if key is not None:
                self.found[key] = " ".join("".join(parts).split())


def shown(html: str) -> dict[str, str]:
    """Every ``data-figure`` of a page: key -> the text shown."""
    parser = _Figures()
    parser.feed(html)
    return parser.found


async def expected(
    db: LedgerDatabase, f: ReportFilter, min_deals: int = reports.MIN_DEALS
) -> dict[str, str]:
    """What the page must show for ``f``, from the report functions (the page's own
    rendering is what the tests check; which reports it shows is ``gather``)."""
    return page_text(await gather(db, f, min_deals))


def printed(reports_json: Mapping[str, str], deals_jsonl: str) -> dict[str, str]:
    """What the page must show, from what the CLI printed: each of ``CLI_REPORTS`` as
    JSON, and ``export deals`` as JSON lines. Read back into the reports' own types, so
    a figure the CLI printed differently from the page's is a difference here."""
    cycle = json.loads(reports_json["cycle"])
    deals = [reports.DealRow.model_validate_json(line) for line in deals_jsonl.splitlines()]
    # The export is by deal id; the page shows the newest first (ties by deal id).
    deals.sort(key=lambda deal: deal.deal_id)
    deals.sort(key=lambda deal: deal.created_at, reverse=True)
    found = Figures(
        funnel=reports.Funnel.model_validate_json(reports_json["funnel"]),
        stage_times=TypeAdapter(list[reports.StageTime]).validate_json(reports_json["stages"]),
        cycle=reports.Cycle.model_validate(cycle["cycle"]),
        win_rate=reports.Rate.model_validate(cycle["win_rate"]),
        won_sizes=TypeAdapter(list[reports.MoneyFigure]).validate_python(cycle["average_won_size"]),
        velocity=TypeAdapter(list[reports.Velocity]).validate_python(cycle["velocity"]),
        forecast=TypeAdapter(list[reports.ForecastRow]).validate_json(reports_json["forecast"]),
        follow_ups=reports.FollowUps.model_validate_json(reports_json["follow-ups"]),
        win_loss=reports.WinLoss.model_validate_json(reports_json["win-loss"]),
        deals=deals[:DEALS_SHOWN],
    )
    return page_text(found)


def page_text(found: Figures) -> dict[str, str]:
    """Each figure as the page writes it, by its ``data-figure`` key."""
    want: dict[str, str] = {}
    funnel = found.funnel
    want["deals"] = figures.count(funnel.deals)
    for row in funnel.rows:
        want[f"funnel/{row.stage}/reached"] = figures.count(row.reached)
        want[f"funnel/{row.stage}/to_next"] = figures.share(row.to_next)
        want[f"funnel/{row.stage}/to_won"] = figures.share(row.to_won)
    for time in found.stage_times:
        want[f"stage_time/{time.stage}/deals"] = figures.count(time.deals)
        want[f"stage_time/{time.stage}/median"] = figures.duration(time.median)
        want[f"stage_time/{time.stage}/p90"] = figures.duration(time.p90)
    want["cycle/median"] = figures.duration(found.cycle.median)
    want["cycle/p90"] = figures.duration(found.cycle.p90)
    want["win_rate"] = figures.share(found.win_rate)
    for size in found.won_sizes:
        want[f"won_size/{size.currency}"] = figures.money(size.average, size.currency)
    for speed in found.velocity:
        key = f"velocity/{speed.currency}"
        want[f"{key}/open_deals"] = figures.count(speed.open_deals)
        want[f"{key}/average_won"] = figures.money(speed.average_won, speed.currency)
        want[f"{key}/cycle_days"] = figures.days(speed.cycle_days)
        want[f"{key}/per_day"] = figures.money(speed.per_day, speed.currency)
    for row in found.forecast:
        key = f"forecast/{row.currency}/{row.stage}"
        want[f"{key}/open_deals"] = figures.count(row.open_deals)
        want[f"{key}/open_value"] = figures.money(row.open_value, row.currency)
        want[f"{key}/to_won"] = figures.share(row.to_won)
        want[f"{key}/weighted"] = figures.money(row.weighted, row.currency)
    for touch in found.follow_ups.replies:
        want[f"follow_up/{touch.touch}"] = figures.share(touch.replies)
    for stage in found.follow_ups.no_response:
        want[f"no_response/{stage.stage}"] = figures.share(stage.rate)
    win_loss = found.win_loss
    for reason in win_loss.reasons:
        want[f"reason/{reason.outcome}/{reason.code}"] = figures.count(reason.deals)
    for lost in win_loss.lost_reasons:
        want[f"lost_reason/{lost.code}"] = figures.count(lost.deals)
    for rating in win_loss.ratings:
        key = f"ratings/{rating.outcome}"
        want[f"{key}/interviews"] = figures.count(rating.interviews)
        want[f"{key}/rep"] = figures.rating(rating.rep_rating)
        want[f"{key}/cooperation"] = figures.rating(rating.cooperation_rating)
    for deal in found.deals:
        stage = deal.stage + (f" ({deal.lost_reason})" if deal.lost_reason else "")
        want[f"deal/{deal.deal_id}/stage"] = stage
        want[f"deal/{deal.deal_id}/value"] = figures.money(deal.value, deal.currency)
    return want
