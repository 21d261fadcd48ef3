"""The soak's SMTP relay, in a process of its own: ``python -m soak.relay PORT LOG``.

aiosmtpd on loopback (``devstack.OutboxSink``'s envelope handling) that accepts
every message, keeps none, and appends one line per accepted message to LOG,
written and flushed *before* the ``250`` goes back, so the log is the relay's
own record of what it took (as a real relay's log would be):

    DATA epoch s, MAIL FROM epoch s, Message-ID, deal, template, rcpt[,rcpt]   (TAB-separated)

The supervisor cuts SMTP by SIGKILLing this process (connections are reset,
mid-DATA ones too) and starting it again on the same port and log: lines
already written survive the kill. It prints ``ready`` once listening.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from typing import IO

from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from devstack import OutboxSink

_HEADERS = {
    name: re.compile(rb"^" + name + rb": *([^\r\n]*)", re.MULTILINE | re.IGNORECASE)
    for name in (b"Message-ID", b"X-Dealflow-Deal", b"X-Dealflow-Step")
}


def _header(head: bytes, name: bytes) -> str:
    found = _HEADERS[name].search(head)
    return found.group(1).decode(errors="replace").strip() if found else "-"


class LoggingRelay(OutboxSink):
    def __init__(self, port: int, log: IO[str]) -> None:
        super().__init__(port=port)
        self.log = log

    async def handle_MAIL(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.mail_at = time.time()  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        arrived = time.time()
        data = envelope.original_content or b""
        head = data.split(b"\r\n\r\n", 1)[0]
        fields = (
            f"{arrived:.6f}",
            f"{getattr(envelope, 'mail_at', arrived):.6f}",
            _header(head, b"Message-ID"),
            _header(head, b"X-Dealflow-Deal"),
            _header(head, b"X-Dealflow-Step"),
            ",".join(address.lower() for address in envelope.rcpt_tos),
        )
        with self._lock:
            self.log.write("\t".join(fields) + "\n")
            self.log.flush()
        return "250 Message accepted for delivery"


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "a", encoding="utf-8") as log:
        relay = LoggingRelay(port, log)
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


if __name__ == "__main__":
    main()
