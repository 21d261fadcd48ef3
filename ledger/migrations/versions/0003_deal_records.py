"""Deal records: deals, their contacts, stage events, emails, rep tasks and interviews.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deals",
        sa.Column("deal_id", sa.String(64), primary_key=True),
        sa.Column("company", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("value", sa.Numeric(18, 2), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
        sa.Column("outcome", sa.String(32)),
        sa.Column("lost_reason", sa.String(32)),
        sa.Column("outcome_note", sa.String(1000), nullable=False, server_default=""),
        sa.Column("next_touch_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deals_created_at", "deals", ["created_at"])
    op.create_index("ix_deals_closed_at", "deals", ["closed_at"])
    op.create_index("ix_deals_owner", "deals", ["owner"])
    op.create_index("ix_deals_kind_created_at", "deals", ["kind", "created_at"])
    op.create_table(
        "deal_contacts",
        sa.Column("deal_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("address_key", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("address", sa.String(320)),
        sa.Column("role", sa.String(64), nullable=False),
    )
    op.create_index("ix_deal_contacts_address_key", "deal_contacts", ["address_key"])
    op.create_table(
        "stage_events",
        sa.Column("event_key", sa.String(128), primary_key=True),
        sa.Column("deal_id", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signal", sa.String(32), nullable=False),
        sa.Column("from_stage", sa.String(32)),
        sa.Column("to_stage", sa.String(32)),
        sa.Column("accepted", sa.Boolean, nullable=False),
        sa.Column("refusal", sa.String(1000)),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("note", sa.String(1000), nullable=False),
        sa.Column("source_event_id", sa.String(998)),
    )
    op.create_index("ix_stage_events_deal_id_at", "stage_events", ["deal_id", "at"])
    op.create_index("ix_stage_events_to_stage_at", "stage_events", ["to_stage", "at"])
    op.create_table(
        "deal_emails",
        sa.Column("message_id", sa.String(998), primary_key=True),
        sa.Column("deal_id", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.create_index("ix_deal_emails_deal_id", "deal_emails", ["deal_id"])
    op.create_table(
        "rep_tasks",
        sa.Column("task_key", sa.String(128), primary_key=True),
        sa.Column("deal_id", sa.String(64), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("assignee", sa.String(320), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rep_tasks_deal_id", "rep_tasks", ["deal_id"])
    op.create_table(
        "interviews",
        sa.Column("deal_id", sa.String(64), primary_key=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("participants", sa.String(1000), nullable=False),
        sa.Column("rep_rating", sa.Integer),
        sa.Column("cooperation_rating", sa.Integer),
        sa.Column("why_decided", sa.Text, nullable=False),
        sa.Column("decision_process", sa.Text, nullable=False),
        sa.Column("free_text", sa.Text, nullable=False),
    )
    op.create_table(
        "interview_reasons",
        sa.Column("deal_id", sa.String(64), primary_key=True),
        sa.Column("code", sa.String(32), primary_key=True),
    )


def downgrade() -> None:
    for table in (
        "interview_reasons",
        "interviews",
        "rep_tasks",
        "deal_emails",
        "stage_events",
        "deal_contacts",
        "deals",
    ):
        op.drop_table(table)
