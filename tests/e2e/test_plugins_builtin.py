"""The built-in admin, character and filter plugins, from hub clients with the MomoHub sandbox
behind, over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from bridge.models import ConversationKey
from tests.conftest import ADMIN_CODE, Bridge
from tests.e2e.test_health import closed_port
from tests.e2e.test_momohub import KURO, MOMO, Sandbox, chat_messages, reply_text, send, text
from tests.e2e.test_plugins import command, generations, pushed_texts
from tests.support.hub_client import HubClient

SENSEI = "6d6f6d6f-0000-4000-8000-000000000003"
WAIT = 10.0


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True})


async def searches(bridge: Bridge) -> int:
    requests = (await Sandbox(bridge).stats())["requests"]
    return int(requests.get("GET /v1/characters/search", 0))


async def next_push_text(c: HubClient, before: int) -> str:
    await c.wait_for(lambda f: len(c.pushes("message")) > before)
    return pushed_texts(c)[before]


# ----- admin -----------------------------------------------------------------------------------


async def test_status_for_an_admin_and_refused_to_others(hub: Bridge) -> None:
    admin = await hub.client("root", ADMIN_CODE)
    await hub.client("ann")
    await hub.client("ann")  # a second tab: two connections, one user
    before = await generations(hub)
    lines = (await command(admin, "/status")).splitlines()
    assert lines[0].startswith("Uptime: ") and lines[0].endswith("s")
    assert "Hub connections: 3" in lines
    assert "Users online: 2" in lines
    assert "Streams in flight: 0 (completions: 0)" in lines
    assert "Framework links: none configured" in lines
    assert "MomoHub: ok" in lines
    # Another part of the app owns the scheduler: the line is there only when it is.
    has_scheduler = getattr(hub.app, "scheduler", None) is not None
    assert any(line.startswith("Schedules: ") for line in lines) == has_scheduler
    user = await hub.client("bob")
    assert await command(user, "/status") == "Only an admin may use /status."
    assert await command(user, "/broadcast hi all") == "Only an admin may use /broadcast."
    help_text = await command(user, "/help")
    assert "/status" not in help_text and "/broadcast" not in help_text
    assert "/status" in await command(admin, "/help")
    assert await generations(hub) == before


async def test_status_names_framework_links_and_streams_in_flight(bridge_factory) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/onebot/v11/ws"
    b = await bridge_factory(
        momohub={"enabled": True},
        onebot={"frameworks": [{"url": url, "reconnect_interval": 0.05}]},
    )
    user = await b.client("ann")
    rid = await user.send("onebot", "message", text("take your time /slow"), id=MOMO)
    ack = await user.reply(rid)
    # The reply is streaming once its first chunk is out.
    await user.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    admin = await b.client("root", ADMIN_CODE)
    lines = (await command(admin, "/status")).splitlines()
    assert "Streams in flight: 1 (completions: 0)" in lines
    at = lines.index("Framework links (1):")
    assert lines[at + 1].startswith(f"  {url}: disconnected (")
    turn = b.app.sessions.engine.find(
        ConversationKey("ann", MOMO, "default"), ack["data"]["message_id"]
    )
    assert turn is not None
    await turn.wait(WAIT)
    lines = (await command(admin, "/status")).splitlines()
    assert "Streams in flight: 0 (completions: 0)" in lines


async def test_broadcast_reaches_live_and_offline_users(hub: Bridge) -> None:
    away = await hub.client("away")
    await away.close()
    assert hub.app.hub is not None
    async with asyncio.timeout(WAIT):
        await hub.app.hub.wait_connections(0)
    live = await hub.client("live")
    admin = await hub.client("root", ADMIN_CODE)
    bot = str(hub.config.auth.bot_qq)
    before = len(live.pushes("message"))
    rid = await admin.send(
        "onebot", "message", text("/broadcast Maintenance at 22:00, back soon"), id=MOMO
    )
    assert (await admin.reply(rid))["code"] == 0
    # The admin is a hub user too: the broadcast reaches them, the answer comes from Momo.
    await admin.wait_push(lambda f: f["data"]["id"] == bot)

    def momo_said() -> list[str]:
        return [
            t
            for f, t in zip(admin.pushes("message"), pushed_texts(admin), strict=True)
            if f["data"]["id"] == MOMO
        ]

    await admin.wait_for(lambda f: len(momo_said()) >= 2)
    assert momo_said() == [
        "Broadcasting to 3 users…",
        "Broadcast sent to 3 users (2 online now, the rest at next login).",
    ]
    push = (await live.wait_push(lambda f: f["data"]["id"] == bot))["data"]
    assert push["content"]["sender"]["name"] == hub.config.server.title
    assert pushed_texts(live)[before:] == ["Maintenance at 22:00, back soon"]
    # Offline: kept in the outbox, delivered at the next login.
    back = await hub.client("away")
    got = await back.wait_push(lambda f: f["data"]["id"] == bot)
    assert pushed_texts(back) == ["Maintenance at 22:00, back soon"]
    assert got["data"]["content"]["message"][0]["data"]["text"].startswith("Maintenance")
    assert await command(admin, "/broadcast") == "text is missing. Usage: /broadcast <text...>"


# ----- character -------------------------------------------------------------------------------


async def test_char_list_info_search_use(hub: Bridge) -> None:
    c = await hub.client("cid")
    before = await generations(hub)
    listing = (await command(c, "/char list")).splitlines()
    assert listing[0] == "Characters (3):"
    assert [line.split(" — ")[0] for line in listing[1:]] == ["• Momo", "• Kuro", "• Sensei"]

    info = (await command(c, "/char info")).splitlines()
    assert info[0] == "Momo" and info[2] == f"id: {MOMO}"
    assert info[1] == "A cheerful assistant who is always glad to help."
    assert info[3] == "(this conversation's character)"
    assert (await command(c, "/char info kuro")).splitlines() == [
        "Kuro",
        "Says as little as possible.",
        f"id: {KURO}",
    ]
    assert (await command(c, f"/char info {SENSEI}")).startswith("Sensei\n")
    assert await command(c, "/char info nobody") == (
        "no character named 'nobody'. Usage: /char info [name...]"
    )

    searched = await searches(hub)
    found = await command(c, "/char search KUR")
    assert found.splitlines() == [
        "Characters matching 'KUR':",
        "• Kuro — Says as little as possible.",
    ]
    assert await searches(hub) == searched + 1  # MomoHub's own search was asked
    # Not in any name: found by its description among the known characters.
    assert (await command(c, "/char search teacher")).splitlines()[1].startswith("• Sensei")
    assert await command(c, "/char search zzz") == "No character matches 'zzz'."

    assert await command(c, "/char use momo") == "You are already talking to Momo."
    switch = await command(c, "/char use Kuro")
    assert "open Kuro in your contact list" in switch and KURO in switch
    assert await command(c, "/char use nobody") == (
        "no character named 'nobody'. Usage: /char use <name|id>"
    )
    assert (
        await command(c, "/char")
        == "a sub-command is needed. Usage: /char <info|list|search|use> ..."
    )
    assert await generations(hub) == before
    # In another character's conversation, "this conversation" is that one.
    assert (await command(c, "/char info", contact=KURO)).splitlines()[-1] == (
        "(this conversation's character)"
    )


async def test_char_search_falls_back_when_momohub_search_fails(hub: Bridge) -> None:
    c = await hub.client("dee")
    await Sandbox(hub).fault(path=r"GET /v1/characters/search", status=500, count=10)
    found = await command(c, "/char search sen")
    assert found.splitlines()[1].startswith("• Sensei")


# ----- filter ----------------------------------------------------------------------------------


async def test_filter_mask_on_input_and_replies(bridge_factory) -> None:
    b = await bridge_factory(
        momohub={"enabled": True},
        plugins={"filter": {"words": ["坏蛋", "SAID"], "action": "mask"}},
    )
    c = await b.client("eli")
    before = await generations(b)
    pushes = len(c.pushes("message"))
    _, frames = await send(c, MOMO, "你是坏蛋 and you Said so")
    assert frames[-1]["message"] == "completed"
    # The live stream is masked as it streams (a word split across pieces too), and so is the
    # stored and pushed reply.
    assert reply_text(frames) == "Momo: you **** 你是** and you **** so"
    assert not any(
        "said" in f["data"]["chunk"].lower() for f in frames if "chunk" in f.get("data", {})
    )
    assert await next_push_text(c, pushes) == "Momo: you **** 你是** and you **** so"
    assert await generations(b) == before + 1
    msgs = await chat_messages(b, "eli", MOMO)
    assert [m.text for m in msgs if m.senderType == "USER"] == ["你是** and you **** so"]
    # Full-width letters and a zero-width space do not hide a word.
    _, frames = await send(c, MOMO, "ｓａｉｄ 坏\u200b蛋")
    assert reply_text(frames) == "Momo: you **** **** **"


async def test_filter_block_on_input_and_replies(bridge_factory) -> None:
    b = await bridge_factory(
        momohub={"enabled": True},
        plugins={"filter": {"words": ["坏蛋", "momo:"], "action": "block"}},
    )
    c = await b.client("fin")
    before = await generations(b)
    notice = await command(c, "你是坏蛋吗")
    assert notice == "Your message was not sent: it contains a blocked word."
    assert await generations(b) == before  # never reached MomoHub
    pushes = len(c.pushes("message"))
    _, frames = await send(c, MOMO, "hello")
    assert frames[-1]["message"] == "completed"
    # Not a piece of the blocked reply was shown while it streamed.
    assert reply_text(frames) == ""
    assert await generations(b) == before + 1
    assert await next_push_text(c, pushes) == (
        "[This reply was withheld: it contained a blocked word.]"
    )
    # A reply without a blocked word streams whole (its end waits only for the last piece).
    b2 = await bridge_factory(
        momohub={"enabled": True},
        plugins={"filter": {"words": ["nowhere-to-be-seen"], "action": "block"}},
    )
    c2 = await b2.client("fin")
    _, frames = await send(c2, MOMO, "hello there")
    assert reply_text(frames) == "Momo: you said hello there"
    # Commands are filtered too (the filter runs first), and still never reach MomoHub.
    assert (await command(c, "/help")).startswith("Commands:")
    assert await generations(b) == before + 1


async def test_filter_without_words_registers_nothing(hub: Bridge) -> None:
    host = hub.app.plugins
    assert host is not None
    assert "filter" in [p.name for p in host.loaded]
    assert not [name for name, _ in host.input_filters if name == "filter"]
    assert not [name for name, _ in host.reply_filters if name == "filter"]


async def test_filter_settings_are_validated(bridge_factory) -> None:
    b = await bridge_factory(
        momohub={"enabled": True}, plugins={"filter": {"words": ["ok"], "action": "erase"}}
    )
    host = b.app.plugins
    assert host is not None
    assert "plugins.filter.action" in host.failed["filter"]
    c = await b.client("gil")
    assert (await command(c, "/help")).startswith("Commands:")
