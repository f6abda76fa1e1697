"""MOMO AI agents through the hub, against the MOMO AI sandbox on loopback: the agent list as
models (with names) and contacts, streamed and whole completions, agent conversations whose
prompt carries the history, every API error mapped to the hub's codes, pacing, a dropped
stream, an abort closing the upstream request, and /balance."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.momoai.sandbox import MomoAISandbox
from tests.conftest import ADMIN_CODE, Bridge
from tests.e2e.test_health import ServeProcess, get_json, wait_state
from tests.e2e.test_momohub import reply_text, send
from tests.e2e.test_plugins import command
from tests.e2e.test_qq import ALICE, impl, qq_settings
from tests.momoai.conftest import SANDBOX_KEY
from tests.support.cli import momobridge
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import HubClient
from tests.support.momoai import MakeSandbox, sandbox_factory

AGENT = "momoai:159"
NAME = "gpt5.2"


def momoai(sandbox: MomoAISandbox, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "base_url": sandbox.base_url,
        "api_key": SANDBOX_KEY,
        "tier": "enterprise",
        "as_contacts": True,
        **extra,
    }


@pytest.fixture
async def sandboxes() -> AsyncIterator[MakeSandbox]:
    async with sandbox_factory() as make:
        yield make


@pytest.fixture
async def agents(sandboxes: MakeSandbox) -> MomoAISandbox:
    return await sandboxes()


@pytest.fixture
async def hub(bridge_factory, agents: MomoAISandbox) -> Bridge:
    b = await bridge_factory(momoai=momoai(agents))
    await wait_state(b, "momoai", "ok")
    return b


async def complete(c: HubClient, messages: list[dict[str, Any]], **data: Any) -> list[dict]:
    rid = await c.send("openai", "completions", {"model": AGENT, "messages": messages, **data})
    return await c.stream(rid)


def hi(text: str = "hello") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def talk(c: HubClient, contact: str, text: str) -> list[dict]:
    """A message to an agent contact: its reply's frames, once the reply's push is in too
    (so the next command's answer is the next push)."""
    ack, frames = await send(c, contact, text)
    rid = ack["request_id"]
    await c.wait_push(lambda f: f["data"]["content"].get("stream_request_id") == rid)
    return frames


def failure(frames: list[dict]) -> tuple[str, str]:
    """The stream's one failure frame: (error, reason)."""
    failed = [f for f in frames if f.get("message") == "failed"]
    assert len(failed) == 1 and frames[-1] is failed[0], frames
    return failed[0]["data"]["error"], failed[0]["data"]["reason"]


# ----- models and contacts -------------------------------------------------------------------


async def test_agents_are_models_with_names_and_contacts(hub: Bridge) -> None:
    c = await hub.client("ann")
    login = c.frames[-1]["data"]
    contacts = {x["id"]: x for x in login["contacts"]}
    assert contacts[AGENT]["kind"] == "character" and contacts[AGENT]["name"] == NAME
    assert contacts[AGENT]["bio"]
    assert contacts["momoai:160"]["name"] == "翻译助手"
    frame = await c.request("openai", "models")
    groups = {g["owner"]: g for g in frame["data"]["models"]}
    group = groups["momoai"]
    assert group["models"] == ["momoai:159", "momoai:160", "momoai:161", "momoai:162"]
    assert group["names"]["momoai:159"] == NAME and group["names"]["momoai:160"] == "翻译助手"
    characters = {x["id"]: x for x in frame["data"]["characters"]}
    assert characters[AGENT]["name"] == NAME


async def test_only_configured_agents_are_offered(bridge_factory, agents: MomoAISandbox) -> None:
    b = await bridge_factory(momoai=momoai(agents, agents=["160"]))
    await wait_state(b, "momoai", "ok")
    c = await b.client("ann")
    frame = await c.request("openai", "models")
    groups = {g["owner"]: g for g in frame["data"]["models"]}
    assert groups["momoai"]["models"] == ["momoai:160"]
    frames = await complete(c, hi())
    assert failure(frames)[0] == "NOT_FOUND"
    assert agents.requests == []


# ----- completions ---------------------------------------------------------------------------


async def test_a_streamed_completion(hub: Bridge, agents: MomoAISandbox) -> None:
    c = await hub.client("ann")
    frames = await complete(c, hi())
    assert frames[0]["message"] == "pending"
    updates = [f for f in frames if f.get("message") == "update"]
    assert len(updates) > 3  # streamed piece by piece
    assert reply_text(frames) == f"{NAME} 收到: hello"
    done = frames[-1]
    assert done["message"] == "completed", done
    usage = done["data"]["usage"]
    assert usage["total_tokens"] > 0 and usage["cost"] > 0
    sent = agents.requests[-1]
    assert str(sent.agent_id) == "159" and sent.body["prompt"] == "hello"
    assert sent.body["stream"] is True and sent.api_key == SANDBOX_KEY


async def test_a_whole_completion(hub: Bridge, agents: MomoAISandbox) -> None:
    c = await hub.client("ann")
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "two"},
    ]
    frames = await complete(c, history, stream=False, temperature=1.7, max_tokens=50)
    assert [f["message"] for f in frames] == ["pending", "update", "completed"]
    assert reply_text(frames) == f"{NAME} 收到: User: two"
    assert frames[-1]["data"]["usage"]["total_tokens"] > 0
    body = agents.requests[-1].body
    assert body["stream"] is False and body["max_tokens"] == 50
    assert body["temperature"] == 1.0  # the API takes 0-1
    assert body["prompt"].startswith("Be brief.\n\n")
    assert "User: one\n\nAssistant: ok\n\nUser: two" in body["prompt"]


@pytest.mark.parametrize(
    "style",
    [
        {"delta_key": "content"},
        {"delta_key": "openai"},
        {"final": "done_marker"},
        {"final": "none"},
        {"keepalive": True, "newlines": "single"},
        {"newlines": "crlf", "split": True},
        {"split": True, "delta_key": "openai", "final": "done_marker"},
    ],
)
async def test_stream_styles_give_the_same_reply(
    hub: Bridge, agents: MomoAISandbox, style: dict[str, Any]
) -> None:
    agents.inject("style", **style)
    c = await hub.client("ann")
    frames = await complete(c, hi("你好 world"))
    assert frames[-1]["message"] == "completed", frames[-1]
    assert reply_text(frames) == f"{NAME} 收到: 你好 world"


async def test_a_server_ignoring_stream_answers_whole(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.inject("non_stream_when_streaming")
    c = await hub.client("ann")
    frames = await complete(c, hi())
    assert [f["message"] for f in frames] == ["pending", "update", "completed"]
    assert reply_text(frames) == f"{NAME} 收到: hello"


# ----- agent conversations ---------------------------------------------------------------------


async def test_an_agent_conversation_carries_the_history(
    hub: Bridge, agents: MomoAISandbox
) -> None:
    c = await hub.client("ann")
    frames = await talk(c, AGENT, "first question")
    assert reply_text(frames) == f"{NAME} 收到: first question"
    assert agents.requests[-1].body["prompt"] == "first question"
    frames = await talk(c, AGENT, "second question")
    assert frames[-1]["message"] == "completed", frames[-1]
    prompt = agents.requests[-1].body["prompt"]
    assert prompt == (
        f"User: first question\n\nAssistant: {NAME} 收到: first question\n\nUser: second question"
    )
    # /reset starts afresh; /persona goes first in every prompt.
    assert (await command(c, "/reset", contact=AGENT)).startswith("Done:")
    assert (await command(c, "/persona set Answer in French.", contact=AGENT)).startswith(
        "Persona set."
    )
    calls = len(agents.requests)
    frames = await talk(c, AGENT, "third")
    assert len(agents.requests) == calls + 1  # the commands never reached the agent
    assert agents.requests[-1].body["prompt"] == "Answer in French.\n\nUser: third"
    # The history is the bridge's: it survives a restart.
    await hub.restart()
    await wait_state(hub, "momoai", "ok")
    c = await hub.client("ann")
    await talk(c, AGENT, "fourth")
    assert "User: third\n\nAssistant:" in agents.requests[-1].body["prompt"]
    # Another user's conversation with the agent is their own.
    d = await hub.client("bob")
    await send(d, AGENT, "mine")
    assert agents.requests[-1].body["prompt"] == "mine"


async def test_an_unknown_agent_contact_is_refused(hub: Bridge, agents: MomoAISandbox) -> None:
    c = await hub.client("ann")
    rid = await c.send(
        "onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id="momoai:999"
    )
    ack = await c.reply(rid)
    assert ack["code"] != 0 and ack["data"]["error"] == "NOT_FOUND", ack
    assert agents.requests == []


# ----- errors ------------------------------------------------------------------------------------

ERRORS = [
    ("INVALID_API_KEY", "UPSTREAM_ERROR"),
    ("INSUFFICIENT_BALANCE", "UNAVAILABLE"),
    ("RATE_LIMIT", "RATE_LIMITED"),
    ("AGENT_NOT_FOUND", "NOT_FOUND"),
    ("INVALID_PARAMETERS", "INVALID_DATA"),
]


@pytest.mark.parametrize(("kind", "error"), ERRORS)
async def test_every_error_code_is_mapped_with_momoai_s_message(
    hub: Bridge, agents: MomoAISandbox, kind: str, error: str
) -> None:
    agents.inject(kind, message=f"the {kind} message", details=f"the {kind} details")
    c = await hub.client("ann")
    code, reason = failure(await complete(c, hi()))
    assert code == error
    assert f"the {kind} message" in reason and kind in reason
    if kind != "RATE_LIMIT":
        assert f"the {kind} details" in reason


async def test_a_refused_key_is_a_configuration_problem_in_readyz(
    bridge_factory, agents: MomoAISandbox
) -> None:
    b = await bridge_factory(momoai={**momoai(agents), "api_key": "wrong-key"})
    await wait_state(b, "momoai", "auth_failed")
    status, body = await get_json(f"{b.http}/readyz")
    assert status == 503
    detail = body["components"]["momoai"]["detail"]
    assert "INVALID_API_KEY" in detail and "[momoai] api_key" in detail
    c = await b.client("ann")
    code, reason = failure(await complete(c, hi()))
    assert code == "UPSTREAM_ERROR" and "INVALID_API_KEY" in reason


async def test_a_refused_key_recovers_in_readyz(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.inject("INVALID_API_KEY")
    c = await hub.client("ann")
    assert failure(await complete(c, hi()))[0] == "UPSTREAM_ERROR"
    assert hub.app.health.get("momoai").state == "auth_failed"
    assert (await complete(c, hi()))[-1]["message"] == "completed"
    assert hub.app.health.get("momoai").state == "ok"


async def test_insufficient_balance_names_the_balance(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.balance = 0.0
    c = await hub.client("ann")
    code, reason = failure(await complete(c, hi()))
    assert code == "UNAVAILABLE"
    assert "INSUFFICIENT_BALANCE" in reason and "当前余额" in reason


async def test_retry_after_holds_back_the_next_request(
    bridge_factory, agents: MomoAISandbox
) -> None:
    b = await bridge_factory(momoai=momoai(agents, max_wait=0))
    await wait_state(b, "momoai", "ok")
    agents.inject("RATE_LIMIT", retry_after=30)
    c = await b.client("ann")
    code, reason = failure(await complete(c, hi()))
    assert code == "RATE_LIMITED" and "retry in 30 s" in reason
    calls = len(agents.requests)
    code, reason = failure(await complete(c, hi()))
    assert code == "RATE_LIMITED" and "pause" in reason
    assert len(agents.requests) == calls  # refused here, MOMO AI never asked


async def test_the_tier_paces_requests_here(bridge_factory, sandboxes) -> None:
    sandbox = await sandboxes(keys={SANDBOX_KEY: "free"})
    b = await bridge_factory(momoai=momoai(sandbox, tier="free", max_wait=0))
    await wait_state(b, "momoai", "ok")
    c = await b.client("ann")
    for _ in range(10):
        assert (await complete(c, hi()))[-1]["message"] == "completed"
    code, reason = failure(await complete(c, hi()))
    assert code == "RATE_LIMITED" and "at most 10 a minute" in reason
    assert len(sandbox.requests) == 10


async def test_an_error_inside_the_stream(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.inject("error_midstream", after=2, code="INSUFFICIENT_BALANCE", message="用完了")
    c = await hub.client("ann")
    frames = await complete(c, hi())
    code, reason = failure(frames)
    assert code == "UNAVAILABLE" and "用完了" in reason
    assert any(f.get("message") == "update" for f in frames)


async def test_a_broken_proxy_page_is_an_upstream_error(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.inject("http_502_html")
    c = await hub.client("ann")
    code, reason = failure(await complete(c, hi()))
    assert code == "UPSTREAM_ERROR" and "502" in reason and "<" not in reason


# ----- a dropped stream, a stalled one, an abort --------------------------------------------------


async def test_a_dropped_stream_fails_once(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.inject("drop", after=2)
    c = await hub.client("ann")
    frames = await complete(c, hi())
    code, reason = failure(frames)
    assert code == "UPSTREAM_ERROR" and "cut off" in reason
    # The next request works, and nothing more arrived for the dropped one.
    assert (await complete(c, hi()))[-1]["message"] == "completed"
    rid = frames[0]["request_id"]
    assert sum(1 for f in c.frames if f.get("request_id") == rid and f.get("code") == 1) == 1


async def test_a_dropped_agent_reply_fails_once(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.inject("drop", after=2)
    c = await hub.client("ann")
    _, frames = await send(c, AGENT, "will drop")
    assert failure(frames)[0] == "UPSTREAM_ERROR"
    _, frames = await send(c, AGENT, "works again")
    assert frames[-1]["message"] == "completed"
    # The failed turn left nothing the agent would be told it said.
    assert "will drop" in agents.requests[-1].body["prompt"]
    assert "Assistant: gpt5.2 收到: will" not in agents.requests[-1].body["prompt"]


async def test_a_stalled_stream_times_out(bridge_factory, agents: MomoAISandbox) -> None:
    b = await bridge_factory(momoai=momoai(agents, idle_timeout=0.5))
    await wait_state(b, "momoai", "ok")
    agents.inject("stall", after=1)
    c = await b.client("ann")
    code, _ = failure(await complete(c, hi()))
    assert code == "UPSTREAM_TIMEOUT"
    await agents.wait_aborted(1)


async def test_abort_closes_the_upstream_request(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.inject("stall", after=1)
    c = await hub.client("ann")
    rid = await c.send("openai", "completions", {"model": AGENT, "messages": hi()})
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    await c.send("openai", "abort", {"request_id": rid})
    frames = await c.stream(rid)
    assert failure(frames)[0] == "CANCELLED"
    await agents.wait_aborted(1)
    assert agents.open_streams == 0


async def test_a_closed_tab_closes_the_upstream_request(hub: Bridge, agents: MomoAISandbox) -> None:
    agents.inject("stall", after=1)
    c = await hub.client("ann")
    rid = await c.send("openai", "completions", {"model": AGENT, "messages": hi()})
    await c.wait_for(lambda f: f.get("request_id") == rid and f.get("message") == "update")
    await c.close()
    await agents.wait_aborted(1)


# ----- /balance ------------------------------------------------------------------------------------


async def test_balance_for_admins_only(hub: Bridge, agents: MomoAISandbox) -> None:
    admin = await hub.client("root", ADMIN_CODE)
    answer = await command(admin, "/balance", contact=AGENT)
    assert answer.startswith("MOMO AI balance: 100 CNY"), answer
    assert f"{NAME} (momoai:159):" in answer and "tokens left" in answer
    user = await hub.client("ann")
    assert (await command(user, "/balance", contact=AGENT)).startswith("Only an admin")
    status = await command(admin, "/status", contact=AGENT)
    assert "MOMO AI: ok" in status, status


async def test_balance_reports_momoai_s_refusal(bridge_factory, agents: MomoAISandbox) -> None:
    b = await bridge_factory(momoai={**momoai(agents), "api_key": "wrong-key"})
    await wait_state(b, "momoai", "auth_failed")
    admin = await b.client("root", ADMIN_CODE)
    answer = await command(admin, "/balance", contact=AGENT)
    assert answer.startswith("Could not read the MOMO AI balance:") and "INVALID_API_KEY" in answer


async def test_login_never_waits_on_the_agent_list(bridge_factory) -> None:
    # An API that accepts connections and never answers.
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        b = await bridge_factory(
            momoai={
                "enabled": True,
                "base_url": f"http://127.0.0.1:{port}/v1",
                "api_key": SANDBOX_KEY,
                "first_event_timeout": 60,
            }
        )
        c = await b.client("ann")
        login = c.frames[-1]
        assert login["code"] == 0 and not any(
            x["id"].startswith("momoai:") for x in login["data"]["contacts"]
        )
        assert b.app.health.get("momoai").state == "starting"
        assert held  # the list read is under way, not given up
    finally:
        for w in held:
            w.close()
        server.close()


# ----- the offline demo: `momobridge momoai-sandbox` -----------------------------------------------


async def test_the_sandbox_command_serves_a_bridge(bridge_factory) -> None:
    proc = await asyncio.create_subprocess_exec(
        *momobridge("momoai-sandbox", "--port", "0", "--key", "demo-key", "--token-delay", "0"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    served = ServeProcess(proc)
    try:
        listening, _ = await served.wait_log("momoai_sandbox.listening")
        base_url = listening["base_url"]
        b = await bridge_factory(
            momoai={"enabled": True, "base_url": base_url, "api_key": "demo-key"}
        )
        await wait_state(b, "momoai", "ok")
        c = await b.client("ann")
        frames = await complete(c, hi("offline"))
        assert reply_text(frames) == f"{NAME} 收到: offline"
    finally:
        assert await served.stop() == 0


# ----- a QQ chat ---------------------------------------------------------------------------------


async def test_a_qq_chat_talks_to_an_agent_after_char_use(
    bridge_factory, agents: MomoAISandbox
) -> None:
    b = await bridge_factory(momoai=momoai(agents), onebot=qq_settings(default_target="momoai:160"))
    await wait_state(b, "momoai", "ok")
    sim = await impl(b)
    try:
        await sim.private(ALICE, "hello agent")
        await sim.wait_sent(1)
        assert sim.texts()[-1] == "翻译助手 收到: hello agent"
        await sim.private(ALICE, "/char use momoai:159")
        await sim.wait_sent(2)
        assert sim.texts()[-1].startswith(f"Now talking to {NAME}.")
        await sim.private(ALICE, "one")
        await sim.wait_sent(3)
        await sim.private(ALICE, "two")
        await sim.wait_sent(4)
        assert sim.texts()[-1] == f"{NAME} 收到: User: two"
        assert agents.requests[-1].body["prompt"] == (
            f"User: one\n\nAssistant: {NAME} 收到: one\n\nUser: two"
        )
        # /char list shows the agents like characters.
        await sim.private(ALICE, "/char list")
        await sim.wait_sent(5)
        assert f"• {NAME}" in sim.texts()[-1]
    finally:
        await sim.close()


# ----- without as_contacts, an empty catalogue, a wrong base_url ----------------------------------


async def test_completions_share_the_agent_s_persona_without_contacts(
    bridge_factory, agents: MomoAISandbox
) -> None:
    b = await bridge_factory(momoai=momoai(agents, as_contacts=False))
    await wait_state(b, "momoai", "ok")
    c = await b.client("ann")
    assert not any(x["id"].startswith("momoai:") for x in c.frames[-1]["data"]["contacts"])
    rid = await c.send("onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id=AGENT)
    refused = await c.reply(rid)
    assert refused["data"]["error"] == "NOT_FOUND" and "as_contacts" in refused["data"]["reason"]
    # /persona inside a completion is the agent conversation's own, and goes into the prompt.
    frames = await complete(c, hi("/persona set Speak like a pirate."))
    assert reply_text(frames).startswith("Persona set."), frames
    await complete(c, hi("ahoy"))
    assert agents.requests[-1].body["prompt"] == "Speak like a pirate.\n\nUser: ahoy"


async def test_the_persona_of_an_agent_contact_applies_to_its_completions(
    hub: Bridge, agents: MomoAISandbox
) -> None:
    c = await hub.client("ann")
    assert (await command(c, "/persona set Be terse.", contact=AGENT)).startswith("Persona set.")
    await complete(c, hi("status?"))
    assert agents.requests[-1].body["prompt"] == "Be terse.\n\nUser: status?"


async def test_an_account_without_agents_offers_none(bridge_factory, sandboxes) -> None:
    sandbox = await sandboxes(agents=[])
    b = await bridge_factory(momoai=momoai(sandbox))
    await wait_state(b, "momoai", "ok")
    c = await b.client("ann")
    assert failure(await complete(c, hi()))[0] == "NOT_FOUND"
    rid = await c.send("onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id=AGENT)
    assert (await c.reply(rid))["data"]["error"] == "NOT_FOUND"
    assert not sandbox.requests


async def test_a_wrong_base_url_is_named_in_readyz(bridge_factory, agents: MomoAISandbox) -> None:
    b = await bridge_factory(momoai={**momoai(agents), "base_url": agents.root_url + "/api"})
    await wait_state(b, "momoai", "error")
    status, body = await get_json(f"{b.http}/readyz")
    assert status == 503
    assert "could not read the agent list" in body["components"]["momoai"]["detail"]


async def test_model_contacts_do_not_fork_an_agent_s_conversation(
    bridge_factory, agents: MomoAISandbox, upstream: FakeOpenAI
) -> None:
    b = await bridge_factory(
        momoai=momoai(agents),
        openai={"providers": [{"name": "fake", "base_url": upstream.base_url}]},
    )
    await wait_state(b, "momoai", "ok")
    c = await b.client("ann")
    rid = await c.send(
        "onebot", "message", [{"type": "text", "data": {"text": "hi"}}], id="model:momoai:159"
    )
    refused = await c.reply(rid)
    assert refused["data"]["error"] == "NOT_FOUND" and "'momoai:159'" in refused["data"]["reason"]
