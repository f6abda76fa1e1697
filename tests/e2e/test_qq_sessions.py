"""The QQ link's sessions and connections under pressure, end to end: the NapCat-like
implementation (tests/support/qq_impl.py) against a real bridge and the MomoHub sandbox.

Queues and merging, recalls while a turn is prepared, limits (rate, queue, sessions, turns at
once, frame size), the handshake's refusals, replaced connections, shutdown, and the config
rules of the QQ link."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
import structlog
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed

import adapters.onebot.qq_edge as qq_edge
from bridge.config import Config
from tests.conftest import Bridge
from tests.e2e.test_qq import ALICE, BOB, BOT, GROUP, TOKEN, impl, qq_settings, ws_url
from tests.support.hub_client import eventually as until
from tests.support.qq_impl import HandshakeRefused, QQImpl, at, image, record, reply

BUSY = "I'm still answering"
TOO_FAST = "You're sending messages too fast; please wait a minute."


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True}, onebot=qq_settings())


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


# ----- replaced connections, frames, handshake, heartbeats, shutdown ---------------------------


async def test_a_replaced_connection_goes_down_before_the_new_one_comes_up(hub: Bridge) -> None:
    assert hub.app.qq is not None
    link = hub.app.qq.link
    calls: list[tuple[Any, bool]] = []
    real = link._on_account

    def record_call(account: Any, up: bool) -> None:
        calls.append((account, up))
        real(account, up)

    link._on_account = record_call
    one = await impl(hub)
    again = await impl(hub, first_id=900)  # NapCat reconnecting before the old one is seen dead
    try:
        await one.wait_closed()
        await asyncio.sleep(0.2)  # the old connection's handler has ended meanwhile
        old, new = calls[0][0], calls[2][0]
        assert [(a, up) for a, up in calls] == [(old, True), (old, False), (new, True)]
        assert old is not new and link.accounts[BOT] is new
        state = hub.app.health.get(f"qq:{BOT}")
        assert state is not None and state.state == "ok"
        await again.private(ALICE, "still here")
        await again.wait_sent(1)
        assert again.texts() == ["Momo: you said still here"]
        await again.close()
        await until(lambda: len(calls) == 4)
        await asyncio.sleep(0.1)
        assert calls[3] == (new, False) and len(calls) == 4
    finally:
        await again.close()
        await one.close()


async def test_a_frame_over_4_mib_closes_the_connection(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        try:
            await sim.send_raw('{"post_type": "' + "x" * (5 << 20) + '"}')
        except (ConnectionClosed, ConnectionResetError):
            pass  # the bridge closed it while it was being sent
        await sim.wait_closed()
        assert sim.close_code == 1009  # message too big
    finally:
        await sim.close()


async def test_handshake_refusals_are_answered_and_logged(hub: Bridge) -> None:
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(HandshakeRefused) as wrong:
            await impl(hub, token="nope")
        for role in ("API", "Event"):  # go-cqhttp's split connections
            with pytest.raises(HandshakeRefused) as split:
                await impl(hub, role=role)
            assert split.value.status == 400
            assert b"Universal" in split.value.body
        async with aiohttp.ClientSession() as http:
            async with http.get(
                ws_url(hub).replace("ws://", "http://"),
                headers={
                    "X-Self-ID": "\u00b2",  # a digit to str.isdigit, not a number
                    "Authorization": f"Bearer {TOKEN}",
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            ) as r:
                assert r.status == 400
    assert wrong.value.status == 403
    refused = events(logs, "qq.refused")
    assert [(e["status"], e["reason"]) for e in refused] == [
        (403, "access token"),
        (400, "X-Client-Role API"),
        (400, "X-Client-Role Event"),
        (400, "X-Self-ID"),
    ]
    # Universal, or no role at all, is one connection for everything.
    for n, role in enumerate(("Universal", "")):
        sim = await impl(hub, role=role, first_id=1000 * (n + 1))
        try:
            await sim.private(BOB, f"hi {n}")
            await sim.wait_sent(1)
        finally:
            await sim.close()


async def test_a_heartbeat_of_a_logged_out_account_shows_in_the_health(hub: Bridge) -> None:
    sim = await impl(hub)
    health = hub.app.health

    def state() -> str:
        component = health.get(f"qq:{BOT}")
        return component.state if component is not None else ""

    try:
        await sim.heartbeat(online=True)
        await sim.private(ALICE, "hi")
        await sim.wait_sent(1)
        assert state() == "ok"
        await sim.heartbeat(online=False)
        await until(lambda: state() == "logged_out")
        await health.run_probes()  # /readyz refreshes the accounts: still logged out
        assert state() == "logged_out" and not health.ready
        await sim.heartbeat(online=True)
        await until(lambda: state() == "ok")
    finally:
        await sim.close()


async def test_stop_is_quick_with_an_account_connected(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.private(ALICE, "hello")
        await sim.wait_sent(1)
        started = time.monotonic()
        await hub.app.stop()
        assert time.monotonic() - started < 2.0
        await sim.wait_closed()
    finally:
        await sim.close()


# ----- limits: rate, queue, sessions, turns at once ---------------------------------------------


async def test_commands_count_against_the_rate_limit(bridge_factory) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True}, onebot=qq_settings(rate_per_minute=2, typing=False)
    )
    sim = await impl(hub)
    try:
        for _ in range(6):
            await sim.private(BOB, "/help")
        await sim.wait_for(lambda: TOO_FAST in sim.texts(), 10, "the notice")
        await asyncio.sleep(0.5)
        texts = sim.texts()
        assert texts.count(TOO_FAST) == 1
        assert len([t for t in texts if t != TOO_FAST]) == 2, texts
    finally:
        await sim.close()


async def test_commands_count_toward_the_queue_size(bridge_factory) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True}, onebot=qq_settings(queue_size=2, rate_per_minute=100)
    )
    sim = await impl(hub)
    try:
        await sim.private(ALICE, "take your time /slow")
        await sim.wait_call("set_input_status")
        for _ in range(6):
            await sim.private(ALICE, "/persona")
        await sim.wait_for(lambda: any(t.startswith(BUSY) for t in sim.texts()), 10, "busy")
        assert hub.app.qq is not None
        session = hub.app.qq._sessions[f"qq:{BOT}:u{ALICE}"]
        assert len(session.pending) == 2
        await sim.wait_for(lambda: "take your time" in " ".join(sim.texts()), 15, "the reply")
        await sim.wait_for(
            lambda: len([t for t in sim.texts() if "persona" in t.lower()]) >= 2, 10, "commands"
        )
        await asyncio.sleep(0.3)
        texts = sim.texts()
        assert len([t for t in texts if t.startswith(BUSY)]) == 1
        assert len([t for t in texts if "persona" in t.lower()]) == 2, texts
    finally:
        await sim.close()


async def test_quotes_between_members_cost_no_rate_and_are_never_told_busy(
    bridge_factory,
) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True}, onebot=qq_settings(rate_per_minute=2, queue_size=1)
    )
    storage = hub.app.storage
    assert storage is not None
    sim = await impl(hub)
    try:
        other = await sim.group(GROUP, ALICE, "a message by alice", card="Alice")
        with structlog.testing.capture_logs() as logs:
            for n in range(3):
                await sim.group(GROUP, BOB, [reply(other["message_id"]), f"agree {n}"], card="Bob")
                await sim.wait_call("get_msg", n + 1)  # checked: not a quote of the bot
            # They cost Bob nothing: his two messages to the bot are answered.
            first = await sim.group(GROUP, BOB, [at(BOT), " first /slow"], card="Bob")
            await _stored(storage, first["message_id"])
            # While it is answered: a quote waits (the queue holds one), a message to the bot
            # takes its place, and one more quote finds the queue full: neither is told busy.
            await sim.group(GROUP, ALICE, [reply(other["message_id"]), "me too"], card="Alice")
            await sim.group(GROUP, BOB, [at(BOT), " second"], card="Bob")
            await sim.group(GROUP, ALICE, [reply(other["message_id"]), "+1"], card="Alice")
            await sim.wait_sent(2, timeout=15)
            await asyncio.sleep(0.3)
        assert sim.texts() == ["Momo: you said Bob: first /slow", "Momo: you said Bob: second"]
        dropped = [e for e in events(logs, "qq.queue_full") if e.get("maybe")]
        assert len(dropped) == 2 and {e["log_level"] for e in dropped} == {"debug"}
        assert not events(logs, "qq.rate_limited")
    finally:
        await sim.close()


async def test_a_quote_of_the_bot_counts_against_the_rate_limit(bridge_factory) -> None:
    hub = await bridge_factory(momohub={"enabled": True}, onebot=qq_settings(rate_per_minute=2))
    sim = await impl(hub)
    try:
        await sim.group(GROUP, BOB, [at(BOT), " hello"], card="Bob")
        await sim.wait_sent(1)
        bot_message = sim.sent[-1].message_id
        await sim.group(GROUP, BOB, [reply(bot_message), "answering you"], card="Bob")
        await sim.wait_sent(2)
        await sim.group(GROUP, BOB, [reply(bot_message), "and again"], card="Bob")
        await sim.wait_for(lambda: TOO_FAST in sim.texts(), 10, "the notice")
        assert not any("and again" in t for t in sim.texts())
    finally:
        await sim.close()


async def test_sessions_are_bounded_under_a_flood(bridge_factory, monkeypatch) -> None:
    monkeypatch.setattr(qq_edge, "MAX_SESSIONS", 5)
    hub = await bridge_factory(
        momohub={"enabled": True}, onebot=qq_settings(typing=False, reply_mode="whole")
    )
    sim = await impl(hub)
    assert hub.app.qq is not None
    edge = hub.app.qq
    try:
        with structlog.testing.capture_logs() as logs:
            for n in range(40):
                await sim.private(100_000 + n, "hi /slow")
            await asyncio.sleep(0.3)
            assert len(edge._sessions) == 5
        assert len(events(logs, "qq.too_many_sessions")) == 1
        # The first five are answered; once their sessions are idle, newcomers get in.
        await sim.wait_sent(5, timeout=15)
        assert sorted(s.target[1] for s in sim.sent) == [100_000 + n for n in range(5)]
        await until(lambda: all(s.idle for s in edge._sessions.values()))
        await sim.private(ALICE, "a newcomer")
        await sim.wait_sent(6)
        assert sim.texts(("private", ALICE)) == ["Momo: you said a newcomer"]
        assert len(edge._sessions) == 5
    finally:
        await sim.close()


async def test_turns_of_one_account_beyond_max_active_wait_their_turn(bridge_factory) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True},
        onebot=qq_settings(max_active=1, reply_mode="whole", typing=False),
    )
    sim = await impl(hub)
    try:
        await sim.private(ALICE, "a slow one /slow")
        await asyncio.sleep(0.1)
        await sim.private(BOB, "a quick one")
        await sim.wait_sent(2, timeout=15)
        assert sim.texts() == ["Momo: you said a slow one /slow", "Momo: you said a quick one"]
    finally:
        await sim.close()


# ----- merging, recalls ------------------------------------------------------------------------


async def test_a_burst_into_an_idle_session_is_one_turn(bridge_factory) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True}, onebot=qq_settings(merge_window=1.0, typing=False)
    )
    sim = await impl(hub)
    try:
        for word in ("hi", "are you", "there"):
            await sim.private(ALICE, word)
            await asyncio.sleep(0.3)
        await sim.wait_sent(1)
        # Once the sender is quiet for merge_window, a new message is a new turn.
        await asyncio.sleep(1.2)
        await sim.private(ALICE, "later")
        await sim.wait_sent(2)
        assert sim.texts() == ["Momo: you said hi\nare you\nthere", "Momo: you said later"]
    finally:
        await sim.close()


async def test_a_burst_is_cut_at_queue_size_messages(bridge_factory) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True},
        onebot=qq_settings(merge_window=5, queue_size=3, typing=False),
    )
    sim = await impl(hub)
    try:
        started = time.monotonic()
        for word in ("one", "two", "three"):
            await sim.private(ALICE, word)
        await sim.wait_sent(1)
        assert time.monotonic() - started < 2.5  # not merge_window: the queue is full
        assert sim.texts() == ["Momo: you said one\ntwo\nthree"]
        assert not any(t.startswith(BUSY) for t in sim.texts())
    finally:
        await sim.close()


async def test_a_burst_is_cut_at_four_merge_windows(bridge_factory) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True},
        onebot=qq_settings(merge_window=0.4, queue_size=20, typing=False),
    )
    sim = await impl(hub)
    try:
        started = time.monotonic()
        for n in range(10):  # one every 0.3 s: the sender is never quiet for 0.4 s
            await sim.private(ALICE, f"m{n}")
            await asyncio.sleep(0.3)
        await sim.wait_sent(2)
        first = sim.sent[0]
        assert first.at - started < 1.6 + 1.0, first.at - started
        words = first.text.removeprefix("Momo: you said ").split("\n")
        assert words[0] == "m0" and 3 <= len(words) <= 7, words
        await sim.wait_for(lambda: "m9" in " ".join(sim.texts()), 10, "the rest")
        said = "\n".join(t.removeprefix("Momo: you said ") for t in sim.texts())
        assert said.split("\n") == [f"m{n}" for n in range(10)]
    finally:
        await sim.close()


async def test_a_recall_while_the_quoted_message_is_fetched_drops_the_turn(
    bridge_factory,
) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True}, onebot=qq_settings(typing=False, action_timeout=1.0)
    )
    sim = await impl(hub)
    try:
        sim.stall("get_msg")
        event = await sim.private(ALICE, [reply(12345), "what about this"])
        await sim.wait_call("get_msg")
        with structlog.testing.capture_logs() as logs:
            await sim.friend_recall(ALICE, event["message_id"])
            await until(lambda: bool(events(logs, "qq.withdrawn")), 5)
        await sim.private(ALICE, "next")
        await sim.wait_sent(1)
        assert sim.texts() == ["Momo: you said next"]
        assert hub.app.qq is not None
        session = hub.app.qq._sessions[f"qq:{BOT}:u{ALICE}"]
        assert session._handing == set() and session._recalled == set()
    finally:
        await sim.close()


async def test_a_message_recalled_while_its_turn_is_prepared_is_left_out(
    bridge_factory,
) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True},
        onebot=qq_settings(typing=False, action_timeout=1.0, merge_window=0.3),
    )
    sim = await impl(hub)
    try:
        sim.stall("get_msg")
        first = await sim.private(ALICE, [reply(12345), "about this"])
        await sim.private(ALICE, "and this")
        await sim.wait_call("get_msg")
        await sim.friend_recall(ALICE, first["message_id"])
        await sim.wait_sent(1)
        assert sim.texts() == ["Momo: you said and this"]
        assert hub.app.qq is not None
        session = hub.app.qq._sessions[f"qq:{BOT}:u{ALICE}"]
        assert session._handing == set() and session._recalled == set()
        # The turn's message was stored under the remaining QQ id only.
        storage = hub.app.storage
        assert storage is not None
        assert await storage.qq.find(BOT, first["message_id"]) is None
    finally:
        await sim.close()


async def test_group_recalls_shared_and_per_member(bridge_factory) -> None:
    for isolation in ("shared", "member"):
        hub = await bridge_factory(
            momohub={"enabled": True},
            onebot=qq_settings(group_isolation=isolation, recall_follows=True),
        )
        storage = hub.app.storage
        assert storage is not None
        sim = await impl(hub)
        try:
            # Recalled while its reply is generated: cancelled.
            slow = "cancel me /slow " + "word " * 8 + "The end."
            cancel = await sim.group(GROUP, BOB, [at(BOT), " " + slow], card="Bob")
            await _stored(storage, cancel["message_id"])
            await sim.group_recall(GROUP, BOB, cancel["message_id"])
            # Recalled after its answer: the answer follows.
            answered = await sim.group(GROUP, ALICE, [at(BOT), " answer me"], card="Alice")
            await sim.wait_sent(1)
            who = "Alice: " if isolation == "shared" else ""
            assert sim.texts() == [f"Momo: you said {who}answer me"]
            bot_id = sim.sent[-1].message_id
            await sim.group_recall(GROUP, ALICE, answered["message_id"])
            assert await sim.wait_deleted(1) == [bot_id]
            await asyncio.sleep(0.5)
            assert not any("cancel me" in t for t in sim.texts())
        finally:
            await sim.close()


async def _stored(storage: Any, qq_id: int) -> None:
    """Until the bridge has stored the QQ message (its turn was handed over)."""

    async def stored() -> bool:
        return await storage.qq.find(BOT, qq_id) is not None

    await until(stored, what=f"QQ message {qq_id} stored")


# ----- what a chat may do ----------------------------------------------------------------------


async def test_schedule_in_a_private_chat_and_only_admins_in_groups(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.private(BOB, "/schedule add every 1h hello")
        added = await sim.wait_sent(1)
        assert added[-1].text.startswith("Schedule #"), added[-1].text
        await sim.private(BOB, "/schedule list")
        await sim.wait_sent(2)
        assert "hello" in sim.texts()[-1]
        await sim.group(GROUP, BOB, "/schedule add every 1h hello group", card="Bob")
        await sim.wait_sent(3)
        assert sim.texts()[-1].startswith("Only an admin may schedule")
        await sim.group(GROUP, ALICE, "/schedule add every 1h hello group", card="Alice")
        await sim.wait_sent(4)
        assert sim.texts()[-1].startswith("Schedule #")
        group_id = sim.texts()[-1].split()[1].rstrip(":")
        await sim.group(GROUP, BOB, f"/schedule del {group_id}", card="Bob")
        await sim.wait_sent(5)
        assert sim.texts()[-1].startswith("No schedule"), sim.texts()[-1]
        await sim.group(GROUP, ALICE, f"/schedule del {group_id}", card="Alice")
        await sim.wait_sent(6)
        assert sim.texts()[-1].endswith("deleted."), sim.texts()[-1]
    finally:
        await sim.close()


async def test_unknown_commands_in_groups_need_a_trigger(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.group(GROUP, BOB, "/weather Berlin", card="Bob")  # another bot's command
        await sim.group(GROUP, BOB, [at(BOT), " /weather Berlin"], card="Bob")
        await sim.wait_sent(1)
        await sim.private(BOB, "/weather Berlin")
        await sim.wait_sent(2)
        await asyncio.sleep(0.3)
        hint = "Unknown command /weather. /help lists the commands."
        assert sim.texts() == [hint, hint]
        assert [s.target for s in sim.sent] == [("group", GROUP), ("private", BOB)]
    finally:
        await sim.close()


async def test_a_bot_framework_contact_cannot_answer_qq_chats(bridge_factory) -> None:
    link = {"url": "ws://127.0.0.1:9/onebot/v11/ws", "reconnect_interval": 30}
    with pytest.raises(ValidationError, match=r"onebot\.qq\.default_target: '10000' is the bot"):
        Config.model_validate(
            {"onebot": {"frameworks": [link], **qq_settings(default_target="10000")}}
        )
    hub = await bridge_factory(
        momohub={"enabled": True}, onebot={"frameworks": [link], **qq_settings()}
    )
    storage = hub.app.storage
    assert storage is not None
    await storage.qq.bind(f"qq:{BOT}:u{ALICE}", hub.config.auth.bot_qq)  # as if bound before
    sim = await impl(hub)
    try:
        with structlog.testing.capture_logs() as logs:
            await sim.private(ALICE, "hello")
            await sim.wait_sent(1)
        assert sim.texts() == [
            "Sorry, no character to talk to here: 10000 does not talk to QQ chats"
        ]
        assert [e["session"] for e in events(logs, "qq.no_contact")] == [f"qq:{BOT}:u{ALICE}"]
        await sim.private(ALICE, "/char use 10000")
        await sim.wait_sent(2)
        assert "does not talk to QQ chats" in sim.texts()[-1]
    finally:
        await sim.close()


def test_an_open_qq_link_needs_a_real_token() -> None:
    def config(host: str, token: str, enabled: bool = True) -> Config:
        return Config.model_validate(
            {
                "server": {"host": host},
                "onebot": {"qq": {"enabled": enabled, "access_token": token}},
            }
        )

    for host in ("0.0.0.0", "::", "192.168.1.5", "bridge.example.com"):
        for token in ("", "change-me", "  "):
            with pytest.raises(ValidationError, match=r"onebot\.qq\.access_token: "):
                config(host, token)
        assert config(host, "a-long-random-token").onebot.qq.access_token
        assert not config(host, "", enabled=False).onebot.qq.enabled
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert config(host, "").server.host == host


# ----- what reaches the character, what the chat sees ------------------------------------------


async def test_the_path_with_a_trailing_slash(hub: Bridge) -> None:
    sim = QQImpl(ws_url(hub, "/onebot/v11/ws/"), BOT, TOKEN)
    await sim.connect()
    try:
        await sim.private(ALICE, "slash")
        await sim.wait_sent(1)
        assert sim.texts() == ["Momo: you said slash"]
    finally:
        await sim.close()


async def test_tool_calls_are_shown_only_when_asked(bridge_factory) -> None:
    for show in (False, True):
        hub = await bridge_factory(
            momohub={"enabled": True}, onebot=qq_settings(show_tool_calls=show)
        )
        sim = await impl(hub)
        try:
            await sim.private(ALICE, "what time is it /tool")
            await sim.wait_for(lambda s=sim: any("you said" in t for t in s.texts()), 10, "reply")
            expected = ["Momo: you said what time is it /tool"]
            assert sim.texts() == (["[clock…]", *expected] if show else expected)
        finally:
            await sim.close()


async def test_typing_is_shown_in_private_chats_only(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.group(GROUP, BOB, [at(BOT), " in the group"], card="Bob")
        await sim.wait_sent(1)
        assert sim.calls_of("set_input_status") == []
        await sim.private(BOB, "in private")
        await sim.wait_sent(2)
        typing = sim.calls_of("set_input_status")
        assert [c.params for c in typing] == [{"user_id": BOB, "event_type": 1}]
    finally:
        await sim.close()


async def test_a_quote_of_a_members_message_reaches_the_character_as_context(
    hub: Bridge,
) -> None:
    sim = await impl(hub)
    try:
        said = await sim.group(GROUP, ALICE, "the sky is green", card="Alice")
        await sim.group(
            GROUP, BOB, [reply(said["message_id"]), at(BOT), " is that right?"], card="Bob"
        )
        await sim.wait_sent(1)
        assert [c.params for c in sim.calls_of("get_msg")] == [{"message_id": said["message_id"]}]
        assert sim.texts() == [
            "Momo: you said Bob: [quoting Alice: the sky is green]\nis that right?"
        ]
    finally:
        await sim.close()


async def test_images_and_voice_reach_the_character_as_placeholders(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.private(
            ALICE,
            [
                image("https://img.example.com/cat.png"),
                "look at this",
                record("https://voice.example.com/hi.amr"),
            ],
        )
        await sim.wait_sent(1)
        assert sim.texts() == [
            "Momo: you said [image: https://img.example.com/cat.png]look at this"
            "[voice: https://voice.example.com/hi.amr]"
        ]
    finally:
        await sim.close()
