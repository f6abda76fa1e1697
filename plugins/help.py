"""`/help` (alias `帮助`): the commands the caller may use here, or one command's usage."""

from __future__ import annotations

from bridge.commands import Arg, Invocation
from bridge.plugins import PluginContext


def setup(ctx: PluginContext) -> None:

    @ctx.command(
        "help",
        aliases=("帮助",),
        help="the commands you can use here",
        args=(Arg("command", optional=True),),
    )
    async def help_(inv: Invocation) -> None:
        p = inv.prefix
        wanted = inv.args["command"]
        if wanted:
            cmd = ctx.commands.find(wanted.removeprefix(p))
            if cmd is None or (cmd.admin_only and not inv.caller.is_admin):
                await inv.reply(f"No command {p}{wanted[:32]}. {p}help lists them.")
                return
            lines = [cmd.usage(p)]
            if cmd.help:
                lines.append(cmd.help)
            if cmd.aliases:
                lines.append("also: " + ", ".join(p + a for a in cmd.aliases))
            seen = set()
            for sub in cmd.subcommands.values():
                if id(sub) in seen or (sub.admin_only and not inv.caller.is_admin):
                    continue
                seen.add(id(sub))
                lines.append(f"  {sub.usage(p)}" + (f" — {sub.help}" if sub.help else ""))
            await inv.reply("\n".join(lines))
            return
        visible = sorted(ctx.commands.visible_to(inv.caller.is_admin), key=lambda c: c.name)
        lines = ["Commands:"]
        for cmd in visible:
            lines.append(f"{p}{cmd.name}" + (f" — {cmd.help}" if cmd.help else ""))
        lines.append(f"{p}help <command> shows how to use one.")
        await inv.reply("\n".join(lines))
