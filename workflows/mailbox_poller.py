"""The mailbox poller: one long-running workflow per reply mailbox.

Temporal runs the schedule: read what arrived (an activity), signal each matched
deal, sleep, again; continue-as-new keeps the history short. The cursor lives in
this workflow's state, so it moves in the same step as the signals are sent: a
crash re-reads at worst, and every deal applies a given Message-ID once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import date, timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.inbound_mail import InboundKind as MailKind
    from activities.mailbox import (
        LIMITS,
        MAILBOX_TROUBLE,
        READ_MAILBOX,
        InboxEntry,
        MailboxBatch,
        MailboxCursor,
        MailboxTrouble,
        clean,
    )
    from workflows.deal import INBOUND_MESSAGE
    from workflows.models import InboundKind, InboundMessage

MAILBOX_POLLER_WORKFLOW = "MailboxPoller"
MAILBOX_POLLER_ID = "mailbox-poller"
INBOX_QUERY = "inbox"
POLL_NOW = "poll_now"
# What the poller keeps of what it read (``inbox`` lists it, re-reads are told apart by
# it): the newest RECENT_KEPT entries whose JSON sums to at most RECENT_BYTES. The kept
# entries are both this workflow's continue-as-new input and the ``inbox`` query's answer,
# each held to Temporal's payload limit (2 MB; warned of from 512 KiB). By count alone,
# 200 of the largest entries the reader makes (8 KB of 4-byte characters) came to 1.7 MB,
# 2.6 MB with every field at its bound. Whole entries are dropped, oldest first, never
# cut: a cut Message-ID would no longer recognise its message when it is read again, and
# ``inbox`` shows what the reader saw. Everyday mail (1-2 KB an entry) reaches the count
# first; the worst an entry can be (13 KB; 81 KB for an unsubscribe naming 50 addresses)
# still leaves the newest few listed.
RECENT_KEPT = 200
RECENT_BYTES = 256 * 1024
# Patch: the kept entries are bounded in bytes too (runs before it keep 200 of any size).
RECENT_WITHIN_BYTES = "recent-within-bytes"
POLLS_PER_RUN = 500
READ_TIMEOUT = timedelta(minutes=5)
# The reader heartbeats after each message; a hung IMAP server is given up on this soon.
READ_HEARTBEAT = timedelta(minutes=1)
READ_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
)
# What each class of inbound mail means for its deal; the rest is only listed.
SIGNALLED = {
    MailKind.HUMAN_REPLY: InboundKind.REPLY,
    MailKind.AUTO_REPLY: InboundKind.OUT_OF_OFFICE,
    MailKind.BOUNCE: InboundKind.BOUNCE,
    MailKind.UNSUBSCRIBE: InboundKind.UNSUBSCRIBE,
}


class MailboxPollerState(BaseModel):
    mailbox: str
    poll_every: timedelta = timedelta(minutes=1)
    cursor: MailboxCursor = Field(default_factory=MailboxCursor)
    recent: list[InboxEntry] = Field(default_factory=list)


class MailboxPollerReport(BaseModel):
    """What ``starter.py inbox`` shows."""

    mailbox: str
    cursor: MailboxCursor
    polls: int
    recent: list[InboxEntry]
    # Why the mailbox cannot be read right now (refused login, server away), or "".
    trouble: str = ""


def encoded_size(entry: InboxEntry) -> int:
    """Bytes of ``entry``'s JSON as the payload converter writes it (UTF-8, not characters)."""
    return len(entry.model_dump_json().encode())


def newest_within(
    entries: list[InboxEntry], size_of: Callable[[InboxEntry], int] = encoded_size
) -> list[InboxEntry]:
    """The newest (last) of ``entries``: at most RECENT_KEPT, their sizes summing to at
    most RECENT_BYTES; none when the newest alone is larger."""
    held = kept = 0
    for entry in reversed(entries[-RECENT_KEPT:]):
        held += size_of(entry)
        if held > RECENT_BYTES:
            break
        kept += 1
    return entries[len(entries) - kept :]


def inbound_message(entry: InboxEntry, kind: InboundKind) -> InboundMessage:
    """The deal's signal for one inbound message; ValueError if a field does not fit."""
    return InboundMessage(
        kind=kind,
        event_id=entry.message_id,
        source="mailbox",
        sender=entry.sender,
        subject=entry.subject,
        snippet=entry.snippet,
        returns_on=date.fromisoformat(entry.returns_on) if entry.returns_on else None,
        failed_recipient=entry.failed_recipient,
        bounce_status=entry.bounce_status,
        permanent=entry.permanent,
        addresses=entry.unsubscribe_addresses,
        unsubscribed_from=entry.unsubscribed_from,
        recipient_position=entry.recipient_position,
    )


@workflow.defn(name=MAILBOX_POLLER_WORKFLOW)
class MailboxPollerWorkflow:
    @workflow.init
    def __init__(self, state: MailboxPollerState) -> None:
        self.state = state
        self.polls = 0
        self.poll_requested = False
        self.trouble: MailboxTrouble | None = None
        self.trouble_since: MailboxTrouble | None = None
        # Each kept entry's encoded size, by Message-ID (unique in ``recent``): measured
        # once, since measuring all of them on every message is too slow for a batch.
        self.sizes: dict[str, int] = {}

    @workflow.run
    async def run(self, state: MailboxPollerState) -> None:
        while self.polls < POLLS_PER_RUN and not workflow.info().is_continue_as_new_suggested():
            batch: MailboxBatch = await workflow.execute_activity(
                READ_MAILBOX,
                self.state.cursor,
                result_type=MailboxBatch,
                start_to_close_timeout=READ_TIMEOUT,
                heartbeat_timeout=READ_HEARTBEAT,
                retry_policy=READ_RETRY,
            )
            self.polls += 1
            self.trouble = self.trouble_since = None
            for entry in batch.entries:
                await self._deliver(entry)
            self.state.cursor = batch.cursor
            if batch.more:
                continue
            self.poll_requested = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self.poll_requested, timeout=self.state.poll_every
                )
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._within_bytes():
            # A run may have begun with an older run's larger state and read nothing.
            self.state.recent = self._newest()
        workflow.continue_as_new(self.state)

    async def _deliver(self, entry: InboxEntry) -> None:
        seen = {e.message_id for e in self.state.recent}
        kind = SIGNALLED.get(entry.kind)
        if entry.deal_id and kind is not None:
            if entry.message_id in seen:
                entry.outcome = "already delivered to the deal"
            else:
                entry.outcome = await self._signal(entry, kind)
        self.state.recent = [e for e in self.state.recent if e.message_id != entry.message_id]
        self.state.recent.append(entry)
        if self._within_bytes():
            self.sizes[entry.message_id] = encoded_size(entry)
            self.state.recent = self._newest()
        else:
            del self.state.recent[:-RECENT_KEPT]

    def _within_bytes(self) -> bool:
        """Whether this run keeps ``recent`` within RECENT_BYTES: which entries are kept
        decides which re-read messages are signalled again, so older runs keep theirs."""
        return workflow.patched(RECENT_WITHIN_BYTES)

    def _newest(self) -> list[InboxEntry]:
        """The kept entries within RECENT_BYTES; forgets the sizes of the dropped ones."""
        kept = newest_within(self.state.recent, self._size)
        for entry in self.state.recent[: len(self.state.recent) - len(kept)]:
            self.sizes.pop(entry.message_id, None)
        return kept

    def _size(self, entry: InboxEntry) -> int:
        if entry.message_id not in self.sizes:
            self.sizes[entry.message_id] = encoded_size(entry)
        return self.sizes[entry.message_id]

    async def _signal(self, entry: InboxEntry, kind: InboundKind) -> str:
        try:
            message = inbound_message(entry, kind)
        except ValueError as error:
            # The reader bounds every field; should one still not fit, it is listed, not
            # raised: an exception here would fail this task again on every retry, and
            # the mailbox would never be read past this message.
            why = str(error).splitlines()[0] if str(error) else type(error).__name__
            return clean(f"quarantined: {why}", LIMITS["outcome"])
        deal = workflow.get_external_workflow_handle(f"deal-{entry.deal_id}")
        try:
            await deal.signal(INBOUND_MESSAGE, message)
        except FailureError as error:
            # The deal has ended or never existed: nothing to stop, but say so.
            return f"deal {entry.deal_id} is closed or unknown ({error.message})"
        return f"signalled {kind.value} to deal {entry.deal_id}"

    @workflow.signal(name=MAILBOX_TROUBLE)
    def mailbox_trouble(self, trouble: MailboxTrouble) -> None:
        self.trouble_since = self.trouble_since or trouble
        self.trouble = trouble

    @workflow.signal(name=POLL_NOW)
    def poll_now(self) -> None:
        self.poll_requested = True

    @workflow.query(name=INBOX_QUERY)
    def inbox(self) -> MailboxPollerReport:
        return MailboxPollerReport(
            mailbox=self.state.mailbox,
            cursor=self.state.cursor,
            polls=self.polls,
            # Measured afresh: within RECENT_BYTES even in a run begun before the bound.
            recent=newest_within(self.state.recent),
            trouble=self._trouble(),
        )

    def _trouble(self) -> str:
        if self.trouble is None or self.trouble_since is None:
            return ""
        since = self.trouble_since.at.strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"the mailbox cannot be read since {since} (attempt {self.trouble.attempt}, "
            f"retrying): {self.trouble.problem}"
        )
