"""The deal's side of inbound mail: the ``inbound_message`` signal, applied once per
Message-ID, and the headers that let the buyer's answers find their deal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle

from activities.signed_tokens import TokenSigner
from ledger.database import LedgerDatabase
from ledger.email_tokens import TokenBook
from ledger.suppression_list import SuppressionList, SuppressionReason
from starter import Refused, record
from tests.conftest import MAIL_WITHIN, Deals, body, step_of, steps
from tests.test_lifecycle import deal_id, stage_is, status
from workflows.deal import INBOUND_MESSAGE
from workflows.models import (
    DealStatus,
    DeliveryDateChanged,
    InboundKind,
    InboundMessage,
    OrderPlaced,
)
from workflows.stages import BuyerSignal, Stage


async def eventually(
    handle: WorkflowHandle, holds: Callable[[DealStatus], bool], within: float = MAIL_WITHIN
) -> DealStatus:
    """The deal's status once ``holds`` is true of it (polled in real time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not holds(current := await status(handle)):
        assert loop.time() < deadline, f"status never matched: {current}"
        await asyncio.sleep(0.1)
    return current


async def inbound(deals: Deals, deal: str, mail: InboundMessage) -> None:
    await deals.client.get_workflow_handle(f"deal-{deal}").signal(INBOUND_MESSAGE, mail)


async def test_buyer_emails_carry_the_deal_reply_token_and_one_click_unsubscribe(
    deals: Deals, ledger_url: str
) -> None:
    handle = await deals.start(kind="rfp")
    proposal = (await deals.mail(1))[0]
    deal = deal_id(handle)
    reply_to = str(proposal["Reply-To"])
    signer = TokenSigner(deals.settings.signing_key())
    assert reply_to.startswith("sales+r") and reply_to.endswith("@seller.example.com")
    # Opaque: the Reply-To names no deal; the ledger knows what its id stands for.
    assert deal not in reply_to and len(reply_to.partition("@")[0]) <= 64
    book = TokenBook(LedgerDatabase(ledger_url))
    reply_id = signer.reply_token_id_of(reply_to)
    assert reply_id is not None and await book.deal_of_reply(reply_id) == deal
    assert proposal["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = [part.strip(" <>") for part in str(proposal["List-Unsubscribe"]).split(",")]
    https, mailto = links
    assert https.startswith("http") and "/unsubscribe/" in https
    token = https.rsplit("/", 1)[1]
    # The link names neither the address nor the deal: an id and a MAC, resolved by the ledger.
    assert token.startswith("t2.") and "bea" not in token.lower() and deal not in https
    link = await book.opt_out_link(signer.unsubscribe_token_id_of(token))
    assert link is not None and (link.deal_id, link.position) == (deal, 0)
    assert link.address_key == await SuppressionList(book.database).key_of("bea@buyer.example.org")
    await book.database.dispose()
    assert mailto == f"mailto:sales+unsubscribe@seller.example.com?subject=unsubscribe%20{token}"
    # No internal id in a buyer's headers: no X-Dealflow-*, a Message-ID that names nothing.
    assert proposal["X-Dealflow-Deal"] is None and proposal["X-Dealflow-Step"] is None
    assert deal not in str(proposal["Message-ID"]) and "proposal" not in str(proposal["Message-ID"])

    # A rep task is not a marketing email: no unsubscribe, no deal token to reply to.
    await inbound(deals, deal, reply("<r1@buyer.example.org>"))
    task = (await deals.mail(2))[-1]
    assert step_of(task) == "task_buyer_replied"
    assert task["List-Unsubscribe"] is None and task["Reply-To"] is None


def reply(message_id: str, **fields: object) -> InboundMessage:
    values: dict[str, object] = {
        "kind": InboundKind.REPLY,
        "event_id": message_id,
        "source": "mailbox",
        "sender": "bea@buyer.example.org",
        "subject": "Re: Your proposal",
        "snippet": "Can we talk about the installation date?",
    }
    return InboundMessage.model_validate({**values, **fields})


async def test_a_reply_read_twice_stops_the_cadence_once(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    await inbound(deals, deal_id(handle), reply("<r1@buyer.example.org>"))
    await inbound(deals, deal_id(handle), reply("<r1@buyer.example.org>"))  # a re-read mailbox
    task = (await deals.mail(2))[-1]
    assert "Can we talk about the installation date?" in body(task)
    await deals.quiet()
    current = await status(handle)
    assert current.replied and current.next_touch is None
    replies = [h for h in current.history if h.signal == BuyerSignal.BUYER_REPLIED.value]
    assert len(replies) == 1 and replies[0].source == "mailbox"
    assert steps(await deals.settle(2)) == ["proposal", "task_buyer_replied"]

    # A second, different reply is news again.
    await inbound(deals, deal_id(handle), reply("<r2@buyer.example.org>"))
    await deals.settle(3)


async def test_an_auto_reply_with_a_return_date_holds_follow_ups_until_that_day(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    back = (await deals.now()).date() + timedelta(days=6)
    away = reply("<ooo@buyer.example.org>", kind=InboundKind.OUT_OF_OFFICE, returns_on=back)
    await inbound(deals, deal_id(handle), away)
    current = await eventually(handle, lambda s: s.held_until is not None)
    assert current.held_until is not None
    # Midnight of the return day in the buyer's zone (Europe/Berlin).
    assert current.held_until.date() in (back, back - timedelta(days=1))
    assert not current.replied
    assert current.next_touch is not None and current.next_touch.at >= current.held_until


async def test_a_hard_bounce_suppresses_the_address_flags_the_deal_and_tells_the_rep(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    bounce = reply(
        "<dsn-1@mx.buyer.example.org>",
        kind=InboundKind.BOUNCE,
        sender="mailer-daemon@mx.buyer.example.org",
        failed_recipient="bea@buyer.example.org",
        bounce_status="5.1.1",
        permanent=True,
    )
    await inbound(deals, deal_id(handle), bounce)
    await inbound(deals, deal_id(handle), bounce)
    task = (await deals.settle(2))[-1]
    assert step_of(task) == "task_fix_address"
    assert "5.1.1" in body(task)
    current = await status(handle)
    assert len(current.problems) == 1 and "bea@buyer.example.org" in current.problems[0]

    # The address is on the global list: a deal started a moment before sends nothing.
    other = await deals.start_unchecked(kind="rfp")
    await eventually(other, lambda s: bool(s.messages) and s.messages[0].outcome == "skipped")
    assert len(deals.sink.received) == 2


async def test_a_transient_bounce_changes_nothing_but_is_kept_in_the_history(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)  # the proposal's own stage change first
    await deals.mail(1)
    full = reply(
        "<dsn-2@mx.buyer.example.org>",
        kind=InboundKind.BOUNCE,
        failed_recipient="bea@buyer.example.org",
        bounce_status="4.2.2",
        permanent=False,
    )
    await inbound(deals, deal_id(handle), full)
    current = await eventually(handle, lambda s: s.history[-1].signal == "inbound bounce")
    assert "4.2.2 transient" in current.history[-1].note
    assert not current.problems and current.next_touch is not None


async def test_an_event_id_applied_once_is_refused_the_second_time(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    today = (await deals.now()).date()
    order = OrderPlaced(delivery_date=today + timedelta(days=3), event_id="erp-77")
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    moved = {"delivery_date": today + timedelta(days=5), "reason": "late", "event_id": "erp-77"}
    with pytest.raises(Refused, match="event erp-77 was already applied"):
        await record(
            deals.client,
            deal_id(handle),
            BuyerSignal.DELIVERY_DATE_CHANGED,
            DeliveryDateChanged.model_validate(moved),
        )
    assert (await status(handle)).delivery_date == order.delivery_date


async def test_the_rep_answering_a_task_email_is_no_buyer_reply(deals: Deals) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    rep = reply("<rep-1@seller.example.com>", sender=deals.settings.rep_address)
    await inbound(deals, deal_id(handle), rep)
    current = await eventually(handle, lambda s: s.history[-1].note == "from our own side")
    assert not current.replied and current.next_touch is not None
    await deals.settle(1)


async def test_rep_tasks_are_never_held_back_by_the_suppression_list(
    deals: Deals, suppressions: SuppressionList
) -> None:
    """Opt-outs and bounces are about buyers: the rep's own address once bouncing must
    not make the deal's tasks vanish."""
    rep = str(deals.settings.rep_address)
    await suppressions.add(rep, SuppressionReason.BOUNCED, "test", now=await deals.now())
    handle = await deals.start(kind="rfi")
    task = (await deals.mail(1))[0]
    assert step_of(task) == "task_clarify_requirements"
    assert rep in str(task["To"])
    await deals.quiet()  # the email arrives before the deal records its outcome
    assert (await status(handle)).messages[0].outcome == "sent"


async def test_a_reply_from_someone_not_a_contact_changes_nothing_and_tells_the_rep(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    before = await status(handle)
    # A stranger (or a colleague at the buyer's domain) quoting one of our Message-IDs.
    lure = reply(
        "<lure@evil.example>",
        sender="mallory@evil.example",
        snippet="Our bank details changed, please pay to the account below.",
    )
    await inbound(deals, deal_id(handle), lure)
    task = (await deals.mail(2))[-1]
    assert step_of(task) == "task_unverified_reply"
    assert "unverified sender" in body(task) and "mallory@evil.example" in body(task)
    assert "Unverified sender" in str(task["Subject"])
    current = await status(handle)
    assert not current.replied and current.next_touch == before.next_touch
    assert current.history[-1].note.startswith("unverified sender mallory@evil.example")

    # An out-of-office from a stranger holds nothing either.
    away = reply("<ooo@evil.example>", kind=InboundKind.OUT_OF_OFFICE, sender="x@evil.example")
    await inbound(deals, deal_id(handle), away)
    held = await eventually(handle, lambda d: d.history[-1].signal == "inbound out_of_office")
    assert held.held_until is None and held.next_touch == before.next_touch


async def test_a_mailed_return_date_past_sixty_days_holds_only_the_default_pause(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    now = await deals.now()
    far = reply(
        "<far@buyer.example.org>", kind=InboundKind.OUT_OF_OFFICE,
        returns_on=(now + timedelta(days=400)).date().isoformat(),
    )  # fmt: skip
    await inbound(deals, deal_id(handle), far)
    current = await eventually(handle, lambda d: d.held_until is not None)
    away = current.history[-1]
    assert away.signal == BuyerSignal.OUT_OF_OFFICE.value
    assert current.held_until == away.at + deals.settings.default_cadence.out_of_office_pause
