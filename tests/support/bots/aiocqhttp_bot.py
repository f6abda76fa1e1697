"""A real aiocqhttp bot (reverse WebSocket server) for end-to-end tests.

Run: python aiocqhttp_bot.py PORT ACCESS_TOKEN — answers every private message with "aio: <text>".
"""

from __future__ import annotations

import logging
import sys

from aiocqhttp import CQHttp, Event

port, token = int(sys.argv[1]), sys.argv[2]
bot = CQHttp(access_token=token)
logging.getLogger("hypercorn").setLevel(logging.WARNING)


@bot.on_message("private")
async def echo(event: Event) -> None:
    text = "".join(s["data"].get("text", "") for s in event.message if s["type"] == "text")
    await bot.send(event, f"aio: {text}")


if __name__ == "__main__":
    bot.run(host="127.0.0.1", port=port, use_reloader=False)
