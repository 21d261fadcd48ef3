"""One restartable child process: a log file per start, SIGKILL as a crash, SIGTERM to stop.

Only processes started here are ever signalled, by their own ``Popen``.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from realstack.waiting import tail, wait_for


class ChildProcess:
    """A child process run from ``folder``, stdout and stderr in ``<name>-<start>.log``."""

    def __init__(self, name: str, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        """The log file of the current (or next) start."""
        return self.folder / f"{self.name}-{self.starts}.log"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        """None while it runs (or before it started); -9 after a SIGKILL."""
        return None if self.process is None else self.process.poll()

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start (again) with a new log file; returns at once."""
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
        return self.process

    async def logged(self, line: str, within: float) -> None:
        """Wait until this start's log has ``line`` (a ready line). RuntimeError if the
        process exits first, or if the line is not there within ``within`` seconds."""
        process, log = self.process, self.log
        assert process is not None

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {process.returncode}:\n{tail(log)}"
                )
            return line in log.read_text(errors="replace")

        try:
            await wait_for(ready, f"{self.name} ready ({log})", within)
        except AssertionError as late:
            raise RuntimeError(str(late)) from None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown, no flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, within: float = 15.0) -> None:
        """Teardown: SIGTERM (a graceful stop), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.kill()
