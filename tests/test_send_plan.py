"""The send-plan preview is what the deal then does, inside the buyer's business calendar."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from temporalio.client import WorkflowHandle

from starter import record
from tests.conftest import Deals, sent_at, steps
from tests.test_lifecycle import deal_id, stage_is
from workflows.deal import PLAN
from workflows.models import Delivered, OrderPlaced, PlannedSend
from workflows.stages import BuyerSignal, Stage

BERLIN = ZoneInfo("Europe/Berlin")
HOLIDAYS = [date(2026, 12, 24), date(2026, 12, 25), date(2026, 12, 26), date(2027, 1, 1)]
CALENDAR: dict[str, Any] = {
    "time_zone": "Europe/Berlin",
    "window": {"days": [0, 1, 2, 3, 4], "start": "09:00", "end": "17:00"},
    "holidays": [d.isoformat() for d in HOLIDAYS],
}


async def plan(handle: WorkflowHandle) -> list[PlannedSend]:
    return await handle.query(PLAN, result_type=list[PlannedSend])


def in_berlin_window(moment: datetime) -> bool:
    local = moment.astimezone(BERLIN)
    return local.weekday() < 5 and 9 <= local.hour < 17 and local.date() not in HOLIDAYS


def assert_plan_was_followed(planned: list[PlannedSend], received: list[Any]) -> None:
    assert [p.template for p in planned] == steps(received)
    for send, message in zip(planned, received, strict=True):
        assert abs(sent_at(message) - send.at) <= timedelta(minutes=1), (send, message["Date"])
        assert [a.lower() for a in send.to] == [
            a.addr_spec.lower() for a in message["To"].addresses
        ]


async def test_the_plan_of_a_silent_deal_is_exactly_what_it_sends(deals: Deals) -> None:
    cadence = {"proposal": ["P1D", "2bd", "PT30H"], "no_response_after": "P3D"}
    handle = await deals.start(kind="rfp", calendar=CALENDAR, cadence=cadence)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    planned = await plan(handle)
    assert [p.template for p in planned] == [
        "proposal_follow_up",
        "proposal_follow_up",
        "proposal_follow_up",
        "task_loss_analysis",
    ]
    for send in planned[:-1]:
        assert in_berlin_window(send.at), send
    final = await handle.result()
    assert final.stage is Stage.NO_RESPONSE
    received = await deals.settle(1 + len(planned))
    assert_plan_was_followed(planned, received[1:])


async def test_the_plan_after_delivery_is_what_the_deal_sends(deals: Deals) -> None:
    handle = await deals.start(kind="rfp", calendar=CALENDAR, cadence={"check_in_after": "1bd"})
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    order = OrderPlaced(delivery_date=(await deals.now()).date())
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    await deals.mail(5)
    await stage_is(handle, Stage.DELIVERED)
    planned = await plan(handle)
    assert [p.template for p in planned] == [
        "check_in",
        "task_check_in_call",
        "win_loss_invitation",
        "task_win_loss_interview",
        "win_loss_reminder",
    ]
    assert all(in_berlin_window(p.at) for p in planned if p.template in ("check_in",))
    # Wait through everything planned, then past the point the deal closes by itself.
    await deals.skip(planned[-1].at - await deals.now() + timedelta(days=8))
    final = await handle.result()
    assert final.stage is Stage.WON
    received = (await deals.settle(5 + len(planned)))[5:]
    assert_plan_was_followed(planned, received)
