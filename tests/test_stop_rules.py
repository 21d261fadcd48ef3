"""Stop rules and holds: a reply hands the deal to the rep, out-of-office and pauses hold timers."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from ledger.suppression_list import SuppressionList
from starter import Refused, record
from tests.conftest import Deals, sent_at, step_of, steps
from tests.test_lifecycle import deal_id, eventually, near, stage_is, status
from workflows.models import (
    BuyerReplied,
    Closed,
    OptedOut,
    OutOfOffice,
    Paused,
    PriceAgreed,
    SignalPayload,
)
from workflows.stages import BuyerSignal, Stage

COMMITTEE = [
    {"name": "Eve Economic", "email": "eve@buyer.example.org", "role": "economic_buyer"},
    {"name": "Tom Technical", "email": "tom@buyer.example.org", "role": "technical"},
]


async def quiet(deals: Deals, count: int) -> None:
    await deals.quiet()
    assert len(deals.sink.received) == count, steps([m.message for m in deals.sink.received])


async def test_a_reply_from_any_contact_stops_follow_ups_until_the_next_stage(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp", contacts=COMMITTEE)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(2)  # the proposal: one copy for each of the two contacts
    with pytest.raises(Refused, match="not a contact of this deal"):
        await record(
            deals.client, deal_id(handle), BuyerSignal.BUYER_REPLIED,
            BuyerReplied(contact="stranger@example.org"),
        )  # fmt: skip
    reply = BuyerReplied(contact="tom@buyer.example.org", source="mailbox")
    await record(deals.client, deal_id(handle), BuyerSignal.BUYER_REPLIED, reply)
    task = (await deals.mail(3))[-1]
    assert step_of(task) == "task_buyer_replied"
    assert "tom@buyer.example.org" in str(task.get_body(("plain",)).get_content())
    current = await status(handle)
    assert current.replied and current.next_touch is None

    await deals.skip(timedelta(days=30))
    await quiet(deals, 3)  # no follow-up, and the deal does not end No Response
    assert (await status(handle)).stage is Stage.PROPOSAL_RECEIVED

    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    await deals.mail(4)
    await deals.skip(timedelta(days=2, hours=1))
    assert steps(await deals.settle(5))[-1] == "offer_follow_up"
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_out_of_office_holds_follow_ups_until_the_return_date_and_is_no_reply(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    back = await deals.now() + timedelta(days=5)
    await record(deals.client, deal_id(handle), BuyerSignal.OUT_OF_OFFICE, OutOfOffice(until=back))
    await deals.skip(timedelta(days=3))  # the first follow-up (2 days) came due meanwhile
    await quiet(deals, 1)
    await deals.skip(timedelta(days=2, hours=1))
    first = (await deals.mail(2))[-1]
    assert step_of(first) == "proposal_follow_up"
    assert near(sent_at(first), back)
    assert not (await status(handle)).replied
    # The cadence goes on from the follow-up that went out on return.
    await deals.skip(timedelta(days=4, hours=1))
    second = (await deals.settle(3))[-1]
    assert near(sent_at(second), sent_at(first) + timedelta(days=4))
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_a_paused_deal_sends_nothing_and_an_overdue_touch_fires_once_on_resume(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    await record(deals.client, deal_id(handle), BuyerSignal.PAUSED, Paused(note="rep on holiday"))
    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    await deals.skip(timedelta(days=9))  # follow-ups of 2 and 4 days and the offer came due
    await quiet(deals, 1)
    assert (await status(handle)).paused

    await record(deals.client, deal_id(handle), BuyerSignal.RESUMED, SignalPayload())
    resumed_at = await deals.now()
    messages = await deals.settle(2)
    assert steps(messages) == ["proposal", "final_offer"]
    assert near(sent_at(messages[1]), resumed_at)
    await deals.skip(timedelta(days=2, hours=1))
    follow_up = (await deals.settle(3))[-1]
    assert step_of(follow_up) == "offer_follow_up"
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_timers_due_during_a_pause_fire_once_when_it_ends_by_itself(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    until = await deals.now() + timedelta(days=8)
    await record(deals.client, deal_id(handle), BuyerSignal.PAUSED, Paused(until=until))
    await deals.skip(timedelta(days=7))  # touches at 2 and 6 days came due
    await quiet(deals, 1)
    await deals.skip(timedelta(days=1, hours=1))
    messages = await deals.settle(2)
    assert steps(messages) == ["proposal", "proposal_follow_up"]
    assert near(sent_at(messages[1]), until)
    current = await status(handle)
    assert not current.paused
    assert current.next_touch is not None
    assert near(current.next_touch.at, until + timedelta(days=4))
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_skipping_a_touch_moves_on_to_the_next_one(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    before = await status(handle)
    assert before.next_touch is not None and before.next_touch.what == "follow-up 1"
    await record(deals.client, deal_id(handle), BuyerSignal.TOUCH_SKIPPED, SignalPayload())
    after = await status(handle)
    assert after.next_touch is not None and after.next_touch.what == "follow-up 2"
    assert near(after.next_touch.at, before.next_touch.at + timedelta(days=4))
    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    await stage_is(handle, Stage.OFFER_RECEIVED)
    await record(deals.client, deal_id(handle), BuyerSignal.PAUSED, Paused())
    with pytest.raises(Refused, match="no follow-up to skip"):
        await record(deals.client, deal_id(handle), BuyerSignal.TOUCH_SKIPPED, SignalPayload())
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_an_opt_out_ends_the_deal_and_no_deal_mails_the_address_again(
    deals: Deals, suppressions: SuppressionList, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="temporalio.activity")
    first = await deals.start(kind="rfp")
    await stage_is(first, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    opt_out = OptedOut(source="unsubscribe link")
    assert await record(deals.client, deal_id(first), BuyerSignal.OPTED_OUT, opt_out) == (
        Stage.OPTED_OUT
    )

    # Polled in real time: the deal writes the list itself after the update returns.
    async def first_ended() -> None:
        assert (await status(first)).stage is Stage.OPTED_OUT

    await eventually(first_ended)
    await deals.skip(timedelta(days=10))
    await quiet(deals, 1)  # the deal is over: it sends nothing more

    # Ops cannot start another deal that could only email this buyer.
    async def listed() -> None:
        assert await suppressions.find(["bea@buyer.example.org"]) != {}

    await eventually(listed)
    with pytest.raises(Refused, match="every contact is on the suppression list") as refusal:
        await deals.start(kind="rfp")
    assert "bea@buyer.example.org opted out on deal " + deal_id(first) in str(refusal.value)

    # A case started a moment before the opt-out: still nothing reaches the address.
    second = await deals.start_unchecked(
        kind="rfq", items=[{"name": "Widget", "quantity": 1, "list_price": "9"}]
    )

    async def ended() -> None:
        assert (await status(second)).stage is Stage.OPTED_OUT

    await eventually(ended)
    other = await status(second)
    quotation = other.messages[0]
    assert quotation.template == "quotation" and quotation.outcome == "skipped"
    assert "opted out" in quotation.error and deal_id(first) in quotation.error
    # The rep's negotiation task still went out; the buyer got nothing.
    assert steps(await deals.settle(2)) == ["proposal", "task_negotiate_quote"]
    # The expected refusal is one line in the worker's log, never a traceback.
    refusals = [r for r in caplog.records if "OptedOut" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None
    assert "not sent (OptedOut): suppressed: bea@buyer.example.org opted out" in (
        refusals[0].getMessage()
    )
    loud = [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO]
    assert loud == [], [r.getMessage() for r in loud]


async def test_a_hard_bounce_suppresses_the_address_for_other_deals(deals: Deals) -> None:
    deals.sink.refused_recipients["bea@buyer.example.org"] = "550 5.1.1 No such mailbox"
    first = await deals.start(kind="rfp")

    async def bounced() -> None:
        assert [m.outcome for m in (await status(first)).messages][:1] == ["bounced"]

    await eventually(bounced)
    deals.sink.refused_recipients.clear()  # even a mailbox that would now accept stays suppressed
    second = await deals.start_unchecked(kind="rfp")

    async def skipped() -> None:
        messages = (await status(second)).messages
        assert messages and messages[0].outcome == "skipped"
        assert "bounced" in messages[0].error

    await eventually(skipped)
    await deals.quiet()
    assert "proposal" not in steps([m.message for m in deals.sink.received])
    for handle in (first, second):
        await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))
