"""The console in a real browser: Debian's headless Chromium, driven by Playwright, against a
real `switchyard serve` with an admin key. It signs in, creates a key, sees a request made
with that key (through the official openai SDK) appear with its cost, exports the spend as
CSV, revokes the key, and the page logs no error (a CSP violation would be one).

CI (CI=true) runs it or fails; elsewhere it skips, saying what is missing. No screenshot is
written anywhere.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.serving import Served

ADMIN = "admin-key-for-the-browser-test"
CHROMIUM = os.environ.get("SWITCHYARD_CHROMIUM") or shutil.which("chromium") or \
    "/usr/bin/chromium"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """A fresh page; collects its console errors and uncaught exceptions in page.problems."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test must run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1280, "height": 900},
                                      accept_downloads=True)
        opened = context.new_page()
        problems: list[str] = []
        opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        opened.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
        opened.problems = problems
        opened.set_default_timeout(15_000)
        try:
            yield opened
        finally:
            context.close()
            browser.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Served(tmp_path / "data", env={"SWITCHYARD_ADMIN_KEY": ADMIN}) as server:
        yield server


def test_sign_in_create_a_key_see_its_request_and_revoke_it(page: Any, served: Served) -> None:
    from playwright.sync_api import expect

    page.goto(f"{served.base}/console")
    page.get_by_label("Admin key, or a tenant key").fill(ADMIN)
    page.get_by_role("button", name="Open the console").click()
    expect(page.get_by_text("Signed in with the admin key")).to_be_visible()
    expect(page.get_by_role("region", name="test-image: routes")).to_contain_text("sim-cheap")

    # Keyboard: the tabs follow the arrow keys.
    page.get_by_role("tab", name="Routes").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Keys")).to_have_attribute("aria-selected", "true")

    page.get_by_label("Name").fill("browser")
    page.get_by_label("Budget (USD)").fill("1")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#secret-value")
    expect(secret).to_have_text(re.compile(r"^sy-"))
    key = secret.text_content()
    assert key
    row = page.get_by_role("row").filter(has_text="browser")
    expect(row).to_contain_text("active")

    with openai.OpenAI(base_url=f"{served.base}/v1", api_key=key, max_retries=0) as sdk:
        sdk.images.generate(model="test-image", prompt="a lighthouse in the browser test")

    page.get_by_role("tab", name="Requests").click()
    latest = page.get_by_role("region", name="Latest requests")
    request = latest.get_by_role("row").filter(has_text="browser")
    expect(request).to_contain_text("success")
    expect(request).to_contain_text("sim-cheap")
    expect(request).to_contain_text("$0.0200")  # billed, and upstream
    expect(latest).not_to_contain_text("lighthouse")

    page.get_by_role("tab", name="Spend").click()
    expect(page.locator("#spend-total")).to_contain_text("over 1 requests")
    expect(page.locator("svg.chart").first).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0] == ("day,model,provider,key,requests,succeeded,images,billed_usd,"
                        "upstream_usd,reference_usd,saved_usd")
    assert lines[1].split(",")[1:3] == ["test-image", "sim-cheap"]
    assert lines[1].endswith(",1,1,1,0.02,0.02,0.02,0")

    page.get_by_role("tab", name="Keys").click()
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile(r"^Revoke browser")).click()
    expect(row).to_contain_text("revoked")
    with openai.OpenAI(base_url=f"{served.base}/v1", api_key=key, max_retries=0) as sdk, \
            pytest.raises(openai.AuthenticationError):
        sdk.images.generate(model="test-image", prompt="x")
    assert key not in served.log(), "a key never reaches the log"
    assert page.problems == []


def test_a_phone_sees_the_page_without_sideways_scrolling(page: Any, served: Served) -> None:
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{served.base}/console")
    page.get_by_label("Admin key, or a tenant key").fill("wrong")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.get_by_label("Admin key, or a tenant key").fill(ADMIN)
    page.keyboard.press("Enter")
    expect(page.get_by_role("region", name="test-image: routes")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert width <= 0, "wide tables scroll inside their own region"
    assert [p for p in page.problems if "401" not in p] == []


def test_a_tenant_key_sees_only_its_own_spend_and_requests(page: Any, served: Served) -> None:
    from playwright.sync_api import expect

    key = _key(served)
    with openai.OpenAI(base_url=f"{served.base}/v1", api_key=key, max_retries=0) as sdk:
        sdk.images.generate(model="test-image", prompt="x")
    page.goto(f"{served.base}/console")
    page.get_by_label("Admin key, or a tenant key").fill(key)
    page.keyboard.press("Enter")
    expect(page.get_by_text("Signed in with a tenant key")).to_be_visible()
    expect(page.get_by_role("tab", name="Routes")).to_be_hidden()
    expect(page.get_by_role("tab", name="Keys")).to_be_hidden()
    expect(page.locator("#spend-total")).to_contain_text("over 1 requests")
    page.get_by_role("tab", name="Requests").click()
    latest = page.get_by_role("region", name="Latest requests")
    expect(latest.get_by_role("row").filter(has_text="test-image")).to_contain_text("$0.0200")
    assert page.problems == []


def _key(served: Served) -> str:
    """A tenant key made through the admin API of the running server."""
    created = httpx.post(f"{served.base}/admin/keys", json={"name": "tenant-view"},
                         headers={"authorization": f"Bearer {ADMIN}"})
    key: str = created.json()["key"]
    return key
