"""The send ledger: one row per Message-ID.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sent_emails",
        sa.Column("message_id", sa.String(998), primary_key=True),
        sa.Column("deal_id", sa.String(64), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("smtp_reply", sa.String(1000)),
        sa.Column("error", sa.String(2000)),
    )
    op.create_index("ix_sent_emails_deal_id", "sent_emails", ["deal_id"])


def downgrade() -> None:
    op.drop_index("ix_sent_emails_deal_id", table_name="sent_emails")
    op.drop_table("sent_emails")
