"""A real NoneBot2 bot (reverse-WS server, OneBot v11 adapter) for end-to-end tests.

Run: python nonebot_bot.py PORT ACCESS_TOKEN
Behaviour, keyed on the text it receives:
  "forward"      → a merged-forward reply (send_private_forward_msg) and then an image
  "selfdestruct" → sends "temporary" and recalls it with delete_msg
  a reply segment → NoneBot itself calls get_msg; answers "you replied to: <text>"
  "whoami"       → "superuser <user_id>" for a superuser (QQ 10001, the bridge's default
                   auth.admin_qq), "user <user_id>" for anyone else
  anything else  → "echo: <text>"
A friend_recall notice → "recalled <message_id>".
"""

from __future__ import annotations

import sys

import nonebot
from nonebot import on_message, on_notice
from nonebot.adapters.onebot.v11 import (
    Adapter,
    Bot,
    FriendRecallNoticeEvent,
    GroupRecallNoticeEvent,
    MessageEvent,
    MessageSegment,
)
from nonebot.permission import SUPERUSER

port, token = int(sys.argv[1]), sys.argv[2]
nonebot.init(
    driver="~fastapi",
    host="127.0.0.1",
    port=port,
    onebot_access_token=token,
    log_level="WARNING",
    command_start=[""],
    superusers={"10001"},
)
nonebot.get_driver().register_adapter(Adapter)

# A 1x1 PNG, sent the way bots usually send generated images: base64:// inline.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="

messages = on_message(priority=10, block=True)


@messages.handle()
async def answer(bot: Bot, event: MessageEvent) -> None:
    text = event.get_plaintext().strip()
    if event.reply is not None:
        await messages.finish(f"you replied to: {event.reply.message.extract_plain_text()}")
    if text == "forward":
        nodes = [
            {
                "type": "node",
                "data": {"user_id": str(bot.self_id), "nickname": "bot", "content": "first node"},
            },
            {
                "type": "node",
                "data": {
                    "uin": str(bot.self_id),
                    "name": "bot",
                    "content": [{"type": "text", "data": {"text": "second node"}}],
                },
            },
        ]
        await bot.call_api("send_private_forward_msg", user_id=event.user_id, messages=nodes)
        await messages.finish(MessageSegment.image(f"base64://{PNG}"))
    if text == "whoami":
        role = "superuser" if await SUPERUSER(bot, event) else "user"
        await messages.finish(f"{role} {event.user_id}")
    if text == "selfdestruct":
        sent = await bot.send(event, "temporary")
        await bot.delete_msg(message_id=sent["message_id"])
        await messages.finish()
    await messages.finish(f"echo: {text}")


recalls = on_notice(priority=10, block=True)


@recalls.handle()
async def recalled(bot: Bot, event: FriendRecallNoticeEvent | GroupRecallNoticeEvent) -> None:
    await bot.send_private_msg(user_id=event.user_id, message=f"recalled {event.message_id}")


if __name__ == "__main__":
    nonebot.run()
