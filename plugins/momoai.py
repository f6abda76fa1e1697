"""`/balance` (admins): the MOMO AI account's balance and each agent's remaining tokens.

Registered only when ``[momoai] enabled``; it asks the API each time (GET /account/balance).
"""

from __future__ import annotations

import asyncio

from bridge.commands import Invocation
from bridge.errors import BridgeError
from bridge.plugins import PluginContext

# The most agents one answer lists: a chat message, not a statement.
MAX_SHOWN = 20
BALANCE_TIMEOUT = 15.0


def _amount(value: float | None, currency: str) -> str:
    if value is None:
        return "unknown"
    return f"{value:.4f}".rstrip("0").rstrip(".") + (f" {currency}" if currency else "")


def setup(ctx: PluginContext) -> None:
    bridge = ctx.bridge
    if bridge is not None and not bridge.config.momoai.enabled:
        return

    @ctx.command("balance", help="the MOMO AI account's balance", admin_only=True)
    async def balance(inv: Invocation) -> None:
        target = getattr(ctx.bridge, "momoai", None)
        if target is None:
            await inv.reply("MOMO AI is not running on this bridge (yet).")
            return
        try:
            async with asyncio.timeout(BALANCE_TIMEOUT):
                found = await target.balance()
        except BridgeError as e:
            await inv.reply(f"Could not read the MOMO AI balance: {e.reason}")
            return
        except TimeoutError:
            await inv.reply("MOMO AI did not answer in time; try again later.")
            return
        lines = [f"MOMO AI balance: {_amount(found.balance, found.currency)}"]
        for agent_id, tokens in found.agents[:MAX_SHOWN]:
            agent = target.agent(agent_id)
            name = f"{agent.name} (momoai:{agent_id})" if agent else f"momoai:{agent_id}"
            left = "unknown" if tokens is None else f"{tokens:,}"
            lines.append(f"• {name}: {left} tokens left")
        if len(found.agents) > MAX_SHOWN:
            lines.append(f"… and {len(found.agents) - MAX_SHOWN} more agents.")
        await inv.reply("\n".join(lines))
