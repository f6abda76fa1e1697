"""The admin console in a real headless Chromium against a running bridge with the sandbox."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ADMIN_CODE, Bridge
from tests.e2e.test_cluster_nodes import cluster
from tests.e2e.test_momohub import MOMO, chat_messages, send
from tests.e2e.test_schedule import SETTINGS as SCHEDULE_SETTINGS
from tests.e2e.test_schedule import ask, job_id

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

# Set to write the overview's screenshot for the docs (docs/images/console-overview.png).
SCREENSHOT_ENV = "CONSOLE_SCREENSHOT"


@pytest.fixture
async def hub(bridge_factory: Callable[..., Awaitable[Bridge]]) -> Bridge:
    # Ticks faster than the default so the live view catches up within a test's patience.
    return await bridge_factory(momohub={"enabled": True}, console={"live_seconds": 0.2})


async def _open(context: BrowserContext, bridge: Bridge) -> Page:
    page = await context.new_page()
    await page.goto(bridge.http + "/console")
    await page.locator("#login-form").wait_for()
    return page


async def _login(page: Page, code: str) -> None:
    await page.fill("#code", code)
    await page.click("#login-form button[type=submit]")


async def test_wrong_code_is_refused(context: BrowserContext, hub: Bridge) -> None:
    page = await _open(context, hub)
    await _login(page, "not-the-code")
    await page.locator("#login-error", has_text="wrong code").wait_for()
    assert await page.locator("#app").is_hidden()
    # Nor does the page's own script get anything past the login.
    status = await page.evaluate("fetch('/console/api/overview').then(r => r.status)")
    assert status == 401


async def test_overview_shows_a_connection_live(context: BrowserContext, hub: Bridge) -> None:
    page = await _open(context, hub)
    await _login(page, ADMIN_CODE)
    await page.locator("#connections", has_text="0").wait_for()
    await hub.client("uma")
    # No reload: the live stream brings it.
    await page.locator("#connections", has_text="1").wait_for()
    await page.locator("#users-online", has_text="1").wait_for()
    await page.locator("#components td", has_text="database").wait_for()
    await page.locator("#live.on").wait_for()
    # A single bridge has no cluster: no Nodes panel.
    assert await page.locator("#nodes-panel").is_hidden()
    # The login form is gone, not merely pushed above the app (its CSS once beat `hidden`).
    assert await page.locator("#login").is_hidden()
    # A reload keeps the session (the cookie), and the data is still there.
    await page.reload()
    await page.locator("#connections", has_text="1").wait_for()
    if shot := os.environ.get(SCREENSHOT_ENV):
        await send(hub.clients[0], MOMO, "hello")
        await page.locator("#rpm", has_text="1").wait_for()
        await page.set_viewport_size({"width": 1000, "height": 560})
        await page.screenshot(path=str(Path(shot)))


async def test_recall_from_the_console(context: BrowserContext, hub: Bridge) -> None:
    user = await hub.client("vic")
    ack, _ = await send(user, MOMO, "please forget this")
    await user.wait_push()
    assert len(await chat_messages(hub, "vic", MOMO)) == 2
    page = await _open(context, hub)
    await _login(page, ADMIN_CODE)
    await page.click("nav button[data-tab=conversations]")
    await page.locator("#conversations tr[data-user=vic]").click()
    mid = ack["data"]["message_id"]
    turn = page.locator(f"#turns li[data-id='{mid}']")
    await turn.locator(".text", has_text="please forget this").wait_for()
    await turn.locator("button.recall").click()
    await page.locator("#conversation-status", has_text="Recalled").wait_for()
    await turn.wait_for(state="detached")
    assert await page.locator("#turns li").count() == 0
    messages: list[Any] = await chat_messages(hub, "vic", MOMO)
    assert messages == []  # gone upstream too, in the sandbox


async def test_logs_tab_shows_real_events_by_level(context: BrowserContext, hub: Bridge) -> None:
    from bridge.logging import RECENT_LOGS

    # The ring is the process's: earlier tests' bridges logged into it too.
    start = max((e["seq"] for e in RECENT_LOGS.since(0, limit=10_000)), default=0)
    page = await _open(context, hub)
    await _login(page, ADMIN_CODE)
    await page.click("nav button[data-tab=logs]")
    # A login, logged by the bridge and read from its ring.
    login = re.compile(r"^console\.login$")
    await page.locator("#logs td", has_text=login).first.wait_for()
    # A refused login (from the page's own origin, so it reaches the code check) is a warning.
    status = await page.evaluate(
        """fetch('/console/api/login', {method: 'POST', body: JSON.stringify({code: 'nope'}),
            headers: {'Content-Type': 'application/json'}}).then(r => r.status)"""
    )
    assert status == 403
    await page.select_option("#log-level", "warning")
    await page.locator("#logs td", has_text="console.login_refused").first.wait_for()
    new = [e["event"] for e in RECENT_LOGS.since(start, limit=10_000)]
    assert "console.login" in new and "console.login_refused" in new
    levels = await page.locator("#logs tbody tr td:nth-child(2)").all_text_contents()
    assert levels and all(level in ("warning", "error", "critical") for level in levels)
    events = await page.locator("#logs tbody tr td:nth-child(3)").all_text_contents()
    assert "console.login" not in events


async def test_schedules_tab_pauses_resumes_and_deletes(
    context: BrowserContext, bridge_factory: Callable[..., Awaitable[Bridge]]
) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True}, console={"live_seconds": 0.2}, plugins=SCHEDULE_SETTINGS
    )
    user = await hub.client("wyn")
    await ask(user, "/schedule add every 1h stretch", "Schedule #1 added")
    scheduler = hub.app.scheduler
    page = await _open(context, hub)
    await _login(page, ADMIN_CODE)
    await page.click("nav button[data-tab=schedules]")
    row = page.locator("#schedules tr[data-id='1']")
    await row.locator("td", has_text="stretch").wait_for()
    await row.locator("td", has_text="every 1h").wait_for()
    await row.locator("button.pause").click()
    await row.locator("td.next", has_text="paused").wait_for()
    assert not scheduler.has(job_id(1))
    await row.locator("button.resume").click()
    await row.locator("button.pause").wait_for()
    assert scheduler.has(job_id(1))
    await row.locator("button.delete").click()
    await row.wait_for(state="detached")
    await page.locator("#schedules-status", has_text="deleted").wait_for()
    assert not scheduler.has(job_id(1))
    assert await hub.app.storage.plugin_kv.get("schedule", "s:1") is None


async def test_conversation_list_follows_new_messages(context: BrowserContext, hub: Bridge) -> None:
    page = await _open(context, hub)
    await _login(page, ADMIN_CODE)
    await page.click("nav button[data-tab=conversations]")
    await page.locator("#live.on").wait_for()
    assert await page.locator("#conversations tbody tr").count() == 0
    await send(await hub.client("xia"), MOMO, "hello")
    # No reopen: the stream's conversations event brings the new row.
    await page.locator("#conversations tr[data-user=xia]").wait_for()


async def test_overview_shows_the_cluster_s_nodes(
    postgres_dsn: str,
    redis_url: str,
    context: BrowserContext,
    bridge_factory: Callable[..., Awaitable[Bridge]],
) -> None:
    # The database and Redis come first, so they go last: the bridges stop before them.
    shared: dict[str, Any] = {"storage": {"url": postgres_dsn}, "console": {"live_seconds": 0.2}}
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    page = await _open(context, a)
    await _login(page, ADMIN_CODE)
    panel = page.locator("#nodes-panel")
    await panel.wait_for()
    mine = panel.locator("tr[data-node='node-a']")
    other = panel.locator("tr[data-node='node-b']")
    await mine.locator("td.node-id", has_text="node-a").wait_for()
    await mine.locator("td.node-id", has_text="(this one)").wait_for()
    await other.locator("td", has_text=f":{b.app.port}").wait_for()
    assert await other.locator("td.node-id").text_content() == "node-b"  # not this one
    await mine.locator("td", has_text=f":{a.app.port}").wait_for()
    await mine.locator("td.seen", has_text=re.compile(r"^\d+ s ago$")).wait_for()
    assert await panel.locator("tbody tr").count() == 2
    # A node that stops leaves the list, live (it unregisters at once).
    await b.app.stop()
    await other.wait_for(state="detached")
    assert await panel.locator("tbody tr").count() == 1
