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
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.database import LedgerProblem, explain, open_engine

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


async def current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def upgrade(url: str) -> tuple[str | None, str]:
    """Migrate the ledger to the newest schema; (the version before, the version now)."""
    engine = open_engine(url)
    try:
        before = await current(engine)
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: command.upgrade(_config(sync), "head"))
        return before, head()
    except LedgerProblem:
        raise
    except Exception as error:
        raise explain(error, url) from None
    finally:
        await engine.dispose()


async def check(engine: AsyncEngine, url: str) -> None:
    """Refuse a ledger whose schema is not the one this code needs."""
    try:
        found = await current(engine)
    except Exception as error:
        raise explain(error, url) from None
    wanted = head()
    if found != wanted:
        raise LedgerProblem(
            f"the ledger schema is at {found or 'nothing (empty database)'}, this version "
            f"needs {wanted}: run 'python starter.py db upgrade'"
        )
