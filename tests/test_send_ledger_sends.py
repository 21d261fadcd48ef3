"""The send activity and the send ledger together, on both databases, with real SMTP.

A retry of a send is the same activity with the same Message-ID; these tests put the
ledger row an earlier attempt would have left, then let the deal send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowHandle

from ledger.database import LedgerDatabase
from ledger.send_ledger import ClaimOutcome, SendLedger, SendState
from ledger.suppression_list import SuppressionList, SuppressionReason, SuppressionSource
from ledger.tables import REPLY_TOKENS, UNSUBSCRIBE_TOKENS
from starter import record, start_deal
from tests.conftest import Deals, body, on_both_databases, step_of, steps
from tests.test_lifecycle import deal_id, eventually, own_id, stage_is, status
from workflows.deal import RESEND_FAILED
from workflows.models import Closed, SignalPayload
from workflows.stages import BuyerSignal, Stage


def first_message_id(deal: str) -> str:
    return f"<{deal}.001-proposal@seller.example.com>"


@pytest.fixture
async def ledger(deals: Deals) -> AsyncIterator[SendLedger]:
    """The send ledger the test's worker writes to."""
    database = LedgerDatabase(deals.settings.ledger_url)
    yield SendLedger(database)
    await database.dispose()


async def started_after_an_earlier_attempt(
    deals: Deals, ledger: SendLedger, sent: bool
) -> tuple[str, WorkflowHandle]:
    """Start a deal whose proposal an earlier attempt claimed (and, if ``sent``, sent)."""
    deal = deals.input(kind="rfp")
    message_id = first_message_id(deal.deal_id)
    claim = await ledger.claim(
        message_id=message_id, deal_id="earlier", template="proposal", attempt=1,
        worker="worker-that-died:4242", now=await deals.now(),
    )  # fmt: skip
    assert claim.outcome is ClaimOutcome.CLAIMED
    if sent:
        await ledger.sent(message_id, "250 2.0.0 Ok: queued as 1A2B", await deals.now())
    deals.started.add(deal.deal_id)
    return deal.deal_id, await start_deal(deals.client, deals.settings, deal)


@on_both_databases
async def test_every_send_is_recorded_with_the_relays_reply(
    deals: Deals, ledger: SendLedger
) -> None:
    handle = await deals.start(kind="rfp")
    proposal = (await deals.settle(1))[0]
    row = await ledger.find(own_id(deals, proposal))
    assert row is not None and row.state is SendState.SENT
    assert row.deal_id == deal_id(handle) and row.template == "proposal" and row.attempt == 1
    assert row.smtp_reply is not None and row.smtp_reply.startswith("250")
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


@on_both_databases
async def test_a_retry_of_a_recorded_send_completes_without_sending(
    deals: Deals, ledger: SendLedger
) -> None:
    deal, handle = await started_after_an_earlier_attempt(deals, ledger, sent=True)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.quiet()
    assert deals.sink.received == []  # the relay already has it
    assert [m.outcome for m in (await status(handle)).messages] == ["sent"]
    await record(deals.client, deal, BuyerSignal.CANCELLED, Closed(reason="done"))


@on_both_databases
async def test_a_send_claimed_by_a_dead_attempt_is_held_shown_and_resent_by_ops(
    deals: Deals, ledger: SendLedger
) -> None:
    deal, handle = await started_after_an_earlier_attempt(deals, ledger, sent=False)

    # The buyer gets nothing; the rep is asked to check.
    task = (await deals.settle(1))[0]
    assert step_of(task) == "task_check_maybe_sent"
    assert "worker-that-died:4242" in body(task)
    current = await status(handle)
    assert current.messages[0].outcome == "failed"
    assert current.problems and current.problems[0].startswith(
        "001-proposal to bea@buyer.example.org: MaybeSent"
    )
    assert current.stage is Stage.REQUIREMENTS_CLARIFIED

    # Ops found it in no log and send it again: the same email, under its Message-ID.
    assert await record(deals.client, deal, RESEND_FAILED, SignalPayload()) == 1
    messages = await deals.settle(2)
    assert steps(messages) == ["task_check_maybe_sent", "proposal"]
    assert own_id(deals, messages[1]) == first_message_id(deal)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    resent = await ledger.find(first_message_id(deal))
    assert resent is not None and resent.state is SendState.SENT
    assert resent.worker != "worker-that-died:4242" and resent.smtp_reply
    assert (await status(handle)).messages[-1].message_id == first_message_id(deal)
    await record(deals.client, deal, BuyerSignal.CANCELLED, Closed(reason="done"))


@on_both_databases
async def test_a_data_refused_with_4xx_is_recorded_failed_and_sent_once_on_retry(
    deals: Deals, ledger: SendLedger
) -> None:
    deals.sink.refusals.append("451 4.3.0 Mailbox busy, try again later")
    handle = await deals.start(kind="rfp")
    proposal = (await deals.settle(1))[0]

    async def recorded() -> None:
        row = await ledger.find(own_id(deals, proposal))
        assert row is not None and row.state is SendState.SENT and row.attempt == 2

    await eventually(recorded)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


@on_both_databases
async def test_a_retried_send_carries_the_same_links_and_the_ledger_one_row_each(
    deals: Deals, ledger: SendLedger
) -> None:
    """Attempt 1 claims (writing the links' rows) and the relay refuses DATA; attempt 2
    claims again with the same ids: one row a recipient, and the link that went resolves."""
    deals.sink.refusals.append("451 4.3.0 Mailbox busy, try again later")
    handle = await deals.start(kind="rfp")
    proposal = (await deals.settle(1))[0]

    async def recorded() -> None:
        row = await ledger.find(own_id(deals, proposal))
        assert row is not None and row.state is SendState.SENT and row.attempt == 2

    await eventually(recorded)
    database = ledger.database
    links = await database.run(lambda c: c.execute(select(UNSUBSCRIBE_TOKENS)).all())
    replies = await database.run(lambda c: c.execute(select(REPLY_TOKENS)).all())
    assert len(links) == 1 and len(replies) == 1
    signer = deals.settings.token_signer()
    token = str(proposal["List-Unsubscribe"]).split(",")[0].strip(" <>").rsplit("/", 1)[1]
    assert signer.unsubscribe_token_id_of(token) == links[0].token_id
    assert links[0].message_id == own_id(deals, proposal) and links[0].position == 0
    assert signer.reply_token_id_of(str(proposal["Reply-To"])) == replies[0].token_id
    assert replies[0].deal_id == deal_id(handle)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


@on_both_databases
async def test_a_copy_refused_for_one_recipient_is_retried_for_that_recipient_only(
    deals: Deals, ledger: SendLedger
) -> None:
    committee = [
        {"name": "Eve Economic", "email": "eve@buyer.example.org", "role": "economic_buyer"},
        {"name": "Tom Technical", "email": "tom@buyer.example.org", "role": "technical"},
    ]
    # The proposal goes as one copy each: Eve's is taken, Tom's refused once with 451.
    deals.sink.refusals_for["tom@buyer.example.org"] = "451 4.3.0 Mailbox busy, try later"
    handle = await deals.start(kind="rfp", contacts=committee)
    copies = await deals.settle(2)
    assert steps(copies) == ["proposal", "proposal"]
    assert sorted(mail.rcpt_tos[0] for mail in deals.sink.received) == [
        "eve@buyer.example.org", "tom@buyer.example.org"
    ]  # fmt: skip

    async def recorded() -> None:
        row = await ledger.find(own_id(deals, copies[0]))
        assert row is not None and row.state is SendState.SENT and row.attempt == 2
        assert row.delivered_copies == {0, 1}

    await eventually(recorded)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_a_deal_that_closes_holding_an_email_waits_for_the_resend(
    deals: Deals, ledger: SendLedger
) -> None:
    deal, handle = await started_after_an_earlier_attempt(deals, ledger, sent=False)
    assert steps(await deals.settle(1)) == ["task_check_maybe_sent"]
    await record(deals.client, deal, BuyerSignal.DISQUALIFIED, Closed(reason="no budget"))

    # Closed, but still running: ending now would lose the held proposal.
    closed = await status(handle)
    assert closed.stage is Stage.DISQUALIFIED
    assert closed.next_touch is not None
    assert closed.next_touch.what == "ends unless failed emails are resent"
    assert closed.next_touch.at == closed.history[-1].at + timedelta(days=14)
    assert "resend them by" in closed.problems[-1]
    await deals.skip(timedelta(days=13))

    # Ops resend it (an update: a deal that had ended would refuse it): it goes out
    # once, under its Message-ID, and the deal ends.
    assert await record(deals.client, deal, RESEND_FAILED, SignalPayload()) == 1
    final = await handle.result()
    assert steps(await deals.settle(2)) == ["task_check_maybe_sent", "proposal"]
    assert final.messages[-1].outcome == "sent"
    assert final.messages[-1].message_id == first_message_id(deal)


async def test_a_held_email_nobody_resends_is_dropped_when_the_window_ends(
    deals: Deals, ledger: SendLedger
) -> None:
    deal, handle = await started_after_an_earlier_attempt(deals, ledger, sent=False)
    assert steps(await deals.settle(1)) == ["task_check_maybe_sent"]
    await record(deals.client, deal, BuyerSignal.DISQUALIFIED, Closed(reason="no budget"))
    await stage_is(handle, Stage.DISQUALIFIED)

    await deals.skip(timedelta(days=15))
    final = await handle.result()
    assert final.problems[-1] == (f"dropped, never resent: {first_message_id(deal)} (proposal)")
    assert final.next_touch is None
    await deals.quiet()
    assert steps([mail.message for mail in deals.sink.received]) == ["task_check_maybe_sent"]


async def test_a_cancelled_deal_ends_at_once_dropping_what_failed(
    deals: Deals, ledger: SendLedger
) -> None:
    deal, handle = await started_after_an_earlier_attempt(deals, ledger, sent=False)
    assert steps(await deals.settle(1)) == ["task_check_maybe_sent"]
    await record(deals.client, deal, BuyerSignal.CANCELLED, Closed(reason="buyer went bust"))
    final = await handle.result()  # a cancelled deal sends nothing more
    assert final.stage is Stage.CANCELLED and final.messages[0].outcome == "failed"


@on_both_databases
async def test_a_held_email_marked_delivered_stays_sent_after_the_buyer_opts_out(
    deals: Deals, ledger: SendLedger, suppressions: SuppressionList
) -> None:
    deal, handle = await started_after_an_earlier_attempt(deals, ledger, sent=False)
    assert steps(await deals.settle(1)) == ["task_check_maybe_sent"]
    # The buyer has the proposal (the relay's log says so) and opts out later on.
    await ledger.mark_delivered(first_message_id(deal), "in the relay's log", await deals.now())
    await suppressions.add(
        "bea@buyer.example.org", SuppressionReason.OPTED_OUT, SuppressionSource.CLI,
        now=await deals.now(),
    )  # fmt: skip

    # The resend asks the ledger before the list: the email was sent, not skipped.
    assert await record(deals.client, deal, RESEND_FAILED, SignalPayload()) == 1
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    assert (await status(handle)).messages[-1].outcome == "sent"
    await deals.quiet()
    assert steps([mail.message for mail in deals.sink.received]) == ["task_check_maybe_sent"]
    await record(deals.client, deal, BuyerSignal.CANCELLED, Closed(reason="done"))
