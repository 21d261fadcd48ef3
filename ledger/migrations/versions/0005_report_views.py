"""Views over the deal records for BI tools (docs/ledger.md): a deal's outcome flags and
cycle, its stage changes and stays, the stages it reached, interview reasons by outcome.

They hold no contact, note or free text: a BI tool given only the views sees no person.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Callable, Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _seconds_sqlite(start: str, end: str) -> str:
    # Timestamps are ISO text; julianday is a float of days, a few microseconds off.
    return f"ROUND((julianday({end}) - julianday({start})) * 86400.0, 3)"


def _seconds_postgresql(start: str, end: str) -> str:
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


def _views(seconds: Callable[[str, str], str]) -> dict[str, str]:
    return {
        "report_deals": f"""
            SELECT deal_id, owner, kind, currency, value, stage, created_at, closed_at,
                   outcome, lost_reason, next_touch_at, updated_at,
                   CASE WHEN outcome IS NULL THEN 1 ELSE 0 END AS is_open,
                   CASE WHEN outcome = 'Won' THEN 1 ELSE 0 END AS is_won,
                   CASE WHEN outcome IN ('Won', 'Lost', 'No Response') THEN 1 ELSE 0 END
                       AS is_decided,
                   CASE WHEN outcome = 'Won' THEN {seconds("created_at", "closed_at")} / 86400.0
                   END AS cycle_days
            FROM deals""",
        "report_stage_changes": """
            SELECT event_key, deal_id, at, signal, from_stage, to_stage, source
            FROM stage_events
            WHERE accepted = TRUE AND to_stage IS NOT NULL
              AND (from_stage IS NULL OR from_stage <> to_stage)""",
        "report_stage_stays": f"""
            SELECT deal_id, stage, entered_at, left_at, next_stage,
                   {seconds("entered_at", "left_at")} AS seconds
            FROM (
                SELECT deal_id, to_stage AS stage, at AS entered_at,
                       LEAD(at) OVER deal_order AS left_at,
                       LEAD(to_stage) OVER deal_order AS next_stage
                FROM report_stage_changes
                WINDOW deal_order AS (
                    PARTITION BY deal_id ORDER BY at, LENGTH(event_key), event_key
                )
            ) AS stays""",
        "report_stages_reached": """
            SELECT deal_id, to_stage AS stage, MIN(at) AS first_reached_at
            FROM stage_events
            WHERE accepted = TRUE AND to_stage IS NOT NULL
            GROUP BY deal_id, to_stage""",
        "report_interview_reasons": """
            SELECT interviews.deal_id, interviews.outcome, interview_reasons.code,
                   interviews.recorded_at
            FROM interviews
            JOIN interview_reasons ON interview_reasons.deal_id = interviews.deal_id""",
    }


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    seconds = _seconds_sqlite if dialect == "sqlite" else _seconds_postgresql
    for name, query in _views(seconds).items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    # The stays read the changes: drop in the reverse order of creation.
    for name in reversed(list(_views(_seconds_sqlite))):
        op.execute(f"DROP VIEW {name}")
