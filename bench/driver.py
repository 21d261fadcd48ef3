"""Driving deals (and their skeletons) like buyers would: start them, then send each
buyer signal as soon as the deal waits in the stage that takes it.

The driver learns where deals stand from visibility (the ``DealStage`` search
attribute, which a deal upserts in the same workflow task that starts its
waiting timer), with one list query per poll for all deals at once. Polling
each deal (query or describe) would load the server in proportion to the
number of deals; sending signals blindly and retrying on refusal would make the
path racy (``delivered`` is accepted while the order confirmation is still
being sent, which skips a timer), and the baseline would no longer have the
same shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError

from bench.skeletons import DealSkeleton
from deal_intake import build_deal
from settings import Settings
from starter import Refused, record, start_deal, start_options
from workflows.models import (
    DealInput,
    Delivered,
    InterviewRecorded,
    OrderPlaced,
    PriceAgreed,
)
from workflows.search_attributes import DEAL_STAGE
from workflows.stages import BuyerSignal, Stage

# Follow-ups that never come due while a benchmark runs.
QUIET = "PT1H"


def cadence(**timings: str) -> dict[str, Any]:
    """A cadence whose follow-ups stay quiet; ``timings`` set the timers that should fire."""
    quiet: dict[str, Any] = {
        name: [QUIET] for name in ("inquiry", "proposal", "quote", "offer", "win_loss")
    }
    quiet.update(no_response_after=QUIET, check_in_after=QUIET, win_loss_after=QUIET)
    return {**quiet, **timings}


def deal_input(settings: Settings, deal_id: str, timings: dict[str, Any]) -> DealInput:
    """An RFP worth 11,000 EUR (above the win-loss threshold), built as the CLI builds one."""
    return build_deal(
        settings,
        {
            "deal_id": deal_id,
            "company": "Buyer & Sons",
            "kind": "rfp",
            "contacts": [
                {
                    "name": "Bea Buyer",
                    "email": "bea@buyer.example.org",
                    "time_zone": "Europe/Berlin",
                }
            ],
            "items": [
                {"name": "Conveyor X1", "quantity": 2, "list_price": "5000.00"},
                {"name": "Installation", "quantity": 1, "list_price": "1000.00"},
            ],
            "cadence": timings,
        },
    )


async def start_skeleton(client: Client, settings: Settings, deal: DealInput) -> WorkflowHandle:
    """Exactly what ``starter.start_deal`` sends, for the skeleton workflow."""
    return await client.start_workflow(DealSkeleton.run, deal, **start_options(settings, deal))


async def start_all(
    client: Client, settings: Settings, kind: str, deals: Sequence[DealInput], concurrency: int
) -> None:
    slots = asyncio.Semaphore(concurrency)
    start = start_deal if kind == "deals" else start_skeleton

    async def one(deal: DealInput) -> None:
        async with slots:
            await start(client, settings, deal)

    await asyncio.gather(*(one(deal) for deal in deals))


def payloads(delivered_at: datetime | None = None) -> dict[BuyerSignal, BaseModel]:
    """What the buyer's side sends with each signal the benchmarks use."""
    delivery = datetime.now(UTC).date() + timedelta(days=30)
    return {
        BuyerSignal.PRICE_AGREED: PriceAgreed(source="bench"),
        BuyerSignal.ORDER_PLACED: OrderPlaced(
            delivery_date=delivery, purchase_order="PO-1", source="bench"
        ),
        BuyerSignal.DELIVERED: Delivered(delivered_at=delivered_at, source="bench"),
        BuyerSignal.INTERVIEW_RECORDED: InterviewRecorded(
            why_decided="lead time",
            decision_process="CFO and ops lead",
            rep_rating=4,
            cooperation_rating=5,
            source="bench",
        ),
    }


# The RFP -> Won path: the stage in which the buyer's side sends each signal.
WON_PATH = {
    Stage.PROPOSAL_RECEIVED: BuyerSignal.PRICE_AGREED,
    Stage.OFFER_RECEIVED: BuyerSignal.ORDER_PLACED,
    Stage.ORDER_CONFIRMED: BuyerSignal.DELIVERED,
    Stage.WIN_LOSS_INVITED: BuyerSignal.INTERVIEW_RECORDED,
}


def plan(
    path: dict[Stage, BuyerSignal], delivered_at: datetime | None = None
) -> dict[Stage, tuple[BuyerSignal, BaseModel]]:
    sent = payloads(delivered_at)
    return {stage: (signal, sent[signal]) for stage, signal in path.items()}


@dataclass
class SignalDriver:
    """Sends every deal on ``task_queue`` the signal its stage takes, once per stage."""

    client: Client
    task_queue: str
    plan: dict[Stage, tuple[BuyerSignal, BaseModel]]
    concurrency: int = 32
    every: float = 0.25
    sent: int = 0
    problems: list[str] = field(default_factory=list)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def query(self) -> str:
        stages = ", ".join(f"'{stage.value}'" for stage in self.plan)
        return (
            f"TaskQueue = '{self.task_queue}' AND ExecutionStatus = 'Running' "
            f"AND DealStage IN ({stages})"
        )

    async def run(self) -> None:
        """Until cancelled."""
        slots = asyncio.Semaphore(self.concurrency)
        pending: set[asyncio.Task[None]] = set()

        async def send(key: tuple[str, str], deal_id: str, stage: Stage) -> None:
            signal, payload = self.plan[stage]
            async with slots:
                try:
                    await record(self.client, deal_id, signal, payload)
                    self.sent += 1
                except (Refused, RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as error:
                    # A busy server lets an update's call time out before the deal took it:
                    # the deal is asked again on the next poll (an update it did take is
                    # refused then, as its stage moved on).
                    self.problems.append(f"{deal_id} {signal.value}: {error!r}")
                    self._seen.discard(key)

        try:
            while True:
                async for execution in self.client.list_workflows(self.query()):
                    stage = execution.typed_search_attributes.get(DEAL_STAGE)
                    key = (execution.id, stage or "")
                    if stage is None or key in self._seen:
                        continue
                    self._seen.add(key)
                    deal_id = execution.id.removeprefix("deal-")
                    task = asyncio.create_task(send(key, deal_id, Stage(stage)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(self.every)
        finally:
            for task in pending:
                task.cancel()


async def count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


@dataclass
class Closed:
    """When the server started and closed the workflows of a run."""

    first_start: float
    closes: list[float]  # sorted
    other: list[str]  # workflows that did not complete

    @property
    def seconds(self) -> float:
        return self.closes[-1] - self.first_start


async def closed_runs(client: Client, task_queue: str) -> Closed:
    starts, closes, other = [], [], []
    async for execution in client.list_workflows(f"TaskQueue = '{task_queue}'"):
        starts.append(execution.start_time.timestamp())
        if execution.close_time is not None:
            closes.append(execution.close_time.timestamp())
        if execution.status != WorkflowExecutionStatus.COMPLETED:
            other.append(f"{execution.id}: {execution.status}")
    return Closed(min(starts), sorted(closes), other)


def stamp() -> Callable[[], float]:
    """A stopwatch: call the result to read seconds since ``stamp()``."""
    began = time.monotonic()
    return lambda: time.monotonic() - began
