"""A real OpenAI-compatible HTTP server for tests and benchmarks (aiohttp, loopback only).

The `model` name picks the behaviour, so one server covers every case:
echo, reasoning, tools, fail-400, fail-429, fail-500, stall, drop, slow, tokens-N, gated (a first
part, then the rest once the test sets `gate`), reason-tools (reasoning, text, then tool calls).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

MODELS = [
    "echo",
    "reasoning",
    "tools",
    "fail-400",
    "fail-429",
    "fail-500",
    "stall",
    "drop",
    "slow",
    "error-midstream",
    "gated",
    "reason-tools",
]


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": code}}, status=status
    )


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return ""


class FakeOpenAI:
    def __init__(self, api_key: str = "sk-test") -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.model_list_calls = 0
        self.open_streams = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.gate = asyncio.Event()
        # Listed after MODELS (a provider that gains a model while the bridge runs).
        self.extra_models: list[str] = []
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        # Endless streams (slow, stall) end at once so shutdown never waits on a client.
        self._stopping.set()
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_open_streams(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: self.open_streams == n)

    async def _set_open(self, delta: int) -> None:
        async with self._changed:
            self.open_streams += delta
            self._changed.notify_all()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(
                401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"
            )
        self.model_list_calls += 1
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "owned_by": "test"}
                    for m in [*MODELS, *self.extra_models]
                ],
            }
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(
                401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"
            )
        body = await request.json()
        self.requests.append(body)
        model = str(body.get("model", ""))
        if model == "fail-400":
            return _error(
                400, "bad request: temperature must be at most 2", "invalid_request_error"
            )
        if model == "fail-429":
            return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        if model == "fail-500":
            return _error(
                500, "The server had an error while processing your request", "server_error"
            )
        if model not in MODELS and not model.startswith("tokens-"):
            return _error(
                404,
                f"The model `{model}` does not exist",
                "invalid_request_error",
                "model_not_found",
            )
        if not body.get("stream"):
            text = f"You said: {_last_user_text(body.get('messages', []))}"
            return web.json_response(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await self._set_open(1)
        try:
            await self._stream(request, resp, model, body)
        finally:
            await self._set_open(-1)
        return resp

    async def _stream(
        self, request: web.Request, resp: web.StreamResponse, model: str, body: dict[str, Any]
    ) -> None:
        w = resp.write
        if model == "stall":
            await self._stopping.wait()
            return
        if model == "echo":
            text = f"You said: {_last_user_text(body.get('messages', []))}"
            await w(_chunk(model, {"role": "assistant", "content": ""}))
            for i in range(0, len(text), 4):
                await w(_chunk(model, {"content": text[i : i + 4]}))
            await w(_chunk(model, {}, "stop"))
            usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
            await w(
                f"data: {json.dumps({'id': 'chatcmpl-test', 'object': 'chat.completion.chunk', 'created': 0, 'model': model, 'choices': [], 'usage': usage})}\n\n".encode()
            )
        elif model == "reasoning":
            for part in ("Let me ", "think."):
                await w(_chunk(model, {"reasoning_content": part}))
            await w(_chunk(model, {"content": "42"}))
            await w(_chunk(model, {}, "stop"))
        elif model == "tools":
            frags = [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                },
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                },
                {"index": 0, "function": {"arguments": '{"city": '}},
                {"index": 1, "function": {"arguments": '{"tz": "UTC"}'}},
                {"index": 0, "function": {"arguments": '"Paris"}'}},
            ]
            for f in frags:
                await w(_chunk(model, {"tool_calls": [f]}))
            await w(_chunk(model, {}, "tool_calls"))
        elif model == "drop":
            await w(_chunk(model, {"content": "partial "}))
            await w(_chunk(model, {"content": "answer"}))
            # Cut the TCP connection mid-reply: no finish_reason, no [DONE].
            if request.transport is not None:
                request.transport.abort()
            return
        elif model == "error-midstream":
            # Some servers report a failure inside a 200 stream, as an `error` object.
            await w(_chunk(model, {"content": "partial "}))
            err = {"error": {"message": "the model crashed mid-reply", "type": "server_error"}}
            await w(f"data: {json.dumps(err)}\n\n".encode())
            return
        elif model == "gated":
            await w(_chunk(model, {"content": "first part, "}))
            await self.gate.wait()
            await w(_chunk(model, {"content": "then the rest"}))
            await w(_chunk(model, {}, "stop"))
        elif model == "reason-tools":
            for part in ("Weighing ", "it up."):
                await w(_chunk(model, {"reasoning_content": part}))
            await w(_chunk(model, {"content": "Let me look."}))
            frags = [
                {"index": 0, "id": "c1", "type": "function", "function": {"name": "lookup"}},
                {"index": 0, "function": {"arguments": '{"q": '}},
                {"index": 0, "function": {"arguments": '"tea"}'}},
            ]
            for f in frags:
                await w(_chunk(model, {"tool_calls": [f]}))
            await w(_chunk(model, {}, "tool_calls"))
        elif model == "slow":
            for i in range(2000):
                await w(_chunk(model, {"content": f"{i} "}))
                try:
                    async with asyncio.timeout(0.05):
                        await self._stopping.wait()
                    return
                except TimeoutError:
                    pass
            await w(_chunk(model, {}, "stop"))
        elif model.startswith("tokens-"):
            n = int(model.split("-", 1)[1])
            for i in range(n):
                await w(_chunk(model, {"content": f"w{i} "}))
            await w(_chunk(model, {}, "stop"))
        await w(b"data: [DONE]\n\n")
