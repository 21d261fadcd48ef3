"""Buyer-local business calendar: send windows, holidays and business-day delays.

Pure and deterministic (no I/O beyond the tz database, no clock, no randomness) so the deal
workflow, the send-plan preview and the tests compute identical slots. Holiday dates are
resolved outside the workflow and passed in, which keeps the `holidays` package out of the
sandbox and out of replay.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    field_validator,
    model_validator,
)

# A year plus slack: any real holiday list leaves a business day within it, so running out
# means the calendar itself is impossible, not that we looked too briefly.
MAX_SCAN_DAYS = 400


class SendWindow(BaseModel):
    """Weekdays (Monday=0) and buyer-local wall-clock hours [start, end) in which we send."""

    model_config = ConfigDict(extra="forbid")

    days: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    start: time = time(9)
    end: time = time(17)

    @field_validator("days")
    @classmethod
    def _check_days(cls, days: list[int]) -> list[int]:
        if not days:
            raise ValueError("send window has no days: nothing could ever be sent")
        if any(not 0 <= d <= 6 for d in days):
            raise ValueError(f"send window days must be 0 (Monday) .. 6 (Sunday), got {days}")
        return days

    @model_validator(mode="after")
    def _check_hours(self) -> SendWindow:
        # Wall-clock times only; an offset would silently pin the window to one DST side.
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("send window start/end are wall-clock times and take no tzinfo")
        if self.start >= self.end:
            raise ValueError(f"send window start {self.start} must be before end {self.end}")
        return self


class BusinessCalendar(BaseModel):
    """The buyer's time zone, send window and holidays (buyer-local dates)."""

    model_config = ConfigDict(extra="forbid")

    time_zone: str = "UTC"
    window: SendWindow = Field(default_factory=SendWindow)
    holidays: list[date] = Field(default_factory=list)

    @field_validator("time_zone")
    @classmethod
    def _check_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown IANA time zone {name!r}") from exc
        return name


class BusinessDays(BaseModel):
    """A delay counted in the buyer's business days, keeping the local wall-clock time."""

    model_config = ConfigDict(extra="forbid")

    business_days: int = Field(ge=0)


Delay = timedelta | BusinessDays

_BUSINESS_DAYS = re.compile(r"(\d+)\s*(?:bd|business\s+days?)", re.IGNORECASE | re.ASCII)
# Years and months are rejected: their length depends on the calendar, and pydantic would
# quietly read P1M as 30 days.
_ISO_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?",
    re.ASCII,
)
_TIMEDELTA = TypeAdapter(timedelta)


def parse_delay(value: Any) -> Delay:
    """Read a delay from a timedelta, BusinessDays, ``{"business_days": n}``, an ISO-8601
    duration ("P2D", "PT36H") or a business-day string ("3bd", "3 business days")."""
    if isinstance(value, BusinessDays):
        return value
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"delay must not be negative, got {value}")
        return value
    if isinstance(value, dict):
        return BusinessDays.model_validate(value)
    if isinstance(value, str):
        text = value.strip()
        if m := _BUSINESS_DAYS.fullmatch(text):
            return BusinessDays(business_days=int(m[1]))
        if m := _ISO_DURATION.fullmatch(text):
            parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
            if parts:  # a bare "P" names no duration at all
                return timedelta(**parts)
        raise ValueError(
            f"cannot read delay {value!r}: use an ISO-8601 duration without years or months "
            "('P2D', 'PT36H') or business days ('3bd', '3 business days')"
        )
    raise ValueError(f"cannot read delay from {type(value).__name__}")


def _serialize_delay(delay: Delay) -> str:
    if isinstance(delay, BusinessDays):
        return f"{delay.business_days}bd"
    return _TIMEDELTA.dump_python(delay, mode="json")


# Python-mode dumps keep the typed objects; only JSON (what Temporal's pydantic converter
# writes to history) uses the compact strings.
DelayField = Annotated[
    Delay,
    BeforeValidator(parse_delay),
    PlainSerializer(_serialize_delay, return_type=str, when_used="json"),
]


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def local(calendar: BusinessCalendar, moment: datetime) -> datetime:
    """The moment as a wall-clock time in the buyer's zone."""
    return _utc(moment).astimezone(ZoneInfo(calendar.time_zone))


def is_business_day(calendar: BusinessCalendar, day: date) -> bool:
    return day.weekday() in calendar.window.days and day not in calendar.holidays


def in_window(calendar: BusinessCalendar, moment: datetime) -> bool:
    wall = local(calendar, moment)
    window = calendar.window
    return is_business_day(calendar, wall.date()) and window.start <= wall.time() < window.end


def _first_change(zone: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """Earliest UTC instant in (lo, hi] whose offset differs from lo's (a DST transition).

    zoneinfo does not expose its transition table, so bisect over whole seconds, the
    resolution of tzdata transitions.
    """
    before = lo.astimezone(zone).utcoffset()
    low, high = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            low = mid
        else:
            high = mid
    return datetime.fromtimestamp(high, UTC)


def _instants(zone: ZoneInfo, day: date, wall: time) -> list[datetime]:
    """UTC instants at which the buyer's clock reads `wall` on `day`: one normally, two in
    a fold (earlier first), and the first instant after the jump if it falls in a gap."""
    naive = datetime.combine(day, wall)
    readings = sorted({naive.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1)})
    found = [u for u in readings if u.astimezone(zone).replace(tzinfo=None) == naive]
    if found:
        return found
    # A gap time converts once per offset (fold picks which); the two readings bracket the
    # jump, and the clock resumes at the first instant after it.
    return [_first_change(zone, readings[0], readings[-1])]


def day_starts(day: date, time_zone: str) -> datetime:
    """The first instant of ``day`` in ``time_zone`` (not always 00:00, on a DST change)."""
    return _instants(ZoneInfo(time_zone), day, time(0))[0]


def _next_business_day(calendar: BusinessCalendar, day: date) -> date:
    for offset in range(1, MAX_SCAN_DAYS + 1):
        candidate = day + timedelta(days=offset)
        if is_business_day(calendar, candidate):
            return candidate
    raise ValueError(
        f"calendar {calendar.time_zone} has no business day within {MAX_SCAN_DAYS} days "
        f"after {day}: check window.days and holidays"
    )


def next_slot(calendar: BusinessCalendar, moment: datetime) -> datetime:
    """Earliest instant >= moment inside the send window, in UTC."""
    start = _utc(moment)
    if in_window(calendar, start):
        return start
    zone = ZoneInfo(calendar.time_zone)
    first_day = local(calendar, start).date()
    for offset in range(MAX_SCAN_DAYS + 1):
        day = first_day + timedelta(days=offset)
        if not is_business_day(calendar, day):
            continue
        # The window can only begin where the clock reaches `start` or jumps (DST), so
        # those instants are the only candidates; a fold can offer the window twice.
        candidates = _instants(zone, day, calendar.window.start)
        day_begins = _instants(zone, day, time(0))[0]
        day_ends = _instants(zone, day + timedelta(days=1), time(0))[0]
        if day_begins.astimezone(zone).utcoffset() != day_ends.astimezone(zone).utcoffset():
            candidates.append(_first_change(zone, day_begins, day_ends))
        slots = [c for c in candidates if c >= start and in_window(calendar, c)]
        if slots:
            return min(slots)
    raise ValueError(
        f"calendar {calendar.time_zone} has no send slot within {MAX_SCAN_DAYS} days "
        f"after {start.isoformat()}: check window.days and holidays"
    )


def add_delay(calendar: BusinessCalendar, moment: datetime, delay: Delay) -> datetime:
    """moment + delay in UTC. A timedelta is elapsed time; BusinessDays keeps the buyer's
    wall-clock time (first occurrence in a fold, first existing instant after a gap)."""
    start = _utc(moment)
    if isinstance(delay, timedelta):
        return start + delay
    wall = local(calendar, start)
    day = wall.date()
    for _ in range(delay.business_days):
        day = _next_business_day(calendar, day)
    if day == wall.date():
        return start
    return _instants(ZoneInfo(calendar.time_zone), day, wall.time())[0]


def due(calendar: BusinessCalendar, anchor: datetime, delay: Delay) -> datetime:
    """When a step delayed from `anchor` may actually be sent."""
    return next_slot(calendar, add_delay(calendar, anchor, delay))
