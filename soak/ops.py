"""Ops, acting on emails held as *maybe sent* the way the README tells them to.

A send attempt that dies after claiming its ledger row (right before DATA) and
before recording the relay's reply leaves the row *claimed*; the retry finds it
and holds the email (``MaybeSent``, on the deal's status, a task to the rep).
Every ``every`` (5) seconds ops:

1. read the ledger's rows still *claimed* more than ``CLAIM_AGE`` seconds after
   their claim (a live attempt against a local relay takes milliseconds);
2. ask each such deal for its status: an email whose latest record failed with
   ``MaybeSent`` is held, and its claim (attempt, worker host:pid, time) is kept as
   the evidence for the duplicate window;
3. check the relay's log for its Message-ID:
   - there: it was delivered before the crash. Ops do what ``starter.py resend
     DEAL --delivered MESSAGE-ID`` does: mark the row delivered and resend; the
     resend finds the row sent and completes without sending, so the deal moves on;
   - not there: ``resend`` sends it again under the same Message-ID;
   - a deal that closed meanwhile stays open for its resend window, so both work
     there too; only a deal that has ended is counted without action.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from activities.mailer import FailureType
from ledger.database import LedgerDatabase
from ledger.send_ledger import SendLedger, SendState
from ledger.tables import SENT_EMAILS
from soak.deals import ArrivalLog, Buyers, Status
from starter import workflow_id
from workflows.deal import RESEND_FAILED, STATUS
from workflows.models import SignalPayload

# A claimed row younger than this belongs to a live attempt (a send to the local relay
# takes milliseconds); older ones are checked against the deal's status every cycle.
CLAIM_AGE = 5.0


def epoch(moment: datetime) -> float:
    # SQLite hands back naive datetimes; the ledger writes UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Claim:
    """A ledger claim left standing: the attempt that made it never recorded the reply."""

    message_id: str
    deal_id: str
    template: str
    attempt: int
    worker: str  # host:pid
    claimed_at: float  # epoch s

    @property
    def pid(self) -> int:
        tail = self.worker.rpartition(":")[2]
        return int(tail) if tail.isdigit() else 0


@dataclass
class Held:
    """One email a deal held as maybe sent, and what ops did about it."""

    claim: Claim
    found_at: float
    delivered: bool  # the relay's log had it when ops looked
    deal_open: bool
    action: str = ""
    resent: bool = False


@dataclass
class Ops:
    client: Client
    database: LedgerDatabase
    relay: ArrivalLog
    buyers: Buyers
    # False: ops resend every held email without reading the relay's log (a self-test of
    # the duplicate window: each duplicate this makes must count as inside it).
    check_log: bool = True
    claims: dict[tuple[str, float], Claim] = field(default_factory=dict)
    held: list[Held] = field(default_factory=list)
    settled: set[tuple[str, float]] = field(default_factory=set)
    resends: list[asyncio.Task[None]] = field(default_factory=list)
    cycles: int = 0
    failures: int = 0

    async def standing_claims(self) -> list[Claim]:
        statement = select(SENT_EMAILS).where(SENT_EMAILS.c.state == SendState.CLAIMED.value)
        rows = await self.database.run(lambda c: c.execute(statement).all())
        return [
            Claim(
                row.message_id,
                row.deal_id,
                row.template,
                row.attempt,
                row.worker,
                epoch(row.claimed_at),
            )
            for row in rows
        ]

    async def deal_status(self, deal_id: str) -> tuple[Status, bool]:
        handle = self.client.get_workflow_handle(workflow_id(deal_id))
        described = await handle.describe()
        status = await handle.query(STATUS, result_type=Status)
        return status, described.status == WorkflowExecutionStatus.RUNNING

    async def cycle(self) -> None:
        now = time.time()
        waiting: dict[str, list[Claim]] = {}
        for claim in await self.standing_claims():
            key = (claim.message_id, claim.claimed_at)
            if now - claim.claimed_at < CLAIM_AGE or key in self.settled:
                continue
            waiting.setdefault(claim.deal_id, []).append(claim)
        for deal_id, claims in waiting.items():
            try:
                status, deal_open = await asyncio.wait_for(self.deal_status(deal_id), 30)
            except (RPCError, RuntimeError, TimeoutError):
                self.failures += 1  # server restarting, or the worker too busy to answer
                continue
            held = [claim for claim in claims if _held(status, claim.message_id)]
            if not held:
                continue  # the retry has not come back yet
            self.relay.read()
            resending: list[Held] = []
            for claim in held:
                found = Held(
                    claim, time.time(), claim.message_id in self.relay.by_message, deal_open
                )
                self.settled.add((claim.message_id, claim.claimed_at))
                self.claims[(claim.message_id, claim.claimed_at)] = claim  # the evidence
                self.held.append(found)
                if not deal_open:
                    found.action = "deal closed, resend impossible"
                    continue
                found.resent = True
                resending.append(found)
                if not self.check_log:
                    found.action = "resent blind"
                elif found.delivered:
                    # What `starter.py resend DEAL --delivered MESSAGE-ID` does.
                    ledger = SendLedger(self.database)
                    await ledger.mark_delivered(
                        claim.message_id, "soak ops: found in the relay's log", datetime.now(UTC)
                    )
                    found.action = "in the log: marked delivered, resend completes it"
                else:
                    found.action = "not in the log: resent"
            if resending:  # in the background: a busy deal must not hold up the others
                self.resends.append(asyncio.create_task(self._resend(deal_id, resending)))

    async def _resend(self, deal_id: str, held: list[Held]) -> None:
        payload = SignalPayload(source="soak ops", note="maybe sent: checked the relay log")
        if not await self.buyers.signal(deal_id, RESEND_FAILED, payload):
            for found in held:
                found.resent = False
                found.action += "; the resend was refused (deal closed meanwhile)"

    async def run(self, every: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.cycle()
                self.cycles += 1
            except (RPCError, RuntimeError, OSError):
                self.failures += 1  # the ledger or server failed: the next cycle sees it all


def _held(status: Status, message_id: str) -> bool:
    records = [record for record in status.messages if record.message_id == message_id]
    return bool(records) and (
        records[-1].outcome == "failed" and records[-1].error.startswith(FailureType.MAYBE_SENT)
    )
