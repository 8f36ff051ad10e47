"""The web console in headless Chromium (Debian's `/usr/bin/chromium`, driven by
Playwright; `.ci/install-chromium.sh` installs it), against the gateway in front of a
real stack: upload a document in the page and watch its progress reach 100% and the
summary appear (partial results and the archived timeline too); cancel a long job and
see `canceled`; the workers page; a job submitted through the REST API reaching
`completed` in the jobs list; the tenants page. Screenshots are kept in `test-artifacts/`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from tests.conftest import Running
from tests.documents import prose_document
from tests.gateway_front import KEYS, Front, auth, front_running
from tests.security import SecureNats

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM: Final = Path("/usr/bin/chromium")
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS: Final = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture
async def front(secure: SecureNats, tmp_path: Path, running: Running) -> AsyncIterator[Front]:
    async with front_running(
        secure, tmp_path, running,
        summarizer={"backend": "simulated", "simulated_latency_ms": 150.0},
    ) as f:  # fmt: skip
        yield f


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (.ci/install-chromium.sh)")
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        try:
            yield context
        finally:
            await context.close()


async def _with_key(page: Page, front: Front) -> None:
    await page.goto(front.url + "/")
    await page.fill("#api-key", KEYS["operate"][0])
    await page.click("#key-form button")
    await expect(page.locator("#whoami")).to_contain_text("operate")


async def _shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path))
    return path


async def test_upload_watch_progress_and_summary(
    front: Front, browser: BrowserContext, tmp_path: Path
) -> None:
    page = await browser.new_page()
    await _with_key(page, front)
    doc = tmp_path / "report.txt"
    doc.write_text(prose_document(21, 7_500))
    await page.set_input_files("[data-testid=file]", str(doc))
    await page.click("[data-testid=submit]")
    await expect(page).to_have_url(_any_job(front))
    await expect(page.locator("[data-testid=progress]")).to_have_text("100%", timeout=60_000)
    await expect(page.locator("[data-testid=status]")).to_have_text("completed")
    summary = page.locator("[data-testid=summary]")
    await expect(summary).to_be_visible()
    assert len((await summary.inner_text()).strip()) > 50
    assert await page.locator("[data-testid=parts] .part").count() >= 7
    await expect(page.locator("table tbody tr").first).to_be_visible(timeout=15_000)
    await expect(page.locator("table tbody")).to_contain_text("job.completed", timeout=15_000)
    shot = await _shot(page, "console-job.png")
    assert shot.stat().st_size > 10_000
    # the jobs list shows it, completed
    await page.click("nav a[data-nav=jobs]")
    await expect(page.locator("tbody [data-testid=status]").first).to_have_text("completed")
    await _shot(page, "console-jobs.png")
    await page.click("nav a[data-nav=workers]")
    await expect(page.locator("tr[data-worker=worker-g1]")).to_be_visible()


def _any_job(front: Front) -> re.Pattern[str]:
    return re.compile(re.escape(front.url) + r"/#/jobs/[0-9a-f]{32}$")


async def test_cancel_a_long_job_in_the_page(front: Front, browser: BrowserContext) -> None:
    page = await browser.new_page()
    await _with_key(page, front)
    await page.fill("textarea[name=text]", prose_document(22, 250_000))
    await page.click("[data-testid=submit]")
    await expect(page).to_have_url(_any_job(front))
    await expect(page.locator("[data-testid=status]")).to_have_text("running", timeout=30_000)
    await page.click("[data-testid=cancel]")
    await expect(page.locator("[data-testid=status]")).to_have_text("canceled", timeout=30_000)
    await expect(page.locator("[data-testid=error]")).to_contain_text("canceled in the console")
    await _shot(page, "console-canceled.png")


async def test_jobs_list_shows_a_job_from_the_api_and_the_tenants_page(
    front: Front, browser: BrowserContext
) -> None:
    """A job submitted through the REST API, not from this page, appears in the jobs list
    (GET /v1/jobs) and reaches completed there; the tenants page lists every tenant."""
    page = await browser.new_page()
    await _with_key(page, front)
    body = {"text": prose_document(23, 6_000), "title": "from-the-api"}
    async with (
        aiohttp.ClientSession(front.url) as http,
        http.post("/v1/jobs", json=body, headers=auth("submit")) as r,
    ):
        assert r.status == 202, await r.text()
        job_id = (await r.json())["job_id"]
    row = page.locator(f"tr[data-job='{job_id}']")
    await expect(row).to_be_visible(timeout=30_000)
    await expect(row).to_contain_text("from-the-api")
    await expect(row).to_contain_text("acme")
    await expect(row.locator("[data-testid=status]")).to_have_text("completed", timeout=60_000)
    await expect(row.locator("[data-testid=progress]")).to_have_text("100%")
    await page.select_option("[data-testid=status-filter]", "running")
    await expect(row).to_have_count(0)
    await page.click("nav a[data-nav=tenants]")
    for tenant in ("default", "acme", "beta"):
        await expect(page.locator(f"tr[data-tenant={tenant}]")).to_be_visible()
    # in flight of its cap: none set, shown "-"
    await expect(page.locator("tr[data-tenant=acme]")).to_contain_text("0 / -")
    await _shot(page, "console-tenants.png")
