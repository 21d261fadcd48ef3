"""Every path of a deal, on the time-skipping Temporal server with real SMTP on loopback.

Each email is parsed from what the SMTP server received; its Date header is the
workflow time at which the deal sent it, so timings are checked on it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import WorkflowHandle

from activities.signed_tokens import TokenSigner
from starter import Refused, record
from tests.conftest import MAIL_WITHIN, Deals, body, only, sent_at, step_of, steps
from workflows.deal import STATUS
from workflows.models import (
    Closed,
    DealStatus,
    DeclinedToTalk,
    Delivered,
    DeliveryDateChanged,
    DiscountRequested,
    InterviewRecorded,
    NextStepAgreed,
    OrderPlaced,
    PriceAgreed,
    RequirementsClarified,
)
from workflows.search_attributes import DEAL_NEXT_TOUCH, DEAL_OWNER, DEAL_STAGE, DEAL_VALUE
from workflows.stages import BuyerSignal, Stage

MINUTE = timedelta(minutes=1)
ANSWERS = InterviewRecorded(
    why_decided="best lead time",
    decision_process="ops lead and CFO, two calls",
    rep_rating=4,
    cooperation_rating=5,
)


async def status(handle: WorkflowHandle) -> DealStatus:
    return await handle.query(STATUS, result_type=DealStatus)


async def eventually(check: Callable[[], Any], within: float = MAIL_WITHIN) -> None:
    """Retry an async assertion until it passes (search attributes land after a workflow task)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            await check()
            return
        except AssertionError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def stage_is(handle: WorkflowHandle, stage: Stage) -> None:
    async def check() -> None:
        assert (await status(handle)).stage is stage
        assert await published_stage(handle) == stage.value

    await eventually(check)


async def published_stage(handle: WorkflowHandle) -> str | None:
    """The DealStage search attribute, read raw: the time-skipping server keeps an unset
    datetime attribute as a value the SDK's describe() cannot decode."""
    request = DescribeWorkflowExecutionRequest(
        namespace=handle._client.namespace,
        execution=WorkflowExecution(workflow_id=handle.id),
    )
    described = await handle._client.workflow_service.describe_workflow_execution(request)
    fields = described.workflow_execution_info.search_attributes.indexed_fields
    if DEAL_STAGE.name not in fields:
        return None
    value = json.loads(fields[DEAL_STAGE.name].data)
    return str(value[0] if isinstance(value, list) else value)


def near(actual: Any, expected: Any, slack: timedelta = MINUTE) -> bool:
    return abs(actual - expected) <= slack


def deal_id(handle: WorkflowHandle) -> str:
    return handle.id.removeprefix("deal-")


def own_id(deals: Deals, message: EmailMessage) -> str:
    """The deal's own Message-ID of an email we sent (the ledger's and the status's),
    opened from the sealed one it carries."""
    wire = str(message["Message-ID"])
    return TokenSigner(deals.settings.signing_key()).open_message_id(wire) or wire


async def test_rfp_to_won_sends_every_email_on_time(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    start = await deals.now()
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    assert near(sent_at(proposal), start)
    assert "EUR 11,000.00" in body(proposal)
    assert "Conveyor &lt;X1&gt;" in body(proposal, "html")

    await deals.skip(timedelta(days=1))
    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    await stage_is(handle, Stage.OFFER_RECEIVED)
    await deals.mail(2)

    await deals.skip(timedelta(days=1))
    delivery = (start + timedelta(days=10)).date()
    order = OrderPlaced(delivery_date=delivery, purchase_order="PO-4711")
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    await stage_is(handle, Stage.ORDER_CONFIRMED)
    await deals.mail(4)

    await deals.skip(timedelta(days=8))
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    await stage_is(handle, Stage.DELIVERED)
    await deals.mail(6)

    await deals.skip(timedelta(days=1, hours=1))
    await stage_is(handle, Stage.CHECKED_IN)
    await deals.mail(8)

    await deals.skip(timedelta(days=21))
    await stage_is(handle, Stage.WIN_LOSS_INVITED)
    messages = await deals.settle(10)
    await record(deals.client, deal_id(handle), BuyerSignal.INTERVIEW_RECORDED, ANSWERS)
    final: DealStatus = await handle.result()

    assert final.stage is Stage.WON
    assert final.interview == ANSWERS
    assert steps(messages) == [
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
    day = timedelta(days=1)
    expected = {
        "final_offer": start + day,
        "order_confirmation": start + 2 * day,
        "fulfilment_hand_over": start + 2 * day,
        "delivery_notice": start + 10 * day,
        "task_issue_invoice": start + 10 * day,
        "check_in": start + 11 * day,
        "task_check_in_call": start + 11 * day,
        "win_loss_invitation": start + 32 * day,
        "task_win_loss_interview": start + 32 * day,
    }
    for step, when in expected.items():
        message = only(messages, step)
        assert near(sent_at(message), when, 2 * MINUTE), (step, sent_at(message), when)
    buyer = "bea@buyer.example.org"
    for step in ("proposal", "final_offer", "order_confirmation", "check_in"):
        assert buyer in str(only(messages, step)["To"])
    assert "fulfilment@seller.example.com" in str(only(messages, "fulfilment_hand_over")["To"])
    assert "rep@seller.example.com" in str(only(messages, "task_issue_invoice")["To"])
    assert "PO-4711" in body(only(messages, "order_confirmation"))
    assert [change.stage for change in final.history] == [
        Stage.REQUIREMENTS_CLARIFIED,
        Stage.PROPOSAL_RECEIVED,
        Stage.PRICE_AGREED,
        Stage.OFFER_RECEIVED,
        Stage.ORDER_PLACED,
        Stage.ORDER_CONFIRMED,
        Stage.DELIVERED,
        Stage.CHECKED_IN,
        Stage.WIN_LOSS_INVITED,
        Stage.WON,
    ]
    assert final.history[-1].signal == "interview_recorded"


async def test_rfi_buyer_declines_call_and_gets_general_offer(deals: Deals) -> None:
    handle = await deals.start(kind="rfi", items=[])
    task = (await deals.mail(1))[0]
    assert step_of(task) == "task_clarify_requirements"
    assert "rep@seller.example.com" in str(task["To"])
    await stage_is(handle, Stage.INQUIRY_RECEIVED)

    await record(deals.client, deal_id(handle), BuyerSignal.DECLINED_TO_TALK, DeclinedToTalk())
    messages = await deals.settle(2)
    offer = only(messages, "general_offer")
    assert "bea@buyer.example.org" in str(offer["To"])
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    history = (await status(handle)).history
    assert history[-2].signal == "declined_to_talk"


async def test_rfi_clarified_requirements_lead_to_a_priced_proposal(deals: Deals) -> None:
    handle = await deals.start(kind="rfi", items=[])
    await deals.mail(1)
    with pytest.raises(Refused, match="line items"):
        await record(
            deals.client,
            deal_id(handle),
            BuyerSignal.REQUIREMENTS_CLARIFIED,
            RequirementsClarified(),
        )
    clarified = RequirementsClarified.model_validate(
        {"items": [{"name": "Sensor kit", "quantity": 3, "list_price": "250"}], "note": "call held"}
    )
    await record(deals.client, deal_id(handle), BuyerSignal.REQUIREMENTS_CLARIFIED, clarified)
    messages = await deals.settle(2)
    proposal = only(messages, "proposal")
    assert "Sensor kit" in body(proposal)
    assert "EUR 750.00" in body(proposal)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    stages = [change.stage for change in (await status(handle)).history]
    assert stages == [Stage.INQUIRY_RECEIVED, Stage.REQUIREMENTS_CLARIFIED, Stage.PROPOSAL_RECEIVED]


async def test_rfq_discount_below_floor_is_rejected_and_above_floor_accepted(deals: Deals) -> None:
    handle = await deals.start(
        kind="rfq", items=[{"name": "Widget", "quantity": 10, "list_price": "100"}]
    )
    await deals.mail(2)  # quotation to the buyer, negotiation task to the rep
    before = await status(handle)

    with pytest.raises(Refused, match=r"below the floor of 900\.00.*10\.00%"):
        await record(
            deals.client,
            deal_id(handle),
            BuyerSignal.DISCOUNT_REQUESTED,
            DiscountRequested(percent=Decimal(15)),
        )
    unchanged = await status(handle)
    assert unchanged.discount_percent == 0
    assert unchanged.value == before.value == Decimal("1000.00")
    assert len(unchanged.history) == len(before.history)

    await record(
        deals.client,
        deal_id(handle),
        BuyerSignal.DISCOUNT_REQUESTED,
        DiscountRequested(percent=Decimal(5)),
    )
    revised = (await deals.mail(3))[-1]
    assert step_of(revised) == "quotation"
    assert "EUR 950.00" in body(revised)
    assert (await status(handle)).value == Decimal("950.00")

    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    final_offer = (await deals.settle(4))[-1]
    assert step_of(final_offer) == "final_offer"
    assert "EUR 950.00" in body(final_offer)
    await stage_is(handle, Stage.OFFER_RECEIVED)


async def test_silent_buyer_gets_every_follow_up_then_deal_ends_no_response(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    # proposal cadence: touches after 2, 4 and 7 days of silence, then 7 more days.
    delays = (2, 4, 7, 7)
    for count, days in enumerate(delays, start=2):
        await deals.skip(timedelta(days=days, hours=1))
        await deals.mail(count)
    final: DealStatus = await handle.result()
    messages = await deals.settle(5)

    assert final.stage is Stage.NO_RESPONSE
    assert steps(messages) == [
        "proposal",
        "proposal_follow_up",
        "proposal_follow_up",
        "proposal_follow_up",
        "task_loss_analysis",
    ]
    for previous, message, days in zip(messages[:-1], messages[1:], delays, strict=True):
        silence = sent_at(message) - sent_at(previous)
        assert near(silence, timedelta(days=days)), (step_of(message), silence)
    assert "no reply after 3 follow-ups" in final.outcome_reason
    assert "rep@seller.example.com" in str(messages[-1]["To"])


async def test_lost_deal_gets_a_loss_interview(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    lost = Closed(reason="chose a cheaper supplier")
    assert await record(deals.client, deal_id(handle), BuyerSignal.LOST, lost) == Stage.LOST
    lost_at = await deals.now()
    await stage_is(handle, Stage.LOST)

    await deals.skip(timedelta(days=21, hours=1))
    messages = await deals.mail(3)
    invitation = only(messages, "loss_interview_invitation")
    task = only(messages, "task_win_loss_interview")
    assert near(sent_at(invitation), lost_at + timedelta(days=21), 2 * MINUTE)
    assert "rep@seller.example.com" in str(task["To"])
    await record(deals.client, deal_id(handle), BuyerSignal.INTERVIEW_RECORDED, ANSWERS)
    final: DealStatus = await handle.result()
    assert final.stage is Stage.LOST
    assert final.outcome_reason == "chose a cheaper supplier"
    assert final.interview == ANSWERS


async def test_small_order_skips_win_loss_and_ends_won(deals: Deals) -> None:
    handle = await deals.start(
        kind="rfp", items=[{"name": "Spare belt", "quantity": 2, "list_price": "150"}]
    )
    await deals.mail(1)
    order = OrderPlaced(delivery_date=(await deals.now()).date())
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    await deals.mail(3)
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    await deals.mail(5)
    await deals.skip(timedelta(days=1, hours=1))
    await deals.mail(7)
    await deals.skip(timedelta(days=22))
    final: DealStatus = await handle.result()
    messages = await deals.settle(7)
    assert final.stage is Stage.WON
    assert "win_loss_invitation" not in steps(messages)
    assert "below win-loss threshold" in final.history[-1].note


async def test_order_is_confirmed_the_same_day(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    await deals.skip(timedelta(hours=5))
    placed = await deals.now()
    order = OrderPlaced(delivery_date=(placed + timedelta(days=14)).date())
    assert await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order) == (
        Stage.ORDER_PLACED
    )
    messages = await deals.mail(3)
    confirmation = only(messages, "order_confirmation")
    assert sent_at(confirmation).date() == placed.date()
    assert near(sent_at(confirmation), placed)
    assert order.delivery_date.strftime("%B %Y") in body(confirmation)
    await stage_is(handle, Stage.ORDER_CONFIRMED)


async def test_check_in_follows_delivery_and_replans_when_the_date_moves(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    today = (await deals.now()).date()
    planned = today + timedelta(days=5)
    order = OrderPlaced(delivery_date=planned)
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    await deals.mail(3)
    first = (await status(handle)).next_touch
    assert first is not None and first.what == "confirm delivery"

    moved = DeliveryDateChanged(delivery_date=today + timedelta(days=7), reason="supplier delay")
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERY_DATE_CHANGED, moved)
    notice = (await deals.mail(4))[-1]
    assert step_of(notice) == "delivery_date_changed"
    assert "supplier delay" in body(notice)
    replanned = (await status(handle)).next_touch
    assert replanned is not None and replanned.at - first.at == timedelta(days=2)

    # Deliver at 06:00 UTC so that the corrected check-in (noon) still lies ahead.
    early_on_delivery_day = datetime.combine(today + timedelta(days=7), time(6), UTC)
    await deals.skip(early_on_delivery_day - await deals.now())
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    delivered_at = await deals.now()
    await deals.mail(6)
    check_in = (await status(handle)).next_touch
    assert check_in is not None and check_in.what == "check-in"
    assert near(check_in.at, delivered_at + timedelta(days=1))

    # The delivery really happened a day earlier: the check-in moves with it.
    correction = DeliveryDateChanged(
        delivery_date=delivered_at.date() - timedelta(days=1), reason="late scan"
    )
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERY_DATE_CHANGED, correction)
    corrected = (await status(handle)).next_touch
    assert corrected is not None and corrected.at < check_in.at
    await deals.skip(timedelta(days=1))
    messages = await deals.settle(8)
    check_in_mail = only(messages, "check_in")
    assert timedelta(days=1) - 2 * MINUTE <= sent_at(check_in_mail) - correction_moment(correction)
    assert sent_at(check_in_mail) - correction_moment(correction) <= timedelta(days=2)
    assert "referral" in body(check_in_mail).lower()


def correction_moment(correction: DeliveryDateChanged) -> datetime:
    return datetime.combine(correction.delivery_date, time(12), UTC)


async def test_win_loss_invitation_comes_three_weeks_after_the_check_in(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    order = OrderPlaced(delivery_date=(await deals.now()).date())
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    await deals.mail(5)
    await deals.skip(timedelta(days=1, hours=1))
    check_in = only(await deals.mail(7), "check_in")

    await deals.skip(timedelta(days=20))
    await deals.quiet()
    assert "win_loss_invitation" not in steps(await deals.mail(7))
    await deals.skip(timedelta(days=1, hours=1))
    invitation = only(await deals.mail(9), "win_loss_invitation")
    waited = sent_at(invitation) - sent_at(check_in)
    assert timedelta(weeks=2) <= waited <= timedelta(weeks=4)
    assert near(sent_at(check_in) + timedelta(days=21), sent_at(invitation), 2 * MINUTE)
    await stage_is(handle, Stage.WIN_LOSS_INVITED)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="test done"))


async def test_agreed_next_step_date_replaces_the_default_delay(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)  # recorded a moment after it arrived
    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    await deals.mail(2)
    agreed = (await deals.now()) + timedelta(days=5)
    step = NextStepAgreed(at=agreed, note="buyer: call me Friday")
    await record(deals.client, deal_id(handle), BuyerSignal.NEXT_STEP_AGREED, step)
    touch = (await status(handle)).next_touch
    assert touch is not None and touch.at == agreed

    await deals.skip(timedelta(days=3))  # the default offer delay (2 days) has passed
    await deals.quiet()
    assert len(deals.sink.received) == 2
    await deals.skip(timedelta(days=2, hours=1))
    follow_up = (await deals.settle(3))[-1]
    assert step_of(follow_up) == "offer_follow_up"
    assert near(sent_at(follow_up), agreed)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="test done"))


async def test_follow_ups_are_threaded_with_the_proposal(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    await deals.skip(timedelta(days=2, hours=1))
    await deals.mail(2)
    await deals.skip(timedelta(days=4, hours=1))
    proposal, first, second = await deals.settle(3)
    assert first["In-Reply-To"] == proposal["Message-ID"]
    assert second["In-Reply-To"] == first["Message-ID"]
    assert second["References"].split() == [proposal["Message-ID"], first["Message-ID"]]
    assert first["Subject"] == second["Subject"] == f"Re: {proposal['Subject']}"
    # The id names no deal and no sequence; only our secret opens it.
    assert deal_id(handle) not in proposal["Message-ID"]
    assert own_id(deals, proposal) == f"<{deal_id(handle)}.001-proposal@seller.example.com>"
    assert "Buyer & Sons" in proposal["Subject"]  # a subject is never HTML-escaped
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="test done"))


async def test_status_and_search_attributes_follow_each_stage(deals: Deals) -> None:
    handle = await deals.start(
        kind="rfq", items=[{"name": "Widget", "quantity": 10, "list_price": "100"}]
    )
    await stage_is(handle, Stage.QUOTE_REQUESTED)  # published when the deal started
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(DEAL_OWNER) == "rep@seller.example.com"
    assert attributes.get(DEAL_VALUE) == 1000.0

    async def next_touch_published() -> None:
        current = await status(handle)
        assert current.next_touch is not None
        published = (await handle.describe()).typed_search_attributes.get(DEAL_NEXT_TOUCH)
        assert published == current.next_touch.at

    await eventually(next_touch_published)

    await record(
        deals.client,
        deal_id(handle),
        BuyerSignal.DISCOUNT_REQUESTED,
        DiscountRequested(percent=Decimal(10)),
    )

    async def discounted() -> None:
        assert (await handle.describe()).typed_search_attributes.get(DEAL_VALUE) == 900.0

    await eventually(discounted)
    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    await stage_is(handle, Stage.OFFER_RECEIVED)
    order = OrderPlaced(delivery_date=(await deals.now()).date(), order_value=Decimal("880"))
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    await stage_is(handle, Stage.ORDER_CONFIRMED)
    await record(deals.client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    await stage_is(handle, Stage.DELIVERED)
    await deals.quiet()
    current = await status(handle)
    assert current.value == Decimal("880")
    assert [m.outcome for m in current.messages] == ["sent"] * len(current.messages)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="test done"))
    final: DealStatus = await handle.result()
    assert final.stage is Stage.CANCELLED
    assert final.next_touch is None


async def test_signal_out_of_stage_is_refused_and_changes_nothing(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    before = await status(handle)
    with pytest.raises(
        Refused, match="delivered is not accepted while the deal is 'Proposal Received'"
    ):
        await record(deals.client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    after = await status(handle)
    assert after.history == before.history
    assert after.stage is Stage.PROPOSAL_RECEIVED
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="test done"))


async def test_duplicate_start_is_rejected(deals: Deals) -> None:
    deal = deals.input()
    from starter import start_deal

    await start_deal(deals.client, deals.settings, deal)
    with pytest.raises(Refused, match="already started"):
        await start_deal(deals.client, deals.settings, deal)
    await deals.settle(1)  # one proposal, not two


async def test_signal_to_an_unknown_deal_is_refused(deals: Deals) -> None:
    with pytest.raises(Refused, match="no deal 'NOPE-1'"):
        await record(deals.client, "NOPE-1", BuyerSignal.PRICE_AGREED, PriceAgreed())


async def test_order_with_a_past_delivery_date_is_refused(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    past = (await deals.now()).date() - timedelta(days=3)
    with pytest.raises(Refused, match="in the past"):
        await record(
            deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, OrderPlaced(delivery_date=past)
        )
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="test done"))
