"""Buyers at internationalised addresses, through a real relay (aiosmtpd) and mailbox.

A domain that is not ASCII (``bücher.example``) goes out in its IDNA A-labels
(``xn--bcher-kva.example``), which every relay takes, in RCPT TO and the headers; the
buyer's answers from that form still name the contact. A local part that is not ASCII
(``béa@``) needs SMTPUTF8: it goes through a relay that offers it, and through one
that does not, the send fails once, for good, with one line.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller

from devstack import LocalMailbox, OutboxSink
from ledger.addresses import normalized_address
from ledger.suppression_list import SuppressionList
from starter import record
from tests.conftest import Deals, send_attempts, step_of
from tests.test_inbound_signals import eventually as status_when
from tests.test_lifecycle import deal_id, stage_is, status
from tests.test_mailbox_poller import mailbox, mailbox_password, poll, settings, started_poller
from tests.test_poison_mail import hard_bounce_of, letter
from workflows.models import Closed
from workflows.stages import BuyerSignal, Stage

__all__ = ["mailbox", "mailbox_password", "settings"]  # fixtures, used by name

IDN = "bea@bücher.example"
A_LABEL = "bea@xn--bcher-kva.example"
UTF8_LOCAL = "béa@bücher.example"
UTF8_LOCAL_WIRE = "béa@xn--bcher-kva.example"


class AsciiOnlySink(OutboxSink):
    """The tests' relay without SMTPUTF8 (RFC 6531), as many real ones are: aiosmtpd's
    controller offers it unless told not to."""

    def start(self) -> AsciiOnlySink:
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=False
        )
        self._controller.start()
        return self


@pytest.fixture
def relay_offers_smtputf8() -> bool:
    return True


@pytest.fixture
def sink(relay_offers_smtputf8: bool) -> Iterator[OutboxSink]:
    outbox = (OutboxSink() if relay_offers_smtputf8 else AsciiOnlySink()).start()
    yield outbox
    outbox.stop()


def buyer(email: str) -> list[dict[str, str]]:
    return [{"name": "Bea Bücher", "email": email, "time_zone": "Europe/Berlin"}]


@pytest.mark.parametrize("relay_offers_smtputf8", [False])
async def test_an_idn_contact_gets_the_email_and_their_answers_from_the_a_label_count(
    deals: Deals, mailbox: LocalMailbox, suppressions: SuppressionList
) -> None:
    handle = await deals.start(kind="rfp", contacts=buyer(IDN))
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    (proposal,) = await deals.mail(1)
    (received,) = deals.sink.received
    assert received.rcpt_tos == [A_LABEL]
    assert str(proposal["To"]) == f"Bea Bücher <{A_LABEL}>"
    assert received.data.isascii()  # no SMTPUTF8: this relay has none
    assert await send_attempts(handle) == [1]
    # The suppression list and the ledger's tokens know the address in either form.
    assert normalized_address(A_LABEL) == normalized_address(IDN)

    # The buyer answers from the form our email went to: the reply is the contact's.
    deal, sealed = deal_id(handle), str(proposal["Message-ID"])
    mailbox.deliver(letter(f"Bea <{A_LABEL}>", str(proposal["Reply-To"]), "Re: proposal",
                           "Yes, please send the order form.", In_Reply_To=sealed))  # fmt: skip
    poller = await started_poller(deals)
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 1)
    assert report.recent[0].outcome == f"signalled reply to deal {deal}"
    task = (await deals.mail(2))[-1]
    assert step_of(task) == "task_buyer_replied"  # not "unverified sender"
    assert (await status(handle)).replied

    # Their mail server bounces our email for the A-label: the contact is suppressed.
    mailbox.deliver(hard_bounce_of(sealed, A_LABEL))
    report = await poll(deals.client, poller, lambda r: len(r.recent) == 2)
    assert report.recent[1].deal_id == deal, report.recent[1]
    assert list(await suppressions.find([IDN])) == [IDN]
    bounced = await status_when(handle, lambda s: bool(s.problems))
    assert bounced.problems[0].startswith(f"bounce from {IDN} (5.1.1 permanent)")
    await record(deals.client, deal, BuyerSignal.CANCELLED, Closed(reason="done"))


@pytest.mark.parametrize("relay_offers_smtputf8", [True])
async def test_a_non_ascii_local_part_goes_out_through_a_relay_with_smtputf8(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp", contacts=buyer(UTF8_LOCAL))
    (proposal,) = await deals.settle(1)
    (received,) = deals.sink.received
    assert received.rcpt_tos == [UTF8_LOCAL_WIRE]
    assert str(proposal["To"]) == f"Bea Bücher <{UTF8_LOCAL_WIRE}>"
    assert await send_attempts(handle) == [1]
    assert [m.outcome for m in (await status(handle)).messages] == ["sent"]
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


@pytest.mark.parametrize("relay_offers_smtputf8", [False])
async def test_a_non_ascii_local_part_fails_once_for_good_through_a_relay_without_smtputf8(
    deals: Deals,
) -> None:
    handle = await deals.start(kind="rfp", contacts=buyer(UTF8_LOCAL))
    current = await status_when(handle, lambda d: d.messages[0].outcome == "failed")
    error = current.messages[0].error
    assert error == (
        f"RelayLacksSmtputf8: {UTF8_LOCAL_WIRE}: the relay does not offer SMTPUTF8, which an "
        "address whose local part is not ASCII needs; send through a relay that does, or "
        "use an ASCII address"
    )
    assert await send_attempts(handle) == [1]
    await deals.quiet()
    assert deals.sink.received == []
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))
