"""One suppressed address, open for as long as it stays suppressed (activities/suppression)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.suppression import SUPPRESSED_ADDRESS_WORKFLOW, SUPPRESSION_QUERY, Suppression


@workflow.defn(name=SUPPRESSED_ADDRESS_WORKFLOW)
class SuppressedAddressWorkflow:
    """Signal ``lift`` to mail the address again (e.g. it opted back in). Query: entry."""

    @workflow.init
    def __init__(self, entry: Suppression) -> None:
        self._entry = entry
        self._lifted = False

    @workflow.run
    async def run(self, entry: Suppression) -> Suppression:
        await workflow.wait_condition(lambda: self._lifted)
        return self._entry

    @workflow.query(name=SUPPRESSION_QUERY)
    def entry(self) -> Suppression:
        return self._entry

    @workflow.signal
    def lift(self) -> None:
        self._lifted = True
