"""Determinism: deal histories replay against today's workflow code.

``tests/histories/`` keeps histories recorded with earlier versions of the
workflow, one per deal path below; a change that breaks their replay needs
``workflow.patched`` (the last tests show both sides of that).

Each path is a recorder: it drives a deal on the time-skipping server to its end, or
to a state where it waits (held, paused), and returns its history. Run as a test, a
recorder replays its fresh history, so the recorders keep working as the workflow
changes. To store the history of a new path::

    DEALFLOW_RECORD_HISTORY=1 .venv/bin/python -m pytest tests/test_replay.py -k <path>

Only missing files are written: a stored history is kept as the older code made it,
never silently re-recorded with today's (delete the file to record it again).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import select
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowHistory
from temporalio.worker import Replayer

from ledger.database import LedgerDatabase
from ledger.send_ledger import ClaimOutcome, SendLedger
from ledger.tables import DEAL_EMAILS
from starter import record, start_deal, start_options
from tests.conftest import Deals, codec_data_converter, steps
from tests.test_lifecycle import ANSWERS, deal_id, eventually, own_id, stage_is, status
from worker import workflow_runner
from workflows.deal import (
    INBOUND_MESSAGE,
    RESEND_FAILED,
    DealWorkflow,
)
from workflows.deal_recording import RECORD_DEAL
from workflows.models import (
    Closed,
    DealInput,
    DealStatus,
    DeclinedToTalk,
    Delivered,
    DiscountRequested,
    InboundKind,
    InboundMessage,
    OptedOut,
    OrderPlaced,
    Paused,
    PriceAgreed,
    SignalPayload,
)
from workflows.stages import BuyerSignal, Stage

HISTORIES = Path(__file__).parent / "histories"


def replayer(*workflows: type) -> Replayer:
    return Replayer(
        workflows=list(workflows) or [DealWorkflow],
        # The tests' codec: it opens the fresh histories and passes through the stored
        # ones, recorded before payloads were encrypted.
        data_converter=codec_data_converter(),
        # Workflow modules re-imported per run, so the sandbox checks the replayed code.
        workflow_runner=workflow_runner(isolated=True),
    )


# --- the deal paths: one recorder each ---

Recorder = Callable[[Deals], Awaitable[WorkflowHistory]]
PATHS: dict[str, Recorder] = {}


def deal_path(name: str) -> Callable[[Recorder], Recorder]:
    """Register a recorder; its history is stored as ``tests/histories/<name>.json``."""

    def register(recorder: Recorder) -> Recorder:
        PATHS[name] = recorder
        return recorder

    return register


async def ended(handle: WorkflowHandle) -> None:
    """Wait (real time) until the deal has completed. Polled, never ``await result()``,
    where a deal suppressed an address: see test_stop_rules' opt-out test."""

    async def completed() -> None:
        # From the history: describe() cannot decode the unset DealNextTouch attribute
        # the time-skipping server keeps (see test_lifecycle's published_stage).
        last = [event.event_type async for event in handle.fetch_history_events()][-1]
        assert last == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, last

    await eventually(completed)


async def proposal_sent(deals: Deals) -> WorkflowHandle:
    """An RFP deal whose proposal has gone out: where most paths begin."""
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    return handle


async def tell(
    deals: Deals, handle: WorkflowHandle, signal: BuyerSignal | str, payload: BaseModel
) -> Any:
    """The buyer's (or the rep's) news for the deal, as ``starter.py record`` sends it."""
    return await record(deals.client, deal_id(handle), signal, payload)


async def outcomes(handle: WorkflowHandle) -> list[str]:
    return [m.outcome for m in (await status(handle)).messages]


@deal_path("won_rfq_deal")
async def won_deal_history(deals: Deals) -> WorkflowHistory:
    """A deal through quote, discount, order, delivery, check-in and win-loss."""
    handle = await deals.start(kind="rfq")
    await deals.mail(2)
    await deals.skip(timedelta(days=2, hours=1))  # one quote follow-up
    await deals.mail(3)
    await tell(deals, handle, BuyerSignal.DISCOUNT_REQUESTED, DiscountRequested(percent=5))
    await tell(deals, handle, BuyerSignal.PRICE_AGREED, PriceAgreed())
    order = OrderPlaced(delivery_date=(await deals.now()).date() + timedelta(days=2))
    await deals.mail(5)
    # The stage moves once the deal has recorded the final offer, a moment after it arrived.
    await stage_is(handle, Stage.OFFER_RECEIVED)
    await tell(deals, handle, BuyerSignal.ORDER_PLACED, order)
    await deals.mail(7)
    await deals.skip(timedelta(days=2))
    await tell(deals, handle, BuyerSignal.DELIVERED, Delivered())
    await deals.mail(9)
    await deals.skip(timedelta(days=23))
    await deals.mail(13)
    await stage_is(handle, Stage.WIN_LOSS_INVITED)
    await tell(deals, handle, BuyerSignal.INTERVIEW_RECORDED, ANSWERS)
    await handle.result()
    return await handle.fetch_history()


@deal_path("rfi_general_offer")
async def rfi_general_offer(deals: Deals) -> WorkflowHistory:
    """An RFI whose buyer will not talk: the rep's task, then the general offer."""
    handle = await deals.start(kind="rfi", items=[])
    await deals.mail(1)
    await tell(deals, handle, BuyerSignal.DECLINED_TO_TALK, DeclinedToTalk())
    assert steps(await deals.settle(2)) == ["task_clarify_requirements", "general_offer"]
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)  # waiting for its first follow-up
    return await handle.fetch_history()


@deal_path("rfq_discount_agreed")
async def rfq_discount_agreed(deals: Deals) -> WorkflowHistory:
    """An RFQ, a discount the floor allows, a revised quotation, the price agreed."""
    widgets = [{"name": "Widget", "quantity": 10, "list_price": "100"}]
    handle = await deals.start(kind="rfq", items=widgets)
    await deals.mail(2)
    discount = DiscountRequested(percent=Decimal(5))
    await tell(deals, handle, BuyerSignal.DISCOUNT_REQUESTED, discount)
    await deals.mail(3)
    await tell(deals, handle, BuyerSignal.PRICE_AGREED, PriceAgreed())
    messages = await deals.settle(4)
    assert steps(messages) == ["quotation", "task_negotiate_quote", "quotation", "final_offer"]
    await stage_is(handle, Stage.OFFER_RECEIVED)
    assert (await status(handle)).value == Decimal("950.00")
    return await handle.fetch_history()


@deal_path("no_response")
async def no_response(deals: Deals) -> WorkflowHistory:
    """A silent buyer: every proposal follow-up, then No Response and the rep's task."""
    handle = await proposal_sent(deals)
    for count, days in enumerate((2, 4, 7, 7), start=2):
        await deals.skip(timedelta(days=days, hours=1))
        await deals.mail(count)
    final: DealStatus = await handle.result()
    assert final.stage is Stage.NO_RESPONSE
    assert steps(await deals.settle(5))[-1] == "task_loss_analysis"
    return await handle.fetch_history()


@deal_path("lost_with_loss_interview")
async def lost_with_loss_interview(deals: Deals) -> WorkflowHistory:
    """Lost to a cheaper supplier; three weeks on, the loss interview is invited and held."""
    handle = await proposal_sent(deals)
    lost = Closed(reason="chose a cheaper supplier")
    await tell(deals, handle, BuyerSignal.LOST, lost)
    await deals.skip(timedelta(days=21, hours=1))
    messages = await deals.mail(3)
    assert "loss_interview_invitation" in steps(messages)
    await tell(deals, handle, BuyerSignal.INTERVIEW_RECORDED, ANSWERS)
    final: DealStatus = await handle.result()
    assert final.stage is Stage.LOST and final.interview == ANSWERS
    return await handle.fetch_history()


@deal_path("opted_out")
async def opted_out(deals: Deals) -> WorkflowHistory:
    """The buyer unsubscribes after the proposal: the address is suppressed, the deal ends."""
    handle = await proposal_sent(deals)
    opt_out = OptedOut(source="unsubscribe link")
    await tell(deals, handle, BuyerSignal.OPTED_OUT, opt_out)
    await ended(handle)
    assert (await status(handle)).stage is Stage.OPTED_OUT
    assert steps(await deals.settle(1)) == ["proposal"]
    return await handle.fetch_history()


@deal_path("out_of_office_hold")
async def out_of_office_hold(deals: Deals) -> WorkflowHistory:
    """An auto-reply read from the mailbox (a signal, not an update) holds the follow-up
    that comes due while the buyer is away; it goes out on the return day."""
    handle = await proposal_sent(deals)
    back = (await deals.now()).date() + timedelta(days=6)
    away = InboundMessage(
        kind=InboundKind.OUT_OF_OFFICE,
        event_id="<ooo-1@buyer.example.org>",
        source="mailbox",
        sender="bea@buyer.example.org",
        subject="Out of office",
        returns_on=back,
    )
    await handle.signal(INBOUND_MESSAGE, away)

    async def held() -> None:
        assert (await status(handle)).held_until is not None

    await eventually(held)
    await deals.skip(timedelta(days=3))  # the first follow-up (2 days) came due meanwhile
    assert steps(await deals.settle(1)) == ["proposal"]
    await deals.skip(timedelta(days=4))
    assert steps(await deals.settle(2)) == ["proposal", "proposal_follow_up"]
    return await handle.fetch_history()


@deal_path("paused_and_resumed")
async def paused_and_resumed(deals: Deals) -> WorkflowHistory:
    """Ops pause a deal; the price is agreed meanwhile; nothing goes out until the resume,
    then the final offer once."""
    handle = await proposal_sent(deals)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)  # recorded a moment after it arrived
    await tell(deals, handle, BuyerSignal.PAUSED, Paused(note="rep on holiday"))
    await tell(deals, handle, BuyerSignal.PRICE_AGREED, PriceAgreed())
    await deals.skip(timedelta(days=9))
    await deals.settle(1)
    assert (await status(handle)).paused
    await tell(deals, handle, BuyerSignal.RESUMED, SignalPayload())
    assert steps(await deals.settle(2)) == ["proposal", "final_offer"]
    return await handle.fetch_history()


COMMITTEE = [
    {"name": "Eve Economic", "email": "eve@buyer.example.org", "role": "economic_buyer"},
    {"name": "Tom Technical", "email": "tom@buyer.example.org", "role": "technical"},
    {"name": "Pat Procurement", "email": "pat@buyer.example.org", "role": "procurement"},
]


@deal_path("buying_committee")
async def buying_committee(deals: Deals) -> WorkflowHistory:
    """Three contacts with roles: the proposal, a follow-up and the final offer reach
    the roles each template targets."""
    handle = await deals.start(kind="rfp", contacts=COMMITTEE)
    await deals.mail(2)  # one copy of each buyer email for each recipient
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.skip(timedelta(days=2, hours=1))
    await deals.mail(3)
    await tell(deals, handle, BuyerSignal.PRICE_AGREED, PriceAgreed())
    messages = await deals.settle(5)
    assert steps(messages) == [
        "proposal", "proposal", "proposal_follow_up", "final_offer", "final_offer"
    ]  # fmt: skip
    assert len(messages[4]["To"].addresses) == 2
    return await handle.fetch_history()


@deal_path("hard_bounce")
async def hard_bounce(deals: Deals) -> WorkflowHistory:
    """The relay refuses the buyer with 550 on the first follow-up: bounced, the rep is told,
    and the next follow-up is skipped without a send."""
    handle = await proposal_sent(deals)
    deals.sink.refused_recipients["bea@buyer.example.org"] = "550 5.1.1 No such mailbox"
    await deals.skip(timedelta(days=2, hours=1))
    assert steps(await deals.mail(2)) == ["proposal", "task_fix_address"]
    await deals.quiet()
    assert await outcomes(handle) == ["sent", "bounced", "sent"]
    await deals.skip(timedelta(days=4, hours=1))

    async def skipped() -> None:
        assert await outcomes(handle) == ["sent", "bounced", "sent", "skipped"]

    await eventually(skipped)
    assert len(await deals.settle(2)) == 2
    return await handle.fetch_history()


@deal_path("resend_held_email")
async def resend_held_email(deals: Deals) -> WorkflowHistory:
    """A proposal an earlier attempt claimed and never finished is held as maybe-sent; the rep
    is asked to check; ops resend it under its own Message-ID (patch resend-same-message-id)."""
    deal = deals.input(kind="rfp")
    message_id = f"<{deal.deal_id}.001-proposal@seller.example.com>"
    database = LedgerDatabase(deals.settings.ledger_url)
    try:
        claim = await SendLedger(database).claim(
            message_id=message_id, deal_id=deal.deal_id, template="proposal", attempt=1,
            worker="worker-that-died:4242", now=await deals.now(),
        )  # fmt: skip
    finally:
        await database.dispose()
    assert claim.outcome is ClaimOutcome.CLAIMED
    deals.started.add(deal.deal_id)
    handle = await start_deal(deals.client, deals.settings, deal)
    assert steps(await deals.settle(1)) == ["task_check_maybe_sent"]
    assert await record(deals.client, deal.deal_id, RESEND_FAILED, SignalPayload()) == 1
    messages = await deals.settle(2)
    assert steps(messages) == ["task_check_maybe_sent", "proposal"]
    assert own_id(deals, messages[1]) == message_id
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    history = await handle.fetch_history()
    assert not patches(history)  # revision 1 takes the patched path without asking
    return history


@deal_path("unverified_reply")
async def unverified_reply(deals: Deals) -> WorkflowHistory:
    """A stranger answers the proposal: the rep gets a marked task, the follow-up still
    goes out (patch verified-sender)."""
    handle = await proposal_sent(deals)
    lure = InboundMessage(
        kind=InboundKind.REPLY,
        event_id="<lure-1@evil.example>",
        source="mailbox",
        sender="mallory@evil.example",
        subject="Re: Your proposal",
        snippet="Please pay to our new account.",
    )
    await handle.signal(INBOUND_MESSAGE, lure)
    assert steps(await deals.settle(2)) == ["proposal", "task_unverified_reply"]
    await deals.skip(timedelta(days=2, hours=1))
    assert steps(await deals.settle(3))[-1] == "proposal_follow_up"
    history = await handle.fetch_history()
    assert not patches(history)
    return history


@deal_path("closed_holding_an_email")
async def closed_holding_an_email(deals: Deals) -> WorkflowHistory:
    """A held proposal; the deal is disqualified and stays open for the resend, which
    comes two days later (patch keep-failed-for-resend); then the deal ends."""
    deal = deals.input(kind="rfp")
    message_id = f"<{deal.deal_id}.001-proposal@seller.example.com>"
    database = LedgerDatabase(deals.settings.ledger_url)
    try:
        await SendLedger(database).claim(
            message_id=message_id, deal_id=deal.deal_id, template="proposal", attempt=1,
            worker="worker-that-died:4242", now=await deals.now(),
        )  # fmt: skip
    finally:
        await database.dispose()
    deals.started.add(deal.deal_id)
    handle = await start_deal(deals.client, deals.settings, deal)
    assert steps(await deals.settle(1)) == ["task_check_maybe_sent"]
    await record(deals.client, deal.deal_id, BuyerSignal.DISQUALIFIED, Closed(reason="budget"))
    await deals.skip(timedelta(days=2))
    assert await record(deals.client, deal.deal_id, RESEND_FAILED, SignalPayload()) == 1
    final = await handle.result()
    assert final.messages[-1].outcome == "sent"
    history = await handle.fetch_history()
    assert not patches(history)
    return history


async def test_a_deal_of_revision_1_asks_no_patch_and_upserts_no_row_it_started_with(
    deals: Deals,
) -> None:
    """Intake starts deals at revision 1: they keep records without asking the record-deal
    patch (no marker, no write of Temporal's TemporalChangeVersion attribute) and do not
    upsert the pipeline row their start wrote. A deal started before revision 1 still asks,
    and upserts both; the two send the same, record the same and replay."""
    handles = {}
    for revision in (0, 1):
        deal = deals.input(kind="rfp").model_copy(update={"revision": revision})
        deals.started.add(deal.deal_id)
        options = start_options(deals.settings, deal)
        handles[revision] = await deals.client.start_workflow(DealWorkflow.run, deal, **options)
    assert steps(await deals.settle(2)) == ["proposal", "proposal"]
    histories = {revision: await handle.fetch_history() for revision, handle in handles.items()}
    upserted = {revision: upserts(history) for revision, history in histories.items()}
    assert patches(histories[0]) == {RECORD_DEAL}
    assert upserted[0][:2] == [{"TemporalChangeVersion"}, PIPELINE]
    assert patches(histories[1]) == set()
    assert all("TemporalChangeVersion" not in names for names in upserted[1])
    assert upserted[1] == upserted[0][2:] == [PIPELINE]  # after the proposal: the next touch
    for revision, handle in handles.items():
        await stage_is(handle, Stage.PROPOSAL_RECEIVED)
        result = await replayer().replay_workflow(histories[revision])
        assert result.replay_failure is None
    recorded = [await recorded_emails(deals, deal_id(handle)) for handle in handles.values()]
    assert recorded[0] == recorded[1] == [("proposal", "sent")]


PIPELINE = {"DealStage", "DealValue", "DealOwner", "DealNextTouch"}


def upserts(history: WorkflowHistory) -> list[set[str]]:
    """The names each search-attribute upsert of a history sets, in order."""
    return [
        set(
            event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        )
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]


async def recorded_emails(deals: Deals, deal: str) -> list[tuple[str, str]]:
    """The deal's emails in the ledger's deal records (template, outcome), once written."""
    database = LedgerDatabase(deals.settings.ledger_url)
    found: list[tuple[str, str]] = []
    query = select(DEAL_EMAILS.c.template, DEAL_EMAILS.c.outcome).where(
        DEAL_EMAILS.c.deal_id == deal
    )

    async def written() -> None:
        rows = await database.run(lambda c: c.execute(query).all())
        found[:] = [(template, outcome) for template, outcome in rows]
        assert found, f"no email of {deal} recorded yet"

    try:
        await eventually(written)
        return found
    finally:
        await database.dispose()


def patches(history: WorkflowHistory) -> set[str]:
    """The ids of the ``workflow.patched`` markers in a history."""
    markers = [
        event.marker_recorded_event_attributes
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    return {
        json.loads(payload.data)["id"]
        for marker in markers
        if marker.marker_name == "core_patch"
        for payload in marker.details["patch-data"].payloads
    }


@pytest.mark.parametrize("path", list(PATHS))
async def test_each_deal_path_replays_its_fresh_history(deals: Deals, path: str) -> None:
    history = await PATHS[path](deals)
    stored = HISTORIES / f"{path}.json"
    if os.environ.get("DEALFLOW_RECORD_HISTORY") and not stored.exists():
        stored.write_text(history.to_json())
    result = await replayer().replay_workflow(history)
    assert result.replay_failure is None


async def test_a_cancelled_deal_replays(deals: Deals) -> None:
    handle = await deals.start(kind="rfi", items=[])
    await deals.mail(1)
    await tell(deals, handle, BuyerSignal.CANCELLED, Closed(reason="duplicate"))
    await handle.result()
    result = await replayer().replay_workflow(await handle.fetch_history())
    assert result.replay_failure is None


# --- the stored histories, replayed in CI ---

STORED = [
    WorkflowHistory.from_json(p.stem, p.read_text()) for p in sorted(HISTORIES.glob("*.json"))
]


def test_every_deal_path_has_a_stored_history() -> None:
    missing = sorted(set(PATHS) - {history.workflow_id for history in STORED})
    assert not missing, f"record them: DEALFLOW_RECORD_HISTORY=1 ... -k '{' or '.join(missing)}'"


@pytest.mark.parametrize("history", STORED, ids=lambda h: h.workflow_id)
async def test_stored_histories_still_replay(history: WorkflowHistory) -> None:
    result = await replayer().replay_workflow(history)
    assert result.replay_failure is None


# --- what replay catches: a change to the deal's commands, with and without a patch ---
#
# Replay compares each command's kind and sequence number with the history, not an
# activity's input: code that swapped two sends (the rep's task before the quotation)
# would replay these histories without a failure, and adopt each receipt for the
# wrong email. Such a change needs a patch all the same; no test here can catch it.

GRACE = timedelta(minutes=1)
GRACE_PATCH = "grace-before-first-email"


# Defined here, so outside the sandbox: the test module imports far more than a workflow may.
@workflow.defn(name="DealWorkflow", sandboxed=False)
class DealWithGrace(DealWorkflow):
    """Today's deal with one change: a minute's grace before its first email (ops could
    still correct the deal), so its first command is a timer, not the send activity."""

    @workflow.run
    async def run(self, deal: DealInput) -> DealStatus:
        await workflow.sleep(GRACE)
        return await super().run(deal)


@workflow.defn(name="DealWorkflow", sandboxed=False)
class DealWithPatchedGrace(DealWorkflow):
    """The same change behind ``workflow.patched``: deals started before it keep their order."""

    @workflow.run
    async def run(self, deal: DealInput) -> DealStatus:
        if workflow.patched(GRACE_PATCH):
            await workflow.sleep(GRACE)
        return await super().run(deal)


@pytest.mark.parametrize("history", STORED, ids=lambda h: h.workflow_id)
async def test_an_unpatched_change_of_command_order_fails_the_replay(
    history: WorkflowHistory,
) -> None:
    result = await replayer(DealWithGrace).replay_workflow(history, raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, workflow.NondeterminismError), result.replay_failure
    # The timer the changed code asks for is not the send the history recorded.
    assert "Timer machine does not handle this event" in str(result.replay_failure)
    assert "ActivityTaskScheduled" in str(result.replay_failure)


@pytest.mark.parametrize("history", STORED, ids=lambda h: h.workflow_id)
async def test_the_same_change_behind_a_patch_replays(history: WorkflowHistory) -> None:
    result = await replayer(DealWithPatchedGrace).replay_workflow(history)
    assert result.replay_failure is None
