"""The ops CLI: start deals, record buyer signals, read status and the pipeline.

Every command exits 0 when done, 1 with one line on stderr when the input or
the deal's stage refuses it (nothing is written to the deal then), and 2 on a
usage error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.client import (
    WorkflowExecutionStatus as ExecutionStatus,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.mailer import FailureType
from activities.suppression import Suppression as LegacySuppression
from connection import TemporalUnreachable, connect
from deal_intake import (
    CSV_COLUMNS,
    BadInput,
    build_deal,
    deal_from_row,
    explain,
    local_moment,
    parse_contact,
    parse_date,
    parse_items,
    read_csv,
    read_deal_file,
)
from ledger import LedgerProblem
from reports_cli import export_app, report_app
from settings import Settings, demo_cadence, load_settings
from workflows import bounds, pricing
from workflows.deal import PLAN, RESEND_FAILED, STATUS, DealWorkflow
from workflows.mailbox_poller import (
    INBOX_QUERY,
    MAILBOX_POLLER_ID,
    POLL_NOW,
    MailboxPollerReport,
)
from workflows.models import (
    BuyerReplied,
    Closed,
    DealInput,
    DealStatus,
    DeclinedToTalk,
    Delivered,
    DeliveryDateChanged,
    DiscountRequested,
    InterviewRecorded,
    MessageRecord,
    NextStepAgreed,
    OptedOut,
    OrderPlaced,
    OutOfOffice,
    Paused,
    PlannedSend,
    PriceAgreed,
    RequirementsClarified,
    SignalPayload,
)
from workflows.search_attributes import DEAL_CURRENCY, DEAL_OWNER, DEAL_STAGE, DEAL_VALUE
from workflows.stages import BuyerSignal, InquiryKind, Stage, opening_stage

# Earlier versions kept each suppressed address as one open workflow of this type.
LEGACY_SUPPRESSION_WORKFLOW = "SuppressedAddress"

if TYPE_CHECKING:
    # SQLAlchemy is imported by the commands that use the ledger, not by every command.
    from ledger.database import LedgerDatabase
    from ledger.deal_records import DealRecords
    from ledger.kept_deals import KeptDeal
    from ledger.suppression_list import SuppressionEntry, SuppressionList

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
# Deal data is user text: never read it as Rich markup or emoji codes ("[/b]" or ":one:"
# in a note must print as is).
err = Console(stderr=True, highlight=False, markup=False, emoji=False)
out = Console(highlight=False, markup=False, emoji=False)
T = TypeVar("T")


class Refused(Exception):
    """The deal (or Temporal) refused the command; the message says why and what to do."""


class NoSuchDeal(Refused):
    """No deal was ever started with this id."""


class DealClosed(Refused):
    """The deal has ended; it takes no more signals."""


class DealUnreachable(Refused):
    """Temporal could not answer for the deal just now; trying again may work."""


def workflow_id(deal_id: str) -> str:
    return f"deal-{deal_id}"


# --- operations (usable without the CLI: tests and benchmarks call these) ---


def start_options(settings: Settings, deal: DealInput) -> dict[str, Any]:
    """How every deal is started: its id, queue, no second run, and a pipeline row at once."""
    return {
        "id": workflow_id(deal.deal_id),
        "task_queue": settings.temporal_task_queue,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(DEAL_CURRENCY, deal.currency),
                # The deal's first stage and its list value at once: a deal started
                # outside the send window is in the pipeline before its first email.
                SearchAttributePair(DEAL_OWNER, str(deal.owner)),
                SearchAttributePair(DEAL_STAGE, opening_stage(deal.kind).value),
                SearchAttributePair(DEAL_VALUE, float(pricing.list_total(deal.items))),
            ]
        ),
    }


@contextlib.asynccontextmanager
async def ledger_database(settings: Settings) -> AsyncIterator[LedgerDatabase]:
    """The ledger for one command; a database failure becomes one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from ledger import LedgerProblem
    from ledger.database import LedgerDatabase, explain

    database = LedgerDatabase(settings.ledger_url)
    try:
        yield database
    except LedgerProblem:
        raise
    except (SQLAlchemyError, OSError) as error:
        raise explain(error, settings.ledger_url) from None
    finally:
        await database.dispose()


@contextlib.asynccontextmanager
async def suppression_list(settings: Settings) -> AsyncIterator[SuppressionList]:
    """The ledger's suppression list for one command."""
    from ledger.suppression_list import SuppressionList

    async with ledger_database(settings) as database:
        yield SuppressionList(database)


async def suppressed_contacts(
    suppressions: SuppressionList, deal: DealInput
) -> list[SuppressionEntry]:
    """The deal's contacts on the global suppression list (opted out or bounced)."""
    found = await suppressions.find([str(contact.email) for contact in deal.contacts])
    return list(found.values())


async def start_deal(
    client: Client,
    settings: Settings,
    deal: DealInput,
    suppressions: SuppressionList | None = None,
) -> WorkflowHandle:
    """Start the deal's workflow; refused when it exists already, or when every contact is
    on the suppression list (the deal could never email anyone)."""
    if suppressions is None:
        async with suppression_list(settings) as opened:
            return await start_deal(client, settings, deal, opened)
    suppressed = await suppressed_contacts(suppressions, deal)
    if len(suppressed) == len(deal.contacts):
        entries = "; ".join(entry.describe() for entry in suppressed)
        raise Refused(
            f"deal {deal.deal_id!r} not started: every contact is on the suppression list "
            f"({entries}); add a contact who may be emailed, or lift the entry "
            "('starter.py suppression lift ADDRESS --reason ...')"
        )
    try:
        return await client.start_workflow(DealWorkflow.run, deal, **start_options(settings, deal))
    except WorkflowAlreadyStartedError:
        raise Refused(
            f"deal {deal.deal_id!r} was already started; pick a new deal id "
            f"(see 'starter.py status {deal.deal_id}')"
        ) from None


async def record(
    client: Client,
    deal_id: str,
    signal: BuyerSignal | str,
    payload: BaseModel,
    refusals: DealRecords | None = None,
) -> Any:
    """Send one buyer signal as an update; the deal's validator may refuse it with a
    reason, which goes in the deal's records in the ledger too (``refusals``)."""
    name = signal.value if isinstance(signal, BuyerSignal) else signal
    handle = client.get_workflow_handle(workflow_id(deal_id))
    try:
        return await handle.execute_update(name, payload)
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        reason = getattr(cause, "message", None) or str(cause or error)
        if refusals is not None and isinstance(payload, SignalPayload):
            await _keep_refusal(refusals, deal_id, name, payload, reason)
        raise Refused(f"deal {deal_id!r} refused {name}: {reason}") from None
    except RPCError as error:
        raise await _explain_rpc(client, deal_id, error) from None


async def _keep_refusal(
    refusals: DealRecords, deal_id: str, name: str, payload: SignalPayload, reason: str
) -> None:
    try:
        await refusals.refused(deal_id, name, payload, reason, datetime.now(UTC))
    except Exception as error:  # the refusal is what the caller must hear, not this
        logging.getLogger(__name__).warning(
            "deal %s: refused %s not recorded in the ledger: %s", deal_id, name, error
        )


async def status(client: Client, deal_id: str) -> DealStatus:
    handle = client.get_workflow_handle(workflow_id(deal_id))
    try:
        return await handle.query(STATUS, result_type=DealStatus)
    except RPCError as error:
        raise await _explain_rpc(client, deal_id, error) from None


async def _explain_rpc(client: Client, deal_id: str, error: RPCError) -> Refused:
    # An update to a finished deal is NOT_FOUND too: only describe tells the two apart.
    try:
        described = await client.get_workflow_handle(workflow_id(deal_id)).describe()
    except RPCError as missing:
        if missing.status == RPCStatusCode.NOT_FOUND:
            return NoSuchDeal(f"no deal {deal_id!r}: check the id with 'starter.py pipeline'")
        return DealUnreachable(f"deal {deal_id!r}: {error.message}")
    if described.status != ExecutionStatus.RUNNING:
        stage = described.typed_search_attributes.get(DEAL_STAGE) or "closed"
        return DealClosed(f"deal {deal_id!r} is closed ({stage}); it takes no more signals")
    return DealUnreachable(f"deal {deal_id!r}: {error.message}")


async def inbox(client: Client) -> MailboxPollerReport:
    """What the mailbox poller read lately, and what it did with each message."""
    handle = client.get_workflow_handle(MAILBOX_POLLER_ID)
    try:
        return await handle.query(INBOX_QUERY, result_type=MailboxPollerReport)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise Refused(
                "no mailbox poller is running: set DEALFLOW_IMAP_HOST (and user, password) "
                "and start the worker"
            ) from None
        raise


def owner_filter(owner: str) -> str:
    """A visibility filter on one rep; the address is checked so it cannot alter the query."""
    try:
        owner = validate_email(owner, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise BadInput(f"--owner {owner!r} is not an email address: {error}") from None
    # A valid address may still hold a quote; the query language escapes it with a backslash.
    escaped = owner.replace("\\", "\\\\").replace("'", "\\'")
    return f"DealOwner = '{escaped}'"


@dataclass
class BulkResult:
    started: list[str]
    failed: list[tuple[int, str, str]]  # (CSV line, deal id, reason)


async def bulk_start(
    client: Client,
    settings: Settings,
    rows: Sequence[dict[str, str | None]],
    on_done: Callable[[], None] = lambda: None,
    lines: Sequence[int] | None = None,
) -> BulkResult:
    """Start one deal per row; a bad row is reported and never stops the others.

    ``lines`` are the rows' line numbers in the file (default: one row per line after a header).
    """
    async with suppression_list(settings) as suppressions:
        return await _bulk_start(client, settings, suppressions, rows, on_done, lines)


async def _bulk_start(
    client: Client,
    settings: Settings,
    suppressions: SuppressionList,
    rows: Sequence[dict[str, str | None]],
    on_done: Callable[[], None],
    lines: Sequence[int] | None,
) -> BulkResult:
    result = BulkResult([], [])
    slots = asyncio.Semaphore(settings.bulk_start_concurrency)

    async def one(line: int, row: dict[str, str | None]) -> None:
        deal_id = (row.get("deal_id") or "").strip()
        try:
            deal = deal_from_row(settings, row)
            async with slots:
                await start_deal(client, settings, deal, suppressions)
            result.started.append(deal_id)
        except (BadInput, Refused) as error:
            result.failed.append((line, deal_id, str(error)))
        except RPCError as error:
            result.failed.append((line, deal_id, f"Temporal refused the start: {error.message}"))
        finally:
            on_done()

    numbers = lines or range(2, len(rows) + 2)
    await asyncio.gather(*(one(line, row) for line, row in zip(numbers, rows, strict=True)))
    result.failed.sort()
    return result


# --- CLI plumbing ---


def _run(command: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async command with a connected client; turn known failures into one line."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        settings = load_settings()

        async def main() -> T:
            client = await connect(settings)
            return await command(client, settings, *args, **kwargs)

        try:
            return asyncio.run(main())
        except (Refused, BadInput, TemporalUnreachable, LedgerProblem) as error:
            err.print(f"dealflow: {error}", soft_wrap=True)
            raise typer.Exit(1) from None
        except RPCError as error:
            err.print(f"dealflow: Temporal refused the request: {error.message}", soft_wrap=True)
            raise typer.Exit(1) from None

    # Typer reads the options from the signature: hide the injected client and settings.
    signature = inspect.signature(command)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[2:]
    )
    return wrapper


def _payload(model: type[BaseModel], **fields: Any) -> Any:
    try:
        return model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        raise BadInput(explain(error)) from None


def _signal_command(
    name: str, signal: BuyerSignal, help_text: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command that turns its options into ``signal``'s payload."""

    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        async def run(client: Client, settings: Settings, deal_id: str, **options: Any) -> None:
            if "settings" in inspect.signature(build).parameters:
                options["settings"] = settings
            payload = await build(client, deal_id, **options)
            from ledger.deal_records import DealRecords

            async with ledger_database(settings) as database:
                stage = await record(client, deal_id, signal, payload, DealRecords(database))
            out.print(f"{deal_id}: {signal.value} recorded; stage is now {Stage(stage).value}")

        parameters = [
            p for p in inspect.signature(build).parameters.values() if p.name != "settings"
        ]
        settings = inspect.Parameter("settings", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        run.__signature__ = inspect.Signature([parameters[0], settings, *parameters[1:]])  # type: ignore[attr-defined]
        run.__annotations__ = {**build.__annotations__}
        run.__doc__ = help_text
        app.command(name, help=help_text)(_run(run))
        return build

    return register


DealId = typer.Argument(..., help="The deal id given at start.")
Note = typer.Option("", "--note", help="Free text kept in the stage history.")
Source = typer.Option("ops", "--source", help="Who reports the signal (kept for audit).")


# --- commands ---


@app.command()
@_run
async def start(
    client: Client,
    settings: Settings,
    deal_id: str = typer.Option(None, "--id", help="Deal id (letters, digits, . _ -)."),
    company: str = typer.Option(None, help="The buyer's company."),
    contact: list[str] = typer.Option(None, help="'Name <email>'; repeat for several."),
    time_zone: str = typer.Option("UTC", "--tz", help="The buyer's IANA time zone."),
    owner: str = typer.Option(None, help="The rep's email (default DEALFLOW_REP_ADDRESS)."),
    kind: InquiryKind = typer.Option(None, help="rfi, rfp or rfq."),
    currency: str = typer.Option(None, help="ISO currency code (default EUR)."),
    item: list[str] = typer.Option(None, help="NAME:QTY:LIST_PRICE[:FLOOR]; repeat."),
    file: Path = typer.Option(None, help="A JSON deal file (fields of DealInput)."),
    demo: bool = typer.Option(False, help="Use the demo cadence (seconds, not days)."),
) -> None:
    """Start one deal from flags or a JSON deal file."""
    fields: dict[str, Any] = read_deal_file(file) if file else {}
    flags = {"deal_id": deal_id, "company": company, "owner": owner, "currency": currency}
    fields.update({key: value for key, value in flags.items() if value})
    if kind:
        fields["kind"] = kind.value
    if contact:
        fields["contacts"] = [parse_contact(text, time_zone) for text in contact]
    if item:
        fields["items"] = [i.model_dump() for i in parse_items(item)]
    if demo:
        fields["cadence"] = {**demo_cadence().model_dump(), **fields.get("cadence", {})}
        fields.setdefault("calendar", None)  # the demo runs at any hour
    deal = build_deal(settings, fields)
    async with suppression_list(settings) as suppressions:
        await start_deal(client, settings, deal, suppressions)
        out.print(f"{deal.deal_id}: started as {deal.kind.value.upper()} for {deal.company}")
        for entry in await suppressed_contacts(suppressions, deal):
            err.print(
                f"dealflow: warning: {entry.describe()}: the deal will not email them",
                soft_wrap=True,
            )


@app.command("bulk-start")
@_run
async def bulk_start_command(
    client: Client,
    settings: Settings,
    csv_file: Path = typer.Argument(..., help=f"CSV with columns: {', '.join(CSV_COLUMNS)}."),
) -> None:
    """Start many deals from a CSV file; bad rows are reported, the rest start."""
    # UTF-8 (with or without Excel's BOM), comma or semicolon: see deal_intake.read_csv.
    records = read_csv(csv_file)
    unread = [(r.line, r.deal_id, r.problem) for r in records if r.problem]
    rows = [r.cells for r in records if not r.problem]
    lines = [r.line for r in records if not r.problem]
    columns = [
        TextColumn("starting deals"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task("start", total=len(records))
        progress.advance(bar, len(unread))
        result = await bulk_start(client, settings, rows, lambda: progress.advance(bar), lines)
    result.failed = sorted(result.failed + unread)
    out.print(f"started {len(result.started)} of {len(records)} deals")
    if result.failed:
        table = Table("line", "deal", "problem", title="rows not started")
        for line, deal_id, reason in result.failed:
            table.add_row(str(line), deal_id or "-", reason)
        err.print(table)
        raise Refused(f"{len(result.failed)} row(s) not started; fix them and run again")


@_signal_command(
    "clarified",
    BuyerSignal.REQUIREMENTS_CLARIFIED,
    "RFI: the buyer clarified requirements; the proposal goes out.",
)
async def _clarified(
    client: Client,
    deal_id: str = DealId,
    item: list[str] = typer.Option(None, help="NAME:QTY:LIST_PRICE[:FLOOR]; repeat."),
    note: str = Note,
    source: str = Source,
) -> RequirementsClarified:
    return _payload(RequirementsClarified, items=parse_items(item or []), note=note, source=source)


@_signal_command(
    "declined",
    BuyerSignal.DECLINED_TO_TALK,
    "RFI: the buyer declined a call; the general offer goes out.",
)
async def _declined(
    client: Client, deal_id: str = DealId, note: str = Note, source: str = Source
) -> DeclinedToTalk:
    return _payload(DeclinedToTalk, note=note, source=source)


@_signal_command(
    "discount",
    BuyerSignal.DISCOUNT_REQUESTED,
    "RFQ: the buyer asks for a discount (percent off the list total); refused below the floor.",
)
async def _discount(
    client: Client,
    deal_id: str = DealId,
    percent: str = typer.Argument(..., help="Discount in percent, e.g. 7.5."),
    note: str = Note,
    source: str = Source,
) -> DiscountRequested:
    return _payload(DiscountRequested, percent=percent, note=note, source=source)


@_signal_command(
    "agreed", BuyerSignal.PRICE_AGREED, "The buyer agreed the price; the final offer goes out."
)
async def _agreed(
    client: Client, deal_id: str = DealId, note: str = Note, source: str = Source
) -> PriceAgreed:
    return _payload(PriceAgreed, note=note, source=source)


@_signal_command(
    "next-step",
    BuyerSignal.NEXT_STEP_AGREED,
    "The buyer named the next contact date; it replaces the next follow-up's delay.",
)
async def _next_step(
    client: Client,
    deal_id: str = DealId,
    when: str = typer.Argument(..., help="ISO date (09:00 buyer-local) or date-time."),
    note: str = Note,
    source: str = Source,
) -> NextStepAgreed:
    zone = (await status(client, deal_id)).buyer_time_zone
    return _payload(NextStepAgreed, at=local_moment(when, zone), note=note, source=source)


@_signal_command(
    "order",
    BuyerSignal.ORDER_PLACED,
    "The buyer placed the order; confirmation and fulfilment hand-over go out.",
)
async def _order(
    client: Client,
    deal_id: str = DealId,
    delivery: str = typer.Option(..., help="Promised delivery date (ISO)."),
    value: str = typer.Option(None, help="Order value (default: the offered price)."),
    po: str = typer.Option("", help="The buyer's purchase-order number."),
    note: str = Note,
    source: str = Source,
) -> OrderPlaced:
    return _payload(
        OrderPlaced,
        delivery_date=parse_date(delivery),
        order_value=value,
        purchase_order=po,
        note=note,
        source=source,
    )


@_signal_command(
    "delivery-date",
    BuyerSignal.DELIVERY_DATE_CHANGED,
    "The delivery date moved; the buyer is told (after delivery: corrects it).",
)
async def _delivery_date(
    client: Client,
    deal_id: str = DealId,
    new_date: str = typer.Argument(..., help="The new delivery date (ISO)."),
    reason: str = typer.Option(..., help="Why it moved (told to the buyer)."),
    note: str = Note,
    source: str = Source,
) -> DeliveryDateChanged:
    return _payload(
        DeliveryDateChanged,
        delivery_date=parse_date(new_date),
        reason=reason,
        note=note,
        source=source,
    )


@_signal_command(
    "delivered",
    BuyerSignal.DELIVERED,
    "The order was delivered; delivery notice, invoice task, check-in planned.",
)
async def _delivered(
    client: Client,
    deal_id: str = DealId,
    at: str = typer.Option(None, help="When it was delivered (ISO; default now)."),
    note: str = Note,
    source: str = Source,
) -> Delivered:
    moment = None
    if at:
        moment = local_moment(at, (await status(client, deal_id)).buyer_time_zone)
    return _payload(Delivered, delivered_at=moment, note=note, source=source)


@_signal_command(
    "interview",
    BuyerSignal.INTERVIEW_RECORDED,
    "Record the win-loss interview's answers (ends a won deal).",
)
async def _interview(
    client: Client,
    deal_id: str = DealId,
    why: str = typer.Option(..., help="Why the buyer decided as they did."),
    process: str = typer.Option(..., help="How their decision process went."),
    rep: str = typer.Option(..., help="How they rate the rep, 1 (poor) to 5 (excellent)."),
    cooperation: str = typer.Option(..., help="How they rate the cooperation, 1 to 5."),
    reason: list[str] = typer.Option(
        None, help="A decision reason code (price, lead_time, quality...); repeat."
    ),
    participants: str = typer.Option("", help="Who took part, on the buyer's side and ours."),
    note: str = typer.Option("", "--note", help="The buyer's own words, free text."),
    source: str = Source,
) -> InterviewRecorded:
    for code in reason or []:
        _checked(bounds.check_code, "--reason", code)
    return _payload(
        InterviewRecorded,
        why_decided=why,
        decision_process=process,
        rep_rating=_rating("--rep", rep),
        cooperation_rating=_rating("--cooperation", cooperation),
        reasons=sorted(set(reason or [])),
        participants=participants,
        note=note,
        source=source,
    )


def _rating(flag: str, text: str) -> int:
    if text.strip() not in ("1", "2", "3", "4", "5"):
        raise BadInput(f"{flag} {text[:40]!r}: give a whole number from 1 (poor) to 5 (excellent)")
    return int(text)


def _checked(check: Callable[[str, str], None], flag: str, value: str) -> None:
    try:
        check(flag, value)
    except ValueError as error:
        raise BadInput(str(error)) from None


def _closing(name: str, signal: BuyerSignal, help_text: str) -> None:
    async def build(
        client: Client,
        deal_id: str = DealId,
        reason: str = typer.Option(..., help="Why (kept on the deal)."),
        note: str = Note,
        source: str = Source,
    ) -> Closed:
        return _payload(Closed, reason=reason, note=note, source=source)

    build.__name__ = f"_{name}"
    _signal_command(name, signal, help_text)(build)


@_signal_command(
    "lost", BuyerSignal.LOST, "The buyer chose not to buy; loss interview if selected."
)
async def _lost(
    client: Client,
    deal_id: str = DealId,
    reason: str = typer.Option(..., help="Why, as a code of DEALFLOW_LOST_REASONS."),
    note: str = typer.Option("", "--note", help="Why, in words (needed with --reason other)."),
    source: str = Source,
    *,
    settings: Settings,
) -> Closed:
    codes = settings.lost_reason_codes
    if reason not in codes:
        raise BadInput(
            f"--reason {reason[:40]!r} is not a lost reason; use one of {', '.join(codes)} "
            "(DEALFLOW_LOST_REASONS lists them)"
        )
    if reason == "other" and not note.strip():
        raise BadInput("--reason other needs --note saying why the deal was lost")
    return _payload(Closed, reason=note or reason, code=reason, source=source)


_closing("disqualify", BuyerSignal.DISQUALIFIED, "The buyer does not fit; the deal ends.")
_closing("cancel", BuyerSignal.CANCELLED, "Ops cancel: the deal ends and sends nothing more.")


@_signal_command(
    "replied",
    BuyerSignal.BUYER_REPLIED,
    "A contact of the deal replied: follow-ups stop and the rep takes over.",
)
async def _replied(
    client: Client,
    deal_id: str = DealId,
    contact: str = typer.Option("", help="Which contact replied (default: the main one)."),
    note: str = Note,
    source: str = Source,
) -> BuyerReplied:
    return _payload(BuyerReplied, contact=contact, note=note, source=source)


@_signal_command(
    "away",
    BuyerSignal.OUT_OF_OFFICE,
    "The buyer is out of office: follow-ups wait until the return date.",
)
async def _away(
    client: Client,
    deal_id: str = DealId,
    until: str = typer.Option(None, help="Return date (ISO; default: the cadence's pause)."),
    note: str = Note,
    source: str = Source,
) -> OutOfOffice:
    moment = None
    if until:
        moment = local_moment(until, (await status(client, deal_id)).buyer_time_zone)
    return _payload(OutOfOffice, until=moment, note=note, source=source)


@app.command("optout")
@_run
async def optout(
    client: Client,
    settings: Settings,
    deal_id: str = DealId,
    address: str = typer.Option(None, help="Which contact opted out (default: the main one)."),
    note: str = Note,
    source: str = Source,
) -> None:
    """The buyer opted out: the address is never mailed again, from any deal."""
    from ledger.suppression_list import SuppressionReason, SuppressionSource

    signal = _payload(OptedOut, address=address, note=note, source=source)
    try:
        deal: DealStatus | None = await status(client, deal_id)
    except (NoSuchDeal, DealClosed):
        deal = None  # the list holds for every deal: write it all the same
    if deal is None and signal.address is None:
        raise BadInput(f"deal {deal_id!r} is closed or unknown: name the address with --address")
    if deal is not None:
        contacts = [contact.lower() for contact in deal.contacts]
        if signal.address is not None and str(signal.address).lower() not in contacts:
            raise Refused(f"{signal.address} is not a contact of deal {deal_id!r}")
    chosen = str(signal.address) if signal.address else deal.contacts[0]  # type: ignore[union-attr]
    # The list first, at once: every deal and every worker honours it from this commit on,
    # whatever this deal is doing (its outbox may be held for hours).
    async with suppression_list(settings) as suppressions:
        entry = await suppressions.add(
            chosen,
            SuppressionReason.OPTED_OUT,
            SuppressionSource.CLI,
            now=datetime.now(UTC),
            detail=note or f"reported by {source}",
            deal_id=deal_id,
        )
    out.print(f"{entry.address}: on the suppression list for every deal", soft_wrap=True)
    try:
        stage = await record(client, deal_id, BuyerSignal.OPTED_OUT, signal)
    except (NoSuchDeal, DealClosed) as closed:
        out.print(f"{deal_id}: not told ({closed})", soft_wrap=True)
        return
    told = BuyerSignal.OPTED_OUT.value
    out.print(f"{deal_id}: {told} recorded; stage is now {Stage(stage).value}")


@_signal_command("skip", BuyerSignal.TOUCH_SKIPPED, "Skip the deal's next follow-up touch.")
async def _skip(
    client: Client, deal_id: str = DealId, note: str = Note, source: str = Source
) -> SignalPayload:
    return _payload(SignalPayload, note=note, source=source)


async def owner_deals(client: Client, owner: str) -> list[str]:
    """Ids of the open deals of one rep, from visibility."""
    query = (
        f"WorkflowType = 'DealWorkflow' AND ExecutionStatus = 'Running' AND {owner_filter(owner)}"
    )
    return [e.id.removeprefix("deal-") async for e in client.list_workflows(query)]


async def _hold_command(
    client: Client,
    signal: BuyerSignal,
    deal_id: str | None,
    owner: str | None,
    build: Callable[[str], Awaitable[BaseModel]],
) -> None:
    if bool(deal_id) == bool(owner):
        raise BadInput("name one deal, or all deals of a rep with --owner")
    deal_ids = [deal_id] if deal_id else await owner_deals(client, owner or "")
    done, refused = 0, []
    for one in deal_ids:
        try:
            await record(client, one, signal, await build(one))
            done += 1
        except Refused as error:
            refused.append(str(error))
    if deal_id and refused:
        raise Refused(refused[0])
    out.print(f"{signal.value}: {done} deal(s)")
    for reason in refused:
        err.print(f"skipped: {reason}", soft_wrap=True)


@app.command()
@_run
async def pause(
    client: Client,
    settings: Settings,
    deal_id: str = typer.Argument(None, help="The deal to pause."),
    owner: str = typer.Option(None, help="Pause every open deal of this rep instead."),
    until: str = typer.Option(None, help="Resume by itself then (ISO date, buyer-local)."),
    note: str = Note,
) -> None:
    """Pause a deal, or all deals of a rep (holiday): nothing is sent until resumed."""

    async def build(one: str) -> BaseModel:
        zone = (await status(client, one)).buyer_time_zone
        moment = local_moment(until, zone) if until else None
        return _payload(Paused, until=moment, note=note)

    await _hold_command(client, BuyerSignal.PAUSED, deal_id, owner, build)


@app.command()
@_run
async def resume(
    client: Client,
    settings: Settings,
    deal_id: str = typer.Argument(None, help="The deal to resume."),
    owner: str = typer.Option(None, help="Resume every paused deal of this rep instead."),
    note: str = Note,
) -> None:
    """Resume a paused deal (or a rep's deals): steps that came due go out once."""

    async def build(one: str) -> BaseModel:
        return _payload(SignalPayload, note=note)

    await _hold_command(client, BuyerSignal.RESUMED, deal_id, owner, build)


@app.command()
@_run
async def resend(
    client: Client,
    settings: Settings,
    deal_id: str = DealId,
    delivered: list[str] = typer.Option(
        [],
        "--delivered",
        metavar="MESSAGE-ID",
        help="A held (maybe sent) email the relay's log shows delivered (its Message-ID "
        "as the log or the deal's status shows it): marked sent, not sent again. Repeat for "
        "several.",
    ),
    note: str = Note,
) -> None:
    """Send again the deal's emails that failed for good, once the cause is fixed.

    An email held as maybe sent goes out again under its own Message-ID, unless
    --delivered names it: then the deal counts it sent and moves on.
    """
    from ledger.send_ledger import NotHeld, SendLedger

    deal = await status(client, deal_id)
    held = {_bare(m.message_id): m.message_id for m in _held_emails(deal)}
    signer = settings.token_signer()
    chosen = []
    for given in delivered:
        # The relay's log shows the sealed id on the wire; the deal knows its own.
        wanted = signer.open_message_id(f"<{given.strip().strip('<>')}>") or given
        if _bare(wanted) not in held:
            holding = ", ".join(held.values()) or "none"
            raise Refused(
                f"{wanted} is not an email deal {deal_id!r} holds as maybe sent (held: {holding})"
            )
        chosen.append(held[_bare(wanted)])
    if chosen:
        why = note or "found in the relay's log"
        async with ledger_database(settings) as database:
            ledger = SendLedger(database)
            for message_id in chosen:
                try:
                    await ledger.mark_delivered(message_id, why, datetime.now(UTC))
                except NotHeld as error:
                    raise Refused(str(error)) from None
                out.print(f"{message_id}: marked delivered; it is not sent again", soft_wrap=True)
    count = await record(client, deal_id, RESEND_FAILED, _payload(SignalPayload, note=note))
    out.print(f"{deal_id}: {count} email(s) queued again")


def _bare(message_id: str) -> str:
    return message_id.strip().strip("<>").lower()


def _held_emails(deal: DealStatus) -> list[MessageRecord]:
    """The deal's emails whose latest send was held by the ledger as maybe sent."""
    latest = {m.message_id: m for m in deal.messages if m.message_id}
    return [
        m
        for m in latest.values()
        if m.outcome == "failed" and m.error.startswith(f"{FailureType.MAYBE_SENT}:")
    ]


@app.command("status")
@_run
async def status_command(
    client: Client,
    settings: Settings,
    deal_id: str = DealId,
    json: bool = typer.Option(False, "--json", help="Print the full status as JSON."),
) -> None:
    """Where a deal stands: stage, history, next touch, emails sent, problems (from the
    ledger once Temporal has forgotten a closed deal)."""
    try:
        deal = await status(client, deal_id)
    except NoSuchDeal:
        from ledger.kept_deals import kept_deal

        async with ledger_database(settings) as database:
            kept = await kept_deal(database, deal_id)
        if kept is None:
            raise
        _print_kept(kept, json)
        return
    if json:
        out.print_json(deal.model_dump_json())
        return
    out.print(
        f"{deal.deal_id} {deal.company} ({deal.kind.value.upper()}) "
        f"owner {deal.owner}\nstage: {deal.stage.value}  "
        f"value: {deal.currency} {deal.value:,.2f}"
        + (f"  discount {deal.discount_percent}%" if deal.discount_percent else "")
        + (f"\noutcome: {deal.outcome_reason}" if deal.outcome_reason else "")
    )
    if deal.next_touch:
        out.print(f"next: {deal.next_touch.what} at {_when(deal.next_touch.at)}")
    history = Table("time", "stage", "signal", "source", "note", title="history")
    for change in deal.history:
        history.add_row(
            _when(change.at), change.stage.value, change.signal, change.source, change.note
        )
    out.print(history)
    messages = Table("time", "step", "to", "outcome", "subject / error", title="emails")
    for message in deal.messages:
        messages.add_row(
            _when(message.at), message.step, ", ".join(message.to), message.outcome,
            message.error or message.subject,
        )  # fmt: skip
    out.print(messages)
    for problem in deal.problems:
        err.print(f"problem: {problem}")
    for late in deal.sending_problems:
        err.print(f"sending: {late}", soft_wrap=True)


def _print_kept(deal: KeptDeal, json: bool) -> None:
    if json:
        out.print_json(deal.model_dump_json())
        return
    out.print(
        f"{deal.deal_id} {deal.company} ({deal.kind.upper()}) owner {deal.owner}\n"
        f"stage: {deal.stage}  value: {deal.currency} {deal.value:,.2f}"
        + (f"\noutcome: {deal.outcome_note}" if deal.outcome_note else "")
        + (f" (reason: {deal.lost_reason})" if deal.lost_reason else "")
    )
    err.print(
        "from the ledger: Temporal no longer holds this deal (a closed deal leaves it when "
        "the namespace's retention ends); emails are shown without their addresses",
        soft_wrap=True,
    )
    history = Table("time", "stage", "signal", "source", "note", title="history")
    for event in deal.events:
        stage = event.to_stage or f"refused: {event.refusal}"
        history.add_row(_when(event.at), stage, event.signal, event.source, event.note)
    out.print(history)
    emails = Table("time", "step", "recipients", "outcome", title="emails")
    for email in deal.emails:
        emails.add_row(_when(email.at), email.step, str(email.recipients), email.outcome)
    out.print(emails)
    if deal.interview:
        answers = deal.interview
        out.print(
            f"interview {_when(answers.recorded_at)}: rep {answers.rep_rating or '-'}/5, "
            f"cooperation {answers.cooperation_rating or '-'}/5, "
            f"reasons {', '.join(answers.reasons) or '-'}\nwhy: {answers.why_decided}",
            soft_wrap=True,
        )


@app.command("plan")
@_run
async def plan_command(client: Client, settings: Settings, deal_id: str = DealId) -> None:
    """Every email the deal will send on its own, with buyer-local and UTC times."""
    current = await status(client, deal_id)
    handle = client.get_workflow_handle(workflow_id(deal_id))
    try:
        planned = await handle.query(PLAN, result_type=list[PlannedSend])
    except RPCError as error:
        raise await _explain_rpc(client, deal_id, error) from None
    zone = ZoneInfo(current.buyer_time_zone)
    table = Table("buyer-local", "UTC", "step", "template", "to", title=f"plan for {deal_id}")
    for send in planned:
        local = send.at.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")
        table.add_row(local, _when(send.at), send.step, send.template, ", ".join(send.to))
    out.print(table)
    if not planned:
        out.print("nothing planned: the deal waits for a buyer signal")


@app.command("inbox")
@_run
async def inbox_command(
    client: Client,
    settings: Settings,
    limit: int = typer.Option(30, "--limit", min=1, help="How many of the latest messages."),
    poll: bool = typer.Option(False, "--poll", help="Read the mailbox now, then show."),
) -> None:
    """Recent inbound messages: class, the deal each matched (or why none), what was done."""
    if poll:
        await client.get_workflow_handle(MAILBOX_POLLER_ID).signal(POLL_NOW)
        await asyncio.sleep(2)
    report = await inbox(client)
    if report.trouble:
        err.print(f"dealflow: {report.trouble}", soft_wrap=True)
    table = Table("read", "from", "subject", "class", "deal", "outcome", title=report.mailbox)
    for entry in report.recent[-limit:]:
        deal = f"{entry.deal_id} ({entry.how})" if entry.deal_id else "-"
        table.add_row(
            _when(entry.read_at), entry.sender, entry.subject, f"{entry.kind.value}: {entry.why}",
            deal, entry.outcome,
        )  # fmt: skip
    out.print(table)
    cursor = report.cursor
    out.print(f"{report.polls} reads this run; UIDVALIDITY {cursor.uid_validity}, "
              f"last UID {cursor.last_uid}")  # fmt: skip


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command("pipeline")
@_run
async def pipeline_command(
    client: Client,
    settings: Settings,
    owner: str = typer.Option(None, help="Only this rep's deals."),
    json: bool = typer.Option(False, "--json", help="Print it as JSON."),
) -> None:
    """Open deals per stage and currency, closed ones apart, per owner, and the stale
    deals (from Temporal visibility: the deals Temporal still holds)."""
    from pipeline import OVERDUE_AFTER, currency_totals, pipeline

    now = datetime.now(UTC)
    view = await pipeline(client, now, owner_filter(owner) if owner else None)
    if json:
        out.print_json(view.model_dump_json())
        return
    for title, rows in (("open deals", view.open), ("closed deals", view.closed)):
        table = Table("stage", "currency", "deals", "value", title=title)
        for row in [*rows, *currency_totals(rows).values()]:
            table.add_row(row.stage, row.currency, str(row.deals), f"{row.value:,.2f}")
        out.print(table)
    owners = Table("owner", "currency", "open", "open value", "won", "won value", title="owners")
    for person in view.owners:
        owners.add_row(
            person.owner, person.currency, str(person.open_deals), f"{person.open_value:,.2f}",
            str(person.won_deals), f"{person.won_value:,.2f}",
        )  # fmt: skip
    out.print(owners)
    hours = OVERDUE_AFTER.total_seconds() / 3600
    stale = Table(
        "deal", "owner", "stage", "next touch",
        title=f"stale: nothing planned, or the next touch over {hours:g} h late",
    )  # fmt: skip
    for deal in view.stale:
        touch = _when(deal.next_touch) if deal.next_touch else "nothing planned"
        stale.add_row(deal.deal_id, deal.owner, deal.stage, touch)
    out.print(stale)
    out.print("closed deals leave Temporal after the namespace's retention: see 'report'")


def main() -> None:
    code = 0
    try:
        app()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except KeyboardInterrupt:
        code = 130
    # A short-lived process that used a temporalio client can abort in the interpreter's
    # teardown after the command succeeded (temporalio/sdk-python#300): skip the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


db_app = typer.Typer(no_args_is_help=True, help="The ledger database (DEALFLOW_DATABASE_URL).")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the ledger to the schema this version needs (safe to run again)."""
    # Imported here: SQLAlchemy and Alembic would slow down every other command.
    from ledger import schema
    from ledger.database import LedgerProblem, display

    settings = load_settings()
    try:
        before, now = asyncio.run(schema.upgrade(settings.ledger_url))
    except LedgerProblem as problem:
        err.print(f"dealflow: {problem}", soft_wrap=True)
        raise typer.Exit(1) from None
    where = display(settings.ledger_url)
    if before == now:
        out.print(f"ledger {where}: schema {now}, up to date", soft_wrap=True)
    else:
        out.print(f"ledger {where}: schema {before or 'none'} -> {now}", soft_wrap=True)


# The managers' reports and exports read only the ledger: their own module.
app.add_typer(report_app, name="report")
app.add_typer(export_app, name="export")


dashboard_app = typer.Typer(no_args_is_help=True, help="The managers' dashboard.")
app.add_typer(dashboard_app, name="dashboard")
# A dashboard password shorter than this is refused: the page shows every deal.
MIN_DASHBOARD_PASSWORD = 12


@dashboard_app.command("hash-password")
def dashboard_hash_password(
    name: str = typer.Argument(..., help="The user's name (letters, digits, . _ @ + -)."),
    stdin: bool = typer.Option(
        False, "--stdin", help="Read the password from the first line of standard input."
    ),
) -> None:
    """Print NAME:ARGON2_HASH, an entry of DEALFLOW_DASHBOARD_USERS."""
    from dashboard.access import hash_password
    from settings import DASHBOARD_USER

    if not DASHBOARD_USER.fullmatch(name):
        err.print(
            f"dealflow: {name[:70]!r} is not a user name; use letters, digits and . _ @ + - "
            "(at most 64)",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_DASHBOARD_PASSWORD:
        err.print(
            f"dealflow: the password is {len(password)} characters, it needs at least "
            f"{MIN_DASHBOARD_PASSWORD}; choose a longer one",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    out.print(f"{name}:{hash_password(password)}", soft_wrap=True)


ledger_app = typer.Typer(no_args_is_help=True, help="The deal records in the ledger.")
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("backfill")
@_run
async def ledger_backfill(client: Client, settings: Settings) -> None:
    """Write the records of every deal Temporal still holds (safe to run again)."""
    from ledger.backfill import backfill
    from ledger.deal_records import DealRecords

    async with ledger_database(settings) as database:
        done = await backfill(client, DealRecords(database))
    for line in done.failed:
        err.print(f"dealflow: warning: {line}", soft_wrap=True)
    out.print(
        f"backfilled {done.open + done.closed} deals ({done.open} open, {done.closed} closed)"
        + (f"; {done.never_ran} never ran (nothing to record)" if done.never_ran else "")
        + (f"; {len(done.failed)} could not be read (above)" if done.failed else "")
    )
    if done.failed:
        raise typer.Exit(1)


suppression_app = typer.Typer(
    no_args_is_help=True, help="The global suppression list (opt-outs and hard bounces)."
)
app.add_typer(suppression_app, name="suppression")


def _ledger_command(command: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async command on the ledger's suppression list; failures become one line."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        settings = load_settings()

        async def main() -> None:
            async with suppression_list(settings) as suppressions:
                await command(suppressions, *args, **kwargs)

        try:
            asyncio.run(main())
        except (Refused, BadInput, LedgerProblem) as error:
            err.print(f"dealflow: {error}", soft_wrap=True)
            raise typer.Exit(1) from None

    signature = inspect.signature(command)
    first, *rest = signature.parameters.values()
    wrapper.__signature__ = signature.replace(parameters=rest)  # type: ignore[attr-defined]
    # Typer reads the hints too; the list's type is only imported when a command runs.
    wrapper.__annotations__ = {
        name: hint for name, hint in command.__annotations__.items() if name != first.name
    }
    return wrapper


Address = typer.Argument(..., help="The email address.")


def _normalized(address: str) -> str:
    from ledger.addresses import NotAnAddress, normalized_address

    try:
        return normalized_address(address)
    except NotAnAddress as error:
        raise BadInput(str(error)) from None


@suppression_app.command("list")
@_ledger_command
async def suppression_list_command(
    suppressions: SuppressionList,
    lifted: bool = typer.Option(False, "--lifted", help="Show lifted entries too."),
) -> None:
    """Every suppressed address, newest first."""
    entries = await suppressions.entries(lifted=lifted)
    table = Table("address", "reason", "source", "deal", "since", "lifted")
    for entry in entries:
        table.add_row(
            entry.address or "(erased)",
            entry.reason.value.replace("_", " "),
            entry.source,
            entry.deal_id or "-",
            _when(entry.suppressed_at),
            _when(entry.lifted_at) if entry.lifted_at else "",
        )
    out.print(table)
    out.print(f"{sum(e.standing for e in entries)} address(es) suppressed")


@suppression_app.command("show")
@_ledger_command
async def suppression_show(suppressions: SuppressionList, address: str = Address) -> None:
    """One address's entry: why, from where, since when (and whether it was lifted)."""
    entry = await suppressions.show(_normalized(address))
    if entry is None:
        raise Refused(f"{_normalized(address)} is not on the suppression list")
    out.print(f"address:   {entry.address or '(erased)'}", soft_wrap=True)
    out.print(f"reason:    {entry.reason.value.replace('_', ' ')}")
    out.print(f"source:    {entry.source}")
    out.print(f"deal:      {entry.deal_id or '-'}")
    out.print(f"since:     {_when(entry.suppressed_at)}")
    out.print(f"detail:    {entry.detail}", soft_wrap=True)
    if entry.lifted_at:
        out.print(f"lifted:    {_when(entry.lifted_at)}: {entry.lift_reason}", soft_wrap=True)
        out.print("state:     lifted (mail may go to this address again)")
    else:
        out.print("state:     suppressed (no deal mails this address)")


@suppression_app.command("lift")
@_ledger_command
async def suppression_lift(
    suppressions: SuppressionList,
    address: str = Address,
    reason: str = typer.Option(..., "--reason", help="Why, for the audit (required)."),
) -> None:
    """Take an address off the list: deals may mail it again. The entry is kept, lifted."""
    from ledger.suppression_list import NotSuppressed

    if not reason.strip():
        raise BadInput("--reason must say why the address may be mailed again")
    try:
        entry = await suppressions.lift(_normalized(address), reason.strip(), datetime.now(UTC))
    except NotSuppressed as error:
        raise Refused(str(error)) from None
    out.print(f"{entry.address}: lifted ({reason.strip()})", soft_wrap=True)


@suppression_app.command("import-workflows")
@_run
async def suppression_import(client: Client, settings: Settings) -> None:
    """Move the SuppressedAddress workflows of earlier versions into the ledger, then end
    them (run once after upgrading; safe to run again)."""
    from ledger.suppression_list import SuppressionReason, SuppressionSource

    query = f'WorkflowType = "{LEGACY_SUPPRESSION_WORKFLOW}" AND ExecutionStatus = "Running"'
    moved = 0
    async with suppression_list(settings) as suppressions:
        async for execution in client.list_workflows(query):
            text = await execution.memo_value("entry", None, type_hint=str)
            if text is None:
                err.print(f"dealflow: warning: {execution.id} has no entry; left running")
                continue
            legacy = LegacySuppression.model_validate_json(text)
            await suppressions.add(
                legacy.address,
                SuppressionReason(legacy.reason),
                SuppressionSource.IMPORTED,
                now=legacy.at,
                detail=legacy.detail,
                deal_id=legacy.deal_id,
            )
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
            with contextlib.suppress(RPCError):  # ended meanwhile: nothing left to end
                await handle.terminate(reason="moved to the ledger's suppression list")
            moved += 1
    out.print(f"{moved} suppressed address(es) moved into the ledger")


def _confirmed(question: str) -> bool:
    try:
        return typer.confirm(question)
    except typer.Abort:  # no terminal, or end of input: not a yes
        return False


@app.command("forget")
@_ledger_command
async def forget_command(
    suppressions: SuppressionList,
    address: str = Address,
    yes: bool = typer.Option(False, "--yes", help="Erase without asking (it cannot be undone)."),
) -> None:
    """Erase a person (GDPR): their name and address leave every deal record; the address
    stays suppressed by its keyed hash, so it is never mailed again."""
    from ledger.erasure import forget

    normal = _normalized(address)
    if not yes and not _confirmed(f"erase {normal} from every deal record for good?"):
        raise Refused("nothing erased (confirm, or pass --yes)")
    forgotten = await forget(suppressions, normal, datetime.now(UTC))
    deals = ", ".join(forgotten.deals) or "none"
    out.print(
        f"{normal}: forgotten in {len(forgotten.deals)} deal(s) ({deals}): "
        f"{forgotten.contacts} contact record(s), {forgotten.texts} text(s) scrubbed, "
        f"{forgotten.links} unsubscribe link(s) deleted; "
        "still suppressed (by keyed hash), never mailed again",
        soft_wrap=True,
    )
    for deal_id in forgotten.open_deals:
        out.print(
            f"{deal_id}: still open; Temporal keeps this person in the deal's history until it "
            f"ends and the namespace retention passes ('starter.py cancel {deal_id}' ends it)",
            soft_wrap=True,
        )


if __name__ == "__main__":
    main()
