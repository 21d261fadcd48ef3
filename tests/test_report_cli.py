"""``starter.py report ...`` and ``export ...`` as a manager runs them: a real process on
a ledger holding the generated history (tests/report_history.py), SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from ledger.database import LedgerDatabase
from ledger.reports import ReportFilter
from ledger.tables import DEALS, INTERVIEWS
from tests.conftest import on_both_databases
from tests.report_history import OWNERS, START
from tests.test_reports import HISTORY, chosen, expected_funnel, expected_win_rate, write
from workflows.stages import Stage

ROOT = Path(__file__).resolve().parent.parent

# A deal whose text a spreadsheet or Rich could take for code.
HOSTILE = {
    **HISTORY.deals[0].row,
    "deal_id": "Z-HOSTILE",
    "company": '=HYPERLINK("http://x.example") [bold red]Corp[/]',
    "owner": "zed@seller.example",
    "created_at": START - timedelta(days=30),
    "updated_at": START - timedelta(days=2),
    "closed_at": START - timedelta(days=2),
    "stage": Stage.WON.value,
    "outcome": Stage.WON.value,
}
HOSTILE_QUOTE = "We liked [bold]you[/bold] :thumbs_up: and [/] too"


@pytest.fixture
async def url(ledger_url: str) -> AsyncIterator[str]:
    database = LedgerDatabase(ledger_url)
    await write(database, HISTORY)

    def hostile(connection: Any) -> None:
        connection.execute(insert(DEALS), [HOSTILE])
        connection.execute(
            insert(INTERVIEWS),
            [
                {
                    "deal_id": "Z-HOSTILE",
                    "recorded_at": START - timedelta(days=1),
                    "outcome": Stage.WON.value,
                    "participants": "",
                    "rep_rating": 5,
                    "cooperation_rating": 5,
                    "why_decided": HOSTILE_QUOTE,
                    "decision_process": "",
                    "free_text": "",
                }
            ],
        )

    await database.run(hostile, write=True)
    await database.dispose()
    yield ledger_url


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
    env["DEALFLOW_DATABASE_URL"] = url
    env["COLUMNS"] = "200"  # Rich tables wide enough that no cell wraps
    return subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@on_both_databases
async def test_reports_print_the_library_figures_as_json_csv_and_tables(url: str) -> None:
    owner = OWNERS[2]
    f = ReportFilter(owner=owner)
    funnel = json.loads(ok(run(url, "report", "funnel", "--owner", owner, "--format", "json")))
    assert funnel == expected_funnel(chosen(f)).model_dump(mode="json")

    rows = list(csv.DictReader(io.StringIO(ok(run(url, "report", "funnel", "--format", "csv")))))
    expected = expected_funnel(chosen(ReportFilter())).rows
    # The hostile deal has no stage events: it counts as a deal, never as reaching a stage.
    assert [(r["stage"], int(r["reached"])) for r in rows] == [
        (e.stage, e.reached) for e in expected
    ]
    assert [int(r["to_won_of"]) for r in rows] == [e.to_won.deals for e in expected]

    cycle = json.loads(ok(run(url, "report", "cycle", "--kind", "rfp", "--format", "json")))
    assert cycle["win_rate"] == expected_win_rate(chosen(ReportFilter(kind="rfp"))).model_dump()

    table = ok(run(url, "report", "funnel", "--since", "2026-01-05", "--until", "2026-02-01"))
    for stage in ("Inquiry Received", "Win-Loss Invited", "Won"):
        assert stage in table

    # User text prints as it is: not read as Rich markup or emoji codes.
    findings = ok(run(url, "report", "win-loss", "--until", "2026-01-01"))
    assert HOSTILE_QUOTE in findings
    quotes = json.loads(ok(run(url, "report", "win-loss", "--format", "json")))["quotes"]
    assert quotes[-1]["text"] != HOSTILE_QUOTE  # older than the history: not among the latest
    alone = ok(run(url, "report", "win-loss", "--until", "2026-01-01", "--format", "json"))
    assert [q["text"] for q in json.loads(alone)["quotes"]] == [HOSTILE_QUOTE]

    forecast = list(csv.reader(io.StringIO(ok(run(url, "report", "forecast", "--format", "csv")))))
    assert forecast[0] == [
        "currency", "stage", "open_deals", "open_value", "to_won", "to_won_of", "weighted",
    ]  # fmt: skip
    opened = [d for d in HISTORY.deals if d.row["outcome"] is None]
    assert sum(int(row[2]) for row in forecast[1:]) == len(opened)
    assert sum(Decimal(row[3]) for row in forecast[1:]) == sum(d.row["value"] for d in opened)

    for name in ("stages", "follow-ups"):
        assert ok(run(url, "report", name, "--format", "csv")).startswith(("stage,", "touch,"))


@on_both_databases
async def test_exports_hold_every_record_and_defuse_formulas(url: str) -> None:
    deals = list(csv.DictReader(io.StringIO(ok(run(url, "export", "deals")))))
    assert len(deals) == len(HISTORY.deals) + 1
    by_id = {row["deal_id"]: row for row in deals}
    first = HISTORY.deals[5].row
    assert Decimal(by_id[first["deal_id"]]["value"]) == first["value"]
    assert by_id[first["deal_id"]]["stage"] == first["stage"]
    # A spreadsheet would run a cell starting with "=": the export makes it text.
    assert by_id["Z-HOSTILE"]["company"] == "'" + HOSTILE["company"]

    lines = ok(run(url, "export", "events", "--kind", "rfi", "--format", "jsonl")).splitlines()
    rfi = {d.deal_id for d in HISTORY.deals if d.row["kind"] == "rfi"}
    assert len(lines) == sum(e["deal_id"] in rfi for e in HISTORY.events)
    events = [json.loads(line) for line in lines]
    assert {e["deal_id"] for e in events} == rfi
    refused = [e for e in events if not e["accepted"]]
    assert refused and all(e["to_stage"] is None and e["refusal"] for e in refused)

    jsonl = ok(run(url, "export", "deals", "--owner", OWNERS[0], "--format", "jsonl"))
    assert {json.loads(line)["deal_id"] for line in jsonl.splitlines()} == {
        d.deal_id for d in chosen(ReportFilter(owner=OWNERS[0]))
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["report", "funnel", "--since", "2026-13-01"], "--since '2026-13-01' is not a date"),
        (["report", "stages", "--until", "yesterday"], "--until 'yesterday' is not a date"),
        (["report", "cycle", "--kind", "rfz"], "--kind 'rfz' is not one of: rfi, rfp, rfq"),
        (["report", "forecast", "--format", "xml"], "--format 'xml' is not one of: table, csv"),
        (["report", "win-loss", "--since", "2026-02-01", "--until", "2026-01-01"], "swap them"),
        (["report", "funnel", "--owner", " "], "--owner is empty"),
        (["export", "deals", "--format", "json"], "--format 'json' is not one of: csv, jsonl"),
        (["export", "events", "--since", "2026-02-30"], "--since '2026-02-30' is not a date"),
    ],
)
async def test_a_bad_option_is_one_line_and_exit_1(url: str, args: list[str], says: str) -> None:
    result = run(url, *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dealflow: ") and says in lines[0], lines
    assert result.stdout == ""


def test_a_report_on_a_ledger_without_schema_says_to_upgrade(tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'empty.sqlite3'}", "report", "funnel")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "python starter.py db upgrade" in lines[0], lines
