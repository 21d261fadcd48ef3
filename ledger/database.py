"""Connecting to the ledger database, and saying in one line what to do when it fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ledger import LedgerProblem

__all__ = ["LedgerDatabase", "LedgerProblem", "async_url", "display", "explain"]

T = TypeVar("T")

# The async driver for each database Dealflow supports.
DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
# How long a writer waits for a lock before the ledger says so (SQLite busy timeout).
LOCK_WAIT_SECONDS = 15.0


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


def display(url: str) -> str:
    """``url`` fit to print: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


class LedgerDatabase:
    """The ledger's database, and the one way to use it: ``run`` a function in a transaction.

    Statements are SQLAlchemy Core and run on a synchronous connection. On SQLite the
    whole transaction runs in one worker thread (aiosqlite would hop threads for every
    statement, which measured about 2 ms a transaction against 0.1 ms); on PostgreSQL it
    runs on asyncpg through ``run_sync``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        target = async_url(url)
        self.is_sqlite = target.get_backend_name() == "sqlite"
        self._sync: Engine | None = None
        self._async: AsyncEngine | None = None
        # SQLite takes one writer at a time and makes the others sleep and poll; queueing
        # this process's writes here instead keeps a burst of sends from stalling on it.
        self._one_writer = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            database = target.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            # Every use is a begin() block that commits or rolls back: no reset on return.
            self._sync = create_engine(
                target.set(drivername="sqlite+pysqlite"),
                connect_args={"timeout": LOCK_WAIT_SECONDS, "check_same_thread": False},
                pool_reset_on_return=None,
            )
            event.listen(self._sync, "connect", _sqlite_pragmas)
        else:
            self._async = create_async_engine(
                target, pool_pre_ping=True, connect_args={"timeout": 10, "command_timeout": 30}
            )

    async def run(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        """``work(connection)`` inside one transaction, committed when it returns."""
        if self._sync is not None:
            engine = self._sync

            def transaction() -> T:
                with engine.begin() as connection:
                    return work(connection)

            if write and self._one_writer is not None:
                async with self._one_writer:
                    return await asyncio.to_thread(transaction)
            return await asyncio.to_thread(transaction)
        assert self._async is not None
        async with self._async.begin() as connection:
            return await connection.run_sync(work)

    async def dispose(self) -> None:
        if self._sync is not None:
            self._sync.dispose()
        if self._async is not None:
            await self._async.dispose()


def _sqlite_pragmas(connection, _record):  # type: ignore[no-untyped-def]
    cursor = connection.cursor()
    # WAL lets the CLI read while a worker writes. In WAL mode a commit survives a crash
    # of the process without an fsync each; only a power cut can lose the last commits.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def explain(error: Exception, url: str) -> LedgerProblem:
    """One line for a database error: what is wrong, and what to do about it."""
    where = _where(url)
    text = str(getattr(error, "orig", None) or error)
    lowered = text.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        return LedgerProblem(
            f"the ledger database on {where} has no schema yet: run 'python starter.py db upgrade'"
        )
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
