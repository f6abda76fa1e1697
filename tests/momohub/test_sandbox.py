"""The sandbox's REST side: auth quirks, envelope, paging, characters, chats, history, persistence."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from adapters.momohub.sandbox import SandboxServer
from bridge.config import SandboxConfig
from tests.momohub.conftest import MOMO_ID, PASSWORD, SandboxFactory, SandboxHub

pytestmark = pytest.mark.timeout(20)

ENVELOPE_KEYS = {"success", "code", "message", "data", "errors", "timestamp"}


async def test_base_url_and_envelope(sandbox: SandboxHub) -> None:
    assert sandbox.url.startswith("http://127.0.0.1:")
    assert sandbox.url.endswith("/v1")
    status, body, _ = await sandbox.call("GET", "/characters/public")
    assert status == 200
    assert set(body) == ENVELOPE_KEYS
    assert body["success"] is True and body["errors"] is None


async def test_demo_characters_are_public_with_stable_ids(sandbox_factory: SandboxFactory) -> None:
    first = await sandbox_factory()
    second = await sandbox_factory()
    ids = []
    for hub in (first, second):
        _, body, _ = await hub.call("GET", "/characters/public")
        ids.append([c["id"] for c in body["data"]["items"]])
        names = {c["name"] for c in body["data"]["items"]}
        assert {"Momo", "Kuro"} <= names
        momo = next(c for c in body["data"]["items"] if c["name"] == "Momo")
        assert momo["author"] is None and momo["isPublic"] is True
        assert momo["createdAt"].endswith("Z") and momo["originPrompt"]
    assert ids[0] == ids[1] and MOMO_ID in ids[0]


async def test_sign_up_sign_in_and_millisecond_expiries(sandbox_factory: SandboxFactory) -> None:
    hub = await sandbox_factory(access_token_ttl=3600, refresh_token_ttl=7200)
    email = await hub.sign_up("Alice@Example.test")
    before_ms = time.time() * 1000
    login = await hub.sign_in("alice@example.test")
    tokens = login["tokens"]
    assert tokens["tokenType"] == "Bearer"
    # Absolute epoch milliseconds, not a lifetime and not seconds.
    assert abs(tokens["accessTokenExpiredIn"] - (before_ms + 3_600_000)) < 5_000
    assert abs(tokens["refreshTokenExpiredIn"] - (before_ms + 7_200_000)) < 5_000
    assert set(login["user"]) >= {"userId", "email", "username", "avatar"}
    status, body, _ = await hub.call("GET", "/auth/me", token=tokens["accessToken"])
    assert status == 200 and body["data"]["email"] == email.lower()

    status, body, _ = await hub.call(
        "POST", "/auth/sign-up/email", json={"email": email, "password": PASSWORD, "name": "x"}
    )
    assert status == 409 and body["code"] == "CONFLICT"
    status, body, _ = await hub.call(
        "POST", "/auth/sign-in/email", json={"email": email, "password": "wrong password"}
    )
    assert status == 401 and body["code"] == "AUTHENTICATION_FAILED"


async def test_validation_errors_name_each_field(sandbox: SandboxHub) -> None:
    status, body, _ = await sandbox.call(
        "POST", "/auth/sign-up/email", json={"email": "nope", "password": "short"}
    )
    assert status == 400 and body["code"] == "VALIDATION_ERROR"
    assert set(body["errors"]) == {"email", "password", "name"}
    async with sandbox.http.post(
        sandbox.url + "/auth/sign-in/email",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "BAD_REQUEST_BODY"


async def test_missing_token_is_a_bare_401_and_bad_token_an_enveloped_one(
    sandbox: SandboxHub,
) -> None:
    status, body, resp = await sandbox.call("GET", "/chats")
    assert status == 401
    assert resp.content_type == "text/plain" and isinstance(body, str)
    status, body, _ = await sandbox.call("GET", "/chats", token="not-a-token")
    assert status == 401 and body["code"] == "AUTHENTICATION_FAILED"


async def test_refresh_rotates_the_pair(sandbox: SandboxHub) -> None:
    login = await sandbox.sign_in(await sandbox.sign_up())
    old = login["tokens"]
    status, body, _ = await sandbox.call(
        "POST", "/auth/refresh", json={"refreshToken": old["refreshToken"]}
    )
    assert status == 200
    new = body["data"]["tokens"]
    assert body["data"]["user"]["userId"] == login["user"]["userId"]
    assert new["accessToken"] != old["accessToken"]
    assert new["refreshToken"] != old["refreshToken"]
    assert new["accessTokenExpiredIn"] > 1e12
    # The old refresh token is spent.
    status, body, _ = await sandbox.call(
        "POST", "/auth/refresh", json={"refreshToken": old["refreshToken"]}
    )
    assert status == 401 and body["code"] == "AUTHENTICATION_FAILED"
    status, _, _ = await sandbox.call("GET", "/auth/me", token=new["accessToken"])
    assert status == 200
    stats = await sandbox.stats()
    assert stats["refreshes"] == 1 and stats["sign_ins"] == 1
    assert stats["requests"]["POST /v1/auth/refresh"] == 2


async def test_expire_tokens_control_forces_401_then_refresh_recovers(sandbox: SandboxHub) -> None:
    tokens = (await sandbox.sign_in(await sandbox.sign_up()))["tokens"]
    status, body, _ = await sandbox.call("POST", "/_sandbox/expire-tokens")
    assert status == 200 and body["expired"] >= 1
    status, body, _ = await sandbox.call("GET", "/auth/me", token=tokens["accessToken"])
    assert status == 401 and body["code"] == "AUTHENTICATION_FAILED"
    status, body, _ = await sandbox.call(
        "POST", "/auth/refresh", json={"refreshToken": tokens["refreshToken"]}
    )
    assert status == 200
    fresh = body["data"]["tokens"]["accessToken"]
    status, _, _ = await sandbox.call("GET", "/auth/me", token=fresh)
    assert status == 200


async def test_sign_out_revokes_both_tokens(sandbox: SandboxHub) -> None:
    tokens = (await sandbox.sign_in(await sandbox.sign_up()))["tokens"]
    status, _, _ = await sandbox.call(
        "POST",
        "/auth/sign-out",
        token=tokens["accessToken"],
        json={"refreshToken": tokens["refreshToken"]},
    )
    assert status == 200
    status, _, _ = await sandbox.call("GET", "/auth/me", token=tokens["accessToken"])
    assert status == 401
    status, _, _ = await sandbox.call(
        "POST", "/auth/refresh", json={"refreshToken": tokens["refreshToken"]}
    )
    assert status == 401


async def test_paging_shape_and_validation(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    for _ in range(3):
        await sandbox.chat(token)
    status, body, _ = await sandbox.call(
        "GET", "/chats", token=token, params={"page": "2", "limit": "2"}
    )
    assert status == 200
    page = body["data"]
    assert len(page["items"]) == 1
    assert {
        k: page[k] for k in ("total", "page", "limit", "totalPages", "hasNext", "hasPrevious")
    } == {
        "total": 3,
        "page": 2,
        "limit": 2,
        "totalPages": 2,
        "hasNext": False,
        "hasPrevious": True,
    }
    for params, bad in (
        ({"page": "0"}, {"page"}),
        ({"limit": "101"}, {"limit"}),
        ({"limit": "0", "page": "x"}, {"limit", "page"}),
    ):
        status, body, _ = await sandbox.call("GET", "/chats", token=token, params=params)
        assert status == 400, params
        assert body["code"] == "VALIDATION_ERROR" and set(body["errors"]) == bad


async def test_character_crud_and_visibility(sandbox: SandboxHub) -> None:
    alice, bob = await sandbox.account(), await sandbox.account()
    status, body, _ = await sandbox.call(
        "POST",
        "/characters",
        token=alice,
        json={"name": "Secret Sam", "bio": "hush", "originPrompt": "Be quiet.", "isPublic": False},
    )
    assert status == 201
    sam = body["data"]
    assert sam["author"]["name"] == "Tester" and sam["isPublic"] is False
    path = f"/characters/{sam['id']}"

    assert (await sandbox.call("GET", path, token=alice))[0] == 200
    assert (await sandbox.call("GET", path, token=bob))[0] == 403
    assert (await sandbox.call("GET", f"/characters/{MOMO_ID}"))[0] == 200
    status, body, _ = await sandbox.call("GET", "/characters/not-a-uuid")
    assert status == 400 and body["errors"] == {"characterId": "must be a UUID"}
    status, body, _ = await sandbox.call("GET", "/characters/00000000-0000-4000-8000-000000000000")
    assert status == 404 and body["code"] == "NOT_FOUND"

    _, body, _ = await sandbox.call("GET", "/characters/search", token=alice, params={"q": "sam"})
    assert [c["id"] for c in body["data"]["items"]] == [sam["id"]]
    _, body, _ = await sandbox.call("GET", "/characters/search", token=bob, params={"q": "sam"})
    assert body["data"]["items"] == []
    _, body, _ = await sandbox.call("GET", "/characters", token=alice)
    assert [c["id"] for c in body["data"]["items"]] == [sam["id"]]

    status, body, _ = await sandbox.call(
        "PUT", path, token=alice, json={"name": "Sam", "isPublic": True}
    )
    assert status == 200 and body["data"]["name"] == "Sam" and body["data"]["bio"] == "hush"
    assert (await sandbox.call("PUT", path, token=bob, json={"name": "Mine"}))[0] == 403
    assert (await sandbox.call("PUT", f"/characters/{MOMO_ID}", token=bob, json={"name": "X"}))[
        0
    ] == 403
    status, body, resp = await sandbox.call("DELETE", path, token=alice)
    assert status == 204 and body is None and resp.content_length in (0, None)
    assert (await sandbox.call("GET", path, token=alice))[0] == 404


async def test_chats_belong_to_their_user(sandbox: SandboxHub) -> None:
    alice, bob = await sandbox.account(), await sandbox.account()
    status, body, _ = await sandbox.call(
        "POST",
        "/chats",
        token=alice,
        json={"characterId": MOMO_ID, "name": "hi", "temporary": True},
    )
    assert status == 201
    chat = body["data"]
    assert chat["characterId"] == MOMO_ID and chat["temporary"] is True
    assert chat["lastMessage"] is None and chat["name"] == "hi"
    path = f"/chats/{chat['id']}"

    assert (await sandbox.call("GET", path, token=bob))[0] == 403
    assert (await sandbox.call("GET", f"{path}/messages", token=bob))[0] == 403
    _, body, _ = await sandbox.call("GET", "/chats", token=bob)
    assert body["data"]["items"] == []

    status, body, _ = await sandbox.call(
        "PUT", f"{path}/name", token=alice, json={"name": "renamed"}
    )
    assert status == 200 and body["data"]["name"] == "renamed"
    status, body, _ = await sandbox.call(
        "POST", "/chats", token=alice, json={"characterId": "00000000-0000-4000-8000-000000000000"}
    )
    assert status == 404

    status, body, _ = await sandbox.call("DELETE", path, token=alice)
    assert status == 204 and body is None
    assert (await sandbox.call("GET", path, token=alice))[0] == 404


async def test_chat_config_and_plugins(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    status, body, _ = await sandbox.call("GET", f"/chats/{chat}/config", token=token)
    assert status == 200 and body["data"] is None
    status, body, _ = await sandbox.call(
        "PUT",
        f"/chats/{chat}/config",
        token=token,
        json={"temperature": 0.5, "systemPrompt": "Be brief."},
    )
    assert status == 200
    assert body["data"] == {
        "temperature": 0.5,
        "maxTokens": None,
        "topP": None,
        "systemPrompt": "Be brief.",
    }
    status, body, _ = await sandbox.call(
        "PUT", f"/chats/{chat}/config", token=token, json={"temperature": 3, "maxTokens": 1.5}
    )
    assert status == 400 and set(body["errors"]) == {"temperature", "maxTokens"}
    _, body, _ = await sandbox.call("GET", f"/chats/{chat}/config", token=token)
    assert body["data"]["temperature"] == 0.5
    status, body, _ = await sandbox.call("GET", f"/chats/{chat}/plugins", token=token)
    assert status == 200 and body["data"] == []


async def test_history_is_newest_first_and_deletes_are_204(sandbox: SandboxHub) -> None:
    token = await sandbox.account()
    chat = await sandbox.chat(token)
    for text in ("one", "two"):
        status, _ = await sandbox.send(token, chat, text)
        assert status == 200
    items = await sandbox.messages(token, chat)
    assert [m["senderType"] for m in items] == ["CHARACTER", "USER", "CHARACTER", "USER"]
    assert items[-1]["content"] == [{"type": "text", "content": "one"}]
    stamps = [m["createdAt"] for m in items]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 4
    _, body, _ = await sandbox.call("GET", f"/chats/{chat}", token=token)
    assert body["data"]["lastMessage"] == "Momo: you said two"

    status, body, _ = await sandbox.call(
        "DELETE", f"/chats/{chat}/messages/{items[0]['id']}", token=token
    )
    assert status == 204 and body is None
    assert len(await sandbox.messages(token, chat)) == 3
    status, _, _ = await sandbox.call(
        "DELETE", f"/chats/{chat}/messages/{items[0]['id']}", token=token
    )
    assert status == 404
    status, body, _ = await sandbox.call("DELETE", f"/chats/{chat}/messages", token=token)
    assert status == 204 and body is None
    assert await sandbox.messages(token, chat) == []


async def test_unknown_route_is_enveloped_404(sandbox: SandboxHub) -> None:
    status, body, _ = await sandbox.call("GET", "/no/such/thing")
    assert status == 404 and body["code"] == "NOT_FOUND"
    status, body, resp = await sandbox.call("PATCH", "/chats")
    assert status == 405 and body["success"] is False and "GET" in resp.headers["Allow"]


async def test_controls_are_absent_without_fault_injection(sandbox_factory: SandboxFactory) -> None:
    hub = await sandbox_factory(fault_injection=False)
    for method, path in (
        ("GET", "/_sandbox/stats"),
        ("POST", "/_sandbox/faults"),
        ("POST", "/_sandbox/expire-tokens"),
    ):
        assert (await hub.call(method, path, json={}))[0] == 404


async def test_state_survives_a_restart(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    db = str(tmp_path / "state" / "sandbox.db")
    hub = await sandbox_factory(database=db)
    email = await hub.sign_up()
    tokens = (await hub.sign_in(email))["tokens"]
    token = tokens["accessToken"]
    _, body, _ = await hub.call("POST", "/characters", token=token, json={"name": "Keeper"})
    character = body["data"]["id"]
    chat = await hub.chat(token, character)
    await hub.call("PUT", f"/chats/{chat}/config", token=token, json={"topP": 0.9})
    await hub.send(token, chat, "remember\nme")
    before = await hub.messages(token, chat)
    await hub.server.stop()

    again = await sandbox_factory(database=db)
    # Tokens persisted too: the old access token still works after the restart.
    status, body, _ = await again.call("GET", "/auth/me", token=token)
    assert status == 200 and body["data"]["email"] == email
    assert await again.messages(token, chat) == before
    _, body, _ = await again.call("GET", f"/chats/{chat}/config", token=token)
    assert body["data"]["topP"] == 0.9
    _, body, _ = await again.call("GET", f"/characters/{character}", token=token)
    assert body["data"]["name"] == "Keeper"
    # The refresh token survived and still rotates.
    status, _, _ = await again.call(
        "POST", "/auth/refresh", json={"refreshToken": tokens["refreshToken"]}
    )
    assert status == 200
    # New rows still sort after old ones.
    await again.send(token, chat, "later")
    after = await again.messages(token, chat)
    assert after[0]["createdAt"] > before[0]["createdAt"]
    await again.sign_in(email)


async def test_ensure_account_before_start_is_applied_at_start(
    sandbox_factory: SandboxFactory,
) -> None:
    server = SandboxServer(SandboxConfig())
    await server.ensure_account("early@example.test", "early password")
    try:
        url = await server.start()
        async with aiohttp.ClientSession() as http:
            body = {"email": "early@example.test", "password": "early password"}
            async with http.post(url + "/auth/sign-in/email", json=body) as resp:
                assert resp.status == 200
    finally:
        await server.stop()


async def test_ensure_account_creates_and_resets_the_password(sandbox: SandboxHub) -> None:
    await sandbox.server.ensure_account("bridge@example.test", "first password")
    await sandbox.sign_in("bridge@example.test", "first password")
    await sandbox.server.ensure_account("bridge@example.test", "second password")
    await sandbox.sign_in("bridge@example.test", "second password")
    status, _, _ = await sandbox.call(
        "POST",
        "/auth/sign-in/email",
        json={"email": "bridge@example.test", "password": "first password"},
    )
    assert status == 401
