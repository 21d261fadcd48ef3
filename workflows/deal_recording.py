"""Keeping the ledger's record of a deal while the deal runs.

A deal runs one recorder beside its main loop. Whenever the deal changes, the
recorder hands the ledger the deal's snapshot and what happened since its last
batch (``workflows.deal_record``), one batch at a time, and never makes the deal
wait for it: a ledger that is down delays only the records, never a buyer email.
Changes that come while a batch is in flight go in the next one. The deal ends only
once the recorder has caught up, so a closed deal's records are complete.

Every item is keyed by the deal itself (``<deal>/e<n>`` for the n-th history entry,
the Message-ID for an email), so a retried batch writes nothing twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.deal_records import DealRecorder
    from workflows.deal_record import (
        ContactRecord,
        DealRecordBatch,
        DealSnapshot,
        EmailRecord,
        InterviewRecord,
        StageEventRecord,
        TaskRecord,
    )
    from workflows.models import InterviewRecorded, MessageOutcome, MessageRecord, score
    from workflows.stages import BuyerSignal, Stage

if TYPE_CHECKING:
    from workflows.deal import DealWorkflow

# Patch: deals started before it keep no records (``ledger backfill`` writes theirs).
RECORD_DEAL = "record-deal"
# Retried without end: the records must arrive, however long the ledger is down.
RECORD_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
RECORD_ATTEMPT_TIMEOUT = timedelta(seconds=30)
# Every rep task is an email to the deal's owner made from a ``task_`` template.
TASK_TEMPLATE = "task_"


class DealRecording:
    """What of one deal the ledger already holds, and the loop that sends the rest."""

    def __init__(self, deal: DealWorkflow) -> None:
        self.deal = deal
        self.recorded_changes = -1
        self.events_recorded = 0
        self.emails_recorded: dict[str, MessageOutcome] = {}
        self.contacts_recorded = False
        self.interview_recorded: InterviewRecorded | None = None
        self.closing = False
        self.batches = 0

    def caught_up(self) -> bool:
        return self.recorded_changes == self.deal.changes

    async def run(self) -> None:
        """Record until the deal has closed and every change is in the ledger."""
        while True:
            await workflow.wait_condition(lambda: not self.caught_up() or self.closing)
            if self.caught_up():
                return
            changes = self.deal.changes
            batch = self._batch()
            await workflow.execute_activity_method(
                DealRecorder.record,
                batch,
                start_to_close_timeout=RECORD_ATTEMPT_TIMEOUT,
                retry_policy=RECORD_RETRY_POLICY,
            )
            self._recorded(batch, changes)

    def _recorded(self, batch: DealRecordBatch, changes: int) -> None:
        self.batches += 1
        self.recorded_changes = changes
        self.contacts_recorded = True
        self.events_recorded += len(batch.events)
        for email in batch.emails:
            self.emails_recorded[email.step] = email.outcome
        if batch.interview is not None:
            self.interview_recorded = self.deal.interview

    def _batch(self) -> DealRecordBatch:
        deal = self.deal
        return DealRecordBatch(
            deal=self._snapshot(),
            contacts=[] if self.contacts_recorded else self._contacts(),
            events=self._events(),
            emails=self._emails(),
            tasks=self._tasks(),
            interview=self._interview() if deal.interview is not self.interview_recorded else None,
        )

    def _snapshot(self) -> DealSnapshot:
        deal = self.deal
        closed = deal.stage.is_terminal
        due = None if deal._finished() else deal._next_due()
        last = deal.history[-1].at if deal.history else workflow.now()
        return DealSnapshot(
            deal_id=deal.deal.deal_id,
            company=deal.deal.company,
            owner=str(deal.deal.owner),
            kind=deal.deal.kind,
            currency=deal.deal.currency,
            value=deal.value(),
            stage=deal.stage,
            created_at=deal.history[0].at if deal.history else workflow.now(),
            updated_at=workflow.now(),
            closed_at=self._closed_at() if closed else None,
            outcome=deal.stage if closed else None,
            lost_reason=deal.lost_reason or None,
            outcome_note=deal.outcome_reason,
            next_touch_at=due.at if due else (None if closed else last),
        )

    def _closed_at(self) -> datetime:
        history = self.deal.history
        closing = [change.at for change in history if change.stage.is_terminal]
        return closing[0] if closing else workflow.now()

    def _contacts(self) -> list[ContactRecord]:
        return [
            ContactRecord(position=n, name=c.name, address=str(c.email), role=c.role)
            for n, c in enumerate(self.deal.deal.contacts)
        ]

    def _events(self) -> list[StageEventRecord]:
        history, deal_id = self.deal.history, self.deal.deal.deal_id
        events = []
        for n in range(self.events_recorded, len(history)):
            change = history[n]
            before = history[n - 1].stage if n else None
            events.append(
                StageEventRecord(
                    event_key=f"{deal_id}/e{n}",
                    at=change.at,
                    signal=change.signal or change.source,
                    from_stage=before,
                    to_stage=change.stage,
                    source=change.source,
                    note=change.note,
                )
            )
        return events

    def _key(self, message: MessageRecord) -> str:
        # A message skipped before it was built has no Message-ID: its step names it.
        return message.message_id or f"<{self.deal.deal.deal_id}.{message.step}>"

    def _emails(self) -> list[EmailRecord]:
        return [
            EmailRecord(
                message_id=self._key(m),
                step=m.step,
                template=m.template,
                recipients=len(m.to),
                at=m.at,
                outcome=m.outcome,
            )
            for m in self.deal.messages
            if self.emails_recorded.get(m.step) != m.outcome
        ]

    def _tasks(self) -> list[TaskRecord]:
        deal_id = self.deal.deal.deal_id
        return [
            TaskRecord(
                task_key=f"{deal_id}/{m.step}",
                template=m.template,
                assignee=", ".join(m.to),
                at=m.at,
            )
            for m in self.deal.messages
            if m.template.startswith(TASK_TEMPLATE)
            and m.outcome == "sent"
            and self.emails_recorded.get(m.step) != "sent"
        ]

    def _interview(self) -> InterviewRecord | None:
        deal, interview = self.deal, self.deal.interview
        if interview is None:
            return None
        recorded = [c.at for c in deal.history if c.signal == BuyerSignal.INTERVIEW_RECORDED.value]
        return InterviewRecord(
            recorded_at=recorded[-1] if recorded else workflow.now(),
            outcome=Stage.LOST if deal.stage is Stage.LOST else Stage.WON,
            participants=interview.participants,
            rep_rating=score(interview.rep_rating),
            cooperation_rating=score(interview.cooperation_rating),
            why_decided=interview.why_decided,
            decision_process=interview.decision_process,
            free_text=interview.note,
            reasons=list(interview.reasons),
        )
