"""Hostile mail in the reply mailbox: the real poller against Dovecot reads past every
message, bounds what reaches the workflows, quarantines what it cannot read, and says so
when it cannot log in. Nothing the mailbox holds may fail the poller's workflow task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.inbound_mail import MAX_PARTS
from activities.mailbox import LIMITS, MAX_FETCH, MailboxCursor
from activities.signed_tokens import TokenSigner
from devstack import LocalMailbox
from ledger.suppression_list import SuppressionList
from settings import Settings
from tests.conftest import Deals, on_both_databases, step_of
from tests.test_lifecycle import deal_id, stage_is, status
from tests.test_mailbox_poller import (
    hard_bounce,
    mailbox,
    mailbox_password,
    poll,
    reply_to,
    settings,
    started_poller,
)
from worker import build_mailbox_reader, build_mailer, build_worker, check_mailbox
from workflows.stages import Stage

__all__ = ["mailbox", "mailbox_password", "settings"]  # fixtures, used by name


@pytest.fixture
def reader_budgets() -> dict[str, float]:
    """What the worker's mailbox reader may spend on a batch, when a test shrinks it."""
    return {}


@pytest.fixture
async def client(
    env: WorkflowEnvironment, settings: Settings, reader_budgets: dict[str, float]
) -> AsyncIterator[Client]:
    """The tests' worker, as everywhere, its mailbox reader held to ``reader_budgets``."""
    mailer = build_mailer(settings)
    reader = build_mailbox_reader(settings, mailer.suppressions)
    assert reader is not None
    for name, value in reader_budgets.items():
        setattr(reader, name, value)
    async with build_worker(env.client, settings, mailer=mailer, mailbox=reader):
        yield env.client


REPLY_BOX = "sales@seller.example.com"


def headers(subject: str, message_id: str, sender: str = "Mallory <m@evil.example>") -> bytes:
    return (
        f"From: {sender}\r\nTo: {REPLY_BOX}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
    ).encode()


def plain(subject: str, message_id: str, body: bytes = b"hello\r\n") -> bytes:
    return headers(subject, message_id) + b"Content-Type: text/plain\r\n\r\n" + body


def nested(depth: int) -> bytes:
    opening = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(depth)
    )
    closing = b"".join(f"\r\n--b{i}--\r\n".encode() for i in reversed(range(depth)))
    inner = b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    return headers("deep", make_msgid(domain="evil.example")) + opening + inner + closing


def attachment(megabytes: int) -> bytes:
    letter = EmailMessage()
    letter["From"] = "Mallory <m@evil.example>"
    letter["To"] = REPLY_BOX
    letter["Subject"] = "big attachment"
    letter["Message-ID"] = make_msgid(domain="evil.example")
    letter.set_content("see attached")
    letter.add_attachment(b"\0" * (megabytes << 20), maintype="application", subtype="zip")
    return bytes(letter)


def many_parts(count: int, tag: str) -> bytes:
    """A message of ``count`` MIME parts, itself included: each costs the reader a little."""
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\n%d\r\n" % i for i in range(count - 1))
    return (
        headers(f"parts {tag}", make_msgid(domain="evil.example"))
        + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        + parts
        + b"--b--\r\n"
    )


def workflow_task_failures(events: list) -> list:  # type: ignore[type-arg]
    return [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]


async def test_poison_messages_are_bounded_or_quarantined_and_the_reply_after_them_arrives(
    deals: Deals, mailbox: LocalMailbox
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    long_id = f"<{'x' * 1200}@evil.example>"
    poison = [
        plain("long id", long_id),
        plain("S" * 300_000, make_msgid(domain="evil.example")),
        attachment(25),
        nested(1000),
        b"From: M\0allory <m@evil.example>\r\nTo: sales@seller.example.com\r\n"
        b"Subject: nul \0 and \xff\x1b[31m bytes\r\nMessage-ID: <nul@evil.example>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xff\xfe\0 broken\r\n",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\nno headers at all",
        headers("headers only", "<bare@evil.example>"),
        plain("one endless line", "<line@evil.example>", b"x" * 200_000),
        headers("bad base64", "<b64@evil.example>")
        + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!*\r\n",
        headers("unknown charset", "<cs@evil.example>")
        + b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n\xe9t\xe9\r\n",
        plain("many recipients", "<rcpt@evil.example>").replace(
            b"To: ", b"To: " + b", ".join(b"u%d@evil.example" % i for i in range(2000)) + b", "
        ),
    ]
    for raw in poison:
        mailbox.deliver(raw)
    mailbox.deliver(reply_to(proposal, "Fine by us, send the order form."))
    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: len(r.recent) == len(poison) + 1)

    *hostile, answer = report.recent
    # The reply after them reached its deal: the cursor moved past every poison message.
    assert answer.kind == "human_reply" and answer.deal_id == deal_id(handle)
    assert answer.outcome == f"signalled reply to deal {deal_id(handle)}"
    for entry in hostile:
        for name, limit in LIMITS.items():
            value = getattr(entry, name)
            assert len(value) <= limit, (name, len(value))
            assert not any(ord(c) < 32 or ord(c) == 127 for c in value), (name, value)
        assert len(entry.message_id) <= 998 and entry.deal_id is None
    by_uid = {entry.uid: entry for entry in hostile}
    first = min(by_uid)
    long_one, huge_subject, big, deep = (by_uid[first + i] for i in range(4))
    assert long_one.kind == "quarantined" and "Message-ID of 1215 characters" in long_one.why
    assert long_one.outcome == "quarantined: given to no deal"
    assert huge_subject.subject.startswith("SSS") and huge_subject.subject.endswith("\u2026")
    assert f"read its first {MAX_FETCH // 1024} KiB of" in big.why
    assert deep.kind in ("unrelated", "quarantined")
    assert workflow_task_failures((await poller.fetch_history()).events) == []
    await handle_cancel(deals, handle)


async def handle_cancel(deals: Deals, handle: WorkflowHandle) -> None:
    from starter import record
    from workflows.models import Closed
    from workflows.stages import BuyerSignal

    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


@pytest.mark.parametrize("mailbox_password", ["not-the-password"])
async def test_a_mailbox_that_refuses_the_login_is_shown_by_inbox(deals: Deals) -> None:
    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: bool(r.trouble))
    assert report.trouble.startswith("the mailbox cannot be read since ")
    assert "login as sales refused" in report.trouble
    assert "not-the-password" not in report.trouble


@pytest.mark.parametrize("mailbox_password", ["not-the-password"])
async def test_the_worker_checks_the_mailbox_login_at_start(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # make dev stops: its own mailbox must let it in, or no reply is ever read.
    with pytest.raises(SystemExit) as stopped:
        await check_mailbox(settings, dev=True)
    assert stopped.value.code == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"worker: the reply mailbox sales@127.0.0.1:{settings.imap_port} ")
    assert "login as sales refused" in line and "not-the-password" not in line
    assert len(line.splitlines()) == 1
    # A production worker says the same and starts; the poller keeps retrying.
    await check_mailbox(settings, dev=False)
    assert "cannot be read" in capsys.readouterr().err


# --- forged and misleading mail: only evidence we issued, from a contact, steers a deal ---


def letter(sender: str, to: str, subject: str, text: str, **headers: str) -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, to, subject
    mail["Message-ID"] = make_msgid(domain="mail.example.net")
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(text)
    return bytes(mail)


@on_both_databases
async def test_forged_and_misleading_mail_steers_no_deal(
    deals: Deals, mailbox: LocalMailbox, suppressions: SuppressionList
) -> None:
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    deal, sealed = deal_id(handle), str(proposal["Message-ID"])
    guessable = f"<{deal}.001-proposal@seller.example.com>"
    before = await status(handle)
    buyer, reply_box = "bea@buyer.example.org", str(proposal["Reply-To"])
    victim, stranger = "victim@anywhere.example", "ceo@other-customer.example"
    token = reply_box.split("+", 1)[1].split("@", 1)[0]
    forged_token = f"sales+{token.rsplit('.', 1)[0]}.0000000000@seller.example.com"
    other = TokenSigner("a-different-secret-of-32-bytes-or-more!").seal_message_id(guessable)
    corpus = {
        # The guessable form of our Message-ID, from a stranger and "from" the buyer.
        "forged in-reply-to": letter(
            "mallory@evil.example",
            REPLY_BOX,
            "Re: proposal",
            "Pay to our new IBAN.",
            In_Reply_To=guessable,
        ),
        "forged in-reply-to as buyer": letter(
            buyer,
            REPLY_BOX,
            "Re: proposal",
            "Cancel it.",
            In_Reply_To=guessable,
            References=guessable,
        ),
        "sealed with another secret": letter(
            "mallory@evil.example", REPLY_BOX, "Re: x", "New bank details.", In_Reply_To=other
        ),
        "forged reply token": letter("mallory@evil.example", forged_token, "Re: x", "Hello"),
        "forged dsn": hard_bounce_of(guessable, buyer),
        # Anyone who saw a buyer email knows its Reply-To: a bounce sent there returns
        # nothing of ours, so it names nobody we mailed.
        "bounce to the reply-to address": (
            f"From: Mail Delivery System <MAILER-DAEMON@evil.example>\r\nTo: {reply_box}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <b1@evil.example>\r\n"
            f"Content-Type: text/plain\r\n\r\n<{victim}>: host said: 550 5.1.1 user unknown\r\n"
        ).encode(),
        # Our sealed id in its threading, someone else's message returned.
        "dsn with our id in in-reply-to": hard_bounce_of("<f@evil.example>", stranger).replace(
            b"\r\nMIME-Version:", f"\r\nIn-Reply-To: {sealed}\r\nMIME-Version:".encode(), 1
        ),
        # Our email returned for real, but it never went to the address the DSN names.
        "dsn of our email for a stranger": hard_bounce_of(sealed, stranger),
        "colleague at the buyer": letter(
            "carl@buyer.example.org",
            reply_box,
            "Re: proposal",
            "Please send the invoice to me.",
            In_Reply_To=sealed,
        ),
        "back in 2099": letter(
            buyer,
            REPLY_BOX,
            "Automatic reply: proposal",
            "I am out of the office until 31 December 2099.",
            In_Reply_To=sealed,
            Auto_Submitted="auto-replied",
        ),
        "ticket acknowledgement": letter(
            "desk@buyer.example.org",
            REPLY_BOX,
            "[Ticket #1] Re: proposal",
            "Your request has been received.",
            In_Reply_To=sealed,
            Auto_Submitted="auto-replied",
        ),
        "tampered unsubscribe": letter(
            buyer,
            "sales+unsubscribe@seller.example.com",
            "unsubscribe eyJ0YW1wZXJlZCI6dHJ1ZX0.AAAAAAAAAAAAAAAAAAAAAA",
            "",
        ),
    }
    for raw in corpus.values():
        mailbox.deliver(raw)
    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: len(r.recent) == len(corpus))
    entries = dict(zip(corpus, report.recent, strict=True))

    for name in ("forged in-reply-to", "forged in-reply-to as buyer", "sealed with another secret",
                 "forged reply token", "forged dsn", "tampered unsubscribe",
                 "bounce to the reply-to address", "dsn with our id in in-reply-to",
                 "dsn of our email for a stranger"):  # fmt: skip
        assert entries[name].deal_id is None, (name, entries[name])
    assert "not a message we sent" in entries["forged dsn"].outcome
    assert entries["bounce to the reply-to address"].outcome == (
        "the bounce does not return a message of ours"
    )
    assert entries["dsn with our id in in-reply-to"].outcome == (
        "bounced <f@evil.example>, not a message we sent"
    )
    assert entries["dsn of our email for a stranger"].outcome == (
        f"{stranger} was not a recipient of the bounced email: no action"
    )
    assert entries["ticket acknowledgement"].kind == "auto_acknowledgement"
    assert entries["colleague at the buyer"].outcome == f"signalled reply to deal {deal}"
    assert entries["back in 2099"].outcome == f"signalled out_of_office to deal {deal}"

    # Nobody is on the list; the deal took no reply and heard of no bounce; the colleague's
    # mail is a marked task.
    assert await suppressions.find([buyer, victim, stranger]) == {}
    task = (await deals.mail(2))[-1]
    assert step_of(task) == "task_unverified_reply"
    current = await status(handle)
    assert current.stage is Stage.PROPOSAL_RECEIVED and not current.replied
    assert current.problems == [] and not any("bounce" in h.signal for h in current.history)
    away = next(h for h in current.history if h.signal == "out_of_office")
    assert current.held_until == away.at + deals.settings.default_cadence.out_of_office_pause
    assert before.next_touch is not None
    await handle_cancel(deals, handle)


def hard_bounce_of(original_id: str, recipient: str) -> bytes:
    """A DSN (5.1.1) that claims to return ``original_id``."""
    returned = EmailMessage()
    returned["Message-ID"], returned["From"] = original_id, "sales@seller.example.com"
    returned["To"], returned["Subject"] = recipient, "Your proposal"
    return hard_bounce(returned, recipient)


# --- a batch's budget: expensive mail cannot hold the poller past its read timeout ---


@pytest.mark.parametrize(
    "budget", [{"batch_seconds": 0.0}, {"batch_bytes": 1}], ids=["seconds", "bytes"]
)
async def test_a_batch_returns_what_it_read_within_its_budget_and_the_next_goes_on(
    settings: Settings, mailbox: LocalMailbox, budget: dict[str, float]
) -> None:
    """A spent budget ends the batch after the message in hand: the cursor stands after
    it, ``more`` says the rest waits, and the next batch starts there."""
    for tag in ("a", "b", "c"):
        mailbox.deliver(many_parts(MAX_PARTS, tag))
    reader = build_mailbox_reader(settings, None)
    assert reader is not None
    beats: list[object] = []
    activity = ActivityEnvironment()
    activity.on_heartbeat = lambda *details: beats.extend(details)
    whole = await activity.run(reader.read_mailbox, MailboxCursor())
    uids = [entry.uid for entry in whole.entries]
    assert len(uids) == 3 and not whole.more  # the default budget holds all three

    for name, value in budget.items():
        setattr(reader, name, value)
    cursor, read = MailboxCursor(), []
    while True:
        batch = await activity.run(reader.read_mailbox, cursor)
        assert len(batch.entries) == 1, batch  # the first message always, then no more
        read.append(batch.entries[0].uid)
        assert batch.cursor.last_uid == batch.entries[0].uid
        cursor = batch.cursor
        if not batch.more:
            break
    assert read == uids
    assert set(uids) <= set(beats)  # it told Temporal it was alive after each message


@pytest.mark.parametrize("reader_budgets", [{"batch_seconds": 0.0}])
async def test_expensive_mail_takes_several_batches_and_the_reply_behind_it_arrives(
    deals: Deals, mailbox: LocalMailbox
) -> None:
    """Through the real poller, with a batch budget shrunk so that each read finishes one
    message: a message of too many parts is quarantined and listed, the reply behind the
    expensive ones reaches its deal, and no read fails or times out."""
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = (await deals.mail(1))[0]
    for tag in ("a", "b", "c"):
        mailbox.deliver(many_parts(MAX_PARTS, tag))
    mailbox.deliver(many_parts(MAX_PARTS + 1, "too many"))
    mailbox.deliver(reply_to(proposal, "Agreed, please send the order form."))
    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 5)

    *costly, refused, answer = report.recent
    assert [entry.kind for entry in costly] == ["unrelated"] * 3
    assert (refused.kind, refused.why) == ("quarantined", f"more than {MAX_PARTS} MIME parts")
    assert refused.outcome == "quarantined: given to no deal" and refused.deal_id is None
    assert answer.outcome == f"signalled reply to deal {deal_id(handle)}"
    assert report.cursor.last_uid == answer.uid
    assert report.polls >= 5  # one message a read: the budget ended each batch
    events = (await poller.fetch_history()).events
    assert workflow_task_failures(events) == []
    stopped = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
    }
    assert [e for e in events if e.event_type in stopped] == []
    assert (await status(handle)).replied
    await handle_cancel(deals, handle)
