"""hub client ↔ bridge ↔ a real OpenAI-compatible server, over loopback."""

from __future__ import annotations

import pytest

from tests.conftest import Bridge
from tests.support.fake_openai import FakeOpenAI


@pytest.fixture
async def hub(bridge_factory, upstream: FakeOpenAI) -> Bridge:
    return await bridge_factory(
        openai={
            "default_model": "fake/echo",
            "providers": [
                {
                    "name": "fake",
                    "base_url": upstream.base_url,
                    "api_key": "sk-test",
                    "timeout": 1.0,
                }
            ],
        }
    )


def ask(model: str | None, text: str = "hi", **extra) -> dict:
    data = {"messages": [{"role": "user", "content": text}], **extra}
    if model is not None:
        data["model"] = model
    return data


async def test_models_in_login_and_openai_models(hub: Bridge) -> None:
    c = await hub.client("amy")
    login = c.frames[-1]["data"]
    assert login["default_model"] == "fake/echo"
    groups = {g["owner"]: g["models"] for g in login["models"]}
    assert "echo" in groups["fake"] and "tools" in groups["fake"]
    f = await c.request("openai", "models", {})
    assert {g["owner"] for g in f["data"]["models"]} == {"fake"}


async def test_streamed_completion(hub: Bridge, upstream: FakeOpenAI) -> None:
    c = await hub.client("ben")
    rid = await c.send("openai", "completions", ask("echo", "hello", temperature=0.3, top_p=0.9))
    frames = await c.stream(rid)
    assert frames[0] == {
        "request_id": rid,
        "protocol": "openai",
        "type": "completions",
        "code": 0,
        "message": "pending",
    }
    updates = [f["data"] for f in frames if f["message"] == "update"]
    assert "".join(u["chunk"] for u in updates) == "You said: hello"
    assert [u["seq"] for u in updates] == list(range(len(updates)))
    assert all(u["index"] == 0 and u["tool_call"] is None for u in updates)
    assert frames[-1]["message"] == "completed"
    assert frames[-1]["data"] == {
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    assert upstream.requests[-1]["temperature"] == 0.3 and upstream.requests[-1]["top_p"] == 0.9


async def test_default_model_and_reasoning(hub: Bridge) -> None:
    c = await hub.client("cat")
    frames = await c.stream(await c.send("openai", "completions", ask(None, "x")))
    assert frames[-1]["message"] == "completed"
    frames = await c.stream(await c.send("openai", "completions", ask("reasoning")))
    reasoning = "".join(
        f["data"].get("reasoning_content", "") for f in frames if f["message"] == "update"
    )
    assert reasoning == "Let me think."
    assert "".join(f["data"]["chunk"] for f in frames if f["message"] == "update") == "42"


async def test_fragmented_tool_calls(hub: Bridge, upstream: FakeOpenAI) -> None:
    c = await hub.client("dot")
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    frames = await c.stream(await c.send("openai", "completions", ask("tools", tools=tools)))
    calls = [
        (f["data"]["index"], f["data"]["tool_call"])
        for f in frames
        if f["message"] == "update" and f["data"]["tool_call"]
    ]
    weather = [call for i, call in calls if i == 0]
    assert [x["action"] for x in weather] == ["started", "pending", "pending", "finished"]
    assert weather[-1] == {
        "name": "get_weather",
        "action": "finished",
        "params": '{"city": "Paris"}',
    }
    assert [x["params"] for i, x in calls if i == 1][-1] == '{"tz": "UTC"}'
    assert frames[-1]["data"]["finish_reason"] == "tool_calls"
    assert upstream.requests[-1]["tools"] == tools


@pytest.mark.parametrize(
    ("model", "error", "words"),
    [
        ("fail-400", "UPSTREAM_ERROR", "temperature must be at most 2"),
        ("fail-500", "UPSTREAM_ERROR", "500"),
        ("fail-429", "RATE_LIMITED", "Rate limit"),
        ("fake/missing", "NOT_FOUND", "does not exist"),
        ("drop", "UPSTREAM_ERROR", "fake"),
        ("stall", "UPSTREAM_TIMEOUT", "sent nothing"),
    ],
)
async def test_upstream_failures(hub: Bridge, model: str, error: str, words: str) -> None:
    c = await hub.client("eli")
    frames = await c.stream(await c.send("openai", "completions", ask(model)))
    assert frames[-1]["code"] == 1 and frames[-1]["message"] == "failed"
    assert frames[-1]["data"]["error"] == error
    assert words in frames[-1]["data"]["reason"]
    assert (await c.request("system", "heartbeat", {}))["code"] == 0


async def test_unknown_bare_model_and_bad_data(hub: Bridge) -> None:
    c = await hub.client("fin")
    frames = await c.stream(await c.send("openai", "completions", ask("gpt-nonexistent")))
    assert frames[-1]["data"]["error"] == "NOT_FOUND"
    f = await c.request("openai", "completions", {"model": "echo", "messages": "not a list"})
    assert f["data"]["error"] == "INVALID_DATA" and "messages" in f["data"]["reason"]


async def test_abort_closes_upstream(hub: Bridge, upstream: FakeOpenAI) -> None:
    c = await hub.client("gil")
    rid = await c.send("openai", "completions", ask("slow"))
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    assert upstream.open_streams == 1
    assert (await c.request("openai", "abort", {"request_id": rid}))["code"] == 0
    frames = await c.stream(rid)
    assert frames[-1]["data"]["error"] == "CANCELLED"
    await upstream.wait_open_streams(0)


async def test_disconnect_closes_upstream(hub: Bridge, upstream: FakeOpenAI) -> None:
    c = await hub.client("hal")
    rid = await c.send("openai", "completions", ask("slow"))
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    await c.close()
    await upstream.wait_open_streams(0)


async def test_per_user_stream_limit(bridge_factory, upstream: FakeOpenAI) -> None:
    b = await bridge_factory(
        limits={"streams_per_user": 2},
        openai={
            "providers": [{"name": "fake", "base_url": upstream.base_url, "api_key": "sk-test"}]
        },
    )
    c = await b.client("ivy")
    other = await b.client("jay")
    rids = [await c.send("openai", "completions", ask("slow")) for _ in range(2)]
    for rid in rids:
        await c.wait_for(
            lambda f, r=rid: f.get("request_id") == r and f.get("message") == "pending"
        )
    f = await c.request("openai", "completions", ask("echo"))
    assert f["data"]["error"] == "BUSY"
    # Another user is unaffected.
    frames = await other.stream(await other.send("openai", "completions", ask("echo")))
    assert frames[-1]["message"] == "completed"
    await c.request("openai", "abort", {"request_id": rids[0]})
    frames = await c.stream(await c.send("openai", "completions", ask("echo")))
    assert frames[-1]["message"] == "completed"
