"""``starter.py report ...`` and ``starter.py export ...``: the managers' figures and the
deal records, printed from the ledger (ledger/reports.py computes every figure).

A report prints as a table (default), CSV or JSON; an export as CSV or JSON lines. A bad
option value is one line on stderr and exit 1; nothing here reads Temporal, so a deal
Temporal has forgotten still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ledger import LedgerProblem
from settings import Settings, load_settings
from workflows.stages import InquiryKind

if TYPE_CHECKING:
    from ledger.database import LedgerDatabase
    from ledger.reports import Rate, ReportFilter

# Deal data is user text (companies, notes, quotes): never Rich markup or emoji codes.
err = Console(stderr=True, highlight=False, markup=False, emoji=False)
out = Console(highlight=False, markup=False, emoji=False)

report_app = typer.Typer(no_args_is_help=True, help="What managers measure, from the ledger.")
export_app = typer.Typer(no_args_is_help=True, help="The ledger's deal records, whole.")

# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class BadOption(Exception):
    """A command-line value that cannot be used; the message says what to give instead."""


class ReportFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


def _choice(kind: type[StrEnum], value: str, option: str) -> Any:
    try:
        return kind(value.strip().lower())
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise BadOption(f"{option} {value!r} is not one of: {allowed}") from None


def parse_moment(value: str, option: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 time; without an offset it is UTC."""
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadOption(
            f"{option} {value!r} is not a date: use YYYY-MM-DD or an ISO 8601 time "
            "such as 2026-01-05T09:00+01:00"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def report_filter(
    since: str | None, until: str | None, owner: str | None, kind: str | None
) -> ReportFilter:
    from ledger.reports import ReportFilter

    start = parse_moment(since, "--since") if since is not None else None
    end = parse_moment(until, "--until") if until is not None else None
    if start is not None and end is not None and start >= end:
        raise BadOption(f"--since {since!r} is not before --until {until!r}: swap them")
    chosen_kind = _choice(InquiryKind, kind, "--kind").value if kind is not None else None
    if owner is not None and not owner.strip():
        raise BadOption("--owner is empty: give the rep's address, or leave the option out")
    return ReportFilter(
        since=start, until=end, owner=owner.strip() if owner else None, kind=chosen_kind
    )


@contextlib.asynccontextmanager
async def _ledger(settings: Settings) -> AsyncIterator[LedgerDatabase]:
    """The ledger for one command; a database failure becomes one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from ledger.database import LedgerDatabase, explain

    database = LedgerDatabase(settings.ledger_url)
    try:
        yield database
    except (LedgerProblem, BrokenPipeError):
        raise
    except (SQLAlchemyError, OSError) as error:
        raise explain(error, settings.ledger_url) from None
    finally:
        await database.dispose()


def _run(work: Callable[[LedgerDatabase, Settings], Awaitable[None]]) -> None:
    settings = load_settings()

    async def main() -> None:
        async with _ledger(settings) as database:
            await work(database, settings)

    try:
        asyncio.run(main())
    except (BadOption, LedgerProblem) as error:
        err.print(f"dealflow: {error}", soft_wrap=True)
        raise typer.Exit(1) from None
    except BrokenPipeError:
        # The reader had enough (``| head``): not a failure; the rest goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


# --- how figures print ---


def _rate_text(rate: Rate) -> str:
    if rate.value is None:
        return "-"
    shown = f"{rate.value:.1%} of {rate.deals}"
    return shown if rate.enough else f"not enough data ({rate.numerator} of {rate.deals})"


def _duration_text(length: timedelta | None) -> str:
    if length is None:
        return "-"
    days = length.total_seconds() / 86400
    return f"{days:.1f} d" if days >= 1 else f"{days * 24:.1f} h"


def _days(length: timedelta | None) -> float | None:
    return None if length is None else round(length.total_seconds() / 86400, 4)


def _money_text(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


@dataclass
class Section:
    """One table of a report: printed under its title, or as CSV rows."""

    title: str
    columns: list[str]
    shown: list[list[str]]  # for the table: formatted
    raw: list[list[Any]]  # for CSV: plain values
    csv_columns: list[str] | None = None  # when CSV's differ (a rate: value and base)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def _print_sections(sections: Sequence[Section], form: ReportFormat, payload: Any) -> None:
    if form is ReportFormat.JSON:
        sys.stdout.write(json.dumps(_plain(payload), indent=2, ensure_ascii=False) + "\n")
        return
    if form is ReportFormat.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        many = len(sections) > 1
        for number, section in enumerate(sections):
            if many and number:
                sys.stdout.write("\n")  # one blank line between a report's tables
            writer.writerow(section.csv_columns or section.columns)
            writer.writerows([[_csv_cell(cell) for cell in row] for row in section.raw])
        return
    for section in sections:
        table = Table(*section.columns, title=section.title)
        for row in section.shown:
            table.add_row(*(Text(cell) for cell in row))
        out.print(table)


def _plain(payload: Any) -> Any:
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    if isinstance(payload, list):
        return [_plain(item) for item in payload]
    if isinstance(payload, dict):
        return {key: _plain(value) for key, value in payload.items()}
    return payload


# --- the reports ---

SinceOption = typer.Option(None, "--since", help="Deals created on or after (YYYY-MM-DD, UTC).")
UntilOption = typer.Option(None, "--until", help="Deals created before (YYYY-MM-DD, UTC).")
OwnerOption = typer.Option(None, "--owner", help="Only this rep's deals.")
KindOption = typer.Option(None, "--kind", help="Only rfi, rfp or rfq deals.")
FormatOption = typer.Option("table", "--format", help="table, csv or json.")


def _report(
    build: Callable[[LedgerDatabase, ReportFilter, int], Awaitable[tuple[list[Section], Any]]],
    since: str | None,
    until: str | None,
    owner: str | None,
    kind: str | None,
    form: str,
) -> None:
    async def work(database: LedgerDatabase, settings: Settings) -> None:
        chosen = _choice(ReportFormat, form, "--format")
        f = report_filter(since, until, owner, kind)
        sections, payload = await build(database, f, settings.report_min_deals)
        _print_sections(sections, chosen, payload)

    _run(work)


async def _funnel(db: LedgerDatabase, f: ReportFilter, least: int) -> tuple[list[Section], Any]:
    from ledger import reports

    found = await reports.funnel(db, f, min_deals=least)
    section = Section(
        f"funnel ({found.deals} deals)",
        ["stage", "reached", "to next stage", "to won"],
        [
            [r.stage, str(r.reached), _rate_text(r.to_next), _rate_text(r.to_won)]
            for r in found.rows
        ],
        [
            [r.stage, r.reached, r.to_next.value, r.to_next.deals, r.to_won.value, r.to_won.deals]
            for r in found.rows
        ],
        ["stage", "reached", "to_next", "to_next_of", "to_won", "to_won_of"],
    )
    return [section], found


async def _stages(db: LedgerDatabase, f: ReportFilter, least: int) -> tuple[list[Section], Any]:
    from ledger import reports

    found = await reports.stage_times(db, f)
    section = Section(
        "time in stage",
        ["stage", "stays", "median", "p90"],
        [[t.stage, str(t.deals), _duration_text(t.median), _duration_text(t.p90)] for t in found],
        [[t.stage, t.deals, _days(t.median), _days(t.p90)] for t in found],
        ["stage", "stays", "median_days", "p90_days"],
    )
    return [section], found


async def _cycle(db: LedgerDatabase, f: ReportFilter, least: int) -> tuple[list[Section], Any]:
    from ledger import reports

    length = await reports.cycle(db, f)
    rate = await reports.win_rate(db, f, min_deals=least)
    sizes = await reports.average_won_size(db, f)
    speeds = await reports.velocity(db, f, min_deals=least)
    shown = [
        ["cycle, median (inquiry to won)", "", _duration_text(length.median), str(length.deals)],
        ["cycle, p90", "", _duration_text(length.p90), str(length.deals)],
        ["win rate", "", _rate_text(rate), str(rate.deals)],
        *(["average won size", s.currency, _money_text(s.average), str(s.deals)] for s in sizes),
        *(
            ["velocity per day", v.currency, _money_text(v.per_day), str(v.open_deals)]
            for v in speeds
        ),
    ]
    raw = [
        ["cycle_median_days", "", _days(length.median), length.deals],
        ["cycle_p90_days", "", _days(length.p90), length.deals],
        ["win_rate", "", rate.value, rate.deals],
        *(["average_won_size", s.currency, s.average, s.deals] for s in sizes),
        *(["velocity_per_day", v.currency, v.per_day, v.open_deals] for v in speeds),
    ]
    section = Section(
        "cycle, win rate and velocity", ["measure", "currency", "value", "deals"], shown, raw
    )
    payload = {
        "cycle": length,
        "win_rate": rate,
        "average_won_size": sizes,
        "velocity": speeds,
    }
    return [section], payload


async def _forecast(db: LedgerDatabase, f: ReportFilter, least: int) -> tuple[list[Section], Any]:
    from ledger import reports

    rows = await reports.forecast(db, f, min_deals=least)
    section = Section(
        "weighted forecast of open deals",
        ["currency", "stage", "open deals", "open value", "to won", "weighted"],
        [
            [
                r.currency,
                r.stage,
                str(r.open_deals),
                _money_text(r.open_value),
                _rate_text(r.to_won),
                _money_text(r.weighted) if r.weighted is not None else "not enough data",
            ]
            for r in rows
        ],
        [
            [
                r.currency,
                r.stage,
                r.open_deals,
                r.open_value,
                r.to_won.value,
                r.to_won.deals,
                r.weighted,
            ]
            for r in rows
        ],
        ["currency", "stage", "open_deals", "open_value", "to_won", "to_won_of", "weighted"],
    )
    totals: dict[str, Decimal] = {}
    for r in rows:
        if r.weighted is not None:
            totals[r.currency] = totals.get(r.currency, Decimal(0)) + r.weighted
    for currency, total in sorted(totals.items()):
        section.shown.append([currency, "total (weighted)", "", "", "", _money_text(total)])
    return [section], rows


async def _follow_ups(db: LedgerDatabase, f: ReportFilter, least: int) -> tuple[list[Section], Any]:
    from ledger import reports

    found = await reports.follow_up_effectiveness(db, f, min_deals=least)
    touches = Section(
        "replies per follow-up",
        ["touch", "sent", "answered"],
        [[str(t.touch), str(t.replies.deals), _rate_text(t.replies)] for t in found.replies],
        [[t.touch, t.replies.deals, t.replies.numerator, t.replies.value] for t in found.replies],
    )
    silent = Section(
        "no response, by stage left",
        ["stage", "left", "as no response"],
        [[s.stage, str(s.rate.deals), _rate_text(s.rate)] for s in found.no_response],
        [[s.stage, s.rate.deals, s.rate.numerator, s.rate.value] for s in found.no_response],
    )
    return [touches, silent], found


async def _win_loss(db: LedgerDatabase, f: ReportFilter, least: int) -> tuple[list[Section], Any]:
    from ledger import reports

    found = await reports.win_loss(db, f)
    reasons = Section(
        "interview reasons",
        ["outcome", "reason", "deals"],
        [[r.outcome, r.code, str(r.deals)] for r in found.reasons],
        [[r.outcome, r.code, r.deals] for r in found.reasons],
    )
    lost = Section(
        "lost reasons",
        ["reason", "deals"],
        [[r.code, str(r.deals)] for r in found.lost_reasons],
        [[r.code, r.deals] for r in found.lost_reasons],
    )

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    ratings = Section(
        "average ratings (1-5)",
        ["outcome", "interviews", "rep", "cooperation"],
        [
            [r.outcome, str(r.interviews), score(r.rep_rating), score(r.cooperation_rating)]
            for r in found.ratings
        ],
        [[r.outcome, r.interviews, r.rep_rating, r.cooperation_rating] for r in found.ratings],
    )
    quotes = Section(
        "latest quotes",
        ["deal", "outcome", "said", "recorded"],
        [[q.deal_id, q.outcome, q.text, _when(q.at)] for q in found.quotes],
        [[q.deal_id, q.outcome, q.text, q.at] for q in found.quotes],
    )
    return [reasons, lost, ratings, quotes], found


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _register(name: str, help_text: str, build: Any) -> None:
    @report_app.command(name, help=help_text)
    def command(
        since: str = SinceOption,
        until: str = UntilOption,
        owner: str = OwnerOption,
        kind: str = KindOption,
        form: str = FormatOption,
    ) -> None:
        _report(build, since, until, owner, kind, form)


_register("funnel", "Deals that reached each stage; how many went on, and were won.", _funnel)
_register("stages", "Time in each stage: median and 90th percentile.", _stages)
_register("cycle", "Inquiry-to-won cycle, win rate, average won size and velocity.", _cycle)
_register("forecast", "Open value per stage, weighted by the stage's won rate.", _forecast)
_register("follow-ups", "Replies per follow-up, and where deals go silent.", _follow_ups)
_register("win-loss", "Win-loss findings: reason codes, ratings, the latest quotes.", _win_loss)


# --- exports ---


def _export(
    pages: Callable[[LedgerDatabase, ReportFilter], AsyncIterator[Sequence[BaseModel]]],
    columns: Sequence[str],
    since: str | None,
    until: str | None,
    owner: str | None,
    kind: str | None,
    form: str,
) -> None:
    async def work(database: LedgerDatabase, settings: Settings) -> None:
        chosen = _choice(ExportFormat, form, "--format")
        f = report_filter(since, until, owner, kind)
        writer = csv.writer(sys.stdout, lineterminator="\n")
        if chosen is ExportFormat.CSV:
            writer.writerow(columns)
        async for page in pages(database, f):
            for row in page:
                if chosen is ExportFormat.JSONL:
                    line = json.dumps(row.model_dump(mode="json"), ensure_ascii=False)
                    sys.stdout.write(line + "\n")
                else:
                    values = row.model_dump()
                    writer.writerow([_csv_cell(values[column]) for column in columns])

    _run(work)


@export_app.command("deals")
def export_deals(
    since: str = SinceOption,
    until: str = UntilOption,
    owner: str = OwnerOption,
    kind: str = KindOption,
    form: str = typer.Option("csv", "--format", help="csv or jsonl."),
) -> None:
    """Every deal record, by deal id, one a line."""
    from ledger import reports

    columns = list(reports.DealRow.model_fields)
    _export(reports.deal_pages, columns, since, until, owner, kind, form)


@export_app.command("events")
def export_events(
    since: str = SinceOption,
    until: str = UntilOption,
    owner: str = OwnerOption,
    kind: str = KindOption,
    form: str = typer.Option("csv", "--format", help="csv or jsonl."),
) -> None:
    """Every stage event of the chosen deals (refused signals too), deal by deal."""
    from ledger import reports

    columns = list(reports.EventRow.model_fields)
    _export(reports.stage_event_pages, columns, since, until, owner, kind, form)
