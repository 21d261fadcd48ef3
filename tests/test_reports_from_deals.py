"""The reports read what running deals record: two real deals on the time-skipping
Temporal server (real SMTP on loopback), their records written by the deals themselves,
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import Connection, func, select
from temporalio.client import WorkflowHandle

from ledger import reports
from ledger.database import LedgerDatabase
from ledger.reports import ReportFilter
from ledger.tables import DEALS, STAGE_EVENTS
from starter import record
from tests.conftest import MAIL_WITHIN, Deals, deal_of, on_both_databases, step_of
from workflows.deal import STATUS
from workflows.models import BuyerReplied, Closed, DealStatus
from workflows.stages import BuyerSignal, Stage


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[LedgerDatabase]:
    database = LedgerDatabase(ledger_url)
    yield database
    await database.dispose()


def deal_id(handle: WorkflowHandle) -> str:
    return handle.id.removeprefix("deal-")


async def follow_ups(deals: Deals, handle: WorkflowHandle, count: int) -> None:
    """Wait (real time) until the deal's buyer has had ``count`` follow-ups."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAIL_WITHIN
    while True:
        sent = [
            m.message
            for m in deals.sink.received
            if deal_of(m.message) == deal_id(handle) and step_of(m.message).endswith("follow_up")
        ]
        if len(sent) >= count:
            return
        assert loop.time() < deadline, f"{handle.id}: {len(sent)} follow-ups, not {count}"
        await asyncio.sleep(0.05)


async def recorded(ledger: LedgerDatabase, statuses: list[DealStatus]) -> None:
    """Wait until the ledger holds each deal's outcome and every entry of its history."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAIL_WITHIN

    def counts(connection: Connection) -> list[tuple[str | None, int]]:
        found = []
        for status in statuses:
            outcome = connection.execute(
                select(DEALS.c.outcome).where(DEALS.c.deal_id == status.deal_id)
            ).scalar()
            events = connection.execute(
                select(func.count()).where(STAGE_EVENTS.c.deal_id == status.deal_id)
            ).scalar()
            found.append((outcome, int(events or 0)))
        return found

    while True:
        found = await ledger.run(counts)
        if all(
            o is not None and n >= len(s.history) for (o, n), s in zip(found, statuses, strict=True)
        ):
            return
        assert loop.time() < deadline, f"the ledger holds {found}"
        await asyncio.sleep(0.1)


def stay(status: DealStatus, stage: Stage) -> timedelta:
    """How long the deal's history says it stayed in ``stage`` (entered to left)."""
    moves = [
        c for n, c in enumerate(status.history) if n == 0 or c.stage != status.history[n - 1].stage
    ]
    entered = next(n for n, c in enumerate(moves) if c.stage is stage)
    return moves[entered + 1].at - moves[entered].at


@on_both_databases
async def test_reports_count_what_two_real_deals_recorded(
    deals: Deals, ledger: LedgerDatabase
) -> None:
    silent = await deals.start(kind="rfp")
    answering = await deals.start(kind="rfp")
    await deals.mail(2)  # both proposals
    await deals.skip(timedelta(days=2, hours=1))
    await follow_ups(deals, silent, 1)
    await follow_ups(deals, answering, 1)
    await record(deals.client, deal_id(answering), BuyerSignal.BUYER_REPLIED, BuyerReplied())
    lost = Closed(reason="chose a cheaper supplier", code="price")
    await record(deals.client, deal_id(answering), BuyerSignal.LOST, lost)
    for count, days in ((2, 4), (3, 7)):
        await deals.skip(timedelta(days=days, hours=1))
        await follow_ups(deals, silent, count)
    await deals.skip(timedelta(days=7, hours=1))
    quiet: DealStatus = await silent.result()
    told: DealStatus = await answering.query(STATUS, result_type=DealStatus)
    assert (quiet.stage, told.stage) == (Stage.NO_RESPONSE, Stage.LOST)
    await recorded(ledger, [quiet, told])

    everything = ReportFilter()
    funnel = {
        row.stage: row for row in (await reports.funnel(ledger, everything, min_deals=1)).rows
    }
    clarified = funnel[Stage.REQUIREMENTS_CLARIFIED.value]
    assert (clarified.reached, clarified.to_next.numerator, clarified.to_next.deals) == (2, 2, 2)
    proposal = funnel[Stage.PROPOSAL_RECEIVED.value]
    assert (proposal.reached, proposal.to_next.numerator, proposal.to_next.deals) == (2, 0, 2)
    assert (proposal.to_won.numerator, proposal.to_won.deals) == (0, 2)
    assert funnel[Stage.WON.value].reached == 0

    rate = await reports.win_rate(ledger, everything)
    assert (rate.numerator, rate.deals, rate.enough) == (0, 2, False)

    times = {t.stage: t for t in await reports.stage_times(ledger, everything)}
    stays = sorted([stay(quiet, Stage.PROPOSAL_RECEIVED), stay(told, Stage.PROPOSAL_RECEIVED)])
    proposal_time = times[Stage.PROPOSAL_RECEIVED.value]
    assert proposal_time.deals == 2
    assert proposal_time.median == (stays[0] + stays[1]) / 2 and proposal_time.p90 == stays[1]

    effect = await reports.follow_up_effectiveness(ledger, everything, min_deals=1)
    assert [(t.touch, t.replies.deals, t.replies.numerator) for t in effect.replies] == [
        (1, 2, 1),  # the answering buyer replied to the first
        (2, 1, 0),
        (3, 1, 0),
    ]
    silence = {s.stage: s.rate for s in effect.no_response}
    assert (silence[Stage.PROPOSAL_RECEIVED.value].numerator,
            silence[Stage.PROPOSAL_RECEIVED.value].deals) == (1, 2)  # fmt: skip

    findings = await reports.win_loss(ledger, everything)
    assert [(r.code, r.deals) for r in findings.lost_reasons] == [("price", 1)]
    rows = await reports.deals(ledger, ReportFilter(kind="rfp"))
    assert {row.deal_id: row.outcome for row in rows} == {
        quiet.deal_id: Stage.NO_RESPONSE.value,
        told.deal_id: Stage.LOST.value,
    }
