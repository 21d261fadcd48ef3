"""A sending mailbox's rolling 24-hour cap (see activities/mailbox_quota)."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.mailbox_quota import (
        MAILBOX_QUOTA_WORKFLOW,
        RESERVE_SLOT,
        QuotaState,
    )

# Keep the history short: carry the state into a new run after this many slots.
SLOTS_PER_RUN = 2000


@workflow.defn(name=MAILBOX_QUOTA_WORKFLOW)
class MailboxQuotaWorkflow:
    """Update reserve_slot(message_id) -> the instant that message may be sent."""

    @workflow.init
    def __init__(self, state: QuotaState) -> None:
        self.state = state
        self.handed_out = 0

    @workflow.run
    async def run(self, state: QuotaState) -> None:
        await workflow.wait_condition(
            lambda: self.handed_out >= SLOTS_PER_RUN and workflow.all_handlers_finished()
        )
        workflow.continue_as_new(self.state)

    @workflow.update(name=RESERVE_SLOT)
    def reserve_slot(self, message_id: str) -> datetime:
        now = workflow.now()
        slots = self.state.slots
        if message_id in slots:
            return slots[message_id]
        for old in [m for m, at in slots.items() if at <= now - self.state.window]:
            del slots[old]
        taken = sorted(slots.values())
        slot = now
        if len(taken) >= self.state.cap:
            # The cap-th latest slot frees up one window after it was used.
            slot = max(now, taken[-self.state.cap] + self.state.window)
        slots[message_id] = slot
        self.handed_out += 1
        return slot
