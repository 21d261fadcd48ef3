"""Facts of the deal records, for reports that count instead of re-reading every event:
the stages each deal reached (on ``deals``), every stay in a stage, and every follow-up
with its number and whether it was answered. Filled here for the deals already recorded;
the writer keeps them from then on (``ledger.deal_facts``).

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "deals", sa.Column("stages_reached", sa.Integer, nullable=False, server_default="0")
    )
    op.add_column("deals", sa.Column("furthest_stage", sa.String(32)))
    op.create_table(
        "deal_stays",
        sa.Column("deal_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True)),
        sa.Column("next_stage", sa.String(32)),
        sa.Column("milliseconds", sa.BigInteger),
    )
    op.create_index(
        "ix_deal_stays_finished",
        "deal_stays",
        ["stage", "milliseconds"],
        postgresql_include=["deal_id", "next_stage"],
        postgresql_where=sa.text("left_at IS NOT NULL"),
        sqlite_where=sa.text("left_at IS NOT NULL"),
    )
    op.create_table(
        "follow_up_touches",
        sa.Column("deal_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("touch", sa.Integer, nullable=False),
        sa.Column("answered", sa.Boolean, nullable=False),
    )
    # The facts of what is already recorded, computed by the code the writer uses (a
    # ledger of many deals takes a while here, once).
    from ledger.deal_facts import refresh_all

    refresh_all(op.get_bind())


def downgrade() -> None:
    op.drop_table("follow_up_touches")
    op.drop_table("deal_stays")
    # Plain DROP COLUMN (SQLite 3.35 and later): a batch copy of ``deals`` would trip
    # over the report views that read it.
    op.drop_column("deals", "furthest_stage")
    op.drop_column("deals", "stages_reached")
