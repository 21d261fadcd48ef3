"""Connecting to the ledger database, running its transactions (many callers' writes in
one: group commit), and saying in one line what to do when it fails.

Group commit: a write (``LedgerDatabase.write``) joins a queue; one task per event
loop takes everything queued and runs it in ONE transaction (on SQLite, for a send's
statements, on the event loop itself: ``LedgerDatabase``), then answers each caller
with its own result once the transaction committed. Writes queued while a batch runs
form the next batch, so a burst of sends costs a few transactions instead of three
each, and a lone write waits for nothing.
Writes of one kind (``Batched``: claims, sent marks) run as one statement for all of
the batch's; two of one key (one Message-ID) never share a statement, the later one
runs after the earlier one, as if each had had a transaction of its own.

If the batch's transaction fails because the database did (unreachable, locked, the
connection lost), every caller in it gets that error and retries as it always has.
If one write in it failed (its own error: a constraint, a refusal), the batch is
rolled back and each write runs again in a transaction of its own, so that only the
bad one fails. Reads may be batched too (``LedgerDatabase.read``): a batch starts
after every caller in it asked, so no caller gets an answer older than its call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sqlite3
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Column, Connection, Dialect, Engine, Executable, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import (
    TimeoutError as PoolTimeout,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ledger import LedgerProblem

__all__ = [
    "Batched",
    "DriverStatement",
    "LedgerDatabase",
    "LedgerProblem",
    "LedgerStats",
    "async_url",
    "display",
    "explain",
    "too_slow",
]

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")

# At most this many callers' writes (or reads) share one transaction.
MOST_IN_A_BATCH = 500
# Under load (more came while a batch ran), the next batch waits this long for company.
LINGER_SECONDS = 0.002

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


@dataclass(frozen=True, eq=False)
class Batched(Generic[A, R]):
    """A kind of statement that runs for many callers at once, in one transaction.

    ``run(connection, items)`` does what each item asks, in the order given, and returns
    one result per item; ``run(connection, [item])`` is the item on its own, exactly
    what it would do in a transaction of its own. Two items whose ``key`` is equal are
    never given to one ``run``: the later one goes to a ``run`` after the earlier one's.
    """

    name: str
    run: Callable[[Connection, list[A]], list[R]]
    key: Callable[[A], Hashable] | None = None
    # A few indexed rows an item (a send's claim, its marks, its look-up): on SQLite a
    # batch of these runs on the event loop itself (``LedgerDatabase``).
    quick: bool = True


class DriverStatement:
    """A Core statement compiled once for SQLite and run on the driver's own cursor.

    The ledger's hot statements (a send's claim, its sent mark, its suppression
    look-up) cost more in SQLAlchemy's work around each execution (the compiled
    cache's key, the parameters, the result rows) than in SQLite: here the SQL and
    the type conversions (datetimes as text) are SQLAlchemy's own, made once, and a
    driver error is raised as SQLAlchemy would raise it (``OperationalError``, ...).
    It runs inside the connection's transaction like any statement; ``applies`` says
    whether a connection takes it (PostgreSQL runs the Core statement as before).
    """

    def __init__(self, statement: Executable, columns: Iterable[Column[Any]] = ()) -> None:
        self.statement = statement
        self.columns = tuple(columns)  # what its rows hold, in order (a select, RETURNING)
        self._dialect: Dialect | None = None
        self.sql = ""
        self._binds: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
        self._names: tuple[str, ...] = ()
        self._results: list[tuple[int, Callable[[Any], Any]]] = []

    @staticmethod
    def applies(connection: Connection) -> bool:
        return connection.dialect.name == "sqlite"

    def _compile(self, dialect: Dialect) -> None:
        compiled = self.statement.compile(dialect=dialect)
        assert compiled.positiontup is not None, "a positional dialect"
        defaults = compiled.params  # the statement's own values (state = 'claimed')
        self._binds = [
            (
                name,
                defaults.get(name),
                compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect),
            )
            for name in compiled.positiontup
        ]
        self._names = tuple(column.name for column in self.columns)
        self._results = []
        for number, column in enumerate(self.columns):
            processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if processor is not None:
                self._results.append((number, processor))
        self.sql = compiled.string
        self._dialect = dialect

    def _cursor(self, connection: Connection) -> sqlite3.Cursor:
        if self._dialect is not connection.dialect:
            self._compile(connection.dialect)
        driver = connection.connection.driver_connection
        assert driver is not None
        return driver.cursor()  # type: ignore[no-any-return]

    def _parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            (processor(value) if processor is not None else value)
            for name, default, processor in self._binds
            for value in (values.get(name, default),)
        )

    def _row(self, row: Sequence[Any]) -> dict[str, Any]:
        values = list(row)
        for number, processor in self._results:
            values[number] = processor(values[number])
        return dict(zip(self._names, values, strict=True))

    def rows(self, connection: Connection, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The statement run once with ``values``: its rows, by column name."""
        cursor = self._cursor(connection)
        parameters = self._parameters(values)
        try:
            found = cursor.execute(self.sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise DBAPIError.instance(
                self.sql, parameters, error, sqlite3.Error, dialect=connection.dialect
            ) from error
        finally:
            cursor.close()
        return [self._row(row) for row in found]

    def fetch(self, connection: Connection, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The statement's rows, by column name, on any connection: on the driver's cursor
        where it applies, else as the Core statement."""
        if self.applies(connection):
            return self.rows(connection, values)
        return [dict(row) for row in connection.execute(self.statement, values).mappings()]

    def run_each(self, connection: Connection, many: Sequence[Mapping[str, Any]]) -> None:
        """The statement run for each of ``many`` on any connection: on the driver's cursor
        where it applies, else as the Core statement (``executemany``)."""
        if not many:
            return
        if self.applies(connection):
            self.run_many(connection, many)
        else:
            connection.execute(self.statement, list(many))

    def run_many(self, connection: Connection, many: Sequence[Mapping[str, Any]]) -> None:
        """The statement run for each of ``many``, in order (``executemany``)."""
        cursor = self._cursor(connection)
        parameters = [self._parameters(values) for values in many]
        try:
            cursor.executemany(self.sql, parameters)
        except sqlite3.Error as error:
            raise DBAPIError.instance(
                self.sql, parameters, error, sqlite3.Error, dialect=connection.dialect
            ) from error
        finally:
            cursor.close()


def _each_alone(connection: Connection, works: list[Callable[[Connection], Any]]) -> list[Any]:
    return [work(connection) for work in works]


# Any function of a connection (``run(work, write=True)``): each runs by itself, in turn.
# Not quick: it may be a migration or a large batch of deal records.
WORK: Batched[Callable[[Connection], Any], Any] = Batched(
    "work", _each_alone, key=lambda _: 0, quick=False
)


@dataclass
class LedgerStats:
    """What the batches did so far: callers served, and the transactions that served them."""

    writes: int = 0
    reads: int = 0
    transactions: int = 0
    retried_alone: int = 0  # run again on their own after their batch failed

    def describe(self) -> str:
        share = (self.writes + self.reads) / self.transactions if self.transactions else 0
        return (
            f"{self.writes} writes and {self.reads} reads in {self.transactions} "
            f"transactions ({share:.1f} a transaction)"
        )


@dataclass(eq=False)
class _Request:
    kind: Batched[Any, Any]
    item: Any
    future: asyncio.Future[Any]
    write: bool


def _segments(batch: list[_Request]) -> list[tuple[Batched[Any, Any], list[_Request]]]:
    """The batch as runs of one kind each: the kinds in the order they first came, and
    within a kind the callers in the order they came, a key's second request in the
    kind's second run, its third in the third, and so on.

    That is the batch in another order than it came in, which changes no result: no
    caller in it had been answered when it began, so they could have come in this order.
    """
    runs: dict[Batched[Any, Any], list[list[_Request]]] = {}
    seen: dict[Batched[Any, Any], dict[Hashable, int]] = {}
    for request in batch:
        kind = request.kind
        rounds = runs.setdefault(kind, [])
        number = 0
        if kind.key is not None:
            counts = seen.setdefault(kind, {})
            key = kind.key(request.item)
            number = counts.get(key, 0)
            counts[key] = number + 1
        if number == len(rounds):
            rounds.append([])
        rounds[number].append(request)
    return [(kind, run) for kind, rounds in runs.items() for run in rounds]


def _database_failed(error: BaseException) -> bool:
    """The database failed (not one write): unreachable, locked, lost, the commit refused."""
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or isinstance(error, OperationalError | InterfaceError)
    return isinstance(error, OSError | TimeoutError | PoolTimeout)


def _settle(
    future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    if future.done():  # the caller gave up (cancelled); the work was done all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Batcher:
    """One event loop's queue of requests, and the task that runs it in batches.

    The task exists only while there is something queued: the first caller starts it,
    and it ends when the queue is empty.
    """

    def __init__(
        self,
        transaction: Callable[..., Any],
        loop: asyncio.AbstractEventLoop,
        stats: LedgerStats,
        linger: float,
    ) -> None:
        self.transaction = transaction
        self.loop = loop
        self.stats = stats
        self.linger = linger
        self.queued: list[_Request] = []
        self.task: asyncio.Task[None] | None = None

    def submit(self, kind: Batched[A, R], item: A, *, write: bool) -> asyncio.Future[R]:
        future: asyncio.Future[R] = self.loop.create_future()
        self.queued.append(_Request(kind, item, future, write))
        if self.task is None:
            # A context of its own: not the first caller's (its activity, say).
            self.task = self.loop.create_task(self._drain(), context=contextvars.Context())
        return future

    async def _drain(self) -> None:
        try:
            # One pass of the event loop first: sends whose replies came in the same pass
            # ask in the next one too, and a transaction for all costs less CPU than one
            # each (on SQLite a batch runs in the loop, so none can join while it runs).
            await asyncio.sleep(0)
            first = True
            while self.queued:
                if not first and self.linger:
                    # Busy: more are on their way (a send's claim follows its look-up).
                    await asyncio.sleep(self.linger)
                first = False
                taken = self.queued[:MOST_IN_A_BATCH]
                del self.queued[:MOST_IN_A_BATCH]
                # A caller cancelled before its batch began: its write is not made.
                batch = [request for request in taken if not request.future.done()]
                if batch:
                    await self._run(batch)
        except BaseException as error:  # cancelled: nobody is left to run the queue
            for request in self.queued:
                _settle(request.future, error=error)
            self.queued.clear()
            raise
        finally:
            self.task = None

    async def _run(self, batch: list[_Request]) -> None:
        segments = _segments(batch)

        def work(connection: Connection) -> list[tuple[_Request, Any]]:
            results: list[tuple[_Request, Any]] = []
            for kind, requests in segments:
                done = kind.run(connection, [request.item for request in requests])
                if len(done) != len(requests):
                    raise RuntimeError(f"{kind.name}: {len(done)} results for {len(requests)}")
                results.extend(zip(requests, done, strict=True))
            return results

        self._count(batch)
        quick = all(kind.quick for kind, _ in segments)
        try:
            results = await self.transaction(work, quick=quick)
        except Exception as error:
            if len(batch) == 1 or _database_failed(error):
                for request in batch:
                    _settle(request.future, error=error)
            else:
                await self._one_by_one(batch)
            return
        except BaseException as error:
            for request in batch:
                _settle(request.future, error=error)
            raise
        for request, result in results:
            _settle(request.future, result)

    async def _one_by_one(self, batch: list[_Request]) -> None:
        """Each request of a failed batch in a transaction of its own: only the bad one fails."""
        for request in batch:
            if request.future.done():
                continue
            self._count([request])
            self.stats.retried_alone += 1
            alone = functools.partial(_run_one, request.kind, request.item)
            try:
                result = await self.transaction(alone, quick=request.kind.quick)
            except Exception as error:
                if _database_failed(error):  # not this write: the database, for all of them
                    for left in batch:
                        _settle(left.future, error=error)
                    return
                _settle(request.future, error=error)
            except BaseException as error:
                for left in batch:
                    _settle(left.future, error=error)
                raise
            else:
                _settle(request.future, result)

    def _count(self, batch: list[_Request]) -> None:
        writes = sum(request.write for request in batch)
        self.stats.writes += writes
        self.stats.reads += len(batch) - writes
        self.stats.transactions += 1


def _run_one(kind: Batched[A, R], item: A, connection: Connection) -> R:
    return kind.run(connection, [item])[0]


class LedgerDatabase:
    """The ledger's database: ``run`` a function in a transaction, ``write`` (and ``read``)
    batched statements with other callers' in one transaction.

    Statements are SQLAlchemy Core and run on a synchronous connection. On SQLite a
    batch of quick statements (``Batched.quick``: a send's claim, its marks, its
    suppression look-up) runs on the event loop itself, without waiting for a lock: a
    trip to a worker thread cost a send 4-6 ms of waiting while it held its SMTP
    connection (the thread waits for the interpreter lock each time it comes back from
    SQLite, up to 5 ms while the loop is busy), where the transaction takes about 0.1 ms.
    One that finds the database locked by another process, and every other transaction,
    runs in one worker thread (aiosqlite would hop threads for every statement, which
    measured about 2 ms a transaction against 0.1 ms), waiting up to
    ``LOCK_WAIT_SECONDS`` for the lock; on PostgreSQL it runs on asyncpg through
    ``run_sync``. Every write goes through the batch writer, so
    this process writes one transaction at a time (SQLite takes one writer at a time
    anyway, and makes the others sleep and poll).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        target = async_url(url)
        self.is_sqlite = target.get_backend_name() == "sqlite"
        self._sync: Engine | None = None
        self._async: AsyncEngine | None = None
        # SQLite: the connection quick batches run on in the event loop (made in a thread:
        # connecting sets the pragmas, which may wait for a lock).
        self._inline: Connection | None = None
        self.stats = LedgerStats()
        self._batchers: dict[str, _Batcher] = {}  # this event loop's queues
        self.linger = LINGER_SECONDS
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

    @property
    def engine(self) -> Engine:
        """The synchronous engine the statements run on (events, tests)."""
        if self._sync is not None:
            return self._sync
        assert self._async is not None
        return self._async.sync_engine

    async def run(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        """``work(connection)`` inside a transaction, committed when it returns.

        A ``write`` joins the batch writer (it may share its transaction with others'
        writes, and runs alone again if one of them fails it); a read runs by itself.
        """
        if write:
            return await self.write(WORK, work)
        return await self._transaction(work)

    async def write(self, kind: Batched[A, R], item: A) -> R:
        """``item``'s result, once the batch it ran in committed."""
        return await self._batcher("writes").submit(kind, item, write=True)

    async def read(self, kind: Batched[A, R], item: A) -> R:
        """``item``'s result, from a read that began after this call."""
        # On SQLite reads share the writes' batches: one trip to a thread for both.
        queue = "writes" if self.is_sqlite else "reads"
        return await self._batcher(queue).submit(kind, item, write=False)

    def _batcher(self, queue: str) -> _Batcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(queue)
        if batcher is None or batcher.loop is not loop:
            batcher = _Batcher(self._transaction, loop, self.stats, self.linger)
            self._batchers[queue] = batcher
        return batcher

    async def _transaction(self, work: Callable[[Connection], T], *, quick: bool = False) -> T:
        if self._sync is not None:
            if quick:
                inline = self._inline or await self._open_inline()
                try:
                    with inline.begin():
                        return work(inline)
                except OperationalError as error:
                    if not _locked(error):
                        self._drop_inline_if_lost()
                        raise
                    # Another process holds the lock: wait for it in a thread, not in the loop.
                except Exception:
                    self._drop_inline_if_lost()
                    raise
            return await asyncio.get_running_loop().run_in_executor(
                None, _in_transaction, self._sync, work
            )
        assert self._async is not None
        async with self._async.begin() as connection:
            return await connection.run_sync(work)

    async def _open_inline(self) -> Connection:
        assert self._sync is not None
        opened = await asyncio.get_running_loop().run_in_executor(
            None, _connect_without_waiting, self._sync
        )
        if self._inline is not None:  # another caller's came first
            opened.close()
            return self._inline
        self._inline = opened
        return opened

    def _drop_inline_if_lost(self) -> None:
        if self._inline is not None and (self._inline.invalidated or self._inline.closed):
            self._inline.close()
            self._inline = None

    async def dispose(self) -> None:
        """Finish what is queued on this loop, then close the connections."""
        loop = asyncio.get_running_loop()
        for batcher in list(self._batchers.values()):
            while batcher.loop is loop and batcher.task is not None:
                await asyncio.wait([batcher.task])
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        if self._sync is not None:
            self._sync.dispose()
        if self._async is not None:
            await self._async.dispose()


def _in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.begin() as connection:
        return work(connection)


def _connect_without_waiting(engine: Engine) -> Connection:
    """A connection whose statements never wait for a lock: busy or locked at once."""
    connection = engine.connect()
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute("PRAGMA busy_timeout = 0")
    return connection


def _locked(error: OperationalError) -> bool:
    """SQLite said busy or locked: another connection holds the lock this one needs."""
    code = getattr(error.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


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


def too_slow(url: str, seconds: float) -> LedgerProblem:
    """One line for a ledger that did not answer within ``seconds``."""
    return LedgerProblem(
        f"the ledger database on {_where(url)} did not answer within {seconds:.0f} s: "
        "another process holds its lock (look for a stuck migration or backup), or the "
        "server does not answer"
    )


def _where(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return str(parsed.database)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"
