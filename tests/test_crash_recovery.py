"""Crash recovery against real processes: no email lost, none sent twice.

Everything is real: Temporal's dev server (SQLite file, free loopback ports), the
product worker as a subprocess (``python worker.py`` with ``DEALFLOW_*`` variables),
aiosmtpd as the relay, the send ledger in a SQLite file (see ``realstack``).

- A worker is SIGKILLed at each point of a send (the mailer's ``DEALFLOW_TEST_DIE_AT``
  hook, and a relay that takes the message but holds its ``250`` until the worker is
  dead) and restarted; the send's retry comes after its heartbeat time-out.
- The relay is down for 60 s mid-cadence, then back.
- The ledger is down for 60 s mid-cadence, then back, on each database: a PostgreSQL
  server of its own stopped and started again, a SQLite file whose write lock another
  process holds. Buyer emails wait for it (each is claimed in the send ledger and
  checked against the suppression list before it goes), and the deal records catch up.
- The Temporal server is SIGKILLed while deals wait on timers and restarted on the
  same SQLite file and ports.

A test can only wait for what it proves, and the waits are long (the 30 s heartbeat
time-out, the 60 s outages), so the module starts every selected scenario at once, as
a task on the module's event loop, each on its own task queue (one deal per crash
point, one worker each); a test awaits what its scenario observed, then asserts. The
outages start first and side by side; the others start once every outage has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import Table, select
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client, WorkflowHandle

from activities.mailer import DIE_AT_VARIABLE, FailureType
from deal_intake import build_deal
from ledger import schema
from ledger.database import LedgerDatabase
from ledger.send_ledger import SendLedger, SendRecord, SendState
from ledger.tables import DEAL_EMAILS, DEALS, STAGE_EVENTS
from realstack.deployment import environment
from realstack.relay import Arrival, Relay
from realstack.stack import LocalStack, connect, local_stack
from realstack.temporal import TemporalDevServer
from realstack.waiting import wait_for
from realstack.worker import WorkerProcess
from settings import Settings, load_settings
from starter import start_deal
from starter import status as deal_status
from tests.conftest import DATABASES, is_idle, on_both_databases, pending_sends, send_attempts
from tests.databases import PostgresCluster, start_postgres
from workflows.deal import PLAN, SEND_HEARTBEAT_TIMEOUT
from workflows.models import DealInput, DealStatus, PlannedSend
from workflows.stages import Stage

pytestmark = pytest.mark.asyncio(loop_scope="module")

BUYER = "bea@buyer.example.org"
REP = "rep@seller.example.com"
# The relay's outage: what the scenario is, not a proof (the test waits for conditions).
OUTAGE_SECONDS = 60.0
# How long the Temporal server stays dead: long enough for the early timers to come due.
SERVER_DOWN_SECONDS = 15.0
# Where the follow-ups of a short cadence are; the no-response close comes a day later.
SOON = timedelta(hours=1)


# --- the stack every scenario shares: one dev server, the ledger, the processes ---


@dataclass
class Stack(LocalStack):
    servers: list[TemporalDevServer] = field(default_factory=list)
    relays: list[Relay] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    # Python workers start two at a time: six importing at once on two cores take three
    # times as long each.
    starting: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    # The longest scenarios (the outages) get the machine to themselves until each
    # outage has begun; the others start then, and are done before they are.
    head_start: asyncio.Event = field(default_factory=asyncio.Event)
    outages_to_begin: set[str] = field(default_factory=set)
    # Private PostgreSQL clusters (closing one stops it and removes its folder), and the
    # processes that hold a SQLite ledger's lock.
    clusters: list[Iterator[PostgresCluster]] = field(default_factory=list)
    lock_holders: list[asyncio.subprocess.Process] = field(default_factory=list)

    def outage_began(self, scenario: str) -> None:
        """``scenario``'s outage has begun (or it failed before): once every outage has,
        the other scenarios start."""
        self.outages_to_begin.discard(scenario)
        if not self.outages_to_begin:
            self.head_start.set()

    async def start(self, worker: WorkerProcess) -> WorkerProcess:
        async with self.starting:
            return await worker.start()

    def new_relay(self) -> Relay:
        relay = Relay()
        relay.start()
        self.relays.append(relay)
        return relay

    async def new_server(self, name: str) -> tuple[TemporalDevServer, Client]:
        server = TemporalDevServer(self.folder / name)
        self.servers.append(server)
        await server.start()
        return server, await connect(server)

    def worker(self, queue: str, values: dict[str, str], **extra: str) -> WorkerProcess:
        worker = WorkerProcess(f"worker-{queue}", self.folder / queue, environment(values) | extra)
        self.workers.append(worker)
        return worker

    async def ledger(self, message_id: str, url: str = "") -> SendRecord | None:
        """``message_id``'s row in the send ledger (the shared one unless ``url``)."""
        database = LedgerDatabase(url or self.ledger_url)
        try:
            return await SendLedger(database).find(message_id)
        finally:
            await database.dispose()

    def stop(self) -> None:
        # SIGKILL: nothing of a test's processes needs a graceful end, and it is quick.
        for worker in self.workers:
            worker.kill()
        for holder in self.lock_holders:
            if holder.returncode is None:
                holder.kill()
        for cluster in self.clusters:
            cluster.close()
        for server in [self.server, *self.servers]:
            server.kill()
        for relay in [self.relay, *self.relays]:
            relay.stop()


def settings_of(values: dict[str, str]) -> Settings:
    return load_settings(**values, _env_file=None)


def deal_input(settings: Settings, name: str, **fields: Any) -> DealInput:
    """An RFP deal: its proposal goes out at once, then its follow-ups (by ``cadence``)."""
    defaults: dict[str, Any] = {
        "deal_id": f"{name}-{uuid.uuid4().hex[:6]}",
        "company": "Buyer & Sons",
        "contacts": [{"name": "Bea Buyer", "email": BUYER, "time_zone": "Europe/Berlin"}],
        "kind": "rfp",
        "items": [
            {"name": "Conveyor X1", "quantity": 2, "list_price": "5000.00"},
            {"name": "Installation", "quantity": 1, "list_price": "1000.00"},
        ],
    }
    return build_deal(settings, {**defaults, **fields})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with local_stack(tmp_path_factory.mktemp("crash-recovery"), Stack) as stack:
        try:
            yield stack
        finally:
            stack.stop()


# --- reading a deal ---


async def proposals_sent(client: Client, deal_ids: list[str]) -> bool:
    for deal_id in deal_ids:
        try:
            messages = (await deal_status(client, deal_id)).messages
        except Exception:  # not queryable before its first workflow task
            return False
        if not (messages and messages[0].outcome == "sent"):
            return False
    return True


async def plan(handle: WorkflowHandle) -> list[PlannedSend]:
    return await handle.query(PLAN, result_type=list[PlannedSend])


async def quiet(handles: list[WorkflowHandle], what: str) -> None:
    """Every deal idle: no workflow task and no activity open (conftest's ``is_idle``)."""

    async def all_idle() -> bool:
        return all([await is_idle(handle) for handle in handles])

    await wait_for(all_idle, what, every=0.5)


# Before any event of a history.
NO_EVENT = datetime.min.replace(tzinfo=UTC)


@dataclass
class Timers:
    due: dict[str, datetime] = field(default_factory=dict)
    fired: Counter[str] = field(default_factory=Counter)
    canceled: set[str] = field(default_factory=set)
    last_event_at: datetime = NO_EVENT


async def timers(handle: WorkflowHandle) -> Timers:
    found = Timers()
    async for event in handle.fetch_history_events():
        found.last_event_at = event.event_time.ToDatetime(tzinfo=UTC)
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            started = event.timer_started_event_attributes
            at = event.event_time.ToDatetime(tzinfo=UTC)
            found.due[started.timer_id] = at + started.start_to_fire_timeout.ToTimedelta()
        elif event.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            found.fired[event.timer_fired_event_attributes.timer_id] += 1
        elif event.event_type == EventType.EVENT_TYPE_TIMER_CANCELED:
            found.canceled.add(event.timer_canceled_event_attributes.timer_id)
    return found


# --- (a) a worker SIGKILLed at each point of a send ---

# The mailer's test hook kills the worker at these points of its first send.
HOOK_POINTS = ("before-data", "after-reply", "after-record")
# No hook: the relay stores the message, then holds its 250 until the worker is dead.
REPLY_LOST = "reply-lost"


@dataclass
class Crash:
    point: str
    deal_id: str
    killed_pid: int
    exit_code: int
    marker: str  # what the hook wrote before it killed its worker ("" without the hook)
    arrived_before_restart: int  # messages of the deal the relay held when the worker restarted
    restarted_pid: int
    arrivals: list[Arrival]
    status: DealStatus
    proposal_id: str
    record: SendRecord | None
    attempts: list[int]


async def crash_mid_send(stack: Stack, point: str) -> Crash:
    queue = f"crash-{point}"
    values = stack.deployment(queue, stack.relay)
    marker = stack.folder / f"died-at-{point}"
    hook = {DIE_AT_VARIABLE: f"{point}:{marker}"} if point in HOOK_POINTS else {}
    worker = await stack.start(stack.worker(queue, values, **hook))
    killed_pid = worker.pid
    settings = settings_of(values)
    deal = deal_input(settings, queue)  # the standard cadence: the proposal, then days
    held = stack.relay.hold_reply(deal.deal_id) if point == REPLY_LOST else None
    handle = await start_deal(stack.client, settings, deal)
    if held is not None:
        await held.arrived()  # the relay has the message; its 250 is still to come
        worker.kill()
        held.release()  # the answer goes to a dead connection
    exit_code = await worker.exited()
    arrived_before_restart = len(stack.relay.of_deal(deal.deal_id))
    await stack.start(worker)  # the same command and environment, as a supervisor would
    # The dead attempt is retried once its heartbeat times out (30 s), on the new worker.
    await quiet([handle], f"{deal.deal_id} settles after the restart")
    current = await deal_status(stack.client, deal.deal_id)
    proposal_id = current.messages[0].message_id
    return Crash(
        point=point,
        deal_id=deal.deal_id,
        killed_pid=killed_pid,
        exit_code=exit_code,
        marker=marker.read_text() if marker.exists() else "",
        arrived_before_restart=arrived_before_restart,
        restarted_pid=worker.pid,
        arrivals=stack.relay.of_deal(deal.deal_id),
        status=current,
        proposal_id=proposal_id,
        record=await stack.ledger(proposal_id),
        attempts=await send_attempts(handle),
    )


def assert_killed(crash: Crash) -> None:
    assert crash.exit_code == -9, f"the worker should have died of SIGKILL: {crash.exit_code}"
    if crash.point in HOOK_POINTS:
        assert crash.marker.split() == [str(crash.killed_pid), crash.point]
    assert crash.restarted_pid != crash.killed_pid


def templates(arrivals: list[Arrival]) -> list[str]:
    return [arrival.step for arrival in arrivals]


async def test_killed_before_data_the_retry_sends_the_email_once(
    runs: Runs,
) -> None:
    crash: Crash = await runs.result("crash:before-data")
    assert_killed(crash)
    # The killed attempt never reached DATA: the one copy comes from the retry.
    assert templates(crash.arrivals) == ["proposal"]
    assert crash.arrivals[0].message_id == crash.proposal_id
    assert crash.arrived_before_restart == 0
    assert crash.attempts[0] == 2
    assert crash.record is not None
    assert crash.record.state is SendState.SENT
    assert crash.record.attempt == 2
    assert crash.record.worker.endswith(f":{crash.restarted_pid}")
    assert [m.outcome for m in crash.status.messages] == ["sent"]
    assert crash.status.problems == []
    assert crash.status.stage is Stage.PROPOSAL_RECEIVED


@pytest.mark.parametrize("point", ["after-reply", REPLY_LOST])
async def test_killed_after_the_relay_took_it_the_email_is_held_as_maybe_sent(
    runs: Runs, point: str
) -> None:
    """after-reply: the relay said 250, the ledger was not written yet. reply-lost: the
    relay took the message and its 250 never reached the worker. Either way the ledger
    row stays claimed, the retry holds the email (maybe sent) instead of sending it
    again, and the deal shows it and asks the rep to check."""
    crash: Crash = await runs.result(f"crash:{point}")
    assert_killed(crash)
    proposal = [a for a in crash.arrivals if a.message_id == crash.proposal_id]
    assert len(proposal) == 1, f"copies of the proposal at the relay: {len(proposal)}"
    assert crash.arrivals.index(proposal[0]) < crash.arrived_before_restart  # the killed attempt's
    assert templates(crash.arrivals) == ["proposal", "task_check_maybe_sent"]
    assert crash.arrivals[1].to == (REP,)
    assert crash.record is not None
    assert crash.record.state is SendState.CLAIMED
    assert crash.record.attempt == 1
    assert crash.record.worker.endswith(f":{crash.killed_pid}")
    assert crash.record.smtp_reply is None
    assert crash.attempts[0] == 2  # the retry ran, and held it
    held, task = crash.status.messages
    assert (held.template, held.outcome) == ("proposal", "failed")
    assert held.message_id == crash.proposal_id
    assert held.error.startswith(f"{FailureType.MAYBE_SENT}: maybe sent: attempt 1 on ")
    assert (task.template, task.outcome, task.to) == ("task_check_maybe_sent", "sent", [REP])
    assert len(crash.status.problems) == 1
    assert crash.status.problems[0].startswith(f"{held.step} to {BUYER}: {FailureType.MAYBE_SENT}")
    # Not confirmed sent, so the deal does not move on as if the buyer had it.
    assert crash.status.stage is Stage.REQUIREMENTS_CLARIFIED


async def test_killed_after_the_ledger_recorded_it_the_retry_completes_without_sending(
    runs: Runs,
) -> None:
    crash: Crash = await runs.result("crash:after-record")
    assert_killed(crash)
    assert templates(crash.arrivals) == ["proposal"]
    assert crash.arrived_before_restart == 1  # sent by the killed attempt only
    assert crash.attempts[0] == 2  # the retry completed the activity, without sending
    assert crash.record is not None
    assert crash.record.state is SendState.SENT
    assert crash.record.attempt == 1
    assert crash.record.worker.endswith(f":{crash.killed_pid}")
    assert (crash.record.smtp_reply or "").startswith("250")
    assert [m.outcome for m in crash.status.messages] == ["sent"]
    assert crash.status.problems == []
    assert crash.status.stage is Stage.PROPOSAL_RECEIVED


# --- a live worker behind a slow relay: the heartbeat keeps its attempt ---


@dataclass
class SlowReply:
    held_for: float
    arrivals: list[Arrival]
    attempts: list[int]
    status: DealStatus
    record: SendRecord | None


async def slow_relay(stack: Stack) -> SlowReply:
    """The relay takes the proposal and answers only after the send's heartbeat timeout
    has passed twice over: the worker is alive and heartbeats while it waits for the 250."""
    queue = "slow-relay"
    values = stack.deployment(queue, stack.relay)
    await stack.start(stack.worker(queue, values))
    settings = settings_of(values)
    deal = deal_input(settings, queue)
    held = stack.relay.hold_reply(deal.deal_id)
    handle = await start_deal(stack.client, settings, deal)
    await held.arrived()
    began = time.monotonic()
    # The stimulus, not the proof: a relay that answers late, as RFC 5321 allows.
    await asyncio.sleep(2 * SEND_HEARTBEAT_TIMEOUT.total_seconds())
    held.release()
    await quiet([handle], f"{deal.deal_id} settles after the late 250")
    current = await deal_status(stack.client, deal.deal_id)
    return SlowReply(
        held_for=time.monotonic() - began,
        arrivals=stack.relay.of_deal(deal.deal_id),
        attempts=await send_attempts(handle),
        status=current,
        record=await stack.ledger(current.messages[0].message_id),
    )


async def test_a_relay_that_answers_after_the_heartbeat_timeout_gets_one_attempt(
    runs: Runs,
) -> None:
    """Heartbeats while talking SMTP: a slow final reply is waited for (up to 10 minutes),
    not mistaken for a dead worker, so no second attempt starts beside the first."""
    slow: SlowReply = await runs.result("slow-relay")
    assert slow.held_for > SEND_HEARTBEAT_TIMEOUT.total_seconds()
    assert templates(slow.arrivals) == ["proposal"]
    assert slow.attempts[0] == 1
    assert [m.outcome for m in slow.status.messages] == ["sent"]
    assert slow.status.problems == [] and slow.status.sending_problems == []
    assert slow.record is not None and slow.record.state is SendState.SENT
    assert slow.record.attempt == 1


# --- (b) the relay down for 60 s mid-cadence ---

# Follow-up 1 comes due a few seconds into the outage, follow-up 2 while it lasts too.
OUTAGE_CADENCE = {"proposal": ["PT6S", "PT4S"], "no_response_after": "P1D"}


@dataclass
class Outage:
    planned: dict[str, list[str]]  # deal -> templates: sent before the outage, then planned
    retrying: dict[str, PendingActivityInfo]  # deal -> its send, failing during the outage
    during: dict[str, DealStatus]
    after: dict[str, DealStatus]
    arrivals: dict[str, list[Arrival]]
    records: dict[str, SendRecord | None]  # Message-ID -> its ledger row


async def relay_outage(stack: Stack, deals: int = 3) -> Outage:
    queue = "relay-outage"
    relay = stack.new_relay()
    values = stack.deployment(queue, relay)
    settings = settings_of(values)
    inputs = [deal_input(settings, f"outage{n}", cadence=OUTAGE_CADENCE) for n in range(deals)]
    ids = [deal.deal_id for deal in inputs]
    try:
        await stack.start(stack.worker(queue, values))
        handles = [await start_deal(stack.client, settings, deal) for deal in inputs]
        # Once each deal has the relay's 250 (not merely the relay the message: the reply
        # must not be cut off), the relay goes down: connections are refused until back.
        await wait_for(lambda: proposals_sent(stack.client, ids), "every proposal is sent")
        relay.stop()
        down_at = asyncio.get_running_loop().time()
    finally:
        stack.outage_began("relay-outage")
    planned = {}
    for deal_id, handle in zip(ids, handles, strict=True):
        # Due soon on the deal's own clock: from when it sent its proposal.
        sent = (await deal_status(stack.client, deal_id)).messages[0].at
        upcoming = [p.template for p in await plan(handle) if p.at < sent + SOON]
        planned[deal_id] = templates(relay.of_deal(deal_id)) + upcoming

    async def failing(handle: WorkflowHandle) -> PendingActivityInfo | None:
        pending = await pending_sends(handle)
        return pending[0] if pending and pending[0].attempt >= 2 else None

    retrying, during = {}, {}
    for deal_id, handle in zip(ids, handles, strict=True):
        retrying[deal_id] = await wait_for(
            lambda h=handle: failing(h), f"{deal_id} retries its send", within=OUTAGE_SECONDS
        )

        async def told(deal_id: str = deal_id) -> DealStatus | None:
            current = await deal_status(stack.client, deal_id)
            return current if current.sending_problems else None

        during[deal_id] = await wait_for(told, f"{deal_id} shows why its email is late")
    await asyncio.sleep(max(0.0, down_at + OUTAGE_SECONDS - asyncio.get_running_loop().time()))
    relay.start()  # back, on the same port

    def delivered() -> bool:
        return all(len(relay.of_deal(i)) >= len(planned[i]) for i in ids)

    await wait_for(delivered, "every planned email arrives after the outage")
    await quiet(handles, "every deal settles after the outage")
    arrivals = {i: relay.of_deal(i) for i in ids}
    return Outage(
        planned=planned,
        retrying=retrying,
        during=during,
        after={i: await deal_status(stack.client, i) for i in ids},
        arrivals=arrivals,
        records={
            a.message_id: await stack.ledger(a.message_id)
            for found in arrivals.values()
            for a in found
        },
    )


async def test_relay_down_for_a_minute_loses_and_doubles_nothing(runs: Runs) -> None:
    outage: Outage = await runs.result("relay-outage")
    for deal_id, planned in outage.planned.items():
        assert planned == ["proposal", "proposal_follow_up", "proposal_follow_up"], planned
        arrivals = outage.arrivals[deal_id]
        copies = Counter(a.message_id for a in arrivals)
        assert set(copies.values()) == {1}, f"{deal_id}: {copies}"
        assert templates(arrivals) == planned, f"{deal_id}: planned {planned}"
        # While the relay was down: the send was being retried, its last failure the
        # refused connection; the deal showed the follow-up as in flight, no error.
        retrying = outage.retrying[deal_id]
        assert retrying.activity_type.name == "send_email"
        failure, causes = retrying.last_failure, []
        while failure.application_failure_info.type:
            causes.append(failure.application_failure_info.type)
            failure = failure.cause
        assert causes[0] == "SMTPConnectError" and "ConnectionRefusedError" in causes, causes
        in_flight = outage.during[deal_id].messages[-1]
        assert (in_flight.template, in_flight.outcome) == ("proposal_follow_up", "sending")
        assert in_flight.error == ""
        # The deal records the transient problem while it lasts...
        [late] = outage.during[deal_id].sending_problems
        assert late.startswith(f"{in_flight.message_id} attempt ") and "retrying" in late
        assert "SMTPConnectError" in late
        # After: everything sent once, nothing left as a problem.
        after = outage.after[deal_id]
        assert [m.outcome for m in after.messages] == ["sent"] * len(planned)
        assert [m.message_id for m in after.messages] == [a.message_id for a in arrivals]
        assert after.problems == []
        assert after.sending_problems == []  # ...and it clears once the email went out
        for arrival in arrivals:
            record = outage.records[arrival.message_id]
            assert record is not None and record.state is SendState.SENT
        # A refused connection never reached RCPT: only the attempt that sent claimed it.
        follow_up = outage.records[arrivals[1].message_id]
        assert follow_up is not None and follow_up.attempt >= 2


# --- the ledger down for 60 s mid-cadence, on each database ---

# How long the ledger stays down: the outage, as long as the relay's.
LEDGER_DOWN_SECONDS = 60.0
# Another process that takes the SQLite ledger's write lock and holds it until its stdin
# closes, as a backup, a migration or an ops shell left in a transaction would.
HOLD_SQLITE_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
connection.execute("ROLLBACK")
"""


@dataclass
class PostgresDown:
    """The ledger's PostgreSQL server stopped (fast: its connections are cut) and started
    again on the same data directory and port."""

    cluster: PostgresCluster

    async def begin(self) -> None:
        await asyncio.to_thread(self.cluster.stop, "fast")

    async def end(self) -> None:
        await asyncio.to_thread(self.cluster.start)


@dataclass
class SqliteLocked:
    """Another process holds the SQLite ledger's write lock (``BEGIN EXCLUSIVE``). In WAL
    mode, which the ledger runs in, readers still read: the suppression look-up answers,
    and every write (a send's claim, the deal records) waits for the lock (15 s), then
    fails with "locked"."""

    path: Path
    stack: Stack
    holder: asyncio.subprocess.Process | None = None

    async def begin(self) -> None:
        self.holder = holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_SQLITE_LOCK, str(self.path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.stack.lock_holders.append(holder)  # killed at the end, should the test fail
        assert holder.stdout is not None
        said = await holder.stdout.readline()
        assert said == b"locked\n", f"the lock holder said {said!r}"

    async def end(self) -> None:
        holder = self.holder
        assert holder is not None and holder.stdin is not None
        holder.stdin.close()  # it rolls back and exits
        assert await holder.wait() == 0


async def ledger_of_its_own(stack: Stack, database: str) -> tuple[str, PostgresDown | SqliteLocked]:
    """A migrated ledger for one scenario (the others' shared one stays up), and how to
    take it down."""
    if database == "postgresql":
        clusters = start_postgres()
        stack.clusters.append(clusters)
        cluster = await asyncio.to_thread(next, clusters)  # initdb and start: seconds
        url = await cluster.create_database()
        await schema.upgrade(url)
        return url, PostgresDown(cluster)
    path = stack.folder / "ledger-outage.sqlite3"
    url = f"sqlite:///{path}"
    await schema.upgrade(url)
    return url, SqliteLocked(path, stack)


async def rows(url: str, table: Table, deal_id: str, order: str) -> list[dict[str, Any]]:
    database = LedgerDatabase(url)
    query = select(table).where(table.c.deal_id == deal_id).order_by(table.c[order])
    try:
        return await database.run(lambda c: [dict(r) for r in c.execute(query).mappings()])
    finally:
        await database.dispose()


@dataclass
class DealRows:
    events: list[dict[str, Any]]  # stage_events, in order
    emails: list[dict[str, Any]]  # deal_emails
    deal: list[dict[str, Any]]  # its row in deals


async def deal_rows(url: str, deal_id: str) -> DealRows:
    return DealRows(
        events=await rows(url, STAGE_EVENTS, deal_id, "at"),
        emails=await rows(url, DEAL_EMAILS, deal_id, "at"),
        deal=await rows(url, DEALS, deal_id, "deal_id"),
    )


def records_match(records: DealRows, status: DealStatus) -> bool:
    """The ledger holds the deal as its status tells it: every stage event, every email
    with its outcome, the deal's stage."""
    return (
        [(e["to_stage"], e["source"]) for e in records.events]
        == [(change.stage.value, change.source) for change in status.history]
        and sorted((e["message_id"], e["outcome"]) for e in records.emails)
        == sorted((m.message_id, m.outcome) for m in status.messages)
        and [d["stage"] for d in records.deal] == [status.stage.value]
    )


@dataclass
class LedgerOutage:
    planned: dict[str, list[str]]  # deal -> templates: sent before the outage, then planned
    while_down: dict[str, list[Arrival]]  # deal -> what reached the relay during it
    retrying: dict[str, PendingActivityInfo]  # deal -> its send, failing during the outage
    during: dict[str, DealStatus]
    # deal -> how many of its emails the relay held when the ledger was brought back
    arrived_before_back: dict[str, int]
    after: dict[str, DealStatus]
    arrivals: dict[str, list[Arrival]]
    sends: dict[str, SendRecord | None]  # Message-ID -> its send ledger row
    records: dict[str, DealRows]  # deal -> its records, once they match its status
    log: str  # the worker's log


async def ledger_outage(stack: Stack, database: str, deals: int = 3) -> LedgerOutage:
    name, queue = f"ledger-outage:{database}", f"ledger-outage-{database}"
    loop = asyncio.get_running_loop()
    try:
        url, outage = await ledger_of_its_own(stack, database)
        relay = stack.new_relay()
        values = stack.deployment(queue, relay) | {"database_url": url}
        settings = settings_of(values)
        inputs = [deal_input(settings, f"ledger{n}", cadence=OUTAGE_CADENCE) for n in range(deals)]
        ids = [deal.deal_id for deal in inputs]
        worker = await stack.start(stack.worker(queue, values))
        handles = [await start_deal(stack.client, settings, deal) for deal in inputs]
        await wait_for(lambda: proposals_sent(stack.client, ids), "every proposal is sent")
        await outage.begin()
        down_at = loop.time()
    finally:
        stack.outage_began(name)
    planned, before = {}, {}
    for deal_id, handle in zip(ids, handles, strict=True):
        # Due soon on the deal's own clock: from when it sent its proposal.
        sent = (await deal_status(stack.client, deal_id)).messages[0].at
        upcoming = [p.template for p in await plan(handle) if p.at < sent + SOON]
        before[deal_id] = relay.of_deal(deal_id)
        planned[deal_id] = templates(before[deal_id]) + upcoming

    async def failing(handle: WorkflowHandle) -> PendingActivityInfo | None:
        pending = await pending_sends(handle)
        return pending[0] if pending and pending[0].attempt >= 2 else None

    retrying, during = {}, {}
    for deal_id, handle in zip(ids, handles, strict=True):
        # (On SQLite an attempt waits 15 s for the lock first; the ledger stays down
        # until this is seen, however long it takes on a loaded machine.)
        retrying[deal_id] = await wait_for(lambda h=handle: failing(h), f"{deal_id} retries")

        async def told(deal_id: str = deal_id) -> DealStatus | None:
            current = await deal_status(stack.client, deal_id)
            return current if current.sending_problems else None

        during[deal_id] = await wait_for(told, f"{deal_id} shows why its email is late")
    await asyncio.sleep(max(0.0, down_at + LEDGER_DOWN_SECONDS - loop.time()))
    while_down = {i: relay.of_deal(i)[len(before[i]) :] for i in ids}
    arrived_before_back = {i: len(relay.of_deal(i)) for i in ids}
    await outage.end()

    def delivered() -> bool:
        return all(len(relay.of_deal(i)) >= len(planned[i]) for i in ids)

    await wait_for(delivered, "every planned email arrives once the ledger is back")
    await quiet(handles, "every deal settles once the ledger is back")
    after = {i: await deal_status(stack.client, i) for i in ids}

    async def caught_up(deal_id: str) -> DealRows | None:
        found = await deal_rows(url, deal_id)
        return found if records_match(found, after[deal_id]) else None

    records = {}
    for deal_id in ids:
        # The recorder retries on its own (backoff capped at a minute): wait for it.
        records[deal_id] = await wait_for(
            lambda d=deal_id: caught_up(d), f"{deal_id}'s records catch up", every=0.5
        )
    arrivals = {i: relay.of_deal(i) for i in ids}
    return LedgerOutage(
        planned=planned,
        while_down=while_down,
        retrying=retrying,
        during=during,
        arrived_before_back=arrived_before_back,
        after=after,
        arrivals=arrivals,
        sends={
            a.message_id: await stack.ledger(a.message_id, url)
            for found in arrivals.values()
            for a in found
        },
        records=records,
        log=worker.log.read_text(errors="replace"),
    )


def aware(moment: datetime) -> datetime:
    """A time read from the ledger (SQLite gives it back without its zone, UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@on_both_databases
async def test_ledger_down_for_a_minute_holds_the_sends_and_loses_nothing(
    runs: Runs, database: str
) -> None:
    """Buyer emails wait for the send ledger: none goes out unclaimed or unchecked
    against the suppression list while it is down, each goes out once when it is back,
    and the deal records (which never hold up a send) catch up, complete."""
    outage: LedgerOutage = await runs.result(f"ledger-outage:{database}")
    for deal_id, planned in outage.planned.items():
        assert planned == ["proposal", "proposal_follow_up", "proposal_follow_up"], planned
        # While the ledger was down: nothing reached the relay; the follow-up's send was
        # retried, its last failure one line naming the ledger; the deal said why.
        assert outage.while_down[deal_id] == [], f"{deal_id} sent while the ledger was down"
        retrying = outage.retrying[deal_id]
        assert retrying.activity_type.name == "send_email"
        # (Its message is encrypted by the payload codec: status shows it, below.)
        assert retrying.last_failure.application_failure_info.type == "LedgerUnavailable"
        in_flight = outage.during[deal_id].messages[-1]
        assert (in_flight.template, in_flight.outcome) == ("proposal_follow_up", "sending")
        [late] = outage.during[deal_id].sending_problems
        assert late.startswith(f"{in_flight.message_id} attempt ") and "retrying" in late
        reason = late.partition("retrying: ")[2]
        assert "LedgerUnavailable: " in reason and "the ledger database on " in reason, late
        assert "\n" not in late
        # After: every planned email once, each claimed in the ledger before it went,
        # the held ones only once the ledger was back; the ledger has each as sent.
        arrivals = outage.arrivals[deal_id]
        copies = Counter(a.message_id for a in arrivals)
        assert set(copies.values()) == {1}, f"{deal_id}: {copies}"
        assert templates(arrivals) == planned, f"{deal_id}: planned {planned}"
        for arrival in arrivals:
            send = outage.sends[arrival.message_id]
            assert send is not None and send.state is SendState.SENT, send
            assert aware(send.claimed_at).timestamp() <= arrival.at
        # The follow-up due during the outage: tried then, sent once the ledger was back.
        # (Its claim may have waited out the lock: ``claimed_at`` is when it asked.)
        held = outage.sends[arrivals[1].message_id]
        assert held is not None and held.attempt >= 2
        assert outage.arrived_before_back[deal_id] <= 1, "it came after the ledger was back"
        after = outage.after[deal_id]
        assert [m.outcome for m in after.messages] == ["sent"] * len(planned)
        assert [m.message_id for m in after.messages] == [a.message_id for a in arrivals]
        assert after.problems == [] and after.sending_problems == []
        # The records caught up: every stage event, every email as sent, the deal's row.
        records = outage.records[deal_id]
        assert records.events[0]["from_stage"] is None
        assert [e["from_stage"] for e in records.events[1:]] == [
            e["to_stage"] for e in records.events[:-1]
        ]
        assert sorted(e["message_id"] for e in records.emails) == sorted(copies)
        assert {e["outcome"] for e in records.emails} == {"sent"}
        assert records.deal[0]["stage"] == after.stage.value
    # The worker said so in one line an attempt, sends and records alike; no traceback.
    assert "Traceback" not in outage.log, outage.log[-3000:]
    assert re.search(r"attempt \d+ failed, retrying: .*the ledger database on ", outage.log)
    assert re.search(r"not recorded yet: .*the ledger database on ", outage.log)


# --- (c) the Temporal server SIGKILLed while deals wait on timers ---

# Follow-up 1 comes due while the server is dead for some deals, after its restart for others.
DUE_WHILE_DOWN = {"proposal": ["PT12S", "PT4S"], "no_response_after": "P1D"}
DUE_AFTER_RESTART = {"proposal": ["PT30S", "PT4S"], "no_response_after": "P1D"}


@dataclass
class ServerCrash:
    waiting_at_kill: dict[str, set[str]]  # deal -> its timers started and not yet fired
    planned: dict[str, list[PlannedSend]]  # deal -> its follow-ups, as planned before the kill
    arrivals: dict[str, list[Arrival]]
    timers: dict[str, Timers]
    after: dict[str, DealStatus]


async def server_killed(stack: Stack) -> ServerCrash:
    queue = "server-killed"
    server, client = await stack.new_server("temporal-killed")
    relay = stack.new_relay()
    values = stack.deployment(queue, relay, server)
    await stack.start(stack.worker(queue, values))
    settings = settings_of(values)
    cadences = [DUE_WHILE_DOWN, DUE_WHILE_DOWN, DUE_AFTER_RESTART, DUE_AFTER_RESTART]
    inputs = [deal_input(settings, f"timer{n}", cadence=c) for n, c in enumerate(cadences)]
    handles = [await start_deal(client, settings, deal) for deal in inputs]
    ids = [deal.deal_id for deal in inputs]
    await wait_for(lambda: all(relay.of_deal(i) for i in ids), "every proposal arrives")
    await quiet(handles, "every deal waits on its follow-up timer")
    planned, waiting = {}, {}
    for deal_id, handle in zip(ids, handles, strict=True):
        status = await deal_status(client, deal_id)
        # Due soon on the deal's own clock: from when it sent its proposal.
        sent = status.messages[0].at
        planned[deal_id] = [p for p in await plan(handle) if p.at < sent + SOON]
        assert status.next_touch is not None, status
        assert status.next_touch.what == "follow-up 1", status.next_touch
        # The server's own record of what is still waiting, read right before the kill.
        found = await timers(handle)
        waiting[deal_id] = set(found.due) - set(found.fired) - found.canceled
    server.kill()
    await asyncio.sleep(SERVER_DOWN_SECONDS)  # the scenario: the server stays dead a while
    await server.start()  # the same ports, the same SQLite file

    def delivered() -> bool:
        return all(len(relay.of_deal(i)) >= 1 + len(planned[i]) for i in ids)

    await wait_for(delivered, "every follow-up arrives after the restart")
    await quiet(handles, "every deal settles after the restart")
    return ServerCrash(
        waiting_at_kill=waiting,
        planned=planned,
        arrivals={i: relay.of_deal(i) for i in ids},
        timers={i: await timers(h) for i, h in zip(ids, handles, strict=True)},
        after={i: await deal_status(client, i) for i in ids},
    )


async def test_server_killed_while_deals_wait_each_timer_fires_once(runs: Runs) -> None:
    crash: ServerCrash = await runs.result("server-killed")
    for deal_id, planned in crash.planned.items():
        assert crash.waiting_at_kill[deal_id], "a timer was still waiting"
        assert [p.template for p in planned] == ["proposal_follow_up", "proposal_follow_up"]
        arrivals = crash.arrivals[deal_id]
        assert templates(arrivals) == ["proposal", "proposal_follow_up", "proposal_follow_up"]
        assert len({a.message_id for a in arrivals}) == len(arrivals), arrivals
        for email, due in zip(arrivals[1:], planned, strict=True):
            assert email.at >= due.at.timestamp(), f"{email.message_id} came before {due.at}"
        found = crash.timers[deal_id]
        # Every timer fired once, except the one still waiting (the no-response close):
        # each one due by the deal's last event, on the server's clock.
        overdue = {t for t, at in found.due.items() if at <= found.last_event_at}
        assert set(found.fired.values()) <= {1}, f"{deal_id}: a timer fired twice: {found}"
        assert overdue - found.canceled <= set(found.fired), f"{deal_id}: timers lost: {found}"
        after = crash.after[deal_id]
        assert [m.outcome for m in after.messages] == ["sent"] * 3
        assert [m.message_id for m in after.messages] == [a.message_id for a in arrivals]
        assert after.problems == []
        assert after.next_touch is not None and after.next_touch.what == "close as no response"


# --- running the scenarios side by side ---

Scenario = Callable[[Stack], Awaitable[Any]]
SCENARIOS: dict[str, Scenario] = {
    "relay-outage": relay_outage,
    "server-killed": server_killed,
    "slow-relay": slow_relay,
    **{f"crash:{p}": lambda s, p=p: crash_mid_send(s, p) for p in (*HOOK_POINTS, REPLY_LOST)},
    **{f"ledger-outage:{d}": lambda s, d=d: ledger_outage(s, d) for d in DATABASES},
}
# The long scenarios: each starts at once, the others once every one's outage began.
OUTAGES = {"relay-outage", *(f"ledger-outage:{d}" for d in DATABASES)}
# The scenario each test reads (parametrized ones: by their ``point``).
SCENARIO_OF = {
    "test_killed_before_data_the_retry_sends_the_email_once": "crash:before-data",
    "test_killed_after_the_ledger_recorded_it_the_retry_completes_without_sending": (
        "crash:after-record"
    ),
    "test_relay_down_for_a_minute_loses_and_doubles_nothing": "relay-outage",
    "test_server_killed_while_deals_wait_each_timer_fires_once": "server-killed",
    "test_a_relay_that_answers_after_the_heartbeat_timeout_gets_one_attempt": "slow-relay",
}


def scenario_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "point" in callspec.params:
        return f"crash:{callspec.params['point']}"
    if callspec is not None and "database" in callspec.params:
        return f"ledger-outage:{callspec.params['database']}"
    return SCENARIO_OF[getattr(item, "originalname", item.name)]


@dataclass
class Runs:
    tasks: dict[str, asyncio.Task[Any]]

    async def result(self, name: str) -> Any:
        return await self.tasks[name]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Runs]:
    """Start every scenario a selected test of this module reads, all at once."""
    selected = {
        scenario_of(item)
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    }
    stack.outages_to_begin = selected & OUTAGES
    if not stack.outages_to_begin:
        stack.head_start.set()

    async def run(name: str, scenario: Scenario) -> Any:
        if name not in OUTAGES:
            await stack.head_start.wait()
        return await scenario(stack)

    tasks = {
        name: asyncio.create_task(run(name, scenario), name=name)
        for name, scenario in SCENARIOS.items()
        if name in selected
    }
    try:
        yield Runs(tasks)
    finally:
        for task in tasks.values():
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks.values(), return_exceptions=True)
