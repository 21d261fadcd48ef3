"""The product's worker in a process of its own: ``python worker.py`` exactly as
production runs it, configured by ``DEALFLOW_*`` variables only."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from realstack.child import ChildProcess
from realstack.waiting import WITHIN, wait_for

REPO = Path(__file__).resolve().parents[1]
READY_LINE = "worker: polling task queue"


class WorkerProcess(ChildProcess):
    """``python worker.py`` run from ``folder`` (so no ``.env`` of the checkout applies)
    with the inherited environment's ``DEALFLOW_*`` variables replaced by ``env``; stdout
    and stderr go to one log file per start."""

    def __init__(self, name: str, folder: Path, env: dict[str, str]) -> None:
        super().__init__(name, folder)
        self.env = env

    async def start(
        self, ready_within: float = WITHIN, extra: dict[str, str] | None = None
    ) -> WorkerProcess:
        """Start (again, with ``extra`` variables for this start only); returns once the
        worker says it polls its task queue. RuntimeError if it exits first or is not
        ready within ``ready_within`` seconds."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
        env = {**inherited, **self.env, **(extra or {})}
        self.spawn([sys.executable, str(REPO / "worker.py")], env)
        await self.logged(READY_LINE, ready_within)
        return self

    async def exited(self, within: float = WITHIN) -> int:
        """Wait until the process has ended; its return code (-9: SIGKILL)."""
        process = self.process
        assert process is not None
        await wait_for(lambda: process.poll() is not None, f"{self.name} exits", within)
        return process.returncode
