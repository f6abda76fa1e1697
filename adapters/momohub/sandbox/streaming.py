"""POST /chats/{id}/messages: the reply as Server-Sent Events, with the real server's habits.

Once the body is accepted the answer is always HTTP 200; every later failure (unknown chat, someone
else's chat, busy chat, model failure) is an `event: error`. The user message is stored before the
model runs and the character message before `done`.

A reply cut short by the client (disconnect) or by a `drop_after` fault is NOT stored: the client
never saw `done`, so it must not find a reply in the history it did not receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Literal

import structlog
from aiohttp import web

from adapters.momohub.sandbox.api import Fields, parse_uuid, read_object
from adapters.momohub.sandbox.entities import Character, Chat, User
from adapters.momohub.sandbox.faults import Fault
from adapters.momohub.sandbox.responder import (
    Delta,
    ReplyRequest,
    ResponderError,
    ToolCallResult,
    ToolCallStart,
    Turn,
)
from adapters.momohub.sandbox.sse import SSEWriter, StreamGone
from adapters.momohub.sandbox.state import STATE, SandboxState

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

FAULT = web.RequestKey("momohub_sandbox_fault", Fault)
STREAM_PATH = "/v1/chats/{chatId}/messages"
CANCEL_TIMEOUT = 5.0
Outcome = Literal["done", "failed", "gone", "dropped", "stopped"]


@routes.post(STREAM_PATH)
async def send_message(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    user = state.require_user(request)
    chat_id = parse_uuid(request, "chatId")
    fields = Fields(await read_object(request))
    parts = fields.content()
    fields.check()

    sse = SSEWriter(request)
    state.stats.open_streams += 1
    try:
        await sse.open()
        await _converse(state, sse, user, chat_id, parts, request.get(FAULT))
    except StreamGone:
        log.debug("sandbox.stream_gone", chat=chat_id)
    except Exception:
        # Headers are gone already, so the error middleware can't answer; end the stream instead.
        log.exception("sandbox.stream_crashed", chat=chat_id)
        with contextlib.suppress(StreamGone):
            await sse.event("error", "internal server error")
    finally:
        state.stats.open_streams -= 1
    return sse.response


async def _converse(
    state: SandboxState,
    sse: SSEWriter,
    user: User,
    chat_id: str,
    parts: list[dict[str, object]],
    fault: Fault | None,
) -> None:
    chat = state.store.chats.get(chat_id)
    if chat is None:
        return await sse.event("error", "chat not found")
    if chat.user_id != user.id:
        return await sse.event("error", "forbidden: this chat belongs to another user")
    character = state.store.characters.get(chat.character_id or "")
    if character is None:
        return await sse.event("error", "the character of this chat no longer exists")
    if chat.id in state.busy:
        return await sse.event("error", "this chat is busy")

    state.busy.add(chat.id)
    try:
        state.store.add_message(chat, "USER", parts)
        outcome = await _run_generation(
            state, sse, chat, _reply_request(state, chat, character), fault
        )
        log.debug("sandbox.reply_finished", chat=chat.id, outcome=outcome)
    finally:
        state.busy.discard(chat.id)


def _reply_request(state: SandboxState, chat: Chat, character: Character) -> ReplyRequest:
    history = [
        Turn("user" if m.sender == "USER" else "assistant", m.text())
        for m in state.store.messages.get(chat.id, [])
        if m.text()
    ]
    settings = dict(chat.config or {})
    # As MomoHub does: the chat's systemPrompt is appended to the character's own prompt.
    prompts = [p for p in (character.origin_prompt, settings.get("systemPrompt")) if p]
    return ReplyRequest(
        character_name=character.name,
        system_prompt="\n\n".join(prompts) or None,
        history=history,
        settings=settings,
    )


async def _run_generation(
    state: SandboxState, sse: SSEWriter, chat: Chat, reply: ReplyRequest, fault: Fault | None
) -> Outcome:
    """Generate while heartbeating; whichever ends first (reply, dead client, timeout) ends both."""
    heartbeat = state.tasks.spawn(
        _heartbeat(sse, state.config.heartbeat_interval), name="sse-heartbeat"
    )
    generation = state.tasks.spawn(_generate(state, sse, chat, reply, fault), name="sse-generate")
    timeout = state.config.generation_timeout
    try:
        done, _ = await asyncio.wait(
            {heartbeat, generation}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        # Also runs when aiohttp cancels this handler because the client hung up.
        heartbeat.cancel()
        generation.cancel()
        await asyncio.wait({heartbeat, generation}, timeout=CANCEL_TIMEOUT)

    if generation in done and not generation.cancelled():
        # An unexpected crash was already logged by the task set's done callback.
        return "failed" if generation.exception() else generation.result()
    if generation.cancelled() and state.closing.is_set():
        with contextlib.suppress(StreamGone):
            await sse.event("error", "server is shutting down")
        return "stopped"
    if not done:
        with contextlib.suppress(StreamGone):
            await sse.event("error", f"model timed out after {timeout:g} s")
        return "failed"
    return "gone"


async def _heartbeat(sse: SSEWriter, interval: float) -> None:
    with contextlib.suppress(StreamGone):
        while True:
            await asyncio.sleep(interval)
            await sse.comment("heartbeat")


async def _generate(
    state: SandboxState, sse: SSEWriter, chat: Chat, reply: ReplyRequest, fault: Fault | None
) -> Outcome:
    state.stats.generations += 1
    try:
        return await _stream_reply(state, sse, chat, reply, fault)
    except StreamGone:
        return "gone"
    finally:
        state.stats.generations -= 1


async def _stream_reply(
    state: SandboxState, sse: SSEWriter, chat: Chat, reply: ReplyRequest, fault: Fault | None
) -> Outcome:
    drop_after = fault.drop_after if fault else None
    if fault and fault.stall and await state.pause(fault.stall):
        return "stopped"
    if drop_after == 0:
        sse.abort()
        return "dropped"

    pieces: list[str] = []
    try:
        async with contextlib.aclosing(state.responder.reply(reply)) as events:
            async for event in events:
                match event:
                    case Delta(text=text):
                        pieces.append(text)
                        await sse.event("delta", text)
                        if drop_after is not None and len(pieces) >= drop_after:
                            sse.abort()
                            return "dropped"
                    case ToolCallStart(name=name, arguments=arguments):
                        payload = {"name": name, "arguments": arguments}
                        await sse.event("tool_call_start", json.dumps(payload, ensure_ascii=False))
                    case ToolCallResult(name=name, result=result):
                        payload = {"name": name, "result": result}
                        await sse.event("tool_call_result", json.dumps(payload, ensure_ascii=False))
    except ResponderError as e:
        await sse.event("error", str(e))
        return "failed"
    except StreamGone:
        raise
    except Exception:
        log.exception("sandbox.responder_crashed", chat=chat.id)
        await sse.event("error", "internal error while generating the reply")
        return "failed"

    text = "".join(pieces)
    if chat.id not in state.store.chats:
        await sse.event("error", "chat not found (deleted while replying)")
        return "failed"
    state.store.add_message(chat, "CHARACTER", [{"type": "text", "content": text}])
    await sse.event("done", text)
    return "done"
