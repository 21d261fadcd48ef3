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

# One row per suppressed address, keyed by a keyed hash of its normalised form
# (``ledger.addresses``), so the readable address can be erased while the entry keeps
# stopping mail. A lifted entry stays, with who lifted it and why; a new opt-out or
# bounce after the lift suppresses the address again.
SUPPRESSIONS = Table(
    "suppressions",
    METADATA,
    Column("address_key", String(64), primary_key=True),
    Column("address", String(320)),
    Column("reason", String(16), nullable=False),
    Column("source", String(32), nullable=False),
    Column("detail", String(1000), nullable=False),
    Column("deal_id", String(64), nullable=False),
    Column("suppressed_at", DateTime(timezone=True), nullable=False),
    Column("lifted_at", DateTime(timezone=True)),
    Column("lift_reason", String(1000)),
)

# Values the ledger makes for itself once, at migration: the key of the address hashes.
LEDGER_SECRETS = Table(
    "ledger_secrets",
    METADATA,
    Column("name", String(64), primary_key=True),
    Column("value", String(128), nullable=False),
)
