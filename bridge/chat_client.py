"""`momobridge chat`: a terminal client for the hub, for trying the bridge by hand.

Plain lines are sent to the current contact; slash commands do the rest (see HELP).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import threading
from typing import Any, TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridge.tasks import TaskSet

HELP = """commands:
  /to <contact>        choose who plain lines go to
  /contacts            list contacts from the login answer
  /models              ask for the model list
  /ask <model> <text>  one streamed completion from a model
  /recall <message_id> recall a message
  /raw <json>          send a raw frame (request_id is filled in)
  /help, /quit"""


class ChatClient:
    def __init__(self, url: str, user_id: str, token: str, out: TextIO = sys.stdout) -> None:
        self.url = url
        self.user_id = user_id
        self.token = token
        self.out = out
        self.contact: str | None = None
        self.contacts: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._streaming: set[Any] = set()
        self.logged_in = asyncio.Event()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def send(self, frame: dict[str, Any]) -> int:
        assert self._ws is not None
        rid = next(self._ids)
        frame = {"request_id": rid, **frame}
        await self._ws.send(json.dumps(frame, ensure_ascii=False))
        return rid

    async def run(self, lines: asyncio.Queue[str | None]) -> int:
        async with connect(self.url, max_size=None) as ws:
            self._ws = ws
            await self.send(
                {
                    "protocol": "system",
                    "type": "login",
                    "data": {"mio-chat-id": self.user_id, "mio-chat-token": self.token},
                }
            )
            tasks = TaskSet("chat-client")
            reader = tasks.spawn(self._read(), name="chat-reader")
            try:
                # Lines typed (or piped) before the login answer must not race ahead of it.
                login = tasks.spawn(self.logged_in.wait(), name="chat-login")
                await asyncio.wait({login, reader}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
                login.cancel()
                if not self.logged_in.is_set():
                    return 1
                while True:
                    get = tasks.spawn(lines.get(), name="chat-line")
                    done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                    if reader in done:
                        get.cancel()
                        return 1 if ws.close_code not in (1000, 1001) else 0
                    line = get.result()
                    if line is None or line.strip() == "/quit":
                        return 0
                    await self.command(line.rstrip("\n"))
            finally:
                await tasks.cancel_all()

    async def command(self, line: str) -> None:
        if not line.strip():
            return
        if line.startswith("/to "):
            self.contact = line[4:].strip()
            self.say(f"* now talking to {self.contact}")
        elif line.strip() == "/contacts":
            for c in self.contacts:
                mark = " (default)" if c.get("default") else ""
                self.say(f"  {c['id']}  {c.get('kind')}  {c.get('name')}{mark}")
            if not self.contacts:
                self.say("* no contacts")
        elif line.strip() == "/models":
            await self.send({"protocol": "openai", "type": "models", "data": {}})
        elif line.startswith("/ask "):
            _, _, rest = line.partition(" ")
            model, _, text = rest.partition(" ")
            await self.send(
                {
                    "protocol": "openai",
                    "type": "completions",
                    "data": {"model": model, "messages": [{"role": "user", "content": text}]},
                }
            )
        elif line.startswith("/recall "):
            await self.send(
                {
                    "protocol": "onebot",
                    "type": "del_message",
                    "data": {
                        "id": self.contact,
                        "type": "message",
                        "content": {"message_id": line.split()[1]},
                    },
                }
            )
        elif line.startswith("/raw "):
            try:
                frame = json.loads(line[5:])
            except json.JSONDecodeError as e:
                self.say(f"* not JSON: {e}")
                return
            await self.send(frame)
        elif line.strip() == "/help":
            self.say(HELP)
        elif self.contact is None:
            self.say("* choose a contact first: /to <contact>  (see /contacts)")
        else:
            await self.send(
                {
                    "protocol": "onebot",
                    "type": "message",
                    "id": self.contact,
                    "data": [{"type": "text", "data": {"text": line}}],
                }
            )

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                self.show(json.loads(raw))
        except ConnectionClosed:
            pass
        self.say(f"* connection closed ({self._ws.close_code} {self._ws.close_reason})")

    def show(self, f: dict[str, Any]) -> None:
        data = f.get("data") or {}
        kind = (f.get("protocol"), f.get("type"))
        msg = f.get("message")
        rid = f.get("request_id")
        if f.get("code") == 1:
            if rid in self._streaming:
                self._streaming.discard(rid)
                self.say("")
            self.say(f"! {kind[0]}/{kind[1]} failed: {data.get('error')}: {data.get('reason')}")
            if kind == ("system", "login"):
                return
        elif kind == ("system", "login"):
            self.contacts = data.get("contacts") or []
            default = next((c for c in self.contacts if c.get("default")), None)
            if default and self.contact is None:
                self.contact = default["id"]
            role = "admin" if data.get("is_admin") else "user"
            talking = f"{default['name']} ({default['id']})" if default else "nobody yet"
            self.say(
                f"* logged in as {self.user_id} ({role}); {len(self.contacts)} contacts; "
                f"talking to {talking}; /to <contact> to change, /help for commands"
            )
            self.logged_in.set()
        elif msg == "pending":
            self._streaming.add(rid)
        elif msg == "update":
            if data.get("seq") == 0:
                # Start the reply on its own line, tagged with the request it answers.
                print(f"> [{rid}] ", end="", file=self.out, flush=True)
            call = data.get("tool_call")
            if call:
                print(
                    f"⟨{call.get('name')} {call.get('action')}⟩", end="", file=self.out, flush=True
                )
            print(
                data.get("reasoning_content", "") + data.get("chunk", ""),
                end="",
                file=self.out,
                flush=True,
            )
        elif msg == "completed":
            self._streaming.discard(rid)
            self.say(f"  ✓ ({data.get('finish_reason')})")
        elif kind == ("onebot", "message") and "content" in data and str(rid).startswith("s-"):
            content = data["content"]
            if content.get("stream_request_id") is not None:
                self.say(f"* reply stored as message {content.get('message_id')}")
                return
            text = "".join(
                s.get("data", {}).get("text", "")
                if s.get("type") == "text"
                else f"[{s.get('type')}]"
                for s in content.get("message", [])
            )
            self.say(f"< {data.get('id')} #{content.get('message_id')}: {text}")
        elif kind == ("onebot", "del_message"):
            self.say("* recall done")
        elif kind == ("onebot", "del_msg"):
            self.say(f"* message {data.get('content', {}).get('message_id')} recalled")
        elif kind == ("onebot", "message"):
            self.say(f"* sent as message {data.get('message_id')}")
        elif kind == ("openai", "models"):
            for group in data.get("models", []):
                self.say(f"  {group.get('owner')}: {', '.join(group.get('models', []))}")
        else:
            self.say(f"* {json.dumps(f, ensure_ascii=False)}")


def _start_stdin_reader(queue: asyncio.Queue[str | None]) -> None:
    """Read stdin on a daemon thread: a blocking readline cannot be cancelled, and a daemon
    thread is not waited for at exit, so /quit returns at once even while stdin stays open."""
    loop = asyncio.get_running_loop()

    def pump() -> None:
        while True:
            line = sys.stdin.readline()
            try:
                loop.call_soon_threadsafe(queue.put_nowait, line or None)
            except RuntimeError:  # the loop is gone: we are exiting
                return
            if not line:
                return

    threading.Thread(target=pump, name="chat-stdin", daemon=True).start()


async def run_chat(url: str, user_id: str, token: str) -> int:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    _start_stdin_reader(queue)
    try:
        return await ChatClient(url, user_id, token).run(queue)
    except OSError as e:
        print(f"cannot connect to {url}: {e}", file=sys.stderr)
        return 2
