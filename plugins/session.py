"""`/reset` (alias `重置`): the conversation's next message starts a fresh upstream context (a new
MomoHub chat; its persona stays). `/history [n]`: the conversation's last n turns, from storage.

Both go through the conversation's contact target (bridge.router.ContextTarget for `/reset`), so
this plugin works on every edge that has them and says so where there are none.
"""

from __future__ import annotations

from typing import Any

from bridge.commands import Arg, Invocation, UsageError
from bridge.errors import BridgeError
from bridge.models import UserRef
from bridge.plugins import PluginContext

HISTORY_DEFAULT = 10
HISTORY_MAX = 50
# One message per line, cut to this: 50 turns of long replies would be one huge message.
LINE_MAX = 300
NOT_SUPPORTED = "not supported in this conversation"


def context_method(ctx: PluginContext, inv: Invocation, name: str) -> Any:
    """The conversation's target's optional ContextTarget method, or None."""
    try:
        target = ctx.bridge.router.contact_target(inv.key.contact)
    except BridgeError:
        return None
    return getattr(target, name, None)


def _line_text(content: list[dict[str, Any]]) -> str:
    parts = []
    for seg in content:
        kind = seg.get("type")
        data = seg.get("data") or {}
        parts.append(str(data.get("text", "")) if kind == "text" else f"[{kind}]")
    text = " ".join("".join(parts).split())  # one line per message
    if len(text) > LINE_MAX:
        text = text[: LINE_MAX - 1] + "…"
    return text or "(empty)"


def setup(ctx: PluginContext) -> None:

    @ctx.command(
        "reset",
        aliases=("重置",),
        help="start afresh: your next message begins a new conversation with the character",
    )
    async def reset(inv: Invocation) -> None:
        method = context_method(ctx, inv, "reset_context")
        if method is None:
            await inv.reply(f"{inv.prefix}reset is {NOT_SUPPORTED}.")
            return
        try:
            # Where the command line was typed: what was sent after it belongs to the fresh
            # context even when it was stored before this turn ran.
            await method(inv.key, at=inv.message_id)
        except BridgeError as e:
            await inv.reply(f"Could not reset: {e.reason}")
            return
        await inv.reply(
            "Done: your next message starts a fresh conversation "
            f"({inv.prefix}history still shows the earlier messages)."
        )

    reset.clears_context = True

    @ctx.command(
        "history",
        help=f"the last turns of this conversation ({HISTORY_DEFAULT} unless you say how many)",
        args=(Arg("n", kind=int, optional=True, default=HISTORY_DEFAULT),),
    )
    async def history(inv: Invocation) -> None:
        n: int = inv.args["n"]
        if not 1 <= n <= HISTORY_MAX:
            raise UsageError(f"n must be 1 to {HISTORY_MAX}")
        key = inv.key
        host = ctx.bridge.plugins
        # Command lines and their answers are in storage too; a few per turn are allowed for.
        rows = await ctx.bridge.storage.messages.recent(
            key.user_id, key.contact, key.thread, n * 4 + 20
        )
        shown = []
        for row in rows:
            if row.kind != "message":
                continue  # command lines, the bridge's answers, messages a filter held back
            if row.direction == "in" and host is not None:
                text = "".join(
                    str((s.get("data") or {}).get("text", ""))
                    for s in row.content
                    if s.get("type") == "text"
                )
                if host.is_command(text):
                    continue  # stored before messages had kinds
            shown.append(row)
        starts = [i for i, row in enumerate(shown) if row.direction == "in"]
        if len(starts) >= n:
            shown = shown[starts[-n] :]
        if not shown:
            await inv.reply("Nothing has been said in this conversation yet.")
            return
        name = ctx.bridge.router.contact_name(UserRef(key.user_id), key.contact)
        lines = [
            f"{'you' if row.direction == 'in' else name}: {_line_text(row.content)}"
            for row in shown
        ]
        await inv.reply("\n".join(lines))
