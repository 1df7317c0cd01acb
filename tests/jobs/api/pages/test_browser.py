"""The dashboard in a real browser: progress that moves without a reload, cancel from the page, spend by model,
user text shown as text, sign-in, a phone's width and no JavaScript. Screenshots land in test-artifacts/."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.api.keys import NewKey
from tests.jobs.api.conftest import ApiServer, wait_for
from tests.jobs.api.pages.conftest import sign_in, start_batch, visit
from tests.support import Simulator

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]


async def _done(page: Any) -> int:
    return int(await page.get_attribute("#progress", "value"))


async def _wait_until(check: Any, seconds: float = 60, what: str = "the page") -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not change within {seconds} s")
        await asyncio.sleep(0.2)


async def _status_is(page: Any, status: str) -> bool:
    return bool(await page.inner_text("#status") == status)


async def _finished(client: Any, batch_id: str) -> None:
    """Wait for the batch to end, polling as a script would, without holding up the browser."""
    await asyncio.to_thread(wait_for, client, batch_id)


async def test_a_browser_is_sent_to_sign_in_and_a_wrong_key_is_refused(
    browser: Any, api_server: ApiServer, owners: dict[str, NewKey], screenshots: Path
) -> None:
    page = await browser.new_page()
    await visit(page, f"{api_server.url}/fleet")
    assert page.url == f"{api_server.url}/signin?next=/fleet"
    await page.fill("#key", "obk_not-a-key-at-all-000000000000000000000000")
    await page.click("button[type=submit]")
    assert "not a live orbatch key" in await page.inner_text("[role=alert]")
    await page.screenshot(path=screenshots / "signin-refused.png")
    await page.fill("#key", owners["alice"].key)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{api_server.url}/fleet")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "orbatch_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"
    assert owners["alice"].key not in cookie["value"]
    # The key a browser signs in with is kept nowhere it could be read back: not in the server's log either.
    assert owners["alice"].key not in api_server.log()
    await page.click("text=Sign out")
    await page.wait_for_url(f"{api_server.url}/signin")
    await visit(page, f"{api_server.url}/")
    assert "/signin" in page.url
    await page.context.close()


async def test_progress_moves_on_the_page_while_a_worker_runs_the_batch(
    browser: Any, api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator, screenshots: Path
) -> None:
    # 300 calls of 0.4 s, 16 at a time: about 8 s of work, so the page sees it move.
    await simulator.configure(latency_ms=400)
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 300, ["sim/echo"], name="nightly summaries")
    page = await sign_in(browser, api_server, owners["alice"].key)
    await page.click(f"a[href='/batches/{batch_id}']")
    await page.wait_for_selector("#progress")
    # A mark on the window survives a swap of the page's live part, not a reload.
    await page.evaluate("window.__sameDocument = true")
    first = await _done(page)

    async def moved() -> bool:
        return await _done(page) > first

    await _wait_until(moved, what="the progress bar")
    assert await page.evaluate("window.__sameDocument") is True
    await page.screenshot(path=screenshots / "batch-running.png", full_page=True)
    await visit(page, f"{api_server.url}/")
    await page.wait_for_selector(f"tr[data-batch='{batch_id}'] progress")
    await page.screenshot(path=screenshots / "batches-running.png", full_page=True)
    await visit(page, f"{api_server.url}/fleet")
    assert int(await page.inner_text("#workers-alive")) >= 1
    await page.screenshot(path=screenshots / "fleet-running.png", full_page=True)
    await visit(page, f"{api_server.url}/batches/{batch_id}")
    await page.evaluate("window.__sameDocument = true")
    await _wait_until(lambda: _status_is(page, "completed"), what="the batch's status")
    assert await page.evaluate("window.__sameDocument") is True
    assert await _done(page) == 300
    assert await page.inner_text("#count-completed") == "300"
    await page.context.close()


async def test_spend_and_fallbacks_by_model_appear_once_models_answer(
    browser: Any, api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator, screenshots: Path
) -> None:
    await simulator.configure(down_models=["sim/echo"])
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 40, ["sim/echo", "sim/backup"], name="labels with a fallback")
    await _finished(client, batch_id)
    assert client.batches.retrieve(batch_id).status == "completed"
    page = await sign_in(browser, api_server, owners["alice"].key)
    await visit(page, f"{api_server.url}/batches/{batch_id}")
    row = page.locator("#models tr.model", has_text="sim/backup")
    cells = await row.locator("td").all_inner_texts()
    assert cells[1] == "40"
    assert cells[2] == "40"
    assert re.fullmatch(r"\$0\.0\d+", cells[6])
    assert cells[6] != "$0.000000"
    assert "40 of 40 answers (100.0%) came from a fallback" in await page.inner_text("#fallbacks")
    assert await page.locator("#chart-models polyline").count() == 1
    assert await page.locator("#chart-finished rect.ok").count() >= 1
    assert (await page.inner_text("#cost")).startswith("$0.0")
    await page.screenshot(path=screenshots / "batch-spend-by-model.png", full_page=True)
    await page.context.close()


async def test_cancel_from_the_page_cancels_the_batch(
    browser: Any, api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator, screenshots: Path
) -> None:
    await simulator.configure(latency_ms=300)
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 200, ["sim/echo"], name="to be cancelled")
    page = await sign_in(browser, api_server, owners["alice"].key)
    await visit(page, f"{api_server.url}/batches/{batch_id}")
    await page.click("#cancel")
    await page.wait_for_selector("text=Cancel asked")
    # The notice is said once: the address bar (and so a reload or a bookmark) no longer carries it.
    assert page.url == f"{api_server.url}/batches/{batch_id}"
    await _wait_until(lambda: _status_is(page, "cancelled"), what="the cancelled status")
    await page.screenshot(path=screenshots / "batch-cancelled.png", full_page=True)
    assert client.batches.retrieve(batch_id).status == "cancelled"
    assert await page.locator("#cancel").count() == 0
    await page.context.close()


async def test_a_batch_name_with_markup_shows_as_text_and_runs_nothing(
    browser: Any, api_server: ApiServer, owners: dict[str, NewKey], screenshots: Path
) -> None:
    name = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 1, ["sim/echo"], name=name)
    page = await sign_in(browser, api_server, owners["alice"].key)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    # The markup's <img src=x> would ask for /x as soon as it became an element.
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    assert await page.inner_text(f"tr[data-batch='{batch_id}'] a.name") == name
    await visit(page, f"{api_server.url}/batches/{batch_id}")
    assert await page.inner_text("h1") == name
    # What the markup could do it does before the page has loaded, or when a live part is swapped in (through
    # innerHTML, where an image's onerror runs): the page loaded, one swap seen if it is live, the network idle.
    await page.wait_for_load_state("load")
    if await page.evaluate("Boolean(document.getElementById('page')?.dataset.live)"):
        await page.wait_for_selector("body[data-refreshed-at]", state="attached", timeout=30_000)
    await page.wait_for_load_state("networkidle")
    assert not [url for url in asked if url.endswith("/x")]
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("main img").count() == 0
    assert dialogs == []
    await page.screenshot(path=screenshots / "batch-name-escaped.png")
    await page.context.close()


async def test_the_pages_work_without_javascript_at_a_phones_width(
    browser: Any, api_server: ApiServer, owners: dict[str, NewKey], screenshots: Path
) -> None:
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 5, ["sim/echo"], name="a long name " * 8)
    await _finished(client, batch_id)
    phone = {"viewport": {"width": 390, "height": 844}, "java_script_enabled": False}
    page = await sign_in(browser, api_server, owners["alice"].key, **phone)
    for path, name in (
        ("/", "phone-batches"),
        (f"/batches/{batch_id}", "phone-batch"),
        ("/fleet", "phone-fleet"),
    ):
        await visit(page, f"{api_server.url}{path}")
        assert await page.locator("#live").count() == 1
        # Wide tables scroll inside their box; the page itself never scrolls sideways.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, path
        await page.screenshot(path=screenshots / f"{name}.png", full_page=True)
    await visit(page, f"{api_server.url}/batches/{batch_id}")
    assert await page.inner_text("#count-completed") == "5"
    assert await page.locator("#chart-finished").count() == 1
    # The list's card says when the batch was made, on a line of its own under the name.
    await visit(page, f"{api_server.url}/")
    card = page.locator(f"tr[data-batch='{batch_id}']")
    created = card.locator("td.created")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", await created.inner_text())
    boxes = [await card.locator(f"td.{cell}").bounding_box() for cell in ("what", "created", "state")]
    spans = [(box["y"], box["y"] + box["height"]) for box in boxes if box is not None]
    assert len(spans) == 3
    assert spans[0][1] <= spans[1][0] + 1
    assert spans[1][1] <= spans[2][0] + 1
    await page.context.close()
