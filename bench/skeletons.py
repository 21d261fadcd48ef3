"""Baseline workflows: the deal's shape with empty bodies.

``DealSkeleton`` issues the same Temporal commands as a deal on the path the
benchmarks drive (RFP -> Won): the same activities, timers (started, fired,
cancelled), updates with validators, and search-attribute upserts, in the same
order, and takes the same input and update payloads; only the bodies are empty
(no pricing, no history, no rendering, no SMTP). The upserts stay because the
driver watches ``DealStage`` in visibility to know when to send the next signal,
for deals and skeletons alike. ``lifecycle.shape`` checks the two histories match.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import datetime, timedelta

from temporalio import activity, workflow

# Passed through like the deal's own imports: the sandbox then re-runs only this module
# for each new workflow, as it re-runs only workflows/deal.py for each deal.
with workflow.unsafe.imports_passed_through():
    from bench.skeleton_inputs import BurstInput
    from workflows.models import (
        DealInput,
        Delivered,
        InterviewRecorded,
        OrderPlaced,
        PriceAgreed,
    )
    from workflows.search_attributes import DEAL_STAGE
    from workflows.stages import BuyerSignal, Stage

NOOP = "bench_noop"
# Set by the worker process when the driver needs to know when each no-op ran.
STAMP = False


@activity.defn(name=NOOP)
async def noop(step: str) -> None:
    """Does nothing; with ``STAMP`` it reports when it ran, as the SMTP sink does for emails."""
    if STAMP:
        info = activity.info()
        sys.stdout.write(f"activity\t{time.time():.6f}\t{info.workflow_id}\t{step}\n")
        sys.stdout.flush()


@workflow.defn(name="BenchDealSkeleton")
class DealSkeleton:
    """A deal's RFP -> Won path with empty bodies.

    Updates (same names, payloads and stage checks as ``DealWorkflow``):
    price_agreed, order_placed, delivered, interview_recorded.
    """

    @workflow.init
    def __init__(self, deal: DealInput) -> None:
        self.cadence = deal.cadence
        self.stage = Stage.REQUIREMENTS_CLARIFIED
        self.changes = 0
        self.delivered_at = workflow.now()

    @workflow.run
    async def run(self, deal: DealInput) -> None:
        follow_up = self.cadence.proposal[0]
        await self._send("proposal", then=Stage.PROPOSAL_RECEIVED)
        await self._park(workflow.now() + follow_up)
        await self._send("final_offer", then=Stage.OFFER_RECEIVED)
        await self._park(workflow.now() + follow_up)
        await self._send("order_confirmation", then=Stage.ORDER_CONFIRMED)
        await self._send("fulfilment_hand_over")
        await self._park(workflow.now() + follow_up)
        await self._send("delivery_notice")
        await self._send("task_issue_invoice")
        await self._park(self.delivered_at + self.cadence.check_in_after)
        anchor = await self._send("check_in", then=Stage.CHECKED_IN)
        await self._send("task_check_in_call")
        await self._park(anchor + self.cadence.win_loss_after)
        anchor = await self._send("win_loss_invitation", then=Stage.WIN_LOSS_INVITED)
        await self._send("task_win_loss_interview")
        await self._park(anchor + self.cadence.win_loss[0])
        self._publish()
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _send(self, step: str, then: Stage | None = None) -> datetime:
        await workflow.execute_activity(NOOP, step, start_to_close_timeout=timedelta(minutes=2))
        if then is not None:
            self.stage = then
        return workflow.now()

    def _publish(self) -> None:
        workflow.upsert_search_attributes([DEAL_STAGE.value_set(self.stage.value)])

    async def _park(self, until: datetime) -> None:
        """Like the deal: publish the stage, then wait for a signal or ``until``."""
        self._publish()
        seen = self.changes
        wait = until - workflow.now()
        if wait <= timedelta(0):
            return
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self.changes != seen, timeout=wait)

    def _move(self, stage: Stage) -> Stage:
        self.stage = stage
        self.changes += 1
        return stage

    def _expect(self, stage: Stage, signal: BuyerSignal) -> None:
        if self.stage is not stage:
            raise ValueError(f"{signal.value} is not accepted while the deal is '{self.stage}'")

    @workflow.update(name=BuyerSignal.PRICE_AGREED.value)
    def price_agreed(self, signal: PriceAgreed) -> Stage:
        return self._move(Stage.PRICE_AGREED)

    @price_agreed.validator
    def _check_price_agreed(self, signal: PriceAgreed) -> None:
        self._expect(Stage.PROPOSAL_RECEIVED, BuyerSignal.PRICE_AGREED)

    @workflow.update(name=BuyerSignal.ORDER_PLACED.value)
    def order_placed(self, signal: OrderPlaced) -> Stage:
        return self._move(Stage.ORDER_PLACED)

    @order_placed.validator
    def _check_order_placed(self, signal: OrderPlaced) -> None:
        self._expect(Stage.OFFER_RECEIVED, BuyerSignal.ORDER_PLACED)

    @workflow.update(name=BuyerSignal.DELIVERED.value)
    def delivered(self, signal: Delivered) -> Stage:
        self.delivered_at = signal.delivered_at or workflow.now()
        return self._move(Stage.DELIVERED)

    @delivered.validator
    def _check_delivered(self, signal: Delivered) -> None:
        self._expect(Stage.ORDER_CONFIRMED, BuyerSignal.DELIVERED)

    @workflow.update(name=BuyerSignal.INTERVIEW_RECORDED.value)
    def interview_recorded(self, signal: InterviewRecorded) -> Stage:
        return self._move(Stage.WON)

    @interview_recorded.validator
    def _check_interview_recorded(self, signal: InterviewRecorded) -> None:
        self._expect(Stage.WIN_LOSS_INVITED, BuyerSignal.INTERVIEW_RECORDED)


@workflow.defn(name="BenchBurstSkeleton")
class BurstSkeleton:
    """A parked deal's check-in with empty bodies: the check-in burst's baseline.

    Like a delivered deal: publish the stage and wait on a timer until ``due``;
    then the two sends of a check-in (buyer email, rep task), one after the
    other; then publish the next stage and wait again. It skips the deal's
    parking path (start, order, delivery): only the burst is compared.
    """

    @workflow.run
    async def run(self, spec: BurstInput) -> None:
        workflow.upsert_search_attributes([DEAL_STAGE.value_set(Stage.DELIVERED.value)])
        # Past due already (parked late on a busy server): fire at once, as a deal does.
        wait = spec.due - workflow.now()
        if wait > timedelta(0):
            await workflow.sleep(wait)
        for step in ("check_in", "task_check_in_call"):
            await workflow.execute_activity(NOOP, step, start_to_close_timeout=timedelta(minutes=2))
        workflow.upsert_search_attributes([DEAL_STAGE.value_set(Stage.CHECKED_IN.value)])
        await workflow.sleep(spec.quiet)
