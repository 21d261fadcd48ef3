"""Table-driven tests for the buyer-local business calendar.

Expected instants are written in the zone that makes the case readable and compared after
converting to UTC: Python never treats a folded local time as equal to a time in another
zone, so comparing aware datetimes across zones directly would hide fold bugs.
"""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from workflows.business_calendar import (
    BusinessCalendar,
    BusinessDays,
    Delay,
    DelayField,
    SendWindow,
    add_delay,
    due,
    in_window,
    is_business_day,
    local,
    next_slot,
    parse_delay,
)

BERLIN_TZ = "Europe/Berlin"
NY_TZ = "America/New_York"
LONDON_TZ = "Europe/London"
AUCKLAND_TZ = "Pacific/Auckland"
KIRITIMATI_TZ = "Pacific/Kiritimati"
LA_TZ = "America/Los_Angeles"

# Real public holidays, checked against the `holidays` package below.
DE_HOLIDAYS = [
    date(2026, 4, 3),  # Good Friday
    date(2026, 4, 6),  # Easter Monday
    date(2026, 5, 1),  # Labour Day
    date(2026, 12, 25),  # Christmas Day (Friday)
    date(2026, 12, 26),  # Second Day of Christmas (Saturday)
    date(2027, 1, 1),  # New Year's Day (Friday)
]
US_HOLIDAYS = [
    date(2026, 7, 3),  # Independence Day (observed, Friday)
    date(2026, 11, 26),  # Thanksgiving (Thursday)
    date(2026, 12, 25),  # Christmas Day (Friday)
]
OFFSITE = date(2026, 6, 15)  # a company-specific day off, not a public holiday anywhere

UTC_CAL = BusinessCalendar()
BERLIN = BusinessCalendar(time_zone=BERLIN_TZ, holidays=DE_HOLIDAYS)
BERLIN_OFFSITE = BusinessCalendar(time_zone=BERLIN_TZ, holidays=[*DE_HOLIDAYS, OFFSITE])
NEW_YORK = BusinessCalendar(time_zone=NY_TZ, holidays=US_HOLIDAYS)
AUCKLAND = BusinessCalendar(time_zone=AUCKLAND_TZ)
KIRITIMATI = BusinessCalendar(time_zone=KIRITIMATI_TZ)
LOS_ANGELES = BusinessCalendar(time_zone=LA_TZ)


def every_day(zone: str, start: time = time(9), end: time = time(17)) -> BusinessCalendar:
    """A seven-day calendar, so DST Sundays are business days."""
    return BusinessCalendar(
        time_zone=zone, window=SendWindow(days=list(range(7)), start=start, end=end)
    )


def loc(zone: str, text: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone), fold=fold)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def assert_utc_instant(result: datetime, expected: datetime) -> None:
    assert result.tzinfo is UTC
    assert result == expected.astimezone(UTC)


# 2026-06-10 is a Wednesday, 2026-06-12 a Friday.
NEXT_SLOT_CASES = [
    # window
    pytest.param(
        UTC_CAL, utc("2026-06-10 10:00"), utc("2026-06-10 10:00"), id="in-window-unchanged"
    ),
    pytest.param(
        UTC_CAL, utc("2026-06-10 09:00"), utc("2026-06-10 09:00"), id="at-opening-unchanged"
    ),
    pytest.param(
        UTC_CAL, utc("2026-06-10 07:30"), utc("2026-06-10 09:00"), id="before-opening-same-day"
    ),
    pytest.param(
        UTC_CAL, utc("2026-06-10 17:30"), utc("2026-06-11 09:00"), id="after-closing-next-day"
    ),
    pytest.param(
        UTC_CAL, utc("2026-06-10 17:00"), utc("2026-06-11 09:00"), id="at-end-exclusive-next-day"
    ),
    pytest.param(
        UTC_CAL,
        utc("2026-06-10 16:59:59.999999"),
        utc("2026-06-10 16:59:59.999999"),
        id="last-microsecond-in-window",
    ),
    # weekends
    pytest.param(
        UTC_CAL, utc("2026-06-12 18:00"), utc("2026-06-15 09:00"), id="friday-evening-to-monday"
    ),
    pytest.param(
        UTC_CAL, utc("2026-06-13 12:00"), utc("2026-06-15 09:00"), id="saturday-to-monday"
    ),
    pytest.param(
        UTC_CAL, utc("2026-06-14 23:59"), utc("2026-06-15 09:00"), id="sunday-night-to-monday"
    ),
    # holidays
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-12-24 17:30"),
        loc(BERLIN_TZ, "2026-12-28 09:00"),
        id="de-christmas-and-weekend-to-monday",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-12-31 18:00"),
        loc(BERLIN_TZ, "2027-01-04 09:00"),
        id="de-new-year-to-monday",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-04-02 17:00"),
        loc(BERLIN_TZ, "2026-04-07 09:00"),
        id="de-easter-good-friday-to-tuesday",
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-11-25 17:00"),
        loc(NY_TZ, "2026-11-27 09:00"),
        id="us-thanksgiving-to-friday",
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-12-24 17:00"),
        loc(NY_TZ, "2026-12-28 09:00"),
        id="us-christmas-to-monday",
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-07-02 18:00"),
        loc(NY_TZ, "2026-07-06 09:00"),
        id="us-observed-independence-day-to-monday",
    ),
    pytest.param(
        BERLIN, utc("2026-11-26 15:00"), utc("2026-11-26 15:00"), id="thanksgiving-open-in-berlin"
    ),
    pytest.param(
        NEW_YORK, utc("2026-11-26 15:00"), utc("2026-11-27 14:00"), id="thanksgiving-closed-in-ny"
    ),
    pytest.param(
        BERLIN_OFFSITE,
        loc(BERLIN_TZ, "2026-06-12 18:00"),
        loc(BERLIN_TZ, "2026-06-16 09:00"),
        id="custom-offsite-monday-to-tuesday",
    ),
    # the 09:00 opening either side of each DST change (all transitions are on Sundays)
    pytest.param(
        BERLIN, loc(BERLIN_TZ, "2026-03-27 07:00"), utc("2026-03-27 08:00"), id="berlin-cet-opening"
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-03-27 18:00"),
        utc("2026-03-30 07:00"),
        id="berlin-cest-opening-after-spring-forward",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-10-23 08:00"),
        utc("2026-10-23 07:00"),
        id="berlin-cest-opening",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-10-23 18:00"),
        utc("2026-10-26 08:00"),
        id="berlin-cet-opening-after-fall-back",
    ),
    pytest.param(
        NEW_YORK, loc(NY_TZ, "2026-03-06 08:00"), utc("2026-03-06 14:00"), id="ny-est-opening"
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-03-06 18:00"),
        utc("2026-03-09 13:00"),
        id="ny-edt-opening-after-spring-forward",
    ),
    pytest.param(
        NEW_YORK, loc(NY_TZ, "2026-10-30 08:00"), utc("2026-10-30 13:00"), id="ny-edt-opening"
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-10-30 18:00"),
        utc("2026-11-02 14:00"),
        id="ny-est-opening-after-fall-back",
    ),
    # window boundaries inside the gap (02:00-03:00 Berlin, 02:00-03:00 New York)
    pytest.param(
        every_day(BERLIN_TZ, time(2, 30), time(3, 30)),
        loc(BERLIN_TZ, "2026-03-28 00:00"),
        utc("2026-03-28 01:30"),  # 02:30 CET, an ordinary day
        id="berlin-0230-window-day-before-gap",
    ),
    pytest.param(
        every_day(BERLIN_TZ, time(2, 30), time(3, 30)),
        loc(BERLIN_TZ, "2026-03-29 00:00"),
        utc("2026-03-29 01:00"),  # 02:30 does not exist; 03:00 CEST is the first instant
        id="berlin-start-in-gap-opens-at-jump",
    ),
    pytest.param(
        every_day(BERLIN_TZ, time(2), time(2, 45)),
        loc(BERLIN_TZ, "2026-03-29 00:00"),
        utc("2026-03-30 00:00"),  # the whole window falls in the gap: next day 02:00 CEST
        id="berlin-window-entirely-in-gap-skips-day",
    ),
    pytest.param(
        every_day(BERLIN_TZ, time(1, 30), time(2, 30)),
        loc(BERLIN_TZ, "2026-03-29 01:45"),
        utc("2026-03-29 00:45"),
        id="berlin-end-in-gap-inside-unchanged",
    ),
    pytest.param(
        every_day(BERLIN_TZ, time(1, 30), time(2, 30)),
        loc(BERLIN_TZ, "2026-03-29 03:10"),
        utc("2026-03-29 23:30"),  # 01:30 CEST on the 30th
        id="berlin-end-in-gap-after-jump-next-day",
    ),
    pytest.param(
        every_day(NY_TZ, time(2, 30), time(3, 30)),
        loc(NY_TZ, "2026-03-08 00:00"),
        utc("2026-03-08 07:00"),  # 03:00 EDT
        id="ny-start-in-gap-opens-at-jump",
    ),
    # window boundaries inside the fold (02:00-03:00 twice in Berlin, 01:00-02:00 in New York)
    pytest.param(
        every_day(BERLIN_TZ, time(2, 30), time(3, 30)),
        loc(BERLIN_TZ, "2026-10-25 00:00"),
        utc("2026-10-25 00:30"),  # 02:30 CEST, the first occurrence
        id="berlin-start-in-fold-first-occurrence",
    ),
    pytest.param(
        every_day(BERLIN_TZ, time(2, 30), time(3, 30)),
        loc(BERLIN_TZ, "2026-10-25 02:10", fold=1),
        utc("2026-10-25 01:30"),  # 02:30 CET, the second occurrence
        id="berlin-start-in-fold-second-occurrence",
    ),
    pytest.param(
        every_day(BERLIN_TZ, time(1, 30), time(2, 30)),
        loc(BERLIN_TZ, "2026-10-25 02:45"),
        utc("2026-10-25 01:00"),  # clocks fall back to 02:00 CET, inside the window again
        id="berlin-end-in-fold-window-reopens-at-jump",
    ),
    pytest.param(
        every_day(NY_TZ, time(0, 30), time(1, 15)),
        loc(NY_TZ, "2026-11-01 01:20"),
        utc("2026-11-01 06:00"),  # 01:00 EST
        id="ny-end-in-fold-window-reopens-at-jump",
    ),
    # buyer far ahead of the sender; 2026-10-02: London BST +1, Auckland NZDT +13
    pytest.param(
        AUCKLAND,
        loc(LONDON_TZ, "2026-10-02 10:00"),  # Friday 22:00 in Auckland
        loc(AUCKLAND_TZ, "2026-10-05 09:00"),
        id="auckland-buyer-london-friday-morning-to-auckland-monday",
    ),
    pytest.param(
        AUCKLAND,
        loc(LONDON_TZ, "2026-10-01 22:00"),  # Friday 10:00 in Auckland
        loc(LONDON_TZ, "2026-10-01 22:00"),
        id="auckland-buyer-london-thursday-night-in-window",
    ),
    pytest.param(
        KIRITIMATI,
        loc(LA_TZ, "2026-06-12 15:00"),  # Saturday 12:00 on Kiritimati (+14)
        utc("2026-06-14 19:00"),  # Monday 09:00 +14
        id="dateline-kiritimati-buyer-la-friday-is-saturday",
    ),
    pytest.param(
        KIRITIMATI,
        loc(LA_TZ, "2026-06-14 14:00"),  # Monday 11:00 on Kiritimati
        loc(LA_TZ, "2026-06-14 14:00"),
        id="dateline-kiritimati-buyer-la-sunday-is-monday",
    ),
    pytest.param(
        LOS_ANGELES,
        loc(KIRITIMATI_TZ, "2026-06-15 09:00"),  # Sunday 12:00 in Los Angeles
        loc(LA_TZ, "2026-06-15 09:00"),
        id="dateline-la-buyer-kiritimati-monday-is-sunday",
    ),
]


@pytest.mark.parametrize(("calendar", "moment", "expected"), NEXT_SLOT_CASES)
def test_next_slot(calendar: BusinessCalendar, moment: datetime, expected: datetime) -> None:
    result = next_slot(calendar, moment)
    assert_utc_instant(result, expected)
    assert in_window(calendar, result)


ADD_DELAY_CASES = [
    # elapsed time: 24 real hours, so the wall clock moves by the DST hour
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-03-28 10:00"),
        timedelta(hours=24),
        loc(BERLIN_TZ, "2026-03-29 11:00"),
        id="24h-over-berlin-spring-forward",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-10-24 10:00"),
        timedelta(hours=24),
        loc(BERLIN_TZ, "2026-10-25 09:00"),
        id="24h-over-berlin-fall-back",
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-03-07 10:00"),
        timedelta(hours=24),
        loc(NY_TZ, "2026-03-08 11:00"),
        id="24h-over-ny-spring-forward",
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-10-31 10:00"),
        timedelta(hours=24),
        loc(NY_TZ, "2026-11-01 09:00"),
        id="24h-over-ny-fall-back",
    ),
    pytest.param(
        UTC_CAL,
        utc("2026-06-12 10:00"),
        timedelta(days=2),
        utc("2026-06-14 10:00"),
        id="timedelta-ignores-weekends",
    ),
    # business days keep the buyer's wall clock
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-03-27 10:00"),
        BusinessDays(business_days=1),
        loc(BERLIN_TZ, "2026-03-30 10:00"),
        id="1bd-over-berlin-spring-forward",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-10-23 10:00"),
        BusinessDays(business_days=1),
        loc(BERLIN_TZ, "2026-10-26 10:00"),
        id="1bd-over-berlin-fall-back",
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-03-06 10:00"),
        BusinessDays(business_days=1),
        loc(NY_TZ, "2026-03-09 10:00"),
        id="1bd-over-ny-spring-forward",
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-10-30 10:00"),
        BusinessDays(business_days=1),
        loc(NY_TZ, "2026-11-02 10:00"),
        id="1bd-over-ny-fall-back",
    ),
    pytest.param(
        UTC_CAL,
        utc("2026-06-12 15:00"),
        BusinessDays(business_days=1),
        utc("2026-06-15 15:00"),
        id="1bd-friday-to-monday",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-12-23 11:00"),
        BusinessDays(business_days=3),
        loc(BERLIN_TZ, "2026-12-29 11:00"),  # Thu 24, (Fri 25 holiday, weekend), Mon 28, Tue 29
        id="3bd-over-de-christmas-and-weekend",
    ),
    pytest.param(
        NEW_YORK,
        loc(NY_TZ, "2026-11-24 10:00"),
        BusinessDays(business_days=3),
        loc(NY_TZ, "2026-11-30 10:00"),  # Wed 25, (Thu 26 holiday), Fri 27, (weekend), Mon 30
        id="3bd-over-us-thanksgiving-and-weekend",
    ),
    pytest.param(
        UTC_CAL,
        utc("2026-06-13 10:00"),
        BusinessDays(business_days=0),
        utc("2026-06-13 10:00"),
        id="0bd-same-moment-even-on-saturday",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-12-25 10:00"),
        BusinessDays(business_days=1),
        loc(BERLIN_TZ, "2026-12-28 10:00"),
        id="1bd-from-holiday",
    ),
    pytest.param(
        UTC_CAL,
        utc("2026-06-13 10:00"),
        BusinessDays(business_days=1),
        utc("2026-06-15 10:00"),
        id="1bd-from-saturday",
    ),
    pytest.param(
        UTC_CAL,
        utc("2026-06-14 10:00"),
        BusinessDays(business_days=2),
        utc("2026-06-16 10:00"),
        id="2bd-from-sunday",
    ),
    pytest.param(
        AUCKLAND,
        loc(LONDON_TZ, "2026-10-02 10:00"),  # Friday 22:00 in Auckland
        BusinessDays(business_days=1),
        loc(AUCKLAND_TZ, "2026-10-05 22:00"),
        id="1bd-counted-in-auckland-days",
    ),
    # the kept wall-clock time falls in a gap or fold on the target day
    pytest.param(
        every_day(BERLIN_TZ),
        loc(BERLIN_TZ, "2026-03-28 02:30"),
        BusinessDays(business_days=1),
        utc("2026-03-29 01:00"),  # 02:30 does not exist; 03:00 CEST
        id="1bd-into-berlin-gap-moves-forward",
    ),
    pytest.param(
        every_day(BERLIN_TZ),
        loc(BERLIN_TZ, "2026-10-24 02:30"),
        BusinessDays(business_days=1),
        utc("2026-10-25 00:30"),  # 02:30 CEST, the first occurrence
        id="1bd-into-berlin-fold-takes-first",
    ),
    pytest.param(
        every_day(BERLIN_TZ),
        loc(BERLIN_TZ, "2026-10-25 02:30", fold=1),
        BusinessDays(business_days=1),
        utc("2026-10-26 01:30"),  # 02:30 CET
        id="1bd-from-second-fold-occurrence",
    ),
    pytest.param(
        every_day(NY_TZ),
        loc(NY_TZ, "2026-03-07 02:30"),
        BusinessDays(business_days=1),
        utc("2026-03-08 07:00"),  # 03:00 EDT
        id="1bd-into-ny-gap-moves-forward",
    ),
    pytest.param(
        every_day(NY_TZ),
        loc(NY_TZ, "2026-10-31 01:30"),
        BusinessDays(business_days=1),
        utc("2026-11-01 05:30"),  # 01:30 EDT, the first occurrence
        id="1bd-into-ny-fold-takes-first",
    ),
]


@pytest.mark.parametrize(("calendar", "moment", "delay", "expected"), ADD_DELAY_CASES)
def test_add_delay(
    calendar: BusinessCalendar, moment: datetime, delay: Delay, expected: datetime
) -> None:
    assert_utc_instant(add_delay(calendar, moment, delay), expected)


DUE_CASES = [
    pytest.param(
        UTC_CAL,
        utc("2026-06-12 16:30"),
        timedelta(hours=1),
        utc("2026-06-15 09:00"),
        id="1h-past-friday-close-to-monday",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-03-27 16:00"),
        BusinessDays(business_days=1),
        loc(BERLIN_TZ, "2026-03-30 16:00"),
        id="1bd-lands-in-window",
    ),
    pytest.param(
        BERLIN,
        loc(BERLIN_TZ, "2026-06-10 20:00"),
        BusinessDays(business_days=1),
        loc(BERLIN_TZ, "2026-06-12 09:00"),
        id="1bd-evening-rolls-to-following-opening",
    ),
    pytest.param(
        AUCKLAND,
        loc(LONDON_TZ, "2026-10-02 10:00"),
        timedelta(0),
        loc(AUCKLAND_TZ, "2026-10-05 09:00"),
        id="auckland-buyer-immediate",
    ),
    pytest.param(
        AUCKLAND,
        loc(LONDON_TZ, "2026-10-02 10:00"),
        BusinessDays(business_days=1),
        loc(AUCKLAND_TZ, "2026-10-06 09:00"),
        id="auckland-buyer-1bd",
    ),
    pytest.param(
        KIRITIMATI,
        loc(LA_TZ, "2026-06-11 15:00"),  # Friday 12:00 on Kiritimati
        timedelta(days=1),
        utc("2026-06-14 19:00"),  # Monday 09:00 +14
        id="dateline-kiritimati-p1d-over-weekend",
    ),
]


@pytest.mark.parametrize(("calendar", "anchor", "delay", "expected"), DUE_CASES)
def test_due(
    calendar: BusinessCalendar, anchor: datetime, delay: Delay, expected: datetime
) -> None:
    assert_utc_instant(due(calendar, anchor, delay), expected)


FOLD_WINDOW = every_day(BERLIN_TZ, time(2, 30), time(3, 30))


@pytest.mark.parametrize(
    ("calendar", "moment", "expected"),
    [
        pytest.param(UTC_CAL, utc("2026-06-10 10:00"), True, id="weekday-inside"),
        pytest.param(UTC_CAL, utc("2026-06-10 17:00"), False, id="at-end"),
        pytest.param(UTC_CAL, utc("2026-06-13 10:00"), False, id="saturday"),
        pytest.param(BERLIN, loc(BERLIN_TZ, "2026-12-25 10:00"), False, id="de-holiday"),
        pytest.param(NEW_YORK, loc(NY_TZ, "2026-12-25 10:00"), False, id="us-holiday"),
        pytest.param(FOLD_WINDOW, loc(BERLIN_TZ, "2026-10-25 02:45"), True, id="fold-first"),
        pytest.param(FOLD_WINDOW, loc(BERLIN_TZ, "2026-10-25 02:45", 1), True, id="fold-second"),
        pytest.param(FOLD_WINDOW, loc(BERLIN_TZ, "2026-10-25 02:15", 1), False, id="fold-before"),
        pytest.param(FOLD_WINDOW, utc("2026-03-29 01:00"), True, id="gap-0300-cest"),
        pytest.param(FOLD_WINDOW, utc("2026-03-29 00:59:59"), False, id="gap-015959-cet"),
    ],
)
def test_in_window(calendar: BusinessCalendar, moment: datetime, expected: bool) -> None:
    assert in_window(calendar, moment) is expected


@pytest.mark.parametrize(
    ("calendar", "day", "expected"),
    [
        pytest.param(BERLIN, date(2026, 6, 10), True, id="wednesday"),
        pytest.param(BERLIN, date(2026, 6, 13), False, id="saturday"),
        pytest.param(BERLIN, date(2026, 12, 25), False, id="de-christmas"),
        pytest.param(BERLIN, date(2026, 11, 26), True, id="thanksgiving-in-germany"),
        pytest.param(NEW_YORK, date(2026, 11, 26), False, id="thanksgiving-in-us"),
        pytest.param(BERLIN_OFFSITE, OFFSITE, False, id="custom-offsite"),
        pytest.param(every_day(BERLIN_TZ), date(2026, 6, 13), True, id="seven-day-window"),
    ],
)
def test_is_business_day(calendar: BusinessCalendar, day: date, expected: bool) -> None:
    assert is_business_day(calendar, day) is expected


def test_local_is_buyer_wall_clock() -> None:
    moment = local(BERLIN, utc("2026-03-29 01:00"))
    assert (moment.tzinfo, moment.hour, moment.minute) == (ZoneInfo(BERLIN_TZ), 3, 0)


NAIVE = datetime(2026, 6, 10, 10)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: next_slot(UTC_CAL, NAIVE), id="next_slot"),
        pytest.param(lambda: in_window(UTC_CAL, NAIVE), id="in_window"),
        pytest.param(lambda: local(UTC_CAL, NAIVE), id="local"),
        pytest.param(lambda: add_delay(UTC_CAL, NAIVE, timedelta(hours=1)), id="add_delay-td"),
        pytest.param(
            lambda: add_delay(UTC_CAL, NAIVE, BusinessDays(business_days=1)), id="add_delay-bd"
        ),
        pytest.param(lambda: due(UTC_CAL, NAIVE, timedelta(0)), id="due"),
    ],
)
def test_naive_datetimes_rejected(call) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        call()


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: SendWindow(days=[]), id="no-days"),
        pytest.param(lambda: SendWindow(days=[0, 7]), id="day-7"),
        pytest.param(lambda: SendWindow(days=[-1]), id="day-negative"),
        pytest.param(lambda: SendWindow(start=time(17), end=time(17)), id="start-equals-end"),
        pytest.param(lambda: SendWindow(start=time(18), end=time(9)), id="start-after-end"),
        pytest.param(lambda: SendWindow(start=time(9, tzinfo=UTC)), id="aware-start"),
        pytest.param(lambda: SendWindow(hours=8), id="extra-field"),
        pytest.param(lambda: BusinessCalendar(time_zone="Mars/Olympus"), id="unknown-zone"),
        pytest.param(lambda: BusinessDays(business_days=-1), id="negative-business-days"),
    ],
)
def test_invalid_models_rejected(build) -> None:
    with pytest.raises(ValidationError):
        build()


EVERY_MONDAY_OFF = BusinessCalendar(
    window=SendWindow(days=[0]),
    holidays=[date(2026, 6, 15) + timedelta(weeks=n) for n in range(60)],
)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda: next_slot(
                BusinessCalendar.model_construct(window=SendWindow.model_construct(days=[])),
                utc("2026-06-10 10:00"),
            ),
            id="next_slot-unvalidated-empty-days",
        ),
        pytest.param(
            lambda: next_slot(EVERY_MONDAY_OFF, utc("2026-06-10 10:00")),
            id="next_slot-every-business-day-a-holiday",
        ),
        pytest.param(
            lambda: add_delay(
                EVERY_MONDAY_OFF, utc("2026-06-10 10:00"), BusinessDays(business_days=1)
            ),
            id="add_delay-every-business-day-a-holiday",
        ),
    ],
)
def test_impossible_calendar_raises(call) -> None:
    with pytest.raises(ValueError, match="within 400 days"):
        call()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("P2D", timedelta(days=2), id="P2D"),
        pytest.param("PT36H", timedelta(hours=36), id="PT36H"),
        pytest.param("P1DT12H", timedelta(hours=36), id="P1DT12H"),
        pytest.param("P1W", timedelta(weeks=1), id="P1W"),
        pytest.param("PT90M", timedelta(minutes=90), id="PT90M"),
        pytest.param("PT1.5S", timedelta(seconds=1.5), id="PT1.5S"),
        pytest.param("PT0S", timedelta(0), id="PT0S"),
        pytest.param("3bd", BusinessDays(business_days=3), id="3bd"),
        pytest.param("3BD", BusinessDays(business_days=3), id="3BD"),
        pytest.param("3 business days", BusinessDays(business_days=3), id="3-business-days"),
        pytest.param("1 Business Day", BusinessDays(business_days=1), id="1-business-day"),
        pytest.param(" 2 bd ", BusinessDays(business_days=2), id="spaced-2-bd"),
        pytest.param("0bd", BusinessDays(business_days=0), id="0bd"),
        pytest.param({"business_days": 4}, BusinessDays(business_days=4), id="dict"),
        pytest.param(timedelta(hours=5), timedelta(hours=5), id="timedelta"),
        pytest.param(BusinessDays(business_days=2), BusinessDays(business_days=2), id="model"),
    ],
)
def test_parse_delay(value: object, expected: Delay) -> None:
    assert parse_delay(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("3 days", id="3-days"),
        pytest.param("bd", id="bd-without-number"),
        pytest.param("-1bd", id="negative-bd"),
        pytest.param("3.5bd", id="fractional-bd"),
        pytest.param("P1M", id="months-ambiguous"),
        pytest.param("P1Y", id="years-ambiguous"),
        pytest.param("-P1D", id="negative-duration"),
        pytest.param("P", id="empty-duration"),
        pytest.param("PT", id="empty-time-part"),
        pytest.param("P2DT", id="dangling-T"),
        pytest.param("1 day", id="prose"),
        pytest.param("", id="empty"),
        pytest.param(5, id="bare-int"),
        pytest.param(None, id="none"),
        pytest.param({"business_days": -1}, id="dict-negative"),
        pytest.param({"days": 2}, id="dict-wrong-key"),
        pytest.param(timedelta(hours=-1), id="negative-timedelta"),
    ],
)
def test_parse_delay_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_delay(value)


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delay: DelayField


@pytest.mark.parametrize(
    ("value", "json_value"),
    [
        pytest.param("P2D", "P2D", id="P2D"),
        pytest.param("PT36H", "P1DT12H", id="PT36H"),
        pytest.param(timedelta(minutes=90), "PT1H30M", id="timedelta"),
        pytest.param("3bd", "3bd", id="3bd"),
        pytest.param("3 business days", "3bd", id="3-business-days"),
        pytest.param({"business_days": 1}, "1bd", id="dict"),
        pytest.param(BusinessDays(business_days=0), "0bd", id="model-0bd"),
    ],
)
def test_delay_field_round_trip(value: object, json_value: str) -> None:
    step = Step.model_validate({"delay": value})
    assert step.model_dump(mode="json") == {"delay": json_value}
    assert Step.model_validate(step.model_dump(mode="json")) == step
    assert Step.model_validate_json(step.model_dump_json()) == step
    assert Step.model_validate(step.model_dump()) == step


def test_delay_field_rejects_bad_string() -> None:
    with pytest.raises(ValidationError, match="cannot read delay"):
        Step(delay="P1M")


def test_calendar_json_round_trip() -> None:
    calendar = BusinessCalendar(
        time_zone=BERLIN_TZ,
        window=SendWindow(days=[0, 2, 4], start=time(8, 30), end=time(16)),
        holidays=DE_HOLIDAYS,
    )
    assert BusinessCalendar.model_validate(calendar.model_dump(mode="json")) == calendar


def test_hardcoded_holidays_match_holidays_package() -> None:
    # Not skipped when missing: the `holidays` package is a project dependency, and this
    # guards the dates the other tests rely on.
    import holidays

    germany = holidays.country_holidays("DE", years=[2026, 2027])
    united_states = holidays.country_holidays("US", years=2026)
    assert [d for d in DE_HOLIDAYS if d not in germany] == []
    assert [d for d in US_HOLIDAYS if d not in united_states] == []
    assert OFFSITE not in germany
    assert OFFSITE not in united_states
