"""The live pipeline, from Temporal visibility: what every deal Temporal holds shows now.

No deal is asked (no query, no workflow task): the deals' search attributes are read
as the server indexed them, so the view costs the same for ten deals or a hundred
thousand. Money is never added across currencies, open and closed deals are kept
apart, and stale deals (nothing planned, or the next touch overdue) are named. Closed
deals leave Temporal when the namespace's retention ends; ``report`` reads the ledger,
which keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus

from workflows.search_attributes import (
    DEAL_CURRENCY,
    DEAL_NEXT_TOUCH,
    DEAL_OWNER,
    DEAL_STAGE,
    DEAL_VALUE,
)
from workflows.stages import Stage

DEALS = "WorkflowType = 'DealWorkflow'"
# A touch this late is stale, not merely being sent right now by a busy worker.
OVERDUE_AFTER = timedelta(hours=1)
# Deals started before the currency was indexed.
UNKNOWN_CURRENCY = "?"
_ORDER = {stage.value: index for index, stage in enumerate(Stage)}


class StageTotal(BaseModel):
    stage: str
    currency: str
    deals: int = 0
    value: Decimal = Decimal(0)


class OwnerTotal(BaseModel):
    owner: str
    currency: str
    open_deals: int = 0
    open_value: Decimal = Decimal(0)
    won_deals: int = 0
    won_value: Decimal = Decimal(0)


class StaleDeal(BaseModel):
    deal_id: str
    owner: str
    stage: str
    # None: nothing planned at all.
    next_touch: datetime | None


class Pipeline(BaseModel):
    open: list[StageTotal]
    closed: list[StageTotal]
    owners: list[OwnerTotal]
    stale: list[StaleDeal]


@dataclass
class _Totals:
    open: dict[tuple[str, str], StageTotal] = field(default_factory=dict)
    closed: dict[tuple[str, str], StageTotal] = field(default_factory=dict)
    owners: dict[tuple[str, str], OwnerTotal] = field(default_factory=dict)
    stale: list[StaleDeal] = field(default_factory=list)


async def pipeline(client: Client, now: datetime, owner_filter: str | None = None) -> Pipeline:
    """The pipeline of every deal, or of one owner's (``owner_filter``: a visibility clause)."""
    query = DEALS + (f" AND {owner_filter}" if owner_filter else "")
    totals = _Totals()
    async for execution in client.list_workflows(query):
        attributes = execution.typed_search_attributes
        stage = attributes.get(DEAL_STAGE) or "Starting"
        currency = attributes.get(DEAL_CURRENCY) or UNKNOWN_CURRENCY
        owner = attributes.get(DEAL_OWNER) or ""
        value = Decimal(str(attributes.get(DEAL_VALUE) or 0)).quantize(Decimal("0.01"))
        running = execution.status is WorkflowExecutionStatus.RUNNING
        if not running and execution.status is not WorkflowExecutionStatus.COMPLETED:
            # Terminated or failed by hand: closed, under what happened to it.
            stage = f"{stage} ({WorkflowExecutionStatus(execution.status or 0).name.lower()})"
        ended = not running or stage in _TERMINAL
        row = (totals.closed if ended else totals.open).setdefault(
            (stage, currency), StageTotal(stage=stage, currency=currency)
        )
        row.deals += 1
        row.value += value
        person = totals.owners.setdefault(
            (owner, currency), OwnerTotal(owner=owner, currency=currency)
        )
        if not ended:
            person.open_deals += 1
            person.open_value += value
            touch = attributes.get(DEAL_NEXT_TOUCH)
            if touch is None or touch < now - OVERDUE_AFTER:
                deal_id = execution.id.removeprefix("deal-")
                totals.stale.append(
                    StaleDeal(deal_id=deal_id, owner=owner, stage=stage, next_touch=touch)
                )
        elif stage == Stage.WON.value:
            person.won_deals += 1
            person.won_value += value
    return Pipeline(
        open=sorted(totals.open.values(), key=_by_stage),
        closed=sorted(totals.closed.values(), key=_by_stage),
        owners=sorted(totals.owners.values(), key=lambda o: (o.owner, o.currency)),
        stale=sorted(
            totals.stale, key=lambda s: (s.next_touch is not None, s.next_touch, s.deal_id)
        ),
    )


_TERMINAL = {stage.value for stage in Stage if stage.is_terminal}


def _by_stage(row: StageTotal) -> tuple[int, str, str]:
    return _ORDER.get(row.stage, len(_ORDER)), row.stage, row.currency


def _by_touch(deal: StaleDeal) -> tuple[bool, datetime | None, str]:
    # Nothing planned first, then the most overdue.
    return deal.next_touch is not None, deal.next_touch, deal.deal_id


def currency_totals(rows: list[StageTotal]) -> dict[str, StageTotal]:
    """One total per currency: amounts in different currencies are never added."""
    totals: dict[str, StageTotal] = {}
    for row in rows:
        total = totals.setdefault(row.currency, StageTotal(stage="total", currency=row.currency))
        total.deals += row.deals
        total.value += row.value
    return dict(sorted(totals.items()))
