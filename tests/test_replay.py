"""Determinism: deal histories replay against today's workflow code.

``tests/histories/`` keeps histories recorded with earlier versions of the
workflow; a change that breaks their replay needs ``workflow.patched``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from starter import record
from tests.conftest import Deals
from tests.test_lifecycle import ANSWERS, deal_id
from worker import workflow_runner
from workflows.deal import DealWorkflow
from workflows.models import Closed, Delivered, DiscountRequested, OrderPlaced, PriceAgreed
from workflows.stages import BuyerSignal

HISTORIES = Path(__file__).parent / "histories"


def replayer() -> Replayer:
    return Replayer(
        workflows=[DealWorkflow],
        data_converter=pydantic_data_converter,
        # Workflow modules re-imported per run, so the sandbox checks the replayed code.
        workflow_runner=workflow_runner(isolated=True),
    )


async def won_deal_history(deals: Deals) -> WorkflowHistory:
    """A deal through quote, discount, order, delivery, check-in and win-loss."""
    handle = await deals.start(kind="rfq")
    await deals.mail(2)
    await deals.skip(timedelta(days=2, hours=1))  # one quote follow-up
    await deals.mail(3)
    client = deals.client
    await record(
        client, deal_id(handle), BuyerSignal.DISCOUNT_REQUESTED, DiscountRequested(percent=5)
    )
    await record(client, deal_id(handle), BuyerSignal.PRICE_AGREED, PriceAgreed())
    order = OrderPlaced(delivery_date=(await deals.now()).date() + timedelta(days=2))
    await deals.mail(5)
    await record(client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    await deals.mail(7)
    await deals.skip(timedelta(days=2))
    await record(client, deal_id(handle), BuyerSignal.DELIVERED, Delivered())
    await deals.mail(9)
    await deals.skip(timedelta(days=23))
    await deals.mail(13)
    await record(client, deal_id(handle), BuyerSignal.INTERVIEW_RECORDED, ANSWERS)
    await handle.result()
    return await handle.fetch_history()


async def test_a_whole_deal_replays_without_nondeterminism(deals: Deals) -> None:
    history = await won_deal_history(deals)
    if os.environ.get("DEALFLOW_RECORD_HISTORY"):
        (HISTORIES / "won_rfq_deal.json").write_text(history.to_json())
    result = await replayer().replay_workflow(history)
    assert result.replay_failure is None


async def test_a_cancelled_deal_replays(deals: Deals) -> None:
    handle = await deals.start(kind="rfi", items=[])
    await deals.mail(1)
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="duplicate"))
    await handle.result()
    result = await replayer().replay_workflow(await handle.fetch_history())
    assert result.replay_failure is None


STORED = [
    WorkflowHistory.from_json(p.stem, p.read_text()) for p in sorted(HISTORIES.glob("*.json"))
]


def test_histories_are_stored() -> None:
    assert STORED, f"no recorded histories under {HISTORIES}"


@pytest.mark.parametrize("history", STORED, ids=lambda h: h.workflow_id)
async def test_stored_histories_still_replay(history: WorkflowHistory) -> None:
    result = await replayer().replay_workflow(history)
    assert result.replay_failure is None
