#!/usr/bin/env python
"""The OpenAI-compatible upstream of ``stream_bench.py --mode openai``, in a process of its own.

Two servers on one event loop (the benchmark uses them in different phases, never together):

* ``tests/support/fake_openai.py``'s FakeOpenAI, as the tests run it: model ``tokens-N`` streams
  N tokens (``w0 ``, ``w1 ``, ...) with no delay between them;
* a paced SSE server (this file; FakeOpenAI has no pacing): model ``paced-N`` streams N tokens
  like a model does, on an absolute schedule from the moment the request was read: a role chunk
  at once (as OpenAI sends), token k at ``--first-ms + k * --interval-ms``. Token k is the text
  ``w<k>@<ns> ``, where <ns> is ``time.perf_counter_ns()`` taken just before that chunk is
  written: on Linux that is CLOCK_MONOTONIC, one clock for every process of the machine, so a
  reader can tell how long each chunk took to reach it, whichever way it came.

Both speak the OpenAI wire format (``data: {chat.completion.chunk}`` lines, then
``data: [DONE]``) and want ``Authorization: Bearer <--api-key>``. Prints one JSON line per
server on stderr, ``{"event": "fake.ready", "url": ".../v1"}`` and ``{"event": "paced.ready",
...}``, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-paced",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": None}},
        status=status,
    )


class PacedOpenAI:
    def __init__(self, api_key: str, interval: float, first: float) -> None:
        self.api_key = api_key
        self.interval = interval
        self.first = first
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://{HOST}:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error(401, "Incorrect API key provided")
        return web.json_response(
            {"object": "list", "data": [{"id": "paced", "object": "model", "owned_by": "bench"}]}
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return error(401, "Incorrect API key provided")
        body = await request.json()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        model = str(body.get("model", ""))
        name, _, count = model.partition("-")
        if name != "paced" or not count.isdigit():
            return error(404, f"The model `{model}` does not exist (want paced-N)")
        if not body.get("stream"):
            return error(400, "only stream=true is served here")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        write, stamp = resp.write, time.perf_counter_ns
        try:
            await write(chunk(model, {"role": "assistant", "content": ""}))
            for k in range(int(count)):
                delay = t0 + self.first + k * self.interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await write(chunk(model, {"content": f"w{k}@{stamp()} "}))
            await write(chunk(model, {}, "stop"))
            await write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            pass  # the reader went away (an aborted stream): nothing to finish
        return resp


async def serve(args: argparse.Namespace) -> int:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support.fake_openai import FakeOpenAI

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fake = FakeOpenAI(api_key=args.api_key)
    paced = PacedOpenAI(args.api_key, args.interval_ms / 1000, args.first_ms / 1000)
    try:
        for event, url in (
            ("fake.ready", await fake.start()),
            ("paced.ready", await paced.start()),
        ):
            print(json.dumps({"event": event, "url": url}), file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await paced.stop()
        await fake.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="openai_upstream.py", description=__doc__.split("\n")[1])
    p.add_argument("--api-key", default="sk-test", help="FakeOpenAI's default key")
    p.add_argument("--interval-ms", type=float, default=20.0, help="paced: ms between tokens")
    p.add_argument(
        "--first-ms", type=float, default=20.0, help="paced: ms from the request to token 0"
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.interval_ms < 0 or args.first_ms < 0:
        p.error("--interval-ms and --first-ms must be >= 0")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
