"""An example plugin: `/roll 2d6` rolls dice. Off by default; turn it on with
``[plugins] enabled = ["example_dice"]``. Its settings table shows how a plugin is configured:

    [plugins.example_dice]
    max_dice = 20      # the most dice one roll may throw
    max_sides = 1000   # the most sides a die may have

It also keeps each user's last roll in the plugin store (`/roll last`).
"""

from __future__ import annotations

import re
import secrets

from pydantic import BaseModel, ConfigDict, Field

from bridge.commands import Arg, Invocation, UsageError
from bridge.plugins import PluginContext

ENABLED_BY_DEFAULT = False

_DICE = re.compile(r"(\d{1,4})?d(\d{1,6})([+-]\d{1,6})?", re.IGNORECASE)


class DiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_dice: int = Field(20, ge=1, le=1000)
    max_sides: int = Field(1000, ge=2, le=1_000_000)


def setup(ctx: PluginContext) -> None:
    settings = ctx.settings(DiceSettings)

    @ctx.command(
        "roll",
        aliases=("dice",),
        help="roll dice, e.g. 2d6+1 (d20 if none given); 'last' shows your previous roll",
        args=(Arg("dice", optional=True, default="d20"),),
    )
    async def roll(inv: Invocation) -> None:
        spec: str = inv.args["dice"]
        if spec.lower() == "last":
            last = await ctx.store.get(f"last:{inv.caller.id}")
            await inv.reply(f"Your last roll: {last}" if last else "You have not rolled yet.")
            return
        m = _DICE.fullmatch(spec)
        if m is None:
            raise UsageError(f"{spec[:20]!r} is not dice such as 2d6 or d20+3")
        count = int(m.group(1) or 1)
        sides = int(m.group(2))
        bonus = int(m.group(3) or 0)
        if not 1 <= count <= settings.max_dice:
            raise UsageError(f"roll 1 to {settings.max_dice} dice")
        if not 2 <= sides <= settings.max_sides:
            raise UsageError(f"a die has 2 to {settings.max_sides} sides")
        rolls = [secrets.randbelow(sides) + 1 for _ in range(count)]
        total = sum(rolls) + bonus
        shown = " + ".join(map(str, rolls)) + (f" {m.group(3)[0]} {abs(bonus)}" if bonus else "")
        text = f"{spec}: {shown} = {total}" if count > 1 or bonus else f"{spec}: {total}"
        await ctx.store.set(f"last:{inv.caller.id}", text)
        await inv.reply(text)
