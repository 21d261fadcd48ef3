"""The benchmarks' SMTP sink, in a process of its own: ``python -m bench.sink PORT [LATENCY_MS]``.

It is ``devstack.OutboxSink`` (aiosmtpd on loopback) that keeps nothing: for
every accepted message it prints one line, ``mail<TAB>epoch seconds<TAB>deal<TAB>step``,
so the driver knows when each email arrived. Running it outside the benchmark
process keeps its CPU time out of the process being measured, as a real relay would.
With a latency, it answers each message's DATA that much later, as a remote
relay that scans what it accepts does (other connections are served meanwhile).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import threading
import time

from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from devstack import OutboxSink

_DEAL = re.compile(rb"^X-Dealflow-Deal: *(\S*)", re.MULTILINE | re.IGNORECASE)
_STEP = re.compile(rb"^X-Dealflow-Step: *(\S*)", re.MULTILINE | re.IGNORECASE)


def _header(pattern: re.Pattern[bytes], head: bytes) -> str:
    found = pattern.search(head)
    return found.group(1).decode(errors="replace") if found else "-"


class StampingSink(OutboxSink):
    """Accepts everything, stores nothing, reports each arrival on stdout."""

    latency = 0.0

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        if self.latency:
            await asyncio.sleep(self.latency)
        arrived = time.time()
        data = envelope.original_content or b""
        head = data.split(b"\r\n\r\n", 1)[0]
        line = f"mail\t{arrived:.6f}\t{_header(_DEAL, head)}\t{_header(_STEP, head)}\n"
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()
        return "250 Message accepted for delivery"


def main() -> None:
    sink = StampingSink(port=int(sys.argv[1]))
    sink.latency = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0
    sink.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
