"""What happens when an email cannot go out: broken template, SMTP 4xx, 5xx, outage.

Nothing is lost and nothing is sent twice: permanent failures are recorded on
the deal after one attempt, transient ones are retried until delivered once.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email_models import DealFacts, EmailContext, EmailRequest, Party
from activities.rendering import TemplateLibrary
from devstack import OutboxSink
from settings import Settings
from starter import record, start_deal
from tests.conftest import Deals, pending_sends, send_attempts, steps
from tests.test_inbound_signals import eventually as status_when
from tests.test_lifecycle import deal_id, eventually, own_id, stage_is, status
from worker import build_mailer, build_worker
from workflows.deal import RESEND_FAILED
from workflows.models import Closed, SignalPayload
from workflows.stages import BuyerSignal, Stage


async def retrying(handle: WorkflowHandle) -> None:
    """Wait until the deal's send activity has failed once and is being retried."""

    async def second_attempt() -> None:
        pending = await pending_sends(handle)
        assert pending and pending[0].attempt >= 2, pending

    await eventually(second_attempt)


async def test_missing_template_variable_is_recorded_once_and_resent_after_the_fix(
    deals: Deals, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(deals.settings.templates_dir, templates)
    proposal = templates / "proposal" / "body.txt"
    good = proposal.read_text()
    proposal.write_text(good + "\nYour code: {{ deal.voucher_code }}\n")
    broken = deals.settings.model_copy(
        update={"templates_dir": templates, "temporal_task_queue": f"q-{uuid.uuid4().hex[:8]}"}
    )
    deal = deals.input(kind="rfp")
    mailer = build_mailer(broken)
    async with build_worker(deals.client, broken, mailer):
        handle = await start_deal(deals.client, broken, deal)

        async def recorded() -> None:
            assert (await status(handle)).problems

        await eventually(recorded)
        current = await status(handle)
        assert "TemplateProblem" in current.problems[0]
        assert "voucher_code" in current.problems[0]
        assert [m.outcome for m in current.messages] == ["failed"]
        assert current.stage is Stage.REQUIREMENTS_CLARIFIED
        await deals.quiet(handle)  # a retry, had there been one, would keep it busy
        assert await send_attempts(handle) == [1]
        assert deals.sink.received == []

        # The template is fixed and redeployed (templates are compiled once per worker);
        # ops send the failed email again.
        proposal.write_text(good)
        mailer.templates = TemplateLibrary(templates)
        assert await record(deals.client, deal.deal_id, RESEND_FAILED, SignalPayload()) == 1
        messages = await deals.settle(1)
        assert steps(messages) == ["proposal"]
        assert own_id(deals, messages[0]) == current.messages[0].message_id  # the same email
        await stage_is(handle, Stage.PROPOSAL_RECEIVED)
        await record(deals.client, deal.deal_id, BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_smtp_4xx_is_retried_and_delivered_exactly_once(deals: Deals) -> None:
    deals.sink.refusals.append("451 4.3.0 Mailbox busy, try again later")
    handle = await deals.start(kind="rfp")
    messages = await deals.settle(1)
    assert steps(messages) == ["proposal"]
    assert await send_attempts(handle) == [2]
    current = await status(handle)
    assert [m.outcome for m in current.messages] == ["sent"]
    assert current.problems == []
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_smtp_outage_is_waited_out_without_losing_or_doubling_the_email(
    deals: Deals,
) -> None:
    deals.sink.stop()
    handle = await deals.start(kind="rfp")
    await retrying(handle)  # the first attempts meet a refused connection
    late = await status_when(handle, lambda s: bool(s.sending_problems))
    assert late.messages[0].outcome == "sending"  # still in flight, and why it is late:
    assert f"{late.messages[0].message_id} attempt " in late.sending_problems[0]
    assert "SMTPConnectError" in late.sending_problems[0]
    deals.sink.start()  # the SMTP server is back, on the same port
    messages = await deals.settle(1)
    assert steps(messages) == ["proposal"]
    assert (await send_attempts(handle))[0] >= 2
    assert (await status(handle)).sending_problems == []  # cleared once it went out
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


async def test_smtp_5xx_is_recorded_as_a_bounce_and_the_address_is_not_mailed_again(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp")
    await deals.mail(1)
    deals.sink.refused_recipients["bea@buyer.example.org"] = "550 5.1.1 No such mailbox"
    await deals.skip(timedelta(days=2, hours=1))
    messages = await deals.mail(2)
    assert steps(messages) == ["proposal", "task_fix_address"]
    task = messages[1]
    assert "rep@seller.example.com" in str(task["To"])
    assert "550" in str(task.get_body(preferencelist=("plain",)).get_content())

    await deals.quiet()  # the task arrives before the deal records its outcome
    current = await status(handle)
    assert [m.outcome for m in current.messages] == ["sent", "bounced", "sent"]
    assert "MailboxRejected" in current.problems[0]
    assert "550 5.1.1" in current.problems[0]
    assert await send_attempts(handle) == [1, 1, 1]

    await deals.skip(timedelta(days=4, hours=1))  # the next follow-up comes due

    async def skipped() -> None:
        outcomes = [m.outcome for m in (await status(handle)).messages]
        assert outcomes == ["sent", "bounced", "sent", "skipped"]

    await eventually(skipped)
    assert len(deals.sink.received) == 2
    assert await send_attempts(handle) == [1, 1, 1]
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


def proposal(company: str, name: str) -> EmailRequest:
    """A proposal's send request, as a deal makes it, to a buyer called ``name``."""
    buyer = Party(name=name, email="bea@buyer.example.org", time_zone="Europe/Berlin")
    facts = DealFacts(deal_id="D-1", company=company, kind="rfp", stage="Proposal Received",
                      currency="EUR", owner="rep@seller.example.com")  # fmt: skip
    return EmailRequest(
        message_id="<D-1.001-proposal@seller.example.com>",
        template="proposal",
        to=[buyer],
        date=datetime(2026, 12, 8, 9, tzinfo=UTC),
        context=EmailContext(deal=facts, recipient=buyer, buyer=buyer),
        buyer_facing=True,
    )


async def refusal(settings: Settings, request: EmailRequest) -> ApplicationError:
    """What the send activity raises for ``request``, run as Temporal runs it."""
    mailer = build_mailer(settings)
    try:
        with pytest.raises(ApplicationError) as refused:
            await ActivityEnvironment().run(mailer.send_email, request)
    finally:
        await mailer.pool.close()
        assert mailer.ledger is not None
        await mailer.ledger.database.dispose()
    return refused.value


# Intake and the deal itself (refused as it starts: tests/test_hostile_input.py) keep these
# from a send; should one reach the send activity all the same, it must not retry for a day
# nor inject a header: it fails for good on its first attempt, having sent nothing.


async def test_a_name_with_a_line_feed_fails_the_send_for_good_and_sends_nothing(
    settings: Settings, sink: OutboxSink
) -> None:
    request = proposal("Buyer & Sons", "Bea\r\nBcc: mallory@evil.example")
    refused = await refusal(settings, request)
    assert (refused.type, refused.non_retryable) == ("InvalidAddress", True)
    assert refused.message.startswith("the name") and "control character" in refused.message
    assert sink.received == []


async def test_a_subject_with_a_control_character_fails_the_send_for_good_and_sends_nothing(
    settings: Settings, sink: OutboxSink
) -> None:
    """A company with a C1 CSI (U+009B, which drives a terminal as ESC [ does, and is no
    whitespace that rendering would fold into a space) is rendered into the subject."""
    refused = await refusal(settings, proposal("ACME\x9b2J GmbH", "Bea Buyer"))
    assert (refused.type, refused.non_retryable) == ("TemplateProblem", True)
    assert refused.message.startswith("the subject") and "control character" in refused.message
    assert sink.received == []
