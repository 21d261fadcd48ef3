"""What a deal will do on its own, and when: one pure planner for the workflow and the preview.

The workflow fires the first step of ``upcoming(...)`` when it comes due; the
send-plan preview (``starter.py plan``) prints the whole list. Both read the
same function, so the preview is what the deal then does, unless a buyer
signal changes the state first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

from workflows.business_calendar import BusinessCalendar, BusinessDays, Delay, add_delay, next_slot
from workflows.models import Cadence, ShiftPolicy
from workflows.outbound import FOLLOW_UPS, Audience, Thread
from workflows.stages import Stage

# After this many "confirm delivery" reminders the rep owns the delay; the deal waits for ops.
MAX_DELIVERY_REMINDERS = 3
# Nothing is planned later than this: a step that far out waits, in effect, for a signal.
# Only a deal that skipped the bounds (workflows/bounds.py: ten years ahead, delays of a
# year) gets here; saturating at it keeps date arithmetic near datetime.max from raising
# inside the workflow task, where an exception would freeze the deal.
HORIZON = datetime(2200, 1, 1, tzinfo=UTC)


class Action(StrEnum):
    FOLLOW_UP = "follow-up"
    NO_RESPONSE = "close as no response"
    WON_WITHOUT_INTERVIEW = "close won, interview not held"
    CONFIRM_DELIVERY = "confirm delivery"
    CHECK_IN = "check-in"
    WIN_LOSS = "win-loss interview"
    LOSS_INTERVIEW = "loss interview"
    INTERVIEW_REMINDER = "interview reminder"
    CLOSE_INTERVIEW = "close interview"


# Actions that email the buyer: they wait for the buyer's send window.
BUYER_FACING = frozenset(
    {Action.FOLLOW_UP, Action.CHECK_IN, Action.WIN_LOSS, Action.LOSS_INTERVIEW,
     Action.INTERVIEW_REMINDER}
)  # fmt: skip


@dataclass(frozen=True)
class Schedule:
    """The part of a deal's state that decides its timers."""

    stage: Stage
    touches: int
    anchor: datetime
    next_step_at: datetime | None = None
    delivery_date: date | None = None
    delivered_at: datetime | None = None
    delivery_reminders: int = 0
    interview_pending: bool = False
    interview_invited: bool = False
    selected_for_interview: bool = False
    # Follow-ups stop once the buyer replied: the rep has taken over.
    replied: bool = False
    # Nothing fires before this (pause with a resume date, out-of-office return).
    held_until: datetime | None = None
    # Paused with no resume date: nothing fires until ops resume the deal.
    paused: bool = False


@dataclass(frozen=True)
class Step:
    at: datetime
    action: Action
    touch: int = 0
    # Where the cadence counts from after this step (the shift policy decides).
    next_anchor: datetime | None = None


def _slot(calendar: BusinessCalendar, moment: datetime, action: Action) -> datetime:
    return next_slot(calendar, moment) if action in BUYER_FACING else moment


def _later(calendar: BusinessCalendar, moment: datetime, delay: Delay, times: int = 1) -> datetime:
    """``moment`` plus ``times`` the delay, never past ``HORIZON`` (and never raising)."""
    if moment >= HORIZON:
        return HORIZON
    if isinstance(delay, timedelta) and delay < timedelta(0):
        # Out of bounds (a delay is 0 or more) and refused as the deal starts; counted as
        # none here, since some -2,000 years overflow the arithmetic below.
        delay = timedelta(0)
    room = HORIZON - moment
    if isinstance(delay, BusinessDays):
        # Every business day is at least a calendar day: past the room, past the horizon.
        if delay.business_days * times >= room.days:
            return HORIZON
        for _ in range(times):
            moment = add_delay(calendar, moment, delay)
        return min(moment, HORIZON)
    if delay >= room / times:
        return HORIZON
    return add_delay(calendar, moment, delay * times)


def _capped(moment: datetime) -> datetime:
    return min(moment, HORIZON)


def next_step(
    s: Schedule, cadence: Cadence, calendar: BusinessCalendar, policy: ShiftPolicy
) -> Step | None:
    """The next thing the deal does without a signal, or None when it waits for one."""
    if s.paused:
        return None
    step = _raw_next(s, cadence, calendar)
    if step is None:
        return None
    target, action, touch = step
    target = _capped(target)
    at = max(target, _capped(s.held_until)) if s.held_until else target
    at = _slot(calendar, at, action)
    # Shift: later steps count from when this one really goes out (Outreach);
    # anchor: from when it was due, whatever the window did to it (HubSpot).
    # A step held back by a pause or an out-of-office shifts under both policies,
    # so steps that came due meanwhile fire once, not in a burst.
    held = s.held_until is not None and target <= _capped(s.held_until)
    anchor = at if policy is ShiftPolicy.SHIFT or held else max(target, s.anchor)
    return Step(at=at, action=action, touch=touch, next_anchor=anchor)


def _raw_next(
    s: Schedule, cadence: Cadence, calendar: BusinessCalendar
) -> tuple[datetime, Action, int] | None:
    stage = s.stage
    if stage in FOLLOW_UPS:
        if s.replied and stage is not Stage.WIN_LOSS_INVITED:
            return None
        delays = cadence.follow_ups(FOLLOW_UPS[stage].cadence)
        if s.touches < len(delays):
            target = s.next_step_at or _later(calendar, s.anchor, delays[s.touches])
            return target, Action.FOLLOW_UP, s.touches + 1
        target = s.next_step_at or _later(calendar, s.anchor, cadence.no_response_after)
        if stage is Stage.WIN_LOSS_INVITED:
            return target, Action.WON_WITHOUT_INTERVIEW, 0
        return target, Action.NO_RESPONSE, 0
    if stage in (Stage.ORDER_PLACED, Stage.ORDER_CONFIRMED) and s.delivery_date:
        if s.delivery_reminders >= MAX_DELIVERY_REMINDERS:
            return None
        if s.delivery_date >= HORIZON.date():
            return HORIZON, Action.CONFIRM_DELIVERY, 0
        day_after = datetime.combine(s.delivery_date + timedelta(days=1), time(), UTC)
        overdue, times = cadence.delivery_overdue_after, s.delivery_reminders + 1
        return _later(calendar, day_after, overdue, times), Action.CONFIRM_DELIVERY, 0
    if stage is Stage.DELIVERED and s.delivered_at:
        return _later(calendar, s.delivered_at, cadence.check_in_after), Action.CHECK_IN, 0
    if stage is Stage.CHECKED_IN:
        return _later(calendar, s.anchor, cadence.win_loss_after), Action.WIN_LOSS, 0
    if stage is Stage.LOST and s.interview_pending:
        if not s.interview_invited:
            target = _later(calendar, s.anchor, cadence.win_loss_after)
            return target, Action.LOSS_INTERVIEW, 0
        if s.touches < len(cadence.win_loss):
            target = _later(calendar, s.anchor, cadence.win_loss[s.touches])
            return target, Action.INTERVIEW_REMINDER, s.touches + 1
        return _later(calendar, s.anchor, cadence.no_response_after), Action.CLOSE_INTERVIEW, 0
    return None


def advance(s: Schedule, step: Step) -> Schedule:
    """The schedule after ``step`` fired with no buyer signal in between."""
    anchor = step.next_anchor or step.at
    after = dataclasses.replace(s, next_step_at=None, held_until=None)
    match step.action:
        case Action.FOLLOW_UP | Action.INTERVIEW_REMINDER:
            return dataclasses.replace(after, touches=step.touch, anchor=anchor)
        case Action.NO_RESPONSE:
            return dataclasses.replace(after, stage=Stage.NO_RESPONSE)
        case Action.WON_WITHOUT_INTERVIEW:
            return dataclasses.replace(after, stage=Stage.WON)
        case Action.CONFIRM_DELIVERY:
            return dataclasses.replace(after, delivery_reminders=s.delivery_reminders + 1)
        case Action.CHECK_IN:
            return dataclasses.replace(after, stage=Stage.CHECKED_IN, touches=0, anchor=anchor)
        case Action.WIN_LOSS:
            if not s.selected_for_interview:
                return dataclasses.replace(after, stage=Stage.WON)
            return dataclasses.replace(
                after, stage=Stage.WIN_LOSS_INVITED, touches=0, anchor=anchor
            )
        case Action.LOSS_INTERVIEW:
            return dataclasses.replace(after, interview_invited=True, touches=0, anchor=anchor)
        case Action.CLOSE_INTERVIEW:
            return dataclasses.replace(after, interview_pending=False)


def upcoming(
    s: Schedule,
    cadence: Cadence,
    calendar: BusinessCalendar,
    policy: ShiftPolicy,
    limit: int = 50,
) -> list[Step]:
    """Every step the deal will take on its own from ``s``, in order, until it needs a signal."""
    steps: list[Step] = []
    while len(steps) < limit:
        step = next_step(s, cadence, calendar, policy)
        if step is None:
            break
        steps.append(step)
        s = advance(s, step)
    return steps


@dataclass(frozen=True)
class PlannedEmail:
    template: str
    audience: Audience
    thread: Thread | None = None


def emails_for(step: Step, before: Schedule) -> list[PlannedEmail]:
    """The emails ``step`` sends, given the schedule it fires from."""
    rep, interviewer = Audience.REP, Audience.INTERVIEWER
    match step.action:
        case Action.FOLLOW_UP:
            follow_up = FOLLOW_UPS[before.stage]
            return [PlannedEmail(follow_up.template, Audience.BUYER, follow_up.thread)]
        case Action.INTERVIEW_REMINDER:
            return [PlannedEmail("win_loss_reminder", Audience.BUYER, Thread.WIN_LOSS)]
        case Action.NO_RESPONSE:
            return [PlannedEmail("task_loss_analysis", rep)]
        case Action.CONFIRM_DELIVERY:
            return [PlannedEmail("task_confirm_delivery", rep)]
        case Action.CHECK_IN:
            return [
                PlannedEmail("check_in", Audience.BUYER, Thread.CHECK_IN),
                PlannedEmail("task_check_in_call", rep),
            ]
        case Action.WIN_LOSS if before.selected_for_interview:
            return [
                PlannedEmail("win_loss_invitation", Audience.BUYER, Thread.WIN_LOSS),
                PlannedEmail("task_win_loss_interview", interviewer),
            ]
        case Action.LOSS_INTERVIEW:
            return [
                PlannedEmail("loss_interview_invitation", Audience.BUYER, Thread.WIN_LOSS),
                PlannedEmail("task_win_loss_interview", interviewer),
            ]
    return []


def describe(step: Step) -> str:
    return f"{step.action.value} {step.touch}" if step.touch else step.action.value
