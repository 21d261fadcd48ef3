"""The migrations build exactly the tables the code declares (ledger/tables.py)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ledger.database import LedgerDatabase
from ledger.tables import METADATA
from tests.conftest import on_both_databases


@on_both_databases
async def test_the_migrated_schema_is_the_declared_one(ledger_url: str) -> None:
    database = LedgerDatabase(ledger_url)
    try:
        differences = await database.run(
            lambda connection: compare_metadata(MigrationContext.configure(connection), METADATA)
        )
    finally:
        await database.dispose()
    # Alembic's own version table is the only one the code does not declare.
    assert [d for d in differences if not _is_alembic_version(d)] == []


def _is_alembic_version(difference: object) -> bool:
    return isinstance(difference, tuple) and getattr(difference[1], "name", "") == (
        "alembic_version"
    )
