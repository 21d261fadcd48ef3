"""Price arithmetic for proposals and quotes: list totals, the floor, discounts.

The proposal quotes list prices, which keep a reserved margin above the floor
(docs/sales-process.md: a proposal keeps a safety margin, because an RFQ will follow).
An RFQ may concede that margin and nothing below the floor.

No input makes this arithmetic raise: it runs inside a workflow task, where an
exception fails the task again on every retry and freezes the deal. Sums and products
are computed in the current decimal context with its traps off (the same precision and
rounding, so every result within range is what it always was); an amount beyond
``CEILING`` (only a deal that skipped the bounds in ``workflows.bounds`` can hold one)
is clamped to it.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal

from workflows.models import LineItem

CENT = Decimal("0.01")
HUNDRED = Decimal(100)
# Far above any bounded total (bounds.MAX_TOTAL), and small enough that an amount in cents
# fits the default context's 28 digits.
CEILING = Decimal("1e24")


@contextmanager
def _untrapped() -> Iterator[None]:
    context = decimal.getcontext().copy()
    context.clear_traps()
    with decimal.localcontext(context):
        yield


def _clamped(value: Decimal) -> Decimal:
    if value.is_nan():
        return CEILING
    return max(-CEILING, min(CEILING, value))


def money(value: Decimal) -> Decimal:
    with _untrapped():
        return _clamped(value).quantize(CENT, rounding=ROUND_HALF_UP)


def list_total(items: list[LineItem]) -> Decimal:
    with _untrapped():
        return money(sum((item.list_price * item.quantity for item in items), Decimal(0)))


def line_total(item: LineItem) -> Decimal:
    with _untrapped():
        return money(item.list_price * item.quantity)


def floor_unit_price(item: LineItem, reserved_margin_percent: Decimal) -> Decimal:
    if item.floor_price is not None:
        return item.floor_price
    with _untrapped():
        return item.list_price * (HUNDRED - reserved_margin_percent) / HUNDRED


def floor_total(items: list[LineItem], reserved_margin_percent: Decimal) -> Decimal:
    with _untrapped():
        return money(
            sum(
                (floor_unit_price(item, reserved_margin_percent) * item.quantity for item in items),
                Decimal(0),
            )
        )


def discounted(total: Decimal, percent: Decimal) -> Decimal:
    with _untrapped():
        return money(total * (HUNDRED - percent) / HUNDRED)


def max_discount_percent(items: list[LineItem], reserved_margin_percent: Decimal) -> Decimal:
    """The largest discount off the list total that stays at or above the floor."""
    total = list_total(items)
    if total == 0:
        return Decimal(0)
    floor = floor_total(items, reserved_margin_percent)
    with _untrapped():
        return ((total - floor) / total * HUNDRED).quantize(CENT, rounding="ROUND_DOWN")


def discount_refusal(
    items: list[LineItem], reserved_margin_percent: Decimal, percent: Decimal
) -> str | None:
    """Why a requested discount cannot be granted, or None when it stays above the floor."""
    if not items:
        return "the deal has no line items to discount; record the requirements first"
    total = list_total(items)
    price = discounted(total, percent)
    floor = floor_total(items, reserved_margin_percent)
    if price < floor:
        most = max_discount_percent(items, reserved_margin_percent)
        return (
            f"a {percent}% discount would price the deal at {price}, below the floor of {floor}; "
            f"the most that can be conceded is {most}%"
        )
    return None
