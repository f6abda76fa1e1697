"""A minimal NoneBot2 bot for the bridge's framework link: it answers every message with an echo.

The bridge dials it (reverse WebSocket, OneBot v11) at ws://<this host>:8080/onebot/v11/ws.
Settings come from the environment: HOST, PORT, ONEBOT_ACCESS_TOKEN (the same token as the
bridge's [[onebot.frameworks]] access_token), and any other NoneBot setting.
Run: python bot.py  (needs nonebot2[fastapi] and nonebot-adapter-onebot)
"""

import nonebot
from nonebot import on_message
from nonebot.adapters.onebot.v11 import Adapter, MessageEvent

nonebot.init(driver="~fastapi", command_start=[""])
nonebot.get_driver().register_adapter(Adapter)

echo = on_message(priority=10, block=True)


@echo.handle()
async def answer(event: MessageEvent) -> None:
    await echo.finish(f"echo: {event.get_plaintext().strip()}")


if __name__ == "__main__":
    nonebot.run()
