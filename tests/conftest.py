"""Shared fixtures: a real Temporal test server, a real SMTP server on loopback, a worker.

Each test gets its own time-skipping server (function scope, as the SDK
advises), its own SMTP sink on a free port and its own task queue. The server
is skipped to a named start instant before anything starts (``start_instant``,
by default a quiet Tuesday 10:00 in Berlin; a test may parametrize it), so no
test depends on the hour or the weekday at which it runs.

Waits are for conditions, with generous bounds: CI shares two cores with other
work, so a bound says "something is broken", never "this machine is slow".
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from activities.mailer import SEND_EMAIL
from activities.signed_tokens import TokenSigner
from deal_intake import build_deal
from devstack import OutboxSink, installed_binary, register_search_attributes
from ledger import schema
from ledger.database import LedgerDatabase
from ledger.suppression_list import SuppressionList
from payload_codec import encrypted_data_converter
from realstack.deployment import COMMON_SETTINGS
from realstack.relay import own_parts
from settings import Settings, load_settings, parse_codec_keys
from starter import start_deal, start_options
from tests.clock import QUIET_TUESDAY_MORNING, BuyerCalendar, StartInstant
from tests.databases import PostgresCluster, start_postgres
from worker import build_worker
from workflows.deal import DealWorkflow
from workflows.models import DealInput

# The tests' payload codec key (a fixed, published one: accepted with DEALFLOW_DEV only).
# Every client of a test's deals, and the worker through its client, encrypts with it.
TEST_CODEC_KEYS = "test-1=" + "RGVhbGZsb3cgdGVzdHM6IG5vdCBmb3IgcmVhbCB1c2U="


def codec_data_converter() -> DataConverter:
    """pydantic + the payload codec with the tests' key: what every test client uses."""
    return encrypted_data_converter(parse_codec_keys(TEST_CODEC_KEYS))


@pytest.fixture
def sink() -> Any:
    outbox = OutboxSink().start()
    yield outbox
    outbox.stop()


# Parametrize ``database`` with this to run a test on both ledger databases.
DATABASES = ["sqlite", "postgresql"]
on_both_databases = pytest.mark.parametrize("database", DATABASES)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    yield from start_postgres()


@pytest.fixture
def database() -> str:
    """Which ledger database a test runs on; SQLite, the embedded default, unless a test
    asks for both (``on_both_databases``)."""
    return "sqlite"


async def empty_database(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A new, empty database (no schema) on ``database``."""
    if database == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        return await cluster.create_database()
    return f"sqlite:///{tmp_path / 'empty.sqlite3'}"


@pytest.fixture
async def ledger_url(
    database: str, tmp_path: Path, request: pytest.FixtureRequest, migrated_sqlite: Path
) -> str:
    """A fresh, migrated ledger database for one test."""
    if database == "postgresql":
        url = await empty_database(database, tmp_path, request)
        await schema.upgrade(url)
        return url
    # A copy of a file migrated once per session: the same schema, without the cost.
    copy = tmp_path / "ledger.sqlite3"
    shutil.copyfile(migrated_sqlite, copy)
    return f"sqlite:///{copy}"


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "migrated.sqlite3"
    asyncio.run(schema.upgrade(f"sqlite:///{path}"))
    # One file, no write-ahead log beside it, so a plain copy is the whole database.
    sqlite3.connect(path).execute("PRAGMA journal_mode=DELETE").close()
    return path


@pytest.fixture
async def suppressions(ledger_url: str) -> AsyncIterator[SuppressionList]:
    """The test's own ledger's suppression list (the one its worker reads)."""
    database = LedgerDatabase(ledger_url)
    yield SuppressionList(database)
    await database.dispose()


TEST_SIGNING_SECRET = "test-signing-secret"
# Buyer emails carry no X-Dealflow-* headers: the tests read deal and step from the sealed
# Message-ID, with the secrets the tests' workers sign with.
_OPENERS = [TokenSigner(TEST_SIGNING_SECRET), TokenSigner(COMMON_SETTINGS["signing_secret"])]


def _own_parts(message: EmailMessage) -> tuple[str, str]:
    wire = str(message.get("Message-ID", ""))
    for opener in _OPENERS:
        if (opened := opener.open_message_id(wire)) is not None:
            return own_parts(opened)
    return "", ""


def step_of(message: EmailMessage) -> str:
    """The email's template: its X-Dealflow-Step (rep mail), else from its sealed id."""
    if message.get("X-Dealflow-Step") is not None:
        return str(message["X-Dealflow-Step"])
    return _own_parts(message)[1] or "?"


def deal_of(message: EmailMessage) -> str | None:
    """The email's deal: its X-Dealflow-Deal (rep mail), else from its sealed id."""
    if message.get("X-Dealflow-Deal") is not None:
        return str(message["X-Dealflow-Deal"])
    return _own_parts(message)[0] or None


@pytest.fixture
def settings(sink: OutboxSink, ledger_url: str) -> Settings:
    return load_settings(
        database_url=ledger_url,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        temporal_task_queue=f"deals-{uuid.uuid4().hex[:8]}",
        rep_address="rep@seller.example.com",
        fulfilment_address="fulfilment@seller.example.com",
        sender_address="sales@seller.example.com",
        company_name="Seller GmbH",
        company_postal_address="Seller GmbH\nHauptstrasse 1\n10115 Berlin",
        send_window="always",
        # A short, published secret: accepted because the tests run as a dev stack.
        dev=True,
        signing_secret=TEST_SIGNING_SECRET,
        codec_keys=TEST_CODEC_KEYS,
        _env_file=None,
    )


# Real-time bounds on waiting for a condition: generous, since a loaded 2-core CI machine
# can be many times slower than a developer's.
MAIL_WITHIN = 60.0


@pytest.fixture
def start_instant() -> StartInstant:
    """Where the test's clock starts; parametrize it to run a test at other instants."""
    return QUIET_TUESDAY_MORNING


@pytest.fixture
async def env(start_instant: StartInstant) -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=codec_data_converter(),
        test_server_existing_path=str(installed_binary("temporal-test-server")),
    )
    await register_search_attributes(environment.client, environment.client.namespace)
    async with environment:
        now = await environment.get_current_time()
        await environment.sleep(start_instant.after(now) - now)
        yield environment


@pytest.fixture
async def client(env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[Client]:
    worker = build_worker(env.client, settings)
    async with worker:
        yield env.client


@dataclass
class Deals:
    """Starts deals and reads what the SMTP server received, for one test."""

    client: Client
    env: WorkflowEnvironment
    settings: Settings
    sink: OutboxSink
    start_instant: StartInstant
    started: set[str] = field(default_factory=set)

    def input(self, **fields: Any) -> DealInput:
        defaults: dict[str, Any] = {
            "deal_id": f"D-{uuid.uuid4().hex[:8]}",
            "company": "Buyer & Sons",
            "contacts": [
                {
                    "name": "Bea Buyer",
                    "email": "bea@buyer.example.org",
                    "time_zone": "Europe/Berlin",
                }
            ],
            "kind": "rfp",
            "currency": "EUR",
            "items": [
                {"name": "Conveyor <X1>", "quantity": 2, "list_price": "5000.00"},
                {"name": "Installation", "quantity": 1, "list_price": "1000.00"},
            ],
        }
        return build_deal(self.settings, {**defaults, **fields})

    async def start(self, **fields: Any) -> WorkflowHandle:
        deal = self.input(**fields)
        handle = await start_deal(self.client, self.settings, deal)
        self.started.add(deal.deal_id)
        return handle

    async def start_unchecked(self, **fields: Any) -> WorkflowHandle:
        """Start a deal past the starter's suppression check, as one started a moment
        before its buyer opted out elsewhere: the send-time check must still hold."""
        deal = self.input(**fields)
        self.started.add(deal.deal_id)
        options = start_options(self.settings, deal)
        return await self.client.start_workflow(DealWorkflow.run, deal, **options)

    async def mail(self, count: int, within: float = MAIL_WITHIN) -> list[EmailMessage]:
        """Wait (real time) until the SMTP server holds ``count`` messages; return them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self.sink.received) < count:
            if loop.time() > deadline:
                got = [step_of(m.message) for m in self.sink.received]
                raise AssertionError(f"expected {count} emails, the server has {got}")
            await asyncio.sleep(0.05)
        return [m.message for m in self.sink.received]

    async def settle(self, count: int) -> list[EmailMessage]:
        """Exactly ``count`` messages, once every deal has done all it had to do."""
        await self.mail(count)
        await self.quiet()
        messages = [m.message for m in self.sink.received]
        assert len(messages) == count, f"more mail than expected: {steps(messages)}"
        return messages

    async def quiet(self, *also: WorkflowHandle, within: float = MAIL_WITHIN) -> None:
        """Wait until every deal of this test (and ``also``) is idle: no workflow task and
        no activity open, so nothing more happens until time moves on or a signal arrives."""
        await all_idle([*self.handles(), *also], within)

    def handles(self) -> list[WorkflowHandle]:
        """The deals of this test: those it started here and those that have sent mail."""
        headers = (deal_of(m.message) for m in self.sink.received)
        ids = {str(deal_id) for deal_id in headers if deal_id is not None} | self.started
        return [self.client.get_workflow_handle(f"deal-{deal_id}") for deal_id in sorted(ids)]

    async def skip(self, duration: timedelta) -> None:
        await self.env.sleep(duration)

    async def now(self) -> datetime:
        return await self.env.get_current_time()

    async def calendar(self) -> BuyerCalendar:
        """The buyer's calendar of the start instant's zone, with its holidays."""
        return self.start_instant.calendar(await self.now())


@pytest.fixture
def deals(
    client: Client,
    env: WorkflowEnvironment,
    settings: Settings,
    sink: OutboxSink,
    start_instant: StartInstant,
) -> Deals:
    return Deals(client, env, settings, sink, start_instant)


_ACTIVITY_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}
_WORKFLOW_CLOSED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}


async def all_idle(handles: list[WorkflowHandle], within: float = MAIL_WITHIN) -> None:
    """Wait until every one of ``handles`` is idle (see ``is_idle``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    busy = handles
    while True:
        busy = [h for h in busy if not await is_idle(h)]
        if not busy:
            return
        if loop.time() > deadline:
            raise AssertionError(f"deals still busy after {within} s: {[h.id for h in busy]}")
        await asyncio.sleep(0.05)


async def is_idle(handle: WorkflowHandle) -> bool:
    """Closed, or waiting with no workflow task and no activity open, read from history.

    (The time-skipping server's describe does not report a pending workflow task.)
    A failed workflow task leaves the deal busy, so a deal stuck on one is never idle.
    """
    task_open, activities = False, set()
    async for event in handle.fetch_history_events():
        kind = event.event_type
        if kind in _WORKFLOW_CLOSED:
            return True
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            task_open = True
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            task_open = False
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            activities.add(event.event_id)
        elif kind in _ACTIVITY_CLOSED:
            activities.discard(getattr(event, _ACTIVITY_CLOSED[kind]).scheduled_event_id)
    return not task_open and not activities


async def pending_sends(handle: WorkflowHandle) -> list[PendingActivityInfo]:
    """The deal's send activities still open (not its ledger records or suppressions),
    described raw: the time-skipping server keeps an unset datetime search attribute as
    a value the SDK's describe() cannot decode."""
    request = DescribeWorkflowExecutionRequest(
        namespace=handle._client.namespace, execution=WorkflowExecution(workflow_id=handle.id)
    )
    described = await handle._client.workflow_service.describe_workflow_execution(request)
    pending = described.pending_activities
    return [activity for activity in pending if activity.activity_type.name == SEND_EMAIL]


async def send_attempts(handle: WorkflowHandle) -> list[int]:
    """The attempt of each send activity that started, in order, as the history records
    it (the last attempt only of each)."""
    sends, attempts = set(), []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            if scheduled.activity_type.name == SEND_EMAIL:
                sends.add(event.event_id)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id in sends:
                attempts.append(started.attempt)
    return attempts


def sent_at(message: EmailMessage) -> datetime:
    return parsedate_to_datetime(str(message["Date"]))


def steps(messages: list[EmailMessage]) -> list[str]:
    return [step_of(m) for m in messages]


def body(message: EmailMessage, subtype: str = "plain") -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    return str(part.get_content())


def money(value: str) -> Decimal:
    return Decimal(value)


Finder = Callable[[list[EmailMessage], str], EmailMessage]


def only(messages: list[EmailMessage], step: str) -> EmailMessage:
    found = [m for m in messages if step_of(m) == step]
    assert len(found) == 1, f"expected one {step}, got {len(found)} in {steps(messages)}"
    return found[0]
