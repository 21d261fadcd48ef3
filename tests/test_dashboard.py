"""The managers' dashboard as an ASGI app (httpx's ASGI transport): its figures are the
report functions' for the same seeded ledger, on SQLite and PostgreSQL; sign-in is
required beyond loopback; bad filters get one line."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from dashboard import charts, figures
from dashboard.access import Access, DashboardRefused, hash_password
from dashboard.app import build_app
from dashboard.server import DashboardUnavailable, running_dashboard
from devstack import free_port
from ledger.database import LedgerDatabase
from ledger.reports import Rate, ReportFilter
from settings import Settings
from tests.conftest import on_both_databases
from tests.dashboard_pages import expected, seed, shown
from tests.report_history import OWNERS, START, generate

HISTORY = generate(150, seed=7)
ELSEWHERE = ("203.0.113.7", 40000)
LOOPBACK = ("127.0.0.1", 40000)
ROOT = Path(__file__).resolve().parent.parent


def dashboard_settings(ledger_url: str, tmp_path: Path, **more: object) -> Settings:
    return Settings(_env_file=None, database_url=ledger_url, data_dir=tmp_path, **more)  # type: ignore[call-arg]


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[LedgerDatabase]:
    database = LedgerDatabase(ledger_url)
    await seed(database, HISTORY)
    yield database
    await database.dispose()


def browser(app: object, client: tuple[str, int] = LOOPBACK, **more: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=client)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://dashboard", **more)  # type: ignore[arg-type]


@on_both_databases
@pytest.mark.parametrize(
    ("query", "f"),
    [
        ({}, ReportFilter()),
        ({"owner": OWNERS[0], "kind": "rfq"}, ReportFilter(owner=OWNERS[0], kind="rfq")),
        (
            {"since": "2026-01-10", "until": "2026-01-25"},
            ReportFilter(
                since=START + timedelta(days=5) - timedelta(hours=9),
                until=START + timedelta(days=20) - timedelta(hours=9),
            ),
        ),
    ],
    ids=["all", "owner-and-kind", "dates"],
)
async def test_the_page_shows_the_reports_figures(
    ledger: LedgerDatabase,
    ledger_url: str,
    tmp_path: Path,
    query: dict[str, str],
    f: ReportFilter,
) -> None:
    app = build_app(dashboard_settings(ledger_url, tmp_path), ledger)
    async with browser(app) as client:
        page = await client.get("/", params=query)
    assert page.status_code == 200, page.text
    want = await expected(ledger, f)
    got = shown(page.text)
    assert got == want
    # The seeded history is rich enough that the page is no wall of dashes.
    if not query:
        assert int(got["deals"].replace(",", "")) == len(HISTORY.deals)
        assert "%" in got["win_rate"]
        assert any(key.startswith("forecast/") for key in got)
        assert any(key.startswith("reason/") for key in got)


async def test_each_deal_links_to_its_workflow_in_the_temporal_ui(
    ledger: LedgerDatabase, ledger_url: str, tmp_path: Path
) -> None:
    settings = dashboard_settings(
        ledger_url,
        tmp_path,
        temporal_ui_url="https://temporal.example.com/",
        temporal_namespace="sales",
    )
    async with browser(build_app(settings, ledger)) as client:
        page = await client.get("/")
    deal = HISTORY.deals[0].deal_id
    link = f'href="https://temporal.example.com/namespaces/sales/workflows/deal-{deal}"'
    assert link in page.text


async def test_without_sign_in_only_this_machine_sees_the_page(
    ledger: LedgerDatabase, ledger_url: str, tmp_path: Path
) -> None:
    app = build_app(dashboard_settings(ledger_url, tmp_path), ledger)
    async with browser(app, ELSEWHERE) as client:
        refused = await client.get("/")
    assert refused.status_code == 403
    assert "sign-in is not configured" in refused.text
    assert "data-figure" not in refused.text
    async with browser(app, LOOPBACK) as client:
        assert (await client.get("/")).status_code == 200


async def test_a_signed_in_user_sees_the_page_and_nobody_else(
    ledger: LedgerDatabase, ledger_url: str, tmp_path: Path
) -> None:
    users = f"ann:{hash_password('correct horse')} ben:{hash_password('battery staple')}"
    app = build_app(dashboard_settings(ledger_url, tmp_path, dashboard_users=users), ledger)
    async with browser(app, ELSEWHERE) as client:
        unsigned = await client.get("/")
        wrong = await client.get("/", auth=("ann", "battery staple"))
        stranger = await client.get("/", auth=("eve", "correct horse"))
        signed = await client.get("/", auth=("ann", "correct horse"))
        health = await client.get("/healthz")
    assert unsigned.status_code == 401
    assert unsigned.headers["www-authenticate"].startswith("Basic ")
    assert wrong.status_code == 401
    assert stranger.status_code == 401
    assert "data-figure" not in unsigned.text + wrong.text + stranger.text
    assert signed.status_code == 200
    assert "Signed in as ann" in signed.text
    assert shown(signed.text)["deals"] == figures.count(len(HISTORY.deals))
    assert health.status_code == 200
    # Users configured: loopback signs in too (a proxy on this machine is not the user).
    async with browser(app, LOOPBACK) as client:
        assert (await client.get("/")).status_code == 401


async def test_the_proxy_header_is_believed_from_the_proxy_only(
    ledger: LedgerDatabase, ledger_url: str, tmp_path: Path
) -> None:
    settings = dashboard_settings(
        ledger_url,
        tmp_path,
        dashboard_proxy_header="X-Forwarded-User",
        dashboard_proxy_addresses="10.0.0.0/24",
    )
    app = build_app(settings, ledger)
    header = {"X-Forwarded-User": "cleo@seller.example"}
    async with browser(app, ("10.0.0.9", 50000)) as client:
        through_proxy = await client.get("/", headers=header)
        proxy_without_user = await client.get("/")
    async with browser(app, ELSEWHERE) as client:
        forged = await client.get("/", headers=header)
    async with browser(app, LOOPBACK) as client:
        local_forged = await client.get("/", headers=header)
    assert through_proxy.status_code == 200
    assert "Signed in as cleo@seller.example" in through_proxy.text
    assert proxy_without_user.status_code == 403
    assert forged.status_code == 403
    assert local_forged.status_code == 403


async def test_it_refuses_to_listen_beyond_loopback_without_sign_in(
    ledger_url: str, tmp_path: Path
) -> None:
    open_to_all = dashboard_settings(ledger_url, tmp_path, dashboard_host="0.0.0.0")
    with pytest.raises(DashboardRefused) as refused:
        Access(open_to_all).check_listening(open_to_all.dashboard_host)
    message = str(refused.value)
    assert "\n" not in message
    assert "DEALFLOW_DASHBOARD_USERS" in message
    assert "DEALFLOW_DASHBOARD_PROXY_HEADER" in message
    with pytest.raises(DashboardUnavailable, match="DEALFLOW_DASHBOARD_USERS"):
        async with running_dashboard(open_to_all):
            pass
    signed = dashboard_settings(
        ledger_url, tmp_path, dashboard_host="0.0.0.0", dashboard_proxy_header="X-Remote-User"
    )
    Access(signed).check_listening(signed.dashboard_host)


async def test_the_dashboard_listens_on_its_own_port(ledger_url: str, tmp_path: Path) -> None:
    settings = dashboard_settings(ledger_url, tmp_path, dashboard_port=0)
    async with running_dashboard(settings) as url, httpx.AsyncClient() as client:
        page = await client.get(url)
        webhook = await client.post(url + "webhooks/fulfilment", content=b"{}")
    assert page.status_code == 200
    assert "Funnel" in page.text
    # The buyers' endpoints are not here.
    assert webhook.status_code in (404, 405)


async def test_a_taken_port_is_one_line(ledger_url: str, tmp_path: Path) -> None:
    first = dashboard_settings(ledger_url, tmp_path, dashboard_port=0)
    async with running_dashboard(first) as url:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        second = dashboard_settings(ledger_url, tmp_path, dashboard_port=port)
        with pytest.raises(DashboardUnavailable, match="DEALFLOW_DASHBOARD_PORT"):
            async with running_dashboard(second):
                pass


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"since": "2026-13-01"}, "since: '2026-13-01' is not a date; write it as YYYY-MM-DD"),
        ({"until": "yesterday"}, "until: 'yesterday' is not a date; write it as YYYY-MM-DD"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "is not after since"),
        ({"kind": "rfx"}, "use rfi, rfp or rfq"),
        ({"owner": "x" * 400}, "give a rep's email"),
    ],
)
async def test_a_bad_filter_gets_one_line_saying_what_to_write(
    ledger: LedgerDatabase, ledger_url: str, tmp_path: Path, query: dict[str, str], says: str
) -> None:
    app = build_app(dashboard_settings(ledger_url, tmp_path), ledger)
    async with browser(app) as client:
        page = await client.get("/", params=query)
    assert page.status_code == 400
    problem = page.text.split("data-problem>", 1)[1].split("</p>", 1)[0]
    assert says in problem.replace("&#39;", "'")
    assert "data-figure" not in page.text


async def test_a_ledger_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}"
    database = LedgerDatabase(url)
    app = build_app(dashboard_settings(url, tmp_path), database)
    try:
        async with browser(app) as client:
            page = await client.get("/")
    finally:
        await database.dispose()
    assert page.status_code == 503
    problem = page.text.split("data-problem>", 1)[1].split("</p>", 1)[0]
    assert "has no schema yet" in problem
    assert "db upgrade" in problem


async def test_the_page_runs_no_script_and_cannot_be_framed(
    ledger: LedgerDatabase, ledger_url: str, tmp_path: Path
) -> None:
    async with browser(build_app(dashboard_settings(ledger_url, tmp_path), ledger)) as client:
        page = await client.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script" not in page.text
    assert "<svg" in page.text


def test_figures_are_written_for_managers() -> None:
    assert (
        figures.share(Rate(numerator=7, deals=12, value=7 / 12, enough=True)) == "58.3% (7 of 12)"
    )
    assert figures.share(Rate(numerator=3, deals=5, value=0.6, enough=False)) == (
        "not enough data (3 of 5)"
    )
    assert figures.share(Rate(numerator=0, deals=0, value=None, enough=False)) == "— (no deals)"
    assert figures.duration(timedelta(days=3, hours=4, minutes=59)) == "3d 4h"
    assert figures.duration(timedelta(hours=5, minutes=12, seconds=40)) == "5h 12m"
    assert figures.duration(timedelta(minutes=12, seconds=5)) == "12m 5s"
    assert figures.duration(None) == "—"
    assert figures.money(Decimal("12345.6"), "EUR") == "12,345.60 EUR"
    assert figures.money(None, "EUR") == "not enough data"


@pytest.mark.parametrize(
    ("users", "says"),
    [
        ("ann", "NAME:ARGON2_HASH"),
        ("ann:plaintext", "the hash of 'ann' is not an argon2 hash"),
        ("ann:$argon2id$x ann:$argon2id$y", "user 'ann' appears twice"),
        ("  ", "is empty"),
    ],
)
def test_a_bad_user_list_is_refused_in_one_line(users: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, data_dir=tmp_path, dashboard_users=users)  # type: ignore[call-arg]
    message = refused.value.errors()[0]["msg"]
    assert says in message
    assert "plaintext" not in message


def _hash_password(*args: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "starter.py", "dashboard", "hash-password", *args],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if not key.startswith("DEALFLOW_")},
        timeout=120,
        check=False,
    )


async def test_hash_password_makes_an_entry_the_dashboard_signs_in_with(
    ledger: LedgerDatabase, ledger_url: str, tmp_path: Path
) -> None:
    made = _hash_password("ann@seller.example", "--stdin", password="correct horse battery")
    assert made.returncode == 0, made.stderr
    entry = made.stdout.strip()
    assert entry.startswith("ann@seller.example:$argon2id$")
    assert "correct horse" not in entry
    settings = dashboard_settings(ledger_url, tmp_path, dashboard_users=entry)
    async with browser(build_app(settings, ledger), ELSEWHERE) as client:
        signed = await client.get("/", auth=("ann@seller.example", "correct horse battery"))
        wrong = await client.get("/", auth=("ann@seller.example", "correct horse"))
    assert signed.status_code == 200
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("name", "password", "says"),
    [
        ("ann", "short", "needs at least 12"),
        ("a b", "correct horse battery", "is not a user name"),
    ],
)
def test_hash_password_refuses_in_one_line(name: str, password: str, says: str) -> None:
    refused = _hash_password(name, "--stdin", password=password)
    assert refused.returncode == 2
    assert says in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert refused.stdout == ""


async def test_the_threshold_of_enough_data_is_the_reports_setting(
    ledger: LedgerDatabase, ledger_url: str, tmp_path: Path
) -> None:
    settings = dashboard_settings(ledger_url, tmp_path, report_min_deals=1000)
    async with browser(build_app(settings, ledger)) as client:
        page = await client.get("/")
    got = shown(page.text)
    assert got == await expected(ledger, ReportFilter(), min_deals=1000)
    assert got["win_rate"].startswith("not enough data")


def test_python_m_dashboard_refuses_to_start_open_to_the_network(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("DEALFLOW_")}  # fmt: skip
    refused = subprocess.run(
        [sys.executable, "-m", "dashboard"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **environment,
            "DEALFLOW_DATA_DIR": str(tmp_path),
            "DEALFLOW_DASHBOARD_HOST": "0.0.0.0",
            "DEALFLOW_DASHBOARD_PORT": "0",
        },
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "no sign-in" in lines[0]
    assert "DEALFLOW_DASHBOARD_USERS" in lines[0]


DEV_PORTS = ("DEV_TEMPORAL_PORT", "DEV_UI_PORT", "DEV_SMTP_PORT", "DEV_IMAP_PORT",
             "HTTP_PORT", "DASHBOARD_PORT")  # fmt: skip


@pytest.fixture
def dev_folder() -> Iterator[Path]:
    # Not under pytest's tmp_path: Dovecot's own users must be able to reach the mail folder.
    folder = Path(tempfile.mkdtemp(prefix="dealflow-dev-dashboard-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_make_dev_starts_the_dashboard_and_says_where(dev_folder: Path) -> None:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("DEALFLOW_")}  # fmt: skip
    ports = {name: str(free_port()) for name in DEV_PORTS}
    environment |= {f"DEALFLOW_{name}": port for name, port in ports.items()}
    environment["DEALFLOW_DATA_DIR"] = str(dev_folder)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "worker.py", "--dev",
        cwd=ROOT, env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(240):
            while not any(line.startswith("dev: dashboard") for line in said):
                line = (await process.stdout.readline()).decode()
                assert line, "worker.py --dev stopped:\n" + "".join(said)
                said.append(line)
        where = next(line for line in said if line.startswith("dev: dashboard")).split()[2]
        assert where == f"http://127.0.0.1:{ports['DASHBOARD_PORT']}/"
        async with httpx.AsyncClient() as client:
            page = await client.get(where)
        assert page.status_code == 200
        assert "Funnel" in page.text
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(60):
                    await process.communicate()
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_deal_text_is_shown_as_text_never_run(ledger_url: str, tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    history = generate(12, seed=5)
    history.deals[0].row["company"] = hostile
    for interview in history.interviews:
        interview["why_decided"] = hostile
    database = LedgerDatabase(ledger_url)
    try:
        await seed(database, history)
        async with browser(build_app(dashboard_settings(ledger_url, tmp_path), database)) as c:
            page = await c.get("/")
    finally:
        await database.dispose()
    assert page.status_code == 200
    assert "<script" not in page.text
    assert "<img" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_a_chart_draws_each_bar_to_scale() -> None:
    drawn = str(
        charts.bars(
            "t",
            [charts.Bar("a", 10, "10"), charts.Bar("b", 5, "5", part=2), charts.Bar("<c>", 0, "0")],
        )
    )
    room = charts.WIDTH - charts.LABEL_WIDTH - charts.TEXT_WIDTH
    widths = [float(w) for w in re.findall(r'width="([\d.]+)" height="\d+" class="bar"', drawn)]
    assert widths == [room, room / 2, 0.0]
    parts = [float(w) for w in re.findall(r'width="([\d.]+)" height="\d+" class="part"', drawn)]
    assert parts == [room / 5]
    assert "&lt;c&gt;" in drawn
    assert "nothing to show yet" in str(charts.bars("t", []))
