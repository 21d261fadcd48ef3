"""The rolling 24-hour cap of a sending mailbox, which task-queue rate limits cannot express.

One ``MailboxQuota`` workflow per mailbox hands out send slots: a message gets
"now" while fewer than the cap went out in the last 24 hours, otherwise the
instant a slot frees up. The send activity waits for its slot by retrying with
that delay, so a burst is spread over the following days and nothing is dropped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

MAILBOX_QUOTA_WORKFLOW = "MailboxQuota"
RESERVE_SLOT = "reserve_slot"
WINDOW = timedelta(hours=24)


class QuotaState(BaseModel):
    mailbox: str
    cap: int = Field(gt=0)
    window: timedelta = WINDOW
    # message id -> its slot, for the messages of the last 24 hours
    slots: dict[str, datetime] = Field(default_factory=dict)


class MailboxQuota:
    def __init__(
        self, client: Client, task_queue: str, mailbox: str, cap: int, window: timedelta = WINDOW
    ) -> None:
        self.client = client
        self.task_queue = task_queue
        self.state = QuotaState(mailbox=mailbox.lower(), cap=cap, window=window)

    async def slot(self, message_id: str) -> datetime:
        """When ``message_id`` may go out; the same answer on every retry."""
        workflow_id = f"mailbox-quota-{self.state.mailbox}"
        await self.client.start_workflow(
            MAILBOX_QUOTA_WORKFLOW,
            self.state,
            id=workflow_id,
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        handle = self.client.get_workflow_handle(workflow_id)
        slot: datetime = await handle.execute_update(RESERVE_SLOT, message_id, result_type=datetime)
        return slot
