"""Which copies of a buyer email (one per recipient) the relay has taken.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sent_emails") as table:
        table.add_column(sa.Column("delivered_copies", sa.String(1000)))


def downgrade() -> None:
    with op.batch_alter_table("sent_emails") as table:
        table.drop_column("delivered_copies")
