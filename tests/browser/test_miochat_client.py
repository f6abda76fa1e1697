"""The pinned mio-chat web client (its production build, in Chromium) against the bridge that
serves it: `[miochat] web_root` for the page, `[miochat] socketio` for its connection, the
embedded MomoHub sandbox for characters.

Each test starts from a first visit (a fresh browser profile), as a new user would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from adapters.momohub.sandbox.entities import DEMO_CHARACTERS
from tests.conftest import ADMIN_CODE, Bridge
from tests.support.fake_framework import FakeFramework

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Locator, Page, WebSocket

USER_CODE = "users"
WAIT_MS = 15_000
MOMO = next(c for c in DEMO_CHARACTERS if c.name == "Momo")

# The build first: without it these tests skip before a browser is started (in CI too, where a
# missing browser would otherwise fail them).
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("web_root")]


class Wire:
    """What the page's Socket.IO WebSocket carries, as Engine.IO text packets: `40{auth}` is the
    handshake the client sends, `42["message","<frame JSON>"]` a frame either way."""

    def __init__(self, page: Page) -> None:
        self.sent: list[str] = []
        self.received: list[str] = []
        self._changed = asyncio.Event()
        page.on("websocket", self._watch)

    def _watch(self, ws: WebSocket) -> None:
        if "/socket.io/" in ws.url:
            ws.on("framesent", lambda p: self._note(self.sent, p))
            ws.on("framereceived", lambda p: self._note(self.received, p))

    def _note(self, into: list[str], payload: str | bytes) -> None:
        into.append(payload if isinstance(payload, str) else payload.decode(errors="replace"))
        self._changed.set()

    def handshakes(self) -> list[dict[str, Any]]:
        return [json.loads(p[2:]) for p in self.sent if p.startswith("40{")]

    def frames_received(self) -> list[dict[str, Any]]:
        return [_frame(p) for p in self.received if p.startswith('42["message"')]

    def frames_sent(self) -> list[dict[str, Any]]:
        return [_frame(p) for p in self.sent if p.startswith('42["message"')]

    async def sent_frame(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame the page sent that ``match``es, waiting for it if need be."""
        return await self._first(self.frames_sent, match)

    async def received_frame(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return await self._first(self.frames_received, match)

    async def sent_event(self, name: str) -> Any:
        """The payload of the first Socket.IO event ``name`` (other than `message`) sent."""

        def events() -> list[list[Any]]:
            return [json.loads(p[2:]) for p in self.sent if p.startswith(f'42["{name}"')]

        return (await self._first(events, lambda e: True))[1]

    async def _first(self, items: Callable[[], list[Any]], match: Callable[[Any], bool]) -> Any:
        async with asyncio.timeout(WAIT_MS / 1000):
            while True:
                self._changed.clear()
                for item in items():
                    if match(item):
                        return item
                await self._changed.wait()


def _frame(packet: str) -> dict[str, Any]:
    event, data = json.loads(packet[2:])[:2]
    assert event == "message" and isinstance(data, str), packet  # frames travel as JSON text
    return json.loads(data)


def is_login(f: dict[str, Any]) -> bool:
    return f.get("protocol") == "system" and f.get("type") == "login"


@pytest.fixture
async def hub(bridge_factory, web_root: Path) -> Bridge:
    return await bridge_factory(
        momohub={"enabled": True},
        auth={"user_code": USER_CODE},
        miochat={"socketio": True, "web_root": str(web_root)},
    )


async def open_auth_view(context: BrowserContext, hub: Bridge) -> tuple[Page, Wire]:
    """A first visit to `/`: the client's router sends it to the access-code form."""
    page = await context.new_page()
    wire = Wire(page)
    await page.goto(f"{hub.http}/")
    await page.wait_for_url(lambda url: "/auth" in url, timeout=WAIT_MS)
    await page.locator(".auth-view input[type=password]").wait_for(timeout=WAIT_MS)
    return page, wire


async def log_in(page: Page, code: str) -> None:
    await page.fill(".auth-view input[type=password]", code)
    await page.click(".auth-view button.login")


async def test_admin_code_logs_in_to_the_contact_list(context: BrowserContext, hub: Bridge) -> None:
    page, wire = await open_auth_view(context, hub)
    await log_in(page, ADMIN_CODE)

    # The client leaves the form for the main shell, whose contact list has its first contact
    # (with no recommended presets from the server, its built-in "MioBot").
    await page.wait_for_url(lambda url: "/auth" not in url, timeout=WAIT_MS)
    contact = page.locator("#friendlists .mio-contact-item__name").first
    await contact.wait_for(timeout=WAIT_MS)
    assert (await contact.inner_text()).strip()
    assert await page.locator(".auth-view").count() == 0

    # Over the WebSocket transport: the client's handshake carried the code, and the bridge
    # answered with the login frame that names it admin.
    [auth] = wire.handshakes()
    assert auth["token"] == ADMIN_CODE and auth["id"]
    logins = [f for f in wire.frames_received() if is_login(f)]
    assert len(logins) == 1 and logins[0]["data"]["is_admin"] is True
    assert f"character:{MOMO.id}" in logins[0]["data"]["models"]["momohub"][0]["models"]
    # The bridge keeps the user under the id the client made up for itself...
    user = await hub.app.storage.users.get(str(auth["id"]))
    assert user is not None and user.is_admin
    # ...and the client took the answer in: it remembers the login and the admin code.
    stored = await page.evaluate("[localStorage.everLogin, localStorage.admin_code]")
    assert stored == ["true", ADMIN_CODE]


async def test_wrong_code_is_refused_with_the_reason(context: BrowserContext, hub: Bridge) -> None:
    page, wire = await open_auth_view(context, hub)
    await log_in(page, "not-the-code")

    # The client shows the connect error's message, the bridge's refusal reason, in a toast.
    toast = page.locator(".el-message--error").filter(has_text="invalid code")
    await toast.first.wait_for(timeout=WAIT_MS)

    assert [a["token"] for a in wire.handshakes()] == ["not-the-code"]
    assert not any(is_login(f) for f in wire.frames_received())
    assert "/auth" in page.url
    assert await page.locator(".auth-view input[type=password]").is_visible()
    assert await page.evaluate("localStorage.everLogin ?? null") is None


async def test_guest_login_needs_an_empty_user_code(
    context: BrowserContext, bridge_factory, web_root: Path
) -> None:
    """The client's guest button sends no code at all; it gets in only where no user code is
    set (with one set, it is refused like a wrong code)."""
    hub = await bridge_factory(
        momohub={"enabled": True}, miochat={"socketio": True, "web_root": str(web_root)}
    )
    page, wire = await open_auth_view(context, hub)
    await page.click(".auth-view button.later")

    await page.wait_for_url(lambda url: "/auth" not in url, timeout=WAIT_MS)
    await page.locator("#friendlists .mio-contact-item__name").first.wait_for(timeout=WAIT_MS)
    [auth] = wire.handshakes()
    assert "token" not in auth  # undefined in the client, so left out of the JSON
    [login] = [f for f in wire.frames_received() if is_login(f)]
    assert login["data"]["is_admin"] is False
    assert await page.evaluate("localStorage.admin_code ?? null") is None


async def open_character_chat(page: Page, name: str) -> None:
    """From the main shell: add the character from the add dialog's presets tab (the bridge's
    MomoHub characters) and open its chat."""
    await page.click("#addcont")
    await page.locator(".tab-item", has_text="预设").click()
    preset = page.locator(".presets-item").filter(has=page.locator(".preset-name", has_text=name))
    await preset.locator("button").click()
    await page.keyboard.press("Escape")
    await page.locator(".el-overlay-dialog").wait_for(state="hidden", timeout=WAIT_MS)
    await page.locator("#friendlists .mio-contact-item__name", has_text=name).click()
    await page.wait_for_url(lambda url: "/chat/" in url, timeout=WAIT_MS)


async def send_text(page: Page, text: str) -> None:
    """Send ``text`` in the open chat. The send button of this build throws before sending
    (its `send` lost the line that built the message, useInputSend.js in 87eb4e7), so the text
    goes through the client's own `window.__mio.sendText`, which sends the way the button was
    meant to: through the open contact's webSend."""
    await page.evaluate("text => window.__mio.sendText(text)", text)


def reply_bubble(page: Page, message_id: str) -> Locator:
    return page.locator(f'#main-messages-window .message-container[data-id="{message_id}"]')


def stream_of(wire: Wire, message_id: str) -> list[dict[str, Any]]:
    return [f for f in wire.frames_received() if f.get("request_id") == message_id]


def streamed_text(frames: list[dict[str, Any]]) -> str:
    return "".join(
        f["data"]["content"]
        for f in frames
        if f["message"] == "update" and f["data"].get("type") == "content"
    )


async def test_a_character_streams_its_reply_into_the_chat(
    context: BrowserContext, hub: Bridge
) -> None:
    page, wire = await open_auth_view(context, hub)
    await log_in(page, ADMIN_CODE)
    await page.locator("#friendlists .mio-contact-item__name").first.wait_for(timeout=WAIT_MS)
    await open_character_chat(page, MOMO.name)

    await send_text(page, "hello Momo")
    ask = await wire.sent_frame(lambda f: f.get("type") == "completions")
    assert ask["protocol"] == "llm"
    assert ask["data"]["settings"]["base"]["model"] == f"character:{MOMO.id}"
    reply_id = ask["metaData"]["messageId"]

    # The echo arrives in the page as the character's message, completed.
    expected = f"{MOMO.name}: you said hello Momo"
    reply = reply_bubble(page, reply_id)
    await reply.locator(".content.completed", has_text=expected).wait_for(timeout=WAIT_MS)
    user_bubble = page.locator("#main-messages-window .message-container").filter(
        has_text="hello Momo"
    )
    assert await user_bubble.count() >= 1

    # It came as a stream: pending, updates adding up to the text, then complete; and the
    # client confirmed it, so the bridge can let the stored reply go.
    frames = stream_of(wire, reply_id)
    kinds = [f["message"] for f in frames]
    assert kinds[0] == "pending" and kinds[-1] == "complete" and "update" in kinds, kinds
    assert streamed_text(frames) == expected
    ack = await wire.sent_frame(lambda f: f.get("type") == "ack_message")
    assert ack["data"]["messageId"] == reply_id

    # A tool call (`/tool` makes the sandbox run a clock tool first) shows as the client's
    # tool block, finished (完成), above the text.
    await send_text(page, "what time is it /tool")
    ask = await wire.sent_frame(
        lambda f: f.get("type") == "completions" and f["metaData"]["messageId"] != reply_id
    )
    reply = reply_bubble(page, ask["metaData"]["messageId"])
    block = reply.locator(".action-block-header").filter(has_text="clock")
    await block.locator(".block-status-text", has_text="完成").wait_for(timeout=WAIT_MS)
    await reply.locator(".content.completed", has_text="you said what time is it").wait_for(
        timeout=WAIT_MS
    )


# `/slow` anywhere in a message makes the sandbox's echo wait 0.2 s per word: a reply long (20 s)
# enough to act on while it streams (a message starting with it would be a chat command).
SLOW = "please /slow " + " ".join(f"w{i}" for i in range(100))


async def test_stop_from_the_message_menu_interrupts_the_reply(
    context: BrowserContext, hub: Bridge
) -> None:
    page, wire = await open_auth_view(context, hub)
    await log_in(page, ADMIN_CODE)
    await page.locator("#friendlists .mio-contact-item__name").first.wait_for(timeout=WAIT_MS)
    await open_character_chat(page, MOMO.name)

    await send_text(page, SLOW)
    ask = await wire.sent_frame(lambda f: f.get("type") == "completions")
    reply_id = ask["metaData"]["messageId"]
    reply = reply_bubble(page, reply_id)
    await reply.locator(".content", has_text=f"{MOMO.name}:").wait_for(timeout=WAIT_MS)

    # The message's own menu has 停止 (stop) while it streams.
    await reply.locator(".content").click(button="right")
    await page.locator("#message-menu div:has(> i.iconfont.stop)").click()
    interrupt = await wire.sent_event("interruptGeneration")
    assert interrupt == {"contactorId": ask["metaData"]["contactorId"], "messageId": reply_id}

    # The bridge ends the reply with `complete`; the page keeps the part that had arrived.
    await wire.received_frame(
        lambda f: f.get("request_id") == reply_id and f["message"] == "complete"
    )
    await reply.locator(".content.completed").wait_for(timeout=WAIT_MS)
    full = f"{MOMO.name}: you said {SLOW}"
    text = streamed_text(stream_of(wire, reply_id))
    assert text and full.startswith(text) and len(text) < len(full), text
    assert full not in await reply.inner_text()


async def test_a_reply_survives_closing_the_tab(context: BrowserContext, hub: Bridge) -> None:
    page, wire = await open_auth_view(context, hub)
    await log_in(page, ADMIN_CODE)
    await page.locator("#friendlists .mio-contact-item__name").first.wait_for(timeout=WAIT_MS)
    await open_character_chat(page, MOMO.name)
    chat_path = page.url[len(hub.http) :]

    text = "please /slow " + " ".join(f"w{i}" for i in range(8))
    await send_text(page, text)
    ask = await wire.sent_frame(lambda f: f.get("type") == "completions")
    reply_id = ask["metaData"]["messageId"]
    await wire.received_frame(
        lambda f: f.get("request_id") == reply_id and f["message"] == "update"
    )
    await page.close()  # mid-reply

    # The same browser comes back (its stored id and code log it in by themselves): the login
    # names the chat as having a reply waiting, and the chat gets the whole reply.
    page2 = await context.new_page()
    wire2 = Wire(page2)
    await page2.goto(f"{hub.http}/")
    login = await wire2.received_frame(is_login)
    assert ask["metaData"]["contactorId"] in login["data"]["pendingTasks"]
    contact = page2.locator("#friendlists .mio-contact-item").filter(has_text=MOMO.name)
    await contact.locator(".unread-badge").wait_for(timeout=WAIT_MS)
    await contact.click()
    await page2.wait_for_url(lambda url: url.endswith(chat_path), timeout=WAIT_MS)
    full = f"{MOMO.name}: you said {text}"
    reply = reply_bubble(page2, reply_id)
    await reply.locator(".content.completed", has_text=full).wait_for(timeout=WAIT_MS)
    ack = await wire2.sent_frame(lambda f: f.get("type") == "ack_message")
    assert ack["data"]["messageId"] == reply_id


@pytest.fixture
async def framework(bridge_factory, web_root: Path) -> AsyncIterator[tuple[Bridge, FakeFramework]]:
    """A bridge linked to a bot framework (played by FakeFramework), serving the client."""
    fw = FakeFramework()
    url = await fw.start()
    b = await bridge_factory(
        onebot={
            "frameworks": [{"url": url, "reconnect_interval": 0.05, "heartbeat_interval": 0.2}]
        },
        miochat={"socketio": True, "web_root": str(web_root)},
    )
    async with asyncio.timeout(WAIT_MS / 1000):
        await b.app.frameworks.wait_connected(1)
    await fw.wait_connections(1)
    yield b, fw
    await fw.stop()


async def open_onebot_chat(context: BrowserContext, hub: Bridge) -> tuple[Page, Wire, Locator]:
    """Logged in as admin; the client added its OneBot contact because the login said OneBot
    is on."""
    page, wire = await open_auth_view(context, hub)
    await log_in(page, ADMIN_CODE)
    login = await wire.received_frame(is_login)
    assert login["data"]["onebot_enabled"] is True
    contact = page.locator("#friendlists .mio-contact-item").filter(has_text="OneBot")
    await contact.wait_for(timeout=WAIT_MS)
    return page, wire, contact


async def test_a_framework_message_shows_in_the_onebot_contact(
    context: BrowserContext, framework: tuple[Bridge, FakeFramework]
) -> None:
    hub, fw = framework
    page, _, contact = await open_onebot_chat(context, hub)
    admin_qq = int(hub.config.auth.admin_qq)  # the admin, as the framework knows them
    answer = await fw.call("send_private_msg", {"user_id": admin_qq, "message": "hi from the bot"})
    assert answer["status"] == "ok"
    await contact.locator(
        ".mio-contact-item__message-summary", has_text="hi from the bot"
    ).wait_for(timeout=WAIT_MS)
    await contact.click()
    bubble = page.locator("#main-messages-window .message-container").filter(
        has_text="hi from the bot"
    )
    await bubble.wait_for(timeout=WAIT_MS)


async def test_a_message_to_the_onebot_contact_reaches_the_framework(
    context: BrowserContext, framework: tuple[Bridge, FakeFramework]
) -> None:
    """The client's OneBot contact has an id of the client's own making; the bridge takes a
    message to a contact it does not know as one to the linked framework's bot."""
    hub, fw = framework
    page, wire, contact = await open_onebot_chat(context, hub)
    await contact.click()
    await page.wait_for_url(lambda url: "/chat/" in url, timeout=WAIT_MS)
    await send_text(page, "hi framework")

    sent = await wire.sent_frame(lambda f: f.get("protocol") == "onebot")
    answer = await wire.received_frame(lambda f: f.get("request_id") == sent["request_id"])
    assert answer.get("code") == 0, answer  # acked with the stored message id
    event = await fw.wait(lambda f: f.get("post_type") == "message")
    assert "hi framework" in json.dumps(event["message"])


async def test_a_shared_chat_opens_in_another_browser(
    new_context: Callable[[], Awaitable[BrowserContext]], bridge_factory, web_root: Path
) -> None:
    """The share button stores the chat on the bridge and gives a `/s/<id>` link; a fresh
    browser opening it logs in as a guest (no user code here) and gets the chat."""
    hub = await bridge_factory(
        momohub={"enabled": True}, miochat={"socketio": True, "web_root": str(web_root)}
    )
    page, _ = await open_auth_view(await new_context(), hub)
    await log_in(page, ADMIN_CODE)
    await page.locator("#friendlists .mio-contact-item__name").first.wait_for(timeout=WAIT_MS)
    await open_character_chat(page, MOMO.name)
    async with page.expect_response(lambda r: r.url.endswith("/api/share/set")) as answer:
        await page.locator(".upside-bar .share").click()
    share_url = (await (await answer.value).json())["data"]["shareUrl"]
    assert share_url.startswith(f"{hub.http}/s/"), share_url

    visitor = await (await new_context()).new_page()
    await visitor.goto(share_url)
    shared = visitor.locator("#friendlists .mio-contact-item__name", has_text=MOMO.name)
    await shared.wait_for(timeout=WAIT_MS)


async def test_a_reply_cut_short_by_a_restart_shows_as_failed(
    context: BrowserContext, hub: Bridge
) -> None:
    page, wire = await open_auth_view(context, hub)
    await log_in(page, ADMIN_CODE)
    await page.locator("#friendlists .mio-contact-item__name").first.wait_for(timeout=WAIT_MS)
    await open_character_chat(page, MOMO.name)

    await send_text(page, SLOW)
    ask = await wire.sent_frame(lambda f: f.get("type") == "completions")
    reply_id = ask["metaData"]["messageId"]
    await wire.received_frame(
        lambda f: f.get("request_id") == reply_id and f["message"] == "update"
    )

    # The bridge stops mid-reply and comes back on the same port and database; the open tab
    # reconnects by itself and is told what became of the reply.
    await hub.restart()
    await reply_bubble(page, reply_id).locator(".content.failed").wait_for(timeout=WAIT_MS)
