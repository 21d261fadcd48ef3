"""The ledger's tables, as SQLAlchemy Core metadata; Alembic migrations create them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    text,
)

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
    # A buyer email goes as one copy per recipient: the positions (in the email's To
    # list, comma-separated) whose copy the relay took, so a retry sends only the rest.
    Column("delivered_copies", String(1000)),
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

# What the unsubscribe link in each copy of a buyer email stands for (``t2.`` tokens):
# the link carries only the id (and its MAC), so it names no address and no deal. One row
# a recipient of an email, written with the send's claim; ``address_key`` is the
# suppression list's keyed hash, never the address.
UNSUBSCRIBE_TOKENS = Table(
    "unsubscribe_tokens",
    METADATA,
    Column("token_id", String(32), primary_key=True),
    Column("deal_id", String(64), nullable=False),
    Column("message_id", String(998), nullable=False),
    # The recipient's place in the email's To list (the deal knows who stood there).
    Column("position", Integer, nullable=False),
    Column("address_key", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# What the token in a deal's Reply-To address stands for: one row a deal (and a secret).
REPLY_TOKENS = Table(
    "reply_tokens",
    METADATA,
    Column("token_id", String(20), primary_key=True),
    Column("deal_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Values the ledger makes for itself once, at migration: the key of the address hashes.
LEDGER_SECRETS = Table(
    "ledger_secrets",
    METADATA,
    Column("name", String(64), primary_key=True),
    Column("value", String(128), nullable=False),
)


# --- Deal records: what the ledger keeps of every deal after Temporal forgets it ---
# Written by the deal's recording activity, each row idempotent by its key, so that a
# retried activity or a replayed history writes nothing twice. Reports read only these.

# One row per deal, updated as it moves: its latest stage, value and outcome.
DEALS = Table(
    "deals",
    METADATA,
    Column("deal_id", String(64), primary_key=True),
    Column("company", String(200), nullable=False),
    Column("owner", String(320), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("value", Numeric(18, 2), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    # The terminal stage (Won, Lost, No Response...); None while open.
    Column("outcome", String(32)),
    # A lost deal's reason code (settings' list) and the rep's note.
    Column("lost_reason", String(32)),
    Column("outcome_note", String(1000), nullable=False, server_default=""),
    # When the deal plans its next touch; None when nothing is planned (a stale sign).
    Column("next_touch_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Facts of the deal's events (``ledger.deal_facts``): a bit a stage it reached, and
    # the furthest stage of the path, so the funnel counts deals instead of events.
    Column("stages_reached", Integer, nullable=False, server_default="0"),
    Column("furthest_stage", String(32)),
    Index("ix_deals_created_at", "created_at"),
    Index("ix_deals_closed_at", "closed_at"),
    Index("ix_deals_owner", "owner"),
    Index("ix_deals_kind_created_at", "kind", "created_at"),
)

# The deal's contacts, main one first; ``forget`` blanks name and address and keeps the
# keyed hash (the suppression list's key), so the person can be found again only by
# someone who already knows the address.
DEAL_CONTACTS = Table(
    "deal_contacts",
    METADATA,
    Column("deal_id", String(64), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("address_key", String(64), nullable=False, index=True),
    Column("name", String(200)),
    Column("address", String(320)),
    Column("role", String(64), nullable=False),
)

# Every stage change and every buyer signal, refused ones too (with the reason): the
# audit trail that outlives the deal. ``event_key`` is the deal's own, deterministic.
STAGE_EVENTS = Table(
    "stage_events",
    METADATA,
    Column("event_key", String(128), primary_key=True),
    Column("deal_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("signal", String(32), nullable=False),
    Column("from_stage", String(32)),
    Column("to_stage", String(32)),
    Column("accepted", Boolean, nullable=False),
    Column("refusal", String(1000)),
    Column("source", String(64), nullable=False),
    Column("note", String(1000), nullable=False),
    # The id the source gave the event (an inbound Message-ID, a webhook event id).
    Column("source_event_id", String(998)),
    Index("ix_stage_events_deal_id_at", "deal_id", "at"),
    Index("ix_stage_events_to_stage_at", "to_stage", "at"),
    # The funnel reads each deal's stages reached from this index alone.
    Index("ix_stage_events_deal_id_to_stage", "deal_id", "to_stage", "accepted"),
)

# Every email a deal sent or tried: no bodies, no addresses, only how many it went to.
DEAL_EMAILS = Table(
    "deal_emails",
    METADATA,
    Column("message_id", String(998), primary_key=True),
    Column("deal_id", String(64), nullable=False, index=True),
    Column("step", String(64), nullable=False),
    Column("template", String(64), nullable=False),
    Column("recipients", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("outcome", String(16), nullable=False),
)

# Every task the deal gave its rep (or fulfilment, or the interviewer).
REP_TASKS = Table(
    "rep_tasks",
    METADATA,
    Column("task_key", String(128), primary_key=True),
    Column("deal_id", String(64), nullable=False, index=True),
    Column("template", String(64), nullable=False),
    Column("assignee", String(320), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

# The win-loss interview, structured; one a deal.
INTERVIEWS = Table(
    "interviews",
    METADATA,
    Column("deal_id", String(64), primary_key=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("participants", String(1000), nullable=False),
    Column("rep_rating", Integer),
    Column("cooperation_rating", Integer),
    Column("why_decided", Text, nullable=False),
    Column("decision_process", Text, nullable=False),
    Column("free_text", Text, nullable=False),
)

# The interview's decision reasons as codes (price, timing, competitor...), for counting.
INTERVIEW_REASONS = Table(
    "interview_reasons",
    METADATA,
    Column("deal_id", String(64), primary_key=True),
    Column("code", String(32), primary_key=True),
)


# --- Facts of the deal records (``ledger.deal_facts``), recomputed per deal as it writes,
# so that reports over every deal are grouped counts rather than a sort of every event ---

# Every stay of a deal in a stage: from the move into it to the next move (None while the
# deal is still there).
DEAL_STAYS = Table(
    "deal_stays",
    METADATA,
    Column("deal_id", String(64), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("stage", String(32), nullable=False),
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("left_at", DateTime(timezone=True)),
    Column("next_stage", String(32)),
    Column("milliseconds", BigInteger),
    # Time in stage and where deals left each stage read only this index, in its order:
    # a stage's finished stays come sorted by length, no sort of their own.
    Index(
        "ix_deal_stays_finished",
        "stage",
        "milliseconds",
        postgresql_include=["deal_id", "next_stage"],
        postgresql_where=text("left_at IS NOT NULL"),
        sqlite_where=text("left_at IS NOT NULL"),
    ),
)

# Every sent follow-up: its number since the deal last changed stage, and whether the
# buyer answered it.
FOLLOW_UP_TOUCHES = Table(
    "follow_up_touches",
    METADATA,
    Column("deal_id", String(64), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("message_id", String(998), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("touch", Integer, nullable=False),
    Column("answered", Boolean, nullable=False),
)
