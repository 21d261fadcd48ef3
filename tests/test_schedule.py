"""The planner's shift policy: what a send pushed to the next slot does to later steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workflows.business_calendar import BusinessCalendar
from workflows.models import Cadence, ShiftPolicy
from workflows.schedule import Action, Schedule, upcoming
from workflows.stages import Stage

BERLIN = BusinessCalendar(time_zone="Europe/Berlin")  # Mon-Fri 09:00-17:00
# Proposal sent Thursday 2026-11-26 15:00 Berlin (14:00 UTC).
SENT = datetime(2026, 11, 26, 14, tzinfo=UTC)
CADENCE = Cadence(proposal=[timedelta(days=2), timedelta(days=3)])


def plan(policy: ShiftPolicy) -> list[datetime]:
    start = Schedule(stage=Stage.PROPOSAL_RECEIVED, touches=0, anchor=SENT)
    steps = upcoming(start, CADENCE, BERLIN, policy)
    assert [s.action for s in steps] == [Action.FOLLOW_UP, Action.FOLLOW_UP, Action.NO_RESPONSE]
    return [s.at for s in steps]


@pytest.mark.parametrize(
    ("policy", "second_touch"),
    [
        # Touch 1 is due Saturday 15:00 and goes Monday 09:00 (08:00 UTC).
        # shift: touch 2 counts 3 days from Monday 09:00 -> Thursday 09:00.
        (ShiftPolicy.SHIFT, datetime(2026, 12, 3, 8, tzinfo=UTC)),
        # anchor: touch 2 counts from Saturday 15:00 -> Tuesday 15:00.
        (ShiftPolicy.ANCHOR, datetime(2026, 12, 1, 14, tzinfo=UTC)),
    ],
    ids=["shift", "anchor"],
)
def test_a_weekend_send_moves_to_monday_and_the_policy_decides_the_next(
    policy: ShiftPolicy, second_touch: datetime
) -> None:
    first, second, _ = plan(policy)
    assert first == datetime(2026, 11, 30, 8, tzinfo=UTC)
    assert second == second_touch


def test_a_hold_releases_an_overdue_touch_once_and_shifts_the_rest() -> None:
    held = datetime(2026, 12, 9, 10, tzinfo=UTC)  # paused until Wednesday 11:00 Berlin
    start = Schedule(stage=Stage.PROPOSAL_RECEIVED, touches=0, anchor=SENT, held_until=held)
    steps = upcoming(start, CADENCE, BERLIN, ShiftPolicy.ANCHOR)
    assert steps[0].at == held
    # Counted from the release (Saturday 11:00), then moved to Monday 09:00 Berlin.
    assert steps[1].at == datetime(2026, 12, 14, 8, tzinfo=UTC)
