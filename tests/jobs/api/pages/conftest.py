"""Dashboard fixtures: Debian's Chromium driven by Playwright, a signed-in page, and where screenshots go."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest
from openai import OpenAI

from jobs.api.keys import NewKey
from tests.jobs.api.conftest import ApiServer, batch_lines, jsonl
from tests.support import ROOT, Simulator

# Playwright's own browser download cannot run everywhere: the suite drives the machine's Chromium.
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """ORBATCH_CHROMIUM, else the first Chromium on PATH."""
    given = os.environ.get("ORBATCH_CHROMIUM")
    if given:
        return given
    return next((found for name in _BROWSERS if (found := shutil.which(name))), None)


def in_ci(environ: Mapping[str, str]) -> bool:
    """Whether the tests run in CI: `CI` set to anything but empty, 0, false or no (`.ci/run` sets CI=true)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def no_chromium(environ: Mapping[str, str]) -> NoReturn:
    """What a browser test does without a Chromium: fail in CI, where browser tests that skip would prove
    nothing while the run looks green; skip elsewhere, saying how to install one."""
    how = (
        "install Debian's `chromium` package (apt-get install -y chromium) or set ORBATCH_CHROMIUM to a "
        "Chromium or Chrome executable"
    )
    if in_ci(environ):
        pytest.fail(
            f"no Chromium to drive the browser tests, and in CI they may not skip: {how}", pytrace=False
        )
    pytest.skip(f"no Chromium to drive: {how}")


@pytest.fixture(autouse=True)
async def calm_simulator(simulator: Simulator) -> AsyncIterator[None]:
    """Each test starts with the simulator at its defaults and leaves it so: a test here that slows it or takes
    a model down never reaches the next test on this worker, in this folder or another."""
    yield
    await simulator.reset()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the browser tests save what they saw (ORBATCH_TEST_ARTIFACTS, else ./test-artifacts)."""
    folder = Path(os.environ.get("ORBATCH_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium for the module's tests."""
    executable = chromium_path()
    if executable is None:
        no_chromium(os.environ)
    # The async API, on the suite's event loop: the sync one runs a loop of its own in this thread.
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        await launched.close()


async def sign_in(browser: Any, server: ApiServer, key: str, **context: Any) -> Any:
    """A page in a fresh browser context, signed in through the form with `key`."""
    made = await browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **context})
    page = await made.new_page()
    await visit(page, f"{server.url}/signin")
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{server.url}/")
    return page


async def visit(page: Any, url: str) -> Any:
    """Open `url` and insist on a 200: a page that failed says so with its text, not as a missing element."""
    answer = await page.goto(url)
    assert answer is not None
    assert answer.status == 200, f"{url}: {answer.status} {(await page.inner_text('body'))[:2000]}"
    return answer


def start_batch(
    client: OpenAI, count: int, models: list[str], name: str | None = None, prefix: str = "q", **extra: Any
) -> str:
    """A batch of `count` requests made through the API (orbatch's own options in `extra`); its id."""
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(count, prefix))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"name": name} if name else None,
        extra_body={"models": models, **extra},
    )
    return batch.id


__all__ = ["NewKey", "chromium_path", "in_ci", "no_chromium", "sign_in", "start_batch", "visit"]
