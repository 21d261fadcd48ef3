"""The tokens in buyer emails, resolved by the ledger: unsubscribe links and Reply-To.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "unsubscribe_tokens",
        sa.Column("token_id", sa.String(32), primary_key=True),
        sa.Column("deal_id", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("address_key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_unsubscribe_tokens_address_key", "unsubscribe_tokens", ["address_key"])
    op.create_table(
        "reply_tokens",
        sa.Column("token_id", sa.String(20), primary_key=True),
        sa.Column("deal_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reply_tokens")
    op.drop_index("ix_unsubscribe_tokens_address_key", "unsubscribe_tokens")
    op.drop_table("unsubscribe_tokens")
