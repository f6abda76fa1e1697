"""Answers to an accepted call: the `data: {...}` stream (styles and stream faults) and plain JSON.

Default stream: one `data: {"delta": "<piece>"}\\n\\n` per piece, then
`data: {"delta": "", "done": true, "id": "req_<n>", "tokens_used": N, "cost": C}\\n\\n`, then the
chunked body ends cleanly.

A call is charged for the prompt plus the content it actually delivered: a stream cut short (by
the client, a fault or close()) pays for the deltas sent; a non-streamed answer never sent costs
nothing. The estimate held at acceptance is the full reply's cost, so the balance never goes
negative.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from adapters.momoai.sandbox.agents import Agent, cost, tokens_used
from adapters.momoai.sandbox.errors import dumps, error_body, ok
from adapters.momoai.sandbox.faults import DEFAULT_STYLE, Fault, Style
from adapters.momoai.sandbox.state import SandboxState, StreamOutcome

# Long enough that the client's loop really gets each piece in its own read.
SPLIT_PAUSE = 0.002
SPLIT_SIZES = (1, 4, 7)


@dataclass(slots=True)
class Call:
    """A call that passed every check and holds `reserved` of the balance."""

    agent: Agent
    prompt: str
    pieces: list[str]
    request_id: str
    reserved: float

    def usage(self, content: str) -> tuple[int, float]:
        tokens = tokens_used(self.prompt, content)
        return tokens, cost(self.agent, tokens)


def split_bytes(data: bytes) -> list[bytes]:
    """Tiny pieces (1, 4, 7, 1, ... bytes), always cutting inside the first multi-byte character."""
    cuts: set[int] = set()
    position = 0
    for size in itertools.cycle(SPLIT_SIZES):
        position += size
        if position >= len(data):
            break
        cuts.add(position)
    lead = next((i for i, b in enumerate(data) if b >= 0xC0), None)  # a UTF-8 lead byte
    if lead is not None:
        cuts.add(lead + 1)
    bounds = sorted(c for c in cuts if 0 < c < len(data))
    return [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]


class LineWriter:
    def __init__(self, response: web.StreamResponse, style: Style) -> None:
        self.response = response
        self.style = style

    async def data(self, payload: Any) -> None:
        await self.line("data: " + (payload if isinstance(payload, str) else dumps(payload)))

    async def line(self, text: str) -> None:
        data = text.encode() + self.style.separator
        if not self.style.split:
            await self.response.write(data)
            return
        for piece in split_bytes(data):
            await self.response.write(piece)
            await asyncio.sleep(SPLIT_PAUSE)


def delta_event(style: Style, text: str) -> dict[str, Any]:
    if style.delta_key == "openai":
        return {"choices": [{"delta": {"content": text}}]}
    return {style.delta_key: text}


def final_event(style: Style, request_id: str, tokens: int, charged: float) -> dict[str, Any]:
    usage = {"id": request_id, "tokens_used": tokens, "cost": charged}
    if style.delta_key == "openai":
        choices = [{"delta": {}, "finish_reason": "stop"}]
        return {"choices": choices, "usage": {"total_tokens": tokens}, "done": True, **usage}
    return {style.delta_key: "", "done": True, **usage}


def cut(request: web.Request) -> None:
    """Abort the TCP connection without ending the chunked body, like a crashed upstream."""
    if request.transport is not None:
        request.transport.abort()


async def stream_reply(
    request: web.Request, state: SandboxState, call: Call, fault: Fault | None
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    response.enable_chunked_encoding()
    transport = request.transport
    sent: list[str] = []
    outcome: StreamOutcome = "stopped"
    state.stream_opened(transport)
    try:
        await response.prepare(request)
        writer = LineWriter(response, fault.style if fault else DEFAULT_STYLE)
        outcome = await _emit(request, state, writer, call, fault, sent)
    except ConnectionError:
        # aiohttp raises ClientConnectionResetError (a ConnectionResetError) writing to a gone peer.
        outcome = "stopped" if state.closing.is_set() else "aborted"
    except asyncio.CancelledError:
        # handler_cancellation: aiohttp cancels us when the peer goes while we wait (stall, delay).
        outcome = "stopped" if state.closing.is_set() else "aborted"
        raise
    finally:
        state.stream_closed(transport, outcome)
        tokens, charged = call.usage("".join(sent))
        state.settle(call.agent, call.reserved, tokens, charged)
    return response


async def _emit(
    request: web.Request,
    state: SandboxState,
    writer: LineWriter,
    call: Call,
    fault: Fault | None,
    sent: list[str],
) -> StreamOutcome:
    kind = fault.kind if fault else None
    delay = fault.params["delay"] if fault and kind == "slow" else state.token_delay
    after = fault.after if fault and kind in ("stall", "drop", "error_midstream") else None
    for i, piece in enumerate(call.pieces):
        if i == after:
            break
        if i:
            if await state.pause(delay):
                cut(request)
                return "stopped"
            if writer.style.keepalive:
                await writer.line(": keep-alive")
        await writer.data(delta_event(writer.style, piece))
        sent.append(piece)

    if fault is not None and after is not None:
        # `after` beyond the reply's length applies the fault at its end, before the final line.
        return await _stream_fault(request, state, writer, fault)
    tokens, charged = call.usage("".join(sent))
    if writer.style.final != "none":
        await writer.data(final_event(writer.style, call.request_id, tokens, charged))
    if writer.style.final == "done_marker":
        await writer.data("[DONE]")
    await writer.response.write_eof()
    return "completed"


async def _stream_fault(
    request: web.Request, state: SandboxState, writer: LineWriter, fault: Fault
) -> StreamOutcome:
    if fault.kind == "drop":
        cut(request)
        return "dropped"
    if fault.kind == "stall":
        # Hold the connection, sending nothing, until the client leaves (we get cancelled) or the
        # sandbox closes.
        await state.closing.wait()
        cut(request)
        return "stopped"
    code = fault.params["code"]
    body = error_body(
        code, fault.params.get("message"), fault.params.get("details", "生成过程中断")
    )
    await writer.data(body)
    await writer.response.write_eof()
    return "completed"


async def answer_plain(
    request: web.Request, state: SandboxState, call: Call, fault: Fault | None
) -> web.StreamResponse:
    """The non-streamed envelope, after as long as streaming the pieces would take."""
    kind = fault.kind if fault else None
    delay = fault.params["delay"] if fault and kind == "slow" else state.token_delay
    charged_content: str | None = None
    try:
        if kind == "stall":
            await state.closing.wait()
        if kind == "drop" or await state.pause(delay * max(0, len(call.pieces) - 1)):
            cut(request)
            return web.Response(status=500)  # never sent: the connection is gone
        charged_content = "".join(call.pieces)
        tokens, charged = call.usage(charged_content)
        return ok(
            {
                "id": call.request_id,
                "content": charged_content,
                "tokens_used": tokens,
                "cost": charged,
            }
        )
    finally:
        # Unanswered (dropped, stalled, client gone, closing): nothing delivered, nothing charged.
        tokens, charged = call.usage(charged_content) if charged_content is not None else (0, 0.0)
        state.settle(call.agent, call.reserved, tokens, charged)
