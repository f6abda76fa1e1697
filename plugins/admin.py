"""Admin commands: `/status` (how the bridge is doing) and `/broadcast <text>` (a message to
every hub user). Both are admin only; the plugin host refuses everyone else."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from bridge.commands import Arg, Invocation
from bridge.models import Segment
from bridge.outbox import send_from_contact
from bridge.plugins import PluginContext

log = structlog.get_logger(__name__)

# Every user the store knows; far beyond any hub this bridge is sized for.
MAX_BROADCAST_USERS = 100_000
# Users written at once: each is two storage hops, and the database has one thread.
BROADCAST_BATCH = 50


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86_400)
    hours, s = divmod(s, 3_600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {s}s"
    return f"{minutes}m {s}s" if minutes else f"{s}s"


def _users_online(hub: Any) -> int:
    counted = getattr(hub, "users_online", None)
    if counted is not None:
        return int(counted() if callable(counted) else counted)
    # HubServer keeps a set of live connections per user and no public count of the users.
    return len(getattr(hub, "_clients", {}))


def _state(component: dict[str, Any]) -> str:
    detail = component.get("detail") or ""
    return f"{component.get('state', '?')}" + (f" ({detail})" if detail else "")


def _schedules(bridge: Any) -> int | None:
    """How many jobs the app's scheduler holds; None when there is none to ask."""
    scheduler = getattr(bridge, "scheduler", None)
    if scheduler is None:
        return None
    for name in ("job_count", "count_jobs"):
        counter = getattr(scheduler, name, None)
        if counter is not None:
            return int(counter() if callable(counter) else counter)
    for name in ("job_ids", "get_jobs"):
        jobs = getattr(scheduler, name, None)
        if callable(jobs):
            return len(jobs())
    return None


async def status_lines(bridge: Any, started: float) -> list[str]:
    lines = [f"Uptime: {_duration(time.time() - started)}"]
    hub = bridge.hub
    if hub is not None:
        lines += [
            f"Hub connections: {hub.connection_count}",
            f"Users online: {_users_online(hub)}",
        ]
    if bridge.sessions is not None:
        # Every reply (a message's or a completion's) runs as a turn of its conversation, and
        # so does this command: its own conversation is not counted.
        busy = max(len(bridge.sessions.engine) - 1, 0)
        completions = sum(hub.active_streams.values()) if hub is not None else 0
        lines.append(f"Streams in flight: {busy} (completions: {completions})")
    components: dict[str, dict[str, Any]] = (await bridge.health.snapshot())["components"]
    links = {
        n.removeprefix("framework:"): c for n, c in components.items() if n.startswith("framework:")
    }
    if links:
        lines.append(f"Framework links ({len(links)}):")
        lines += [f"  {name}: {_state(c)}" for name, c in sorted(links.items())]
    else:
        lines.append("Framework links: none configured")
    momohub = components.get("momohub")
    lines.append(f"MomoHub: {_state(momohub)}" if momohub else "MomoHub: not configured")
    openai = {
        n.removeprefix("openai:"): c for n, c in components.items() if n.startswith("openai:")
    }
    for name, c in sorted(openai.items()):
        lines.append(f"OpenAI provider {name}: {_state(c)}")
    schedules = _schedules(bridge)
    if schedules is not None:
        lines.append(f"Schedules: {schedules} jobs (housekeeping included)")
    return lines


async def broadcast(bridge: Any, text: str) -> tuple[int, int, int]:
    """Store ``text`` as a message to every hub user and push it (live, or kept in their outbox
    for their next login). Returns (reached, of them online, failed)."""
    # From the bot account (`auth.bot_qq`, shown under `server.title`): the bridge's own
    # identity, which every client learns at login. A broadcast is the bridge speaking, not a
    # character, and it must not land in (and confuse) any character's conversation.
    sender = str(bridge.config.auth.bot_qq)
    name = bridge.config.server.title
    segs = [Segment.text(text).to_json()]
    storage, outbox = bridge.storage, bridge.outbox

    async def one(user_id: str) -> bool:
        await send_from_contact(storage.messages, outbox, user_id, sender, segs, sender_name=name)
        return outbox.online(user_id)

    users = [u.id for u in await storage.users.list(limit=MAX_BROADCAST_USERS)]
    reached = online = failed = 0
    for i in range(0, len(users), BROADCAST_BATCH):
        batch = users[i : i + BROADCAST_BATCH]
        results = await asyncio.gather(*(one(u) for u in batch), return_exceptions=True)
        for user_id, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                log.warning("admin.broadcast_failed", user=user_id, error=type(result).__name__)
                failed += 1
                continue
            reached += 1
            online += bool(result)
    return reached, online, failed


def setup(ctx: PluginContext) -> None:
    @ctx.command("status", help="how the bridge is doing", admin_only=True)
    async def status(inv: Invocation) -> None:
        bridge = ctx.bridge
        if bridge is None:
            await inv.reply("The bridge is not running.")
            return
        started = bridge.plugins.started if bridge.plugins is not None else time.time()
        await inv.reply("\n".join(await status_lines(bridge, started)))

    @ctx.command(
        "broadcast",
        help="send a message to every hub user (online now or at their next login)",
        args=(Arg("text", rest=True),),
        admin_only=True,
    )
    async def broadcast_(inv: Invocation) -> None:
        bridge = ctx.bridge
        if bridge is None or bridge.storage is None or bridge.outbox is None:
            await inv.reply("The bridge is not running.")
            return
        reached, online, failed = await broadcast(bridge, inv.args["text"])
        ctx.log.info("admin.broadcast", by=inv.caller.id, reached=reached, failed=failed)
        answer = f"Broadcast sent to {reached} users ({online} online now, the rest at next login)."
        if failed:
            answer += f" {failed} could not be reached."
        await inv.reply(answer)
