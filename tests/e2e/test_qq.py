"""The QQ link end to end: a NapCat-like implementation (tests/support/qq_impl.py) dials the
bridge's reverse WebSocket over loopback; the MomoHub sandbox answers as the characters."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from tests.conftest import Bridge
from tests.e2e.test_momohub import KURO, MOMO
from tests.support.qq_impl import HandshakeRefused, QQImpl, at, reply

TOKEN = "qq-secret"
BOT = 2_000_001
ALICE = 30_001
BOB = 30_002
GROUP = 70_001


def qq_settings(**extra: Any) -> dict[str, Any]:
    return {
        "qq": {
            "enabled": True,
            "access_token": TOKEN,
            "segment_interval": 0,
            "merge_window": 0,
            "nicknames": ["momo"],
            "prefixes": ["#"],
            "admins": [str(ALICE)],
            **extra,
        }
    }


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True}, onebot=qq_settings())


def ws_url(bridge: Bridge, path: str = "/onebot/v11/ws") -> str:
    return f"ws://127.0.0.1:{bridge.app.port}{path}"


async def impl(bridge: Bridge, self_id: int = BOT, **kw: Any) -> QQImpl:
    sim = QQImpl(ws_url(bridge), self_id, kw.pop("token", TOKEN), **kw)
    await sim.connect()
    return sim


async def test_a_private_chat_talks_to_the_default_character(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.private(ALICE, "hello there")
        await sim.wait_sent(1)
        assert sim.texts(("private", ALICE)) == ["Momo: you said hello there"]
    finally:
        await sim.close()


async def test_a_wrong_or_missing_token_is_refused_at_the_handshake(hub: Bridge) -> None:
    for token, auth, status in (("nope", "bearer", 403), ("", "none", 401), ("nope", "query", 403)):
        with pytest.raises(HandshakeRefused) as refused:
            await impl(hub, token=token, auth=auth)
        assert refused.value.status == status
    # Token scheme and query parameter both work with the right token.
    for n, auth in enumerate(("token", "query")):
        # Ids of their own: the same account's message id twice is one message (a duplicate).
        sim = await impl(hub, auth=auth, first_id=1000 * (n + 1))
        await sim.private(BOB, "hi")
        await sim.wait_sent(1)
        await sim.close()


async def test_group_triggers_and_silence(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.group(GROUP, BOB, "just chatting", card="Bob")
        await sim.group(GROUP, BOB, [at(BOT), " hi bot"], card="Bob")
        await sim.wait_sent(1)
        assert sim.texts(("group", GROUP)) == ["Momo: you said Bob: hi bot"]
        # The first message of a reply quotes what it answers.
        assert sim.sent[0].segments[0]["type"] == "reply"
        await sim.group(GROUP, BOB, "#with a prefix", card="Bob")
        await sim.wait_sent(2)
        await sim.group(GROUP, BOB, "Momo, by name", card="Bob")
        await sim.wait_sent(3)
        bot_message = sim.sent[-1].message_id
        await sim.group(GROUP, BOB, [reply(bot_message), "answering you"], card="Bob")
        await sim.wait_sent(4)
        assert sim.texts(("group", GROUP))[1:] == [
            "Momo: you said Bob: with a prefix",
            "Momo: you said Bob: by name",
            "Momo: you said Bob: [quoting MomoQQ: Momo: you said Bob: by name]\nanswering you",
        ]
        # A command needs no trigger; chatter never got an answer.
        await sim.group(GROUP, BOB, "/char info", card="Bob")
        await sim.wait_sent(5)
        assert "Momo" in sim.texts(("group", GROUP))[-1]
        assert not any("just chatting" in t for t in sim.texts())
    finally:
        await sim.close()


async def test_shared_and_per_member_group_sessions(bridge_factory) -> None:
    for isolation in ("shared", "member"):
        hub = await bridge_factory(
            momohub={"enabled": True}, onebot=qq_settings(group_isolation=isolation)
        )
        sim = await impl(hub)
        try:
            await sim.group(GROUP, ALICE, [at(BOT), " /persona set Speak softly."], card="Alice")
            await sim.wait_sent(1)
            await sim.group(GROUP, BOB, [at(BOT), " /persona"], card="Bob")
            await sim.wait_sent(2)
            answer = sim.texts(("group", GROUP))[-1]
            if isolation == "shared":
                assert answer == "This conversation's persona:\nSpeak softly."
            else:
                assert answer.startswith("No persona here.")
            owner = f"qq:{BOT}:g{GROUP}" + (f":{ALICE}" if isolation == "member" else "")
            assert await hub.app.storage.conversations.instructions(owner, MOMO, "default") == (
                "Speak softly."
            )
        finally:
            await sim.close()


async def test_char_use_persona_and_reset_survive_a_restart(hub: Bridge) -> None:
    sim = await impl(hub)
    await sim.private(ALICE, "/char use Kuro")
    await sim.wait_sent(1)
    assert sim.texts()[-1].startswith("Now talking to Kuro.")
    await sim.private(ALICE, "/persona set Be brief.")
    await sim.wait_sent(2)
    await sim.private(ALICE, "hello")
    await sim.wait_sent(3)
    assert sim.texts()[-1] == "Kuro: you said hello"
    owner = f"qq:{BOT}:u{ALICE}"
    first_chat = await hub.app.storage.conversations.get(owner, KURO, "default")
    await sim.close()
    await hub.restart()
    sim = await impl(hub, first_id=500)
    try:
        await sim.private(ALICE, "again /prompt")
        await said(sim, "Be brief.")
        assert await hub.app.storage.conversations.get(owner, KURO, "default") == first_chat
        await sim.private(ALICE, "/reset")
        await said(sim, "Done:")
        await sim.private(ALICE, "fresh /prompt")
        await said(sim, "Be brief.", after="fresh")
        assert await hub.app.storage.conversations.get(owner, KURO, "default") != first_chat
        # The session's history is its own (and came through the restart).
        await sim.private(ALICE, "/history 3")
        reply = await said(sim, "you: hello")
        assert reply.startswith("you: hello\nKuro: Kuro: you said hello")
    finally:
        await sim.close()


async def said(sim: QQImpl, needle: str, after: str = "") -> str:
    """Until a message containing ``needle`` (sent after one containing ``after``) arrived;
    its text. Replies come in pieces: it may be any piece of one."""

    def found() -> str | None:
        texts = [t.text for t in sim.sent]
        since = next((i for i, t in enumerate(texts) if after and after in t), None)
        lo = since if since is not None else 0
        return next((t for t in texts[lo:] if needle in t), None)

    await sim.wait_for(lambda: found() is not None, 10, f"a message with {needle!r}")
    result = found()
    assert result is not None
    return result


async def test_two_accounts_at_once_keep_their_sessions_apart(hub: Bridge) -> None:
    one = await impl(hub, BOT)
    two = await impl(hub, BOT + 1)
    try:
        await one.private(ALICE, "to one")
        await two.private(ALICE, "to two")
        await one.wait_sent(1)
        await two.wait_sent(1)
        assert one.texts() == ["Momo: you said to one"]
        assert two.texts() == ["Momo: you said to two"]
        # A hub user whose id is a linked account's number is never given that number.
        users = hub.app.storage.users
        assert await users.number_for(str(BOT)) != BOT
        assert await users.number_for(str(BOT + 1)) != BOT + 1
        # A second connection for the same account replaces the first.
        again = await impl(hub, BOT, first_id=900)
        await one.wait_closed()
        await again.private(ALICE, "still one")
        await again.wait_sent(1)
        assert again.texts() == ["Momo: you said still one"]
        await again.close()
    finally:
        await one.close()
        await two.close()


async def test_segmented_replies_in_two_sessions_at_once_never_interleave(
    bridge_factory,
) -> None:
    hub = await bridge_factory(momohub={"enabled": True}, onebot=qq_settings(segment_interval=0.05))
    sim = await impl(hub)
    try:
        long = "The first sentence is here. The second one follows it! And a third, at last?"
        await sim.private(ALICE, long)
        await sim.private(BOB, long)
        await sim.wait_sent(6)
        for user in (ALICE, BOB):
            pieces = sim.texts(("private", user))
            assert pieces == [
                "Momo: you said The first sentence is here.",
                "The second one follows it!",
                "And a third, at last?",
            ]
            sends = [s for s in sim.sent if s.target == ("private", user)]
            gaps = [b.at - a.at for a, b in itertools.pairwise(sends)]
            assert all(gap >= 0.045 for gap in gaps), gaps
    finally:
        await sim.close()


async def test_a_burst_while_a_reply_runs_becomes_one_turn_and_overflow_is_told(
    bridge_factory,
) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True}, onebot=qq_settings(queue_size=3, merge_window=1)
    )
    sim = await impl(hub)
    try:
        await sim.private(ALICE, "take your time /slow")
        await sim.wait_call("set_input_status")
        for word in ("one", "two", "three"):
            await sim.private(ALICE, word)
        await sim.private(ALICE, "four")  # past queue_size
        await sim.wait_for(
            lambda: any("you said one" in t for t in sim.texts()), 30, "the merged turn"
        )
        texts = sim.texts()
        assert any(t.startswith("I'm still answering") for t in texts)
        merged = next(t for t in texts if "you said one" in t)
        assert merged == "Momo: you said one\ntwo\nthree"
        assert not any("four" in t for t in texts)
    finally:
        await sim.close()


async def test_duplicate_and_replayed_events_are_answered_once(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        event = await sim.private(ALICE, "only once")
        await sim.wait_sent(1)
        await sim.replay(event)
        # Across a reconnect too, and an old event a reconnecting implementation replays.
        await sim.reconnect()
        await sim.replay(event)
        await sim.private(ALICE, "stale", time=int(time.time()) - 600)
        await sim.private(ALICE, "fresh one")
        await sim.wait_sent(2)
        assert sim.texts() == ["Momo: you said only once", "Momo: you said fresh one"]
    finally:
        await sim.close()


async def test_recall_before_the_reply_cancels_it_and_after_it_follows(bridge_factory) -> None:
    hub = await bridge_factory(momohub={"enabled": True}, onebot=qq_settings(recall_follows=True))
    sim = await impl(hub)
    try:
        slow = await sim.private(ALICE, "cancel me /slow")
        await sim.wait_call("set_input_status")
        await sim.friend_recall(ALICE, slow["message_id"])
        await sim.private(ALICE, "answer me")
        await sim.wait_sent(1)
        assert sim.texts() == ["Momo: you said answer me"]
        answered = await sim.private(ALICE, "then recall me")
        await sim.wait_sent(2)
        bot_id = sim.sent[-1].message_id
        await sim.friend_recall(ALICE, answered["message_id"])
        assert await sim.wait_deleted(1) == [bot_id]
        assert not any("cancel me" in t for t in sim.texts())
    finally:
        await sim.close()


async def test_a_long_reply_goes_as_a_forward_or_falls_back_to_plain_messages(
    bridge_factory,
) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True},
        onebot=qq_settings(forward_threshold=200, max_message_chars=150, reply_mode="whole"),
    )
    sim = await impl(hub)
    try:
        words = " ".join(f"word{i}" for i in range(60))
        await sim.private(ALICE, words)
        await sim.wait_sent(1)
        assert sim.sent[0].forward and "word59" in str(sim.sent[0].nodes)
        sim.refuse("send_private_forward_msg", retcode=1200)
        await sim.private(ALICE, "again " + words)
        await sim.wait_for(
            lambda: any("word59" in s.text for s in sim.sent[1:] if not s.forward),
            10,
            "the fallback",
        )
        plain = [s for s in sim.sent[1:] if not s.forward]
        assert len(plain) >= 3 and all(len(s.text) <= 150 for s in plain)
        assert " ".join(s.text for s in plain) == "Momo: you said again " + words
    finally:
        await sim.close()


async def test_an_implementation_that_drops_mid_reply_gets_the_rest_once_back(
    bridge_factory,
) -> None:
    hub = await bridge_factory(momohub={"enabled": True}, onebot=qq_settings())
    sim = await impl(hub)
    try:
        text = "First part is here. " + " ".join(["more /slow"] * 6) + ". The end is near!"
        await sim.private(ALICE, text)
        await sim.wait_sent(1)
        await sim.drop()
        await sim.reconnect()
        await sim.wait_for(lambda: "The end is near!" in " ".join(sim.texts()), 30, "the rest")
        texts = sim.texts()
        assert len(texts) == len(set(texts))
        assert " ".join(texts) == "Momo: you said " + text
    finally:
        await sim.close()


async def test_cq_string_events_negative_ids_and_own_echoes(bridge_factory) -> None:
    hub = await bridge_factory(momohub={"enabled": True}, onebot=qq_settings(recall_follows=True))
    sim = await impl(hub, message_format="string", ids="negative", report_self=True)
    try:
        event = await sim.private(ALICE, "a [bracket] & amp")
        await sim.wait_sent(1)
        assert sim.texts() == ["Momo: you said a [bracket] & amp"]
        # Negative ids are stored as they are: recalling the user's message finds the reply.
        assert event["message_id"] < 0 and sim.sent[0].message_id < 0
        await sim.friend_recall(ALICE, event["message_id"])
        assert await sim.wait_deleted(1) == [sim.sent[0].message_id]
        # A group reply quotes the (negative) id of what it answers.
        sticker = await sim.group(
            GROUP,
            BOB,
            [at(BOT), " sticker: ", {"type": "mface", "data": {"summary": "[开心]"}}],
            card="Bob",
        )
        await sim.wait_sent(2)
        assert sim.texts(("group", GROUP)) == ["Momo: you said Bob: sticker: [sticker: 开心]"]
        assert sim.sent[1].segments[0] == {
            "type": "reply",
            "data": {"id": str(sticker["message_id"])},
        }
        # The account's own messages are never answered: NapCat's echoes of what the bridge
        # sent (report_self: `message_sent`), and a message event from the account itself.
        await sim.group(GROUP, BOT, [at(BOT), " talking to myself"], card="MomoQQ")
        await sim.group(GROUP, BOB, [at(BOT), " last one"], card="Bob")
        await sim.wait_sent(3)
        await sim.wait_for(lambda: len(sim.events) >= 9, 5, "the echoes")
        assert sum(e["post_type"] == "message_sent" for e in sim.events) == 3
        assert sim.texts(("group", GROUP))[1:] == ["Momo: you said Bob: last one"]
        assert len(sim.sent) == 3
    finally:
        await sim.close()


async def test_a_failing_character_gets_one_short_apology(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.private(ALICE, "please /fail")
        await sim.wait_for(lambda: any(t.startswith("Sorry") for t in sim.texts()), 10, "apology")
        assert [t for t in sim.texts() if t.startswith("Sorry")] == [
            "Sorry, I could not answer that just now. Please try again in a moment."
        ]
        assert not any("model failure" in t or "UPSTREAM" in t for t in sim.texts())
    finally:
        await sim.close()


async def test_rate_limit_and_allow_deny_lists(bridge_factory) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True},
        onebot=qq_settings(
            rate_per_minute=2,
            merge_window=0,
            deny_users=[str(BOB)],
            allow_groups=[str(GROUP)],
        ),
    )
    sim = await impl(hub)
    try:
        await sim.private(BOB, "denied")
        await sim.group(GROUP + 1, ALICE, [at(BOT), " other group"])
        for n in range(4):
            await sim.private(ALICE, f"message {n}")
        await sim.wait_for(
            lambda: any(t.startswith("You're sending") for t in sim.texts()), 10, "notice"
        )
        await sim.wait_sent(3)
        texts = sim.texts()
        assert texts.count("You're sending messages too fast; please wait a minute.") == 1
        assert sorted(t for t in texts if "message" in t and "said" in t) == [
            "Momo: you said message 0",
            "Momo: you said message 1",
        ]
        assert not any("denied" in t or "other group" in t for t in texts)
    finally:
        await sim.close()


async def test_status_and_readyz_show_the_account(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.private(ALICE, "hi")
        await sim.wait_sent(1)
        await sim.private(ALICE, "/status")  # ALICE is an admin QQ number
        status = await said(sim, "QQ accounts")
        assert f"{BOT}: ok" in status and "messages in 2 / out 1" in status
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{hub.http}/readyz") as r:
                body = await r.json()
        assert body["components"][f"qq:{BOT}"]["state"] == "ok"
        await sim.private(BOB, "/status")
        assert await said(sim, "Only an admin") == "Only an admin may use /status."
    finally:
        await sim.close()


async def test_a_forward_that_times_out_falls_back(bridge_factory) -> None:
    hub = await bridge_factory(
        momohub={"enabled": True},
        onebot=qq_settings(forward_threshold=100, reply_mode="whole", action_timeout=0.5),
    )
    sim = await impl(hub)
    try:
        sim.stall("send_private_forward_msg")
        long = "x " * 80
        await sim.private(ALICE, long)
        await sim.wait_for(lambda: any(not s.forward for s in sim.sent), 10, "fallback")
        assert (
            "".join(s.text for s in sim.sent if not s.forward) == ("Momo: you said " + long).strip()
        )
    finally:
        await sim.close()


async def test_hostile_frames_leave_the_link_working(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        for frame in (
            "not json",
            "[1, 2]",
            '{"post_type": "message"}',
            '{"post_type": "message", "message_type": "private", "time": 1, "self_id": 1}',
            '{"post_type": "alien", "self_id": 1, "time": 1}',
            '{"status": "ok", "echo": "nobody-asked"}',
            '{"post_type": "message", "message_type": "private", "sub_type": "friend", "time": '
            f'{int(time.time())}, "self_id": {BOT}, "message_id": 5, "user_id": {ALICE}, '
            '"message": [{"type": "text", "data": {"text": "\\ud800 lone"}}], "raw_message": "",'
            ' "font": 0, "sender": {}}',
        ):
            await sim.send_raw(frame)
        await sim.send_raw('{"post_type": "' + "x" * 200_000 + '"}')
        await sim.private(ALICE, "still here")
        await sim.wait_for(lambda: "Momo: you said still here" in sim.texts(), 10, "answer")
    finally:
        await sim.close()


async def test_a_scheduled_message_reaches_the_qq_chat(hub: Bridge) -> None:
    sim = await impl(hub)
    try:
        await sim.private(ALICE, "hello")
        await sim.wait_sent(1)
        from bridge.models import ConversationKey

        turn = await hub.app.sessions.prompt(
            ConversationKey(f"qq:{BOT}:u{ALICE}", MOMO), "good morning"
        )
        await turn.wait(10)
        await sim.wait_sent(2)
        assert sim.texts()[-1] == "Momo: you said good morning"
    finally:
        await sim.close()


async def test_a_session_bound_to_a_model_keeps_its_history(bridge_factory, upstream) -> None:
    hub = await bridge_factory(
        openai={
            "providers": [{"name": "fake", "base_url": upstream.base_url, "api_key": "sk-test"}],
        },
        onebot=qq_settings(default_target="model:fake/echo", history_turns=2),
    )
    sim = await impl(hub)
    try:
        for n, word in enumerate(("one", "two", "three")):
            await sim.private(ALICE, word)
            await sim.wait_sent(n + 1)
        assert sim.texts() == ["You said: one", "You said: two", "You said: three"]
        # history_turns = 2: the previous turn and the new message.
        assert upstream.requests[-1]["messages"] == [
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "You said: two"},
            {"role": "user", "content": "three"},
        ]
        await sim.private(ALICE, "/char use model:fake/reasoning")
        assert (await said(sim, "Now talking to")).startswith("Now talking to model:fake/reasoning")
    finally:
        await sim.close()
