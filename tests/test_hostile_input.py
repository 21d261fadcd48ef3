"""No input can freeze a deal: hostile payloads sent straight to the workflow, past the CLI's
and the webhook's checks, on the time-skipping server.

A workflow task that raises is retried for ever, so a value that slips through would
silently kill its deal. Each payload here is refused by the update's validator (the
caller gets one line saying why), absorbed by a signal's handler, or, for a deal's input
that skipped intake, refused as the deal starts (it fails, naming the field); in every
case the deal's history has no WorkflowTaskFailed event.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from starter import Refused, record, start_options
from tests.conftest import MAIL_WITHIN, Deals
from tests.test_lifecycle import deal_id, stage_is, status
from workflows import bounds, pricing
from workflows.business_calendar import BusinessCalendar, BusinessDays, next_slot
from workflows.deal import ALWAYS_OPEN, INBOUND_MESSAGE, INPUT_REFUSED, PLAN, DealWorkflow
from workflows.models import (
    Cadence,
    Closed,
    DealInput,
    Delivered,
    DeliveryDateChanged,
    DiscountRequested,
    InterviewRecorded,
    LineItem,
    NextStepAgreed,
    OrderPlaced,
    OutOfOffice,
    Paused,
    PlannedSend,
    RequirementsClarified,
    ShiftPolicy,
    SignalPayload,
)
from workflows.schedule import HORIZON, Schedule, upcoming
from workflows.stages import BuyerSignal, Stage

FAR = datetime(9999, 12, 31, 12, tzinfo=UTC)
HUGE_ITEMS = [LineItem(name="Widget", quantity=Decimal("1e30"), list_price=Decimal(100))]


async def failed_tasks(handle: WorkflowHandle) -> list[str]:
    """The WorkflowTaskFailed events of the deal's history, with their causes. Not counted:
    the server's own "unhandled command" (an update came in as the deal completed; the
    server had the worker look again), which no code of ours raised."""
    return [
        f"{failed.cause}: {failed.failure.message}"
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        and (failed := event.workflow_task_failed_event_attributes).cause
        != WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
    ]


async def refused(deals: Deals, handle: WorkflowHandle, signal: str, payload: BaseModel) -> str:
    """Send ``payload`` past every boundary check; the deal's validator must refuse it."""
    with pytest.raises(Refused) as refusal:
        await record(deals.client, deal_id(handle), signal, payload)
    line = str(refusal.value)
    assert "\n" not in line
    return line


async def test_hostile_updates_are_refused_by_the_validators(deals: Deals) -> None:
    handle = await deals.start(kind="rfq")
    await stage_is(handle, Stage.QUOTE_REQUESTED)
    await deals.mail(2)
    before = await status(handle)
    today = (await deals.now()).date()
    in_ten_years = today.replace(year=today.year + 10).isoformat()

    cases: list[tuple[str, BaseModel, str]] = [
        (
            BuyerSignal.ORDER_PLACED,
            OrderPlaced(delivery_date=date(9999, 12, 31)),
            f"delivery_date 9999-12-31 is after {in_ten_years}",
        ),
        (
            BuyerSignal.DISCOUNT_REQUESTED,
            DiscountRequested(percent=Decimal("5." + "1" * 40)),
            "percent 5.111",
        ),
        (BuyerSignal.NEXT_STEP_AGREED, NextStepAgreed(at=FAR), "at 9999-12-31"),
        (BuyerSignal.PAUSED, Paused(until=FAR), "until 9999-12-31"),
        (BuyerSignal.OUT_OF_OFFICE, OutOfOffice(until=FAR), "until 9999-12-31"),
        (
            BuyerSignal.LOST,
            Closed(reason="went elsewhere", note="x" * 100_000),
            "note is 100,000 characters long; at most 2,000",
        ),
        (
            BuyerSignal.LOST,
            Closed(reason="gone\x1b[2J"),
            "reason holds a control character (U+001B)",
        ),
        (
            BuyerSignal.CANCELLED,
            Closed(reason="bust", source="erp\nBcc: everyone@example.org"),
            "source holds a line break (U+000A)",
        ),
    ]
    for signal, payload, says in cases:
        line = await refused(deals, handle, signal, payload)
        assert f"refused {signal}: " in line and says in line, line

    # The deal goes on as if nothing had been sent, and takes a sane order.
    assert await status(handle) == before
    order = OrderPlaced(delivery_date=today + timedelta(days=10), purchase_order="PO-1")
    await record(deals.client, deal_id(handle), BuyerSignal.ORDER_PLACED, order)
    await stage_is(handle, Stage.ORDER_CONFIRMED)
    for signal, payload, says in [
        (
            BuyerSignal.DELIVERY_DATE_CHANGED,
            DeliveryDateChanged(delivery_date=date(9999, 12, 31), reason="strike"),
            "delivery_date 9999-12-31 is after",
        ),
        (
            BuyerSignal.DELIVERED,
            Delivered(delivered_at=datetime(1, 1, 1, tzinfo=UTC)),
            "delivered_at 0001-01-01 is before 2000-01-01",
        ),
    ]:
        line = await refused(deals, handle, signal, payload)
        assert says in line, line
    await record(deals.client, deal_id(handle), BuyerSignal.CANCELLED, Closed(reason="done"))
    await stage_is(handle, Stage.CANCELLED)
    assert await failed_tasks(handle) == []


async def test_huge_requirements_and_interview_answers_are_refused(deals: Deals) -> None:
    handle = await deals.start(kind="rfi", items=[])
    await stage_is(handle, Stage.INQUIRY_RECEIVED)
    line = await refused(
        deals, handle, BuyerSignal.REQUIREMENTS_CLARIFIED, RequirementsClarified(items=HUGE_ITEMS)
    )
    assert "items.0.quantity 1E+30 is over the most a line can hold, 1,000,000,000" in line
    many = [LineItem(name=f"Part {n}", list_price=Decimal(1)) for n in range(201)]
    line = await refused(
        deals, handle, BuyerSignal.REQUIREMENTS_CLARIFIED, RequirementsClarified(items=many)
    )
    assert "201 line items; at most 200" in line
    costly = [LineItem(name="Plant", quantity=Decimal(10**9), list_price=Decimal(10**10))]
    line = await refused(
        deals, handle, BuyerSignal.REQUIREMENTS_CLARIFIED, RequirementsClarified(items=costly)
    )
    assert "the list total" in line and "999,999,999,999.99" in line
    answers = InterviewRecorded(
        why_decided="x" * 5000, decision_process="p", rep_rating=3, cooperation_rating=3
    )
    line = await refused(deals, handle, BuyerSignal.INTERVIEW_RECORDED, answers)
    assert "why_decided is 5,000 characters long" in line
    assert (await status(handle)).stage is Stage.INQUIRY_RECEIVED
    assert await failed_tasks(handle) == []


def unchecked(deals: Deals, **fields: Any) -> DealInput:
    """A deal's input that skipped intake (the model alone checked it)."""
    base = deals.input().model_dump()
    return DealInput.model_validate({**base, "deal_id": f"H-{uuid.uuid4().hex[:8]}", **fields})


async def start_unchecked(deals: Deals, **fields: Any) -> WorkflowHandle:
    """Start a deal whose input skipped intake."""
    deal = unchecked(deals, **fields)
    deals.started.add(deal.deal_id)
    return await deals.client.start_workflow(
        DealWorkflow.run, deal, **start_options(deals.settings, deal)
    )


def out_of_bounds(deal: DealInput, today: date) -> str | None:
    """Why intake's bounds refuse ``deal``, as the deal says it; None if they take it."""
    try:
        bounds.check_deal(deal, today)
    except ValueError as error:
        return " ".join(str(error).split())
    return None


# A deal started straight against Temporal, past intake, with what intake refuses: each
# once failed its workflow task for ever.
REFUSED_AT_START = {
    # Temporal refuses a negative activity timeout: the first send's command was refused.
    "negative send_retry_for": (
        {"send_retry_for": timedelta(days=-1)},
        "send_retry_for must be more than 0, e.g. PT24H",
    ),
    # Some -2,000 years: the planner's date arithmetic overflowed after the proposal.
    "delay of -2,000 years": (
        {"cadence": {"proposal": [], "no_response_after": timedelta(days=-730_000)}},
        "cadence.no_response_after is negative (-730000 days, 0:00:00); a delay is 0 or more",
    ),
    # Quantity 1e30 (InvalidOperation in pricing, before it clamped) and 10^12 business days
    # (OverflowError in the planner, before it saturated at HORIZON).
    "quantity of 1e30": (
        {
            "items": [{"name": "Widget", "quantity": "1e30", "list_price": "100"}],
            "cadence": {"proposal": [{"business_days": 10**12}]},
        },
        "items.0.quantity 1E+30 is over the most a line can hold, 1,000,000,000",
    ),
    # A revision this code does not know: its patched paths are not this code's to guess.
    "revision from the future": ({"revision": 7}, "revision: 7; intake sets it (0 to 1)"),
}


@pytest.mark.parametrize(
    ("fields", "reason"), REFUSED_AT_START.values(), ids=list(REFUSED_AT_START)
)
async def test_a_deal_that_skipped_intake_fails_at_its_start_naming_the_field(
    deals: Deals, fields: dict[str, Any], reason: str
) -> None:
    """The deal checks its input against intake's bounds before any command, and ends as
    failed with one line; no workflow task fails."""
    handle = await start_unchecked(deals, kind="rfp", **fields)
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), MAIL_WITHIN)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert (cause.type, cause.non_retryable) == (INPUT_REFUSED, True)
    assert cause.message == f"deal input refused: {reason}"
    assert await failed_tasks(handle) == []
    # Before any command: nothing scheduled, no marker, no timer; nothing was sent.
    events = {event.event_type async for event in handle.fetch_history_events()}
    assert events == REFUSED_HISTORY, events
    assert deals.sink.received == []


REFUSED_HISTORY = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
}


# Past the bounds the arithmetic still absorbs what the model accepts: the plan query runs
# it for a deal refused at its start too.
def test_pricing_clamps_and_the_planner_saturates_past_the_bounds() -> None:
    assert pricing.list_total(HUGE_ITEMS) == Decimal("1e24")
    cadence = Cadence(
        proposal=[BusinessDays(business_days=10**12)],
        no_response_after=timedelta(days=999_999_999),
    )
    start = Schedule(stage=Stage.PROPOSAL_RECEIVED, touches=0, anchor=SENT)
    steps = upcoming(start, cadence, ALWAYS_OPEN, ShiftPolicy.SHIFT)
    assert [s.at for s in steps] == [HORIZON] * 2


SENT = datetime(2026, 12, 8, 9, tzinfo=UTC)
BERLIN = BusinessCalendar(time_zone="Europe/Berlin")
# Every delay a Cadence field takes: a plain timedelta field any, to the type's limits.
any_span = st.timedeltas(min_value=timedelta(days=-999_999_999), max_value=timedelta.max)


@settings(max_examples=300, deadline=None, database=None)
@given(
    stage=st.sampled_from(list(Stage)),
    touches=st.integers(0, 3),
    reminders=st.integers(0, 3),
    no_response_after=any_span,
    delivery_overdue_after=any_span,
    delivery=st.none() | st.dates(),
    delivered=st.none() | st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)),
    pending=st.booleans(),
    invited=st.booleans(),
)
def test_the_planner_never_raises_for_any_delay_the_model_accepts(
    stage: Stage,
    touches: int,
    reminders: int,
    no_response_after: timedelta,
    delivery_overdue_after: timedelta,
    delivery: date | None,
    delivered: datetime | None,
    pending: bool,
    invited: bool,
) -> None:
    """Negative delays too, down to -999,999,999 days: a deal refuses them as it starts,
    and the planner (which the plan query also runs) counts one as none, never overflows."""
    cadence = Cadence(
        no_response_after=no_response_after,
        delivery_overdue_after=delivery_overdue_after,
        out_of_office_pause=no_response_after,
    )
    start = Schedule(
        stage=stage, touches=touches, anchor=SENT, delivery_date=delivery,
        delivered_at=delivered, delivery_reminders=reminders, interview_pending=pending,
        interview_invited=invited, selected_for_interview=True,
    )  # fmt: skip
    for step in upcoming(start, cadence, BERLIN, ShiftPolicy.ANCHOR):
        assert step.at <= next_slot(BERLIN, HORIZON)  # a buyer's email waits for a slot


# --- the property: whatever the model lets through, no workflow task fails ---

# Every field of DealInput, anything its model accepts (intake's bounds are skipped): text
# of any length and character but a lone surrogate (no JSON encoder can write one), any
# email address the model takes, money up to Money's limits, dates of any year. Such
# input is nearly always out of some bound, so half the examples keep every field inside
# intake's bounds (``inside``) and show that what intake would take runs.
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)
names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=300
)
# Inside the bounds: no control character, line or paragraph separator; short enough.
printable = st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zl", "Zp"])
clean_text = st.text(alphabet=printable, max_size=8)
clean_names = st.text(alphabet=printable, min_size=1, max_size=bounds.MAX_NAME)
addresses = st.one_of(
    st.just("bea@buyer.example.org"),
    st.builds(
        "{}@{}".format,
        st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,40}", fullmatch=True),
        st.sampled_from(["buyer.example.org", "bücher.example", "a-b.c.d.example.com"]),
    ),
)
money = st.decimals(min_value=0, max_value=Decimal("999999999999.99"), places=2)
# A cadence delay of 365 days or more cannot be decoded at all (pydantic writes "P1Y",
# which DelayField refuses): such an input fails before the workflow's code runs.
delays = st.one_of(
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=364)),
    st.builds(lambda n: {"business_days": n}, st.integers(0, 10**12)),
)
clean_delays = st.one_of(
    st.timedeltas(min_value=timedelta(0), max_value=bounds.MAX_DELAY),
    st.builds(lambda n: {"business_days": n}, st.integers(0, bounds.MAX_BUSINESS_DAYS)),
)
# A plain timedelta field takes any, negative ones too (to the type's limit): intake refuses
# a negative delay or resend window, and so does the deal as it starts.
spans = st.timedeltas(min_value=timedelta(days=-999_999_999), max_value=timedelta(days=999_999_999))


@st.composite
def line_items(draw: st.DrawFn, inside: bool) -> dict[str, Any]:
    list_price = draw(st.decimals(min_value=0, max_value=10**6, places=2) if inside else money)
    floor = draw(st.none() | st.decimals(min_value=0, max_value=list_price, places=2))
    quantity = draw(
        st.decimals(min_value=Decimal("0.0001"), max_value=1000, places=4)
        if inside
        else st.decimals(min_value=Decimal("1e-30"), max_value=Decimal("1e300"), places=None)
    )
    return {"name": draw(clean_names if inside else names), "quantity": quantity,
            "list_price": list_price, "floor_price": floor}  # fmt: skip


@st.composite
def send_windows(draw: st.DrawFn) -> dict[str, Any]:
    start, end = sorted(draw(st.lists(st.times(), min_size=2, max_size=2, unique=True)))
    days = draw(st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True))
    return {"days": days, "start": start, "end": end}


def deal_inputs(inside: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Every field of DealInput: anything the model takes, or (``inside``) what intake's
    bounds take too, the currency aside (only intake checks it against ISO 4217)."""
    some_text, some_names = (clean_text, clean_names) if inside else (text, names)
    delay = clean_delays if inside else delays
    span = st.timedeltas(min_value=timedelta(0), max_value=bounds.MAX_DELAY) if inside else spans
    contacts = st.fixed_dictionaries(
        {
            "name": some_names,
            "email": addresses,
            "time_zone": st.one_of(
                st.sampled_from(["UTC", "Europe/Berlin", "Pacific/Kiritimati"]), text
            ),
            "role": some_text,
            "country": st.none() | some_text,
        }
    )
    valid_domains = st.sampled_from(["example.com", "xn--bcher-kva.example"])
    retry_for = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(hours=2))
    not_positive = st.timedeltas(min_value=timedelta(days=-999_999_999), max_value=timedelta(0))
    return st.fixed_dictionaries(
        {
            "deal_id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,50}", fullmatch=True),
            "company": some_names,
            "contacts": st.lists(contacts, min_size=1, max_size=3),
            "owner": addresses,
            "kind": st.sampled_from(["rfi", "rfp", "rfq"]),
            "currency": st.from_regex(r"[A-Z]{3}", fullmatch=True),
            "items": st.lists(line_items(inside), min_size=1, max_size=3),
            "cadence": st.fixed_dictionaries(
                {
                    name: st.lists(delay, max_size=3)
                    for name in ("inquiry", "proposal", "quote", "offer", "win_loss")
                }
                | {
                    "no_response_after": span,
                    "delivery_overdue_after": span,
                    "check_in_after": delay,
                    "win_loss_after": delay,
                    "out_of_office_pause": span,
                    "win_loss_min_order_value": money,
                    "reserved_margin_percent": st.decimals(
                        min_value=0,
                        max_value=Decimal("99.99" if inside else "99.9999999"),
                        allow_nan=False,
                        places=2 if inside else None,
                    ),
                }
            ),
            "fulfilment_address": addresses,
            "win_loss_interviewer": st.none() | addresses,
            "message_domain": valid_domains if inside else st.one_of(valid_domains, text),
            "calendar": st.none()
            | st.fixed_dictionaries(
                {
                    "time_zone": st.sampled_from(sorted(zoneinfo.available_timezones())),
                    "window": send_windows(),
                    "holidays": st.lists(
                        st.dates(date(2026, 1, 1), date(2035, 12, 31)) if inside else st.dates(),
                        max_size=20,
                    ),
                }
            ),
            "shift_policy": st.sampled_from(["shift", "anchor"]),
            # Sends on the deal's own queue, by name or not. A queue no worker polls leaves
            # the send waiting, which the time-skipping server cannot skip past; intake
            # bounds the name (test_bounded_input.py).
            "send_task_queue": st.booleans(),
            "routing": st.dictionaries(some_text, st.lists(some_text, max_size=3), max_size=3),
            # 0 or less: Temporal refuses a negative activity timeout and reads 0 as no
            # limit; intake refuses both, and so does the deal as it starts. Up to 2 h,
            # where intake allows 30 days: a longer one only retries a send that hostile
            # text makes fail for longer, thousands of times over the 60 days this test skips.
            "send_retry_for": retry_for if inside else st.one_of(retry_for, not_positive),
            "resend_window": st.timedeltas(
                min_value=timedelta(0), max_value=bounds.MAX_RESEND_WINDOW
            )
            if inside
            else spans,
        }
    )


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fields=st.one_of(deal_inputs(inside=False), deal_inputs(inside=True)))
# The reproductions: 100 KB of company, a line feed in a name, a quantity of 1e30.
@example(
    fields={
        "deal_id": "X",
        "company": "C" * 100_000,
        "contacts": [{"name": "Ann\nBcc: all@example.org", "email": "bea@buyer.example.org",
                      "time_zone": "No/Such_Zone", "role": "\x1b[2J", "country": "\x00"}],
        "owner": "rep@seller.example.com",
        "kind": "rfq",
        "currency": "ZZZ",
        "items": [{"name": "W\r\n", "quantity": Decimal("1e30"), "list_price": Decimal(100),
                   "floor_price": None}],
        "cadence": {},
        "fulfilment_address": "fulfilment@seller.example.com",
        "win_loss_interviewer": None,
        "message_domain": "example.com>\r\nBcc: all@example.org",
        "calendar": None,
        "shift_policy": "shift",
        "send_task_queue": False,
        "routing": {"quotation": ["\x00"] * 3},
        "send_retry_for": timedelta(hours=1),
        "resend_window": timedelta(days=-1),
    }
)  # fmt: skip
async def test_no_deal_input_the_model_accepts_fails_a_workflow_task(
    deals: Deals, fields: dict[str, Any]
) -> None:
    # Each example its own deal: the drawn id, made unique.
    fields["deal_id"] += f"-{uuid.uuid4().hex[:8]}"
    on_own_queue = fields.pop("send_task_queue")
    fields["send_task_queue"] = deals.settings.temporal_task_queue if on_own_queue else None
    deal = unchecked(deals, **fields)
    refusal = out_of_bounds(deal, (await deals.now()).date())
    tally("refused at start" if refusal else "inside the bounds: runs")
    deals.started.add(deal.deal_id)
    handle = await deals.client.start_workflow(
        DealWorkflow.run, deal, **start_options(deals.settings, deal)
    )
    try:
        await decided(handle)
        # Outside intake's bounds: refused as it starts, with intake's reason. Inside: it runs.
        events = [event.event_type async for event in handle.fetch_history_events()]
        assert (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED in events) is (refusal is not None)
        if refusal is not None:
            with pytest.raises(WorkflowFailureError) as failure:
                await handle.result()
            cause = failure.value.cause
            assert isinstance(cause, ApplicationError) and cause.type == INPUT_REFUSED
            assert cause.message == f"deal input refused: {refusal}"
        await status(handle)
        await handle.query(PLAN, result_type=list[PlannedSend])
        await deals.skip(timedelta(days=60))
        await decided(handle)
        assert await failed_tasks(handle) == []
    finally:
        # Done with: the next examples' 60 days must not carry this deal along too.
        with contextlib.suppress(RPCError):
            await handle.terminate("example done")


async def decided(handle: WorkflowHandle, within: float = MAIL_WITHIN) -> None:
    """Wait until the deal has no workflow task open (or one failed). Unlike ``quiet``, its
    activities may still run: a hostile address or subject can fail a send, and a send
    that fails for a while is retried in real time here, where no one skips the clock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        task_open = False
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                task_open = True
            elif event.event_type in TASK_DONE:
                task_open = False
        if not task_open:
            return
        assert loop.time() < deadline, f"{handle.id}: a workflow task still open after {within} s"
        await asyncio.sleep(0.05)


TASK_DONE = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}


# --- inbound mail signals: a signal has no validator, so its handler absorbs anything ---

LINE = {"name": "Widget", "quantity": 1, "list_price": 100}
OUT_OF_RANGE_RETURNS = [
    {
        "kind": "out_of_office",
        "source": "mailbox",
        "event_id": f"<y{year}@x>",
        "returns_on": day,
        "sender": "bea@buyer.example.org",
    }
    for year, day in ((1, "0001-01-01"), (9999, "9999-12-31"))
]
hostile_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=400
)
hostile_inbound = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["reply", "out_of_office", "bounce", "unsubscribe"]),
        "event_id": st.text(max_size=80),
        "source": st.just("mailbox"),
        "sender": st.one_of(st.just("bea@buyer.example.org"), hostile_text),
        "subject": hostile_text,
        "snippet": hostile_text,
        "returns_on": st.one_of(st.none(), st.dates(min_value=date(1, 1, 1))),
        "failed_recipient": st.one_of(st.just("bea@buyer.example.org"), hostile_text),
        "bounce_status": st.text(max_size=20),
        "permanent": st.booleans(),
        "addresses": st.lists(st.one_of(st.just("bea@buyer.example.org"), hostile_text)),
    }
)


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mails=st.lists(hostile_inbound, min_size=1, max_size=4))
@example(mails=[OUT_OF_RANGE_RETURNS[0], OUT_OF_RANGE_RETURNS[1]])
async def test_no_inbound_message_fails_a_workflow_task(
    deals: Deals, mails: list[dict[str, Any]]
) -> None:
    # Unchecked: an earlier example's bounce may have put the buyer on the list.
    handle = await start_unchecked(deals, kind="rfp", items=[LINE])
    for mail in mails:  # raw: what the model would refuse is sent all the same
        await handle.signal(INBOUND_MESSAGE, mail)
    await deals.quiet(handle)
    await status(handle)
    await handle.query(PLAN, result_type=list[PlannedSend])
    await deals.skip(timedelta(days=70))
    await deals.quiet(handle)
    assert await failed_tasks(handle) == []


# --- hostile update payloads: each is refused with a reason or applied, never raised ---

hostile_dates = st.dates(min_value=date(1, 1, 2), max_value=date(9999, 12, 30))
hostile_moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
notes = st.text(max_size=3000)
hostile_updates = st.one_of(
    st.builds(lambda d, n: (BuyerSignal.ORDER_PLACED, {"delivery_date": d, "note": n}),
              hostile_dates, notes),
    st.builds(lambda p: (BuyerSignal.DISCOUNT_REQUESTED, {"percent": p}),
              st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("99.9999"),
                          allow_nan=False, places=None)),
    st.builds(lambda at: (BuyerSignal.NEXT_STEP_AGREED, {"at": at}), hostile_moments),
    st.builds(lambda until: (BuyerSignal.PAUSED, {"until": until}), st.none() | hostile_moments),
    st.just((BuyerSignal.RESUMED, {})),
    st.builds(lambda until: (BuyerSignal.OUT_OF_OFFICE, {"until": until}),
              st.none() | hostile_moments),
    st.builds(lambda reason, note: (BuyerSignal.LOST, {"reason": reason, "note": note}),
              st.text(min_size=1, max_size=300), notes),
    st.builds(lambda d, r: (BuyerSignal.DELIVERY_DATE_CHANGED, {"delivery_date": d, "reason": r}),
              hostile_dates, st.text(max_size=300)),
    st.builds(lambda at: (BuyerSignal.DELIVERED, {"delivered_at": at}), hostile_moments),
)  # fmt: skip
UPDATE_MODELS: dict[str, type[BaseModel]] = {
    BuyerSignal.ORDER_PLACED: OrderPlaced,
    BuyerSignal.DISCOUNT_REQUESTED: DiscountRequested,
    BuyerSignal.NEXT_STEP_AGREED: NextStepAgreed,
    BuyerSignal.PAUSED: Paused,
    BuyerSignal.RESUMED: SignalPayload,
    BuyerSignal.OUT_OF_OFFICE: OutOfOffice,
    BuyerSignal.LOST: Closed,
    BuyerSignal.DELIVERY_DATE_CHANGED: DeliveryDateChanged,
    BuyerSignal.DELIVERED: Delivered,
}


@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(updates=st.lists(hostile_updates, min_size=1, max_size=6))
async def test_no_update_payload_fails_a_workflow_task(
    deals: Deals, updates: list[tuple[str, dict[str, Any]]]
) -> None:
    handle = await start_unchecked(deals, kind="rfq", items=[LINE])
    for signal, fields in updates:
        if (await status(handle)).stage.is_terminal:
            break  # closed: an update would only be told so (another test shows that)
        try:
            payload = UPDATE_MODELS[signal].model_validate(fields)
        except ValueError:
            continue  # the model itself refuses it: it never leaves the caller
        try:
            await record(deals.client, deal_id(handle), signal, payload)
        except Refused as refusal:
            assert "\n" not in str(refusal)  # one line, with the reason
    await deals.quiet(handle)
    await status(handle)
    await handle.query(PLAN, result_type=list[PlannedSend])
    await deals.skip(timedelta(days=40))
    await deals.quiet(handle)
    assert await failed_tasks(handle) == []
