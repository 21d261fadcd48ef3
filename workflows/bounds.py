"""The bounds every value a deal takes in stays inside, each refused with one line.

Checked where input arrives (``deal_intake``: the CLI, a deal file, a CSV row; the
webhook) and again by the deal's update validators, so a payload that skipped the
boundary is refused before it can reach the workflow's arithmetic.

These are plain checks, not pydantic constraints on the models: a running deal's
history is decoded with today's models on replay, and a payload stored before a bound
existed must keep decoding (tests/test_replay.py). Pure (no clock: callers pass today;
no I/O), so the workflow's validators run them in the sandbox.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import idna
from pydantic import BaseModel

from workflows import pricing
from workflows.business_calendar import MAX_SCAN_DAYS, BusinessCalendar, BusinessDays, Delay
from workflows.models import REVISION

if TYPE_CHECKING:
    from workflows.models import DealInput

# Text, in characters.
MAX_NAME = 200  # company, contact and item names
MAX_LINE = 200  # one-line fields: source, purchase order, role
MAX_NOTE = 2000  # notes, reasons, interview answers (several lines allowed)
MAX_ADDRESS = 320  # an email address named in a payload (RFC 3696)
MAX_EVENT_ID = 998
MAX_CODE = 32  # a reason code: lost reasons, interview decision reasons
REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_DOMAIN = 253  # a host name (RFC 1035), in its ASCII form
# A Temporal task queue: no spaces or controls, and far under the server's id limit (a
# name it refuses would fail every workflow task that schedules a send there).
TASK_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}")
# Counts.
MAX_ITEMS = 200
MAX_CONTACTS = 50
MAX_HOLIDAYS = 1000
MAX_FOLLOW_UPS = 20
MAX_ROUTES = 100  # templates a deal's routing names
MAX_ROLES = MAX_CONTACTS  # roles one template goes to
# Numbers. A price is Money (models.py): at most 999,999,999,999.99, two decimals.
MAX_QUANTITY = Decimal(10**9)
QUANTITY_PLACES = 4
MAX_TOTAL = Decimal("999999999999.99")  # a deal's total fits where an order value does
PERCENT_PLACES = 2
# Dates and delays.
EARLIEST = date(2000, 1, 1)
YEARS_AHEAD = 10
# Under a year: pydantic writes 365 days as "P1Y", which a cadence delay (DelayField)
# refuses to read back, so a deal with a year-long delay could not even decode its input.
MAX_DELAY = timedelta(days=364)
MAX_BUSINESS_DAYS = 260
MAX_SEND_RETRY = timedelta(days=30)
MAX_RESEND_WINDOW = timedelta(days=90)
# The latest return date an out-of-office notice may set (later: the cadence's pause).
MAX_AWAY = timedelta(days=60)
# A mailed return date may be a day behind UTC (the buyer's "today" in their time zone).
RETURN_DATE_SLACK = timedelta(days=1)


def latest(today: date) -> date:
    """The last date a deal may name: ten years from today."""
    try:
        return today.replace(year=today.year + YEARS_AHEAD)
    except ValueError:  # 29 February
        return today.replace(year=today.year + YEARS_AHEAD, day=28)


def _character(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" {name}" if name else "")


def check_text(where: str, text: str, limit: int, lines: bool = False) -> None:
    """At most ``limit`` characters, none of them a control character; ``lines`` allows
    line feeds and tabs (a CR only before a LF)."""
    if len(text) > limit:
        raise ValueError(f"{where} is {len(text):,} characters long; at most {limit:,}")
    allowed = "\t\n" if lines else ""
    for char in text.replace("\r\n", "\n") if lines else text:
        # Cc: C0/C1 controls (line feed, escape, NUL); Zl/Zp: line and paragraph
        # separators; Cs: lone surrogates, which no UTF-8 encoder can write.
        if unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs") and char not in allowed:
            kind = {"\r": "a carriage return", "\n": "a line break"}.get(char, "")
            if not kind:
                kind = "a line break" if char in "\u2028\u2029\x85" else "a control character"
            raise ValueError(f"{where} holds {kind} ({_character(char)}); remove it")


def ascii_domain(where: str, domain: str) -> str:
    """``domain`` as the ASCII host name a Message-ID carries (IDNA A-labels: an
    internationalised name becomes ``xn--…``); ValueError when it is no host name."""
    check_text(where, domain, MAX_DOMAIN)
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"{where} {domain!r} is not a host name: {error}") from None


def check_domain(where: str, domain: str) -> None:
    """A host name already in its ASCII form (any case), e.g. ``example.com``."""
    written = ascii_domain(where, domain)
    if written != domain.lower():
        raise ValueError(f"{where} {domain!r} should be written {written!r} (IDNA)")


def check_task_queue(where: str, name: str) -> None:
    if not TASK_QUEUE.fullmatch(name):
        raise ValueError(
            f"{where} {name[:40]!r} is not a task queue name; use at most 200 letters, "
            "digits and . _ : @ / - (starting with a letter or digit), e.g. dealflow-send"
        )


def check_routing(where: str, routing: dict[str, list[str]]) -> None:
    """Template -> roles: how many of each, and each name a bounded line."""
    if len(routing) > MAX_ROUTES:
        raise ValueError(f"{where}: {len(routing):,} templates; at most {MAX_ROUTES}")
    for template, roles in routing.items():
        check_text(f"{where}: template name", template, MAX_LINE)
        if len(roles) > MAX_ROLES:
            raise ValueError(f"{where}.{template}: {len(roles):,} roles; at most {MAX_ROLES}")
        for index, role in enumerate(roles):
            check_text(f"{where}.{template}.{index}", role, MAX_LINE)


def _places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def check_quantity(where: str, quantity: Decimal) -> None:
    if not quantity.is_finite() or quantity > MAX_QUANTITY:
        raise ValueError(f"{where} {quantity} is over the most a line can hold, {MAX_QUANTITY:,}")
    if _places(quantity.normalize()) > QUANTITY_PLACES:
        raise ValueError(f"{where} {quantity} has more than {QUANTITY_PLACES} decimal places")


def check_amount(where: str, amount: Decimal) -> None:
    if not amount.is_finite() or amount > MAX_TOTAL:
        raise ValueError(f"{where} {amount} is over the most a deal may be worth, {MAX_TOTAL:,}")


def check_items(where: str, items: list[Any]) -> None:
    """Line items: how many, their names and quantities, and what they add up to."""
    if len(items) > MAX_ITEMS:
        raise ValueError(f"{where}: {len(items):,} line items; at most {MAX_ITEMS}")
    for index, item in enumerate(items):
        check_text(f"{where}.{index}.name", item.name, MAX_NAME)
        check_quantity(f"{where}.{index}.quantity", item.quantity)
    check_amount(f"{where}: the list total", pricing.list_total(items))


def check_percent(where: str, percent: Decimal) -> None:
    if _places(percent.normalize()) > PERCENT_PLACES:
        raise ValueError(f"{where} {percent} has more than {PERCENT_PLACES} decimal places")


def check_date(where: str, day: date, today: date, earliest: date = EARLIEST) -> None:
    last = latest(today)
    if day < earliest:
        raise ValueError(f"{where} {day.isoformat()} is before {earliest.isoformat()}")
    if day > last:
        raise ValueError(
            f"{where} {day.isoformat()} is after {last.isoformat()} "
            f"(at most {YEARS_AHEAD} years ahead)"
        )


def check_moment(where: str, moment: datetime, today: date) -> None:
    try:
        day = moment.astimezone(UTC).date()
    except (OverflowError, ValueError):
        raise ValueError(f"{where} {moment.isoformat()} is out of range") from None
    check_date(where, day, today)


def check_delay(where: str, delay: Delay) -> None:
    if isinstance(delay, BusinessDays):
        if delay.business_days > MAX_BUSINESS_DAYS:
            raise ValueError(
                f"{where} is {delay.business_days:,} business days; at most {MAX_BUSINESS_DAYS}"
            )
    elif delay < timedelta(0):
        # A delay of some -2,000 years overflows the planner's date arithmetic.
        raise ValueError(f"{where} is negative ({delay}); a delay is 0 or more")
    elif delay > MAX_DELAY:
        raise ValueError(f"{where} is {delay.days:,} days; at most {MAX_DELAY.days}")


def check_calendar(where: str, calendar: BusinessCalendar, today: date) -> None:
    """Holidays in the date window, and a business day in every stretch the planner scans
    (a calendar of holidays end to end would leave a deal no day to send on)."""
    holidays = calendar.holidays
    if len(holidays) > MAX_HOLIDAYS:
        raise ValueError(f"{where}.holidays: {len(holidays):,} dates; at most {MAX_HOLIDAYS}")
    for day in holidays:
        check_date(f"{where}.holidays", day, today)
    if not holidays:
        return
    closed = set(holidays)
    day, last, run = min(closed) - timedelta(days=7), max(closed) + timedelta(days=7), 0
    while day <= last:
        open_ = day.weekday() in calendar.window.days and day not in closed
        run = 0 if open_ else run + 1
        if run >= MAX_SCAN_DAYS:
            raise ValueError(
                f"{where} has no business day for {MAX_SCAN_DAYS} days from "
                f"{(day - timedelta(days=run - 1)).isoformat()}: check its holidays"
            )
        day += timedelta(days=1)


def check_deal(deal: DealInput, today: date) -> None:
    """Every field of a deal inside its bound; ValueError naming the first that is not.

    Intake runs it before a deal starts (``deal_intake.check_deal``, which also checks the
    currency), and the deal again as its run begins, before any command, for input that
    was started straight against Temporal."""
    check_text("company", deal.company, MAX_NAME)
    if not 0 <= deal.revision <= REVISION:
        raise ValueError(f"revision: {deal.revision}; intake sets it (0 to {REVISION})")
    if len(deal.contacts) > MAX_CONTACTS:
        raise ValueError(f"contacts: {len(deal.contacts)} given; at most {MAX_CONTACTS}")
    for index, contact in enumerate(deal.contacts):
        check_text(f"contacts.{index}.name", contact.name, MAX_NAME)
        check_text(f"contacts.{index}.role", contact.role, MAX_LINE)
        check_text(f"contacts.{index}.country", contact.country or "", 8)
    check_items("items", deal.items)
    check_domain("message_domain", deal.message_domain)
    if deal.send_task_queue is not None:
        check_task_queue("send_task_queue", deal.send_task_queue)
    check_routing("routing", deal.routing)
    cadence = deal.cadence
    for name in ("inquiry", "proposal", "quote", "offer", "win_loss"):
        delays = cadence.follow_ups(name)
        if len(delays) > MAX_FOLLOW_UPS:
            raise ValueError(f"cadence.{name}: {len(delays)} follow-ups; at most {MAX_FOLLOW_UPS}")
        for index, delay in enumerate(delays):
            check_delay(f"cadence.{name}.{index}", delay)
    for name in (
        "no_response_after", "delivery_overdue_after", "check_in_after", "win_loss_after",
        "out_of_office_pause",
    ):  # fmt: skip
        check_delay(f"cadence.{name}", getattr(cadence, name))
    check_percent("cadence.reserved_margin_percent", cadence.reserved_margin_percent)
    if deal.send_retry_for > MAX_SEND_RETRY:
        raise ValueError(f"send_retry_for is over {MAX_SEND_RETRY.days} days")
    if deal.send_retry_for <= timedelta(0):
        # Temporal refuses a negative timeout (the deal's workflow task would fail for
        # ever) and reads 0 as no limit at all.
        raise ValueError("send_retry_for must be more than 0, e.g. PT24H")
    if not timedelta(0) <= deal.resend_window <= MAX_RESEND_WINDOW:
        raise ValueError(f"resend_window must be 0 to {MAX_RESEND_WINDOW.days} days")
    if deal.calendar is not None:
        check_calendar("calendar", deal.calendar, today)


# --- update payloads: one rule per field name ---

Rule = Callable[[str, Any, date], None]


def _text(limit: int, lines: bool = False) -> Rule:
    return lambda where, value, today: check_text(where, value, limit, lines)


def _rating(where: str, value: int | str, today: date) -> None:
    if isinstance(value, str):  # an older interview's words
        check_text(where, value, MAX_NOTE, lines=True)


def check_code(where: str, code: str) -> None:
    if not REASON_CODE.fullmatch(code):
        raise ValueError(
            f"{where}: {code[:40]!r} is not a reason code; use lower-case letters, digits "
            "and _ (at most 32), e.g. price"
        )


def _codes(where: str, value: list[str], today: date) -> None:
    for code in value:
        check_code(where, code)


def _code(where: str, value: str, today: date) -> None:
    if value:
        check_code(where, value)


def _moment(where: str, value: datetime, today: date) -> None:
    check_moment(where, value, today)


def _day(where: str, value: date, today: date) -> None:
    check_date(where, value, today)


RULES: dict[str, Rule] = {
    "source": _text(MAX_LINE),
    "note": _text(MAX_NOTE, lines=True),
    "event_id": _text(MAX_EVENT_ID),
    "reason": _text(MAX_NOTE, lines=True),
    "purchase_order": _text(MAX_LINE),
    "why_decided": _text(MAX_NOTE, lines=True),
    "decision_process": _text(MAX_NOTE, lines=True),
    "rep_rating": _rating,
    "cooperation_rating": _rating,
    "reasons": _codes,
    "participants": _text(MAX_NOTE, lines=True),
    "code": _code,
    "contact": _text(MAX_ADDRESS),
    "items": lambda where, value, today: check_items(where, value),
    "percent": lambda where, value, today: check_percent(where, value),
    "order_value": lambda where, value, today: check_amount(where, value),
    "delivery_date": _day,
    "returns_on": _day,
    "delivered_at": _moment,
    "at": _moment,
    "until": _moment,
}


def check_payload(payload: BaseModel, today: date) -> None:
    """Every field of a signal's payload inside its bound; ValueError naming the first not."""
    for name in type(payload).model_fields:
        value = getattr(payload, name)
        rule = RULES.get(name)
        if rule is not None and value is not None:
            rule(name, value, today)
