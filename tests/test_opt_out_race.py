"""The opt-out race, against real processes: a send to X is in flight on one deal while X
opts out on another. No SMTP transaction for X starts after the opt-out committed.

The worker is ``python worker.py`` in its own process with one pooled SMTP connection;
the Temporal dev server and the ledger (SQLite) are real, the relay is aiosmtpd on
loopback. The send to X is put in flight by holding the relay's answer to the email
before it: X's send has started and waits for the only connection while X opts out
(the ledger write, then the deal's update, as ``starter.py optout`` does). Then the
relay answers, X's send takes the connection, reads the list before ``MAIL FROM`` and
leaves X out.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowHandle

from deal_intake import build_deal
from devstack import register_search_attributes
from ledger.database import LedgerDatabase
from ledger.suppression_list import SuppressionList, SuppressionReason, SuppressionSource
from realstack.deployment import environment
from realstack.relay import Relay
from realstack.stack import LocalStack, local_stack
from realstack.waiting import wait_for
from realstack.worker import WorkerProcess
from settings import Settings, load_settings
from starter import record, start_deal, status
from workflows.models import DealInput, OptedOut
from workflows.stages import BuyerSignal, Stage

# When X's opt-out is dated: the list keeps the time, and the send check reads only the entry.
OPTED_OUT_AT = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Race:
    client: Client
    settings: Settings
    relay: Relay
    worker: WorkerProcess
    suppressions: SuppressionList


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def race(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Race]:
    folder: Path = tmp_path_factory.mktemp("opt-out-race")
    # The relay keeps each transaction's MAIL FROM time and recipients.
    relay = Relay(transactions=True)
    async with local_stack(folder, LocalStack, relay) as stack:
        database = LedgerDatabase(stack.ledger_url)
        worker: WorkerProcess | None = None
        try:
            await register_search_attributes(stack.client, stack.client.namespace)
            values = stack.deployment(f"race-{uuid.uuid4().hex[:6]}")
            # One connection: a send waits for it while the relay holds the email before.
            values["smtp_pool_size"] = "1"
            worker = WorkerProcess("worker", folder / "worker", environment(values))
            await worker.start()
            settings = load_settings(**values, _env_file=None)
            yield Race(stack.client, settings, relay, worker, SuppressionList(database))
        finally:
            if worker is not None:
                worker.stop()
            await database.dispose()


def deal(settings: Settings, name: str, email: str, **fields: Any) -> DealInput:
    values: dict[str, Any] = {
        "deal_id": f"{name}-{uuid.uuid4().hex[:6]}",
        "company": "Buyer & Sons",
        "contacts": [{"name": name, "email": email, "time_zone": "Europe/Berlin"}],
        "kind": "rfp",
        "items": [{"name": "Conveyor X1", "quantity": 2, "list_price": "5000.00"}],
        "calendar": None,
    }
    return build_deal(settings, {**values, **fields})


async def send_waits_for_the_connection(handle: WorkflowHandle) -> bool:
    """The deal's send activity has started (a worker runs it) and has not finished."""
    described = await handle.describe()
    return any(
        activity.activity_type.name == "send_email"
        and activity.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        for activity in described.raw_description.pending_activities
    )


async def test_no_transaction_for_an_address_starts_after_its_opt_out_committed(
    race: Race,
) -> None:
    x = f"xena-{uuid.uuid4().hex[:6]}@buyer.example.org"
    # The email before X's: the relay takes it and holds its answer, so the worker's only
    # connection stays busy.
    first = deal(race.settings, "Yuri", f"yuri-{uuid.uuid4().hex[:6]}@buyer.example.org")
    held = race.relay.hold_reply(first.deal_id)
    await start_deal(race.client, race.settings, first)
    await held.arrived()

    # Deal 1 mails X at once (a proposal); deal 2 has X as a contact and mails only the rep.
    one = await start_deal(race.client, race.settings, deal(race.settings, "Xena", x))
    two = deal(race.settings, "Xena", x, kind="rfi", items=[])
    await start_deal(race.client, race.settings, two)
    await wait_for(lambda: send_waits_for_the_connection(one), "X's send is in flight")

    # X opts out on deal 2, as `starter.py optout` does: the list first, then the deal.
    await race.suppressions.add(
        x, SuppressionReason.OPTED_OUT, SuppressionSource.CLI,
        now=OPTED_OUT_AT, deal_id=two.deal_id,
    )  # fmt: skip
    # The relay's transactions so far: any later one came after the opt-out committed.
    committed = len(race.relay.transactions)
    stage = await record(race.client, two.deal_id, BuyerSignal.OPTED_OUT, OptedOut(address=x))
    assert stage == Stage.OPTED_OUT

    # Only now may X's send have the connection.
    assert not [t for t in race.relay.transactions if x in t.recipients]
    held.release()

    async def deal_one_ended() -> bool:
        return (await status(race.client, _deal_id(one))).stage is Stage.OPTED_OUT

    await wait_for(deal_one_ended, "deal 1 ends Opted Out at its send")
    proposal = (await status(race.client, _deal_id(one))).messages[0]
    assert proposal.template == "proposal" and proposal.outcome == "skipped"
    assert "OptedOut" in proposal.error and two.deal_id in proposal.error
    to_x = [t for t in race.relay.transactions if x in t.recipients]
    assert [t for t in race.relay.transactions[committed:] if x in t.recipients] == []
    assert to_x == []  # and none before either: X never had an email
    # The worker did send the held email and the rep's task of deal 2: it was not idle.
    await wait_for(lambda: race.relay.of_deal(two.deal_id), "deal 2's rep task is sent")
    assert len(race.relay.of_deal(first.deal_id)) == 1


def _deal_id(handle: WorkflowHandle) -> str:
    return handle.id.removeprefix("deal-")
