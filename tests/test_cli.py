"""The ops CLI end to end: ``starter.py`` run as a subprocess against a real Temporal dev server.

One dev server (in memory, with the deal's search attributes) and one SMTP sink serve
the whole module, with one worker and ledger on SQLite and, for the tests that read or
write the ledger (run on both), one on PostgreSQL; every test uses its own deal ids (and
owner, where it reads the pipeline), so tests never see each other's deals. The dev
server is used rather than the time-skipping one because ``pipeline`` reads
visibility (list/count), which only the dev server has; its clock is real, so
the whole-deal test gives its deal a cadence of seconds.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import itertools
import json
import math
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import TypeAdapter
from temporalio.client import Client, WorkflowExecutionStatus

import deal_intake
from deal_intake import CSV_COLUMNS
from devstack import DevServer, OutboxSink, free_port
from ledger import schema
from ledger.database import LedgerDatabase
from ledger.send_ledger import SendLedger, SendState
from ledger.suppression_list import SuppressionList, SuppressionReason, SuppressionSource
from payload_codec import encrypted_data_converter
from settings import load_settings, parse_codec_keys
from starter import LEGACY_SUPPRESSION_WORKFLOW, workflow_id
from tests.conftest import (
    MAIL_WITHIN,
    TEST_SIGNING_SECRET,
    deal_of,
    on_both_databases,
    step_of,
)
from tests.databases import PostgresCluster
from worker import build_mailer, build_worker
from workflows.deal import STATUS
from workflows.models import DealStatus

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.asyncio(loop_scope="module")

# Rich wraps tables at 80 columns when not on a terminal; wide output keeps a row on one line.
WIDE = "200"

# The real command; starter.main() exits without the interpreter's teardown, where a
# temporalio client could abort a finished command (temporalio/sdk-python#300).
CLI = (sys.executable, "starter.py")
CLI_TIMEOUT = 60.0
# The module's payload codec key, made per run: the CLI under test and the worker share it.
CODEC_KEYS = f"cli-1={base64.b64encode(os.urandom(32)).decode()}"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def one_line_error(self) -> str:
        """The single line a refused command prints on stderr."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one stderr line, got: {self.stderr!r}"
        return lines[0]


@dataclass
class Stack:
    """The module's dev server, SMTP sink and worker, and how to run the CLI against them."""

    server: DevServer
    sink: OutboxSink
    client: Client
    task_queue: str
    suppressions: SuppressionList

    def env(self, **overrides: str) -> dict[str, str]:
        # The caller's own DEALFLOW_* settings must not leak into the CLI under test.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
        return {
            **inherited,
            "DEALFLOW_TEMPORAL_ADDRESS": self.server.address,
            "DEALFLOW_DATABASE_URL": self.suppressions.database.url,
            "DEALFLOW_TEMPORAL_NAMESPACE": "default",
            "DEALFLOW_SEND_WINDOW": "always",
            "DEALFLOW_TEMPORAL_TASK_QUEUE": self.task_queue,
            "DEALFLOW_SMTP_HOST": "127.0.0.1",
            "DEALFLOW_SMTP_PORT": str(self.sink.port),
            "DEALFLOW_CADENCE_PROFILE": "demo",
            "DEALFLOW_REP_ADDRESS": "rep@seller.example.com",
            "DEALFLOW_CODEC_KEYS": CODEC_KEYS,
            # The worker's secret: the CLI opens sealed Message-IDs with it (resend).
            "DEALFLOW_SIGNING_SECRET": TEST_SIGNING_SECRET,
            "DEALFLOW_DEV": "true",
            "COLUMNS": WIDE,
            **overrides,
        }

    async def cli(self, *args: str, **env: str) -> Result:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            cwd=ROOT,
            env=self.env(**env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(
                f"starter.py {' '.join(args)} did not finish in {CLI_TIMEOUT} s"
            ) from None
        assert process.returncode is not None
        return Result(process.returncode, stdout.decode(), stderr.decode())

    async def ok(self, *args: str) -> Result:
        result = await self.cli(*args)
        assert result.code == 0, f"starter.py {' '.join(args)} failed: {result}"
        return result

    async def status_json(self, deal_id: str) -> dict[str, Any]:
        result = await self.ok("status", deal_id, "--json")
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    async def query(self, deal_id: str) -> DealStatus:
        handle = self.client.get_workflow_handle(workflow_id(deal_id))
        return await handle.query(STATUS, result_type=DealStatus)

    async def wait_for(
        self,
        deal_id: str,
        check: Callable[[DealStatus], bool],
        what: str,
        within: float = MAIL_WITHIN,
    ) -> DealStatus:
        """Poll the deal's status query until ``check`` holds (real time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            deal = await self.query(deal_id)
            if check(deal):
                return deal
            if loop.time() > deadline:
                raise AssertionError(f"{deal_id}: not {what} within {within} s: {deal}")
            await asyncio.sleep(0.1)

    async def wait_for_stage(
        self, deal_id: str, stage: str, within: float = MAIL_WITHIN
    ) -> DealStatus:
        return await self.wait_for(deal_id, lambda d: d.stage.value == stage, stage, within)

    def mail(self, deal_id: str) -> list[EmailMessage]:
        messages = [mail.message for mail in list(self.sink.received)]
        return [m for m in messages if deal_of(m) == deal_id]

    async def wait_for_mail(
        self, deal_id: str, count: int, within: float = MAIL_WITHIN
    ) -> list[str]:
        """The deal's email steps (X-Dealflow-Step), once at least ``count`` have arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self.mail(deal_id)) < count:
            if loop.time() > deadline:
                got = [step_of(m) for m in self.mail(deal_id)]
                raise AssertionError(f"{deal_id}: expected {count} emails, the sink has {got}")
            await asyncio.sleep(0.1)
        return [str(step_of(m)) for m in self.mail(deal_id)]


class Stacks:
    """The module's dev server and SMTP sink, and a worker and ledger per database, each
    made when a test first asks for it: most tests need SQLite only."""

    def __init__(self, server: DevServer, sink: OutboxSink, client: Client, folder: Path) -> None:
        self.server, self.sink, self.client, self.folder = server, sink, client, folder
        self.made: dict[str, Stack] = {}
        self.resources = contextlib.AsyncExitStack()

    async def on(self, database: str, request: pytest.FixtureRequest) -> Stack:
        if database not in self.made:
            self.made[database] = await self._make(database, request)
        return self.made[database]

    async def _make(self, database: str, request: pytest.FixtureRequest) -> Stack:
        if database == "postgresql":
            cluster: PostgresCluster = request.getfixturevalue("postgres")
            ledger_url = await cluster.create_database()
        else:
            ledger_url = f"sqlite:///{self.folder / 'ledger.sqlite3'}"
        await schema.upgrade(ledger_url)
        settings = load_settings(
            codec_keys=CODEC_KEYS,
            signing_secret=TEST_SIGNING_SECRET,
            dev=True,
            database_url=ledger_url,
            temporal_address=self.server.address,
            temporal_task_queue=f"cli-{database}-{uuid.uuid4().hex[:8]}",
            smtp_host="127.0.0.1",
            smtp_port=self.sink.port,
            _env_file=None,
        )
        mailer = build_mailer(settings)
        self.resources.push_async_callback(mailer.pool.close)
        ledger = LedgerDatabase(ledger_url)
        self.resources.push_async_callback(ledger.dispose)
        await self.resources.enter_async_context(build_worker(self.client, settings, mailer))
        queue = settings.temporal_task_queue
        return Stack(self.server, self.sink, self.client, queue, SuppressionList(ledger))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stacks(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stacks]:
    server = DevServer(port=free_port(), ui_port=free_port(), headless=True)
    sink = OutboxSink().start()
    try:
        await server.start()
        converter = encrypted_data_converter(parse_codec_keys(CODEC_KEYS))
        client = await Client.connect(server.address, data_converter=converter)
        made = Stacks(server, sink, client, tmp_path_factory.mktemp("cli"))
        async with made.resources:
            yield made
    finally:
        sink.stop()
        server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def stack(stacks: Stacks, database: str, request: pytest.FixtureRequest) -> Stack:
    """The stack on the test's ledger database: SQLite, or both for a test that reads or
    writes the ledger (``on_both_databases``), as every ledger test runs."""
    return await stacks.on(database, request)


def new_id(prefix: str = "CLI") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


BUYER = "Bea Buyer <bea@buyer.example.org>"
# When ledger rows a test writes itself were written: only shown, never compared to now.
LEDGER_INSTANT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def rfp_args(deal_id: str, *items: str, owner: str | None = None) -> list[str]:
    args = ["start", "--id", deal_id, "--company", "Buyer & Sons", "--contact", BUYER]
    args += ["--tz", "Europe/Berlin", "--kind", "rfp"]
    for item in items or ("Conveyor:2:700", "Installation:1:100"):
        args += ["--item", item]
    if owner:
        args += ["--owner", owner]
    return args


async def start_rfp(stack: Stack, deal_id: str, *items: str, owner: str | None = None) -> None:
    result = await stack.ok(*rfp_args(deal_id, *items, owner=owner))
    assert f"{deal_id}: started as RFP" in result.stdout
    await stack.wait_for_stage(deal_id, "Proposal Received")


async def test_start_rfp_sends_the_proposal_and_status_shows_proposal_received(
    stack: Stack,
) -> None:
    deal_id = new_id()
    started = await stack.cli(*rfp_args(deal_id, "Conveyor:2:700", "Installation:1:100"))
    assert started.code == 0, started
    assert started.stdout.strip() == f"{deal_id}: started as RFP for Buyer & Sons"
    assert started.stderr == ""

    assert await stack.wait_for_mail(deal_id, 1) == ["proposal"]
    await stack.wait_for_stage(deal_id, "Proposal Received")
    shown = await stack.cli("status", deal_id)
    assert shown.code == 0, shown
    assert "stage: Proposal Received" in shown.stdout
    assert "value: EUR 1,500.00" in shown.stdout
    assert "proposal" in shown.stdout
    proposal = stack.mail(deal_id)[0]
    assert proposal["To"] is not None and "bea@buyer.example.org" in str(proposal["To"])


@on_both_databases
async def test_a_deal_whose_only_contact_opted_out_is_not_started(stack: Stack) -> None:
    first = new_id()
    buyer = f"Olga Out <olga-{uuid.uuid4().hex[:8]}@buyer.example.org>"
    address = buyer.split("<")[1].rstrip(">")
    deal_args = ["--company", "Buyer & Sons", "--kind", "rfp", "--item", "Widget:1:100"]
    started = await stack.ok("start", "--id", first, "--contact", buyer, *deal_args)
    assert "started as RFP" in started.stdout
    await stack.wait_for_stage(first, "Proposal Received")
    await stack.ok("optout", first)
    # On the list the moment the command returns, before the deal has done anything.
    entry = (await stack.suppressions.find([address]))[address]
    assert (entry.reason, entry.source, entry.deal_id) == ("opted_out", "cli", first)

    alone = new_id()
    refused = await stack.cli("start", "--id", alone, "--contact", buyer, *deal_args)
    assert refused.code == 1 and refused.stdout == ""
    line = refused.one_line_error()
    assert f"deal {alone!r} not started: every contact is on the suppression list" in line
    assert f"{address} opted out on deal {first}" in line
    assert "add a contact who may be emailed" in line
    unknown = await stack.cli("status", alone)
    assert unknown.code == 1 and "no deal" in unknown.one_line_error()

    # With a second contact the deal starts, and ops are told who it will not email.
    both = new_id()
    warned = await stack.cli(
        "start", "--id", both, "--contact", buyer, "--contact", BUYER, *deal_args
    )
    assert warned.code == 0, warned
    assert f"{both}: started as RFP" in warned.stdout
    assert f"warning: {address} opted out on deal {first}" in warned.one_line_error()
    await stack.ok("cancel", both, "--reason", "test done")


async def test_starting_the_same_deal_twice_is_refused(stack: Stack) -> None:
    deal_id = new_id()
    await start_rfp(stack, deal_id)
    before = await stack.status_json(deal_id)

    again = await stack.cli(*rfp_args(deal_id))
    assert again.code == 1
    line = again.one_line_error()
    assert f"deal {deal_id!r} was already started" in line
    assert f"starter.py status {deal_id}" in line
    assert await stack.status_json(deal_id) == before


async def test_signal_to_an_unknown_deal_says_there_is_no_such_deal(stack: Stack) -> None:
    deal_id = new_id("NOPE")
    result = await stack.cli("agreed", deal_id)
    assert result.code == 1
    assert result.one_line_error().startswith(f"dealflow: no deal {deal_id!r}")
    shown = await stack.cli("status", deal_id)
    assert shown.code == 1
    assert "no deal" in shown.one_line_error()


async def test_signal_out_of_stage_is_refused_naming_the_stage_and_changes_nothing(
    stack: Stack,
) -> None:
    deal_id = new_id()
    await start_rfp(stack, deal_id)
    handle = stack.client.get_workflow_handle(workflow_id(deal_id), result_type=DealStatus)
    before = await stack.status_json(deal_id)
    events_before = len((await handle.fetch_history()).events)

    result = await stack.cli("delivered", deal_id)
    assert result.code == 1
    line = result.one_line_error()
    assert f"deal {deal_id!r} refused delivered" in line
    assert "'Proposal Received'" in line

    after = await stack.status_json(deal_id)
    assert after["stage"] == "Proposal Received"
    assert len(after["history"]) == len(before["history"])
    assert after == before
    # The validator refused it before anything reached the workflow's history.
    assert len((await handle.fetch_history()).events) == events_before
    assert [step_of(m) for m in stack.mail(deal_id)] == ["proposal"]


async def test_malformed_email_and_unknown_time_zone_are_refused_and_start_nothing(
    stack: Stack,
) -> None:
    bad_email, bad_zone = new_id(), new_id()

    result = await stack.cli(
        "start", "--id", bad_email, "--company", "Acme", "--kind", "rfp",
        "--contact", "Bob <not-an-email>", "--item", "Widget:1:100",
    )  # fmt: skip
    assert result.code == 1
    line = result.one_line_error()
    assert line.startswith("dealflow: contacts.0.email:"), line
    assert "email" in line.removeprefix("dealflow: contacts.0.email:")

    result = await stack.cli(
        "start", "--id", bad_zone, "--company", "Acme", "--kind", "rfp",
        "--contact", "Bob <bob@acme.example.org>", "--tz", "Mars/Base",
        "--item", "Widget:1:100",
    )  # fmt: skip
    assert result.code == 1
    line = result.one_line_error()
    assert "unknown time zone 'Mars/Base'" in line

    for deal_id in (bad_email, bad_zone):
        shown = await stack.cli("status", deal_id)
        assert shown.code == 1
        assert shown.one_line_error().startswith(f"dealflow: no deal {deal_id!r}")


@on_both_databases
async def test_rfq_discount_below_the_floor_is_refused(stack: Stack) -> None:
    deal_id = new_id()
    started = await stack.cli(
        "start", "--id", deal_id, "--company", "Acme", "--contact", BUYER,
        "--kind", "rfq", "--item", "Widget:10:100",
    )  # fmt: skip
    assert started.code == 0, started
    await stack.wait_for_mail(deal_id, 2)  # quotation and the rep's negotiation task
    before = await stack.status_json(deal_id)
    assert before["stage"] == "Quote Requested"
    assert Decimal(before["floor_total"]) == Decimal("900.00")

    refused = await stack.cli("discount", deal_id, "15")
    assert refused.code == 1
    line = refused.one_line_error()
    assert "below the floor of 900.00" in line
    assert "the most that can be conceded is 10.00%" in line
    assert await stack.status_json(deal_id) == before
    assert len(stack.mail(deal_id)) == 2
    # The refusal stays in the deal's audit trail in the ledger, with the reason.
    from sqlalchemy import select

    from ledger.tables import STAGE_EVENTS

    query = select(STAGE_EVENTS).where(
        STAGE_EVENTS.c.deal_id == deal_id, STAGE_EVENTS.c.accepted.is_(False)
    )
    [kept] = await stack.suppressions.database.run(lambda c: list(c.execute(query).mappings()))
    assert kept["signal"] == "discount_requested" and kept["source"] == "ops"
    assert "below the floor of 900.00" in kept["refusal"]

    granted = await stack.cli("discount", deal_id, "5")
    assert granted.code == 0, granted
    assert "stage is now Quote Requested" in granted.stdout
    after = await stack.status_json(deal_id)
    assert Decimal(after["value"]) == Decimal("950.00")
    assert Decimal(after["discount_percent"]) == Decimal(5)
    shown = await stack.ok("status", deal_id)
    assert "value: EUR 950.00" in shown.stdout


async def test_bulk_start_starts_good_rows_and_reports_bad_ones_by_line(
    stack: Stack, tmp_path: Path
) -> None:
    ids = [new_id("BULK") for _ in range(5)]
    rows = [
        # CSV line 2..6 (line 1 is the header)
        [ids[0], "Good One", "Ann", "ann@one.example.org", "UTC", "", "rfp", "EUR",
         "Widget:2:100;Gadget:1:50"],
        [ids[1], "Bad Mail", "Bob", "bob-at-nowhere", "UTC", "", "rfp", "EUR", "Widget:1:100"],
        [ids[2], "Good Two", "Cy", "cy@two.example.org", "Europe/Berlin", "", "rfq", "EUR",
         "Widget:2:100;Gadget:1:50"],
        [ids[3], "Bad Zone", "Di", "di@zone.example.org", "Mars/Base", "", "rfp", "EUR",
         "Widget:1:100"],
        [ids[4], "Good Three", "Ed", "ed@three.example.org", "America/New_York", "", "rfi",
         "USD", ""],
    ]  # fmt: skip
    lines = [",".join(CSV_COLUMNS)] + [",".join(row) for row in rows]
    csv_file = tmp_path / "deals.csv"
    csv_file.write_text("\n".join(lines) + "\n")

    result = await stack.cli("bulk-start", str(csv_file))
    assert result.code == 1, result
    assert "started 3 of 5 deals" in result.stdout
    report = result.stderr.splitlines()
    bad_mail = [line for line in report if ids[1] in line]
    bad_zone = [line for line in report if ids[3] in line]
    assert len(bad_mail) == 1 and "3" in bad_mail[0].split(ids[1])[0].split(), report
    assert "email" in bad_mail[0]
    assert len(bad_zone) == 1 and "5" in bad_zone[0].split(ids[3])[0].split(), report
    assert "unknown time zone 'Mars/Base'" in bad_zone[0]
    assert "dealflow: 2 row(s) not started" in report[-1]
    for good in (ids[0], ids[2], ids[4]):
        assert not any(good in line for line in report)

    for good in (ids[0], ids[2], ids[4]):
        shown = await stack.cli("status", good)
        assert shown.code == 0, shown
    for bad in (ids[1], ids[3]):
        shown = await stack.cli("status", bad)
        assert shown.code == 1
        assert "no deal" in shown.one_line_error()


async def ledger_rows(
    stack: Stack, query: Any, done: Callable[[list[Any]], bool], what: str
) -> list[Any]:
    """The query's rows from the stack's ledger once ``done`` holds of them: a deal records
    itself a moment after it changes."""
    deadline = asyncio.get_running_loop().time() + MAIL_WITHIN
    while True:
        found = await stack.suppressions.database.run(lambda c: list(c.execute(query)))
        if done(found):
            return found
        assert asyncio.get_running_loop().time() < deadline, f"the ledger never {what}: {found}"
        await asyncio.sleep(0.1)


async def pipeline_of(stack: Stack, owner: str, done: Callable[[dict[str, Any]], bool]) -> Any:
    """The owner's pipeline as JSON, once ``done`` holds (visibility lags the deals)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAIL_WITHIN
    while True:
        view = json.loads((await stack.ok("pipeline", "--owner", owner, "--json")).stdout)
        if done(view):
            return view
        assert loop.time() < deadline, f"the pipeline never got there: {view}"
        await asyncio.sleep(0.5)


def totals(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, Decimal]]:
    return {(r["stage"], r["currency"]): (r["deals"], Decimal(r["value"])) for r in rows}


@on_both_databases
async def test_pipeline_keeps_currencies_and_open_and_closed_deals_apart(stack: Stack) -> None:
    owner = f"rep-{uuid.uuid4().hex[:8]}@seller.example.com"
    first, second, dollars, shut, held = (new_id() for _ in range(5))
    await start_rfp(stack, first, "Widget:3:100", owner=owner)
    await start_rfp(stack, second, "Gadget:2:250", owner=owner)
    for deal_id in (shut, held):
        await start_rfp(stack, deal_id, "Widget:1:100", owner=owner)
    usd = [*rfp_args(dollars, "Widget:1:900", owner=owner), "--currency", "USD"]
    assert (await stack.cli(*usd)).code == 0
    await stack.ok("cancel", shut, "--reason", "buyer went bust")
    await stack.ok("pause", held)

    view = await pipeline_of(
        stack, owner, lambda v: len(v["closed"]) == 1 and len(v["stale"]) == 1
        and sum(r["deals"] for r in v["open"]) == 4,
    )  # fmt: skip
    assert totals(view["open"]) == {
        ("Proposal Received", "EUR"): (3, Decimal("900.00")),
        ("Proposal Received", "USD"): (1, Decimal("900.00")),
    }
    assert totals(view["closed"]) == {("Cancelled", "EUR"): (1, Decimal("100.00"))}
    assert [(o["currency"], o["open_deals"], Decimal(o["open_value"])) for o in view["owners"]] == [
        ("EUR", 3, Decimal("900.00")),
        ("USD", 1, Decimal("900.00")),
    ]
    # Paused: nothing planned, so it is named.
    assert [(s["deal_id"], s["next_touch"]) for s in view["stale"]] == [(held, None)]

    shown = await stack.ok("pipeline", "--owner", owner)
    assert "EUR" in shown.stdout and "USD" in shown.stdout and "nothing planned" in shown.stdout
    assert "closed deals" in shown.stdout and held in shown.stdout


@on_both_databases
async def test_a_deal_is_in_the_pipeline_with_its_stage_and_value_before_any_email(
    stack: Stack,
) -> None:
    """No worker polls the queue these deals start on, so nothing of theirs runs: what the
    pipeline shows was set when they started (an evening import shows up at once)."""
    owner = f"rep-{uuid.uuid4().hex[:8]}@seller.example.com"
    rfp, rfq = new_id(), new_id()
    idle = {"DEALFLOW_TEMPORAL_TASK_QUEUE": f"idle-{uuid.uuid4().hex[:8]}"}
    started = await stack.cli(*rfp_args(rfp, "Widget:3:100", owner=owner), **idle)
    assert started.code == 0, started
    quote = ["start", "--id", rfq, "--company", "Q Ltd", "--contact", BUYER, "--kind", "rfq",
             "--item", "Gadget:2:250", "--owner", owner]  # fmt: skip
    assert (await stack.cli(*quote, **idle)).code == 0

    view = await pipeline_of(stack, owner, lambda v: sum(r["deals"] for r in v["open"]) == 2)
    assert totals(view["open"]) == {
        ("Requirements Clarified", "EUR"): (1, Decimal("300.00")),
        ("Quote Requested", "EUR"): (1, Decimal("500.00")),
    }
    # Nothing has run them: no touch is planned yet, and the pipeline says so.
    assert sorted(s["deal_id"] for s in view["stale"]) == sorted([rfp, rfq])
    assert stack.mail(rfp) == [] and stack.mail(rfq) == []
    for deal_id in (rfp, rfq):
        await stack.client.get_workflow_handle(workflow_id(deal_id)).terminate("test done")


async def test_pause_and_resume_all_deals_of_a_rep(stack: Stack) -> None:
    owner = f"rep-{uuid.uuid4().hex[:8]}@seller.example.com"
    mine, theirs = [new_id(), new_id()], new_id()
    for deal_id in mine:
        await start_rfp(stack, deal_id, owner=owner)
    await start_rfp(stack, theirs)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAIL_WITHIN
    # A winter date within the ten years a date may lie ahead (by the CLI's own clock,
    # which is what it checks dates against).
    year = deal_intake.today().year + 5
    while True:  # the visibility store catches up with new deals
        paused = await stack.ok("pause", "--owner", owner, "--until", f"{year}-01-04")
        if "paused: 2 deal(s)" in paused.stdout or loop.time() > deadline:
            break
        await stack.cli("resume", "--owner", owner)
        await asyncio.sleep(0.5)
    assert "paused: 2 deal(s)" in paused.stdout, paused
    for deal_id in mine:
        state = await stack.status_json(deal_id)
        assert state["paused"] is True
        held = datetime.fromisoformat(state["held_until"])
        assert held == datetime(year, 1, 4, 8, tzinfo=UTC)  # 09:00 in Berlin
    assert (await stack.status_json(theirs))["paused"] is False

    resumed = await stack.ok("resume", "--owner", owner)
    assert "resumed: 2 deal(s)" in resumed.stdout
    for deal_id in mine:
        assert (await stack.status_json(deal_id))["paused"] is False
    again = await stack.cli("resume", mine[0])
    assert again.code == 1 and "not paused" in again.one_line_error()


def deal_file(tmp_path: Path, deal_id: str, **fields: Any) -> Path:
    path = tmp_path / f"{deal_id}.json"
    path.write_text(json.dumps({"deal_id": deal_id, **fields}))
    return path


async def test_a_whole_won_deal_through_the_cli(stack: Stack, tmp_path: Path) -> None:
    deal_id = new_id("WON")
    # The demo cadence, with the post-delivery waits shortened to seconds (real time here).
    file = deal_file(
        tmp_path,
        deal_id,
        company="Buyer & Sons",
        kind="rfp",
        contacts=[{"name": "Bea Buyer", "email": "bea@buyer.example.org",
                   "time_zone": "Europe/Berlin"}],
        items=[{"name": "Conveyor", "quantity": 2, "list_price": "5000.00"}],
        cadence={"check_in_after": "PT1S", "win_loss_after": "PT2S"},
    )  # fmt: skip
    await stack.ok("start", "--file", str(file))
    await stack.wait_for_stage(deal_id, "Proposal Received")

    agreed = await stack.ok("agreed", deal_id, "--note", "happy with the proposal")
    assert "price_agreed recorded; stage is now Price Agreed" in agreed.stdout
    await stack.wait_for_stage(deal_id, "Offer Received")

    # Three days after the server's today (the deal's last step), not this machine's.
    server_today = (await stack.query(deal_id)).history[-1].at.date()
    delivery = (server_today + timedelta(days=3)).isoformat()
    ordered = await stack.ok("order", deal_id, "--delivery", delivery, "--po", "PO-1")
    assert "stage is now Order Placed" in ordered.stdout
    await stack.wait_for_stage(deal_id, "Order Confirmed")

    delivered = await stack.ok("delivered", deal_id)
    assert "stage is now Delivered" in delivered.stdout
    await stack.wait_for_stage(deal_id, "Win-Loss Invited")

    answers = ["interview", deal_id, "--why", "price and service", "--process", "CFO and ops"]
    for flag, words in (("--rep", "excellent"), ("--cooperation", "6")):
        rated = ["--rep", "5", "--cooperation", "4", flag, words]
        refused = await stack.cli(*answers, *rated)
        assert refused.code == 1, refused
        assert refused.one_line_error().startswith(f"dealflow: {flag} '{words}': give a whole")
    refused = await stack.cli(*answers, "--rep", "5", "--cooperation", "4", "--reason", "Cheap!")
    assert refused.code == 1 and "'Cheap!' is not a reason code" in refused.one_line_error()
    interviewed = await stack.ok(
        *answers, "--rep", "5", "--cooperation", "4", "--reason", "price",
        "--reason", "lead_time", "--participants", "Bea Buyer, our rep",
    )  # fmt: skip
    assert "stage is now Won" in interviewed.stdout
    final = await stack.status_json(deal_id)
    assert final["stage"] == "Won"
    assert final["interview"]["why_decided"] == "price and service"
    assert (final["interview"]["rep_rating"], final["interview"]["cooperation_rating"]) == (5, 4)
    assert final["interview"]["reasons"] == ["lead_time", "price"]
    assert final["interview"]["participants"] == "Bea Buyer, our rep"
    assert [change["stage"] for change in final["history"]] == [
        "Requirements Clarified", "Proposal Received", "Price Agreed", "Offer Received",
        "Order Placed", "Order Confirmed", "Delivered", "Checked In", "Win-Loss Invited", "Won",
    ]  # fmt: skip

    assert await stack.wait_for_mail(deal_id, 10) == [
        "proposal",
        "final_offer",
        "order_confirmation",
        "fulfilment_hand_over",
        "delivery_notice",
        "task_issue_invoice",
        "check_in",
        "task_check_in_call",
        "win_loss_invitation",
        "task_win_loss_interview",
    ]
    handle = stack.client.get_workflow_handle(workflow_id(deal_id), result_type=DealStatus)
    result = await asyncio.wait_for(handle.result(), MAIL_WITHIN)
    assert result.stage.value == "Won"


async def test_cancel_ends_the_deal_and_sends_nothing_more(stack: Stack) -> None:
    deal_id = new_id()
    await start_rfp(stack, deal_id)

    cancelled = await stack.cli("cancel", deal_id, "--reason", "buyer went bust")
    assert cancelled.code == 0, cancelled
    assert cancelled.stdout.strip() == f"{deal_id}: cancelled recorded; stage is now Cancelled"
    assert cancelled.stderr == ""
    handle = stack.client.get_workflow_handle(workflow_id(deal_id), result_type=DealStatus)
    result = await asyncio.wait_for(handle.result(), MAIL_WITHIN)
    assert result.stage.value == "Cancelled"
    assert result.outcome_reason == "buyer went bust"
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    final = await stack.status_json(deal_id)
    assert final["stage"] == "Cancelled"
    assert [m["template"] for m in final["messages"]] == ["proposal"]


@on_both_databases
async def test_lost_takes_a_reason_code_of_the_configured_list(stack: Stack) -> None:
    deal_id = new_id()
    await start_rfp(stack, deal_id)
    unknown = await stack.cli("lost", deal_id, "--reason", "too expensive")
    assert unknown.code == 1
    assert unknown.one_line_error() == (
        "dealflow: --reason 'too expensive' is not a lost reason; use one of price, timing, "
        "competitor, no_budget, no_decision, other (DEALFLOW_LOST_REASONS lists them)"
    )
    bare = await stack.cli("lost", deal_id, "--reason", "other")
    assert bare.code == 1 and "--reason other needs --note" in bare.one_line_error()
    custom = await stack.cli("lost", deal_id, "--reason", "x", DEALFLOW_LOST_REASONS="x,y-z")
    assert custom.code == 2 and "DEALFLOW_LOST_REASONS: 'y-z' is not a code" in custom.stderr
    assert (await stack.status_json(deal_id))["stage"] == "Proposal Received"

    lost = await stack.ok("lost", deal_id, "--reason", "competitor", "--note", "Rival GmbH")
    assert lost.stdout.strip() == f"{deal_id}: lost recorded; stage is now Lost"
    final = await stack.status_json(deal_id)
    assert final["stage"] == "Lost" and final["outcome_reason"] == "Rival GmbH"

    # A list of one's own replaces the default one: its codes are taken, no others.
    own = {"DEALFLOW_LOST_REASONS": "went_dark, budget_cut"}
    other = new_id()
    await start_rfp(stack, other)
    default_code = await stack.cli("lost", other, "--reason", "price", **own)
    assert default_code.code == 1
    assert default_code.one_line_error() == (
        "dealflow: --reason 'price' is not a lost reason; use one of went_dark, budget_cut "
        "(DEALFLOW_LOST_REASONS lists them)"
    )
    taken = await stack.cli("lost", other, "--reason", "budget_cut", **own)
    assert taken.code == 0, taken
    assert taken.stdout.strip() == f"{other}: lost recorded; stage is now Lost"
    shown = await stack.status_json(other)
    assert (shown["lost_reason"], shown["outcome_reason"]) == ("budget_cut", "budget_cut")
    # And the ledger keeps the code.
    from sqlalchemy import select

    from ledger.tables import DEALS

    query = select(DEALS.c.outcome, DEALS.c.lost_reason).where(DEALS.c.deal_id == other)
    rows = await ledger_rows(stack, query, lambda r: bool(r) and r[0][0] is not None, "lost it")
    assert [tuple(row) for row in rows] == [("Lost", "budget_cut")]


async def test_signal_to_a_closed_deal_says_it_is_closed(stack: Stack) -> None:
    deal_id = new_id()
    await start_rfp(stack, deal_id)
    await stack.ok("cancel", deal_id, "--reason", "buyer went bust")
    handle = stack.client.get_workflow_handle(workflow_id(deal_id), result_type=DealStatus)
    await asyncio.wait_for(handle.result(), MAIL_WITHIN)
    for signal in (["agreed", deal_id], ["cancel", deal_id, "--reason", "again"]):
        result = await stack.cli(*signal)
        assert result.code == 1
        assert f"deal {deal_id!r} is closed (Cancelled)" in result.one_line_error()


async def test_user_text_with_markup_brackets_is_printed_as_is(stack: Stack) -> None:
    deal_id = new_id()
    await start_rfp(stack, deal_id)
    next_year = f"{deal_intake.today().year + 1}-01-05"
    await stack.ok("next-step", deal_id, next_year, "--note", "buyer said [/b] ok [bold]")
    shown = await stack.ok("status", deal_id)
    assert "buyer said [/b] ok [bold]" in shown.stdout
    result = await stack.cli("start", "--id", new_id(), "--company", "X", "--kind", "rfp",
                             "--contact", "a@example.org", "--item", "Widget[/bold]:1")  # fmt: skip
    assert result.code == 1
    assert "Widget[/bold]:1" in result.one_line_error()
    # Nor as emoji codes: ":one:" and ":smile:" stay the text the user typed.
    emoji = await stack.cli("start", "--id", new_id(), "--company", "X", "--kind", "rfp",
                            "--contact", "a@example.org", "--item", "X:one:100")  # fmt: skip
    assert emoji.code == 1 and "X:one:100" in emoji.one_line_error()
    unknown = await stack.cli("status", ":smile:")
    assert unknown.code == 1 and "no deal ':smile:'" in unknown.one_line_error()


async def test_pipeline_owner_must_be_an_address(stack: Stack) -> None:
    result = await stack.cli("pipeline", "--owner", "x' OR DealOwner != '")
    assert result.code == 1
    assert "is not an email address" in result.one_line_error()


async def test_unreachable_temporal_is_one_line(stack: Stack) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = await stack.cli("status", new_id(), DEALFLOW_TEMPORAL_ADDRESS=address)
    assert result.code == 1
    line = result.one_line_error()
    assert f"cannot reach Temporal at {address}" in line
    assert "DEALFLOW_TEMPORAL_ADDRESS" in line


async def test_invalid_setting_exits_2_naming_the_variable(stack: Stack) -> None:
    result = await stack.cli("status", new_id(), DEALFLOW_SMTP_PORT="abc")
    assert result.code == 2
    line = result.one_line_error()
    assert "DEALFLOW_SMTP_PORT" in line
    assert line.startswith("dealflow: invalid setting")


async def test_inbox_without_a_mailbox_poller_says_how_to_configure_one(stack: Stack) -> None:
    result = await stack.cli("inbox")
    assert result.code == 1
    line = result.one_line_error()
    assert line.startswith("dealflow: no mailbox poller is running")
    assert "DEALFLOW_IMAP_HOST" in line


async def test_imap_host_without_credentials_exits_2_naming_the_variable(stack: Stack) -> None:
    result = await stack.cli("inbox", DEALFLOW_IMAP_HOST="imap.example.com")
    assert result.code == 2
    assert "DEALFLOW_IMAP_USERNAME" in result.one_line_error()


def unique_buyer() -> tuple[str, str]:
    """A contact no other test uses: suppressing it must not refuse other tests' deals."""
    address = f"una-{uuid.uuid4().hex[:8]}@buyer.example.org"
    return f"Una Unique <{address}>", address


@on_both_databases
async def test_an_opt_out_on_a_closed_deal_still_suppresses_the_address(stack: Stack) -> None:
    deal_id = new_id()
    contact, address = unique_buyer()
    args = ["--company", "Buyer & Sons", "--kind", "rfp", "--item", "Widget:1:100"]
    await stack.ok("start", "--id", deal_id, "--contact", contact, *args)
    await stack.wait_for_stage(deal_id, "Proposal Received")
    await stack.ok("cancel", deal_id, "--reason", "buyer went bust")
    handle = stack.client.get_workflow_handle(workflow_id(deal_id), result_type=DealStatus)
    await asyncio.wait_for(handle.result(), MAIL_WITHIN)

    told = await stack.ok("optout", deal_id, "--address", address.upper())
    assert f"{address}: on the suppression list for every deal" in told.stdout
    assert f"{deal_id}: not told (deal {deal_id!r} is closed (Cancelled)" in told.stdout
    entry = (await stack.suppressions.find([address]))[address]
    assert (entry.reason, entry.source, entry.deal_id) == ("opted_out", "cli", deal_id)

    # Naming nobody on a deal that is gone cannot work: one line says what to add.
    unknown = await stack.cli("optout", new_id())
    assert unknown.code == 1
    assert "name the address with --address" in unknown.one_line_error()
    # An address that is not the deal's contact is refused before anything is written.
    open_deal = new_id()
    await stack.ok("start", "--id", open_deal, "--contact", unique_buyer()[0], *args)
    stranger = f"stranger-{uuid.uuid4().hex[:6]}@else.example.org"
    refused = await stack.cli("optout", open_deal, "--address", stranger)
    assert refused.code == 1
    assert f"{stranger} is not a contact of deal {open_deal!r}" in refused.one_line_error()
    assert await stack.suppressions.find([stranger]) == {}
    await stack.client.get_workflow_handle(workflow_id(open_deal)).terminate("test done")


@on_both_databases
async def test_ops_list_show_and_lift_suppressed_addresses(stack: Stack) -> None:
    _, address = unique_buyer()
    deal_id = new_id()
    await stack.suppressions.add(
        address, SuppressionReason.BOUNCED, SuppressionSource.SMTP_BOUNCE,
        now=LEDGER_INSTANT, detail="550 5.1.1 no such user", deal_id=deal_id,
    )  # fmt: skip
    listed = await stack.ok("suppression", "list")
    row = next(line for line in listed.stdout.splitlines() if address in line)
    assert "bounced" in row and "smtp bounce" in row and deal_id in row
    shown = await stack.ok("suppression", "show", address.upper())
    assert f"address:   {address}" in shown.stdout and "550 5.1.1 no such user" in shown.stdout
    assert "state:     suppressed (no deal mails this address)" in shown.stdout

    nobody = await stack.cli("suppression", "show", f"nobody-{uuid.uuid4().hex[:6]}@x.example")
    assert nobody.code == 1 and "is not on the suppression list" in nobody.one_line_error()
    garbage = await stack.cli("suppression", "show", "not-an-address")
    assert garbage.code == 1 and "is not an email address" in garbage.one_line_error()
    no_reason = await stack.cli("suppression", "lift", address)
    assert no_reason.code == 2 and "--reason" in no_reason.stderr
    blank = await stack.cli("suppression", "lift", address, "--reason", " ")
    assert blank.code == 1 and "--reason must say why" in blank.one_line_error()

    lifted = await stack.ok("suppression", "lift", address, "--reason", "new mailbox, confirmed")
    assert f"{address}: lifted (new mailbox, confirmed)" in lifted.stdout
    assert await stack.suppressions.find([address]) == {}
    again = await stack.cli("suppression", "lift", address, "--reason", "twice")
    assert again.code == 1 and "is not on the suppression list" in again.one_line_error()
    assert address not in (await stack.ok("suppression", "list")).stdout
    assert address in (await stack.ok("suppression", "list", "--lifted")).stdout
    shown = await stack.ok("suppression", "show", address)
    assert "lifted (mail may go to this address again)" in shown.stdout


@on_both_databases
async def test_suppressed_address_workflows_of_earlier_versions_move_into_the_ledger(
    stack: Stack,
) -> None:
    """Earlier versions kept each entry as an open workflow named after the address; the
    import moves them into the ledger and ends them, and running it again moves nothing."""
    legacy_queue = f"legacy-{uuid.uuid4().hex[:8]}"  # polled by nobody, as after an upgrade
    at = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    addresses = {unique_buyer()[1]: "opted_out", unique_buyer()[1]: "bounced"}
    handles = []
    for address, reason in addresses.items():
        entry = {"address": address, "reason": reason, "detail": "old", "deal_id": "OLD-1",
                 "at": at.isoformat()}  # fmt: skip
        started = await stack.client.start_workflow(
            LEGACY_SUPPRESSION_WORKFLOW,
            entry,
            id=f"suppressed-{address}",
            task_queue=legacy_queue,
            memo={"entry": json.dumps(entry)},
        )
        handles.append(started)
    query = f'WorkflowType = "{LEGACY_SUPPRESSION_WORKFLOW}" AND ExecutionStatus = "Running"'
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAIL_WITHIN
    while (await stack.client.count_workflows(query)).count < len(addresses):
        assert loop.time() < deadline, "visibility never listed the legacy workflows"
        await asyncio.sleep(0.2)

    moved = await stack.ok("suppression", "import-workflows")
    assert f"{len(addresses)} suppressed address(es) moved into the ledger" in moved.stdout
    found = await stack.suppressions.find(list(addresses))
    for address, reason in addresses.items():
        entry = found[address]
        assert (entry.reason, entry.source, entry.deal_id) == (reason, "imported", "OLD-1")
        assert entry.suppressed_at == at
    for handle in handles:
        assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    while (await stack.client.count_workflows(query)).count:
        assert loop.time() < deadline, "visibility still lists the ended workflows"
        await asyncio.sleep(0.2)
    again = await stack.ok("suppression", "import-workflows")
    assert "0 suppressed address(es) moved" in again.stdout


# --- bounded input (README: "What a deal accepts"): one line, nothing started ---


async def test_out_of_bounds_values_are_refused_in_one_line_and_start_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    def start_args(deal_id: str, **flags: str) -> list[str]:
        options = {"--company": "Acme", "--contact": BUYER, "--kind": "rfq",
                   "--item": "Widget:1:100", **flags}  # fmt: skip
        return ["start", "--id", deal_id, *(part for pair in options.items() for part in pair)]

    name_file = deal_file(
        tmp_path, new_id(), company="Acme", kind="rfi",
        contacts=[{"name": "Ann\nBcc: all@example.org", "email": "ann@buyer.example.org"}],
    )  # fmt: skip
    latin_file = tmp_path / "latin.json"
    latin_file.write_bytes(json.dumps({"company": "Müller"}, ensure_ascii=False).encode("latin-1"))
    cases = [
        (start_args(new_id(), **{"--item": "Widget:1e30:100"}),
         "items.0.quantity 1E+30 is over the most a line can hold, 1,000,000,000"),
        (start_args(new_id(), **{"--company": "x" * 100_000}),
         "company is 100,000 characters long; at most 200"),
        (start_args(new_id(), **{"--currency": "ABC"}), "currency 'ABC' is not an ISO 4217 code"),
        (["start", "--file", str(name_file)], "contacts.0.name holds a line break (U+000A)"),
        (["start", "--id", new_id(), "--file", str(latin_file)], "is not UTF-8"),
        (["order", new_id(), "--delivery", "9999-12-31"], "the date 9999-12-31 is after"),
        (["delivery-date", new_id(), "1999-12-31", "--reason", "typo"],
         "the date 1999-12-31 is before 2000-01-01"),
    ]  # fmt: skip
    for args, says in cases:
        result = await stack.cli(*args)
        assert result.code == 1, result
        line = result.one_line_error()
        assert line.startswith("dealflow: ") and says in line, line
        assert result.stdout == ""
    for args, _ in cases[:3]:
        unknown = await stack.cli("status", args[2])
        assert unknown.code == 1 and "no deal" in unknown.one_line_error()


def csv_row(deal_id: str, company: str = "Acme", delimiter: str = ",") -> str:
    cells = [deal_id, company, "Ann", "ann@buyer.example.org", "UTC", "", "rfp", "EUR",
             "Widget:1:100"]  # fmt: skip
    return delimiter.join(cells)


def written(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


async def test_bulk_start_reads_excel_csv_utf8_with_a_bom(stack: Stack, tmp_path: Path) -> None:
    """A BOM once gave 'started 0 of 7', each row 'missing column value(s): deal_id'."""
    ids = [new_id("BOM") for _ in range(7)]
    text = "\r\n".join([",".join(CSV_COLUMNS), *(csv_row(i, "Müller GmbH") for i in ids)])
    excel = written(tmp_path / "excel.csv", codecs.BOM_UTF8 + text.encode())
    result = await stack.cli("bulk-start", excel)
    assert result.code == 0, result
    assert "started 7 of 7 deals" in result.stdout
    assert (await stack.status_json(ids[0]))["company"] == "Müller GmbH"


async def test_bulk_start_reads_a_semicolon_file_and_refuses_bad_rows_one_line_each(
    stack: Stack, tmp_path: Path
) -> None:
    """A Latin-1 byte or a 200 KB cell once tracebacked and started none of the good rows."""
    ids = [new_id("SEMI") for _ in range(5)]
    lines = [
        ";".join(CSV_COLUMNS).encode(),
        csv_row(ids[0], "Acme, Inc.", ";").encode(),  # line 2: a comma needs no quotes here
        csv_row(ids[1], "Müller", ";").encode("latin-1"),  # line 3: not UTF-8
        csv_row(ids[2], '"' + "x" * 200_000 + '"', ";").encode(),  # line 4: a cell over 8 KiB
        csv_row(ids[3], "Grün & Söhne", ";").encode(),  # line 5
        csv_row(ids[4], "Acme;Ltd", ";").encode(),  # line 6: a ';' not quoted
    ]
    semicolons = written(tmp_path / "semicolon.csv", b"\r\n".join(lines) + b"\r\n")
    result = await stack.cli("bulk-start", semicolons)
    assert result.code == 1, result
    assert "started 2 of 5 deals" in result.stdout
    report = result.stderr.splitlines()
    for deal_id, line, says in [
        (ids[1], "3", "not UTF-8 (byte 0xFC at position"),
        (ids[2], "4", "column company is 200,000 characters long; at most 8,192"),
        (ids[4], "6", "10 cells for 9 columns: quote a value that holds a ';'"),
    ]:
        found = [text for text in report if deal_id in text]
        assert len(found) == 1 and says in found[0], report
        assert line in found[0].split(deal_id)[0].split(), found
    assert report[-1] == "dealflow: 3 row(s) not started; fix them and run again"
    assert (await stack.status_json(ids[0]))["company"] == "Acme, Inc."
    assert (await stack.status_json(ids[3]))["company"] == "Grün & Söhne"
    for bad in (ids[1], ids[2], ids[4]):
        assert "no deal" in (await stack.cli("status", bad)).one_line_error()


async def test_bulk_start_refuses_a_file_it_cannot_read_in_one_line(
    stack: Stack, tmp_path: Path
) -> None:
    header = ",".join(CSV_COLUMNS)
    first = new_id("FILE")
    cases = [
        ((header + "\n" + csv_row(first) + "\n").encode("utf-16"), "is UTF-16 text"),
        ((header + "\n" + "".join(csv_row(new_id()) + "\n" for _ in range(10_001))).encode(),
         "has more than 10,000 rows: split it"),
        (b"deal,firm\n1,2\n", "the header has no column deal_id, company"),
    ]  # fmt: skip
    for content, says in cases:
        result = await stack.cli("bulk-start", written(tmp_path / "deals.csv", content))
        assert result.code == 1, result
        assert says in result.one_line_error() and result.stdout == ""
    assert "no deal" in (await stack.cli("status", first)).one_line_error()


@on_both_databases
async def test_resend_delivered_marks_a_held_email_sent_and_the_deal_moves_on(
    stack: Stack,
) -> None:
    deal_id = new_id()
    proposal = f"<{deal_id}.001-proposal@example.com>"
    # An earlier attempt claimed the proposal and died before it read the relay's reply.
    ledger = SendLedger(stack.suppressions.database)
    await ledger.claim(
        message_id=proposal, deal_id=deal_id, template="proposal", attempt=1,
        worker="worker-that-died:4242", now=LEDGER_INSTANT,
    )  # fmt: skip
    args = ["--company", "Buyer & Sons", "--kind", "rfp", "--item", "Widget:1:100"]
    await stack.ok("start", "--id", deal_id, "--contact", unique_buyer()[0], *args)
    holding = await stack.wait_for(
        deal_id, lambda d: any(m.outcome == "failed" for m in d.messages), "holding"
    )
    assert await stack.wait_for_mail(deal_id, 1) == ["task_check_maybe_sent"]
    # The problem names the id to look for in the relay's log: the sealed one on the wire.
    held = next(m for m in holding.messages if m.outcome == "failed")
    wire = held.error.split("look for ", 1)[1].split(" ", 1)[0]
    assert wire.startswith("<") and deal_id not in wire

    # A Message-ID the deal does not hold is refused in one line, and nothing changes.
    wrong = await stack.cli("resend", deal_id, "--delivered", f"<{deal_id}.009-offer@x>")
    assert wrong.code == 1
    assert f"is not an email deal {deal_id!r} holds as maybe sent" in wrong.one_line_error()
    assert proposal in wrong.one_line_error()

    # Ops found it in the relay's log: the deal counts it sent; the buyer gets no copy.
    done = await stack.ok("resend", deal_id, "--delivered", wire.strip("<>"))
    assert f"{proposal}: marked delivered" in done.stdout
    assert f"{deal_id}: 1 email(s) queued again" in done.stdout
    deal = await stack.wait_for_stage(deal_id, "Proposal Received")
    assert deal.messages[-1].outcome == "sent" and deal.messages[-1].message_id == proposal
    row = await ledger.find(proposal)
    assert row is not None and row.state is SendState.SENT
    assert row.smtp_reply == "marked delivered by ops: found in the relay's log"
    await stack.ok("cancel", deal_id, "--reason", "test done")
    assert [step_of(m) for m in stack.mail(deal_id)] == ["task_check_maybe_sent"]


@on_both_databases
async def test_ledger_backfill_writes_what_the_deals_recorded_themselves(stack: Stack) -> None:
    from sqlalchemy import delete, select

    from ledger.tables import DEAL_CONTACTS, DEAL_EMAILS, DEALS, REP_TASKS, STAGE_EVENTS

    tables = (DEALS, DEAL_CONTACTS, STAGE_EVENTS, DEAL_EMAILS, REP_TASKS)
    ledger = stack.suppressions.database
    running, closed = new_id("OPEN"), new_id("SHUT")
    no_interview = {"DEALFLOW_CADENCE__WIN_LOSS_MIN_ORDER_VALUE": "1000000"}
    for deal_id in (running, closed):
        assert (await stack.cli(*rfp_args(deal_id), **no_interview)).code == 0
        await stack.wait_for_stage(deal_id, "Proposal Received")
    # Held still, so that what it recorded is what backfill finds.
    await stack.ok("pause", running)
    await stack.ok("lost", closed, "--reason", "timing", "--note", "budget moved to 2028")
    handle = stack.client.get_workflow_handle(workflow_id(closed), result_type=DealStatus)
    await asyncio.wait_for(handle.result(), MAIL_WITHIN)
    paused = select(STAGE_EVENTS).where(
        STAGE_EVENTS.c.deal_id == running, STAGE_EVENTS.c.signal == "paused"
    )
    deadline = asyncio.get_running_loop().time() + MAIL_WITHIN
    while await ledger.run(lambda c: c.execute(paused).first()) is None:
        assert asyncio.get_running_loop().time() < deadline, "the pause was never recorded"
        await asyncio.sleep(0.1)

    async def records() -> dict[str, list[dict[str, Any]]]:
        found = {}
        for table in tables:
            query = select(table).where(table.c.deal_id.in_([running, closed]))
            rows = await ledger.run(lambda c, q=query: [dict(r) for r in c.execute(q).mappings()])
            # When the row was written differs; what it says must not.
            found[table.name] = sorted(
                ({k: v for k, v in row.items() if k != "updated_at"} for row in rows), key=str
            )
        return found

    recorded = await records()
    assert len(recorded["deals"]) == 2 and recorded["stage_events"] and recorded["deal_emails"]
    assert {r["deal_id"]: r["lost_reason"] for r in recorded["deals"]} == {
        running: None,
        closed: "timing",
    }

    async def forget_all() -> None:
        for table in tables:
            statement = delete(table).where(table.c.deal_id.in_([running, closed]))
            await ledger.run(lambda c, s=statement: c.execute(s), write=True)

    # A deal terminated before any worker ran it has no status to ask for, and nothing
    # to record: backfill says so and goes on.
    never_ran = new_id("IDLE")
    idle = {"DEALFLOW_TEMPORAL_TASK_QUEUE": f"idle-{uuid.uuid4().hex[:8]}"}
    assert (await stack.cli(*rfp_args(never_ran), **idle)).code == 0
    await stack.client.get_workflow_handle(workflow_id(never_ran)).terminate("imported by mistake")

    await forget_all()
    filled = await stack.ok("ledger", "backfill")
    assert filled.stdout.startswith("backfilled "), filled.stdout
    assert "never ran (nothing to record)" in filled.stdout, filled.stdout
    assert (
        await ledger.run(
            lambda c: c.execute(select(DEALS).where(DEALS.c.deal_id == never_ran)).first()
        )
        is None
    )
    assert await records() == recorded
    again = await stack.ok("ledger", "backfill")  # nothing written twice
    assert again.stdout.split("(")[0] == filled.stdout.split("(")[0]
    assert await records() == recorded


def stays(history: list[Any]) -> dict[str, list[timedelta]]:
    """Each finished stay of a deal in a stage, by stage, from its history: from the change
    that moved it in to the one that moved it on (a signal that kept the stage is none)."""
    moves = [c for n, c in enumerate(history) if n == 0 or c.stage != history[n - 1].stage]
    found: dict[str, list[timedelta]] = {}
    for entered, left in itertools.pairwise(moves):
        found.setdefault(entered.stage.value, []).append(left.at - entered.at)
    return found


def median_and_p90(lengths: list[timedelta]) -> tuple[timedelta, timedelta]:
    """The reports' definitions: the median of an even count is the mean of the middle
    two; the 90th percentile is the nearest rank."""
    ordered = sorted(lengths)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return median, ordered[math.ceil(0.9 * len(ordered)) - 1]


def rate(numerator: int, deals: int) -> dict[str, Any]:
    """A rate as ``report --format json`` writes it, with a threshold of one deal."""
    return {"numerator": numerator, "deals": deals,
            "value": numerator / deals if deals else None, "enough": deals >= 1}  # fmt: skip


def near(shown: str | None, want: timedelta) -> bool:
    """A duration the ledger computed equals one from the deal's history, to the
    millisecond: durations are to the millisecond, and SQLite's date arithmetic rounds
    each instant to it before subtracting (PostgreSQL rounds the difference)."""
    assert shown is not None
    return abs(TypeAdapter(timedelta).validate_python(shown) - want) <= timedelta(milliseconds=1)


@on_both_databases
async def test_a_deal_deleted_from_temporal_still_shows_its_status_from_the_ledger(
    stack: Stack, tmp_path: Path
) -> None:
    """Two closed deals (one won with its interview, one lost after a follow-up) and one
    open deal of one rep: every report, the export and the dashboard show the figures
    their histories give, and the same ones once Temporal has deleted the closed deals."""
    from sqlalchemy import func, select
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest

    from dashboard.app import build_app
    from ledger.reports import ReportFilter
    from ledger.tables import STAGE_EVENTS
    from settings import Settings
    from tests.dashboard_pages import expected, shown

    owner = f"rep-{uuid.uuid4().hex[:8]}@seller.example.com"
    won, lost, open_deal = new_id("WON"), new_id("GONE"), new_id("OPEN")
    contact = {"name": "Bea Buyer", "email": "bea@buyer.example.org", "time_zone": "Europe/Berlin"}
    # No follow-up, reminder or no-response timer comes due during the test, but the lost
    # deal's one follow-up a second after its proposal; the lost deal has no interview.
    quiet = {"proposal": ["PT1H"], "offer": ["PT1H"], "win_loss": ["PT1H"],
             "no_response_after": "PT1H"}  # fmt: skip
    files = {
        won: {"items": [{"name": "Conveyor", "quantity": 2, "list_price": "5000.00"}],
              "cadence": {**quiet, "check_in_after": "PT1S", "win_loss_after": "PT2S"}},
        lost: {"items": [{"name": "Conveyor", "quantity": 2, "list_price": "700.00"},
                         {"name": "Installation", "quantity": 1, "list_price": "100.00"}],
               "cadence": {**quiet, "proposal": ["PT1S"], "win_loss_min_order_value": "1000000"}},
        open_deal: {"items": [{"name": "Widget", "quantity": 3, "list_price": "100.00"}],
                    "cadence": quiet},
    }  # fmt: skip
    for deal_id, fields in files.items():
        file = deal_file(tmp_path, deal_id, company="Buyer & Sons", kind="rfp", owner=owner,
                         contacts=[contact], **fields)  # fmt: skip
        await stack.ok("start", "--file", str(file))
        await stack.wait_for_stage(deal_id, "Proposal Received")

    # The lost deal: its follow-up goes out, a discount below the floor is refused, it is lost.
    assert await stack.wait_for_mail(lost, 2) == ["proposal", "proposal_follow_up"]
    await stack.cli("discount", lost, "50")  # refused: below the floor
    await stack.ok("lost", lost, "--reason", "price", "--note", "Rival [b]GmbH[/b] was cheaper")
    # The won deal, to its interview.
    await stack.ok("agreed", won)
    await stack.wait_for_stage(won, "Offer Received")
    server_today = (await stack.query(won)).history[-1].at.date()
    delivery = (server_today + timedelta(days=3)).isoformat()
    await stack.ok("order", won, "--delivery", delivery, "--po", "PO-1")
    await stack.wait_for_stage(won, "Order Confirmed")
    await stack.ok("delivered", won)
    await stack.wait_for_stage(won, "Win-Loss Invited")
    await stack.ok(
        "interview", won, "--why", "price and service", "--process", "CFO and ops",
        "--rep", "5", "--cooperation", "4", "--reason", "price", "--reason", "lead_time",
    )  # fmt: skip
    handles = {
        deal_id: stack.client.get_workflow_handle(workflow_id(deal_id), result_type=DealStatus)
        for deal_id in (won, lost)
    }
    # A deal ends once its records are in the ledger.
    final = {d: await asyncio.wait_for(h.result(), MAIL_WITHIN) for d, h in handles.items()}
    assert [c.stage.value for c in final[won].history] == [
        "Requirements Clarified", "Proposal Received", "Price Agreed", "Offer Received",
        "Order Placed", "Order Confirmed", "Delivered", "Checked In", "Win-Loss Invited", "Won",
    ]  # fmt: skip
    assert [c.stage.value for c in final[lost].history] == [
        "Requirements Clarified", "Proposal Received", "Lost",
    ]  # fmt: skip
    still_open = await stack.query(open_deal)
    assert [c.stage.value for c in still_open.history] == [
        "Requirements Clarified", "Proposal Received",
    ]  # fmt: skip
    recorded = select(func.count()).where(STAGE_EVENTS.c.deal_id == open_deal)
    await ledger_rows(stack, recorded, lambda r: r[0][0] == 2, "had the open deal's stages")

    async def report(name: str) -> Any:
        result = await stack.cli("report", name, "--owner", owner, "--format", "json",
                                 DEALFLOW_REPORT_MIN_DEALS="1")  # fmt: skip
        assert result.code == 0, result
        return json.loads(result.stdout)

    async def export(what: str) -> list[dict[str, Any]]:
        result = await stack.ok("export", what, "--owner", owner, "--format", "jsonl")
        return [json.loads(line) for line in result.stdout.splitlines()]

    names = ["funnel", "stages", "cycle", "forecast", "follow-ups", "win-loss"]
    ledger = stack.suppressions.database
    board = build_app(
        Settings(_env_file=None, database_url=ledger.url, data_dir=tmp_path, report_min_deals=1),  # type: ignore[call-arg]
        ledger,
    )

    async def everything() -> dict[str, Any]:
        # One after the other: each command has its own time bound on a loaded machine.
        found = {name: await report(name) for name in names}
        found["export"] = await export("deals")
        transport = httpx.ASGITransport(app=board, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as web:
            page = await web.get("/", params={"owner": owner})
        assert page.status_code == 200, page.text
        found["dashboard"] = shown(page.text)
        # The page's figures are the reports' for the same rep.
        assert found["dashboard"] == await expected(ledger, ReportFilter(owner=owner), 1)
        return found

    before = await everything()

    # What the namespace's retention does to a closed deal, at once.
    for handle in handles.values():
        await stack.client.workflow_service.delete_workflow_execution(
            DeleteWorkflowExecutionRequest(
                namespace=stack.client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=handle.id),
            )
        )
    deadline = asyncio.get_running_loop().time() + MAIL_WITHIN
    status: dict[str, Result] = {}
    for deal_id in (won, lost):
        while (shown_now := await stack.cli("status", deal_id)).code == 0 and (
            "from the ledger" not in shown_now.stderr
        ):
            assert asyncio.get_running_loop().time() < deadline, "Temporal kept the deal"
            await asyncio.sleep(0.2)
        status[deal_id] = shown_now
    shown_lost = status[lost]
    assert shown_lost.code == 0, shown_lost
    assert shown_lost.one_line_error().startswith("from the ledger: Temporal no longer holds")
    assert f"{lost} Buyer & Sons (RFP)" in shown_lost.stdout
    assert "stage: Lost  value: EUR 1,500.00" in shown_lost.stdout
    assert "outcome: Rival [b]GmbH[/b] was cheaper (reason: price)" in shown_lost.stdout
    assert "refused: " in shown_lost.stdout and "below the floor" in shown_lost.stdout
    assert status[won].code == 0 and "stage: Won  value: EUR 10,000.00" in status[won].stdout

    kept = json.loads((await stack.ok("status", lost, "--json")).stdout)
    assert kept["stage"] == "Lost" and kept["lost_reason"] == "price"
    assert [e["to_stage"] for e in kept["events"] if e["accepted"]] == [
        change.stage.value for change in final[lost].history
    ]
    assert [e["step"] for e in kept["emails"]] == [m.step for m in final[lost].messages]

    unknown = await stack.cli("status", new_id("NEVER"))
    assert unknown.code == 1 and "no deal" in unknown.one_line_error()

    # Every report, the export and the dashboard: the same figures as before the deletion...
    after = await everything()
    assert after == before

    # ...and those the three histories give.
    path = ["Inquiry Received", "Requirements Clarified", "Proposal Received", "Quote Requested",
            "Price Agreed", "Offer Received", "Order Placed", "Order Confirmed", "Delivered",
            "Checked In", "Win-Loss Invited", "Won"]  # fmt: skip
    won_only = path[4:11]  # the stages only the won deal reached, and left
    # stage: (reached, to the next stage, to Won)
    funnel = {
        "Inquiry Received": (0, rate(0, 0), rate(0, 0)),
        "Requirements Clarified": (3, rate(3, 3), rate(1, 2)),
        "Proposal Received": (3, rate(1, 2), rate(1, 2)),  # the open deal is still in it
        "Quote Requested": (0, rate(0, 0), rate(0, 0)),
        **{stage: (1, rate(1, 1), rate(1, 1)) for stage in won_only},
        "Won": (1, rate(0, 0), rate(1, 1)),
    }
    assert after["funnel"] == {
        "deals": 3,
        "rows": [
            {"stage": stage, "reached": funnel[stage][0], "to_next": funnel[stage][1],
             "to_won": funnel[stage][2]}
            for stage in path
        ],
    }  # fmt: skip

    histories = [final[won].history, final[lost].history, still_open.history]
    lengths: dict[str, list[timedelta]] = {}
    for history in histories:
        for stage, found in stays(history).items():
            lengths.setdefault(stage, []).extend(found)
    assert sorted(lengths) == sorted(path[1:3] + won_only)
    assert [(t["stage"], t["deals"]) for t in after["stages"]] == [
        (stage, len(lengths.get(stage, []))) for stage in path[:-1]
    ]
    for row in after["stages"]:
        if row["stage"] not in lengths:
            assert (row["median"], row["p90"]) == (None, None), row
            continue
        median, p90 = median_and_p90(lengths[row["stage"]])
        assert near(row["median"], median) and near(row["p90"], p90), (row, median, p90)

    cycle = after["cycle"]
    won_history = final[won].history
    assert cycle["cycle"]["deals"] == 1
    inquiry_to_won = won_history[-1].at - won_history[0].at
    assert near(cycle["cycle"]["median"], inquiry_to_won)
    assert cycle["cycle"]["p90"] == cycle["cycle"]["median"]
    assert cycle["win_rate"] == rate(1, 2)  # Won / (Won + Lost); the open deal is undecided
    assert cycle["average_won_size"] == [{"currency": "EUR", "deals": 1, "average": "10000.00"}]
    # Velocity: 1 open deal x 1/2 x 10,000.00 / the cycle in days (as the report has it).
    median = TypeAdapter(timedelta).validate_python(cycle["cycle"]["median"])
    seconds = Decimal(median // timedelta(microseconds=1)) / 10**6
    per_day = Decimal("10000.00") * 86400 / (2 * seconds)
    assert cycle["velocity"] == [
        {"currency": "EUR", "open_deals": 1, "win_rate": rate(1, 2), "average_won": "10000.00",
         "cycle_days": float(seconds) / 86400,
         "per_day": str(per_day.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))},
    ]  # fmt: skip

    # The open deal's 300.00 in Proposal Received, weighted by that stage's Won rate (1 of 2).
    assert after["forecast"] == [
        {"currency": "EUR", "stage": "Proposal Received", "open_deals": 1,
         "open_value": "300.00", "to_won": rate(1, 2), "weighted": "150.00"},
    ]  # fmt: skip

    # One follow-up (the lost deal's), answered by the loss; no deal went silent.
    left = {"Requirements Clarified": 3, "Proposal Received": 2, **dict.fromkeys(won_only, 1)}
    assert after["follow-ups"] == {
        "replies": [{"touch": 1, "replies": rate(1, 1)}],
        "no_response": [
            {"stage": stage, "rate": rate(0, left.get(stage, 0))} for stage in path[:-1]
        ],
    }

    interview_at = won_history[-1].at
    assert won_history[-1].signal == "interview_recorded"
    assert after["win-loss"] == {
        "reasons": [{"outcome": "Won", "code": "lead_time", "deals": 1},
                    {"outcome": "Won", "code": "price", "deals": 1}],
        "lost_reasons": [{"code": "price", "deals": 1}],
        "ratings": [{"outcome": "Won", "interviews": 1, "rep_rating": 5.0,
                     "cooperation_rating": 4.0}],
        "quotes": [{"deal_id": won, "outcome": "Won", "text": "price and service",
                    "at": after["win-loss"]["quotes"][0]["at"]}],
    }  # fmt: skip
    assert datetime.fromisoformat(after["win-loss"]["quotes"][0]["at"]) == interview_at

    exported = {
        r["deal_id"]: (r["stage"], r["outcome"], r["lost_reason"], r["value"])
        for r in after["export"]
    }
    assert exported == {
        won: ("Won", "Won", None, "10000.00"),
        lost: ("Lost", "Lost", "price", "1500.00"),
        open_deal: ("Proposal Received", None, None, "300.00"),
    }  # fmt: skip

    page = after["dashboard"]
    assert (page[f"deal/{won}/stage"], page[f"deal/{won}/value"]) == ("Won", "10,000.00 EUR")
    assert page[f"deal/{lost}/stage"] == "Lost (price)"
    assert page[f"deal/{open_deal}/stage"] == "Proposal Received"
    assert page["deals"] == "3" and page["win_rate"] == "50.0% (1 of 2)"
    await stack.client.get_workflow_handle(workflow_id(open_deal)).terminate("test done")
