"""The soak's deals: which path each one walks, what it starts with, and the buyer's script.

Every deal runs the demo cadence (seconds instead of days) with no business
calendar, and walks one of these paths to its end:

- ``rfp-won``: RFP, 11,000 EUR; agrees, orders, takes delivery, gives the win-loss
  interview. Ends Won.
- ``rfq-won-small``: RFQ, 400 EUR; asks 5% off, agrees, orders, takes delivery (below
  the interview threshold). Ends Won.
- ``rfp-silent``: RFP; never answers (proposal, two follow-ups, the loss-analysis
  task). Ends No Response.
- ``rfi-silent``: RFI; never answers (the clarify task, two inquiry follow-ups). Ends
  No Response.
- ``rfq-lost``: RFQ, 6,000 EUR; goes with a competitor, every other one gives the loss
  interview. Ends Lost.
- ``rfp-optout``: RFP; opts out 3-20 s after the proposal arrived, as ``starter.py
  optout`` does it (the suppression list first, its commit time noted, then the deal).
  Ends Opted Out.
- ``shared-silent``: RFP; its only contact is the buyer of the ``rfp-optout`` deal
  started just before: the list stops its next email. Ends Opted Out.
- ``committee-won``: as ``rfp-won``, with that opted-out buyer as second contact
  (procurement, who gets the final offer and the order confirmation); it agrees only
  once that opt-out committed, so the list drops that recipient. Ends Won.

The buyer reacts 1-5 s after the deal is in the stage that takes the signal
(read from visibility), or after the email it answers reached the relay.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from activities.signed_tokens import TokenSigner
from deal_intake import build_deal
from ledger.suppression_list import SuppressionList, SuppressionReason, SuppressionSource
from realstack.deployment import COMMON_SETTINGS
from realstack.relay import own_parts
from settings import Settings
from starter import DealClosed, DealUnreachable, NoSuchDeal, Refused, record, start_deal
from workflows.models import (
    Closed,
    DealInput,
    Delivered,
    DiscountRequested,
    InterviewRecorded,
    OptedOut,
    OrderPlaced,
    PriceAgreed,
)
from workflows.search_attributes import DEAL_STAGE
from workflows.stages import BuyerSignal, Stage

# path -> (share of the deals, the stage it should end in)
PATHS: dict[str, tuple[float, Stage]] = {
    "rfp-won": (0.18, Stage.WON),
    "rfq-won-small": (0.14, Stage.WON),
    "rfp-silent": (0.14, Stage.NO_RESPONSE),
    "rfi-silent": (0.10, Stage.NO_RESPONSE),
    "rfq-lost": (0.14, Stage.LOST),
    "rfp-optout": (0.14, Stage.OPTED_OUT),
    "shared-silent": (0.08, Stage.OPTED_OUT),
    "committee-won": (0.08, Stage.WON),
}
# How long a script may wait for one stage or email before it gives up (the deal then
# ends on its own timers, and the table shows it ended elsewhere than planned).
SCRIPT_WAIT = 300.0
SIGNAL_WITHIN = 120.0
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")


@dataclass
class DealPlan:
    deal_id: str
    path: str
    buyer: str
    parent: str | None = None  # the rfp-optout deal whose buyer this deal shares

    @property
    def expected(self) -> Stage:
        return PATHS[self.path][1]


DEPENDENT = ("shared-silent", "committee-won")


def plan_deals(n: int, rng: random.Random) -> list[DealPlan]:
    """``n`` deals in start order; a shared or committee deal starts right after the
    opt-out deal whose buyer it shares (before that buyer opts out)."""
    names = list(PATHS)
    weights = [PATHS[name][0] for name in names]
    groups: list[list[str]] = []
    pending: list[str] = []  # dependents drawn before any opt-out deal
    last: list[str] | None = None
    for _ in range(n):
        path = rng.choices(names, weights)[0]
        if path in DEPENDENT:
            (pending if last is None else last).append(path)
            continue
        group = [path]
        if path == "rfp-optout":
            group += pending
            pending, last = [], group
        groups.append(group)
    groups += [["rfp-silent"] for _ in pending]  # no opt-out deal drawn at all
    plans: list[DealPlan] = []
    for group in groups:
        parent: DealPlan | None = None
        for path in group:
            i = len(plans)
            plan = DealPlan(f"d{i:04d}-{path}", path, f"buyer{i:04d}@buyer{i % 37}.example.org")
            if path in DEPENDENT:
                assert parent is not None
                plan.parent = parent.deal_id
                if path == "shared-silent":
                    plan.buyer = parent.buyer
            else:
                parent = plan
            plans.append(plan)
    return plans


def deal_input(settings: Settings, plan: DealPlan, plans: dict[str, DealPlan]) -> DealInput:
    zone = ZONES[int(plan.deal_id[1:5]) % len(ZONES)]
    contacts: list[dict[str, str]] = [
        {"name": "Bea Buyer", "email": plan.buyer, "time_zone": zone, "role": "economic_buyer"}
    ]
    if plan.path == "committee-won" and plan.parent:
        contacts.append(
            {"name": "Pat Procurement", "email": plans[plan.parent].buyer, "role": "procurement"}
        )
    kind, items = (
        "rfp",
        [
            {"name": "Conveyor X1", "quantity": 2, "list_price": "5000.00"},
            {"name": "Installation", "quantity": 1, "list_price": "1000.00"},
        ],
    )
    if plan.path == "rfi-silent":
        kind, items = "rfi", []
    elif plan.path == "rfq-won-small":
        kind, items = "rfq", [{"name": "Spare belt", "quantity": 4, "list_price": "100.00"}]
    elif plan.path == "rfq-lost":
        kind, items = "rfq", [{"name": "Sorter S2", "quantity": 2, "list_price": "3000.00"}]
    return build_deal(
        settings,
        {
            "deal_id": plan.deal_id,
            "company": f"Buyer {plan.deal_id}",
            "kind": kind,
            "contacts": contacts,
            "items": items,
        },
    )


# --- what the driver sees: the deals' status, visibility and the relay's log ---


class Record(BaseModel):
    """What the soak reads of a ``MessageRecord`` (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    step: str = ""
    template: str = ""
    to: list[str] = Field(default_factory=list)
    outcome: str = ""
    message_id: str = ""
    error: str = ""


class Status(BaseModel):
    """What the soak reads of the deal's ``status`` query and result (``DealStatus``),
    ignoring fields it does not know, so that the status may grow under a running soak."""

    model_config = ConfigDict(extra="ignore")

    stage: Stage
    outcome_reason: str = ""
    next_touch: dict[str, Any] | None = None
    messages: list[Record] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Arrival:
    at: float  # DATA accepted (epoch s)
    mail_at: float  # MAIL FROM (epoch s)
    message_id: str
    deal: str
    template: str
    to: tuple[str, ...]


OPENER = TokenSigner(COMMON_SETTINGS["signing_secret"])


class ArrivalLog:
    """The relay's log (``realstack.relay_process``), read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arrivals: list[Arrival] = []
        self.by_message: dict[str, list[Arrival]] = {}
        self.by_deal: dict[str, list[Arrival]] = {}
        self._offset = 0
        self._partial = b""

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            fields = raw.decode(errors="replace").split("\t")
            if len(fields) != 6:
                continue
            to = tuple(address for address in fields[5].split(",") if address)
            # The relay logs the sealed id on the wire; the deals and the ledger know the
            # deal's own id: open it with the deployment's secret to compare them.
            fields[2] = OPENER.open_message_id(fields[2]) or fields[2]
            if fields[3] == "-":  # a buyer email: no X-Dealflow-* headers
                fields[3], fields[4] = own_parts(fields[2])
            arrival = Arrival(float(fields[0]), float(fields[1]), *fields[2:5], to)
            self.arrivals.append(arrival)
            self.by_message.setdefault(arrival.message_id, []).append(arrival)
            self.by_deal.setdefault(arrival.deal, []).append(arrival)

    async def run(self, every: float = 0.5) -> None:
        while True:
            self.read()
            await asyncio.sleep(every)

    def templates(self, deal_id: str, template: str) -> int:
        """How many distinct emails of ``template`` the deal's buyer side has received."""
        return len({a.message_id for a in self.by_deal.get(deal_id, []) if a.template == template})


class Tracker:
    """Every deal's stage and whether it has closed, from one visibility list per poll."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.query = f"TaskQueue = '{task_queue}'"
        self.stage: dict[str, str] = {}
        self.closed: dict[str, WorkflowExecutionStatus] = {}
        self.polls = 0
        self.failures = 0

    async def poll(self) -> None:
        async for execution in self.client.list_workflows(self.query):
            deal_id = execution.id.removeprefix("deal-")
            self.stage[deal_id] = execution.typed_search_attributes.get(DEAL_STAGE) or ""
            if execution.status not in (None, WorkflowExecutionStatus.RUNNING):
                self.closed[deal_id] = execution.status
        self.polls += 1

    async def run(self, every: float = 2.0) -> None:
        while True:
            try:
                await self.poll()
            except (RPCError, RuntimeError):
                self.failures += 1  # the server is restarting: try again
            await asyncio.sleep(every)


# --- the buyer's side ---


@dataclass
class OptOut:
    deal_id: str
    address: str
    requested: float  # epoch s, before the list write
    committed: float  # epoch s, after the list write returned (committed)
    told: str = ""  # what the deal said to the opted_out update


@dataclass
class Buyers:
    """Drives every deal's script; keeps what happened for the report."""

    client: Client
    settings: Settings
    suppressions: SuppressionList
    tracker: Tracker
    relay: ArrivalLog
    plans: dict[str, DealPlan]
    rng: random.Random
    started: dict[str, float] = field(default_factory=dict)
    start_refused: dict[str, str] = field(default_factory=dict)
    opt_outs: dict[str, OptOut] = field(default_factory=dict)
    opted_out: dict[str, asyncio.Event] = field(default_factory=dict)
    signals: int = 0
    retries: int = 0
    refusals: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)

    # -- starting --

    async def start(self, plan: DealPlan) -> bool:
        deal = deal_input(self.settings, plan, self.plans)
        while True:
            try:
                await start_deal(self.client, self.settings, deal, self.suppressions)
                break
            except Refused as refused:
                if "already started" in str(refused):
                    break  # an earlier try went through and its answer was lost
                self.start_refused[plan.deal_id] = str(refused)
                return False
            except (RPCError, RuntimeError, OSError):
                self.retries += 1
                await asyncio.sleep(2)
        self.started[plan.deal_id] = time.time()
        return True

    # -- waiting for the deal --

    async def until(self, deal_id: str, condition: Callable[[], bool], what: str) -> bool:
        """True once ``condition`` holds; False when the deal closed first or time ran out."""
        deadline = time.monotonic() + SCRIPT_WAIT
        while not condition():
            if deal_id in self.tracker.closed:
                return False
            if time.monotonic() > deadline:
                self.gave_up.append(f"{deal_id}: waited {SCRIPT_WAIT:.0f} s for {what}")
                return False
            await asyncio.sleep(0.5)
        return True

    async def in_stage(self, deal_id: str, *stages: Stage) -> bool:
        wanted = {stage.value for stage in stages}
        return await self.until(
            deal_id, lambda: self.tracker.stage.get(deal_id) in wanted, "/".join(wanted)
        )

    async def received(self, deal_id: str, template: str, count: int = 1) -> bool:
        return await self.until(
            deal_id,
            lambda: self.relay.templates(deal_id, template) >= count,
            f"{count} x {template}",
        )

    async def think(self, low: float = 1.0, high: float = 5.0) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))

    async def signal(self, deal_id: str, signal: BuyerSignal | str, payload: BaseModel) -> bool:
        """Record one signal as ops would, retried through crashes; False if refused."""
        name = signal.value if isinstance(signal, BuyerSignal) else signal
        while True:
            try:
                await asyncio.wait_for(record(self.client, deal_id, signal, payload), SIGNAL_WITHIN)
                self.signals += 1
                return True
            except DealClosed:
                self.refusals.append(f"{deal_id} {name}: deal closed")
                return False
            except (DealUnreachable, NoSuchDeal, RPCError, RuntimeError, TimeoutError):
                self.retries += 1
                await asyncio.sleep(2)
            except Refused as refused:
                if "was already applied" in str(refused):
                    self.signals += 1  # an earlier try went through
                    return True
                self.refusals.append(str(refused))
                return False

    # -- the scripts --

    async def run(self, plan: DealPlan) -> None:
        script: dict[str, Callable[[DealPlan], Awaitable[None]]] = {
            "rfp-won": self._won,
            "committee-won": self._won,
            "rfq-won-small": self._won_small,
            "rfq-lost": self._lost,
            "rfp-optout": self._opt_out,
        }
        if plan.path in script:
            await script[plan.path](plan)

    def _event(self, deal_id: str, what: str) -> str:
        return f"soak-{deal_id}-{what}"

    async def _order_to_delivery(self, plan: DealPlan, value: Decimal | None) -> bool:
        deal = plan.deal_id
        if not await self.in_stage(deal, Stage.OFFER_RECEIVED):
            return False
        await self.think()
        order = OrderPlaced(
            delivery_date=datetime.now(UTC).date() + timedelta(days=14),
            order_value=value,
            purchase_order=f"PO-{deal}",
            source="soak",
            event_id=self._event(deal, "order"),
        )
        if not await self.signal(deal, BuyerSignal.ORDER_PLACED, order):
            return False
        if not await self.in_stage(deal, Stage.ORDER_CONFIRMED):
            return False
        await self.think()
        delivered = Delivered(source="soak", event_id=self._event(deal, "delivered"))
        return await self.signal(deal, BuyerSignal.DELIVERED, delivered)

    async def _won(self, plan: DealPlan) -> None:
        deal = plan.deal_id
        if not await self.in_stage(deal, Stage.PROPOSAL_RECEIVED):
            return
        if plan.parent:  # the committee's procurement contact opts out (elsewhere) first
            event = self.opted_out.setdefault(plan.parent, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), SCRIPT_WAIT)
            except TimeoutError:
                self.gave_up.append(f"{deal}: {plan.parent} never opted out")
        await self.think()
        agreed = PriceAgreed(source="soak", event_id=self._event(deal, "agreed"))
        if not await self.signal(deal, BuyerSignal.PRICE_AGREED, agreed):
            return
        if not await self._order_to_delivery(plan, None):
            return
        if not await self.in_stage(deal, Stage.WIN_LOSS_INVITED):
            return
        await self.think()
        await self.signal(deal, BuyerSignal.INTERVIEW_RECORDED, self._interview(deal))

    async def _won_small(self, plan: DealPlan) -> None:
        deal = plan.deal_id
        if not await self.received(deal, "quotation"):
            return
        await self.think()
        discount = DiscountRequested(
            percent=Decimal(5), source="soak", event_id=self._event(deal, "discount")
        )
        if not await self.signal(deal, BuyerSignal.DISCOUNT_REQUESTED, discount):
            return
        if not await self.received(deal, "quotation", 2):
            return
        await self.think()
        agreed = PriceAgreed(source="soak", event_id=self._event(deal, "agreed"))
        if not await self.signal(deal, BuyerSignal.PRICE_AGREED, agreed):
            return
        await self._order_to_delivery(plan, Decimal("380.00"))

    async def _lost(self, plan: DealPlan) -> None:
        deal = plan.deal_id
        if not await self.received(deal, "quotation"):
            return
        await self.think()
        lost = Closed(
            reason="went with a competitor",
            code="competitor",
            source="soak",
            event_id=self._event(deal, "lost"),
        )
        if not await self.signal(deal, BuyerSignal.LOST, lost):
            return
        if int(deal[1:5]) % 2:  # every other lost buyer gives the loss interview
            return
        if not await self.received(deal, "loss_interview_invitation"):
            return
        await self.think()
        await self.signal(deal, BuyerSignal.INTERVIEW_RECORDED, self._interview(deal))

    async def _opt_out(self, plan: DealPlan) -> None:
        """As ``starter.py optout``: the list first (commit noted), then the deal."""
        deal = plan.deal_id
        if not await self.in_stage(deal, Stage.PROPOSAL_RECEIVED):
            return
        await self.think(3.0, 20.0)
        requested = time.time()
        while True:
            try:
                await self.suppressions.add(
                    plan.buyer,
                    SuppressionReason.OPTED_OUT,
                    SuppressionSource.CLI,
                    now=datetime.now(UTC),
                    detail="soak: the buyer asked for no more email",
                    deal_id=deal,
                )
                break
            except Exception:  # the ledger is locked: try again, as ops would
                self.retries += 1
                await asyncio.sleep(1)
        opt_out = OptOut(deal, plan.buyer.lower(), requested, time.time())
        self.opt_outs[opt_out.address] = opt_out
        self.opted_out.setdefault(deal, asyncio.Event()).set()
        told = OptedOut(address=plan.buyer, source="soak", event_id=self._event(deal, "optout"))
        recorded = await self.signal(deal, BuyerSignal.OPTED_OUT, told)
        opt_out.told = "recorded" if recorded else "refused"

    @staticmethod
    def _interview(deal: str) -> InterviewRecorded:
        return InterviewRecorded(
            why_decided="lead time",
            decision_process="CFO and ops lead",
            rep_rating=4,
            cooperation_rating=5,
            source="soak",
            event_id=f"soak-{deal}-interview",
        )


def spread(plans: list[DealPlan], over: float, rng: random.Random) -> list[float]:
    """Start offsets (s) for the plans, in order, spread evenly with some jitter."""
    if len(plans) <= 1:
        return [0.0] * len(plans)
    step = over / (len(plans) - 1)
    offsets = [max(0.0, i * step + rng.uniform(-step / 2, step / 2)) for i in range(len(plans))]
    # Keep the order; a shared or committee deal starts right after its opt-out deal.
    for i in range(1, len(offsets)):
        previous = offsets[i - 1]
        offsets[i] = previous if plans[i].parent else max(offsets[i], previous)
    return offsets
