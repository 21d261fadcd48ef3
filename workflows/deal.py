"""The deal workflow: one durable execution per deal, from inquiry to win-loss interview.

The workflow is an event loop over the deal's state. Update handlers apply a
buyer signal at once (the new stage is visible to the caller and to queries)
and queue the emails of the step; the main loop sends what is queued, then
sleeps until the next thing that is due (a follow-up touch, the check-in, the
win-loss invitation...) or until a signal changes the state. Every waiting
state has a timer, so no deal waits passively (docs/sales-process.md).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import ClassVar, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.email_models import (
        DealFacts,
        EmailContext,
        EmailReceipt,
        EmailRequest,
        EmailThread,
        Party,
        PricedLine,
        SendTrouble,
        StepFacts,
    )
    from activities.mailer import NON_RETRYABLE, SEND_TROUBLE, FailureType, Mailer
    from activities.suppression import Suppression, SuppressionWriter
    from workflows import bounds, pricing
    from workflows.business_calendar import (
        BusinessCalendar,
        SendWindow,
        add_delay,
        day_starts,
        next_slot,
    )
    from workflows.deal_recording import RECORD_DEAL, DealRecording
    from workflows.models import (
        BuyerReplied,
        Closed,
        Contact,
        DealInput,
        DealStatus,
        DeclinedToTalk,
        Delivered,
        DeliveryDateChanged,
        DiscountRequested,
        InboundKind,
        InboundMessage,
        InterviewRecorded,
        MessageRecord,
        NextStepAgreed,
        NextTouch,
        OptedOut,
        OrderPlaced,
        OutOfOffice,
        Paused,
        PlannedSend,
        PriceAgreed,
        RequirementsClarified,
        SignalPayload,
        StageChange,
    )
    from workflows.outbound import Audience, Outbound, Thread, task, to_buyer
    from workflows.schedule import (
        Action,
        Schedule,
        Step,
        advance,
        describe,
        emails_for,
        next_step,
        upcoming,
    )
    from workflows.search_attributes import (
        DEAL_NEXT_TOUCH,
        DEAL_OWNER,
        DEAL_STAGE,
        DEAL_VALUE,
    )
    from workflows.stages import BuyerSignal, InquiryKind, Stage, opening_stage, refusal


SEND_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    non_retryable_error_types=NON_RETRYABLE,
)
# One send attempt may wait 10 minutes for the relay's final reply after DATA (RFC 5321);
# a worker that dies is noticed by its missing heartbeat long before that.
SEND_ATTEMPT_TIMEOUT = timedelta(minutes=12)
SEND_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
SUPPRESS_TIMEOUT = timedelta(minutes=2)
BOUNCE_TYPES = frozenset({FailureType.BOUNCE, FailureType.REJECTED})
SUPPRESSED_TYPES = frozenset({FailureType.OPTED_OUT, FailureType.SUPPRESSED})
STATUS = "status"
PLAN = "plan"
RESEND_FAILED = "resend_failed"
# Patch: a resent email keeps its Message-ID (deals started before it send a new one).
RESEND_SAME_MESSAGE_ID = "resend-same-message-id"
# Patch: a closed deal holding failed emails waits for ops' resend (deals before it ended).
KEEP_FAILED_FOR_RESEND = "keep-failed-for-resend"
# Patch: a reply or out-of-office from someone not a contact changes nothing on the deal.
VERIFIED_SENDER = "verified-sender"
INBOUND_MESSAGE = "inbound_message"
EVENTS_REMEMBERED = 1000
# The failure type of a deal whose input is out of bounds (started past intake).
INPUT_REFUSED = "DealInputRefused"


ALWAYS_OPEN = BusinessCalendar(
    window=SendWindow(days=list(range(7)), start=time(0), end=time(23, 59, 59, 999999))
)
_NOTES = {
    Action.NO_RESPONSE: "cadence exhausted",
    Action.WON_WITHOUT_INTERVIEW: "interview not held",
}


@workflow.defn(name="DealWorkflow")
class DealWorkflow:
    """One B2B deal walking the buyer's path.

    Updates (one per ``BuyerSignal``, each refused by its validator with the
    reason when it makes no sense in the current stage): requirements_clarified,
    declined_to_talk, discount_requested, price_agreed, next_step_agreed,
    order_placed, delivery_date_changed, delivered, interview_recorded, lost,
    disqualified, cancelled; and resend_failed for ops. Query: status.
    """

    # Off only in the lifecycle benchmark's baseline (``bench.unrecorded``).
    keeps_records: ClassVar[bool] = True

    @workflow.init
    def __init__(self, deal: DealInput) -> None:
        self.deal = deal
        self.items = list(deal.items)
        self.discount = Decimal(0)
        self.stage = Stage.INQUIRY_RECEIVED
        self.history: list[StageChange] = []
        self.messages: list[MessageRecord] = []
        self.problems: list[str] = []
        # Why an email in flight is late (its last failed attempt), until it ends.
        self.troubles: dict[str, SendTrouble] = {}
        self.outbox: list[Outbound] = []
        self.threads: dict[Thread, EmailThread] = {}
        # Addresses this deal must not mail: bounced, opted out, or suppressed elsewhere.
        self.bounced: set[str] = set()
        self.suppressing: list[Suppression] = []
        # Sends that failed for good (template, address, SMTP down too long), kept for `resend`.
        self.failed: list[Outbound] = []
        # A closed deal still holding failed emails ends at this time unless ops resend.
        self.resend_until: datetime | None = None
        self.sequence = 0
        # The follow-up clock of the current stage: touches sent, counted from `anchor`.
        self.touches = 0
        self.anchor = workflow.now()
        self.next_step_at: datetime | None = None
        self.order: OrderPlaced | None = None
        self.delivery_date: date | None = None
        self.delivered_at: datetime | None = None
        self.delivery_reminders = 0
        self.outcome_reason = ""
        self.lost_reason = ""
        self.interview: InterviewRecorded | None = None
        self.interview_invited = False
        self.interview_pending = False
        # Stop rules and holds: a reply hands the deal to the rep; a pause or an
        # out-of-office holds the timers (and a pause the outbox too).
        self.replied = False
        self.paused = False
        self.paused_until: datetime | None = None
        self.away_until: datetime | None = None
        self.resumed_at: datetime | None = None
        self.changes = 0
        self.published: tuple[object, ...] = ()
        # Ids of events already applied (inbound Message-IDs, webhook event ids), newest last.
        self.events: list[str] = []
        # A send activity is in flight, or the outbox waits on purpose (``_holding``):
        # the recorder waits for a burst of sends to end, not for a hold.
        self.sending = False
        self.holding = False
        self.recording = DealRecording(self)

    # --- the loop ---

    @workflow.run
    async def run(self, deal: DealInput) -> DealStatus:
        self._refuse_out_of_bounds(deal)
        recorder = None
        if self.keeps_records and self._patched(RECORD_DEAL):
            # The ledger's record runs beside the loop: the loop never waits for it.
            recorder = asyncio.create_task(self.recording.run())
        self._open()
        if recorder is not None:
            # Stage and value from the first moment, not from the first email sent:
            # from the start itself when intake started the deal with them.
            if self.deal.revision >= 1:
                self.published = self._published_at_start()
            self._publish(self._next_due())
        while True:
            self._release_pause()
            await self._record_suppressions()
            await self._send_outbox()
            if self._finished():
                if await self._kept_for_resend():
                    continue
                break
            due = self._next_due()
            self._publish(due)
            if await self._changed_before(due.at if due else None):
                continue
            assert due is not None
            self._fire(due)
        self._publish(None)
        await workflow.wait_condition(workflow.all_handlers_finished)
        if recorder is not None:
            self.recording.closing = True
            await recorder
        return self.status()

    @staticmethod
    def _refuse_out_of_bounds(deal: DealInput) -> None:
        """Input started straight against Temporal, past intake, meets intake's bounds here,
        before any command: outside them the deal fails with the reason, in one line,
        rather than fail a workflow task for ever (a negative send_retry_for, a delay of
        -2,000 years). Whatever intake let start passes, so its history replays as it was."""
        try:
            bounds.check_deal(deal, workflow.now().date())
        except (ValueError, ArithmeticError) as error:
            reason = " ".join(str(error).split())
            raise ApplicationError(
                f"deal input refused: {reason}", type=INPUT_REFUSED, non_retryable=True
            ) from None

    async def _changed_before(self, due: datetime | None) -> bool:
        """Sleep until ``due`` or until a signal changes the deal; True if a signal came first."""
        seen = self.changes
        if due is None:
            await workflow.wait_condition(lambda: self.changes != seen)
            return True
        wait = due - workflow.now()
        if wait <= timedelta(0):
            return False
        try:
            await workflow.wait_condition(lambda: self.changes != seen, timeout=wait)
        except TimeoutError:
            return False
        return True

    def _open(self) -> None:
        kind = self.deal.kind
        self._move(opening_stage(kind), "inquiry", SignalPayload(source="start"))
        if kind is InquiryKind.RFI:
            self._queue(task("task_clarify_requirements"))
        elif kind is InquiryKind.RFP:
            self._send_proposal()
        else:
            self._queue(to_buyer("quotation", Thread.QUOTE))
            self._queue(task("task_negotiate_quote"))

    def _finished(self) -> bool:
        return (
            self.stage.is_terminal
            and not self.outbox
            and not self.interview_pending
            and not self.suppressing
        )

    async def _kept_for_resend(self) -> bool:
        """A deal that closed holding emails that failed for good (held as maybe sent,
        relay down too long) stays open ``resend_window`` for ops to ``resend`` them:
        ending now would lose them. True when a resend came; False: end the deal."""
        if not self.failed or self.stage is Stage.CANCELLED:
            return False  # a cancelled deal sends nothing more
        if not self._patched(KEEP_FAILED_FOR_RESEND):
            return False
        if self.resend_until is None:
            self.resend_until = workflow.now() + self.deal.resend_window
            self.problems.append(
                f"closed holding {len(self.failed)} email(s) that failed: resend them by "
                f"{self.resend_until:%Y-%m-%d %H:%M} UTC or they are dropped"
            )
            self._changed()
        self._publish(None)
        if await self._changed_before(self.resend_until):
            return True  # a resend, or any other change: the loop looks again
        dropped = ", ".join(f"{o.message_id} ({o.template})" for o in self.failed)
        self.problems.append(f"dropped, never resent: {dropped}")
        self.failed.clear()
        return False

    async def _record_suppressions(self) -> None:
        while self.suppressing:
            await workflow.execute_activity_method(
                SuppressionWriter.suppress,
                self.suppressing[0],
                start_to_close_timeout=SUPPRESS_TIMEOUT,
                retry_policy=SEND_RETRY_POLICY,
            )
            self.suppressing.pop(0)

    def _schedule(self) -> Schedule:
        return Schedule(
            stage=self.stage,
            touches=self.touches,
            anchor=self.anchor,
            next_step_at=self.next_step_at,
            delivery_date=self.delivery_date,
            delivered_at=self.delivered_at,
            delivery_reminders=self.delivery_reminders,
            interview_pending=self.interview_pending,
            interview_invited=self.interview_invited,
            selected_for_interview=self._selected(),
            replied=self.replied,
            held_until=max(
                (t for t in (self.paused_until, self.away_until, self.resumed_at) if t),
                default=None,
            ),
            paused=self.paused and self.paused_until is None,
        )

    def _adopt(self, schedule: Schedule) -> None:
        self.touches = schedule.touches
        self.anchor = schedule.anchor
        self.next_step_at = schedule.next_step_at
        self.delivery_reminders = schedule.delivery_reminders
        self.interview_pending = schedule.interview_pending
        self.interview_invited = schedule.interview_invited
        if schedule.held_until is None:
            now = workflow.now()
            self.away_until = (
                None if self.away_until and self.away_until <= now else self.away_until
            )
            self.resumed_at = None
        self._changed()

    def _release_pause(self) -> None:
        """A pause with a resume date ends by itself once that date has come."""
        if self.paused and self.paused_until and self.paused_until <= workflow.now():
            self.paused, self.resumed_at, self.paused_until = False, self.paused_until, None
            self.history.append(
                StageChange(at=workflow.now(), stage=self.stage, signal="resumed", source="timer")
            )
            self._changed()

    def _next_due(self) -> Step | None:
        return next_step(
            self._schedule(), self.deal.cadence, self._calendar(), self.deal.shift_policy
        )

    def _calendar(self) -> BusinessCalendar:
        return self.deal.calendar or ALWAYS_OPEN

    # --- what fires when a timer comes due ---

    def _fire(self, step: Step) -> None:
        before = self._schedule()
        after = advance(before, step)
        emails = emails_for(step, before)
        interview_due = None
        if step.action is Action.CHECK_IN and before.selected_for_interview:
            interview_due = add_delay(self._calendar(), step.at, self.deal.cadence.win_loss_after)
        reason = self.outcome_reason
        if step.action is Action.NO_RESPONSE:
            reason = f"no reply after {before.touches} follow-ups in '{before.stage.value}'"
            self.outcome_reason = reason
        for email in emails:
            self._queue(
                Outbound(
                    email.template,
                    email.audience,
                    StepFacts(
                        touch=step.touch or None,
                        next_step_at=before.next_step_at,
                        interview_due=interview_due,
                        reason=reason,
                        outcome="lost" if before.stage is Stage.LOST else "won",
                    ),
                    email.thread,
                    restarts_cadence=False,
                )
            )
        if after.stage is not before.stage:
            note = _NOTES.get(step.action, "")
            if after.stage is Stage.WON and step.action is Action.WIN_LOSS:
                note = "order below win-loss threshold"
            self._move(after.stage, "", SignalPayload(source="timer", note=note))
        self._adopt(after)

    # --- sending ---

    def _queue(self, outbound: Outbound) -> None:
        outbound.queued_in = self.stage
        self.outbox.append(outbound)

    async def _send_outbox(self) -> None:
        while self.outbox:
            self._release_pause()
            if self.paused:  # a paused deal sends nothing at all
                await self._holding(self.paused_until)
                continue
            # Buyer emails wait for the buyer's send window; internal ones go at once.
            if self.outbox[0].audience is Audience.BUYER:
                ready = next_slot(self._calendar(), workflow.now())
                if ready > workflow.now():
                    await self._holding(ready)
                    continue
            outbound = self.outbox.pop(0)
            self.sending = True
            try:
                sent = await self._send(outbound)
            finally:
                self.sending = False
            # A signal that moved the deal meanwhile (delivered before the order
            # confirmation went out) wins over the stage this email would reach.
            if sent and outbound.then_stage is not None and self.stage is outbound.queued_in:
                self._move(outbound.then_stage, "", SignalPayload(source="email"))

    async def _holding(self, until: datetime | None) -> None:
        """The outbox waits (a pause, the buyer's send window): the records need not."""
        self.holding = True
        try:
            await self._changed_before(until)
        finally:
            self.holding = False

    async def _send(self, outbound: Outbound) -> bool:
        """Send one email; False (recorded on the deal) when it could not go out."""
        everyone = self._recipients(outbound.audience, outbound.template)
        recipients = [r for r in everyone if r.email.lower() not in self.bounced]
        self.sequence += 1
        step = f"{self.sequence:03d}-{outbound.template}"
        record = MessageRecord(
            step=step,
            template=outbound.template,
            to=[r.email for r in recipients or everyone],
            at=workflow.now(),
            outcome="sending",
        )
        self.messages.append(record)
        blocked = [r.email for r in everyone if r not in recipients]
        if not recipients:
            record.outcome = "skipped"
            record.error = f"address bounced earlier: {', '.join(blocked)}"
            self._changed()
            return False
        thread = self.threads.get(outbound.thread) if outbound.thread else None
        message_id, resend = f"<{self.deal.deal_id}.{step}@{self.deal.message_domain}>", False
        if outbound.message_id is not None and self._patched(RESEND_SAME_MESSAGE_ID):
            message_id, resend = outbound.message_id, True
        request = EmailRequest(
            message_id=message_id,
            resend=resend,
            template=outbound.template,
            to=recipients,
            date=workflow.now(),
            context=EmailContext(
                deal=self._facts(),
                recipient=recipients[0],
                buyer=self._buyer(),
                step=outbound.step,
            ),
            thread=thread,
            buyer_facing=outbound.audience is Audience.BUYER,
        )
        record.message_id = request.message_id
        try:
            receipt: EmailReceipt = await workflow.execute_activity_method(
                Mailer.send_email,
                request,
                task_queue=self.deal.send_task_queue,
                start_to_close_timeout=SEND_ATTEMPT_TIMEOUT,
                heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
                schedule_to_close_timeout=self.deal.send_retry_for,
                retry_policy=SEND_RETRY_POLICY,
            )
        except ActivityError as error:
            self.troubles.pop(request.message_id, None)
            self._send_failed(outbound, record, error)
            return False
        self.troubles.pop(request.message_id, None)
        record.outcome, record.subject, record.at = "sent", receipt.subject, workflow.now()
        if outbound.thread is not None:
            if thread is None:
                self.threads[outbound.thread] = EmailThread(
                    subject=receipt.subject, message_ids=[receipt.message_id]
                )
            else:
                thread.message_ids.append(receipt.message_id)
        if outbound.audience is Audience.BUYER and outbound.restarts_cadence:
            self.anchor = workflow.now()
        self._changed()
        return True

    def _send_failed(self, outbound: Outbound, record: MessageRecord, error: ActivityError) -> None:
        cause = error.cause
        kind = cause.type if isinstance(cause, ApplicationError) and cause.type else "SendFailed"
        message = cause.message if cause is not None else error.message
        record.error = f"{kind}: {message}"
        if kind in SUPPRESSED_TYPES:
            # Another deal (or an earlier bounce) suppressed the address: not a problem to fix.
            record.outcome = "skipped"
            self.bounced.update(address.lower() for address in record.to)
            reachable = [c for c in self.deal.contacts if c.email.lower() not in self.bounced]
            if kind == FailureType.OPTED_OUT and not reachable and not self.stage.is_terminal:
                self._close(
                    Stage.OPTED_OUT,
                    BuyerSignal.OPTED_OUT,
                    Closed(reason=message, source="suppression list"),
                )
            self._changed()
            return
        record.outcome = "bounced" if kind in BOUNCE_TYPES else "failed"
        self.problems.append(f"{record.step} to {', '.join(record.to)}: {record.error}")
        if record.outcome == "failed":
            outbound.message_id = record.message_id
            self.failed.append(outbound)
            # Held by the send ledger: only a person can tell whether the buyer has it.
            if kind == FailureType.MAYBE_SENT and outbound.audience is Audience.BUYER:
                self._queue(task("task_check_maybe_sent", reason=record.error))
        if record.outcome == "bounced":
            self.bounced.update(address.lower() for address in record.to)
            if outbound.audience is Audience.BUYER:
                self._queue(task("task_fix_address", reason=record.error))
        self._changed()

    def _recipients(self, audience: Audience, template: str) -> list[Party]:
        deal = self.deal
        if audience is Audience.BUYER:
            # A template may target roles of the buying committee; else the main contact.
            roles = set(deal.routing.get(template, []))
            chosen = [c for c in deal.contacts if c.role in roles] or [deal.buyer]
            return [self._party(contact) for contact in chosen]
        if audience is Audience.FULFILMENT:
            return [Party(name="Fulfilment", email=deal.fulfilment_address, role="fulfilment")]
        if audience is Audience.INTERVIEWER and deal.win_loss_interviewer:
            return [Party(name="Win-loss interviewer", email=deal.win_loss_interviewer)]
        return [Party(name="Deal owner", email=deal.owner, role="rep")]

    def _buyer(self) -> Party:
        return self._party(self.deal.buyer)

    @staticmethod
    def _party(contact: Contact) -> Party:
        return Party(
            name=contact.name, email=contact.email, time_zone=contact.time_zone, role=contact.role
        )

    # --- state ---

    def _move(self, stage: Stage, signal: str, payload: SignalPayload) -> None:
        self._remember(payload)
        self.stage = stage
        self.history.append(
            StageChange(
                at=workflow.now(),
                stage=stage,
                signal=signal,
                source=payload.source,
                note=payload.note,
                event_id=payload.event_id,
            )
        )
        self.touches = 0
        self.anchor = workflow.now()
        self.next_step_at = None
        self.replied = False
        self._changed()

    def _changed(self) -> None:
        self.changes += 1

    def _selected(self) -> bool:
        return self.value() >= self.deal.cadence.win_loss_min_order_value

    def price(self) -> Decimal:
        return pricing.discounted(pricing.list_total(self.items), self.discount)

    def value(self) -> Decimal:
        if self.order is not None and self.order.order_value is not None:
            return self.order.order_value
        return self.price()

    def _facts(self) -> DealFacts:
        return DealFacts(
            deal_id=self.deal.deal_id,
            company=self.deal.company,
            kind=self.deal.kind.value,
            stage=self.stage.value,
            currency=self.deal.currency,
            owner=self.deal.owner,
            lines=[
                PricedLine(
                    name=item.name,
                    quantity=item.quantity,
                    unit_price=item.list_price,
                    line_total=pricing.money(item.list_price * item.quantity),
                )
                for item in self.items
            ],
            list_total=pricing.list_total(self.items),
            floor_total=pricing.floor_total(self.items, self.deal.cadence.reserved_margin_percent),
            price=self.price(),
            discount_percent=self.discount,
            order_value=self.value() if self.order else None,
            purchase_order=self.order.purchase_order if self.order else "",
            delivery_date=self.delivery_date,
            delivered_at=self.delivered_at,
        )

    def _patched(self, patch: str) -> bool:
        """``workflow.patched``, asked only of deals started before revision 1: a later
        deal started after every patch here, and takes the patched path without the
        marker and the search-attribute write that asking costs."""
        return self.deal.revision >= 1 or workflow.patched(patch)

    def _published_at_start(self) -> tuple[object, ...]:
        """What the start's search attributes (``starter.start_options``) already say,
        as ``_publish`` remembers it; empty if the deal was started without them."""
        found = workflow.info().typed_search_attributes
        stage, value = found.get(DEAL_STAGE), found.get(DEAL_VALUE)
        if stage is None or value is None or found.get(DEAL_NEXT_TOUCH) is not None:
            return ()
        if found.get(DEAL_OWNER) != str(self.deal.owner):
            return ()
        try:
            return (Stage(stage), Decimal(str(value)), None)
        except (ValueError, ArithmeticError):
            return ()  # a start by hand with odd values: publish ours

    def _publish(self, due: Step | None) -> None:
        """Upsert the search attributes when they changed, so the pipeline can count and sum."""
        snapshot = (self.stage, self.value(), due.at if due else None)
        if snapshot == self.published:
            return
        self.published = snapshot
        workflow.upsert_search_attributes(
            [
                DEAL_STAGE.value_set(self.stage.value),
                DEAL_VALUE.value_set(float(self.value())),
                DEAL_OWNER.value_set(str(self.deal.owner)),
                DEAL_NEXT_TOUCH.value_set(due.at) if due else DEAL_NEXT_TOUCH.value_unset(),
            ]
        )

    def _send_proposal(self) -> None:
        self._queue(to_buyer("proposal", Thread.PROPOSAL, Stage.PROPOSAL_RECEIVED))

    # --- buyer signals: one update each, refused with the reason by its validator ---

    def _refuse(self, signal: BuyerSignal, payload: SignalPayload) -> None:
        # Bounds first: a payload that skipped the CLI's or the webhook's checks (huge
        # quantities, a year-9999 date, a control character) never reaches the handler.
        bounds.check_payload(payload, workflow.now().date())
        if self._seen(payload):
            raise ValueError(f"event {payload.event_id} was already applied to this deal")
        reason = refusal(signal, self.stage)
        if reason:
            raise ValueError(reason)

    def _seen(self, payload: SignalPayload) -> bool:
        return bool(payload.event_id) and payload.event_id in self.events

    def _is_contact(self, address: str) -> bool:
        return any(contact.email.lower() == address.lower() for contact in self.deal.contacts)

    def _remember(self, payload: SignalPayload) -> None:
        if payload.event_id:
            self.events.append(payload.event_id)
            del self.events[:-EVENTS_REMEMBERED]

    def _record(self, signal: BuyerSignal | str, payload: SignalPayload) -> None:
        """A signal that keeps the stage: kept in the history all the same, for audit."""
        self._remember(payload)
        self.history.append(
            StageChange(
                at=workflow.now(),
                stage=self.stage,
                signal=str(signal),
                source=payload.source,
                note=payload.note,
                event_id=payload.event_id,
            )
        )
        self._changed()

    def _close(self, stage: Stage, signal: BuyerSignal, payload: Closed) -> Stage:
        self.outcome_reason = payload.reason
        # A closed deal sends the buyer nothing more that was queued before it closed.
        self.outbox = [o for o in self.outbox if o.audience is not Audience.BUYER]
        self._move(stage, signal.value, payload)
        return self.stage

    @workflow.update(name=BuyerSignal.REQUIREMENTS_CLARIFIED.value)
    def requirements_clarified(self, signal: RequirementsClarified) -> Stage:
        if signal.items:
            self.items = list(signal.items)
        self._move(Stage.REQUIREMENTS_CLARIFIED, BuyerSignal.REQUIREMENTS_CLARIFIED.value, signal)
        self._send_proposal()
        return self.stage

    @requirements_clarified.validator
    def _check_requirements_clarified(self, signal: RequirementsClarified) -> None:
        self._refuse(BuyerSignal.REQUIREMENTS_CLARIFIED, signal)
        if not (signal.items or self.items):
            raise ValueError("the proposal needs line items: give at least one --item")

    @workflow.update(name=BuyerSignal.DECLINED_TO_TALK.value)
    def declined_to_talk(self, signal: DeclinedToTalk) -> Stage:
        self._record(BuyerSignal.DECLINED_TO_TALK, signal)
        self._queue(to_buyer("general_offer", Thread.PROPOSAL, Stage.PROPOSAL_RECEIVED))
        return self.stage

    @declined_to_talk.validator
    def _check_declined_to_talk(self, signal: DeclinedToTalk) -> None:
        self._refuse(BuyerSignal.DECLINED_TO_TALK, signal)

    @workflow.update(name=BuyerSignal.DISCOUNT_REQUESTED.value)
    def discount_requested(self, signal: DiscountRequested) -> Stage:
        self.discount = signal.percent
        self._move(Stage.QUOTE_REQUESTED, BuyerSignal.DISCOUNT_REQUESTED.value, signal)
        self._queue(to_buyer("quotation", Thread.QUOTE))
        return self.stage

    @discount_requested.validator
    def _check_discount_requested(self, signal: DiscountRequested) -> None:
        self._refuse(BuyerSignal.DISCOUNT_REQUESTED, signal)
        reason = pricing.discount_refusal(
            self.items, self.deal.cadence.reserved_margin_percent, signal.percent
        )
        if reason:
            raise ValueError(reason)

    @workflow.update(name=BuyerSignal.PRICE_AGREED.value)
    def price_agreed(self, signal: PriceAgreed) -> Stage:
        self._move(Stage.PRICE_AGREED, BuyerSignal.PRICE_AGREED.value, signal)
        self._queue(to_buyer("final_offer", Thread.OFFER, Stage.OFFER_RECEIVED))
        return self.stage

    @price_agreed.validator
    def _check_price_agreed(self, signal: PriceAgreed) -> None:
        self._refuse(BuyerSignal.PRICE_AGREED, signal)
        if not self.items:
            raise ValueError("the final offer needs line items: record the requirements first")

    @workflow.update(name=BuyerSignal.NEXT_STEP_AGREED.value)
    def next_step_agreed(self, signal: NextStepAgreed) -> Stage:
        self.next_step_at = signal.at
        self._record(BuyerSignal.NEXT_STEP_AGREED, signal)
        return self.stage

    @next_step_agreed.validator
    def _check_next_step_agreed(self, signal: NextStepAgreed) -> None:
        self._refuse(BuyerSignal.NEXT_STEP_AGREED, signal)
        if signal.at <= workflow.now():
            raise ValueError(f"the agreed next step {signal.at.isoformat()} is in the past")

    @workflow.update(name=BuyerSignal.ORDER_PLACED.value)
    def order_placed(self, signal: OrderPlaced) -> Stage:
        self.order = signal
        self.delivery_date = signal.delivery_date
        self._move(Stage.ORDER_PLACED, BuyerSignal.ORDER_PLACED.value, signal)
        self._queue(to_buyer("order_confirmation", Thread.ORDER, Stage.ORDER_CONFIRMED))
        self._queue(Outbound("fulfilment_hand_over", Audience.FULFILMENT))
        return self.stage

    @order_placed.validator
    def _check_order_placed(self, signal: OrderPlaced) -> None:
        self._refuse(BuyerSignal.ORDER_PLACED, signal)
        if signal.delivery_date < workflow.now().date():
            raise ValueError(f"the delivery date {signal.delivery_date} is in the past")
        if signal.order_value is None and not self.items:
            raise ValueError("the deal has no line items: give the order value (--value)")

    @workflow.update(name=BuyerSignal.DELIVERY_DATE_CHANGED.value)
    def delivery_date_changed(self, signal: DeliveryDateChanged) -> Stage:
        previous, self.delivery_date = self.delivery_date, signal.delivery_date
        self._record(BuyerSignal.DELIVERY_DATE_CHANGED, signal)
        if self.stage is Stage.DELIVERED:
            # A correction of when delivery really happened: the check-in re-plans from it.
            self.delivered_at = datetime.combine(signal.delivery_date, time(12), UTC)
            return self.stage
        self.delivery_reminders = 0
        self._queue(
            to_buyer(
                "delivery_date_changed",
                Thread.ORDER,
                previous_delivery_date=previous,
                reason=signal.reason,
            )
        )
        return self.stage

    @delivery_date_changed.validator
    def _check_delivery_date_changed(self, signal: DeliveryDateChanged) -> None:
        self._refuse(BuyerSignal.DELIVERY_DATE_CHANGED, signal)
        if signal.delivery_date == self.delivery_date:
            raise ValueError(f"the delivery date is already {signal.delivery_date}")

    @workflow.update(name=BuyerSignal.DELIVERED.value)
    def delivered(self, signal: Delivered) -> Stage:
        self.delivered_at = signal.delivered_at or workflow.now()
        self.delivery_date = self.delivered_at.date()
        self._move(Stage.DELIVERED, BuyerSignal.DELIVERED.value, signal)
        self._queue(to_buyer("delivery_notice", Thread.ORDER))
        self._queue(task("task_issue_invoice"))
        return self.stage

    @delivered.validator
    def _check_delivered(self, signal: Delivered) -> None:
        self._refuse(BuyerSignal.DELIVERED, signal)
        if signal.delivered_at and signal.delivered_at > workflow.now():
            raise ValueError("the delivery time is in the future; record it once delivered")

    @workflow.update(name=BuyerSignal.INTERVIEW_RECORDED.value)
    def interview_recorded(self, signal: InterviewRecorded) -> Stage:
        self.interview = signal
        self.interview_pending = False
        if self.stage is Stage.WIN_LOSS_INVITED:
            self._move(Stage.WON, BuyerSignal.INTERVIEW_RECORDED.value, signal)
        else:
            self._record(BuyerSignal.INTERVIEW_RECORDED, signal)
        return self.stage

    @interview_recorded.validator
    def _check_interview_recorded(self, signal: InterviewRecorded) -> None:
        self._refuse(BuyerSignal.INTERVIEW_RECORDED, signal)
        if self.stage is Stage.LOST and not (self.interview_pending and self.interview_invited):
            raise ValueError("no loss interview was invited for this deal")
        for name in ("rep_rating", "cooperation_rating"):
            if isinstance(getattr(signal, name), str):  # words, as older interviews had
                raise ValueError(f"{name} must be a whole number from 1 (poor) to 5 (excellent)")

    @workflow.update(name=BuyerSignal.LOST.value)
    def lost(self, signal: Closed) -> Stage:
        self.interview_pending = self._selected()
        self.lost_reason = signal.code
        return self._close(Stage.LOST, BuyerSignal.LOST, signal)

    @lost.validator
    def _check_lost(self, signal: Closed) -> None:
        self._refuse(BuyerSignal.LOST, signal)

    @workflow.update(name=BuyerSignal.DISQUALIFIED.value)
    def disqualified(self, signal: Closed) -> Stage:
        return self._close(Stage.DISQUALIFIED, BuyerSignal.DISQUALIFIED, signal)

    @disqualified.validator
    def _check_disqualified(self, signal: Closed) -> None:
        self._refuse(BuyerSignal.DISQUALIFIED, signal)

    @workflow.update(name=BuyerSignal.CANCELLED.value)
    def cancelled(self, signal: Closed) -> Stage:
        self.interview_pending = False
        self.outbox.clear()
        return self._close(Stage.CANCELLED, BuyerSignal.CANCELLED, signal)

    @cancelled.validator
    def _check_cancelled(self, signal: Closed) -> None:
        self._refuse(BuyerSignal.CANCELLED, signal)

    @workflow.update(name=BuyerSignal.BUYER_REPLIED.value)
    def buyer_replied(self, signal: BuyerReplied) -> Stage:
        return self._buyer_replied(signal.contact, signal)

    def _buyer_replied(self, contact: str, signal: SignalPayload, quote: str = "") -> Stage:
        self.replied = True
        self._record(BuyerSignal.BUYER_REPLIED, signal)
        who = contact or self.deal.buyer.email
        self._queue(task("task_buyer_replied", reason=who, quote=quote))
        return self.stage

    @buyer_replied.validator
    def _check_buyer_replied(self, signal: BuyerReplied) -> None:
        self._refuse(BuyerSignal.BUYER_REPLIED, signal)
        if signal.contact and not self._is_contact(signal.contact):
            raise ValueError(f"{signal.contact} is not a contact of this deal")

    @workflow.update(name=BuyerSignal.OUT_OF_OFFICE.value)
    def out_of_office(self, signal: OutOfOffice) -> Stage:
        self.away_until = signal.until or workflow.now() + self.deal.cadence.out_of_office_pause
        self._record(BuyerSignal.OUT_OF_OFFICE, signal)
        return self.stage

    @out_of_office.validator
    def _check_out_of_office(self, signal: OutOfOffice) -> None:
        self._refuse(BuyerSignal.OUT_OF_OFFICE, signal)
        if signal.until and signal.until <= workflow.now():
            raise ValueError(f"the return date {signal.until.isoformat()} is in the past")
        if signal.until is None:
            # The handler adds the cadence's pause to now: a pause out of bounds is refused.
            where = "the deal's cadence.out_of_office_pause (give the return date)"
            bounds.check_delay(where, self.deal.cadence.out_of_office_pause)

    @workflow.update(name=BuyerSignal.PAUSED.value)
    def paused_by_ops(self, signal: Paused) -> Stage:
        self.paused, self.paused_until = True, signal.until
        self._record(BuyerSignal.PAUSED, signal)
        return self.stage

    @paused_by_ops.validator
    def _check_paused(self, signal: Paused) -> None:
        self._refuse(BuyerSignal.PAUSED, signal)
        if signal.until and signal.until <= workflow.now():
            raise ValueError(f"the resume date {signal.until.isoformat()} is in the past")

    @workflow.update(name=BuyerSignal.RESUMED.value)
    def resumed(self, signal: SignalPayload) -> Stage:
        self.paused, self.paused_until, self.resumed_at = False, None, workflow.now()
        self._record(BuyerSignal.RESUMED, signal)
        return self.stage

    @resumed.validator
    def _check_resumed(self, signal: SignalPayload) -> None:
        self._refuse(BuyerSignal.RESUMED, signal)
        if not self.paused:
            raise ValueError("the deal is not paused")

    @workflow.update(name=BuyerSignal.TOUCH_SKIPPED.value)
    def touch_skipped(self, signal: SignalPayload) -> Stage:
        step = self._next_due()
        assert step is not None
        self._adopt(advance(self._schedule(), step))
        self._record(BuyerSignal.TOUCH_SKIPPED, signal)
        return self.stage

    @touch_skipped.validator
    def _check_touch_skipped(self, signal: SignalPayload) -> None:
        self._refuse(BuyerSignal.TOUCH_SKIPPED, signal)
        step = self._next_due()
        if step is None or step.action not in (Action.FOLLOW_UP, Action.INTERVIEW_REMINDER):
            raise ValueError("the deal has no follow-up to skip next")

    @workflow.update(name=BuyerSignal.OPTED_OUT.value)
    def opted_out(self, signal: OptedOut) -> Stage:
        return self._opt_out([str(signal.address or self.deal.buyer.email)], signal)

    def _opt_out(self, addresses: list[str], signal: SignalPayload) -> Stage:
        for address in addresses:
            self.bounced.add(address.lower())
            self._suppress(address.lower(), "opted_out", signal.note)
        address = ", ".join(a.lower() for a in addresses)
        if self.stage is Stage.LOST:
            self.interview_pending = False
            self._record(BuyerSignal.OPTED_OUT, signal)
            return self.stage
        closing = Closed(
            reason=f"{address} opted out",
            source=signal.source,
            note=signal.note,
            event_id=signal.event_id,
        )
        return self._close(Stage.OPTED_OUT, BuyerSignal.OPTED_OUT, closing)

    def _suppress(self, address: str, reason: Literal["opted_out", "bounced"], detail: str) -> None:
        self.suppressing.append(
            Suppression(
                address=address,
                reason=reason,
                detail=detail,
                deal_id=self.deal.deal_id,
                at=workflow.now(),
            )
        )

    @opted_out.validator
    def _check_opted_out(self, signal: OptedOut) -> None:
        self._refuse(BuyerSignal.OPTED_OUT, signal)
        if signal.address and not self._is_contact(str(signal.address)):
            raise ValueError(f"{signal.address} is not a contact of this deal")

    @workflow.signal(name=SEND_TROUBLE)
    def send_trouble(self, trouble: SendTrouble) -> None:
        """A send attempt failed and will be retried: shown until the email goes out or
        fails for good. Only a send still in flight is marked (a late signal is dropped)."""
        if any(m.message_id == trouble.message_id and m.outcome == "sending"
               for m in self.messages):  # fmt: skip
            self.troubles[trouble.message_id] = trouble

    @workflow.signal(name=INBOUND_MESSAGE)
    def inbound_message(self, mail: InboundMessage) -> None:
        """A message from the reply mailbox. A signal: the poller needs no answer, and it
        may deliver the same message twice (a re-read after a crash): ``event_id`` dedupes."""
        if self._seen(mail):
            return
        if mail.kind is InboundKind.BOUNCE:
            # Whatever the stage: a dead address must not be mailed again.
            self._bounced(mail)
            return
        accepted = {
            InboundKind.REPLY: BuyerSignal.BUYER_REPLIED,
            InboundKind.OUT_OF_OFFICE: BuyerSignal.OUT_OF_OFFICE,
            InboundKind.UNSUBSCRIBE: BuyerSignal.OPTED_OUT,
        }[mail.kind]
        if refusal(accepted, self.stage):
            # Nothing to act on (the deal has closed): kept in the history all the same.
            self._record(f"inbound {mail.kind.value}", self._noted(mail, "deal closed, no action"))
            return
        internal = {self.deal.owner, self.deal.fulfilment_address, self.deal.win_loss_interviewer}
        if mail.sender.lower() in {str(a).lower() for a in internal if a}:
            # The rep answering a task email is not the buyer answering us.
            self._record(f"inbound {mail.kind.value}", self._noted(mail, "from our own side"))
            return
        if (
            mail.kind in (InboundKind.REPLY, InboundKind.OUT_OF_OFFICE)
            and not self._is_contact(mail.sender)
            and self._patched(VERIFIED_SENDER)
        ):
            # Anyone can answer an email they saw: only a contact steers the deal. The
            # rep sees a stranger's reply, marked, as it may be a lure (payment fraud).
            note = f"unverified sender {mail.sender or '(none)'}: not a contact, no change"
            self._record(f"inbound {mail.kind.value}", self._noted(mail, note))
            if mail.kind is InboundKind.REPLY:
                who = mail.sender or "someone"
                self._queue(task("task_unverified_reply", reason=who, quote=self._quote(mail)))
            return
        if mail.kind is InboundKind.REPLY:
            self._buyer_replied(mail.sender, mail, quote=self._quote(mail))
        elif mail.kind is InboundKind.OUT_OF_OFFICE:
            until, now = None, workflow.now()
            # Only a date in the window is converted: year 1 or 9999 could overflow.
            window = (now - bounds.RETURN_DATE_SLACK).date(), (now + bounds.MAX_AWAY).date()
            if mail.returns_on is not None and window[0] <= mail.returns_on <= window[1]:
                until = day_starts(mail.returns_on, self.deal.buyer.time_zone).astimezone(UTC)
            # A return date from the mail itself counts up to MAX_AWAY: "back in 2099"
            # would otherwise freeze the deal's follow-ups.
            if until is None or until <= now or until > now + bounds.MAX_AWAY:
                until = now + self.deal.cadence.out_of_office_pause
            self.away_until = until
            self._record(BuyerSignal.OUT_OF_OFFICE, self._noted(mail, f"back {until:%Y-%m-%d}"))
        else:
            named = mail.addresses or self._recipient_of(mail)
            contacts = [a for a in named if self._is_contact(a)]
            if contacts:
                self._opt_out(contacts, mail)
            else:
                self._record("inbound unsubscribe", self._noted(mail, "not a contact of the deal"))

    def _recipient_of(self, mail: InboundMessage) -> list[str]:
        """Who stood at ``recipient_position`` of the email ``unsubscribed_from``: the
        link names only the place. Nobody when the deal sent no such email, or when its
        resends put different people there (the suppression list holds the one who
        clicked all the same, by the keyed hash)."""
        position = mail.recipient_position
        if position is None or not mail.unsubscribed_from:
            return []
        found = {
            record.to[position].lower()
            for record in self.messages
            if record.message_id == mail.unsubscribed_from and position < len(record.to)
        }
        return list(found) if len(found) == 1 else []

    def _bounced(self, mail: InboundMessage) -> None:
        address = mail.failed_recipient.lower()
        lasting = "permanent" if mail.permanent else "transient"
        status = f"{mail.bounce_status or 'no status'} {lasting}"
        if not mail.permanent or not self._is_contact(address):
            # A full mailbox or an unknown recipient: nothing to change, but worth seeing.
            self._record("inbound bounce", self._noted(mail, f"{address or '?'}: {status}"))
            return
        self.bounced.add(address)
        self._suppress(address, "bounced", f"{status}: {mail.subject}")
        reporter = mail.sender or "the mail server"
        problem = f"bounce from {address} ({status}), reported by {reporter}"
        self.problems.append(problem)
        self._queue(task("task_fix_address", reason=problem))
        self._record("inbound bounce", self._noted(mail, problem))

    @staticmethod
    def _noted(mail: InboundMessage, note: str) -> SignalPayload:
        return SignalPayload(source=mail.source, note=note, event_id=mail.event_id)

    @staticmethod
    def _quote(mail: InboundMessage) -> str:
        return f"{mail.subject}: {mail.snippet}" if mail.snippet else mail.subject

    @workflow.update(name=RESEND_FAILED)
    def resend_failed(self, signal: SignalPayload) -> int:
        """Ops: send again what failed for good, once its cause is fixed (template, SMTP)."""
        count = len(self.failed)
        self.outbox.extend(self.failed)
        self.failed.clear()
        self.resend_until = None  # what fails again gets a fresh window
        self._changed()
        return count

    @resend_failed.validator
    def _check_resend_failed(self, signal: SignalPayload) -> None:
        bounds.check_payload(signal, workflow.now().date())
        if not self.failed:
            raise ValueError("the deal has no failed email to send again")

    # --- status ---

    @workflow.query(name=PLAN)
    def plan(self) -> list[PlannedSend]:
        """Every email the deal will send without a buyer signal: queued ones, then timed ones."""
        calendar, planned = self._calendar(), []
        now = workflow.now()
        for outbound in self.outbox:
            at = next_slot(calendar, now) if outbound.audience is Audience.BUYER else now
            planned.append(self._planned(at, "queued", outbound.template, outbound.audience))
        schedule = self._schedule()
        for step in upcoming(schedule, self.deal.cadence, calendar, self.deal.shift_policy):
            for email in emails_for(step, schedule):
                planned.append(
                    self._planned(step.at, describe(step), email.template, email.audience)
                )
            schedule = advance(schedule, step)
        return planned

    def _planned(self, at: datetime, step: str, template: str, audience: Audience) -> PlannedSend:
        to = [party.email for party in self._recipients(audience, template)]
        return PlannedSend(at=at, step=step, template=template, to=to)

    @workflow.query(name=STATUS)
    def status(self) -> DealStatus:
        due = None if self._finished() else self._next_due()
        waiting = None
        if due is None and self.resend_until is not None and self.failed:
            waiting = NextTouch(what="ends unless failed emails are resent", at=self.resend_until)
        return DealStatus(
            deal_id=self.deal.deal_id,
            company=self.deal.company,
            kind=self.deal.kind,
            owner=str(self.deal.owner),
            currency=self.deal.currency,
            stage=self.stage,
            value=self.value(),
            list_total=pricing.list_total(self.items),
            floor_total=pricing.floor_total(self.items, self.deal.cadence.reserved_margin_percent),
            discount_percent=self.discount,
            delivery_date=self.delivery_date,
            delivered_at=self.delivered_at,
            outcome_reason=self.outcome_reason,
            lost_reason=self.lost_reason,
            next_touch=NextTouch(what=describe(due), at=due.at) if due else waiting,
            history=list(self.history),
            messages=list(self.messages),
            problems=list(self.problems),
            sending_problems=[
                f"{t.message_id} attempt {t.attempt} failed at {t.at:%Y-%m-%d %H:%M:%S} UTC, "
                f"retrying: {t.problem}"
                for t in self.troubles.values()
            ],
            interview=self.interview,
            buyer_time_zone=self.deal.buyer.time_zone,
            contacts=[str(contact.email) for contact in self.deal.contacts],
            paused=self.paused,
            held_until=self._schedule().held_until,
            replied=self.replied,
        )
