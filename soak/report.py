"""Counting what the soak did: every figure of the table, from the deals' own records,
the relay's log, the ledger and the supervisor's events.

- **planned**: distinct Message-IDs the deals sent or tried to send: every
  ``MessageRecord`` in the deals' final status whose outcome is sent, failed or
  bounced (a ``skipped`` record is an email the deal decided not to send: its
  address opted out, was suppressed or bounced before).
- **sent**: planned Message-IDs that some record of their deal says were sent.
- **received**: distinct Message-IDs in the relay's log.
- **duplicates**: copies in the relay's log beyond the first, summed over Message-IDs.
- **in window**: duplicates of a Message-ID whose first copy came from an attempt that
  the send ledger could not close: a claim of that Message-ID left standing (ops saw
  it in the ledger, the retry held the email as maybe sent) by an attempt that a chaos
  event ended (its worker pid SIGKILLed, or the SMTP cut) before the next claim of the
  same Message-ID, with the first copy reaching the relay at or after that claim and
  before the next claim (or before ops' resend). Only that attempt could send between
  the two, so the copy is its own: it reached the relay, its 250 never reached the
  ledger. (A dead worker's last bytes may still be read by the relay just after the
  kill, so the copy may come after the kill.) Any other duplicate is outside the
  window, a failure.
- **lost**: planned Message-IDs that never reached the relay (whether their deal
  recorded them sent, held them as maybe sent, or failed them for good).
- **stuck**: deals whose workflow had not completed at the deadline.
- **after opt-out**: relay log lines with an opted-out address among the recipients
  whose ``MAIL FROM`` came after the suppression list write for that address had
  committed (the time taken when ``SuppressionList.add`` returned).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import WorkflowExecutionStatus

from activities.mailer import FailureType
from soak.chaos import Chaos
from soak.deals import PATHS, Arrival, ArrivalLog, Buyers, DealPlan, Status
from soak.ops import Held, Ops

ATTEMPTED = ("sent", "failed", "bounced")


@dataclass
class Final:
    """One deal at the end: its workflow's state and its status (None if unreadable)."""

    plan: DealPlan
    state: WorkflowExecutionStatus | None
    status: Status | None
    problem: str = ""


@dataclass
class Report:
    deals: int = 0
    planned: int = 0
    sent: int = 0
    received: int = 0
    copies: int = 0
    duplicates: int = 0
    in_window: int = 0
    lost: int = 0
    stuck: int = 0
    after_opt_out: int = 0
    unplanned: int = 0
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(
            self.lost
            or self.stuck
            or self.after_opt_out
            or self.duplicates > self.in_window
            or self.unplanned
        )

    def machine_line(self) -> str:
        return (
            f"soak: deals={self.deals} planned={self.planned} received={self.received} "
            f"duplicates={self.duplicates} in_window={self.in_window} lost={self.lost} "
            f"stuck={self.stuck} after_opt_out={self.after_opt_out}"
        )

    def table(self) -> str:
        header = ("measure", "count", "how it is counted / what happened")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(3)]

        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(header), rule, *(line(row) for row in self.rows)])


_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Disconnected|Refused|Failure)\w*)\b")
_PATTERNS = {
    "activity attempts failed (retried)": "Completing activity as failed",
    "held as maybe sent (worker's line)": "not sent (MaybeSent)",
    "refused by the suppression list (worker's line)": "not sent (OptedOut)",
    "ledger not updated after a reply": "send ledger not updated",
    "workflow task failures": "Failed activation on workflow",
    "activation handling failures": "Failed handling activation",
    "nondeterminism": "Nondeterminism",
    "workflow tasks over 5 s": "Workflow task duration exceeded",
    "completions of workflow tasks that had timed out": "Task not found when completing",
}


def worker_logs(folder: Path) -> list[str]:
    """What the worker logs of the run say, counted: patterns, then exception types."""
    found: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    for log in sorted(folder.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            for name, pattern in _PATTERNS.items():
                if pattern in line:
                    found[name] += 1
            match = _EXCEPTION.match(line)
            if match:
                exceptions[match.group(1)] += 1
    lines = [f"{name}: {found[name]}" for name in _PATTERNS if found[name]]
    if exceptions:
        lines.append(
            "exceptions: " + ", ".join(f"{n} {name}" for name, n in exceptions.most_common(8))
        )
    return lines


def timeline(chaos: Chaos, began: float) -> str:
    short = {
        "worker-kill": "kill",
        "worker-die-at": "died at",
        "worker-exit": "WORKER EXITED",
        "worker-failed-start": "start failed",
        "server-kill": "SERVER KILL",
        "server-start": "server up",
        "smtp-cut": "SMTP CUT",
        "smtp-back": "SMTP back",
    }
    parts = [
        f"+{event.at - began:.0f} {short[event.kind]}"
        + (f" {event.detail}" if event.kind in ("worker-die-at", "worker-exit") else "")
        for event in sorted(chaos.events, key=lambda e: e.at)
        if event.kind in short
    ]
    return ", ".join(parts)


def _window(chaos: Chaos, ops: Ops, message_id: str, first: Arrival) -> tuple[bool, str]:
    """Whether ``first`` came from an attempt ended by chaos with its claim standing (see
    the module's docstring), with the evidence in words."""
    claims = sorted(
        (c for (mid, _), c in ops.claims.items() if mid == message_id),
        key=lambda c: c.claimed_at,
    )
    for i, claim in enumerate(claims):
        bounds = [later.claimed_at for later in claims[i + 1 :]]
        bounds += [h.found_at for h in ops.held if h.claim == claim]
        end = min(bounds, default=float("inf"))
        death = chaos.deaths_after(claim.claimed_at, claim.pid)
        if death is None or death >= end or not claim.claimed_at <= first.at < end:
            continue
        after = first.at - death
        return True, (
            f"attempt {claim.attempt} (pid {claim.pid}) claimed it, the relay took the copy "
            f"{first.at - claim.claimed_at:.3f} s later, and the attempt ended (kill or SMTP "
            f"cut) {abs(after):.3f} s {'before' if after > 0 else 'after'} that, its claim "
            "left standing"
        )
    return False, "no claim of it left standing by an attempt that chaos ended"


def count(
    finals: list[Final],
    relay: ArrivalLog,
    buyers: Buyers,
    ops: Ops,
    chaos: Chaos,
    began: float,
) -> Report:
    report = Report(deals=len(finals))
    records: dict[str, list[tuple[str, str, str]]] = {}  # mid -> (deal, outcome, error)
    ends: Counter[str] = Counter()
    elsewhere: list[str] = []
    refused_by_list = 0
    for final in finals:
        status = final.status
        if status is None:
            continue
        ends[status.stage.value] += 1
        if status.stage is not final.plan.expected:
            elsewhere.append(
                f"{final.plan.deal_id} ended {status.stage.value} "
                f"({status.outcome_reason or 'no reason'})"
            )
        for message in status.messages:
            records.setdefault(message.message_id, []).append(
                (final.plan.deal_id, message.outcome, message.error)
            )
            if message.outcome == "skipped" and message.error.startswith(FailureType.OPTED_OUT):
                refused_by_list += 1
    planned = {mid for mid, rs in records.items() if any(r[1] in ATTEMPTED for r in rs)}
    sent = {mid for mid, rs in records.items() if any(r[1] == "sent" for r in rs)}
    received = set(relay.by_message)
    report.planned, report.sent, report.received = len(planned), len(sent), len(received)
    report.copies = len(relay.arrivals)

    # duplicates, and whether each fell inside the window
    outside: list[str] = []
    for mid, arrivals in relay.by_message.items():
        extra = len(arrivals) - 1
        if extra <= 0:
            continue
        report.duplicates += extra
        inside, why = _window(chaos, ops, mid, arrivals[0])
        if inside:
            report.in_window += extra
        else:
            outside.append(f"{mid}: {len(arrivals)} copies; {why}")
        report.details.append(f"duplicate {mid} x{len(arrivals)}: {'in' if inside else 'OUTSIDE'} "
                              f"the window; {why}")  # fmt: skip

    # lost
    lost = sorted(planned - received)
    report.lost = len(lost)
    for mid in lost:
        report.details.append(f"LOST {mid}: records {records[mid]}")
    # Only a completed deal's record is final: a running (stuck) deal may send on.
    completed = {
        f.plan.deal_id
        for f in finals
        if f.status is not None and f.state == WorkflowExecutionStatus.COMPLETED
    }
    unplanned = sorted(
        mid for mid in received - planned if relay.by_message[mid][0].deal in completed
    )
    for mid in unplanned:
        first = relay.by_message[mid][0]
        known = records.get(mid)
        report.details.append(
            f"arrived but no deal attempted it: {mid} to {', '.join(first.to)} "
            f"at +{first.at - began:.1f} s; records {known or 'none'}"
        )
    # An arrival a deal recorded only as skipped is explained when an earlier attempt
    # delivered it before the list stopped its retry; anything else is a failure.
    report.unplanned = sum(1 for mid in unplanned if mid not in records)

    # stuck
    stuck: list[str] = []
    for final in finals:
        if final.state == WorkflowExecutionStatus.COMPLETED:
            continue
        report.stuck += 1
        status = final.status
        where = (
            f"{status.stage.value}, next {status.next_touch}, problems {status.problems[-3:]}"
            if status
            else "status unreadable"
        )
        if final.problem:
            where += f"; {final.problem[:300]}"
        stuck.append(f"STUCK {final.plan.deal_id} ({final.plan.path}): {where}")
    # Deals whose workflow task keeps failing first: they never move again by themselves.
    report.details += sorted(stuck, key=lambda line: "workflow task on attempt" not in line)

    # sends after opt-out
    in_flight = 0
    for arrival in relay.arrivals:
        for address in arrival.to:
            opt_out = buyers.opt_outs.get(address)
            if opt_out is None:
                continue
            if arrival.mail_at > opt_out.committed:
                report.after_opt_out += 1
                report.details.append(
                    f"AFTER OPT-OUT {arrival.message_id} to {address}: MAIL FROM "
                    f"{arrival.mail_at - opt_out.committed:.3f} s after the commit "
                    f"(opt-out of {opt_out.deal_id})"
                )
            elif arrival.mail_at > opt_out.requested:
                in_flight += 1

    # held as maybe sent
    held: list[Held] = ops.held
    delivered = sum(1 for h in held if h.delivered)
    actions = Counter(h.action for h in held)
    for h in held:
        inside, why = (
            _window(chaos, ops, h.claim.message_id, relay.by_message[h.claim.message_id][0])
            if h.delivered
            else (False, "")
        )
        report.details.append(
            f"held {h.claim.message_id} ({h.claim.template}, attempt {h.claim.attempt}, "
            f"pid {h.claim.pid}): {h.action}"
            + (f"; {'in' if inside else 'NOT in'} the window: {why}" if h.delivered else "")
        )

    # the table
    end_text = ", ".join(f"{n} {stage}" for stage, n in ends.most_common())
    paths = Counter(final.plan.path for final in finals)
    report.rows = [
        (
            "deals",
            str(report.deals),
            f"ends: {end_text}; {len(elsewhere)} ended elsewhere than their path planned",
        ),
        ("", "", "paths: " + ", ".join(f"{paths[p]} {p}" for p in PATHS if paths[p])),
        (
            "emails planned",
            str(report.planned),
            "distinct Message-IDs the deals sent or tried to send (status messages)",
        ),
        ("emails sent", str(report.sent), "of those, recorded as sent by their deal"),
        (
            "emails received",
            str(report.received),
            f"distinct Message-IDs in the relay's log ({report.copies} copies)",
        ),
        (
            "duplicates",
            str(report.duplicates),
            f"copies beyond the first: {report.in_window} inside the measured window, "
            f"{report.duplicates - report.in_window} outside",
        ),
        (
            "held as maybe sent",
            str(len(held)),
            f"{delivered} had reached the relay, {len(held) - delivered} had not; ops: "
            + (", ".join(f"{n} {action}" for action, n in actions.most_common()) or "-"),
        ),
        ("lost", str(report.lost), "planned, never in the relay's log"),
        ("stuck", str(report.stuck), "deals not completed by the deadline"),
        (
            "sends after opt-out",
            str(report.after_opt_out),
            f"MAIL FROM after the list's commit, {len(buyers.opt_outs)} opt-outs; "
            f"{refused_by_list} emails refused by the list, {in_flight} in flight "
            "across a commit",
        ),
        (
            "chaos",
            "",
            f"{chaos.count('worker-kill')} worker SIGKILLs, "
            f"{chaos.count('worker-die-at')} deaths at a send point, "
            f"{chaos.count('server-kill')} server restart, "
            f"{chaos.count('smtp-cut')} SMTP cut of {chaos.smtp_cut_for:.0f} s, "
            f"{chaos.count('worker-exit')} worker exits on its own",
        ),
    ]
    if report.unplanned:
        report.rows.append(
            ("unexplained arrivals", str(report.unplanned), "in the relay's log, in no record")
        )
    report.details = [*elsewhere[:20], *report.details]
    if len(elsewhere) > 20:
        report.details.insert(20, f"... and {len(elsewhere) - 20} more ended elsewhere")
    return report
