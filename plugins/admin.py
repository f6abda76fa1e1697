"""Admin commands: `/status` (how the bridge is doing) and `/broadcast <text>` (a message to
every hub user). Both are admin only; the plugin host refuses everyone else.

A broadcast to tens of thousands of users takes longer than a command may run, so `/broadcast`
answers at once ("Broadcasting to N users…"), sends in the background (`ctx.spawn`, cancelled
at shutdown) and answers again with the totals. One broadcast at a time: a second one while the
first is going is refused (with its progress), not queued, so two admins cannot stack up
unbounded work. A broadcast cut short by shutdown is not resumed (the users it reached would get
it twice); the log says how far it got."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
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
# A batch that takes longer means the storage has stopped answering: the broadcast ends there.
BATCH_TIMEOUT = 30.0
# The closing answer runs outside the command's own timeout: it gets one of its own.
ANSWER_TIMEOUT = 30.0


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
    accounts = {n.removeprefix("qq:"): c for n, c in components.items() if n.startswith("qq:")}
    if accounts:
        lines.append(f"QQ accounts ({len(accounts)}):")
        lines += [f"  {name}: {_state(c)}" for name, c in sorted(accounts.items())]
    elif getattr(bridge, "qq", None) is not None:
        lines.append("QQ accounts: none connected yet")
    momohub = components.get("momohub")
    lines.append(f"MomoHub: {_state(momohub)}" if momohub else "MomoHub: not configured")
    openai = {
        n.removeprefix("openai:"): c for n, c in components.items() if n.startswith("openai:")
    }
    for name, c in sorted(openai.items()):
        lines.append(f"OpenAI provider {name}: {_state(c)}")
    momoai = components.get("momoai")
    if momoai:
        lines.append(f"MOMO AI: {_state(momoai)}")
    cluster = components.get("cluster")
    if cluster:
        lines.append(f"Cluster: {_state(cluster)}")
    schedules = _schedules(bridge)
    if schedules is not None:
        lines.append(f"Schedules: {schedules} jobs (housekeeping included)")
    return lines


@dataclass(slots=True)
class Progress:
    """How far a broadcast has got (what a second `/broadcast` is told while it runs)."""

    total: int = 0
    reached: int = 0
    online: int = 0
    failed: int = 0
    # Why it ended before every user had their turn ("" when it did not).
    stopped: str = ""

    @property
    def done(self) -> int:
        return self.reached + self.failed


async def broadcast_users(bridge: Any) -> list[str]:
    """Every hub user the store knows (at most MAX_BROADCAST_USERS)."""
    return [u.id for u in await bridge.storage.users.list(limit=MAX_BROADCAST_USERS)]


async def broadcast(
    bridge: Any, text: str, users: list[str], progress: Progress | None = None
) -> Progress:
    """Store ``text`` as a message to each of ``users`` and push it (live, or kept in their
    outbox for their next login), counting into ``progress`` as it goes."""
    # From the bot account (`auth.bot_qq`, shown under `server.title`): the bridge's own
    # identity, which every client learns at login. A broadcast is the bridge speaking, not a
    # character, and it must not land in (and confuse) any character's conversation.
    sender = str(bridge.config.auth.bot_qq)
    name = bridge.config.server.title
    segs = [Segment.text(text).to_json()]
    storage, outbox = bridge.storage, bridge.outbox
    progress = progress if progress is not None else Progress()
    progress.total = len(users)

    async def one(user_id: str) -> bool:
        await send_from_contact(storage.messages, outbox, user_id, sender, segs, sender_name=name)
        return outbox.online(user_id)

    for i in range(0, len(users), BROADCAST_BATCH):
        if bridge.storage is not storage:
            # The app closed its storage under us (shutdown without cancelling us first):
            # every further write would fail, one warning per user.
            progress.stopped = "the bridge is stopping"
            break
        batch = users[i : i + BROADCAST_BATCH]
        try:
            async with asyncio.timeout(BATCH_TIMEOUT):
                results = await asyncio.gather(*(one(u) for u in batch), return_exceptions=True)
        except TimeoutError:
            progress.stopped = "the storage stopped answering"
            break
        for user_id, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                log.warning("admin.broadcast_failed", user=user_id, error=type(result).__name__)
                progress.failed += 1
                continue
            progress.reached += 1
            progress.online += bool(result)
    return progress


def _users(n: int) -> str:
    return f"{n} user" if n == 1 else f"{n} users"


def summary(p: Progress) -> str:
    answer = (
        f"Broadcast sent to {_users(p.reached)} ({p.online} online now, the rest at next login)."
    )
    if p.failed:
        answer += f" {p.failed} could not be reached."
    if p.stopped:
        answer += f" Stopped after {p.done} of {p.total}: {p.stopped}."
    return answer


def setup(ctx: PluginContext) -> None:
    # The broadcast in progress, if any (one at a time).
    running: Progress | None = None

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
        nonlocal running
        bridge = ctx.bridge
        if bridge is None or bridge.storage is None or bridge.outbox is None:
            await inv.reply("The bridge is not running.")
            return
        if running is not None:
            await inv.reply(
                f"A broadcast is still going ({running.done} of {running.total} users so far); "
                "send yours once it has finished."
            )
            return
        text: str = inv.args["text"]
        # Taken before the first await: two /broadcast lines (from different conversations,
        # which run at once) must not both pass the check above.
        progress = running = Progress()
        try:
            users = await broadcast_users(bridge)
            progress.total = len(users)
            # Answered before the work starts, so this answer always comes before the totals.
            await inv.reply(f"Broadcasting to {_users(len(users))}…")
            task = ctx.spawn(send_all(inv, text, users, progress), name="broadcast")
        except BaseException:
            running = None
            raise
        task.add_done_callback(lambda _: finished(progress))

    def finished(progress: Progress) -> None:
        nonlocal running
        if running is progress:
            running = None

    async def send_all(inv: Invocation, text: str, users: list[str], progress: Progress) -> None:
        bridge = ctx.bridge
        try:
            await broadcast(bridge, text, users, progress)
        except asyncio.CancelledError:
            ctx.log.warning(
                "admin.broadcast_cancelled", by=inv.caller.id, done=progress.done, of=progress.total
            )
            raise
        except Exception as e:
            ctx.log.exception("admin.broadcast_crashed", by=inv.caller.id, done=progress.done)
            progress.stopped = type(e).__name__
        finished(progress)  # before the answer: the admin may broadcast again once told
        ctx.log.info(
            "admin.broadcast",
            by=inv.caller.id,
            reached=progress.reached,
            failed=progress.failed,
            stopped=progress.stopped,
        )
        async with asyncio.timeout(ANSWER_TIMEOUT):
            await inv.reply(summary(progress))
