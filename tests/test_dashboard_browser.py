"""The dashboard in a real browser: Debian's headless Chromium (``make chromium``), driven
by Playwright, loads the page from uvicorn on loopback; the figures it shows equal the
report functions' and the CLI's (``starter.py report funnel --format json``) for the same
seeded ledger, on SQLite and PostgreSQL. The SQLite run saves docs/dashboard.png, the
screenshot in the README."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from dashboard.server import running_dashboard
from ledger.database import LedgerDatabase
from ledger.reports import ReportFilter
from settings import Settings
from tests.conftest import on_both_databases
from tests.dashboard_pages import expected, seed
from tests.report_history import OWNERS, generate

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "dashboard.png"
HISTORY = generate(120, seed=3)
# Every figure on the page, as its key and the text a reader sees.
READ_FIGURES = """elements => elements.map(e => [e.dataset.figure,
    e.textContent.split(/\\s+/).filter(Boolean).join(" ")])"""


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    assert os.access(CHROMIUM, os.X_OK), "Debian's chromium is missing: run 'make chromium'"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        await browser.close()


async def cli_funnel(ledger_url: str, *args: str) -> dict[str, object]:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("DEALFLOW_")}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "starter.py", "report", "funnel", "--format", "json", *args,
        cwd=ROOT,
        env={**environment, "DEALFLOW_DATABASE_URL": ledger_url},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


@on_both_databases
async def test_the_page_in_chromium_shows_what_the_reports_say(
    chromium: Browser, ledger_url: str, database: str, tmp_path: Path
) -> None:
    ledger = LedgerDatabase(ledger_url)
    try:
        await seed(ledger, HISTORY)
        whole = await expected(ledger, ReportFilter())
        filtered = await expected(ledger, ReportFilter(owner=OWNERS[2], kind="rfq"))
    finally:
        await ledger.dispose()
    settings = Settings(_env_file=None, database_url=ledger_url, data_dir=tmp_path,  # type: ignore[call-arg]
                        dashboard_port=0)  # fmt: skip
    async with running_dashboard(settings) as url:
        page = await chromium.new_page(viewport={"width": 1280, "height": 1800})
        response = await page.goto(url)
        assert response is not None and response.status == 200
        assert await page.title() == "Dealflow: what the deals say"
        shown = dict(await page.eval_on_selector_all("[data-figure]", READ_FIGURES))
        assert shown == whole
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
        shown_filtered = dict(await page.eval_on_selector_all("[data-figure]", READ_FIGURES))
        assert shown_filtered == filtered
        assert await page.input_value("input[name=owner]") == OWNERS[2]
        await page.close()
    # The CLI reads the same figures from the same ledger.
    for args, figures in (((), shown), (("--owner", OWNERS[2], "--kind", "rfq"), shown_filtered)):
        funnel = await cli_funnel(ledger_url, *args)
        assert figures["deals"] == f"{funnel['deals']:,}"
        for row in funnel["rows"]:  # type: ignore[union-attr]
            assert figures[f"funnel/{row['stage']}/reached"] == f"{row['reached']:,}"
