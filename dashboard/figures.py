"""How the dashboard writes a figure: a rate with what it rests on, a duration in days
and hours, money with its currency. A rate resting on too few deals says so instead of
showing a share that would mislead."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from ledger.reports import Rate

NONE = "—"
NOT_ENOUGH = "not enough data"


def count(number: int) -> str:
    return f"{number:,}"


def share(rate: Rate) -> str:
    """``58.3% (7 of 12)``; too few deals: ``not enough data (3 of 5)``."""
    if rate.deals == 0 or rate.value is None:
        return f"{NONE} (no deals)"
    rests_on = f"({count(rate.numerator)} of {count(rate.deals)})"
    if not rate.enough:
        return f"{NOT_ENOUGH} {rests_on}"
    return f"{rate.value * 100:.1f}% {rests_on}"


def duration(length: timedelta | None) -> str:
    """``3d 4h``, ``5h 12m``, ``12m 5s``: the two largest units, rounded down."""
    if length is None:
        return NONE
    seconds = int(length.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s"


def money(amount: Decimal | None, currency: str) -> str:
    """``12,345.67 EUR``; None (a factor rests on too few deals): ``not enough data``."""
    if amount is None:
        return NOT_ENOUGH
    return f"{amount:,.2f} {currency}"


def amount(value: Decimal | None) -> str:
    """Money without its currency, where the chart says it: ``12,345.67``."""
    if value is None:
        return NOT_ENOUGH
    return f"{value:,.2f}"


def days(number: float | None) -> str:
    if number is None:
        return NONE
    return f"{number:.1f} days"


def rating(average: float | None) -> str:
    if average is None:
        return NONE
    return f"{average:.2f} / 5"
