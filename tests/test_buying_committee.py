"""A deal with a buying committee: templates target roles, the rest goes to the main contact."""

from __future__ import annotations

from datetime import timedelta

from starter import record
from tests.conftest import Deals, only, steps
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
    await deals.mail(1)
    await deals.skip(timedelta(days=2, hours=1))
    await deals.mail(2)
    await record(deals.client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    messages = await deals.settle(3)
    assert steps(messages) == ["proposal", "proposal_follow_up", "final_offer"]
    # templates/proposal/roles.txt and final_offer/roles.txt name the roles.
    assert to(only(messages, "proposal")) == {"eve@buyer.example.org", "tom@buyer.example.org"}
    assert to(only(messages, "final_offer")) == {"eve@buyer.example.org", "pat@buyer.example.org"}
    # No roles file: the main contact (the first one).
    assert to(only(messages, "proposal_follow_up")) == {"eve@buyer.example.org"}
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))
