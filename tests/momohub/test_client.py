"""MomoHubClient against small aiohttp servers on real loopback sockets.

Each server reproduces one behaviour of the real MomoHub (envelope variants, bare 401s, expiring and
rotating tokens, 429, 5xx, the unescaped SSE stream, stalls, drops). Synchronisation is by events
with generous timeouts; the only sleeps are server-side pacing of a stream.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from aiohttp import web

from adapters.momohub.client import MomoHubAuthError, MomoHubClient, MomoHubError
from adapters.momohub.types import (
    ChatConfig,
    StreamDelta,
    StreamDone,
    StreamError,
    StreamEvent,
    StreamHeartbeat,
    parse_expiry,
)
from bridge.config import MomoHubConfig
from bridge.errors import BridgeError, ErrorCode

EMAIL = "bot@example.test"
PASSWORD = "hunter2-secret"
WAIT = 5.0  # generous bound for every wait on the server side

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ----- a scriptable MomoHub double ---------------------------------------------------------------


def envelope(data: Any, *, minimal: bool = False) -> dict[str, Any]:
    if minimal:
        return {"success": True, "data": data}
    return {
        "success": True,
        "code": None,
        "message": "OK",
        "data": data,
        "errors": None,
        "timestamp": datetime.now(UTC).isoformat(),
    }


def ok(data: Any, status: int = 200, *, minimal: bool = False) -> web.Response:
    return web.json_response(envelope(data, minimal=minimal), status=status)


def fail(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"success": False, "code": code, "message": message, "data": None} | extra
    return web.json_response(body, status=status)


def bare_401() -> web.Response:
    # What the real server's auth guard sends: no envelope at all.
    return web.Response(status=401, text="Unauthorized")


def sse_response() -> web.StreamResponse:
    return web.StreamResponse(
        headers={"Content-Type": "text/event-stream;charset=UTF-8", "Cache-Control": "no-cache"}
    )


def sse_event(event: str, data: str) -> bytes:
    return ("event: " + event + "\ndata: " + data + "\n\n").encode()


class FakeHub:
    """Auth routes with real token bookkeeping, plus per-test handlers by (method, path)."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.valid_access: set[str] = set()
        self.current_refresh: str | None = None
        self.serial = 0
        self.access_ttl = 3600.0  # seconds
        self.expiry_unit = "ms"
        self.sign_in_works = True
        self.refresh_works = True
        self.refresh_gate: asyncio.Event | None = None
        self.refreshed = asyncio.Event()
        self.release = asyncio.Event()  # stalled handlers end when the test ends
        self.seen_tokens: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle --

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.handlers[(method, path)] = handler

    # -- auth --

    def issue(self) -> dict[str, Any]:
        self.serial += 1
        access, refresh = f"access-{self.serial}", f"refresh-{self.serial}"
        self.valid_access.add(access)
        self.current_refresh = refresh  # rotation: only the newest refresh token works
        expires = time.time() + self.access_ttl
        expiry: float = int(expires * 1000) if self.expiry_unit == "ms" else int(expires)
        return {
            "user": {"userId": "u1", "email": EMAIL, "username": "Bot", "avatar": None},
            "tokens": {
                "accessToken": access,
                "refreshToken": refresh,
                "accessTokenExpiredIn": expiry,
                "refreshTokenExpiredIn": int((time.time() + 7 * 86400) * 1000),
                "tokenType": "Bearer",
            },
        }

    def expire_all(self) -> None:
        self.valid_access.clear()

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        self.seen_tokens.append(token)
        return token in self.valid_access

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        key = f"{request.method} {path}"
        self.hits[key] += 1
        if key == "POST /auth/sign-in/email":
            body = await request.json()
            if self.sign_in_works and body == {"email": EMAIL, "password": PASSWORD}:
                return ok(self.issue())
            return fail(401, "AUTHENTICATION_FAILED", "Invalid email or password")
        if key == "POST /auth/refresh":
            body = await request.json()
            if self.refresh_gate is not None:
                await asyncio.wait_for(self.refresh_gate.wait(), WAIT)
            if self.refresh_works and body.get("refreshToken") == self.current_refresh:
                result = self.issue()
                self.refreshed.set()
                return ok(result)
            return bare_401()
        handler = self.handlers.get((request.method, path))
        if handler is None:
            return fail(404, "NOT_FOUND", f"no route {key}")
        return await handler(request)


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    h = FakeHub()
    await h.start()
    yield h
    await h.stop()


ClientFactory = Callable[..., Awaitable[MomoHubClient]]


@pytest.fixture
async def make_client(hub: FakeHub) -> AsyncIterator[ClientFactory]:
    clients: list[MomoHubClient] = []

    async def factory(
        *, start: bool = True, base_url: str | None = None, **cfg: Any
    ) -> MomoHubClient:
        settings: dict[str, Any] = {"email": EMAIL, "password": PASSWORD} | cfg
        client = MomoHubClient(MomoHubConfig(**settings), base_url=base_url or hub.url)
        client.retry_backoff = 0.01
        clients.append(client)
        if start:
            await client.start()
        return client

    yield factory
    for c in clients:
        await c.close()


def protected(hub: FakeHub, handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not hub.authorized(request):
            return bare_401()
        return await handler(request)

    return wrapped


def json_handler(data: Any, **kw: Any) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return ok(data, **kw)

    return handler


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    async with asyncio.timeout(WAIT):
        return [ev async for ev in stream]


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a client-side condition that has no event to wait on, with a deadline."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


def character(cid: str = "c1", **extra: Any) -> dict[str, Any]:
    return {"id": cid, "name": f"Char {cid}", "isPublic": True} | extra


# ----- envelope and models -----------------------------------------------------------------------


async def test_sign_in_and_envelope_variants(hub: FakeHub, make_client: ClientFactory) -> None:
    page = {
        "items": [character("c1", author={"id": "a1", "name": "Ann", "avatar": None})],
        "total": 1,
        "page": 1,
        "limit": 20,
        "totalPages": 1,
        "hasNext": False,
        "hasPrevious": False,
    }
    hub.on("GET", "/characters/public", protected(hub, json_handler(page, minimal=True)))
    hub.on("GET", "/characters/old", protected(hub, json_handler(character("old", authorId="a9"))))

    async def bare_list(request: web.Request) -> web.StreamResponse:
        # A build without the envelope, and a bare list where a page is documented.
        return web.json_response([character("m1"), character("m2", author=None)])

    hub.on("GET", "/characters", protected(hub, bare_list))

    client = await make_client()
    assert hub.hits["POST /auth/sign-in/email"] == 1
    assert client.user is not None and (client.user.id, client.user.name) == ("u1", "Bot")

    public = await client.list_public_characters(page=1, limit=20)
    assert [c.id for c in public.items] == ["c1"]
    assert public.items[0].author is not None and public.items[0].authorId == "a1"
    old = await client.get_character("old")
    assert old.author is not None and old.author.id == "a9"
    mine = await client.list_my_characters()
    assert [c.id for c in mine] == ["m1", "m2"]


async def test_error_mapping(hub: FakeHub, make_client: ClientFactory) -> None:
    async def not_found(request: web.Request) -> web.StreamResponse:
        return fail(404, "NOT_FOUND", "character not found")

    async def soft_fail(request: web.Request) -> web.StreamResponse:
        # success=false on an HTTP 200: the code decides.
        return fail(200, "NOT_FOUND", "chat not found")

    async def invalid(request: web.Request) -> web.StreamResponse:
        return fail(400, "VALIDATION_ERROR", "bad input", errors={"characterId": "must be uuid"})

    async def forbidden(request: web.Request) -> web.StreamResponse:
        return fail(403, "AUTHORIZATION_FAILED", "not your chat")

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="<html>Bad Gateway from nginx</html>")

    async def no_content(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    hub.on("GET", "/characters/missing", not_found)
    hub.on("GET", "/chats/soft", soft_fail)
    hub.on("POST", "/chats", invalid)
    hub.on("GET", "/chats/forbidden", forbidden)
    hub.on("GET", "/chats/html", html)
    hub.on("DELETE", "/chats/gone", no_content)
    client = await make_client()

    with pytest.raises(BridgeError) as e:
        await client.get_character("missing")
    assert e.value.code == ErrorCode.NOT_FOUND and "character not found" in e.value.reason
    with pytest.raises(BridgeError) as e:
        await client.get_chat("soft")
    assert e.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(BridgeError) as e:
        await client.create_chat("nope")
    assert e.value.code == ErrorCode.INVALID_DATA and "must be uuid" in e.value.reason
    with pytest.raises(MomoHubAuthError) as e:
        await client.get_chat("forbidden")
    assert e.value.code == ErrorCode.UPSTREAM_ERROR
    assert e.value.reason.startswith("authentication failed") and "not your chat" in e.value.reason
    assert hub.hits["POST /auth/refresh"] == 0  # a 403 is not a token problem
    with pytest.raises(MomoHubError) as e:
        await client.get_chat("html")
    assert e.value.code == ErrorCode.UPSTREAM_ERROR and "Bad Gateway from nginx" in e.value.reason
    assert await client.delete_chat("gone") is None


# ----- auth ----------------------------------------------------------------------------------------


async def test_bare_401_refreshes_once_and_retries(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    hub.on("GET", "/chats", protected(hub, json_handler({"items": [], "page": 1})))
    client = await make_client()
    first_generation = client.generation
    hub.expire_all()
    result = await client.list_chats()
    assert result.items == []
    assert hub.hits["POST /auth/refresh"] == 1
    assert hub.hits["GET /chats"] == 2
    assert client.generation == first_generation + 1


async def test_ten_concurrent_401s_share_one_refresh(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    rejected = 0
    all_rejected = asyncio.Event()

    async def chats(request: web.Request) -> web.StreamResponse:
        nonlocal rejected
        if not hub.authorized(request):
            rejected += 1
            if rejected == 10:
                all_rejected.set()
            return bare_401()
        return ok({"items": [], "page": 1})

    hub.on("GET", "/chats", chats)
    hub.current_refresh = "refresh-given"
    hub.refresh_gate = all_rejected  # the refresh answers only once all ten were turned away
    client = await make_client(access_token="stale", refresh_token="refresh-given")
    assert hub.hits["POST /auth/sign-in/email"] == 0

    async with asyncio.timeout(WAIT * 2):
        results = await asyncio.gather(*(client.list_chats() for _ in range(10)))
    assert len(results) == 10
    assert rejected == 10
    assert hub.hits["POST /auth/refresh"] == 1
    assert hub.hits["GET /chats"] == 20
    assert hub.hits["POST /auth/sign-in/email"] == 0


async def test_request_with_already_replaced_token_retries_without_refresh(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    slow_arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if hub.authorized(request):
            return ok({"id": "slow"})
        slow_arrived.set()
        # Answer 401 only after another request's refresh replaced the token.
        await asyncio.wait_for(hub.refreshed.wait(), WAIT)
        return bare_401()

    hub.on("GET", "/chats/slow", slow)
    hub.on("GET", "/chats/fast", protected(hub, json_handler({"id": "fast"})))
    client = await make_client()
    hub.expire_all()
    slow_task = asyncio.create_task(client.get_chat("slow"))
    try:
        await asyncio.wait_for(slow_arrived.wait(), WAIT)
        assert (await client.get_chat("fast")).id == "fast"
        assert (await asyncio.wait_for(slow_task, WAIT)).id == "slow"
    finally:
        slow_task.cancel()
    assert hub.hits["POST /auth/refresh"] == 1


async def test_refresh_token_rotation(hub: FakeHub, make_client: ClientFactory) -> None:
    hub.on("GET", "/chats", protected(hub, json_handler([])))
    client = await make_client()
    for round_ in (1, 2, 3):
        hub.expire_all()
        await client.list_chats()
        assert hub.hits["POST /auth/refresh"] == round_
    # Each refresh used the newest refresh token (the fake rejects older ones), never signing in.
    assert hub.hits["POST /auth/sign-in/email"] == 1


@pytest.mark.parametrize("unit", ["ms", "s"])
async def test_scheduled_refresh_before_expiry(
    hub: FakeHub, make_client: ClientFactory, unit: str
) -> None:
    hub.expiry_unit = unit
    hub.access_ttl = 2.0  # refresh lands at half the remaining life when that is under a minute
    client = await make_client()
    assert client.access_expires_at is not None
    assert abs(client.access_expires_at - (time.time() + 2.0)) < 1.5
    generation = client.generation
    hub.access_ttl = 3600.0
    await asyncio.wait_for(hub.refreshed.wait(), WAIT)
    assert hub.hits["POST /auth/refresh"] == 1
    # The client installs the new pair just after the server answered.
    await eventually(lambda: client.generation > generation)
    assert client.access_expires_at is not None
    assert client.access_expires_at > time.time() + 3000


async def test_refresh_failure_falls_back_to_sign_in(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    hub.on("GET", "/chats", protected(hub, json_handler([])))
    client = await make_client()
    hub.expire_all()
    hub.refresh_works = False
    await client.list_chats()
    assert hub.hits["POST /auth/refresh"] == 1
    assert hub.hits["POST /auth/sign-in/email"] == 2
    assert hub.hits["GET /chats"] == 2


async def test_sign_in_failure_is_an_error_not_a_loop(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    hub.on("GET", "/chats", protected(hub, json_handler([])))
    client = await make_client()
    hub.expire_all()
    hub.refresh_works = False
    hub.sign_in_works = False
    with pytest.raises(MomoHubAuthError) as e:
        await client.list_chats()
    assert e.value.code == ErrorCode.UPSTREAM_ERROR
    assert "authentication failed" in e.value.reason
    assert "Invalid email or password" in e.value.reason
    assert hub.hits["GET /chats"] == 1
    assert hub.hits["POST /auth/refresh"] == 1
    assert hub.hits["POST /auth/sign-in/email"] == 2  # start + one fallback
    # A later request tries once more (the server may have recovered), still without looping.
    with pytest.raises(MomoHubAuthError):
        await client.list_chats()
    assert hub.hits["GET /chats"] == 2
    assert hub.hits["POST /auth/sign-in/email"] == 3


async def test_second_401_after_renewal_is_reported(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    async def always_401(request: web.Request) -> web.StreamResponse:
        return fail(401, "AUTHENTICATION_FAILED", "token revoked")

    hub.on("GET", "/chats", always_401)
    client = await make_client()
    with pytest.raises(MomoHubAuthError) as e:
        await client.list_chats()
    assert "token revoked" in e.value.reason
    assert hub.hits["GET /chats"] == 2
    assert hub.hits["POST /auth/refresh"] == 1


async def test_bad_credentials_fail_start(hub: FakeHub, make_client: ClientFactory) -> None:
    hub.sign_in_works = False
    with pytest.raises(MomoHubAuthError) as e:
        await make_client()
    assert "Invalid email or password" in e.value.reason


async def test_unreachable_server(make_client: ClientFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    # Start survives an unreachable MomoHub (sign-in is deferred to the first request).
    client = await make_client(base_url=url)
    with pytest.raises(MomoHubError) as e:
        await client.list_chats()
    assert e.value.code == ErrorCode.UPSTREAM_ERROR
    anonymous = await make_client(base_url=url, email="", password="")
    with pytest.raises(MomoHubError) as e:
        await anonymous.list_public_characters()
    assert e.value.code == ErrorCode.UPSTREAM_ERROR and "cannot reach MomoHub" in e.value.reason


async def test_secrets_never_logged(hub: FakeHub, make_client: ClientFactory) -> None:
    hub.on("GET", "/chats", protected(hub, json_handler([])))
    with structlog.testing.capture_logs() as logs:
        client = await make_client()
        hub.expire_all()
        await client.list_chats()
        hub.expire_all()
        hub.refresh_works = False
        await client.list_chats()
    text = json.dumps(logs, default=str)
    assert logs  # something was logged, so the check below means something
    for secret in (PASSWORD, "access-1", "refresh-1", "access-2", "refresh-2", "access-3"):
        assert secret not in text


# ----- retries -------------------------------------------------------------------------------------


async def test_429_honours_retry_after(hub: FakeHub, make_client: ClientFactory) -> None:
    calls = 0

    async def limited(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            resp = fail(429, "HIT_LIMIT", "slow down")
            resp.headers["Retry-After"] = "0"
            return resp
        return ok([])

    hub.on("GET", "/chats", limited)
    client = await make_client()
    await client.list_chats()
    assert calls == 2


async def test_429_longer_than_allowed_is_rate_limited(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        resp = fail(429, "HIT_LIMIT", "quota exhausted")
        resp.headers["Retry-After"] = "120"
        return resp

    hub.on("POST", "/chats", limited)
    client = await make_client(max_retry_after=1.0)
    started = time.monotonic()
    with pytest.raises(MomoHubError) as e:
        await client.create_chat("c1")
    assert e.value.code == ErrorCode.RATE_LIMITED and "quota exhausted" in e.value.reason
    assert time.monotonic() - started < 1.0  # failed at once instead of waiting
    assert hub.hits["POST /chats"] == 1


async def test_get_retries_5xx_then_succeeds(hub: FakeHub, make_client: ClientFactory) -> None:
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls < 3:
            return fail(503, "INTERNAL_SERVER_ERROR", "warming up")
        return ok(character("c1"))

    hub.on("GET", "/characters/c1", flaky)
    client = await make_client()
    assert (await client.get_character("c1")).id == "c1"
    assert calls == 3


async def test_get_gives_up_after_three_tries(hub: FakeHub, make_client: ClientFactory) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return fail(500, "INTERNAL_SERVER_ERROR", "database down")

    hub.on("GET", "/characters/c1", broken)
    client = await make_client()
    with pytest.raises(MomoHubError) as e:
        await client.get_character("c1")
    assert e.value.code == ErrorCode.UPSTREAM_ERROR and "database down" in e.value.reason
    assert hub.hits["GET /characters/c1"] == 3


async def test_post_500_is_never_retried(hub: FakeHub, make_client: ClientFactory) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return fail(500, "INTERNAL_SERVER_ERROR", "boom after insert")

    hub.on("POST", "/chats", broken)
    client = await make_client()
    with pytest.raises(MomoHubError) as e:
        await client.create_chat("c1", name="x")
    assert e.value.code == ErrorCode.UPSTREAM_ERROR
    assert hub.hits["POST /chats"] == 1


async def test_request_timeout(hub: FakeHub, make_client: ClientFactory) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(hub.release.wait(), WAIT * 2)
        return ok([])

    hub.on("GET", "/chats", stall)
    client = await make_client(request_timeout=0.3)
    with pytest.raises(MomoHubError) as e:
        await client.list_chats()
    assert e.value.code == ErrorCode.UPSTREAM_TIMEOUT
    assert hub.hits["GET /chats"] == 1


# ----- resources -----------------------------------------------------------------------------------


def message(mid: str, created: Any, sender: str = "USER", text: str = "") -> dict[str, Any]:
    return {
        "id": mid,
        "senderType": sender,
        "content": [{"type": "text", "content": text or mid}],
        "createdAt": created,
    }


async def test_list_messages_sorted_oldest_first(hub: FakeHub, make_client: ClientFactory) -> None:
    base = 1_700_000_000_000
    newest_first = [
        message("m4", base + 3000, "CHARACTER"),
        message("m3", "2023-11-14T22:13:22Z"),  # base + 2000 ms as ISO
        message("m2", base + 1000, "CHARACTER"),
        message("m1", base + 1000),  # same instant as m2 but listed after it (newest-first)
    ]
    hub.on(
        "GET",
        "/chats/c1/messages",
        protected(hub, json_handler({"items": newest_first, "page": 1, "hasNext": False})),
    )
    client = await make_client()
    messages = await client.list_messages("c1", page=1, limit=20)
    assert [m.id for m in messages] == ["m1", "m2", "m3", "m4"]
    assert messages[0].text == "m1" and messages[1].senderType == "CHARACTER"


async def test_list_latest_messages_on_an_oldest_first_server(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    base = 1_700_000_000_000
    all_messages = [message(f"m{i:02d}", base + i * 1000) for i in range(25)]

    async def listing(request: web.Request) -> web.StreamResponse:
        page, limit = int(request.query["page"]), int(request.query["limit"])
        items = all_messages[(page - 1) * limit : page * limit]
        pages = (len(all_messages) + limit - 1) // limit
        return ok(
            {
                "items": items,
                "total": len(all_messages),
                "page": page,
                "limit": limit,
                "totalPages": pages,
                "hasNext": page < pages,
                "hasPrevious": page > 1,
            }
        )

    hub.on("GET", "/chats/c1/messages", protected(hub, listing))
    client = await make_client()
    latest = await client.list_latest_messages("c1", limit=10)
    assert [m.id for m in latest] == [f"m{i:02d}" for i in range(15, 25)]


@pytest.mark.parametrize("status", [404, 405])
async def test_delete_message_falls_back_once(
    hub: FakeHub, make_client: ClientFactory, status: int
) -> None:
    async def documented(request: web.Request) -> web.StreamResponse:
        if status == 405:
            return web.Response(status=405, text="Method Not Allowed")
        return fail(404, "NOT_FOUND", "route not found")

    async def legacy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    hub.on("DELETE", "/chats/c1/messages/m1", protected(hub, documented))
    hub.on("DELETE", "/chats/c1/m1", protected(hub, legacy))
    client = await make_client()
    await client.delete_message("c1", "m1")
    assert hub.hits["DELETE /chats/c1/messages/m1"] == 1
    assert hub.hits["DELETE /chats/c1/m1"] == 1


@pytest.mark.parametrize("legacy_status", [404, 405])
async def test_delete_message_not_found_anywhere(
    hub: FakeHub, make_client: ClientFactory, legacy_status: int
) -> None:
    async def legacy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=legacy_status, text="no such route")

    hub.on("DELETE", "/chats/c1/m1", protected(hub, legacy))
    client = await make_client()
    with pytest.raises(BridgeError) as e:
        await client.delete_message("c1", "m1")
    assert e.value.code == ErrorCode.NOT_FOUND
    assert hub.hits["DELETE /chats/c1/messages/m1"] == 1
    assert hub.hits["DELETE /chats/c1/m1"] == 1


async def test_chats_and_config(hub: FakeHub, make_client: ClientFactory) -> None:
    stored: dict[str, Any] = {}

    async def create(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return ok(
            {"id": "chat1", "name": body.get("name"), "characterId": body["characterId"]}, 201
        )

    async def put_config(request: web.Request) -> web.StreamResponse:
        stored.update(await request.json())
        return ok(stored)

    async def rename(request: web.Request) -> web.StreamResponse:
        return ok(None)

    hub.on("POST", "/chats", protected(hub, create))
    hub.on("GET", "/chats/chat1/config", protected(hub, json_handler(None)))
    hub.on("PUT", "/chats/chat1/config", protected(hub, put_config))
    hub.on("PUT", "/chats/chat1/name", protected(hub, rename))
    hub.on("DELETE", "/chats/chat1/messages", protected(hub, json_handler(None)))
    client = await make_client()
    chat = await client.create_chat("c1", name="hello")
    assert (chat.id, chat.name, chat.characterId, chat.temporary) == ("chat1", "hello", "c1", False)
    assert await client.get_chat_config("chat1") == ChatConfig()
    saved = await client.put_chat_config("chat1", ChatConfig(temperature=0.5, systemPrompt="hi"))
    assert saved.temperature == 0.5 and saved.systemPrompt == "hi"
    assert stored == {"temperature": 0.5, "systemPrompt": "hi"}
    assert await client.rename_chat("chat1", "new") is None
    await client.clear_messages("chat1")


def test_expiry_parsing() -> None:
    assert parse_expiry(1_700_000_000) == 1_700_000_000
    assert parse_expiry(1_700_000_000_000) == 1_700_000_000
    assert parse_expiry("1700000000000") == 1_700_000_000
    assert parse_expiry("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_expiry("2023-11-14T22:13:20.000+00:00") == 1_700_000_000
    assert parse_expiry(3600, now=1000.0) == 4600.0  # a lifetime, not a 1970 instant
    assert parse_expiry(None) is None and parse_expiry("soon") is None


# ----- streaming ------------------------------------------------------------------------------------


TOKENS = ["Hi", " there", "\n", "a\nb", "\n\n", "😀中", "\nnote: x", "c\n\n\nd", "end\n"]
FULL = "".join(TOKENS)


def stream_route(hub: FakeHub, write: Callable[[web.StreamResponse], Awaitable[None]]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not hub.authorized(request):
            return bare_401()
        body = await request.json()
        assert body["content"][0]["type"] == "text"
        resp = sse_response()
        await resp.prepare(request)
        await write(resp)
        return resp

    hub.on("POST", "/chats/chat1/messages", handler)


async def test_stream_with_the_newline_quirk(hub: FakeHub, make_client: ClientFactory) -> None:
    async def write(resp: web.StreamResponse) -> None:
        raw = b": connected\n\n"
        for token in TOKENS:
            raw += sse_event("delta", token) + b": heartbeat\n\n"
        raw += sse_event("done", FULL)
        # Awkward chunk boundaries: mid-line, mid-emoji, between the two newlines of a terminator.
        for i in range(0, len(raw), 7):
            await resp.write(raw[i : i + 7])

    stream_route(hub, write)
    client = await make_client()
    events = await collect(client.send_message("chat1", [{"type": "text", "content": "hi"}]))
    text = "".join(e.text for e in events if isinstance(e, StreamDelta))
    assert text == FULL
    assert isinstance(events[-1], StreamDone) and events[-1].text == FULL
    assert any(isinstance(e, StreamHeartbeat) for e in events)


async def test_stream_error_event_is_yielded(hub: FakeHub, make_client: ClientFactory) -> None:
    async def write(resp: web.StreamResponse) -> None:
        await resp.write(b": connected\n\n" + sse_event("error", "this chat is busy"))

    stream_route(hub, write)
    client = await make_client()
    events = await collect(client.send_message("chat1", [{"type": "text", "content": "hi"}]))
    assert events == [StreamHeartbeat(), StreamError("this chat is busy")]


async def test_stream_401_refreshes_and_resends(hub: FakeHub, make_client: ClientFactory) -> None:
    async def write(resp: web.StreamResponse) -> None:
        await resp.write(sse_event("delta", "ok") + sse_event("done", "ok"))

    stream_route(hub, write)
    client = await make_client()
    hub.expire_all()
    events = await collect(client.send_message("chat1", [{"type": "text", "content": "hi"}]))
    assert events == [StreamDelta("ok"), StreamDone("ok")]
    assert hub.hits["POST /chats/chat1/messages"] == 2
    assert hub.hits["POST /auth/refresh"] == 1


async def test_stream_http_errors_raise_before_streaming(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    async def missing(request: web.Request) -> web.StreamResponse:
        return fail(404, "NOT_FOUND", "chat not found")

    async def broken(request: web.Request) -> web.StreamResponse:
        return fail(500, "INTERNAL_SERVER_ERROR", "boom")

    hub.on("POST", "/chats/gone/messages", missing)
    hub.on("POST", "/chats/broken/messages", broken)
    client = await make_client()
    with pytest.raises(BridgeError) as e:
        await anext(aiter(client.send_message("gone", [{"type": "text", "content": "x"}])))
    assert e.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(MomoHubError) as e:
        await collect(client.send_message("broken", [{"type": "text", "content": "x"}]))
    assert e.value.code == ErrorCode.UPSTREAM_ERROR
    assert hub.hits["POST /chats/broken/messages"] == 1  # a POST is never retried on 5xx


async def test_first_event_timeout(hub: FakeHub, make_client: ClientFactory) -> None:
    async def write(resp: web.StreamResponse) -> None:
        await asyncio.wait_for(hub.release.wait(), WAIT * 2)

    stream_route(hub, write)
    client = await make_client(first_event_timeout=0.3)
    with pytest.raises(MomoHubError) as e:
        await collect(client.send_message("chat1", [{"type": "text", "content": "x"}]))
    assert e.value.code == ErrorCode.UPSTREAM_TIMEOUT
    assert "did not start replying" in e.value.reason


async def test_idle_timeout_after_a_delta(hub: FakeHub, make_client: ClientFactory) -> None:
    async def write(resp: web.StreamResponse) -> None:
        await resp.write(sse_event("delta", "partial"))
        await asyncio.wait_for(hub.release.wait(), WAIT * 2)

    stream_route(hub, write)
    client = await make_client(idle_timeout=0.3)
    seen: list[StreamEvent] = []
    with pytest.raises(MomoHubError) as e:
        async with asyncio.timeout(WAIT):
            async for ev in client.send_message("chat1", [{"type": "text", "content": "x"}]):
                seen.append(ev)
    assert e.value.code == ErrorCode.UPSTREAM_TIMEOUT and "went silent" in e.value.reason
    assert seen == [StreamDelta("partial")]


async def test_heartbeats_keep_a_slow_stream_alive(
    hub: FakeHub, make_client: ClientFactory
) -> None:
    async def write(resp: web.StreamResponse) -> None:
        # Pacing (not synchronisation): 6 x 0.1 s of heartbeats outlast both timeouts of 0.3 s.
        for _ in range(6):
            await resp.write(b": heartbeat\n\n")
            await asyncio.sleep(0.1)
        await resp.write(sse_event("delta", "slow") + sse_event("done", "slow"))

    stream_route(hub, write)
    client = await make_client(first_event_timeout=0.3, idle_timeout=0.3)
    events = await collect(client.send_message("chat1", [{"type": "text", "content": "x"}]))
    assert events[-2:] == [StreamDelta("slow"), StreamDone("slow")]


async def test_done_then_silence_is_still_done(hub: FakeHub, make_client: ClientFactory) -> None:
    async def write(resp: web.StreamResponse) -> None:
        await resp.write(sse_event("delta", "x") + sse_event("done", "x"))
        await asyncio.wait_for(hub.release.wait(), WAIT * 2)

    stream_route(hub, write)
    client = await make_client(idle_timeout=0.3)
    events = await collect(client.send_message("chat1", [{"type": "text", "content": "x"}]))
    assert events == [StreamDelta("x"), StreamDone("x")]


@pytest.mark.parametrize("how", ["abort", "clean_close"])
async def test_stream_ending_without_done(
    hub: FakeHub, make_client: ClientFactory, how: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = sse_response()
        await resp.prepare(request)
        await resp.write(sse_event("delta", "half a rep"))
        if how == "abort" and request.transport is not None:
            request.transport.abort()  # like a crashed proxy: the chunked body never ends
        return resp

    hub.on("POST", "/chats/chat1/messages", handler)
    client = await make_client()
    seen: list[StreamEvent] = []
    with pytest.raises(MomoHubError) as e:
        async with asyncio.timeout(WAIT):
            async for ev in client.send_message("chat1", [{"type": "text", "content": "x"}]):
                seen.append(ev)
    assert e.value.code == ErrorCode.UPSTREAM_ERROR
    assert "stream ended before the reply finished" in e.value.reason
    assert seen == [StreamDelta("half a rep")]


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_closing_the_stream_disconnects(
    hub: FakeHub, make_client: ClientFactory, how: str
) -> None:
    disconnected = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = sse_response()
        await resp.prepare(request)
        await resp.write(sse_event("delta", "first"))
        # Keep talking until a write fails: that is how a server notices the reader left.
        for _ in range(int(WAIT / 0.01)):
            await asyncio.sleep(0.01)
            try:
                await resp.write(b": heartbeat\n\n")
            except (ConnectionError, RuntimeError):
                disconnected.set()
                break
        return resp

    hub.on("POST", "/chats/chat1/messages", handler)
    client = await make_client()
    stream = client.send_message("chat1", [{"type": "text", "content": "x"}])
    if how == "aclose":
        assert await asyncio.wait_for(anext(stream), WAIT) == StreamDelta("first")
        await stream.aclose()
    else:
        got_first = asyncio.Event()

        async def consume() -> None:
            async for ev in stream:
                if isinstance(ev, StreamDelta):
                    got_first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_first.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(disconnected.wait(), WAIT)


async def test_close_stops_background_work(hub: FakeHub, make_client: ClientFactory) -> None:
    hub.access_ttl = 120.0  # a refresh job gets scheduled
    client = await make_client()
    assert client._scheduler is not None and client._scheduler.job_ids()
    await client.close()
    assert client._scheduler is None and not client._tasks
    with pytest.raises(MomoHubError):
        await client.list_chats()
