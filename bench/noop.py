"""The memory baseline: a workflow that waits for one signal, in a module of its own.

The sandbox re-runs a workflow's module for every new workflow, so the module
is kept to this one class: what it costs per open workflow is Temporal's and
the SDK's floor, not the baseline's own code.
"""

from __future__ import annotations

from temporalio import workflow


@workflow.defn(name="BenchWaitingNoop")
class WaitingNoop:
    """Waits for the ``finish`` signal, and nothing else."""

    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.done)

    @workflow.signal
    def finish(self) -> None:
        self.done = True
