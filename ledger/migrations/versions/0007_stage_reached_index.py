"""An index for the funnel: each deal's events by the stage they reached, read in the
index's order (one pass a deal, no sort) and from the index alone.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_stage_events_deal_id_to_stage", "stage_events", ["deal_id", "to_stage", "accepted"]
    )


def downgrade() -> None:
    op.drop_index("ix_stage_events_deal_id_to_stage", table_name="stage_events")
