"""The /chat page (adapters/webchat) and the share page in a headless Chromium, against a real
bridge with the embedded MomoHub sandbox: the page is a client of the public hub protocol, so
each test drives it as a person would and checks what the bridge's other side sees.

Set MOMOBRIDGE_SCREENSHOTS=<folder> to keep the screenshot of a conversation (docs/images/chat.png
in the README comes from `MOMOBRIDGE_SCREENSHOTS=docs/images`)."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from bridge.outbox import send_from_contact
from tests.conftest import Bridge

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

USER = "alice"
USER_CODE = "users"
WAIT_MS = 15_000
MOMO = next(c for c in DEMO_CHARACTERS if c.name == "Momo")
SCREENSHOTS_ENV = "MOMOBRIDGE_SCREENSHOTS"

pytestmark = pytest.mark.timeout(60)

BridgeFactory = Callable[..., Awaitable[Bridge]]


async def chat_bridge(bridge_factory: BridgeFactory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True}, auth={"user_code": USER_CODE})


async def open_chat(context: BrowserContext, hub: Bridge, csp_errors: list[str]) -> Page:
    """The page, logged in as USER, with Momo's chat open."""
    page = await context.new_page()
    await page.set_viewport_size({"width": 1000, "height": 700})
    # A CSP refusal shows only on the console: collect them so a test can say there were none.
    page.on(
        "console",
        lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    await page.goto(f"{hub.http}/chat")
    await page.fill("#login-id", USER)
    await page.fill("#login-code", USER_CODE)
    await page.click("#login button[type=submit]")
    await page.locator(f'#contacts .contact.active[data-id="{MOMO.id}"]').wait_for()
    return page


async def say(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


def reply_text(text: str) -> str:
    """What the sandbox's echo responder answers as Momo."""
    return f"Momo: you said {text}"


async def until(check: Callable[[], Awaitable[bool] | bool]) -> None:
    """Polls ``check`` (bridge state a test waits on, which has no event to wait for) until
    it holds."""
    async with asyncio.timeout(WAIT_MS / 1000):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.02)


async def test_chat_logs_in_lists_contacts_and_streams_a_reply(
    bridge_factory: BridgeFactory, context: BrowserContext, tmp_path: Path
) -> None:
    hub = await chat_bridge(bridge_factory)
    csp_errors: list[str] = []
    page = await open_chat(context, hub, csp_errors)

    names = await page.locator("#contacts .contact .name").all_text_contents()
    assert names == [c.name for c in DEMO_CHARACTERS]
    assert await page.text_content("#peer") == "Momo"
    assert await page.text_content(f'#contacts [data-id="{MOMO.id}"] .bio') == MOMO.bio

    text = "please /slow tell me a story about the sea"
    await say(page, text)
    # The message is stored: the ack gave it its id, and with it a recall button.
    await page.locator(".msg.mine[data-message-id] .recall").wait_for()

    # The reply grows while it streams (the sandbox sends one token every 0.2 s) ...
    streaming = page.locator(".msg.theirs.streaming .text")
    await page.wait_for_function(
        "() => document.querySelector('.msg.theirs.streaming .text')?.textContent.length > 0"
    )
    first = await streaming.text_content() or ""
    await page.wait_for_function(
        "n => document.querySelector('.msg.theirs.streaming .text')?.textContent.length > n",
        arg=len(first),
    )
    assert first and not first.startswith(reply_text(text))
    # ... and ends as the stored reply: the push carrying the stream's request id replaced it.
    done = page.locator(".msg.theirs:not(.streaming)[data-message-id] .text")
    await done.wait_for()
    assert await done.text_content() == reply_text(text)
    assert await page.locator(".msg.theirs").count() == 1

    await say(page, "thank you!")
    await page.locator(".msg.theirs[data-message-id]").nth(1).wait_for()
    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    await asyncio.to_thread(shots.mkdir, parents=True, exist_ok=True)
    png = await page.screenshot(path=str(shots / "chat.png"))
    assert png.startswith(b"\x89PNG")

    # The id is remembered for the next visit, the code is not.
    await page.reload()
    assert await page.input_value("#login-id") == USER
    assert await page.input_value("#login-code") == ""
    assert csp_errors == []


async def test_recall_own_message_and_recalls_pushed_by_the_bridge(
    bridge_factory: BridgeFactory, context: BrowserContext
) -> None:
    hub = await chat_bridge(bridge_factory)
    page = await open_chat(context, hub, [])

    await say(page, "hello there")
    await page.locator(".msg.theirs:not(.streaming)[data-message-id]").wait_for()
    await page.click(".msg.mine .recall")
    # The page's own message goes with the answer; its reply with the del_msg push.
    await page.locator(".msg").first.wait_for(state="detached")
    assert await page.locator(".msg").count() == 0

    # Another tab of the same user talks to Momo, then takes its message back: this page sees
    # the reply arrive as a push and leave again with the bridge's del_msg push.
    other = await hub.client(USER, USER_CODE)
    rid = await other.send(
        "onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id=MOMO.id
    )
    ack = await other.reply(rid)
    await other.stream(rid)
    reply = page.locator(".msg.theirs .text", has_text=reply_text("hi"))
    await reply.wait_for()
    answer = await other.request(
        "onebot",
        "del_message",
        {"id": MOMO.id, "content": {"message_id": ack["data"]["message_id"]}},
    )
    assert answer["code"] == 0, answer
    await reply.wait_for(state="detached")


async def test_reconnect_replays_what_was_pushed_meanwhile(
    bridge_factory: BridgeFactory, context: BrowserContext
) -> None:
    hub = await chat_bridge(bridge_factory)
    app = hub.app
    assert app.hub is not None and app.outbox is not None and app.storage is not None
    outbox = app.outbox
    page = await open_chat(context, hub, [])

    text = "please /slow keep talking while I drop"
    await say(page, text)
    await page.wait_for_function(
        "() => document.querySelector('.msg.theirs.streaming .text')?.textContent.length > 0"
    )
    # The server drops the page mid-reply (as a dead network would look to it).
    for connection in app.hub.clients_of(USER):
        connection.abort("test: connection lost")
    await until(lambda: not outbox.online(USER))
    await page.locator("#status.offline").wait_for()

    # A message for the user while no connection of theirs is open: it waits in the outbox.
    await send_from_contact(
        app.storage.messages,
        outbox,
        USER,
        MOMO.id,
        [{"type": "text", "data": {"text": "a note while you were away"}}],
        sender_name="Momo",
    )
    assert not outbox.online(USER)

    # The page comes back by itself, logs in, and gets both: the note, and the reply whose
    # stream was cut (finished meanwhile, so it arrives as a push that replaces the partial one).
    await page.locator("#status:not(.offline)", has_text="online").wait_for()
    await page.locator(".msg.theirs .text", has_text="a note while you were away").wait_for()
    done = page.locator(".msg.theirs:not(.streaming)[data-message-id] .text", has_text=text)
    await done.wait_for()
    assert await done.text_content() == reply_text(text)
    assert await page.locator(".msg.theirs").count() == 2

    # Rendered, then confirmed with system/ack: nothing is left to replay.
    async def confirmed() -> bool:
        return await outbox.pending_count(USER) == 0

    await until(confirmed)


async def test_share_page_renders_for_a_browser_and_stays_json_for_programs(
    bridge_factory: BridgeFactory, context: BrowserContext
) -> None:
    hub = await chat_bridge(bridge_factory)
    card = {"name": "Momo <b>the</b> cat", "bio": "Likes <script>tea</script> & naps."}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hub.http}/api/share", json={"contactor": card}) as r:
            url = (await r.json())["data"]["shareUrl"]
        async with http.get(url) as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert await r.json() == card

    page = await context.new_page()
    response = await page.goto(url)
    assert response is not None and response.status == 200
    assert await page.text_content("h1.name") == card["name"]
    assert await page.text_content("p.bio") == card["bio"]
    # Shown as text: no element came out of the card's strings.
    assert await page.locator("main b, main script").count() == 0
    assert await page.title() == "Momo <b>the</b> cat · MomoBridge"
