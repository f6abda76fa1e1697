"""The console's HTTP API against a real bridge: who gets in, what a session may do, and that
its actions reach the MomoHub sandbox."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from adapters.console.auth import COOKIE, CSRF_HEADER, SessionTable
from tests.conftest import ADMIN_CODE, Bridge
from tests.e2e.test_momohub import MOMO, chat_messages, send
from tests.e2e.test_schedule import SETTINGS as SCHEDULE_SETTINGS
from tests.e2e.test_schedule import ask, job_id
from tests.support.fake_openai import FakeOpenAI


class Console:
    """A console user: an HTTP session with its own cookie jar and the CSRF token it was given."""

    def __init__(self, bridge: Bridge, http: aiohttp.ClientSession) -> None:
        self.base = bridge.http
        self.http = http
        self.csrf = ""

    async def login(
        self, code: str = ADMIN_CODE, origin: str | None = None
    ) -> aiohttp.ClientResponse:
        resp = await self.http.post(
            self.base + "/console/api/login",
            json={"code": code},
            headers={"Origin": origin or self.base},
        )
        if resp.status == 200:
            self.csrf = (await resp.json())["csrf"]
        return resp

    async def get(self, path: str, **params: str) -> aiohttp.ClientResponse:
        return await self.http.get(self.base + "/console/api/" + path, params=params)

    async def post(
        self, path: str, body: Any, *, csrf: str | None = None, origin: str | None = None
    ) -> aiohttp.ClientResponse:
        headers = {"Origin": origin if origin is not None else self.base}
        token = self.csrf if csrf is None else csrf
        if token:
            headers[CSRF_HEADER] = token
        return await self.http.post(self.base + "/console/api/" + path, json=body, headers=headers)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: cookies for an IP address host (127.0.0.1), which the default jar ignores.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


@pytest.fixture
async def sandboxed(bridge_factory: Any) -> Bridge:
    return await bridge_factory(momohub={"enabled": True})


async def test_nothing_without_a_session(bridge: Bridge, http: aiohttp.ClientSession) -> None:
    c = Console(bridge, http)
    for path in ("overview", "events", "conversations", "logs", "session", "nonexistent"):
        r = await c.get(path)
        assert r.status == 401, path
    r = await c.post("recall", {"message_id": 1})
    assert r.status == 401
    # The page's shell is public (it is only a login form) and locked down by its CSP.
    r = await http.get(bridge.http + "/console")
    assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert (await http.get(bridge.http + "/console/static/../pages.py")).status == 404


async def test_wrong_code_refused_then_rate_limited(
    bridge: Bridge, http: aiohttp.ClientSession
) -> None:
    c = Console(bridge, http)
    for _ in range(bridge.config.console.login_per_minute):
        assert (await c.login("wrong")).status == 403
    r = await c.login("wrong")  # guessing on, once the minute's failures are used
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert (await c.get("overview")).status == 401


async def test_wrong_codes_do_not_lock_the_admin_out(
    bridge: Bridge, http: aiohttp.ClientSession
) -> None:
    # Behind a reverse proxy every client has the proxy's address: someone else's wrong
    # guesses must not refuse the admin's right code.
    c = Console(bridge, http)
    for _ in range(bridge.config.console.login_per_minute + 1):
        assert (await c.login("wrong")).status in (403, 429)
    assert (await c.login()).status == 200
    assert (await c.get("overview")).status == 200


async def test_every_attempt_counts_toward_a_larger_budget(
    bridge: Bridge, http: aiohttp.ClientSession
) -> None:
    from adapters.console.pages import LOGIN_ATTEMPTS_PER_MINUTE

    c = Console(bridge, http)
    for _ in range(LOGIN_ATTEMPTS_PER_MINUTE):
        assert (await c.login("wrong")).status in (403, 429)
    r = await c.login()
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1


async def test_login_sets_a_strict_cookie(bridge: Bridge, http: aiohttp.ClientSession) -> None:
    c = Console(bridge, http)
    r = await c.login()
    assert r.status == 200
    cookie = r.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console" and int(cookie["max-age"]) > 0
    assert not cookie["secure"]  # plain http here
    # A login from another site's page is refused whatever the code.
    assert (await Console(bridge, http).login(origin="https://evil.example")).status == 403


async def test_state_changes_need_csrf_and_origin(
    bridge: Bridge, http: aiohttp.ClientSession
) -> None:
    c = Console(bridge, http)
    assert (await c.login()).status == 200
    r = await c.post("recall", {"message_id": 1}, csrf="")
    assert r.status == 403 and "CSRF" in (await r.json())["error"]
    r = await c.post("recall", {"message_id": 1}, csrf="x" * 43)
    assert r.status == 403
    r = await c.post("recall", {"message_id": 1}, origin="https://evil.example")
    assert r.status == 403 and "origin" in (await r.json())["error"]
    r = await c.post("recall", {"message_id": 1}, origin="")
    assert r.status == 403
    r = await c.post("recall", {"message_id": 1})  # both right: it gets to the action
    assert r.status == 404
    assert (await c.post("logout", {})).status == 200
    assert (await c.get("overview")).status == 401


async def test_session_expires_server_side(bridge: Bridge, http: aiohttp.ClientSession) -> None:
    c = Console(bridge, http)
    assert (await c.login()).status == 200
    assert (await c.get("overview")).status == 200
    table = bridge.app.hub.http._pages[-1].sessions
    assert isinstance(table, SessionTable)
    for session in list(table._sessions.values()):
        session.expires = 0.0  # the clock has passed it; the cookie itself is still sent
    assert (await c.get("overview")).status == 401
    assert len(table) == 0


def test_session_table_is_bounded() -> None:
    now = [0.0]
    table = SessionTable(60.0, max_sessions=3, clock=lambda: now[0])
    made = [table.create() for _ in range(5)]
    assert len(table) == 3 and table.get(made[0].id) is None and table.get(made[4].id)
    now[0] = 61.0
    assert table.get(made[4].id) is None


async def test_overview_counts_a_connection(bridge: Bridge, http: aiohttp.ClientSession) -> None:
    c = Console(bridge, http)
    await c.login()
    before = await (await c.get("overview")).json()
    assert before["connections"] == 0 and before["users_online"] == 0
    assert before["health"]["components"]["database"]["state"] == "ok"
    await bridge.client("olga")
    after = await (await c.get("overview")).json()
    assert after["connections"] == 1 and after["users_online"] == 1
    assert after["version"] and after["uptime"] >= 0


async def test_events_stream_overview(bridge: Bridge, http: aiohttp.ClientSession) -> None:
    c = Console(bridge, http)
    await c.login()
    await bridge.client("pia")
    async with http.get(bridge.http + "/console/api/events") as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        event = (await r.content.readline()).decode()
        data = (await r.content.readline()).decode()
    assert event == "event: overview\n"
    assert '"connections":1' in data


async def test_recall_from_console_removes_it_in_the_sandbox(
    sandboxed: Bridge, http: aiohttp.ClientSession
) -> None:
    user = await sandboxed.client("quin")
    tab = await sandboxed.client("quin")
    ack, _ = await send(user, MOMO, "remember this")
    await user.wait_push()
    assert len(await chat_messages(sandboxed, "quin", MOMO)) == 2
    c = Console(sandboxed, http)
    await c.login()
    listed = (await (await c.get("conversations")).json())["conversations"]
    assert [(x["edge"], x["user"], x["contact"], x["messages"]) for x in listed] == [
        ("hub", "quin", MOMO, 2)
    ]
    assert listed[0]["contact_name"] == "Momo"
    turns = (await (await c.get("conversation", user="quin", contact=MOMO)).json())["turns"]
    assert [t["direction"] for t in turns] == ["in", "out"]
    assert turns[0]["content"][0]["data"]["text"] == "remember this"
    mid = ack["data"]["message_id"]
    assert turns[0]["id"] == mid
    r = await c.post("recall", {"message_id": mid})
    assert r.status == 200, await r.text()
    assert await chat_messages(sandboxed, "quin", MOMO) == []
    # The user's tabs hear of it as of a recall of their own.
    assert await tab.wait_for(lambda f: len(tab.pushes("del_msg")) >= 2)
    turns = (await (await c.get("conversation", user="quin", contact=MOMO)).json())["turns"]
    assert turns == []
    assert (await c.post("recall", {"message_id": mid})).status == 404


async def test_reset_and_persona(sandboxed: Bridge, http: aiohttp.ClientSession) -> None:
    user = await sandboxed.client("rae")
    await send(user, MOMO, "hello")
    c = Console(sandboxed, http)
    await c.login()
    key = {"user": "rae", "contact": MOMO}
    r = await c.post("persona", {**key, "text": "speak like a pirate"})
    assert r.status == 200, await r.text()
    got = await (await c.get("conversation", **key)).json()
    assert got["persona"] == "speak like a pirate"
    old = await sandboxed.app.storage.conversations.get("rae", MOMO, "default")
    assert (await c.post("reset", key)).status == 200
    assert await sandboxed.app.storage.conversations.get("rae", MOMO, "default") != old
    # The persona outlives the reset, as with /reset.
    assert (await (await c.get("conversation", **key)).json())["persona"] == "speak like a pirate"
    assert (await c.post("persona", {**key, "text": None})).status == 200
    assert (await (await c.get("conversation", **key)).json())["persona"] is None


async def test_logs_filter_by_level_and_conversation(
    bridge: Bridge, http: aiohttp.ClientSession
) -> None:
    from bridge.logging import RECENT_LOGS

    start = RECENT_LOGS.since(0)[-1]["seq"] if RECENT_LOGS.since(0) else 0
    RECENT_LOGS(None, "warning", {"event": "upstream.failed", "level": "warning", "user": "sue"})
    RECENT_LOGS(None, "info", {"event": "turn.done", "level": "info", "user": "sue"})
    RECENT_LOGS(None, "error", {"event": "other", "level": "error", "user": "tim"})
    c = Console(bridge, http)
    await c.login()

    async def events(**q: str) -> list[str]:
        body = await (await c.get("logs", after=str(start), **q)).json()
        return [e["event"] for e in body["logs"] if e["event"] != "console.login"]

    assert await events(conversation="sue") == ["upstream.failed", "turn.done"]
    assert await events(level="warning", conversation="sue") == ["upstream.failed"]
    assert await events(level="error") == ["other"]


@pytest.fixture
async def scheduling(bridge_factory: Any) -> Bridge:
    return await bridge_factory(momohub={"enabled": True}, plugins=SCHEDULE_SETTINGS)


async def test_schedules_listed_paused_resumed_deleted(
    scheduling: Bridge, http: aiohttp.ClientSession
) -> None:
    user = await scheduling.client("uma")
    answer = await ask(user, "/schedule add every 1h hello", "Schedule #1 added")
    assert answer.startswith("Schedule #1 added: every 1h")
    scheduler = scheduling.app.scheduler
    store = scheduling.app.storage.plugin_kv
    c = Console(scheduling, http)
    await c.login()
    body = await (await c.get("schedules")).json()
    assert body["enabled"] is True
    [listed] = body["schedules"]
    assert (listed["id"], listed["user"], listed["contact"], listed["thread"]) == (
        1,
        "uma",
        MOMO,
        "default",
    )
    assert listed["when"] == "every 1h" and listed["prompt"] == "hello"
    assert listed["paused"] is False and listed["next_run"] > time.time() + 3000
    assert listed["last_run"] is None and listed["last_result"] is None

    r = await c.post("schedule/pause", {"id": 1})
    assert r.status == 200, await r.text()
    assert (await r.json())["schedule"]["paused"] is True
    assert not scheduler.has(job_id(1)) and scheduler.next_run(job_id(1)) is None
    assert (await store.get("schedule", "s:1"))["paused"] is True
    [listed] = (await (await c.get("schedules")).json())["schedules"]
    assert listed["paused"] is True and listed["next_run"] is None
    # The user's own list says so too: one core, two views.
    assert "(next paused)" in await ask(user, "/schedule list", "#1 every 1h")

    r = await c.post("schedule/resume", {"id": 1})
    assert r.status == 200
    assert scheduler.has(job_id(1)) and scheduler.next_run(job_id(1)) is not None
    assert (await store.get("schedule", "s:1"))["paused"] is False

    assert (await c.post("schedule/delete", {"id": 1})).status == 200
    assert not scheduler.has(job_id(1))
    assert await store.get("schedule", "s:1") is None
    assert (await (await c.get("schedules")).json())["schedules"] == []
    assert (await c.post("schedule/delete", {"id": 1})).status == 404
    assert (await c.post("schedule/pause", {"id": "1"})).status == 400


async def test_schedule_endpoints_need_session_csrf_and_origin(
    scheduling: Bridge, http: aiohttp.ClientSession
) -> None:
    user = await scheduling.client("val")
    await ask(user, "/schedule add every 1h hi", "Schedule #1 added")
    c = Console(scheduling, http)
    assert (await c.get("schedules")).status == 401
    for path in ("schedule/pause", "schedule/resume", "schedule/delete"):
        assert (await c.post(path, {"id": 1})).status == 401, path
    await c.login()
    for path in ("schedule/pause", "schedule/resume", "schedule/delete"):
        assert (await c.post(path, {"id": 1}, csrf="")).status == 403, path
        assert (await c.post(path, {"id": 1}, origin="https://evil.example")).status == 403
    # Nothing got through: the schedule is still armed and stored.
    assert scheduling.app.scheduler.has(job_id(1))
    assert await scheduling.app.storage.plugin_kv.get("schedule", "s:1") is not None


async def test_overview_carries_reply_figures_from_the_metrics(
    bridge_factory: Any, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    provider = {"name": "fake", "base_url": upstream.base_url, "api_key": upstream.api_key}
    hub = await bridge_factory(
        momohub={"enabled": True}, openai={"default_model": "fake/echo", "providers": [provider]}
    )
    c = Console(hub, http)
    await c.login()
    quiet = (await (await c.get("overview")).json())["replies"]
    assert quiet["replies"] == 0 and quiet["reply_p50"] is None and quiet["errors"] == {}
    user = await hub.client("wes")
    _, frames = await send(user, MOMO, "hello")
    assert frames[-1]["message"] == "completed"

    async def complete(model: str) -> str:
        ask = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        return (await user.stream(await user.send("openai", "completions", ask)))[-1]["message"]

    assert await complete("fake/echo") == "completed"  # the fake reports 5 + 7 tokens
    assert await complete("fake/fail-500") == "failed"
    figures = (await (await c.get("overview")).json())["replies"]
    assert figures["replies"] == 2 and figures["first_tokens"] == 2
    assert 0 < figures["reply_p50"] <= figures["reply_p95"]
    assert 0 < figures["first_token_p50"] <= figures["first_token_p95"]
    assert figures["errors"] == {"UPSTREAM_ERROR": 1}
    assert figures["tokens"] == {"prompt": 5, "completion": 7}
    assert 0 <= figures["window_seconds"] <= 60


async def test_events_stream_tells_of_a_new_message(
    sandboxed: Bridge, http: aiohttp.ClientSession
) -> None:
    c = Console(sandboxed, http)
    await c.login()
    user = await sandboxed.client("xan")

    async def next_event(r: aiohttp.ClientResponse) -> tuple[str, Any]:
        name = (await r.content.readline()).decode().removeprefix("event: ").strip()
        data = json.loads((await r.content.readline()).decode().removeprefix("data: "))
        assert await r.content.readline() == b"\n"
        return name, data

    async with http.get(sandboxed.http + "/console/api/events") as r:
        name, first = await next_event(r)
        assert name == "overview" and first["newest_message"] == 0
        await send(user, MOMO, "a new conversation")
        newest = (await sandboxed.app.storage.messages.latest_id()) or 0
        assert newest > 0
        async with asyncio.timeout(10):
            while True:
                name, data = await next_event(r)
                if name == "conversations":
                    break
    assert data["newest"] > 0
    listed = (await (await c.get("conversations")).json())["conversations"]
    assert [x["user"] for x in listed] == ["xan"]


async def _fill(bridge: Bridge, rows: int, conversations: int) -> None:
    """``rows`` messages, round-robin over ``conversations`` conversations, written straight
    into the bridge's database (the message path would take minutes for this many)."""

    def write(conn: Any) -> None:
        now = time.time()
        conn.executemany(
            "INSERT INTO messages (user_id, contact, direction, content, time) "
            "VALUES (?, ?, 'in', ?, ?)",
            (
                (f"u{i % conversations}", MOMO, '[{"type":"text","data":{"text":"hi"}}]', now + i)
                for i in range(rows)
            ),
        )
        conn.commit()

    await bridge.app.storage.db.run(write)


async def test_conversation_list_is_a_bounded_read(
    bridge: Bridge, http: aiohttp.ClientSession
) -> None:
    from adapters.console.actions import SCAN

    await _fill(bridge, 50_000, 1000)
    c = Console(bridge, http)
    await c.login()
    # The newest messages' conversations first; counts are over the newest SCAN messages,
    # and the answer says so.
    body = await (await c.get("conversations")).json()
    listed = body["conversations"]
    assert body["window"] == SCAN
    assert [x["user"] for x in listed[:3]] == ["u999", "u998", "u997"]
    assert {x["messages"] for x in listed} == {SCAN // 1000}
    # Several pages asking at once while the hub reads the database: the hub's read does not
    # queue behind one full scan per page (the bound is loose: a loaded runner is slow too).
    storage = bridge.app.storage

    pages = [asyncio.ensure_future(c.get("conversations")) for _ in range(20)]
    waited = 0.0
    while not all(p.done() for p in pages):
        start = time.monotonic()
        await storage.messages.get(1)
        waited = max(waited, time.monotonic() - start)
    answers = await asyncio.gather(*pages)
    assert all(a.status == 200 for a in answers)
    assert waited < 0.5, waited


async def test_stop_ends_an_open_event_stream_at_once(
    bridge_factory: Any, http: aiohttp.ClientSession
) -> None:
    # A long tick: the stream is asleep between two when the bridge stops.
    bridge = await bridge_factory(console={"live_seconds": 30})
    c = Console(bridge, http)
    await c.login()
    async with http.get(bridge.http + "/console/api/events") as r:
        assert (await r.content.readline()).decode() == "event: overview\n"
        start = time.monotonic()
        await bridge.app.stop()
        took = time.monotonic() - start
    assert took < 1.5, took


async def test_a_failing_tick_ends_the_stream_cleanly(
    bridge: Bridge, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapters.console.live as live

    async def broken(*_: Any) -> Any:
        raise RuntimeError("overview broke")

    monkeypatch.setattr(live, "overview", broken)
    c = Console(bridge, http)
    await c.login()
    async with http.get(bridge.http + "/console/api/events") as r:
        assert r.status == 200
        async with asyncio.timeout(10):
            rest = await r.content.read()
    # The stream just ends: no second response (a 500) written into the started one.
    assert b"500" not in rest and b"HTTP/" not in rest
    assert (await c.get("session")).status == 200  # and the server is fine


async def test_odd_login_bodies_are_refused_not_crashed(
    bridge: Bridge, http: aiohttp.ClientSession
) -> None:
    c = Console(bridge, http)
    headers = {"Origin": c.base, "Content-Type": "application/json"}
    # A lone surrogate is valid JSON but not encodable text: just a wrong code.
    r = await http.post(c.base + "/console/api/login", data=b'{"code": "\\ud800"}', headers=headers)
    assert r.status == 403, await r.text()

    async def big() -> AsyncIterator[bytes]:
        for _ in range(4):  # chunked, no Content-Length: over the server's body limit
            yield b" " * (1 << 20)

    r = await http.post(c.base + "/console/api/login", data=big(), headers=headers)
    assert r.status == 413, await r.text()
    await c.login()
    r = await http.post(
        c.base + "/console/api/recall", data=big(), headers={**headers, CSRF_HEADER: c.csrf}
    )
    assert r.status == 413, await r.text()


def test_a_csrf_header_that_is_not_text_is_wrong() -> None:
    from types import SimpleNamespace

    from adapters.console.auth import ConsoleSession, csrf_ok

    # Header bytes that are not UTF-8 reach the handler as lone surrogates.
    request: Any = SimpleNamespace(headers={CSRF_HEADER: "\udcff"})
    assert not csrf_ok(request, ConsoleSession("s", "token", 0.0))


async def test_a_pause_the_store_refuses_changes_nothing(
    scheduling: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored first: when the save fails the schedule stays armed and unpaused, as stored."""
    user = await scheduling.client("una")
    await ask(user, "/schedule add every 1h hello", "Schedule #1 added")
    book = scheduling.app.plugins.api("schedule")
    store = scheduling.app.storage.plugin_kv

    async def refuse(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "set", refuse)
    with pytest.raises(OSError):
        await book.set_paused(1, True)
    monkeypatch.undo()
    assert book.entries[1].paused is False
    assert scheduling.app.scheduler.has(job_id(1))
    assert (await store.get("schedule", "s:1"))["paused"] is False


async def test_a_list_read_cancelled_before_it_ran_does_not_stick(scheduling: Bridge) -> None:
    """The shared read of the conversation list, cancelled before its first step (a teardown),
    must not be awaited by every later request."""
    from adapters.console.actions import Actions

    actions = Actions(scheduling.app)
    first = asyncio.ensure_future(actions._conversation_rows())
    async with asyncio.timeout(10):  # until the shared read exists, then cancel it at once
        while actions._reading is None:  # noqa: ASYNC110 - set by the task, no event
            await asyncio.sleep(0)
    actions._reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(10):
        assert isinstance(await actions._conversation_rows(), list)
