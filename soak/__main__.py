"""``make soak`` / ``python -m soak``: a chaos soak. Deals live their whole lives on the
dev server while the worker is SIGKILLed every 20-40 s, the server restarts once and
SMTP is cut for 60 s; then one table, and a last line a machine can read:

    soak: deals=N planned=N received=N duplicates=N in_window=N lost=N stuck=N after_opt_out=N

Exit code 1 when an email was lost, a deal stuck, an opted-out address mailed after
its opt-out committed, or a duplicate fell outside the measured window.

    python -m soak                              # 500 deals, 15 minutes
    python -m soak --deals 40 --minutes 5       # a smoke run
    DEALFLOW_SMTP_POOL_SIZE=4 python -m soak    # DEALFLOW_* knobs reach the worker
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from bench.__main__ import machine
from connection import data_converter
from ledger import schema
from ledger.database import LedgerDatabase
from ledger.suppression_list import SuppressionList
from realstack.deployment import COMMON_SETTINGS, environment
from realstack.relay_process import RelayProcess
from realstack.temporal import TemporalDevServer
from realstack.worker import WorkerProcess
from settings import load_settings
from soak.chaos import Chaos
from soak.deals import ArrivalLog, Buyers, DealPlan, Status, Tracker, plan_deals, spread
from soak.ops import Ops
from soak.report import Final, count, timeline, worker_logs
from starter import workflow_id
from workflows.deal import STATUS

TASK_QUEUE = "soak"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m soak", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--deals", type=int, default=500, help="how many deals (default 500)")
    parser.add_argument(
        "--minutes", type=float, default=15.0, help="the deadline, from the first start (15)"
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.5,
        help="share of the run over which the deals start (default 0.5)",
    )
    parser.add_argument(
        "--calm",
        type=float,
        default=3.5,
        help="minutes before the deadline without chaos, for the last deals to end (3.5)",
    )
    parser.add_argument(
        "--kill-every",
        default="20-40",
        metavar="LOW-HIGH",
        help="seconds between worker SIGKILLs, uniform (default 20-40)",
    )
    parser.add_argument(
        "--smtp-cut", type=float, default=60.0, help="seconds SMTP is down (default 60)"
    )
    parser.add_argument(
        "--die-at",
        default="after-reply,before-data,after-record",
        help="points of a send where an armed worker kills itself, in turn ('none': off)",
    )
    parser.add_argument(
        "--arm-every", type=int, default=3, help="arm every N-th worker start (default 3)"
    )
    parser.add_argument(
        "--blind-ops",
        action="store_true",
        help="ops resend held emails without reading the relay's log (tests the window)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: from the clock)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run folder (always kept on failure)"
    )
    args = parser.parse_args(argv)
    low, _, high = args.kill_every.partition("-")
    args.kill_every = (float(low), float(high or low))
    args.die_at = () if args.die_at == "none" else tuple(args.die_at.split(","))
    if args.seed is None:
        args.seed = int(time.time())
    if args.deals < 1 or args.minutes <= args.calm:
        parser.error("need at least one deal, and --minutes above --calm")
    return args


def worker_values(
    server: TemporalDevServer, relay: RelayProcess, ledger_url: str, folder: Path
) -> dict[str, str]:
    """The settings of the worker (as DEALFLOW_* variables) and of the driver."""
    return {
        "temporal_address": server.address,
        "temporal_task_queue": TASK_QUEUE,
        "smtp_host": "127.0.0.1",
        "smtp_port": str(relay.port),
        "smtp_tls": "none",
        "database_url": ledger_url,
        "data_dir": str(folder / "data"),
        # Made per run, as a deployment makes its own: the worker and the driver share them.
        # The relay log's reader opens sealed Message-IDs with it (soak/deals.py).
        "signing_secret": COMMON_SETTINGS["signing_secret"],
        "codec_keys": f"soak-1={base64.b64encode(secrets.token_bytes(32)).decode()}",
        "send_window": "always",
        "cadence_profile": "demo",
        "sender_address": "sales@seller.example.com",
        "rep_address": "rep@seller.example.com",
        "fulfilment_address": "fulfilment@seller.example.com",
    }


async def final_state(client: Client, plan: DealPlan) -> Final:
    """The deal's workflow state and status; for a deal still running, also whether its
    workflow task keeps failing (a status query then fails too)."""
    handle = client.get_workflow_handle(workflow_id(plan.deal_id), result_type=Status)
    state, problem = None, ""
    for _ in range(5):
        try:
            described = await handle.describe()
        except (RPCError, RuntimeError) as error:
            problem = f"describe failed: {type(error).__name__}: {error}"
            await asyncio.sleep(2)
            continue
        state = described.status
        attempt = described.raw_description.pending_workflow_task.attempt
        stalled = f"workflow task on attempt {attempt}" if attempt > 1 else ""
        try:
            if state == WorkflowExecutionStatus.COMPLETED:
                return Final(plan, state, await handle.result())
            status = await asyncio.wait_for(handle.query(STATUS, result_type=Status), 60)
            return Final(plan, state, status, stalled)
        except Exception as error:  # a query fails while the workflow task does
            problem = "; ".join(filter(None, [stalled, f"{type(error).__name__}: {error}"]))
            await asyncio.sleep(2)
    return Final(plan, state, None, problem)


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="dealflow-soak-"))
    print(f"dealflow soak, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(
        f"{args.deals} deals, deadline {args.minutes:g} min, starts over the first "
        f"{args.minutes * args.ramp:.1f} min, chaos until {args.calm:g} min before the "
        f"deadline; worker SIGKILL every {args.kill_every[0]:g}-{args.kill_every[1]:g} s, "
        f"one server restart, SMTP cut {args.smtp_cut:g} s; seed {args.seed}; run folder "
        f"{folder}",
        flush=True,
    )
    ledger_url = f"sqlite:///{folder / 'ledger.sqlite3'}"
    await schema.upgrade(ledger_url)
    server, relay = TemporalDevServer(folder), RelayProcess(folder)
    await server.start()
    await relay.start()
    values = worker_values(server, relay, ledger_url, folder)
    knobs = {k: v for k, v in os.environ.items() if k.startswith("DEALFLOW_")}
    worker = WorkerProcess("worker", folder, knobs | environment(values))
    chaos = Chaos(
        server, worker, relay, rng, args.kill_every, args.smtp_cut, args.die_at, args.arm_every
    )
    database = LedgerDatabase(ledger_url)
    tasks: list[asyncio.Task[object]] = []
    try:
        await chaos._start_worker()
        settings = load_settings(_env_file=None, **values)  # type: ignore[arg-type]
        client = await Client.connect(server.address, data_converter=data_converter(settings))
        plans = plan_deals(args.deals, rng)
        by_id = {plan.deal_id: plan for plan in plans}
        log = ArrivalLog(relay.arrivals_file)
        tracker = Tracker(client, TASK_QUEUE)
        buyers = Buyers(client, settings, SuppressionList(database), tracker, log, by_id, rng)
        ops = Ops(client, database, log, buyers, check_log=not args.blind_ops)

        began = time.time()
        deadline = began + args.minutes * 60
        chaos_until = deadline - args.calm * 60
        offsets = spread(plans, args.minutes * 60 * args.ramp, rng)
        scripts: list[asyncio.Task[None]] = []

        async def start_all() -> None:
            for plan, offset in zip(plans, offsets, strict=True):
                await asyncio.sleep(max(0.0, began + offset - time.time()))
                if await buyers.start(plan):
                    scripts.append(asyncio.create_task(buyers.run(plan)))

        background = (tracker.run(), log.run(), ops.run(), chaos.watchdog())
        tasks = [asyncio.create_task(job) for job in background]
        chaos_task = asyncio.create_task(chaos.run(began, chaos_until))
        starting = asyncio.create_task(start_all())
        tasks += [chaos_task, starting]
        next_report = began
        while True:
            await asyncio.sleep(2)
            now = time.time()
            open_deals = [d for d in buyers.started if d not in tracker.closed]
            if now >= next_report:
                next_report += 30
                print(
                    f"  +{now - began:4.0f} s: {len(buyers.started)} started, "
                    f"{len(buyers.started) - len(open_deals)} closed, {len(log.arrivals)} "
                    f"emails at the relay, {len(ops.held)} held, "
                    f"{chaos.count('worker-kill')} worker kills",
                    flush=True,
                )
            if starting.done() and not open_deals and (chaos_task.done() or now > chaos_until):
                break
            if now >= deadline:
                break
        ended = time.time()
        for task in [*tasks, *scripts, *ops.resends]:
            task.cancel()
        await asyncio.gather(*tasks, *scripts, *ops.resends, return_exceptions=True)
        # Whatever chaos was doing when it stopped, the accounting needs a server and a worker.
        if not server.alive():
            await server.start()
        if not relay.alive():
            await relay.start()
        if not worker.alive():
            await chaos._start_worker()
        print(f"  deadline reached or all closed after {ended - began:.0f} s; counting", flush=True)
        slots = asyncio.Semaphore(8)

        async def one(plan: DealPlan) -> Final:
            async with slots:
                return await final_state(client, plan)

        started = [plan for plan in plans if plan.deal_id in buyers.started]
        finals = await asyncio.gather(*(one(plan) for plan in started))
        await asyncio.sleep(1)
        log.read()
        report = count(list(finals), log, buyers, ops, chaos, began)
    finally:
        for task in tasks:
            task.cancel()
        worker.stop()
        relay.stop()
        server.stop()
        await database.dispose()
    print()
    print(report.table())
    for line in report.details[:60]:
        print(f"  {line}")
    if len(report.details) > 60:
        print(f"  ... {len(report.details) - 60} more lines")
    notes = [
        f"start refused: {len(buyers.start_refused)}",
        f"signals {buyers.signals}, refused {len(buyers.refusals)}, retried {buyers.retries}",
        f"scripts that gave up waiting: {len(buyers.gave_up)}",
        f"ops cycles {ops.cycles} ({ops.failures} status reads failed: server down or "
        "worker too busy)",
        f"run {ended - began:.0f} s",
    ]
    print("  " + "; ".join(notes))
    print(f"  chaos (s after the first start): {timeline(chaos, began)}")
    for line in worker_logs(folder):
        print(f"  worker logs: {line}")
    refused = [f"start refused: {deal}: {why}" for deal, why in buyers.start_refused.items()]
    for line in buyers.refusals[:5] + buyers.gave_up[:5] + refused[:5]:
        print(f"  {line}")
    keep = args.keep or report.failed
    if keep:
        print(f"  run folder kept: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    print(report.machine_line(), flush=True)
    return 1 if report.failed else 0


def main() -> None:
    args = parse(sys.argv[1:])
    code = 1
    with contextlib.suppress(KeyboardInterrupt):
        code = asyncio.run(run(args))
    sys.stdout.flush()
    # Skip the interpreter's teardown, where a temporalio client can abort
    # (temporalio/sdk-python#300, as bench and starter do).
    os._exit(code)


if __name__ == "__main__":
    main()
