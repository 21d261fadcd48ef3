"""Alembic's entry point: migrations always run on the connection the ledger hands over
(``ledger.schema``), so the async drivers are the only ones Dealflow needs."""

from alembic import context

from ledger.tables import METADATA

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=METADATA, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
