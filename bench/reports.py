"""Scenario 6, reports: every manager's report on 100,000 deals and 1,000,000 stage events
in PostgreSQL, against one full scan of the events in the same database.

The history is the report tests' generator (tests/report_history.py: seeded, fixed
instants) at N deals, its stage events topped up with refused signals (an audit trail's
usual filler) to ten per deal, and loaded with COPY into a throwaway PostgreSQL cluster
(Debian's binaries, as the tests start it). Each report runs once to warm the cache,
then three times; its figure is the median. The baseline is ``SELECT count(*)`` over
every stage event with a predicate on an unindexed column: a query that must read all
the events once, which any report over them costs at least. The goal is each report
under one second on the full size; the table gives the ratio, a note the seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

from bench.harness import Row, median
from ledger import deal_facts, reports, schema
from ledger.database import LedgerDatabase
from ledger.reports import ReportFilter
from ledger.tables import DEAL_EMAILS, DEALS, INTERVIEW_REASONS, INTERVIEWS, STAGE_EVENTS
from tests.databases import start_postgres
from tests.report_history import START, GeneratedHistory, generate

NAME = "reports"
DEFAULT_N = 100_000
EVENTS_PER_DEAL = 10
RUNS = 3
GOAL_SECONDS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports-n", type=int, default=DEFAULT_N, metavar="N")


def _topped_up(history: GeneratedHistory, per_deal: int) -> Iterator[dict[str, Any]]:
    """The history's events, then refused ones until there are ``per_deal`` a deal."""
    yield from history.events
    missing = per_deal * len(history.deals) - len(history.events)
    for number in range(max(missing, 0)):
        deal = history.deals[number % len(history.deals)]
        yield {
            "event_key": f"{deal.deal_id}/r{number}",
            "deal_id": deal.deal_id,
            "at": deal.row["created_at"] + timedelta(minutes=1 + number % 600),
            "signal": "discount_requested",
            "from_stage": deal.row["stage"],
            "to_stage": None,
            "accepted": False,
            "refusal": "the discount is below the floor",
            "source": "cli",
            "note": "",
            "source_event_id": None,
        }


async def _load(url: str, history: GeneratedHistory) -> int:
    """COPY the history into the migrated database; the number of stage events."""
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql://", "postgres://", 1))
    events = 0
    try:
        for table, rows in (
            (DEALS, [deal.row for deal in history.deals]),
            (STAGE_EVENTS, list(_topped_up(history, EVENTS_PER_DEAL))),
            (DEAL_EMAILS, history.emails),
            (INTERVIEWS, history.interviews),
            (INTERVIEW_REASONS, history.reasons),
        ):
            columns = [column.name for column in table.columns if column.name in rows[0]]
            records = [tuple(row.get(name) for name in columns) for row in rows]
            await connection.copy_records_to_table(table.name, records=records, columns=columns)
            if table is STAGE_EVENTS:
                events = len(records)
    finally:
        await connection.close()
    return events


async def _vacuum(url: str) -> None:
    """As autovacuum leaves a live ledger: statistics, and pages marked all-visible."""
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql://", "postgres://", 1))
    try:
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


async def _timed(work: Callable[[], Awaitable[object]]) -> float:
    await work()  # warm: the first run reads from disk, plans, fills the pool
    seconds = []
    for _ in range(RUNS):
        began = time.perf_counter()
        await work()
        seconds.append(time.perf_counter() - began)
    return median(seconds)


def _full_scan(connection: Any) -> int:
    from sqlalchemy import func, select

    # ``note`` has no index: the database must read every event.
    query = select(func.count()).where(STAGE_EVENTS.c.note != "~")
    return int(connection.execute(query).scalar_one())


async def run(args: argparse.Namespace) -> list[Row]:
    n = args.reports_n
    print(f"reports: {n} deals, {EVENTS_PER_DEAL * n} stage events, PostgreSQL")
    began = time.perf_counter()
    history = generate(n, seed=6)
    print(f"  generated in {time.perf_counter() - began:.0f} s")
    clusters = start_postgres()
    cluster = next(clusters)
    try:
        url = await cluster.create_database()
        await schema.upgrade(url)
        began = time.perf_counter()
        events = await _load(url, history)
        print(f"  {events} stage events loaded in {time.perf_counter() - began:.0f} s")
        database = LedgerDatabase(url)
        try:
            # What the writer keeps beside the records as they come, computed the same way.
            began = time.perf_counter()
            await database.run(deal_facts.refresh_all, write=True)
            await _vacuum(url)
            print(f"  report facts computed in {time.perf_counter() - began:.0f} s")
            return await _measure(database)
        finally:
            await database.dispose()
    finally:
        clusters.close()  # stops the cluster and removes its folder


async def _measure(database: LedgerDatabase) -> list[Row]:
    everything = ReportFilter()
    # A manager's usual question: one quarter.
    quarter = ReportFilter(since=START + timedelta(days=365), until=START + timedelta(days=456))
    baseline = await _timed(lambda: database.run(_full_scan))
    print(f"  baseline (one scan of the events): {baseline * 1000:.0f} ms")
    works: dict[str, Callable[[], Awaitable[object]]] = {
        "funnel": lambda: reports.funnel(database, everything),
        "stage times": lambda: reports.stage_times(database, everything),
        "cycle": lambda: reports.cycle(database, everything),
        "win rate": lambda: reports.win_rate(database, everything),
        "average won size": lambda: reports.average_won_size(database, everything),
        "velocity": lambda: reports.velocity(database, everything),
        "forecast": lambda: reports.forecast(database, everything),
        "follow-ups": lambda: reports.follow_up_effectiveness(database, everything),
        "win-loss": lambda: reports.win_loss(database, everything),
        "deals (500 newest)": lambda: reports.deals(database, everything),
        "funnel, one quarter": lambda: reports.funnel(database, quarter),
    }
    rows = []
    for name, work in works.items():
        seconds = await _timed(work)
        met = "met" if seconds < GOAL_SECONDS else "NOT met"
        print(f"  {name}: {seconds * 1000:.0f} ms ({met}: under {GOAL_SECONDS:g} s)")
        rows.append(
            Row(
                f"6 report: {name}",
                seconds * 1000,
                baseline * 1000,
                "ms",
                notes=[f"{seconds:.2f} s, goal under {GOAL_SECONDS:g} s: {met}"],
            )
        )
    return rows
