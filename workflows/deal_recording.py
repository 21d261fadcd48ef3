"""Keeping the ledger's record of a deal while the deal runs.

A deal runs one recorder beside its main loop. Whenever the deal changes, the
recorder hands the ledger the deal's snapshot and what happened since its last
batch (``workflows.deal_record.batch_since``), one batch at a time, and never makes
the deal wait for it: a ledger that is down delays only the records, never a buyer
email. Changes that come while a batch is in flight go in the next one, and so do the
changes of a burst of sends (a signal's two emails): one batch once the burst is over. The deal
ends only once the recorder has caught up, so a closed deal's records are complete.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.deal_records import DealRecorder
    from workflows.deal_record import DealRecordBatch, Recorded, batch_since
    from workflows.models import InterviewRecorded

if TYPE_CHECKING:
    from workflows.deal import DealWorkflow

# Patch: deals started before it keep no records (``ledger backfill`` writes theirs).
RECORD_DEAL = "record-deal"
# Retried without end: the records must arrive, however long the ledger is down. The
# interval is capped so that the ledger catches up within a minute of coming back.
RECORD_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=0,
)
# Run as a local activity, in the worker that runs the deal: one marker in the history
# instead of an activity task and a workflow task, a batch a few milliseconds of the
# workflow task that starts it. An attempt is bounded, so a ledger that hangs holds
# that workflow task (and a send it starts) for seconds at most, and every retry waits
# on a timer (never in the workflow task), so a failing ledger holds nothing.
RECORD_ATTEMPT_TIMEOUT = timedelta(seconds=5)
RETRY_ON_TIMERS = timedelta(milliseconds=1)


class DealRecording:
    """What of one deal the ledger already holds, and the loop that sends the rest."""

    def __init__(self, deal: DealWorkflow) -> None:
        self.deal = deal
        self.recorded = Recorded()
        self.recorded_changes = -1
        self.interview: InterviewRecorded | None = None
        self.closing = False

    def caught_up(self) -> bool:
        return self.recorded_changes == self.deal.changes

    def _due(self) -> bool:
        """Something to record, and the deal not in the middle of a burst of sends (one
        batch after the burst instead of one a send); a send that keeps failing (SMTP
        down) does not hold the records back."""
        deal = self.deal
        if self.caught_up():
            return self.closing
        bursting = deal.sending or (bool(deal.outbox) and not deal.holding)
        return self.closing or not bursting or bool(deal.troubles)

    async def run(self) -> None:
        """Record until the deal has closed and every change is in the ledger."""
        while True:
            await workflow.wait_condition(self._due)
            if self.caught_up():
                return
            changes, interview = self.deal.changes, self.deal.interview
            batch = batch_since(
                self.deal.status(),
                self.deal.deal.contacts,
                workflow.now(),
                self.recorded,
                with_interview=interview is not self.interview,
            )
            await workflow.execute_local_activity_method(
                DealRecorder.record,
                batch,
                start_to_close_timeout=RECORD_ATTEMPT_TIMEOUT,
                retry_policy=RECORD_RETRY_POLICY,
                local_retry_threshold=RETRY_ON_TIMERS,
            )
            self._recorded(batch, changes, interview)

    def _recorded(
        self, batch: DealRecordBatch, changes: int, interview: InterviewRecorded | None
    ) -> None:
        self.recorded_changes, self.interview = changes, interview
        self.recorded.contacts = True
        self.recorded.events += len(batch.events)
        for email in batch.emails:
            self.recorded.emails[email.step] = email.outcome
