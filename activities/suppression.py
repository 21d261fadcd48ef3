"""The global suppression list: addresses that opted out or hard-bounced are never mailed again.

Each suppressed address is one open ``SuppressedAddress`` workflow with the id
``suppressed-<address>``: Temporal keeps the list durable, shared by every
worker and every deal, and a look-up is one describe call by id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

SUPPRESS_ADDRESS = "suppress_address"
SUPPRESSED_ADDRESS_WORKFLOW = "SuppressedAddress"
SUPPRESSION_QUERY = "entry"


class Suppression(BaseModel):
    address: str
    reason: Literal["opted_out", "bounced"]
    detail: str = ""
    deal_id: str = ""
    at: datetime


def normalized(address: str) -> str:
    return address.strip().lower()


def suppression_id(address: str) -> str:
    return f"suppressed-{normalized(address)}"


class SuppressionList:
    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    async def find(self, address: str) -> Suppression | None:
        """The entry if ``address`` is suppressed now: one describe call, read from the server.

        Every send makes this call, so it goes to the service directly: a workflow
        handle and its description would be built only to read two fields.
        """
        request = DescribeWorkflowExecutionRequest(
            namespace=self.client.namespace,
            execution=WorkflowExecution(workflow_id=suppression_id(address)),
        )
        try:
            described = await self.client.workflow_service.describe_workflow_execution(
                request, retry=True
            )
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        info = described.workflow_execution_info
        if info.status != WorkflowExecutionStatus.RUNNING:
            return None
        # The entry travels as the memo: readable from the start, before any
        # workflow task has run (a query would have to wait for one).
        memo = info.memo.fields["entry"]
        text = self.client.data_converter.payload_converter.from_payload(memo, str)
        return Suppression.model_validate_json(text)

    async def add(self, entry: Suppression) -> None:
        await self.client.start_workflow(
            SUPPRESSED_ADDRESS_WORKFLOW,
            entry,
            id=suppression_id(entry.address),
            task_queue=self.task_queue,
            # Suppressing twice keeps the first entry: the call is idempotent.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            memo={"entry": entry.model_dump_json()},
        )

    @activity.defn(name=SUPPRESS_ADDRESS)
    async def suppress(self, entry: Suppression) -> None:
        await self.add(entry)
