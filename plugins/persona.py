"""`/persona`, `/persona set <text...>`, `/persona clear`: the conversation's own extra
instructions for its character. On MomoHub they are the chat's ``systemPrompt``, which MomoHub
appends to the character's prompt. The target stores them, so they survive restarts and `/reset`.
"""

from __future__ import annotations

from typing import Any

from bridge.commands import Arg, Invocation, UsageError
from bridge.errors import BridgeError
from bridge.plugins import PluginContext
from plugins.session import NOT_SUPPORTED, context_method

# Long enough for a character sheet; MomoHub's own limit is larger.
PERSONA_MAX = 4000


class _Refused(Exception):
    """The user has been told why the persona could not be read or changed."""


async def _call(ctx: PluginContext, inv: Invocation, name: str, *args: Any) -> Any:
    method = context_method(ctx, inv, name)
    if method is None:
        await inv.reply(f"{inv.prefix}persona is {NOT_SUPPORTED}.")
        raise _Refused
    try:
        return await method(inv.key, *args)
    except BridgeError as e:
        await inv.reply(f"Could not reach the persona: {e.reason}")
        raise _Refused from None


def setup(ctx: PluginContext) -> None:

    @ctx.command(
        "persona",
        help="this conversation's own instructions for the character",
        usage="[set <text...>|clear]",
    )
    async def persona(inv: Invocation) -> None:
        try:
            text = await _call(ctx, inv, "get_instructions")
        except _Refused:
            return
        if text:
            await inv.reply(f"This conversation's persona:\n{text}")
        else:
            await inv.reply(
                f"No persona here. {inv.prefix}persona set <text> gives this conversation "
                "its own instructions for the character."
            )

    @persona.sub("set", help="set this conversation's persona", args=(Arg("text", rest=True),))
    async def set_(inv: Invocation) -> None:
        text: str = inv.args["text"]
        if len(text) > PERSONA_MAX:
            raise UsageError(f"a persona is at most {PERSONA_MAX} characters")
        try:
            await _call(ctx, inv, "set_instructions", text)
        except _Refused:
            return
        await inv.reply(
            f"Persona set. It applies from your next message and stays after {inv.prefix}reset."
        )

    @persona.sub("clear", help="remove this conversation's persona")
    async def clear(inv: Invocation) -> None:
        try:
            if not await _call(ctx, inv, "get_instructions"):
                await inv.reply("There is no persona to clear.")
                return
            await _call(ctx, inv, "set_instructions", None)
        except _Refused:
            return
        await inv.reply("Persona cleared.")
