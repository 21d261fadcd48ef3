"""The SMTP relay in this process: aiosmtpd on a free loopback port (``devstack.OutboxSink``).

``Relay`` records every message it accepts with its Message-ID and the wall-clock time,
can be stopped and started on the same port (an outage), and can hold its final ``250``
for a deal's next message (the reply that a crash loses). With ``transactions=True`` it
also keeps each SMTP transaction's MAIL FROM time and recipients (who was being mailed
when). ``StampingSink``, its base, notes when each transaction's MAIL FROM came.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes, policy

from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from activities.signed_tokens import TokenSigner
from devstack import OutboxSink
from realstack.deployment import COMMON_SETTINGS
from realstack.waiting import WITHIN, wait_for

OPENER = TokenSigner(COMMON_SETTINGS["signing_secret"])
_OWN_ID = re.compile(r"^<(?P<deal>.+)\.\d{3,}-(?P<step>[A-Za-z0-9_]+)@[^@]+>$")


def own_parts(message_id: str) -> tuple[str, str]:
    """(deal, template) of a deal's own Message-ID (``<D-1.003-proposal@…>``), or ("", "")."""
    found = _OWN_ID.match(message_id)
    return (found["deal"], found["step"]) if found else ("", "")


class StampingSink(OutboxSink):
    """``OutboxSink`` that notes the wall-clock time of each MAIL FROM as ``mail_at`` on
    the transaction's envelope (otherwise aiosmtpd's own handling of MAIL)."""

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


def mail_at(envelope: Envelope, default: float) -> float:
    """When the envelope's MAIL FROM came (``default`` without one)."""
    return float(getattr(envelope, "mail_at", default))


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
        wire = str(message.get("Message-ID", ""))
        # The deal's own id (what its status and the ledger show), opened from the sealed
        # one on the wire with the deployment's secret; a buyer email names its deal and
        # step nowhere else.
        own = OPENER.open_message_id(wire) or wire
        deal, step = own_parts(own)
        return Arrival(
            message_id=own,
            deal=str(message.get("X-Dealflow-Deal", deal)),
            step=str(message.get("X-Dealflow-Step", step)),
            to=tuple(rcpt_tos),
            at=time.time(),
        )


@dataclass(frozen=True)
class Transaction:
    """One SMTP recipient the relay was given: when its transaction's MAIL FROM came,
    and to whom it was."""

    mail_at: float
    recipients: tuple[str, ...]


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


class Relay(StampingSink):
    """aiosmtpd on a free loopback port: what the worker's SMTP relay would be."""

    def __init__(self, *, transactions: bool = False) -> None:
        super().__init__()
        self.arrivals: list[Arrival] = []
        # Each RCPT with its transaction's MAIL FROM time, when asked for.
        self.transactions: list[Transaction] = []
        self._keep_transactions = transactions
        self._holds: dict[str, HeldReply] = {}
        self._every_hold: list[HeldReply] = []

    def hold_reply(self, deal: str) -> HeldReply:
        """Store the next message of ``deal`` (it counts as arrived) but hold its ``250``."""
        held = HeldReply(deal)
        with self._lock:
            self._holds[deal] = held
            self._every_hold.append(held)
        return held

    async def handle_RCPT(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        if self._keep_transactions:
            with self._lock:
                self.transactions.append(Transaction(mail_at(envelope, 0.0), (address,)))
        return reply

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
