"""``starter.py ledger backfill``: the records of deals Temporal still knows, into the ledger.

Deals started before they recorded themselves have no rows; a deal whose records
were lost (a restored backup) has gaps. Backfill asks each deal Temporal still holds
(running, or closed within the namespace's retention) for its status and writes the
same batch the deal would have written (``workflows.deal_record.batch_since``), under
the same keys: running it twice, or beside deals that record themselves, writes
nothing twice. A person ``forget`` erased stays erased: the writer withholds what
Temporal still holds of them (``ledger.erasure``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.service import RPCError

from ledger.deal_records import DealRecords
from workflows.deal import STATUS
from workflows.deal_record import Recorded, batch_since
from workflows.models import DealInput, DealStatus

DEALS = "WorkflowType = 'DealWorkflow'"


@dataclass
class Backfilled:
    open: int = 0
    closed: int = 0
    # No worker has run them yet (or ever: terminated at once): nothing to record.
    never_ran: int = 0
    # One line per deal that could not be read, with why.
    failed: list[str] = field(default_factory=list)


async def backfill(client: Client, records: DealRecords) -> Backfilled:
    done = Backfilled()
    async for handle, running in _deals(client):
        deal_id = handle.id.removeprefix("deal-")
        try:
            deal, ran = await _started(handle)
            if not ran:
                done.never_ran += 1
                continue
            status = await _status(handle, running)
        except (RPCError, WorkflowFailureError, ValueError, TypeError) as error:
            done.failed.append(f"{deal_id}: {str(error).splitlines()[0][:200]}")
            continue
        batch = batch_since(status, deal.contacts, datetime.now(UTC), Recorded(), True)
        await records.record(batch)
        if status.stage.is_terminal:
            done.closed += 1
        else:
            done.open += 1
    return done


async def _deals(client: Client) -> AsyncIterator[tuple[WorkflowHandle[Any, DealStatus], bool]]:
    async for execution in client.list_workflows(DEALS):
        # A completed deal's result is its final status; any other is asked (a query).
        completed = execution.status is WorkflowExecutionStatus.COMPLETED
        handle = client.get_workflow_handle(
            execution.id, run_id=execution.run_id, result_type=DealStatus
        )
        yield handle, not completed


async def _started(handle: WorkflowHandle[Any, DealStatus]) -> tuple[DealInput, bool]:
    """The deal as it was started (its contacts, with names and roles), from its history,
    and whether a worker ever ran it: one that never did has no status to ask for."""
    deal: DealInput | None = None
    async for event in handle.fetch_history_events():
        if deal is None:
            started = event.workflow_execution_started_event_attributes
            [deal] = await handle._client.data_converter.decode(
                list(started.input.payloads), [DealInput]
            )
            assert isinstance(deal, DealInput)
        elif event.HasField("workflow_task_completed_event_attributes"):
            return deal, True
    if deal is None:
        raise ValueError("the deal has no history")
    return deal, False


async def _status(handle: WorkflowHandle[Any, DealStatus], asked: bool) -> DealStatus:
    if asked:
        return await handle.query(STATUS, result_type=DealStatus)
    result = await handle.result()
    assert isinstance(result, DealStatus)
    return result
