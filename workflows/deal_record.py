"""What a deal tells the ledger about itself: one typed batch a change.

The deal builds these in workflow code and hands them to the recording activity, so
that managers can still measure a deal after Temporal has forgotten it. Every item
carries the key the ledger stores it under, made by the deal itself (deterministic),
so a retried or replayed batch writes nothing twice.

Fields are added with defaults, never as new required fields, so that batches already
in a history keep decoding.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import Field

from workflows.models import Contact, DealStatus, MessageOutcome, Model, score
from workflows.stages import BuyerSignal, InquiryKind, Stage

# Every rep task is an email to the deal's owner made from a ``task_`` template.
TASK_TEMPLATE = "task_"


class DealSnapshot(Model):
    """The deal as it stands: one row, replaced by a newer snapshot, never by an older one."""

    deal_id: str
    company: str
    owner: str
    kind: InquiryKind
    currency: str
    value: Decimal
    stage: Stage
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    outcome: Stage | None = None
    lost_reason: str | None = None
    outcome_note: str = ""
    next_touch_at: datetime | None = None


class ContactRecord(Model):
    position: int
    name: str
    address: str
    role: str = "buyer"


class StageEventRecord(Model):
    """A stage change or a buyer signal, refused ones too (``accepted`` False, ``refusal``)."""

    event_key: str
    at: datetime
    signal: str
    from_stage: Stage | None = None
    to_stage: Stage | None = None
    accepted: bool = True
    refusal: str | None = None
    source: str = ""
    note: str = ""
    source_event_id: str | None = None


class EmailRecord(Model):
    message_id: str
    step: str
    template: str
    recipients: int
    at: datetime
    outcome: MessageOutcome


class TaskRecord(Model):
    task_key: str
    template: str
    assignee: str
    at: datetime


class InterviewRecord(Model):
    recorded_at: datetime
    outcome: Stage
    participants: str = ""
    rep_rating: int | None = Field(default=None, ge=1, le=5)
    cooperation_rating: int | None = Field(default=None, ge=1, le=5)
    why_decided: str = ""
    decision_process: str = ""
    free_text: str = ""
    reasons: list[str] = Field(default_factory=list)


class DealRecordBatch(Model):
    """The deal's snapshot and what happened since its last batch."""

    deal: DealSnapshot
    contacts: list[ContactRecord] = Field(default_factory=list)
    events: list[StageEventRecord] = Field(default_factory=list)
    emails: list[EmailRecord] = Field(default_factory=list)
    tasks: list[TaskRecord] = Field(default_factory=list)
    interview: InterviewRecord | None = None


class Recorded(Model):
    """What of a deal the ledger already holds: the next batch brings the rest."""

    events: int = 0
    # Each email's outcome as last recorded, by its step.
    emails: dict[str, MessageOutcome] = Field(default_factory=dict)
    contacts: bool = False


def contact_records(contacts: list[Contact]) -> list[ContactRecord]:
    return [
        ContactRecord(position=n, name=c.name, address=str(c.email), role=c.role)
        for n, c in enumerate(contacts)
    ]


def batch_since(
    status: DealStatus,
    contacts: list[Contact],
    now: datetime,
    recorded: Recorded,
    with_interview: bool,
) -> DealRecordBatch:
    """The deal's snapshot and every record of ``status`` the ledger does not hold yet.

    Keys are made here alone, so the deal recording itself and ``ledger backfill``
    (from the same status) write the same rows.
    """
    deal_id = status.deal_id
    emails = [
        EmailRecord(
            # A message skipped before it was built has no Message-ID: its step names it.
            message_id=m.message_id or f"<{deal_id}.{m.step}>",
            step=m.step,
            template=m.template,
            recipients=len(m.to),
            at=m.at,
            outcome=m.outcome,
        )
        for m in status.messages
        if recorded.emails.get(m.step) != m.outcome
    ]
    tasks = [
        TaskRecord(task_key=f"{deal_id}/{m.step}", template=m.template,
                   assignee=", ".join(m.to), at=m.at)
        for m in status.messages
        if m.template.startswith(TASK_TEMPLATE)
        and m.outcome == "sent"
        and recorded.emails.get(m.step) != "sent"
    ]  # fmt: skip
    return DealRecordBatch(
        deal=_snapshot(status, now),
        contacts=[] if recorded.contacts else contact_records(contacts),
        events=_events(status, recorded.events),
        emails=emails,
        tasks=tasks,
        interview=_interview(status) if with_interview and status.interview else None,
    )


def _snapshot(status: DealStatus, now: datetime) -> DealSnapshot:
    history = status.history
    closed = status.stage.is_terminal
    closing = [change.at for change in history if change.stage.is_terminal]
    return DealSnapshot(
        deal_id=status.deal_id,
        company=status.company,
        owner=status.owner,
        kind=status.kind,
        currency=status.currency,
        value=status.value,
        stage=status.stage,
        created_at=history[0].at if history else now,
        updated_at=now,
        closed_at=(closing[0] if closing else now) if closed else None,
        outcome=status.stage if closed else None,
        lost_reason=status.lost_reason or None,
        outcome_note=status.outcome_reason,
        next_touch_at=status.next_touch.at if status.next_touch else None,
    )


def _events(status: DealStatus, start: int) -> list[StageEventRecord]:
    history = status.history
    return [
        StageEventRecord(
            event_key=f"{status.deal_id}/e{n}",
            at=change.at,
            signal=change.signal or change.source,
            from_stage=history[n - 1].stage if n else None,
            to_stage=change.stage,
            source=change.source,
            note=change.note,
            source_event_id=change.event_id or None,
        )
        for n, change in enumerate(history)
        if n >= start
    ]


def _interview(status: DealStatus) -> InterviewRecord:
    interview = status.interview
    assert interview is not None
    held = [c.at for c in status.history if c.signal == BuyerSignal.INTERVIEW_RECORDED.value]
    return InterviewRecord(
        recorded_at=held[-1] if held else status.history[-1].at,
        outcome=Stage.LOST if status.stage is Stage.LOST else Stage.WON,
        participants=interview.participants,
        rep_rating=score(interview.rep_rating),
        cooperation_rating=score(interview.cooperation_rating),
        why_decided=interview.why_decided,
        decision_process=interview.decision_process,
        free_text=interview.note,
        reasons=list(interview.reasons),
    )
