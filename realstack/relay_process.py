"""An SMTP relay in a process of its own:
``python -m realstack.relay_process PORT [--log FILE] [--latency-ms MS]``.

aiosmtpd on loopback (``devstack.OutboxSink``'s envelope handling) that accepts every
message, keeps none, and reports one line per accepted message, appended to FILE (or
written to stdout without one), flushed *before* the ``250`` goes back, so the report is
the relay's own record of what it took (as a real relay's log would be):

    DATA epoch s, MAIL FROM epoch s, Message-ID, deal, template, rcpt[,rcpt]   (TAB-separated)

It prints ``ready`` on stdout once listening. Running outside the process that drives a
run keeps its CPU time out of what is measured, and lets a supervisor cut SMTP by
SIGKILLing it (connections are reset, mid-DATA ones too) and start it again on the same
port and log: lines already written survive the kill. With a latency, it answers each
message's DATA that much later, as a remote relay that scans what it accepts does (other
connections are served meanwhile).

``RelayProcess`` starts one, its stdout in a log file per start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO

from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from devstack import free_port
from realstack.child import ChildProcess
from realstack.relay import StampingSink, mail_at

REPO = Path(__file__).resolve().parents[1]

_HEADERS = {
    name: re.compile(rb"^" + name + rb": *([^\r\n]*)", re.MULTILINE | re.IGNORECASE)
    for name in (b"Message-ID", b"X-Dealflow-Deal", b"X-Dealflow-Step")
}


def _header(head: bytes, name: bytes) -> str:
    found = _HEADERS[name].search(head)
    return found.group(1).decode(errors="replace").strip() if found else "-"


class ReportingRelay(StampingSink):
    """Accepts everything, stores nothing, reports each accepted message on ``report``."""

    def __init__(self, port: int, report: IO[str], latency: float = 0.0) -> None:
        super().__init__(port=port)
        self.report = report
        self.latency = latency

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        if self.latency:
            await asyncio.sleep(self.latency)
        arrived = time.time()
        data = envelope.original_content or b""
        head = data.split(b"\r\n\r\n", 1)[0]
        fields = (
            f"{arrived:.6f}",
            f"{mail_at(envelope, arrived):.6f}",
            _header(head, b"Message-ID"),
            _header(head, b"X-Dealflow-Deal"),
            _header(head, b"X-Dealflow-Step"),
            ",".join(address.lower() for address in envelope.rcpt_tos),
        )
        with self._lock:
            self.report.write("\t".join(fields) + "\n")
            self.report.flush()
        return "250 Message accepted for delivery"


def serve(relay: ReportingRelay) -> None:
    """Listen until SIGTERM (or ^C)."""
    relay.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--log", type=Path, help="append the report here (default: stdout)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    if args.log is None:
        serve(ReportingRelay(args.port, sys.stdout, latency))
        return
    with args.log.open("a", encoding="utf-8") as report:
        serve(ReportingRelay(args.port, report, latency))


class RelayProcess(ChildProcess):
    """``python -m realstack.relay_process`` on a free port (the same one on every start),
    reporting every accepted message to ``folder/arrivals.tsv``."""

    def __init__(self, folder: Path) -> None:
        super().__init__("relay", folder)
        self.port = free_port()
        self.arrivals_file = folder / "arrivals.tsv"

    async def start(self, ready_within: float = 60.0) -> RelayProcess:
        """Start (again); returns once it listens. RuntimeError if it exits first or is
        not ready within ``ready_within`` seconds."""
        argv = [sys.executable, "-m", "realstack.relay_process", str(self.port)]
        argv += ["--log", str(self.arrivals_file)]
        self.spawn(argv, {**os.environ, "PYTHONPATH": str(REPO)})
        await self.logged("ready", ready_within)
        return self


if __name__ == "__main__":
    main()
