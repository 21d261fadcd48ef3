"""The ledger's tables, as SQLAlchemy Core metadata; Alembic migrations create them."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table

METADATA = MetaData()

# One row per Message-ID: claimed right before SMTP DATA, then sent (with the relay's
# reply) or failed. A retry reads it to decide whether the email may go out.
SENT_EMAILS = Table(
    "sent_emails",
    METADATA,
    Column("message_id", String(998), primary_key=True),
    Column("deal_id", String(64), nullable=False, index=True),
    Column("template", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker", String(255), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("smtp_reply", String(1000)),
    Column("error", String(2000)),
)
