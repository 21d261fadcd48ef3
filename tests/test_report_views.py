"""The BI views (migration 0005) agree with the generated history and with the reports,
on SQLite and PostgreSQL, and migrate down and up again."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, text

from ledger import reports, schema
from ledger.database import LedgerDatabase
from ledger.reports import ReportFilter
from tests.conftest import on_both_databases
from tests.test_reports import HISTORY, write
from workflows.stages import Stage

VIEWS = {
    "report_deals",
    "report_stage_changes",
    "report_stage_stays",
    "report_stages_reached",
    "report_interview_reasons",
}


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[LedgerDatabase]:
    database = LedgerDatabase(ledger_url)
    await write(database, HISTORY)
    yield database
    await database.dispose()


async def rows(db: LedgerDatabase, sql: str) -> list[Any]:
    return await db.run(lambda c: list(c.execute(text(sql))))


@on_both_databases
async def test_the_views_hold_the_history_as_the_reports_count_it(ledger: LedgerDatabase) -> None:
    reached = await rows(ledger, "SELECT stage, COUNT(*) FROM report_stages_reached GROUP BY stage")
    funnel = await reports.funnel(ledger, ReportFilter())
    counted = {row.stage: row.reached for row in funnel.rows if row.reached}
    assert {stage: int(n) for stage, n in reached if stage in counted} == counted

    stays = await rows(
        ledger,
        "SELECT deal_id, stage, seconds FROM report_stage_stays WHERE left_at IS NOT NULL "
        "ORDER BY deal_id, entered_at",
    )
    expected = [
        (d.deal_id, stage.value, length.total_seconds()) for d in HISTORY.deals
        for stage, length in d.stays
    ]  # fmt: skip
    assert sorted((d, s, float(n)) for d, s, n in stays) == sorted(expected)
    still = await rows(ledger, "SELECT COUNT(*) FROM report_stage_stays WHERE left_at IS NULL")
    assert still[0][0] == len(HISTORY.deals)  # each deal's last stage: open or its ending

    deals = await rows(
        ledger, "SELECT deal_id, is_open, is_won, is_decided, cycle_days FROM report_deals"
    )
    by_id = {d.deal_id: d.row for d in HISTORY.deals}
    for deal_id, is_open, is_won, is_decided, cycle_days in deals:
        row = by_id[deal_id]
        assert int(is_open) == (row["outcome"] is None)
        assert int(is_won) == (row["outcome"] == Stage.WON.value)
        assert int(is_decided) == (row["outcome"] in ("Won", "Lost", "No Response"))
        if row["outcome"] == Stage.WON.value:
            days = (row["closed_at"] - row["created_at"]).total_seconds() / 86400
            assert float(cycle_days) == pytest.approx(days, abs=1e-6)
        else:
            assert cycle_days is None

    reasons = await rows(ledger, "SELECT outcome, code FROM report_interview_reasons")
    assert Counter((o, c) for o, c in reasons) == Counter(
        (d.interview["outcome"], code) for d in HISTORY.deals if d.interview for code in d.reasons
    )
    changes = await rows(ledger, "SELECT COUNT(*) FROM report_stage_changes")
    assert changes[0][0] == sum(len(d.reached) for d in HISTORY.deals) + sum(
        1 for d in HISTORY.deals if d.row["outcome"] not in (None, Stage.WON.value)
    )


@on_both_databases
async def test_the_views_migrate_down_and_up(ledger_url: str) -> None:
    database = LedgerDatabase(ledger_url)

    def views(connection: Any) -> set[str]:
        return set(inspect(connection).get_view_names())

    try:
        assert await database.run(views) >= VIEWS
        await database.run(lambda c: command.downgrade(schema._config(c), "0004"), write=True)
        assert not VIEWS & await database.run(views)
        await database.run(lambda c: command.upgrade(schema._config(c), "head"), write=True)
        assert await database.run(views) >= VIEWS
    finally:
        await database.dispose()
