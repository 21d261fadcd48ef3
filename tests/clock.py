"""Named start instants: every test on the time-skipping server starts at one of these.

The time-skipping server starts at the wall clock and can only move forward, so an
instant is a rule ("the next Friday 16:59 in Berlin") resolved against the server's
current time, never a fixed date. A test then computes its calendars, delivery dates and
expected send times from the instant it was given, and so behaves the same whether CI
runs at 03:00 on a Sunday or at 10:00 on a Tuesday.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import holidays

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
WINDOW: dict[str, Any] = {"days": [0, 1, 2, 3, 4], "start": "09:00", "end": "17:00"}


def days_off(zone: str, years: range) -> set[date]:
    """The public holidays a buyer in ``zone`` does not work on.

    A German seller also treats 24 and 31 December as days off: they are not public
    holidays, but no buyer reads a proposal then.
    """
    if zone == NEW_YORK:
        return set(holidays.country_holidays("US", years=years))
    german = set(holidays.country_holidays("DE", years=years))
    return german | {date(y, 12, d) for y in years for d in (24, 31)}


@dataclass(frozen=True)
class BuyerCalendar:
    """The buyer's calendar as a deal file gives it, with a check of our own to test against."""

    time_zone: str
    holidays: frozenset[date]
    days: tuple[int, ...] = (0, 1, 2, 3, 4)
    opens: time = time(9)
    closes: time = time(17)

    def as_deal_field(self) -> dict[str, Any]:
        return {
            "time_zone": self.time_zone,
            "window": WINDOW,
            "holidays": sorted(d.isoformat() for d in self.holidays),
        }

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(ZoneInfo(self.time_zone))

    def is_business_day(self, day: date) -> bool:
        return day.weekday() in self.days and day not in self.holidays

    def is_open(self, moment: datetime) -> bool:
        """Inside the send window, on a business day, in the buyer's wall-clock time."""
        local = self.local(moment)
        return self.is_business_day(local.date()) and self.opens <= local.time() < self.closes

    def next_business_day(self, day: date) -> date:
        day += timedelta(days=1)
        while not self.is_business_day(day):
            day += timedelta(days=1)
        return day

    def first_opening(self, moment: datetime) -> datetime:
        """The first instant at or after ``moment`` inside the window, found by stepping
        minute by minute (slow and obviously right, unlike the code under test)."""
        candidate = moment
        for _ in range(60 * 24 * 40):
            if self.is_open(candidate):
                return candidate
            candidate = (candidate + timedelta(minutes=1)).replace(second=0, microsecond=0)
        raise AssertionError(f"no opening within 40 days of {moment}")


@dataclass(frozen=True)
class StartInstant:
    """A rule for an instant, in the buyer's zone, resolved against the server's clock."""

    name: str
    time_zone: str
    find: Callable[[datetime, BuyerCalendar], datetime]

    def calendar(self, around: datetime) -> BuyerCalendar:
        years = range(around.year - 1, around.year + 3)
        return BuyerCalendar(self.time_zone, frozenset(days_off(self.time_zone, years)))

    def earlier(self, lead: timedelta) -> StartInstant:
        """The instant ``lead`` before this one, for a test that must act *at* this one."""

        def find(now: datetime, calendar: BuyerCalendar) -> datetime:
            # Elapsed time, not wall-clock time: subtract in UTC, across any DST switch.
            return self.find(now + lead, calendar).astimezone(UTC) - lead

        return StartInstant(f"{self.name}-less-{lead}", self.time_zone, find)

    def after(self, now: datetime) -> datetime:
        """The first instant matching the rule after ``now`` (aware, UTC)."""
        local_now = now.astimezone(ZoneInfo(self.time_zone))
        found = self.find(local_now, self.calendar(now))
        assert found > now, (self.name, found, now)
        return found.astimezone(UTC)


def _at(day: date, clock: time, zone: str, fold: int = 0) -> datetime:
    return datetime.combine(day, clock, ZoneInfo(zone)).replace(fold=fold)


def _next_weekday(weekday: int, clock: time, quiet: bool = False) -> Callable[..., datetime]:
    """The next ``weekday`` at ``clock``; ``quiet``: in a week whose days and the next
    week's are all business days, so nothing but the weekend interrupts a cadence."""

    def find(now: datetime, calendar: BuyerCalendar) -> datetime:
        day = now.date() + timedelta(days=1)
        while True:
            if day.weekday() == weekday:
                monday = day - timedelta(days=day.weekday())
                fortnight = [monday + timedelta(days=n) for n in range(14)]
                if not quiet or all(d not in calendar.holidays for d in fortnight):
                    return _at(day, clock, calendar.time_zone)
            day += timedelta(days=1)

    return find


def _dst_switch(spring: bool, clock: time, fold: int = 0) -> Callable[..., datetime]:
    """The next day on which the zone's UTC offset changes, at ``clock`` local."""

    def find(now: datetime, calendar: BuyerCalendar) -> datetime:
        zone = ZoneInfo(calendar.time_zone)
        day = now.date() + timedelta(days=1)
        while True:
            before = datetime.combine(day, time(0), zone).utcoffset()
            after = datetime.combine(day + timedelta(days=1), time(0), zone).utcoffset()
            assert before is not None and after is not None
            if (after > before) if spring else (after < before):
                return _at(day, clock, calendar.time_zone, fold)
            day += timedelta(days=1)

    return find


def _christmas_eve(now: datetime, calendar: BuyerCalendar) -> datetime:
    year = now.year if now.date() < date(now.year, 12, 24) else now.year + 1
    return _at(date(year, 12, 24), time(10), calendar.time_zone)


# The default: a plain working morning in a week with no holidays.
QUIET_TUESDAY_MORNING = StartInstant(
    "tuesday-10:00-berlin", BERLIN, _next_weekday(1, time(10), quiet=True)
)

# Awkward instants for the calendar-sensitive behaviour. A DST day starts in the small
# hours, before the switch, so the deal lives through it.
SWEEP = [
    QUIET_TUESDAY_MORNING,
    StartInstant("tuesday-20:00-berlin", BERLIN, _next_weekday(1, time(20), quiet=True)),
    StartInstant("friday-16:59-berlin", BERLIN, _next_weekday(4, time(16, 59))),
    StartInstant("saturday-23:00-berlin", BERLIN, _next_weekday(5, time(23))),
    StartInstant("dst-spring-berlin", BERLIN, _dst_switch(spring=True, clock=time(1, 30))),
    # 02:30 happens twice that night: fold=0 is the first, still on summer time.
    StartInstant("dst-autumn-berlin", BERLIN, _dst_switch(False, time(2, 30), fold=0)),
    StartInstant("dst-spring-new-york", NEW_YORK, _dst_switch(spring=True, clock=time(1, 30))),
    StartInstant("dst-autumn-new-york", NEW_YORK, _dst_switch(False, time(1, 30), fold=0)),
    StartInstant("christmas-eve-berlin", BERLIN, _christmas_eve),
]
