"""A deal with a buying committee: templates target roles, the rest goes to the main contact."""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage

from starter import record
from tests.conftest import Deals, step_of, steps
from tests.test_lifecycle import deal_id, stage_is
from workflows.models import Closed, PriceAgreed
from workflows.stages import BuyerSignal, Stage

COMMITTEE = [
    {"name": "Eve Economic", "email": "eve@buyer.example.org", "role": "economic_buyer"},
    {"name": "Tom Technical", "email": "tom@buyer.example.org", "role": "technical"},
    {"name": "Pat Procurement", "email": "pat@buyer.example.org", "role": "procurement"},
]


def to(message: object) -> set[str]:
    return {a.addr_spec for a in message["To"].addresses}  # type: ignore[index]


async def test_each_template_reaches_the_roles_it_targets(deals: Deals) -> None:
    handle = await deals.start(kind="rfp", contacts=COMMITTEE)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(2)
    await deals.skip(timedelta(days=2, hours=1))
    await deals.mail(3)
    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    # One copy per recipient: 2 proposals, 1 follow-up, 2 final offers.
    received = await deals.settle(5)
    assert steps(received) == [
        "proposal", "proposal", "proposal_follow_up", "final_offer", "final_offer"
    ]  # fmt: skip
    by_step = copies_by_step(deals)
    # templates/proposal/roles.txt and final_offer/roles.txt name the roles.
    for step, committee in [
        ("proposal", {"eve@buyer.example.org", "tom@buyer.example.org"}),
        ("final_offer", {"eve@buyer.example.org", "pat@buyer.example.org"}),
        # No roles file: the main contact (the first one).
        ("proposal_follow_up", {"eve@buyer.example.org"}),
    ]:
        copies = by_step[step]
        # Each copy goes to one of them, and its To line names them all.
        assert sorted(envelope for envelope, _ in copies) == sorted([a] for a in committee)
        assert all(to(message) == committee for _, message in copies)
        # Each with its own unsubscribe link.
        links = [unsubscribe_link(message) for _, message in copies]
        assert len(set(links)) == len(copies)
        # One email: the copies share their Message-ID (a reply to any threads alike).
        assert len({message["Message-ID"] for _, message in copies}) == 1
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))


def copies_by_step(deals: Deals) -> dict[str, list[tuple[list[str], EmailMessage]]]:
    found: dict[str, list[tuple[list[str], EmailMessage]]] = {}
    for mail in deals.sink.received:
        found.setdefault(step_of(mail.message), []).append((mail.rcpt_tos, mail.message))
    return found


def unsubscribe_link(message: EmailMessage) -> str:
    return str(message["List-Unsubscribe"]).split(">")[0].lstrip("<")
