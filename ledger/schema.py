"""The ledger's schema version: Alembic migrations, run by ``starter.py db upgrade``.

A worker checks the version at start and refuses an old schema, so a deploy that
forgot the migration fails loudly instead of losing sends.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from ledger.database import LedgerDatabase, LedgerProblem, explain

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


async def current(database: LedgerDatabase) -> str | None:
    return await database.run(lambda c: MigrationContext.configure(c).get_current_revision())


async def upgrade(url: str) -> tuple[str | None, str]:
    """Migrate the ledger to the newest schema; (the version before, the version now)."""
    database = LedgerDatabase(url)
    try:
        before = await current(database)
        await database.run(lambda c: command.upgrade(_config(c), "head"), write=True)
        return before, head()
    except LedgerProblem:
        raise
    except Exception as error:
        raise explain(error, url) from None
    finally:
        await database.dispose()


async def check(database: LedgerDatabase) -> None:
    """Refuse a ledger whose schema is not the one this code needs."""
    try:
        found = await current(database)
    except Exception as error:
        raise explain(error, database.url) from None
    wanted = head()
    if found != wanted:
        raise LedgerProblem(
            f"the ledger schema is at {found or 'nothing (empty database)'}, this version "
            f"needs {wanted}: run 'python starter.py db upgrade'"
        )
