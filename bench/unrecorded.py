"""The deal without its ledger records: the baseline of the lifecycle's recording figure.

The same workflow, type and worker as the product's in every other respect, so the
difference between the two runs is what recording a deal costs.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.deal import DealWorkflow
    from workflows.models import DealInput, DealStatus


@workflow.defn(name="DealWorkflow")
class UnrecordedDeal(DealWorkflow):
    keeps_records = False

    @workflow.run
    async def run(self, deal: DealInput) -> DealStatus:
        return await super().run(deal)
