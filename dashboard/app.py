"""The managers' dashboard: one read-only page of what the deal records say.

Funnel, time in stage, cycle, win rate, velocity, weighted forecast, follow-ups,
win-loss findings and the deals themselves, each deal linked to its workflow in the
Temporal UI. Every figure comes from ``ledger.reports`` (the CLI's ``report`` shows the
same ones); this module holds no SQL. Its own ASGI app, never mounted on the buyers'
endpoints: they face the internet, this page shows every deal.

- ``GET /``: the page; ``?since=YYYY-MM-DD&until=YYYY-MM-DD&owner=EMAIL&kind=rfq`` filter it.
- ``GET /healthz``: 200 ``ok`` (no sign-in, tells nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from dashboard import charts, figures
from dashboard.access import Access
from dashboard.filters import KINDS, BadFilter, FilterForm, parse
from ledger import LedgerProblem, reports
from ledger.database import LedgerDatabase, explain
from settings import Settings
from starter import workflow_id

TEMPLATES = Path(__file__).resolve().parent / "templates"
# The deals table shows the newest this many; the figures cover every deal filtered.
DEALS_SHOWN = 200
REALM = 'Basic realm="Dealflow dashboard", charset="UTF-8"'
# No script may run, nothing may frame the page: it shows every deal.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Figures:
    """Everything the page shows, as ``ledger.reports`` computed it."""

    funnel: reports.Funnel
    stage_times: list[reports.StageTime]
    cycle: reports.Cycle
    win_rate: reports.Rate
    won_sizes: list[reports.MoneyFigure]
    velocity: list[reports.Velocity]
    forecast: list[reports.ForecastRow]
    follow_ups: reports.FollowUps
    win_loss: reports.WinLoss
    deals: list[reports.DealRow]


async def gather(db: LedgerDatabase, f: reports.ReportFilter, min_deals: int) -> Figures:
    """Every report for ``f``, one after the other (SQLite serves one reader at a time)."""
    return Figures(
        funnel=await reports.funnel(db, f, min_deals=min_deals),
        stage_times=await reports.stage_times(db, f),
        cycle=await reports.cycle(db, f),
        win_rate=await reports.win_rate(db, f, min_deals=min_deals),
        won_sizes=await reports.average_won_size(db, f),
        velocity=await reports.velocity(db, f, min_deals=min_deals),
        forecast=await reports.forecast(db, f, min_deals=min_deals),
        follow_ups=await reports.follow_up_effectiveness(db, f, min_deals=min_deals),
        win_loss=await reports.win_loss(db, f),
        deals=await reports.deals(db, f, limit=DEALS_SHOWN),
    )


def chart_set(found: Figures) -> dict[str, Any]:
    """The page's SVG charts, drawn from the same figures as its tables."""
    funnel = charts.bars(
        "Deals that reached each stage",
        [
            charts.Bar(row.stage, row.reached, figures.count(row.reached))
            for row in found.funnel.rows
        ],
    )
    times = charts.bars(
        "Time in stage: median (bar) and 90th percentile (tick)",
        [
            charts.Bar(
                row.stage,
                row.median.total_seconds(),
                f"{figures.duration(row.median)} / p90 {figures.duration(row.p90)}",
                mark=row.p90.total_seconds() if row.p90 is not None else None,
            )
            for row in found.stage_times
            if row.median is not None
        ],
    )
    currencies = sorted({row.currency for row in found.forecast})
    forecast = {
        currency: charts.bars(
            f"Open value by stage, {currency} (open → weighted; weighted part darker)",
            [
                charts.Bar(
                    row.stage,
                    float(row.open_value),
                    f"{figures.amount(row.open_value)} → {figures.amount(row.weighted)}",
                    part=float(row.weighted) if row.weighted is not None else None,
                )
                for row in found.forecast
                if row.currency == currency
            ],
        )
        for currency in currencies
    }
    reasons = charts.bars(
        "Interview reasons by outcome",
        [
            charts.Bar(f"{row.outcome}: {row.code}", row.deals, figures.count(row.deals))
            for row in found.win_loss.reasons
        ],
    )
    lost = charts.bars(
        "Why deals were lost",
        [
            charts.Bar(row.code, row.deals, figures.count(row.deals))
            for row in found.win_loss.lost_reasons
        ],
    )
    return {"funnel": funnel, "times": times, "forecast": forecast, "reasons": reasons,
            "lost": lost}  # fmt: skip


class Dashboard:
    def __init__(self, settings: Settings, database: LedgerDatabase) -> None:
        self.settings = settings
        self.database = database
        self.access = Access(settings)
        # DEALFLOW_REPORT_MIN_DEALS: the same threshold as the CLI's reports.
        self.min_deals = min_deals = settings.report_min_deals
        self._templates = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.globals.update(
            f=figures, kinds=KINDS, min_deals=min_deals, deals_shown=DEALS_SHOWN
        )

    def temporal_link(self, deal_id: str) -> str:
        base = self.settings.temporal_ui_url.rstrip("/")
        namespace = quote(self.settings.temporal_namespace, safe="")
        return f"{base}/namespaces/{namespace}/workflows/{quote(workflow_id(deal_id), safe='')}"

    def _html(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        text = self._templates.get_template(template).render(**values)
        return HTMLResponse(text, status_code=status, headers=HEADERS)

    async def page(self, request: Request) -> Response:
        client = request.client.host if request.client else None
        visitor = await self.access.visitor(client, dict(request.headers))
        if visitor is None:
            if self.access.uses_passwords:
                return PlainTextResponse(
                    "sign in to see the dashboard",
                    status_code=401,
                    headers={**HEADERS, "WWW-Authenticate": REALM},
                )
            return PlainTextResponse(
                "the dashboard answers this machine only; sign-in is not configured",
                status_code=403,
                headers=HEADERS,
            )
        empty = FilterForm(since="", until="", owner="", kind="", report=reports.ReportFilter())
        try:
            form = parse(request.query_params)
        except BadFilter as error:
            return self._html("problem.html", 400, problem=str(error), form=empty, visitor=visitor)
        try:
            found = await gather(self.database, form.report, self.min_deals)
        except LedgerProblem as problem:
            return self._html("problem.html", 503, problem=str(problem), form=form,
                              visitor=visitor)  # fmt: skip
        except (SQLAlchemyError, OSError) as error:
            problem = explain(error, self.database.url)
            return self._html("problem.html", 503, problem=str(problem), form=form,
                              visitor=visitor)  # fmt: skip
        return self._html(
            "page.html",
            form=form,
            visitor=visitor,
            found=found,
            charts=chart_set(found),
            link=self.temporal_link,
        )


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def build_app(settings: Settings, database: LedgerDatabase) -> Starlette:
    dashboard = Dashboard(settings, database)
    app = Starlette(
        routes=[
            Route("/", dashboard.page, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    app.state.dashboard = dashboard
    return app
