"""What the mailbox poller keeps of what it read stays far inside Temporal's payload
limit, whatever the mailbox holds: it is the poller's continue-as-new input and the
``inbox`` query's answer, and either one too large would stop all inbound mail."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.worker import Replayer

from activities.inbound_mail import InboundKind
from activities.mailbox import LIMITS, MAX_ADDRESSES, MAX_MESSAGE_ID, InboxEntry
from devstack import DEV_SERVER_TUNING, LocalMailbox, free_port
from realstack.temporal import TunedDevServer
from settings import Settings
from starter import inbox
from tests.conftest import MAIL_WITHIN, Deals, codec_data_converter
from tests.test_lifecycle import deal_id, stage_is, status
from tests.test_mailbox_poller import (
    mailbox,
    mailbox_password,
    poll,
    reply_to,
    settings,
    started_poller,
)
from worker import build_worker, start_mailbox_poller, workflow_runner
from workflows.mailbox_poller import (
    MAILBOX_POLLER_ID,
    MAILBOX_POLLER_WORKFLOW,
    POLL_NOW,
    RECENT_BYTES,
    RECENT_KEPT,
    MailboxPollerReport,
    MailboxPollerState,
    MailboxPollerWorkflow,
    newest_within,
)
from workflows.stages import BuyerSignal, Stage

__all__ = ["mailbox", "mailbox_password", "settings"]  # fixtures, used by name

# Characters that cost the most JSON bytes each: 4 bytes of UTF-8, or 2 when escaped.
COSTLY = ["\U0001f600", "\U00010348", '"', "\\", "\u00e9", "a"]
# What the state and the report hold beside the entries (mailbox, cursor, polls, trouble).
AROUND = 2 * 1024


def entry(uid: int, char: str = COSTLY[0], *, addresses: bool = True) -> InboxEntry:
    """An entry with every field at its bound, in ``char``; an unsubscribe's addresses
    (which only a token we signed can name) and its email's id when ``addresses``."""
    return InboxEntry(
        uid=uid,
        message_id=f"<{uid}.{char * (MAX_MESSAGE_ID - 20)}@x>",
        read_at=datetime(2026, 1, 1, tzinfo=UTC),
        kind=InboundKind.UNSUBSCRIBE,
        deal_id="D" * 64,
        unsubscribe_addresses=[char * LIMITS["sender"]] * (MAX_ADDRESSES if addresses else 0),
        unsubscribed_from=char * MAX_MESSAGE_ID if addresses else "",
        recipient_position=1000,
        **{name: char * limit for name, limit in LIMITS.items()},
    )


def size(model: MailboxPollerState | MailboxPollerReport) -> int:
    return len(model.model_dump_json().encode())


def test_the_worst_case_state_is_carried_within_the_budget() -> None:
    """200 entries with every field at its bound, in 4-byte characters: 16 MB of JSON
    (2.6 MB without the unsubscribe's 50 addresses); the state carries the newest within
    the budget, whole."""
    for addresses in (True, False):
        entries = [entry(uid, addresses=addresses) for uid in range(1, 201)]
        assert size(MailboxPollerState(mailbox="m", recent=entries)) > 2 * 1024 * 1024
        kept = newest_within(entries)
        state = MailboxPollerState(mailbox="sales@imap.example.com/INBOX", recent=kept)
        assert size(state) <= RECENT_BYTES + AROUND
        assert kept == entries[-len(kept) :] and len(kept) >= 3
        # As many as fit: one more would not have.
        older = entries[-len(kept) - 1 :]
        assert sum(len(e.model_dump_json().encode()) for e in older) > RECENT_BYTES


sizes = st.sampled_from([0, 1, 0.5])
entries = st.builds(
    lambda uid, char, part, addresses: entry(uid, char, addresses=addresses).model_copy(
        update={
            "message_id": f"<{uid}.{char * int((MAX_MESSAGE_ID - 20) * part)}@x>",
            **{name: char * int(limit * part) for name, limit in LIMITS.items()},
        }
    ),
    st.integers(1, 2**32),
    st.sampled_from(COSTLY),
    sizes,
    st.booleans(),
)


@examples(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, RECENT_KEPT + 50).flatmap(lambda n: st.lists(entries, min_size=n, max_size=n))
)
def test_the_kept_entries_are_the_newest_that_fit(read: list[InboxEntry]) -> None:
    kept = newest_within(read)
    event("cut by bytes" if len(kept) < min(len(read), RECENT_KEPT) else "all fit or count")
    assert kept == read[len(read) - len(kept) :] and len(kept) <= RECENT_KEPT
    assert size(MailboxPollerState(mailbox="m", recent=kept)) <= RECENT_BYTES + AROUND
    if len(kept) < min(len(read), RECENT_KEPT):
        one_more = read[len(read) - len(kept) - 1 :]
        assert sum(len(e.model_dump_json().encode()) for e in one_more) > RECENT_BYTES


# --- the real poller, fed many of the largest entries the reader makes ---

E = "\U0001f600"
# The dev server's limits, scaled down so that a hundred messages reach them: a payload
# over 768 KiB is refused (2 MB in production; a batch from the reader stays under about
# 525 KiB), and a run is told to continue as new after 40 events, a few reads.
SCALED_LIMITS = [
    "--dynamic-config-value", f"limit.blobSize.error={768 * 1024}",
    "--dynamic-config-value", f"limit.blobSize.warn={512 * 1024}",
    "--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40",
]  # fmt: skip
MESSAGES = 100


def largest(n: int) -> bytes:
    """A message whose entry is as large as the reader makes one (over 8 KB of JSON)."""
    return (
        f"From: {E * 200} <{E * 150}@{E * 150}.example>\r\nTo: sales@seller.example.com\r\n"
        f"Subject: {E * 400}\r\nMessage-ID: <{n:05d}{E * 980}@x>\r\n"
        f"In-Reply-To: <{E * 300}@x>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{(E + ' ') * 600}\r\n"
    ).encode()


@pytest.fixture
async def scaled_client(tmp_path: Path) -> AsyncIterator[Client]:
    """A client of a dev server of its own, with SCALED_LIMITS."""
    server = TunedDevServer(
        port=free_port(),
        ui_port=free_port(),
        headless=True,
        tuning=[*DEV_SERVER_TUNING, *SCALED_LIMITS],
        log_file=tmp_path / "temporal.log",
    )
    await server.start()
    try:
        yield await Client.connect(server.address, data_converter=codec_data_converter())
    finally:
        server.stop()


async def runs(handle: WorkflowHandle) -> list[list[HistoryEvent]]:
    """The events of each run of the poller, from ``handle``'s run on."""
    histories, run_id = [], handle.run_id
    while run_id:
        run = handle._client.get_workflow_handle(handle.id, run_id=run_id)
        events = [event async for event in run.fetch_history_events()]
        histories.append(events)
        last = events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            else ""
        )
    return histories


async def carried_to(client: Client, done: int) -> MailboxPollerReport:
    """``inbox`` from a run that a continue-as-new began with the state of a poller that had
    read up to UID ``done``; asks it to read meanwhile, so that runs go by (real time)."""
    poller = client.get_workflow_handle(MAILBOX_POLLER_ID)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAIL_WITHIN
    while True:
        await poller.signal(POLL_NOW)
        started = await anext(aiter(poller.fetch_history_events()))  # the newest run's
        given = started.workflow_execution_started_event_attributes.input.payloads
        (state,) = await client.data_converter.decode(given, [MailboxPollerState])
        if state.cursor.last_uid == done:
            return await inbox(client)
        assert loop.time() < deadline, f"no run began after UID {done}: {state.cursor}"
        await asyncio.sleep(0.5)


async def test_a_poller_fed_the_largest_entries_continues_as_new_and_answers_inbox(
    scaled_client: Client, settings: Settings, mailbox: LocalMailbox
) -> None:
    client = scaled_client
    for n in range(MESSAGES):
        mailbox.deliver(largest(n))
    async with build_worker(client, settings):
        poller_id = await start_mailbox_poller(client, settings)
        first = await client.get_workflow_handle(poller_id).describe()
        report = await carried_to(client, MESSAGES)
        chain = await runs(client.get_workflow_handle(poller_id, run_id=first.run_id))

    # Each continue-as-new carried at most the budget, and no workflow task failed.
    carried = [
        events[-1].workflow_execution_continued_as_new_event_attributes.input.payloads[0]
        for events in chain[:-1]
    ]
    assert carried, "the poller never continued as new"
    for payload in carried:
        assert payload.ByteSize() <= RECENT_BYTES + AROUND
    failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    assert [e for events in chain for e in events if e.event_type == failed] == []

    # ``inbox`` answers with the newest messages, whole, within the budget.
    assert size(report) <= RECENT_BYTES + AROUND
    uids = [e.uid for e in report.recent]
    assert uids == list(range(MESSAGES - len(uids) + 1, MESSAGES + 1)) and len(uids) >= 20
    assert all(len(e.model_dump_json().encode()) > 8_000 for e in report.recent)
    assert all(e.subject.startswith(E * 10) for e in report.recent)


# --- replay: a poller begun before the bound keeps what it kept ---

HISTORY = Path(__file__).parent / "histories" / "poller" / "duplicate_reply_before_bound.json"
# More than RECENT_BYTES of the largest entries, and far fewer than RECENT_KEPT.
LARGE_BETWEEN = 40


def poller_replayer(*workflows: type) -> Replayer:
    return Replayer(
        workflows=list(workflows) or [MailboxPollerWorkflow],
        data_converter=codec_data_converter(),
        workflow_runner=workflow_runner(isolated=True),
    )


# Defined here, so outside the sandbox: the test module imports far more than a workflow may.
@workflow.defn(name=MAILBOX_POLLER_WORKFLOW, sandboxed=False)
class PollerBoundWithoutPatch(MailboxPollerWorkflow):
    """Today's poller with its byte bound in every run, also in runs begun before it."""

    @workflow.run
    async def run(self, state: MailboxPollerState) -> None:
        await super().run(state)

    def _within_bytes(self) -> bool:
        return True


async def test_a_duplicate_reply_behind_large_mail_reaches_its_deal_once(
    deals: Deals, mailbox: LocalMailbox
) -> None:
    """The reply comes again after more than RECENT_BYTES of mail: the poller has dropped
    it and signals it again, and the deal applies its Message-ID once. Recorded with the
    poller before the bound (``DEALFLOW_RECORD_HISTORY=1``, only a missing file is
    written), the history holds the other answer, "already delivered to the deal"."""
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    reply = reply_to(proposal, "Please call me tomorrow.")
    mailbox.deliver(reply)
    for n in range(LARGE_BETWEEN):
        mailbox.deliver(largest(n))
    mailbox.deliver(reply)  # the same message again: an MTA's retry, or re-sent
    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: r.cursor.last_uid == LARGE_BETWEEN + 2)

    again = report.recent[-1]
    assert again.kind == "human_reply" and again.deal_id == deal_id(handle)
    history = await poller.fetch_history()
    if os.environ.get("DEALFLOW_RECORD_HISTORY") and not HISTORY.exists():
        HISTORY.parent.mkdir(exist_ok=True)
        HISTORY.write_text(history.to_json())
    else:
        assert again.outcome == f"signalled reply to deal {deal_id(handle)}"
        assert all(e.message_id != again.message_id for e in report.recent[:-1])
    await deals.quiet()
    signals = [h.signal for h in (await status(handle)).history]
    assert signals.count(BuyerSignal.BUYER_REPLIED.value) == 1
    result = await poller_replayer().replay_workflow(history)
    assert result.replay_failure is None


def stored() -> WorkflowHistory:
    return WorkflowHistory.from_json(MAILBOX_POLLER_ID, HISTORY.read_text())


async def test_a_poller_begun_before_the_bound_replays() -> None:
    events = stored().events
    signalled = EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
    assert [e.event_type for e in events].count(signalled) == 1  # the second read was not
    assert EventType.EVENT_TYPE_MARKER_RECORDED not in {e.event_type for e in events}
    result = await poller_replayer().replay_workflow(stored())
    assert result.replay_failure is None


async def test_the_bound_without_its_patch_breaks_that_replay() -> None:
    """The bound drops the first reply before the second arrives, so the second would be
    signalled: a command the history does not have."""
    result = await poller_replayer(PollerBoundWithoutPatch).replay_workflow(
        stored(), raise_on_replay_failure=False
    )
    assert isinstance(result.replay_failure, workflow.NondeterminismError), result.replay_failure
    assert "Signal external WF machine does not handle this event" in str(result.replay_failure)
