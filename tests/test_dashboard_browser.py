"""The dashboard in a real browser: Debian's headless Chromium (``make chromium``), driven
by Playwright, on SQLite and PostgreSQL.

- On loopback, every figure the page shows, whole and filtered, equals what the CLI
  prints for the same seeded ledger (``starter.py report ... --format json`` and
  ``starter.py export deals``, run as processes). The SQLite run saves docs/dashboard.png,
  the screenshot in the README.
- Listening beyond loopback (0.0.0.0, users from ``starter.py dashboard hash-password``),
  Chromium asking by this machine's network address gets the sign-in challenge and none
  of the figures, until it gives the right password.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, HttpCredentials, Page, async_playwright
from playwright.async_api import Error as PlaywrightError

from dashboard.server import running_dashboard
from ledger.database import LedgerDatabase
from ledger.reports import ReportFilter
from settings import Settings
from tests.conftest import on_both_databases
from tests.dashboard_pages import CLI_REPORTS, expected, printed, seed
from tests.report_history import OWNERS, generate

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "dashboard.png"
HISTORY = generate(120, seed=3)
# Every figure on the page, as its key and the text a reader sees.
READ_FIGURES = """elements => elements.map(e => [e.dataset.figure,
    e.textContent.split(/\\s+/).filter(Boolean).join(" ")])"""
MANAGER = "manager@example.com"
PASSWORD = "correct horse battery staple"
# Each CLI run is a Python start-up (~1 s of CPU): a few at once, not all on two cores.
CLI_AT_ONCE = 4


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    assert os.access(CHROMIUM, os.X_OK), "Debian's chromium is missing: run 'make chromium'"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        await browser.close()


async def starter(
    ledger_url: str, *args: str, given: str | None = None, turn: asyncio.Semaphore | None = None
) -> str:
    """What ``python starter.py ARGS`` prints on the ledger, as a user runs it."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("DEALFLOW_")}  # fmt: skip
    async with turn or asyncio.Semaphore():
        process = await asyncio.create_subprocess_exec(
            sys.executable, "starter.py", *args,
            cwd=ROOT,
            env={**environment, "DEALFLOW_DATABASE_URL": ledger_url},
            stdin=asyncio.subprocess.PIPE if given is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(
            process.communicate(given.encode() if given is not None else None), 120
        )
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def what_the_cli_prints(ledger_url: str, *filters: tuple[str, ...]) -> list[dict[str, str]]:
    """Every figure of the page, as the CLI printed it with each of ``filters``' options."""
    turn = asyncio.Semaphore(CLI_AT_ONCE)

    async def printed_with(options: tuple[str, ...]) -> dict[str, str]:
        reports, deals = await asyncio.gather(
            asyncio.gather(
                *(
                    starter(ledger_url, "report", name, "--format", "json", *options, turn=turn)
                    for name in CLI_REPORTS
                )
            ),
            starter(ledger_url, "export", "deals", "--format", "jsonl", *options, turn=turn),
        )
        return printed(dict(zip(CLI_REPORTS, reports, strict=True)), deals)

    return list(await asyncio.gather(*(printed_with(options) for options in filters)))


async def figures_on(page: Page) -> dict[str, str]:
    return dict(await page.eval_on_selector_all("[data-figure]", READ_FIGURES))


def network_address() -> str:
    """This machine's address on its network (where its default route leaves): a
    request to it comes from beyond loopback. Connecting UDP sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))
        except OSError as error:
            pytest.fail(f"this machine has no network address beyond loopback ({error})")
        return str(probe.getsockname()[0])


@on_both_databases
async def test_the_page_in_chromium_shows_what_the_cli_prints(
    chromium: Browser, ledger_url: str, database: str, tmp_path: Path
) -> None:
    ledger = LedgerDatabase(ledger_url)
    try:
        await seed(ledger, HISTORY)
    finally:
        await ledger.dispose()
    filtered = ("--owner", OWNERS[2], "--kind", "rfq")
    # The CLI runs while the browser looks.
    cli = asyncio.ensure_future(what_the_cli_prints(ledger_url, (), filtered))
    settings = Settings(_env_file=None, database_url=ledger_url, data_dir=tmp_path,  # type: ignore[call-arg]
                        dashboard_port=0)  # fmt: skip
    try:
        async with running_dashboard(settings) as url:
            page = await chromium.new_page(viewport={"width": 1280, "height": 1800})
            response = await page.goto(url)
            assert response is not None and response.status == 200
            assert await page.title() == "Dealflow: what the deals say"
            shown = await figures_on(page)
            # Every chart is drawn (SVG from the server), none blank.
            assert await page.locator("svg.chart").count() >= 5
            assert await page.locator("svg.chart rect.bar").count() > 10
            if database == "sqlite":
                SCREENSHOT.parent.mkdir(exist_ok=True)
                await page.screenshot(path=str(SCREENSHOT), full_page=False)
            # The form filters by a plain GET: no script on the page.
            await page.fill("input[name=owner]", OWNERS[2])
            await page.select_option("select[name=kind]", "rfq")
            await page.click("button[type=submit]")
            await page.wait_for_url("**owner=*")
            shown_filtered = await figures_on(page)
            assert await page.input_value("input[name=owner]") == OWNERS[2]
            await page.close()
        cli_whole, cli_filtered = await cli
    finally:
        cli.cancel()
    # Both sides cover deals, the filter fewer (else the filter went unchecked).
    assert 0 < int(shown_filtered["deals"]) < int(shown["deals"]) == len(HISTORY.deals)
    assert shown == cli_whole
    assert shown_filtered == cli_filtered


@on_both_databases
async def test_beyond_loopback_chromium_sees_nothing_until_it_signs_in(
    chromium: Browser, ledger_url: str, tmp_path: Path
) -> None:
    ledger = LedgerDatabase(ledger_url)
    try:
        await seed(ledger, HISTORY)
        whole = await expected(ledger, ReportFilter())
    finally:
        await ledger.dispose()
    entry = await starter(ledger_url, "dashboard", "hash-password", MANAGER, "--stdin",
                          given=PASSWORD + "\n")  # fmt: skip
    settings = Settings(_env_file=None, database_url=ledger_url, data_dir=tmp_path,  # type: ignore[call-arg]
                        dashboard_host="0.0.0.0", dashboard_port=0,
                        dashboard_users=entry.strip())  # fmt: skip
    async with running_dashboard(settings) as url:
        port = urlsplit(url).port
        elsewhere = f"http://{network_address()}:{port}/"
        refused: list[tuple[str, HttpCredentials | None]] = [
            (elsewhere, None),
            (elsewhere, {"username": MANAGER, "password": PASSWORD + "!"}),
            (elsewhere, {"username": "someone@example.com", "password": PASSWORD}),
            # With users configured, this machine signs in too.
            (f"http://127.0.0.1:{port}/", None),
        ]
        for address, credentials in refused:
            context = await chromium.new_context(http_credentials=credentials)
            page = await context.new_page()
            async with page.expect_response(address) as answered:
                try:
                    await page.goto(address)
                except PlaywrightError as error:
                    # With no credentials to give, Chromium ends the navigation at the
                    # challenge (on an error page); with wrong ones, it shows the 401.
                    assert "net::ERR_INVALID_AUTH_CREDENTIALS" in error.message, error
                else:
                    assert await page.inner_text("body") == "sign in to see the dashboard"
            refusal = await answered.value
            assert refusal.status == 401, (address, credentials)
            challenge = await refusal.header_value("www-authenticate")
            assert challenge is not None and challenge.startswith("Basic "), challenge
            await page.wait_for_load_state()
            assert await page.locator("[data-figure]").count() == 0
            await context.close()
        context = await chromium.new_context(
            http_credentials={"username": MANAGER, "password": PASSWORD}
        )
        page = await context.new_page()
        response = await page.goto(elsewhere)
        assert response is not None and response.status == 200
        assert await page.title() == "Dealflow: what the deals say"
        assert f"Signed in as {MANAGER}." in await page.inner_text("p.lede")
        assert await figures_on(page) == whole
        await context.close()
