"""The mailbox poller against a real IMAP server (Dovecot on loopback) and real deals:
replies stop the cadence once, however often the mailbox is read."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.client import Client, WorkflowHandle

from devstack import LocalMailbox
from ledger.suppression_list import SuppressionList
from settings import ImapTls, Settings
from starter import inbox, record
from tests.conftest import MAIL_WITHIN, Deals, deal_of, on_both_databases, step_of, steps
from tests.test_inbound_signals import eventually
from tests.test_lifecycle import deal_id, stage_is, status
from worker import start_mailbox_poller
from workflows.mailbox_poller import POLL_NOW, MailboxPollerReport
from workflows.models import Closed
from workflows.stages import BuyerSignal, Stage


@pytest.fixture
def mailbox() -> Iterator[LocalMailbox]:
    # Not under pytest's tmp_path: Dovecot's own users must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="dealflow-mail-"))
    folder.chmod(0o755)
    server = LocalMailbox(folder, user="sales", password="s3cret").start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mailbox_password() -> str:
    """The password the worker logs in with (a test may give a wrong one)."""
    return "s3cret"


@pytest.fixture
def settings(settings: Settings, mailbox: LocalMailbox, mailbox_password: str) -> Settings:
    """The shared test settings, reading replies from the local Dovecot."""
    return settings.model_copy(
        update={
            "imap_host": "127.0.0.1",
            "imap_port": mailbox.port,
            "imap_tls": ImapTls.NONE,
            "imap_username": "sales",
            "imap_password": SecretStr(mailbox_password),
        }
    )


def reply_to(ours: EmailMessage, text: str, *, threaded: bool = True) -> bytes:
    """What the buyer's mail program sends back: new text on top, ours quoted below."""
    answer = EmailMessage()
    answer["From"] = "Bea Buyer <bea@buyer.example.org>"
    answer["To"] = str(ours["Reply-To"])
    answer["Subject"] = f"Re: {ours['Subject']}"
    answer["Message-ID"] = make_msgid(domain="buyer.example.org")
    if threaded:
        answer["In-Reply-To"] = str(ours["Message-ID"])
        answer["References"] = str(ours["Message-ID"])
    quoted = "\n".join(
        f"> {line}" for line in str(ours.get_body(("plain",)).get_content()).split("\n")
    )
    answer.set_content(f"{text}\n\nOn Monday, Seller GmbH wrote:\n{quoted}\n")
    return bytes(answer)


def out_of_office(ours: EmailMessage) -> bytes:
    notice = EmailMessage()
    notice["From"] = "Bea Buyer <bea@buyer.example.org>"
    notice["To"] = str(ours["Reply-To"])
    notice["Subject"] = f"Automatic reply: {ours['Subject']}"
    notice["Auto-Submitted"] = "auto-replied"
    notice["In-Reply-To"] = str(ours["Message-ID"])
    notice["Message-ID"] = make_msgid(domain="buyer.example.org")
    notice.set_content("I am out of the office until 14 December 2099 with limited access.")
    return bytes(notice)


async def poll(
    client: Client, handle: WorkflowHandle, holds: Callable[[MailboxPollerReport], bool]
):  # type: ignore[no-untyped-def]
    """Ask the poller to read now; wait (real time) until its report satisfies ``holds``."""
    await handle.signal(POLL_NOW)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAIL_WITHIN
    while not holds(report := await inbox(client)):
        assert loop.time() < deadline, f"the poller never got there: {report}"
        await asyncio.sleep(0.2)
    return report


async def started_poller(deals: Deals) -> WorkflowHandle:
    poller_id = await start_mailbox_poller(deals.client, deals.settings)
    return deals.client.get_workflow_handle(poller_id)


async def test_a_reply_in_the_mailbox_stops_the_cadence_once_even_when_read_again(
    deals: Deals, mailbox: LocalMailbox
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    deal = deal_id(handle)

    mailbox.deliver(deals.sink.received[0].data)  # our own copy (a Bcc to the mailbox)
    mailbox.deliver(reply_to(proposal, "Looks good. Can you deliver in March?"))
    poller = deals.client.get_workflow_handle(
        await start_mailbox_poller(deals.client, deals.settings)
    )
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 2)

    own, answer = report.recent
    assert own.kind == "own_message" and own.deal_id is None
    assert answer.kind == "human_reply" and answer.deal_id == deal and answer.how == "in-reply-to"
    assert answer.outcome == f"signalled reply to deal {deal}"
    assert answer.snippet.startswith("Looks good. Can you deliver in March?")
    task = (await deals.mail(2))[-1]
    assert step_of(task) == "task_buyer_replied"
    assert "Can you deliver in March?" in str(task.get_body(("plain",)).get_content())
    assert (await status(handle)).replied

    # The poller dies and its cursor is lost: a new one reads everything again.
    await poller.terminate("simulated crash before the cursor was saved")
    poller = deals.client.get_workflow_handle(
        await start_mailbox_poller(deals.client, deals.settings)
    )
    again = await poll(deals.client, poller, lambda r: len(r.recent) == 2)
    assert again.cursor.last_uid == report.cursor.last_uid
    await deals.quiet()
    history = (await status(handle)).history
    assert [h.signal for h in history].count(BuyerSignal.BUYER_REPLIED.value) == 1
    assert steps(await deals.settle(2)) == ["proposal", "task_buyer_replied"]


async def test_a_new_uidvalidity_rescans_the_mailbox_without_signalling_twice(
    deals: Deals, mailbox: LocalMailbox
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    reply = reply_to(proposal, "Please call me tomorrow.", threaded=False)
    mailbox.deliver(reply)
    poller = deals.client.get_workflow_handle(
        await start_mailbox_poller(deals.client, deals.settings)
    )
    first = await poll(deals.client, poller, lambda r: len(r.recent) == 1)
    assert first.recent[0].how == "reply-to token"  # no threading headers: the token found it
    await deals.mail(2)

    # The mailbox is rebuilt (server migration): new UIDVALIDITY, old mail plus one new message.
    await asyncio.sleep(1.1)  # Dovecot's UIDVALIDITY is a timestamp in seconds
    mailbox.recreate()
    mailbox.deliver(reply)
    mailbox.deliver(out_of_office(proposal))
    second = await poll(
        deals.client, poller, lambda r: r.cursor.uid_validity != first.cursor.uid_validity
    )
    assert second.cursor.last_uid == 2
    kinds = {entry.kind for entry in second.recent}
    assert kinds == {"human_reply", "auto_reply"}
    current = await status(handle)
    assert [h.signal for h in current.history].count(BuyerSignal.BUYER_REPLIED.value) == 1
    assert [h.signal for h in current.history].count(BuyerSignal.OUT_OF_OFFICE.value) == 1
    # "Back in 2099" is past the bound on a mailed return date: the cadence's pause holds.
    away = next(h for h in current.history if h.signal == BuyerSignal.OUT_OF_OFFICE.value)
    pause = deals.settings.default_cadence.out_of_office_pause
    assert current.held_until == away.at + pause
    assert len(deals.sink.received) == 2


async def test_a_message_for_no_deal_is_listed_with_the_reason(
    deals: Deals, mailbox: LocalMailbox
) -> None:
    cold = EmailMessage()
    cold["From"] = "someone@elsewhere.example.net"
    cold["To"] = "sales@seller.example.com"
    cold["Subject"] = "Do you sell conveyors?"
    cold["Message-ID"] = make_msgid(domain="elsewhere.example.net")
    cold.set_content("Hello, we are looking for a supplier.")
    mailbox.deliver(bytes(cold))
    poller = deals.client.get_workflow_handle(
        await start_mailbox_poller(deals.client, deals.settings)
    )
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 1)
    entry = report.recent[0]
    assert entry.kind == "unrelated" and entry.deal_id is None and entry.outcome


def mailto_unsubscribe(ours: EmailMessage) -> bytes:
    """What a mail program sends for the ``mailto:`` of our List-Unsubscribe header."""
    mailto = str(ours["List-Unsubscribe"]).split(",")[1].strip(" <>").removeprefix("mailto:")
    to, _, query = mailto.partition("?subject=")
    request = EmailMessage()
    request["From"] = str(ours["To"])
    request["To"] = to
    request["Subject"] = query.replace("%20", " ")
    request["Message-ID"] = make_msgid(domain="buyer.example.org")
    request.set_content("")
    return bytes(request)


def hard_bounce(ours: EmailMessage, recipient: str) -> bytes:
    """A standard DSN (RFC 3464) for ``ours``: 5.1.1, the mailbox does not exist."""
    boundary = "dsn-boundary-1"
    return (
        "From: MAILER-DAEMON@mx.buyer.example.org (Mail Delivery System)\r\n"
        f"To: {ours['From']}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        f"Message-ID: {make_msgid(domain='mx.buyer.example.org')}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        f"<{recipient}>: 550 5.1.1 User unknown\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.buyer.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {ours['Message-ID']}\r\nFrom: {ours['From']}\r\nTo: {ours['To']}\r\n"
        f"Subject: {ours['Subject']}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()


@on_both_databases
async def test_mailto_opt_outs_and_hard_bounces_go_on_the_list_even_for_closed_deals(
    deals: Deals, mailbox: LocalMailbox, suppressions: SuppressionList
) -> None:
    """Read from the mailbox, they are written before any deal hears of them: a deal that
    has closed cannot stop them from holding for every other deal. The DSN acts because it
    returns our email and names its recipient, which the ledger confirms."""
    opting = await deals.start(kind="rfp")
    bouncing = await deals.start(
        kind="rfp",
        contacts=[{"name": "Carl", "email": "carl@buyer.example.org", "time_zone": "UTC"}],
    )
    proposals = {str(deal_of(m)): m for m in await deals.mail(2)}
    for handle in (opting, bouncing):
        await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="test"))
        await stage_is(handle, Stage.CANCELLED)
    mailbox.deliver(mailto_unsubscribe(proposals[deal_id(opting)]))
    mailbox.deliver(hard_bounce(proposals[deal_id(bouncing)], "carl@buyer.example.org"))

    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 2)
    assert {entry.kind for entry in report.recent} == {"unsubscribe", "bounce"}
    assert all("closed or unknown" in entry.outcome for entry in report.recent)
    bounce = next(entry for entry in report.recent if entry.kind == "bounce")
    assert (bounce.deal_id, bounce.how) == (deal_id(bouncing), "bounced message")
    found = await suppressions.find(["bea@buyer.example.org", "carl@buyer.example.org"])
    bea, carl = found["bea@buyer.example.org"], found["carl@buyer.example.org"]
    assert (bea.reason, bea.source, bea.deal_id) == ("opted_out", "mailto", deal_id(opting))
    assert (carl.reason, carl.source, carl.deal_id) == ("bounced", "dsn", deal_id(bouncing))
    assert "5.1.1" in carl.detail


async def test_a_mailto_unsubscribe_from_a_committee_copy_opts_out_only_its_recipient(
    deals: Deals, mailbox: LocalMailbox, suppressions: SuppressionList
) -> None:
    """The mailto: subject carries the copy's ledger token, which names no address: the
    ledger's row says whose copy it was, and the deal who stood at that place."""
    committee = [
        {"name": "Eve Economic", "email": "eve@buyer.example.org", "role": "economic_buyer"},
        {"name": "Tom Technical", "email": "tom@buyer.example.org", "role": "technical"},
    ]
    handle = await deals.start(kind="rfp", contacts=committee)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(2)
    toms = next(m for m in deals.sink.received if m.rcpt_tos == ["tom@buyer.example.org"])
    request = mailto_unsubscribe(toms.message)
    assert b"unsubscribe t2." in request and b"tom" not in request.split(b"Subject:")[1][:80]
    mailbox.deliver(request)

    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 1)
    (entry,) = report.recent
    assert entry.kind == "unsubscribe" and entry.deal_id == deal_id(handle)
    # The token itself stays in the reader: not in the poller's state, not in `inbox`.
    assert "t2." not in entry.model_dump_json() and entry.recipient_position == 1
    found = await suppressions.find(["tom@buyer.example.org", "eve@buyer.example.org"])
    assert set(found) == {"tom@buyer.example.org"} and found["tom@buyer.example.org"].source == (
        "mailto"
    )
    current = await eventually(handle, lambda s: s.stage is Stage.OPTED_OUT)
    assert current.outcome_reason == "tom@buyer.example.org opted out"


def as_sent_before_the_ledger_tokens(ours: EmailMessage, settings: Settings) -> EmailMessage:
    """``ours`` as an email sent before the ledger's tokens: the old Reply-To form and an
    ``u1.`` unsubscribe token that names the deal and the address."""
    signer = settings.token_signer()
    deal = deal_of(ours)
    old = EmailMessage()
    for name in ("From", "To", "Subject", "Message-ID"):
        old[name] = str(ours[name])
    old["Reply-To"] = signer.old_reply_address(settings.reply_base, str(deal))
    token = signer.unsubscribe_token(str(deal), ["bea@buyer.example.org"])
    old["List-Unsubscribe"] = (
        f"<{settings.public_url}/unsubscribe/{token}>, "
        f"<mailto:sales+unsubscribe@seller.example.com?subject=unsubscribe%20{token}>"
    )
    old.set_content(str(ours.get_body(("plain",)).get_content()))
    return old


async def test_answers_to_emails_sent_before_the_ledger_tokens_still_find_their_deal(
    deals: Deals, mailbox: LocalMailbox, suppressions: SuppressionList
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    old = as_sent_before_the_ledger_tokens(proposal, deals.settings)
    assert deal_id(handle) not in str(proposal["Reply-To"])  # the new one hides it
    mailbox.deliver(reply_to(old, "Please call me tomorrow.", threaded=False))
    mailbox.deliver(mailto_unsubscribe(old))

    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 2)
    answer, opt_out = report.recent
    assert (answer.kind, answer.deal_id, answer.how) == (
        "human_reply",
        deal_id(handle),
        "reply-to token",
    )
    assert (opt_out.kind, opt_out.deal_id) == ("unsubscribe", deal_id(handle))
    assert set(await suppressions.find(["bea@buyer.example.org"])) == {"bea@buyer.example.org"}
    current = await eventually(handle, lambda s: s.stage is Stage.OPTED_OUT)
    assert current.outcome_reason == "bea@buyer.example.org opted out"


async def test_a_forged_reply_token_finds_no_deal(deals: Deals, mailbox: LocalMailbox) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    real = str(proposal["Reply-To"])
    local, _, domain = real.partition("@")
    # One character of the MAC changed: the token is not ours, whatever the ledger holds.
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    answer = EmailMessage()
    answer["From"] = "Bea Buyer <bea@buyer.example.org>"
    answer["To"] = forged
    answer["Subject"] = "Re: your proposal"
    answer["Message-ID"] = make_msgid(domain="buyer.example.org")
    answer.set_content("Cancel everything and wire the money elsewhere.")
    mailbox.deliver(bytes(answer))
    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 1)
    (entry,) = report.recent
    assert entry.deal_id is None and "not signed by us" in entry.outcome
    assert not (await status(handle)).replied
