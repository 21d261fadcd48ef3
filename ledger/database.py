"""Connecting to the ledger database, and saying in one line what to do when it fails."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# The async driver for each database Dealflow supports.
DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
# How long a writer waits for a lock before the ledger says so (SQLite busy timeout).
LOCK_WAIT_SECONDS = 15.0


class LedgerProblem(Exception):
    """The ledger cannot be used; the message says what is wrong and what to do."""


def default_url(data_dir: Path) -> str:
    """The embedded default: a SQLite file in the data directory."""
    return f"sqlite:///{(data_dir / 'ledger.sqlite3').resolve()}"


def async_url(url: str) -> URL:
    """``url`` with Dealflow's async driver (``postgresql://`` -> ``postgresql+asyncpg://``)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LedgerProblem(
            f"DEALFLOW_DATABASE_URL {url!r} is not a database URL: use "
            "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in DRIVERS:
        raise LedgerProblem(
            f"DEALFLOW_DATABASE_URL names {backend!r}: the ledger runs on sqlite or postgresql"
        )
    return parsed.set(drivername=DRIVERS[backend])


def open_engine(url: str) -> AsyncEngine:
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        database = target.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(target, connect_args={"timeout": LOCK_WAIT_SECONDS})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(connection, _record):  # type: ignore[no-untyped-def]
            # WAL lets the CLI read while a worker writes; one writer at a time either way.
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_SECONDS * 1000)}")
            cursor.close()

        return engine
    return create_async_engine(
        target,
        pool_pre_ping=True,
        connect_args={"timeout": 10, "command_timeout": 30},
    )


def explain(error: Exception, url: str) -> LedgerProblem:
    """One line for a database error: what is wrong, and what to do about it."""
    where = _where(url)
    text = str(getattr(error, "orig", None) or error)
    lowered = text.lower()
    if "does not exist" in lowered and "database" in lowered:
        name = make_url(url).database
        return LedgerProblem(
            f"the ledger database {name!r} does not exist on {where}: create it "
            f"(createdb {name}) and run 'python starter.py db upgrade'"
        )
    if "locked" in lowered or "lock timeout" in lowered or "canceling statement" in lowered:
        return LedgerProblem(
            f"the ledger database on {where} stayed locked for {LOCK_WAIT_SECONDS:.0f} s: "
            "another process holds it; try again, and look for a stuck migration or backup"
        )
    if "unable to open database file" in lowered:
        return LedgerProblem(
            f"cannot open the ledger file {where}: check that its folder exists and is writable"
        )
    if isinstance(error, OperationalError | DBAPIError | OSError | TimeoutError):
        first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        return LedgerProblem(
            f"cannot reach the ledger database on {where} ({first_line}): start it, or fix "
            "DEALFLOW_DATABASE_URL"
        )
    return LedgerProblem(f"the ledger database on {where} failed: {text.splitlines()[0]}")


def _where(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return str(parsed.database)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"
