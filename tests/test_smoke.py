from datetime import timedelta

from tests.conftest import Deals, steps


async def test_rfp_sends_proposal(deals: Deals) -> None:
    handle = await deals.start()
    messages = await deals.mail(1)
    assert steps(messages) == ["proposal"]
    await deals.skip(timedelta(days=2, hours=1))
    messages = await deals.mail(2)
    assert steps(messages) == ["proposal", "proposal_follow_up"]
    status = await handle.query("status")
    print(status)
