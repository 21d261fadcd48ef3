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

from workflows.models import MessageOutcome, Model
from workflows.stages import InquiryKind, Stage


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
