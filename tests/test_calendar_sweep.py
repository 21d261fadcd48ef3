"""The buyer's business calendar, swept over awkward instants.

Each test runs at every instant of ``tests.clock.SWEEP``: a weekday morning and evening,
Friday 16:59, Saturday 23:00, both DST switch days in Berlin and New York, and 24 December
for a German buyer. What must hold is stated against an independent check of the window
(``BuyerCalendar.is_open``, minute by minute), never against a hard-coded time: every
buyer email goes out inside the window and not on a holiday, at the first opening after it
came due, and the send plan is exactly what the deal then sends.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from starter import record
from tests.clock import SWEEP, BuyerCalendar, StartInstant
from tests.conftest import Deals, only, sent_at, step_of, steps
from tests.test_inbound_signals import inbound, reply
from tests.test_lifecycle import deal_id, stage_is, status
from workflows.deal import PLAN
from workflows.models import Delivered, DeliveryDateChanged, InboundKind, OrderPlaced, PlannedSend
from workflows.stages import BuyerSignal, Stage

MINUTE = timedelta(minutes=1)
# Deals that must act *at* the instant start this long before it, so the proposal is out.
LEAD = timedelta(days=4)
BUYER_EMAILS = {"proposal", "proposal_follow_up", "order_confirmation", "delivery_notice",
                "check_in", "win_loss_invitation", "win_loss_reminder"}  # fmt: skip

sweep = pytest.mark.parametrize("start_instant", SWEEP, ids=[i.name for i in SWEEP])
sweep_with_lead = pytest.mark.parametrize(
    "start_instant", [i.earlier(LEAD) for i in SWEEP], ids=[i.name for i in SWEEP]
)


async def plan(handle: WorkflowHandle) -> list[PlannedSend]:
    return await handle.query(PLAN, result_type=list[PlannedSend])


async def start(deals: Deals, calendar: BuyerCalendar, **fields: Any) -> WorkflowHandle:
    contact = {"name": "Bea Buyer", "email": "bea@buyer.example.org",
               "time_zone": calendar.time_zone}  # fmt: skip
    return await deals.start(
        kind="rfp", calendar=calendar.as_deal_field(), contacts=[contact], **fields
    )


def assert_sent_when_open(calendar: BuyerCalendar, due: datetime, message: EmailMessage) -> None:
    """A buyer email went out at the first opening of the window at or after ``due``."""
    at = sent_at(message)
    step = step_of(message)
    assert calendar.is_open(at), f"{step} sent at {calendar.local(at)}, outside the window"
    opening = calendar.first_opening(due)
    assert abs(at - opening) <= MINUTE, f"{step} sent {calendar.local(at)}, opening {opening}"


def assert_plan_was_followed(
    calendar: BuyerCalendar, planned: list[PlannedSend], received: list[EmailMessage]
) -> None:
    assert [p.template for p in planned] == steps(received)
    for send, message in zip(planned, received, strict=True):
        assert abs(sent_at(message) - send.at) <= MINUTE, (send, message["Date"])
        assert [a.lower() for a in send.to] == [
            a.addr_spec.lower() for a in message["To"].addresses
        ]
        if send.template in BUYER_EMAILS:
            assert calendar.is_open(send.at), f"{send.template} planned at {send.at}"


async def send_queued(deals: Deals, handle: WorkflowHandle, count: int) -> list[EmailMessage]:
    """Let the queued emails go: once the deal is idle, skip to the first one's planned
    instant when the window holds it back, then wait until ``count`` emails have arrived."""
    await deals.quiet()
    queued = [p for p in await plan(handle) if p.step == "queued"]
    if queued:
        await deals.skip(queued[0].at - await deals.now() + timedelta(seconds=1))
    return await deals.mail(count)


@sweep
async def test_a_silent_deal_waits_for_the_window_then_sends_exactly_its_plan(
    deals: Deals,
) -> None:
    started = await deals.now()
    calendar = await deals.calendar()
    cadence = {"proposal": ["P1D", "2bd", "PT30H"], "no_response_after": "P3D"}
    handle = await start(deals, calendar, cadence=cadence)

    assert_sent_when_open(calendar, started, (await send_queued(deals, handle, 1))[0])
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)

    planned = await plan(handle)
    assert [p.template for p in planned] == [
        "proposal_follow_up",
        "proposal_follow_up",
        "proposal_follow_up",
        "task_loss_analysis",
    ]
    assert (await handle.result()).stage is Stage.NO_RESPONSE
    received = await deals.settle(1 + len(planned))
    assert_plan_was_followed(calendar, planned, received[1:])


@sweep_with_lead
async def test_an_order_is_confirmed_the_same_business_day_and_the_check_in_replans(
    deals: Deals, start_instant: StartInstant
) -> None:
    calendar = await deals.calendar()
    ordered_at = await deals.now() + LEAD
    handle = await start(deals, calendar, cadence={"proposal": ["P10D"], "check_in_after": "1bd"})
    await send_queued(deals, handle, 1)
    assert await deals.now() < ordered_at, "the proposal must be out before the order"
    await deals.skip(ordered_at - await deals.now())

    order = OrderPlaced(delivery_date=ordered_at.date() + timedelta(days=14))
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    confirmation = only(await send_queued(deals, handle, 3), "order_confirmation")
    assert_sent_when_open(calendar, ordered_at, confirmation)
    # The same business day, the next one at the latest (buyer-local dates).
    ordered_on = calendar.local(ordered_at).date()
    confirmed_on = calendar.local(sent_at(confirmation)).date()
    assert ordered_on <= confirmed_on <= calendar.next_business_day(ordered_on)
    await stage_is(handle, Stage.ORDER_CONFIRMED)

    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    delivered_at = await deals.now()
    notice = only(await send_queued(deals, handle, 5), "delivery_notice")
    assert_sent_when_open(calendar, delivered_at, notice)
    await stage_is(handle, Stage.DELIVERED)
    await deals.quiet()
    before = await plan(handle)
    assert before[0].template == "check_in"
    assert calendar.is_open(before[0].at)

    # Delivery really happened the day before: the check-in re-plans from it, never later.
    correction = DeliveryDateChanged(
        delivery_date=delivered_at.date() - timedelta(days=1), reason="late scan"
    )
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERY_DATE_CHANGED, correction)
    corrected_at = await deals.now()
    await deals.quiet()
    planned = await plan(handle)
    sent_before = len(deals.sink.received)
    assert (await handle.result()).stage is Stage.WON
    everything = await deals.settle(sent_before + len(planned))
    assert_plan_was_followed(calendar, planned, everything[sent_before:])
    assert steps(everything[5:]) == [
        "check_in",
        "task_check_in_call",
        "win_loss_invitation",
        "task_win_loss_interview",
        "win_loss_reminder",
    ]
    check_in, invitation = only(everything, "check_in"), only(everything, "win_loss_invitation")
    # The Date header has whole seconds.
    assert corrected_at - timedelta(seconds=1) <= sent_at(check_in) <= before[0].at + MINUTE
    assert calendar.is_open(sent_at(check_in))
    # Two to four weeks after the last contact.
    waited = sent_at(invitation) - sent_at(check_in)
    assert timedelta(weeks=2) <= waited <= timedelta(weeks=4), waited


@sweep_with_lead
async def test_an_out_of_office_holds_follow_ups_until_the_buyer_is_back(
    deals: Deals,
) -> None:
    calendar = await deals.calendar()
    away_at = await deals.now() + LEAD
    handle = await start(deals, calendar, cadence={"proposal": ["P5D", "P2D"]})
    await send_queued(deals, handle, 1)
    await deals.skip(away_at - await deals.now())

    back = calendar.local(away_at).date() + timedelta(days=6)
    away = reply("<ooo@buyer.example.org>", kind=InboundKind.OUT_OF_OFFICE, returns_on=back)
    await inbound(deals, deal_id(handle), away)
    await deals.quiet()
    current = await status(handle)
    assert current.held_until is not None
    held = calendar.local(current.held_until)
    assert (held.date(), held.time()) == (back, time(0)), "midnight of the return day, local"
    touch = current.next_touch
    assert touch is not None and touch.at >= current.held_until

    # Up to just before the return nothing more is sent.
    await deals.skip(current.held_until - await deals.now() - MINUTE)
    await deals.quiet()
    assert steps([m.message for m in deals.sink.received]) == ["proposal"]

    await deals.skip(touch.at - await deals.now() + timedelta(seconds=1))
    follow_up = (await deals.mail(2))[1]
    assert step_of(follow_up) == "proposal_follow_up"
    assert_sent_when_open(calendar, current.held_until, follow_up)
