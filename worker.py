"""Runs a Dealflow worker against the configured Temporal server.

``python worker.py --dev`` (what ``make dev`` runs) also starts the embedded
stack: Temporal's dev server with a SQLite file under the data directory, and a
local SMTP sink that writes every email as ``.eml`` into the outbox folder.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import AsyncExitStack
from datetime import timedelta

import typer
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

import context_free_converter
import sandbox_code_cache
import worker_heap
from activities.deal_records import DealRecorder
from activities.mailbox import ImapEndpoint, MailboxProblem, MailboxReader
from activities.mailbox_quota import MailboxQuota
from activities.mailer import BuyerLinks, Mailer, Sender, unsubscribe_mailbox
from activities.rendering import TemplateLibrary
from activities.smtp_pool import SmtpEndpoint, SmtpPool
from activities.suppression import SuppressionWriter
from connection import TemporalUnreachable, connect
from dashboard.server import DashboardUnavailable, running_dashboard
from devstack import DevServer, LocalMailbox, OutboxSink
from endpoints import EndpointsUnavailable, running_endpoints
from ledger import schema
from ledger.database import LedgerDatabase, LedgerProblem, display
from ledger.send_ledger import SendLedger
from ledger.suppression_list import SuppressionList
from settings import ImapTls, Settings, SmtpTls, load_settings
from workflows.deal import DealWorkflow
from workflows.mailbox_poller import (
    MAILBOX_POLLER_ID,
    MailboxPollerState,
    MailboxPollerWorkflow,
)
from workflows.mailbox_quota import MailboxQuotaWorkflow


def build_mailer(settings: Settings) -> Mailer:
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    endpoint = SmtpEndpoint(
        host=settings.smtp_host,
        port=settings.smtp_port,
        tls=settings.smtp_tls.value,
        username=settings.smtp_username,
        password=password,
        timeout=settings.smtp_timeout,
    )
    sender = Sender(
        name=settings.sender_name,
        address=str(settings.sender_address),
        company=settings.company_name,
        postal_address=settings.company_postal_address,
        reply_to=str(settings.reply_to) if settings.reply_to else None,
    )
    links = BuyerLinks(
        signer=settings.token_signer(),
        reply_base=settings.reply_base,
        public_url=settings.public_url,
    )
    # One database for the worker's sends, its suppression look-ups and its mailbox reader.
    database = LedgerDatabase(settings.ledger_url)
    return Mailer(
        sender,
        TemplateLibrary(settings.templates_dir),
        SmtpPool(endpoint, settings.smtp_pool_size),
        suppressions=SuppressionList(database),
        links=links,
        ledger=SendLedger(database),
    )


def build_mailbox_reader(
    settings: Settings, suppressions: SuppressionList | None = None
) -> MailboxReader | None:
    """The IMAP side of the poller, when a reply mailbox is configured."""
    if not settings.imap_host:
        return None
    password = settings.imap_password.get_secret_value() if settings.imap_password else ""
    endpoint = ImapEndpoint(
        host=settings.imap_host,
        port=settings.imap_port,
        tls=settings.imap_tls.value,
        username=settings.imap_username or "",
        password=password,
        folder=settings.imap_folder,
    )
    signer = settings.token_signer()
    own = {str(settings.sender_address), settings.reply_base}
    return MailboxReader(
        endpoint,
        signer,
        own_addresses=sorted(own),
        unsubscribe_address=unsubscribe_mailbox(settings.reply_base),
        domains=[settings.sender_domain],
        batch_size=settings.imap_batch_size,
        suppressions=suppressions,
    )


async def start_mailbox_poller(client: Client, settings: Settings) -> str:
    """Start the mailbox's poller workflow, or find the one already running; its id."""
    mailbox = f"{settings.imap_username}@{settings.imap_host}/{settings.imap_folder}"
    handle = await client.start_workflow(
        MailboxPollerWorkflow.run,
        MailboxPollerState(mailbox=mailbox, poll_every=settings.imap_poll_every),
        id=MAILBOX_POLLER_ID,
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return handle.id


def build_worker(
    client: Client,
    settings: Settings,
    mailer: Mailer | None = None,
    mailbox: MailboxReader | None = None,
    deal_workflow: type[DealWorkflow] = DealWorkflow,
) -> Worker:
    mailer = mailer or build_mailer(settings)
    mailbox = mailbox or build_mailbox_reader(settings, mailer.suppressions)
    if settings.send_cap_per_24h:
        sender = str(settings.sender_address)
        queue = settings.temporal_task_queue
        cap, window = settings.send_cap_per_24h, settings.send_cap_window
        mailer.quota = MailboxQuota(client, queue, sender, cap, window)
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[
            deal_workflow,
            MailboxQuotaWorkflow,
            MailboxPollerWorkflow,
        ],
        activities=[
            mailer.send_email,
            SuppressionWriter(mailer.suppressions).suppress,
            DealRecorder(mailer.suppressions.database if mailer.suppressions else None).record,
            *([mailbox.read_mailbox] if mailbox else []),
        ],
        max_cached_workflows=settings.max_cached_workflows,
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        workflow_runner=workflow_runner(),
    )


def build_send_worker(client: Client, settings: Settings, mailer: Mailer) -> Worker:
    """The worker of the send queue: the server holds it to the mailbox's send rate."""
    return Worker(
        client,
        task_queue=settings.send_task_queue,
        activities=[mailer.send_email],
        max_concurrent_activities=settings.max_concurrent_activities,
        max_task_queue_activities_per_second=settings.send_rate_per_second,
    )


# Workflow modules passed through the sandbox: imported once per worker, not per deal.
WORKFLOW_MODULES = ("workflows",)


def workflow_runner(*, isolated: bool = False) -> SandboxedWorkflowRunner:
    """The sandbox for deal workflows (the worker and the replay tests use the same).

    The sandbox re-imports a workflow's module for each workflow it runs unless the
    module is passed through: for ``workflows/deal.py`` that cost ~126 KiB and some
    milliseconds per open deal, half of a cached deal's memory. The worker passes
    ``workflows`` through (its modules hold no mutable globals, as the rest of the
    package already was); ``isolated=True`` re-imports them per workflow, with the
    sandbox's checks on non-deterministic calls, as the replay tests run it.
    """
    sandbox_code_cache.apply()
    # The sandbox's other per-payload cost: it is asked each payload's context.
    context_free_converter.apply()
    # pydantic's EmailStr imports these lazily; load them once, outside the sandbox.
    modules = ("email_validator", "idna", *(() if isolated else WORKFLOW_MODULES))
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*modules)
    return SandboxedWorkflowRunner(restrictions=restrictions)


async def serve(
    settings: Settings, http: bool = False, dev: bool = False, dashboard: bool = False
) -> None:
    mailer = build_mailer(settings)
    assert mailer.ledger is not None
    # The ledger first: a worker that cannot record its sends must not send at all.
    try:
        await schema.check(mailer.ledger.database)
        client = await connect(settings)
    except (LedgerProblem, TemporalUnreachable) as problem:
        print(f"worker: {problem}", file=sys.stderr)
        await mailer.ledger.database.dispose()
        raise SystemExit(1) from None
    worker = build_worker(client, settings, mailer)
    worker_heap.settle()
    print(
        f"worker: polling task queue '{settings.temporal_task_queue}' on "
        f"{settings.temporal_address}, namespace '{settings.temporal_namespace}'",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        async with AsyncExitStack() as running:
            await running.enter_async_context(worker)
            if settings.send_rate_per_second:
                await running.enter_async_context(build_send_worker(client, settings, mailer))
            if settings.imap_host:
                await check_mailbox(settings, dev=dev)
                poller = await start_mailbox_poller(client, settings)
                print(f"worker: reading replies from {settings.imap_host} ({poller})", flush=True)
            if http:
                try:
                    await running.enter_async_context(running_endpoints(settings, client))
                except EndpointsUnavailable as error:
                    print(f"worker: {error}", file=sys.stderr)
                    raise SystemExit(1) from None
            if dashboard:
                try:
                    url = await running.enter_async_context(running_dashboard(settings))
                except DashboardUnavailable as error:
                    print(f"worker: {error}", file=sys.stderr)
                    raise SystemExit(1) from None
                print(f"dev: dashboard       {url} (the managers' reports)", flush=True)
            await stop.wait()
        print("worker: stopped", flush=True)
    finally:
        await mailer.pool.close()
        await mailer.ledger.database.dispose()


async def check_mailbox(settings: Settings, dev: bool) -> None:
    """Log in to the reply mailbox once at start: a mailbox nobody can read must be loud.

    ``make dev`` stops (its own Dovecot should always let it in); a production worker
    says so and starts, and the poller keeps retrying and shows why in ``inbox``.
    """
    reader = build_mailbox_reader(settings, None)
    assert reader is not None
    try:
        await reader.check_login()
    except (MailboxProblem, ApplicationError) as problem:
        where = f"{settings.imap_username}@{settings.imap_host}:{settings.imap_port}"
        unseen = "replies, bounces and mailto opt-outs are not seen until it can"
        print(f"worker: the reply mailbox {where} cannot be read: {problem}; {unseen}",
              file=sys.stderr, flush=True)  # fmt: skip
        if dev:
            raise SystemExit(1) from None


async def serve_dev(settings: Settings) -> None:
    server = DevServer(
        port=settings.dev_temporal_port,
        ui_port=settings.dev_ui_port,
        db_file=settings.data_dir / "temporal.db",
    )
    mailbox = dev_mailbox(settings)
    local = (settings.reply_base, mailbox) if mailbox else None
    sink = OutboxSink(port=settings.dev_smtp_port, folder=settings.outbox_dir, local_mailbox=local)
    try:
        sink.start()
    except OSError as error:
        if mailbox:
            mailbox.stop()
        print(f"worker: cannot open the SMTP sink on port {sink.port}: {error}; "
              "set DEALFLOW_DEV_SMTP_PORT to a free port", file=sys.stderr)  # fmt: skip
        raise SystemExit(1) from None
    try:
        # The embedded ledger migrates itself, so `make dev` stays one command.
        before, now = await schema.upgrade(settings.ledger_url)
        if before != now:
            print(f"dev: ledger          migrated to schema {now}", flush=True)
        await server.start()
        dev = settings.model_copy(
            update={
                "temporal_address": server.address,
                "smtp_host": "127.0.0.1",
                "smtp_port": sink.port,
                "smtp_tls": SmtpTls.NONE,
                "temporal_ui_url": f"http://localhost:{server.ui_port}",
                **(dev_mailbox_settings(mailbox) if mailbox else {}),
            }
        )
        if mailbox:
            print(f"dev: reply mailbox   imap://{mailbox.user}@127.0.0.1:{mailbox.port} "
                  f"(replies to {settings.reply_base} land there)", flush=True)  # fmt: skip
        print(
            f"dev: Temporal UI     http://localhost:{server.ui_port}\n"
            f"dev: Temporal server {server.address} (data in {server.db_file})\n"
            f"dev: SMTP sink       127.0.0.1:{sink.port}, emails in {settings.outbox_dir}/\n"
            f"dev: ledger          {display(settings.ledger_url)}\n"
            f"dev: HTTP endpoints  http://{settings.http_host}:{settings.http_port} "
            "(unsubscribe links, fulfilment webhook)\n"
            "dev: Ctrl-C stops the worker, the SMTP sink and the server",
            flush=True,
        )
        await serve(dev, http=True, dev=True, dashboard=True)
    finally:
        sink.stop()
        server.stop()
        if mailbox:
            mailbox.stop()


def dev_mailbox(settings: Settings) -> LocalMailbox | None:
    """The dev stack's reply mailbox (Dovecot), or None when Dovecot is not installed."""
    user = settings.reply_base.split("@", 1)[0]
    mailbox = LocalMailbox(settings.data_dir.resolve() / "mail", user=user, password="dev",
                           port=settings.dev_imap_port)  # fmt: skip
    try:
        return mailbox.start()
    except (FileNotFoundError, RuntimeError) as error:
        print(f"dev: no reply mailbox ({error}); replies are not read", flush=True)
        return None


def dev_mailbox_settings(mailbox: LocalMailbox) -> dict[str, object]:
    return {
        "imap_host": "127.0.0.1",
        "imap_port": mailbox.port,
        "imap_tls": ImapTls.NONE,
        "imap_username": mailbox.user,
        "imap_password": SecretStr(mailbox.password),
        "imap_poll_every": timedelta(seconds=10),
    }


def main(
    dev: bool = typer.Option(
        False, "--dev", help="Also start the Temporal dev server and a local SMTP sink."
    ),
) -> None:
    """Run the Dealflow worker (settings from DEALFLOW_* variables or .env)."""
    settings = load_settings()
    if not dev and (refusal := settings.public_url_refusal()):
        print(f"worker: {refusal}", file=sys.stderr)
        raise SystemExit(2)
    try:
        asyncio.run(serve_dev(settings) if dev else serve(settings))
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)


if __name__ == "__main__":
    typer.run(main)
