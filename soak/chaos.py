"""The supervisor: what goes wrong during the soak, and when.

- The worker is SIGKILLed every 20-40 s (uniform) and started again at once.
- The Temporal dev server is SIGKILLed once and started again on the same ports and
  SQLite file.
- SMTP is cut once for 60 s: the relay is SIGKILLed (open connections reset, a DATA in
  flight too) and started again on the same port.
- Every third worker start (``--arm-every``) is armed with the mailer's test hook
  (``DEALFLOW_TEST_DIE_AT``): it SIGKILLs itself at a fixed point of the first send
  that reaches it, in turn right after the relay's ``250`` (before the ledger knows,
  the duplicate window), before the ledger claim, and after the ledger's *sent*. The
  random kills alone rarely land inside a send.
- A worker that exits by itself (not killed here) is started again and counted.

Actions never overlap (the server is not killed while the worker restarts, no worker
is killed while the server is down), except that worker kills go on during the SMTP
cut. Every event is kept with its wall-clock time, for the duplicate window.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from activities.mailer import DIE_AT_VARIABLE
from realstack.relay_process import RelayProcess
from realstack.temporal import TemporalDevServer
from realstack.worker import WorkerProcess

WORKER_ENDS = ("worker-kill", "worker-die-at", "worker-exit")
MTIME_SLACK = 0.02


@dataclass(frozen=True)
class Event:
    at: float  # epoch s
    # worker-kill, worker-start, worker-exit, server-kill, server-start, smtp-cut, smtp-back
    kind: str
    pid: int = 0
    detail: str = ""


@dataclass
class Chaos:
    server: TemporalDevServer
    worker: WorkerProcess
    relay: RelayProcess
    rng: random.Random
    kill_every: tuple[float, float] = (20.0, 40.0)
    smtp_cut_for: float = 60.0
    # The mailer's test hook (DEALFLOW_TEST_DIE_AT): every ``arm_every``-th worker start
    # dies by its own SIGKILL at one of these points of its first send that reaches it.
    die_at: tuple[str, ...] = ()
    arm_every: int = 3
    until: float = 0.0
    events: list[Event] = field(default_factory=list)
    starts: int = 0
    armed: tuple[str, Path] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def note(self, kind: str, pid: int = 0, detail: str = "") -> None:
        self.events.append(Event(time.time(), kind, pid, detail))

    def count(self, kind: str) -> int:
        return sum(1 for event in self.events if event.kind == kind)

    def _arm(self) -> dict[str, str]:
        self.starts += 1
        self.armed = None
        if not self.die_at or time.time() >= self.until or self.starts % self.arm_every:
            return {}
        point = self.die_at[(self.starts // self.arm_every - 1) % len(self.die_at)]
        marker = self.worker.folder / f"die-at-{self.starts}.marker"
        self.armed = (point, marker)
        return {DIE_AT_VARIABLE: f"{point}:{marker}"}

    def _died_at_point(self, pid: int) -> bool:
        """Whether worker ``pid`` ended by the armed hook (noted, timed by its marker)."""
        if self.armed is None or not self.armed[1].exists():
            return False
        point, marker = self.armed
        # The hook writes its marker right before its SIGKILL; file times come from the
        # kernel's coarse clock (a tick, <= 10 ms, behind), hence the slack.
        died = marker.stat().st_mtime + MTIME_SLACK
        self.events.append(Event(died, "worker-die-at", pid, point))
        self.armed = None
        return True

    async def _start_worker(self) -> None:
        while True:
            extra = self._arm()
            try:
                await self.worker.start(extra=extra)
                self.note("worker-start", self.worker.pid, " ".join(extra.values()))
                return
            except RuntimeError as error:
                if not self._died_at_point(self.worker.pid):
                    # Typically: the server is not reachable yet. Noted, then tried again.
                    self.note("worker-failed-start", self.worker.pid, str(error).splitlines()[0])
                    await asyncio.sleep(2)

    async def kill_workers(self, until: float) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(*self.kill_every))
            if time.time() >= until:
                return
            async with self._lock:
                if not self.worker.alive():
                    continue  # the watchdog restarts it
                pid = self.worker.pid
                self.worker.kill()
                self.note("worker-kill", pid)
                await self._start_worker()

    async def watchdog(self) -> None:
        """A worker that exited without being killed is a finding: note it, start another."""
        while True:
            await asyncio.sleep(1)
            async with self._lock:
                if self.worker.process is not None and not self.worker.alive():
                    if not self._died_at_point(self.worker.pid):
                        code = self.worker.returncode()
                        self.note("worker-exit", self.worker.pid, f"exit code {code}")
                    await self._start_worker()

    async def restart_server(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        async with self._lock:
            self.note("server-kill", self.server.pid)
            self.server.kill()
            while True:
                try:
                    await self.server.start()
                    break
                except RuntimeError as error:
                    self.note("server-failed-start", 0, str(error).splitlines()[0])
                    await asyncio.sleep(2)
            self.note("server-start", self.server.pid)

    async def cut_smtp(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        pid = self.relay.pid
        self.relay.kill()
        self.note("smtp-cut", pid)  # after the kill: a bound on when the cut came
        await asyncio.sleep(self.smtp_cut_for)
        await self.relay.start()
        self.note("smtp-back", self.relay.pid)

    async def run(self, began: float, until: float) -> None:
        """Chaos from now until ``until`` (epoch s): the SMTP cut in the first half of the
        span, the server restart in the second."""
        self.until = until
        span = until - began
        cut = began + span * self.rng.uniform(0.15, 0.4)
        restart = began + span * self.rng.uniform(0.55, 0.8)
        await asyncio.gather(
            self.kill_workers(until), self.cut_smtp(cut), self.restart_server(restart)
        )

    def deaths_after(self, moment: float, pid: int) -> float | None:
        """When the first event after ``moment`` that ends a send of worker ``pid`` came:
        that worker's kill (or its own exit), or the SMTP cut (which resets every relay
        connection); None if none came."""
        for event in sorted(self.events, key=lambda e: e.at):
            if event.at < moment:
                continue
            if event.kind in WORKER_ENDS and event.pid == pid:
                return event.at
            if event.kind == "smtp-cut":
                return event.at
        return None
