"""ProviderClient and OpenAIRouter against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.openai.client import OpenAIRouter, ProviderClient
from bridge.config import OpenAIConfig, OpenAIProvider
from bridge.errors import BridgeError, ErrorCode
from bridge.models import CompletionRequest, Delta, Done, Failed, ToolCall, UserRef
from tests.support.fake_openai import FakeOpenAI


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    s = FakeOpenAI()
    await s.start()
    yield s
    await s.stop()


def provider(server: FakeOpenAI, **kw) -> OpenAIProvider:
    return OpenAIProvider(name="fake", base_url=server.base_url, api_key="sk-test", **kw)


def req(model: str = "echo", text: str = "hi", **kw) -> CompletionRequest:
    return CompletionRequest(
        user=UserRef("u"), model=model, messages=[{"role": "user", "content": text}], **kw
    )


async def collect(client: ProviderClient, model: str, **kw) -> list:
    return [e async for e in client.stream(req(model, **kw), model)]


async def test_echo_stream_and_parameters(server: FakeOpenAI) -> None:
    c = ProviderClient(provider(server))
    events = await collect(c, "echo", text="hello", temperature=0.5, max_tokens=9)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "You said: hello"
    assert events[-1] == Done(
        finish_reason="stop", usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    )
    sent = server.requests[-1]
    assert sent["temperature"] == 0.5 and sent["max_tokens"] == 9 and sent["stream"] is True
    assert "top_p" not in sent and "tools" not in sent
    await c.close()


async def test_reasoning_and_tools(server: FakeOpenAI) -> None:
    c = ProviderClient(provider(server))
    events = await collect(c, "reasoning")
    # Chunks that arrive in one read go on as one delta, so only the text is certain.
    assert "".join(e.reasoning for e in events if isinstance(e, Delta)) == "Let me think."
    assert [e.text for e in events if isinstance(e, Delta) and e.text] == ["42"]
    events = await collect(c, "tools")
    finished = [e for e in events if isinstance(e, ToolCall) and e.action == "finished"]
    assert [(e.index, e.name, e.params) for e in finished] == [
        (0, "get_weather", '{"city": "Paris"}'),
        (1, "get_time", '{"tz": "UTC"}'),
    ]
    assert events[-1] == Done(finish_reason="tool_calls")
    await c.close()


@pytest.mark.parametrize(
    ("model", "code", "words"),
    [
        ("fail-400", ErrorCode.UPSTREAM_ERROR, "temperature must be at most 2"),
        ("fail-429", ErrorCode.RATE_LIMITED, "Rate limit reached"),
        ("fail-500", ErrorCode.UPSTREAM_ERROR, "had an error"),
        ("nope", ErrorCode.NOT_FOUND, "does not exist"),
        ("drop", ErrorCode.UPSTREAM_ERROR, "fake"),
        ("error-midstream", ErrorCode.UPSTREAM_ERROR, "the model crashed mid-reply"),
    ],
)
async def test_failures_are_events_with_upstream_text(
    server: FakeOpenAI, model, code, words
) -> None:
    c = ProviderClient(provider(server))
    events = await collect(c, model)
    last = events[-1]
    assert isinstance(last, Failed) and last.error == code
    assert words in last.reason and "fake" in last.reason
    await c.close()


async def test_wrong_key_and_unreachable(server: FakeOpenAI) -> None:
    c = ProviderClient(OpenAIProvider(name="fake", base_url=server.base_url, api_key="wrong"))
    last = (await collect(c, "echo"))[-1]
    assert isinstance(last, Failed) and "401" in last.reason and "Incorrect API key" in last.reason
    await c.close()
    dead = ProviderClient(OpenAIProvider(name="dead", base_url="http://127.0.0.1:9/v1", timeout=5))
    last = (await collect(dead, "echo"))[-1]
    assert isinstance(last, Failed) and last.error == ErrorCode.UPSTREAM_ERROR
    await dead.close()


async def test_stall_times_out(server: FakeOpenAI) -> None:
    c = ProviderClient(provider(server, timeout=0.5))
    last = (await collect(c, "stall"))[-1]
    assert isinstance(last, Failed) and last.error == ErrorCode.UPSTREAM_TIMEOUT
    await server.wait_open_streams(0)
    await c.close()


async def test_closing_early_closes_upstream(server: FakeOpenAI) -> None:
    c = ProviderClient(provider(server))
    stream = c.stream(req("slow"), "slow")
    first = await anext(stream)
    assert isinstance(first, Delta)
    assert server.open_streams == 1
    await stream.aclose()
    await server.wait_open_streams(0)
    await c.close()


async def test_models_listing_is_cached(server: FakeOpenAI) -> None:
    c = ProviderClient(provider(server), cache_ttl=60)
    assert "echo" in await c.list_models()
    await c.list_models()
    assert server.model_list_calls == 1
    fixed = ProviderClient(provider(server, models=["echo"]))
    assert await fixed.list_models() == ["echo"]
    assert server.model_list_calls == 1
    await c.close()
    await fixed.close()


async def test_router_resolves_and_skips_broken_providers(server: FakeOpenAI) -> None:
    cfg = OpenAIConfig(
        providers=[
            OpenAIProvider(name="dead", base_url="http://127.0.0.1:9/v1", timeout=5),
            provider(server),
        ]
    )
    r = OpenAIRouter(cfg)
    groups = await r.model_groups()
    assert [g.owner for g in groups] == ["fake"]
    client, model = await r.resolve("fake/tools")
    assert client.name == "fake" and model == "tools"
    client, model = await r.resolve("echo")
    assert client.name == "fake" and model == "echo"
    with pytest.raises(BridgeError) as e:
        await r.resolve("no-such-model")
    assert e.value.code == ErrorCode.NOT_FOUND
    await r.close()
