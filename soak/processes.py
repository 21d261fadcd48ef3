"""The soak's processes: the Temporal dev server, the product worker, the SMTP relay.

Each is a real process the supervisor can SIGKILL (as a crash, the OOM killer or
a pulled cable would end it) and start again on the same ports and files. Every
start writes its own log file in the run folder, kept for the post-mortem.
Only processes started here are ever signalled, by their pid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import ROOT, BenchServer
from devstack import DEV_SERVER_TUNING, free_port

WORKER_READY = "worker: polling task queue"


def _text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def wait_for_line(
    process: subprocess.Popen[bytes], log: Path, line: str, what: str, within: float
) -> None:
    deadline = time.monotonic() + within
    while True:
        if process.poll() is not None:
            tail = _text(log)[-2000:]
            raise RuntimeError(f"{what} exited with code {process.returncode}:\n{tail}")
        if line in _text(log):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {within:.0f} s (see {log})")
        await asyncio.sleep(0.1)


class Managed:
    """One restartable child process, one log file per start."""

    name = "process"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}-{self.starts}.log"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.starts += 1
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                argv,
                cwd=self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, within: float = 15.0) -> None:
        """Teardown: SIGTERM, SIGKILL if it lingers."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.kill()


class Server(Managed):
    """``temporal server start-dev`` (``bench.harness.BenchServer``): SQLite file, fixed ports."""

    name = "temporal"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.bench = BenchServer(
            port=free_port(),
            ui_port=free_port(),
            db_file=folder / "temporal.db",
            headless=True,
            tuning=tuple(DEV_SERVER_TUNING),
        )

    @property
    def address(self) -> str:
        return self.bench.address

    async def start(self, ready_within: float = 120.0) -> None:
        self.starts += 1
        self.bench.log_file = self.log
        await self.bench.start(ready_within)
        self.process = self.bench.process


class Relay(Managed):
    """``python -m soak.relay``: the SMTP relay, logging every accepted message."""

    name = "relay"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.port = free_port()
        self.arrivals_file = folder / "arrivals.tsv"

    async def start(self, ready_within: float = 60.0) -> None:
        argv = [sys.executable, "-m", "soak.relay", str(self.port), str(self.arrivals_file)]
        self._spawn(argv, {**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.process is not None
        await wait_for_line(self.process, self.log, "ready", "the SMTP relay", ready_within)


class Worker(Managed):
    """``python worker.py`` as production runs it, configured by ``DEALFLOW_*`` only."""

    name = "worker"

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        super().__init__(folder)
        self.env = env

    async def start(self, ready_within: float = 120.0, extra: dict[str, str] | None = None) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
        env = {**inherited, **self.env, **(extra or {})}
        self._spawn([sys.executable, str(ROOT / "worker.py")], env)
        assert self.process is not None
        await wait_for_line(self.process, self.log, WORKER_READY, "the worker", ready_within)
