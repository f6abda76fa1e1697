"""Headless Chromium (Debian's package, driven by Playwright's Python API) against real bridges.

Two things may be missing on a machine, and they are treated differently:

- the browser (Playwright's Python package and Debian's chromium): every test here needs it
  (the /chat page and the share page are part of this repository), so in CI (`CI=true`) a
  missing browser fails them; on a developer's machine it skips them, saying how to get it;
- the mio-chat client's build (`MIOCHAT_WEB_ROOT`, a folder with its index.html): not part of
  this repository, so the tests of that client (the `web_root` fixture) skip without it, in CI
  too, with a note on how to get it. Nothing else depends on it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Route

WEB_ROOT_ENV = "MIOCHAT_WEB_ROOT"
CHROMIUM_ENV = "CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"

GET_BUILD = (
    f"set {WEB_ROOT_ENV} to a mio-chat web-client build to run them: "
    "`python3 scripts/get_miochat_build.py web/miochat` downloads the pinned build "
    f"(or reads it from a local clone named by MIOCHAT_BACKEND_GIT), then "
    f"`{WEB_ROOT_ENV}=web/miochat make test` (CI runs them when {WEB_ROOT_ENV} is set in its "
    "environment)"
)
GET_BROWSER = (
    "`pip install -e '.[test]'` brings Playwright, `apt-get install chromium` Debian's "
    f"chromium at {DEFAULT_CHROMIUM} ({CHROMIUM_ENV}=<path> names another); Playwright's own "
    "browser download is not used"
)

# The machine may have no network: without these Chromium keeps dialling Google's services
# (QUIC, component updates, sync) and fills the log with refused connections. No sandbox
# because the tests may run as root (CI does).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Everything the page asks of another origin (the build embeds an analytics tag) is refused at
# once: the tests depend on the bridge alone, and a slow outside host never holds up a load.
NOT_LOOPBACK = re.compile(r"^(?!(?:https?|wss?)://127\.0\.0\.1[:/])[a-z]+://")


def _missing_browser(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the browser tests; {GET_BROWSER}", pytrace=False)
    pytest.skip(f"{reason}; {GET_BROWSER}")


@pytest.fixture(scope="session")
def web_root() -> Path:
    value = os.environ.get(WEB_ROOT_ENV, "")
    if not value:
        pytest.skip(f"no mio-chat build: {GET_BUILD}")
    root = Path(value).resolve()
    if not (root / "index.html").is_file():
        pytest.skip(f"{WEB_ROOT_ENV}={value} has no index.html: {GET_BUILD}")
    return root


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium, one per test (a launch takes well under a second, and a test never
    inherits a crashed or stuck browser)."""
    try:
        from playwright.async_api import Error, async_playwright
    except ImportError:
        _missing_browser("Playwright's Python package is not installed")
    executable = os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM
    if shutil.which(executable) is None:
        _missing_browser(f"no chromium at {executable}")
    async with async_playwright() as p:
        try:
            browser = await p.chromium.launch(
                executable_path=executable, args=CHROMIUM_ARGS, timeout=30_000
            )
        except Error as e:
            _missing_browser(f"chromium at {executable} did not start: {e.message}")
        try:
            yield browser
        finally:
            await browser.close()


async def _refuse(route: Route) -> None:
    await route.abort()


@pytest.fixture
async def new_context(
    browser: Browser, bridge_factory: object
) -> AsyncIterator[Callable[[], Awaitable[BrowserContext]]]:
    """Makes fresh browser profiles: the clients keep their id (and the mio-chat client its
    code and contacts) in localStorage and IndexedDB, so each profile starts as a first visit.
    Service workers are blocked: the mio-chat client's worker caches same-origin GETs in
    IndexedDB, which would make a test depend on an earlier page.

    It depends on `bridge_factory` only so that its profiles are closed before the bridges
    stop: a page still connected would hold the bridge's shutdown until its Socket.IO session
    times out."""
    made: list[BrowserContext] = []

    async def make() -> BrowserContext:
        ctx = await browser.new_context(service_workers="block")
        made.append(ctx)
        ctx.set_default_timeout(15_000)
        await ctx.route(NOT_LOOPBACK, _refuse)
        return ctx

    try:
        yield make
    finally:
        for ctx in made:
            await ctx.close()


@pytest.fixture
async def context(new_context: Callable[[], Awaitable[BrowserContext]]) -> BrowserContext:
    """One fresh profile for the test."""
    return await new_context()
