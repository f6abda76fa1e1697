"""`/schedule`: the conversation's character speaks on a schedule.

    /schedule add cron "0 9 * * 1-5" Good morning! What's on today?
    /schedule add every 30m Remind me to stretch.
    /schedule list            (admins: /schedule list all)
    /schedule del <id>

At each time the prompt goes to the character as a turn of the conversation it was set in
(queued behind a reply still running); the prompt is not shown as the user's message, and the
reply arrives like any reply (a push to every tab, or the outbox while the user is offline).
Schedules are stored and re-armed at start; a run missed while the bridge was down runs once at
start if it is at most ``misfire_grace`` seconds old, else it is skipped. A run is recorded
(``last``) only once it has ended: its reply finished or failed, it was refused (the target was
down or busy: not retried), or its reply was still going after REPLY_WAIT (it counts as run: the
user has been reading it for minutes, and a second run would repeat it). A run the bridge's stop
or crash cut short is not recorded, so it counts as missed at the next start.

The admin console lists every user's schedules and pauses, resumes or deletes them through the
plugin's `Book` (offered with `ctx.provide`). A paused schedule stays stored but is not armed;
a resumed one starts counting afresh, so what it skipped while paused is not run as missed.

    [plugins.schedule]
    max_per_user = 5        # schedules one user may have (admins are not limited)
    max_total = 1000        # schedules users may add, all together; admins may add
                            # ADMIN_RESERVE (100) more, so a full bridge still takes theirs
    misfire_grace = 300     # seconds a missed run stays worth running
    timezone = ""           # the zone cron times are read in; "" is the server's own
    min_interval = 5        # shortest `every`; lower it only for tests
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bridge.commands import Arg, Invocation, UsageError
from bridge.engine import Turn
from bridge.errors import BridgeError
from bridge.plugins import PluginContext
from bridge.scheduler import as_datetime, missed_run, next_after
from plugins._schedule_spec import (
    MAX_EVERY,
    MAX_TOTAL,
    Entry,
    ScheduleSettings,
    parse_cron,
    parse_every,
)

if TYPE_CHECKING:
    from plugins._schedule_cluster import ScheduleCluster

__all__ = ["MAX_EVERY", "Book", "Entry", "ScheduleSettings", "parse_cron", "parse_every", "setup"]

MAX_PROMPT = 2000
# How long a run waits for its reply before letting the next run of the schedule go ahead.
REPLY_WAIT = 300.0
# Schedules only admins may add past max_total: on an open bridge anyone can add up to it, and
# an admin must still be able to. max_total + ADMIN_RESERVE is the hard bound on adds.
ADMIN_RESERVE = 100
# What the start reads: every schedule any configuration could have stored, so lowering
# max_total never leaves stored schedules unloaded (and silently never run).
LOAD_LIMIT = MAX_TOTAL + ADMIN_RESERVE


def _store_key(entry_id: int) -> str:
    return f"s:{entry_id}"


def job_id(entry_id: int) -> str:
    return f"schedule-{entry_id}"


def _cut_short(turn: Turn) -> bool:
    """Whether the turn ended because the bridge stopped (dropped from its queue or cancelled
    with no reason given) rather than by running: a recall or a failure gives one."""
    stopped = turn.state == "dropped" or (turn.task is not None and turn.task.cancelled())
    return stopped and not turn.stop_reason


class Book:
    """Every schedule, by id, with its store and its scheduler jobs: what `/schedule` and the
    console both change, so a pause or a delete from either takes the same steps.

    Adds, deletes, pauses and a run's record are each a read of `entries` and a write of the
    store that must not interleave (two adds would take one id; a run ending must not store a
    deleted schedule again): all of them hold `changing`."""

    def __init__(self, ctx: PluginContext, settings: ScheduleSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.zone = settings.zone()
        # Loaded at start: bounded by max_total + ADMIN_RESERVE (or what a larger max_total
        # stored before).
        self.entries: dict[int, Entry] = {}
        self.changing = asyncio.Lock()
        # Whether this node runs the schedules: always alone; in a cluster, the node holding
        # the lease (plugins/_schedule_cluster.py), the others keep them without arming.
        self.leading = True
        self.cluster: ScheduleCluster | None = None

    @property
    def scheduler(self) -> Any:
        return self.ctx.bridge.scheduler

    # ----- runs -------------------------------------------------------------------------------

    def runner(self, entry_id: int) -> Any:
        ctx = self.ctx

        async def run() -> None:
            entry = self.entries.get(entry_id)
            if entry is None:
                return
            now = self.scheduler.clock()
            cluster = self.cluster
            if cluster is not None and not await cluster.claim(
                entry, now, self.settings.misfire_grace
            ):
                ctx.log.info("schedule.run_elsewhere", schedule=entry.id)
                return
            # Nothing is recorded before the run has ended: a stop or a crash while the reply
            # is generating (this task is cancelled, or never returns) leaves `last` as it was,
            # and the next start runs it as missed.
            try:
                turn = await ctx.bridge.sessions.prompt(entry.key, entry.prompt)
            except BridgeError as e:
                # Recorded as run: a target that stays down must not have it retried at every
                # start.
                ctx.log.warning("schedule.run_refused", schedule=entry.id, reason=e.reason)
                await self.ran(entry, f"refused: {e.reason}")
                return
            ctx.log.info("schedule.run", schedule=entry.id, user=entry.user)
            try:
                await turn.wait(REPLY_WAIT)
            except TimeoutError:
                # The reply goes on and the next run no longer waits for it. Recorded as run
                # (see the module's docstring): after this long, running it again is a repeat.
                ctx.log.warning("schedule.reply_slow", schedule=entry.id, waited=REPLY_WAIT)
                await self.ran(entry, "still replying")
                return
            if _cut_short(turn):
                ctx.log.info("schedule.run_cut_short", schedule=entry.id)
                return
            failed = turn.stop_reason or (turn.error is not None and type(turn.error).__name__)
            await self.ran(entry, f"stopped: {failed}" if failed else "replied")

        return run

    async def ran(self, entry: Entry, result: str) -> None:
        """Record that a run of ``entry`` has ended: whatever it owed until now is settled."""
        async with self.changing:
            if self.entries.get(entry.id) is not entry:
                return  # deleted while it ran: storing it would bring it back
            if self.cluster is not None:
                # Another node may have changed or deleted it meanwhile (its news not here yet):
                # only this run's record is ours to write.
                stored = await self.ctx.store.get(_store_key(entry.id))
                if stored is None:
                    return
                entry.paused, entry.prompt = bool(stored.get("paused")), str(stored["prompt"])
            entry.last = self.scheduler.clock()
            entry.result = result
            await self._save(entry)

    def arm(self, entry: Entry) -> Any:
        """Arm ``entry`` where this node runs the schedules; returns its trigger (None when
        not)."""
        if not self.leading:
            return None
        trigger = entry.trigger(self.zone)
        self.scheduler.add(
            job_id(entry.id),
            self.runner(entry.id),
            trigger,
            misfire_grace=self.settings.misfire_grace,
        )
        return trigger

    async def _save(self, entry: Entry) -> None:
        await self.ctx.store.set(_store_key(entry.id), asdict(entry))

    async def _read(self) -> dict[int, Entry]:
        ctx = self.ctx
        found: dict[int, Entry] = {}
        for name in await ctx.store.keys("s:", limit=LOAD_LIMIT):
            raw = await ctx.store.get(name)
            if raw is None:
                continue  # deleted meanwhile (by another node)
            try:
                entry = Entry(**raw)
                held = self.entries.get(entry.id)
                if held is None or (held.kind, held.spec) != (entry.kind, entry.spec):
                    entry.trigger(self.zone)  # readable? (one held already was checked)
            except (TypeError, UsageError) as e:
                ctx.log.error("schedule.unreadable", key=name, error=str(e))
                continue
            found[entry.id] = entry
        return found

    async def load(self) -> None:
        ctx = self.ctx
        node = getattr(ctx.bridge, "cluster", None)
        if node is not None:
            from plugins._schedule_cluster import ScheduleCluster

            # In a cluster another node may be running them: this one arms nothing until it
            # holds the lease.
            self.leading = False
            self.cluster = ScheduleCluster(self, node)
        self.entries = await self._read()
        if self.leading:
            self._arm_all()
        if self.entries:
            ctx.log.info("schedule.loaded", count=len(self.entries))
        if len(self.entries) > self.settings.max_total + ADMIN_RESERVE:
            # Stored under a larger max_total: all kept and run; adds wait until below it.
            ctx.log.warning(
                "schedule.over_limit", count=len(self.entries), max_total=self.settings.max_total
            )
        if self.cluster is not None:
            await self.cluster.start()

    def _arm_all(self) -> None:
        """Arm every schedule that is not paused; run now what a stop (or a dead node) left
        owed."""
        now = self.scheduler.clock()
        for entry in self.entries.values():
            if entry.paused:
                continue
            trigger = self.arm(entry)
            if trigger is None:
                continue
            if missed_run(trigger, entry.last, now, self.settings.misfire_grace) is not None:
                self.ctx.log.info("schedule.missed_run", schedule=entry.id)
                self.scheduler.run_now(job_id(entry.id))

    # ----- in a cluster ---------------------------------------------------------------------------

    async def lead(self) -> None:
        """This node now runs the schedules: read them afresh, arm them."""
        async with self.changing:
            self.leading = True
            await self._merge(await self._read(), arm=False)
            self._arm_all()  # every one, those kept as well

    def stand_down(self) -> None:
        """Another node runs them now (or may: the lease was lost): disarm every one."""
        if not self.leading or self.cluster is None:
            return
        self.leading = False
        for entry_id in self.entries:
            self.scheduler.remove(job_id(entry_id))

    async def reload(self) -> None:
        """Another node changed the stored schedules."""
        async with self.changing:
            await self._merge(await self._read())

    async def _merge(self, stored: dict[int, Entry], *, arm: bool = True) -> None:
        """Take ``stored`` as the schedules, keeping the objects of those that stay (a run in
        progress records its end on its own object) and arming (unless ``arm`` is False: the
        caller arms them all) or disarming what changed."""
        for entry_id in [i for i in self.entries if i not in stored]:
            del self.entries[entry_id]
            self.scheduler.remove(job_id(entry_id))
        for entry_id, new in stored.items():
            old = self.entries.get(entry_id)
            if old is None:
                self.entries[entry_id] = new
                if arm and not new.paused:
                    self.arm(new)
                continue
            was_paused = old.paused
            old.paused, old.prompt = new.paused, new.prompt
            if new.last > old.last:
                old.last, old.result = new.last, new.result
            if old.paused and not was_paused:
                self.scheduler.remove(job_id(entry_id))
            elif arm and was_paused and not old.paused:
                self.arm(old)

    async def _changed(self) -> None:
        if self.cluster is not None:
            await self.cluster.changed()

    # ----- changes (the commands' and the console's) ------------------------------------------

    async def add(self, entry: Entry) -> None:
        """Store and arm ``entry`` (its id taken from `next_id`); the caller holds `changing`
        across its limit checks and this."""
        stored_next = int(await self.ctx.store.get("next_id", 1))
        # In a cluster one counter hands out ids: two nodes adding at once take different ones.
        entry.id = await self.cluster.next_id(stored_next) if self.cluster else stored_next
        await self.ctx.store.set("next_id", max(stored_next, entry.id + 1))
        await self._save(entry)
        self.entries[entry.id] = entry
        self.arm(entry)
        await self._changed()

    async def delete(self, entry_id: int) -> Entry | None:
        async with self.changing:
            entry = self.entries.pop(entry_id, None)
            if entry is None:
                return None
            self.scheduler.remove(job_id(entry_id))
            await self.ctx.store.delete(_store_key(entry_id))
            await self._changed()
        self.ctx.log.info("schedule.deleted", schedule=entry_id, user=entry.user)
        return entry

    async def set_paused(self, entry_id: int, paused: bool) -> Entry | None:
        """Pause (the job leaves the scheduler) or resume (armed again; what it would have run
        while paused is not owed, so `last` starts over)."""
        async with self.changing:
            entry = self.entries.get(entry_id)
            if entry is None:
                return None
            if entry.paused == paused:
                return entry
            # Stored first: a save that fails changes nothing (memory and the store agree).
            last = self.scheduler.clock() if not paused else entry.last
            await self._save(replace(entry, paused=paused, last=last))
            entry.paused, entry.last = paused, last
            if paused:
                self.scheduler.remove(job_id(entry_id))
            else:
                self.arm(entry)
            await self._changed()
        self.ctx.log.info("schedule.paused" if paused else "schedule.resumed", schedule=entry_id)
        return entry

    # ----- reading ----------------------------------------------------------------------------

    def next_run(self, entry: Entry) -> float | None:
        armed = self.scheduler.next_run(job_id(entry.id))
        if armed is not None or self.leading or entry.paused:
            return armed
        # Another node runs it: when its trigger comes next.
        return next_after(entry.trigger(self.zone), self.scheduler.clock())

    def next_text(self, entry: Entry) -> str:
        if entry.paused:
            return "paused"
        when = self.next_run(entry)
        if when is None:
            return "never"
        return datetime.fromtimestamp(when, tz=self.zone).strftime("%Y-%m-%d %H:%M:%S")

    def describe(self, entry: Entry) -> dict[str, Any]:
        """One schedule as the console lists it."""
        return {
            "id": entry.id,
            "user": entry.user,
            "contact": entry.contact,
            "thread": entry.thread,
            "kind": entry.kind,
            "spec": entry.spec,
            "when": entry.when(),
            "prompt": entry.prompt,
            "created": entry.created,
            "paused": entry.paused,
            "next_run": self.next_run(entry),
            "last_run": entry.last if entry.result else None,
            "last_result": entry.result or None,
        }

    def all(self) -> list[dict[str, Any]]:
        return [self.describe(e) for e in sorted(self.entries.values(), key=lambda e: e.id)]


def setup(ctx: PluginContext) -> None:
    settings = ctx.settings(ScheduleSettings)
    book = Book(ctx, settings)
    ctx.on_start(book.load)
    # The console's way in (`app.plugins.api("schedule")`).
    ctx.provide(book)

    group = ctx.group("schedule", help="the character messages you on a schedule")

    @group.sub(
        "add",
        help='cron "<min hour day month weekday>" <prompt>, or every <N>s|m|h <prompt>',
        args=(
            Arg("kind", choices=("cron", "every")),
            Arg("when"),
            Arg("prompt", rest=True),
        ),
    )
    async def add(inv: Invocation) -> None:
        prompt: str = inv.args["prompt"]
        if inv.caller.id != inv.key.user_id and not inv.caller.is_admin:
            await inv.reply("Only an admin may schedule in a conversation that is not theirs.")
            return
        if len(prompt) > MAX_PROMPT:
            raise UsageError(f"a prompt may have at most {MAX_PROMPT} characters")
        now = book.scheduler.clock()
        if inv.args["kind"] == "cron":
            spec = " ".join(inv.args["when"].split())
            trigger: BaseTrigger = parse_cron(spec, book.zone)
        else:
            seconds = parse_every(inv.args["when"], settings.min_interval)
            spec = f"{seconds:g}"
            trigger = IntervalTrigger(seconds=seconds, start_date=as_datetime(now))
        # An impossible date (Feb 31) makes apscheduler search years ahead: off the loop.
        first = await asyncio.to_thread(trigger.get_next_fire_time, None, as_datetime(now))
        if first is None:
            raise UsageError("that cron line never fires")
        entries = book.entries
        # Commands of different conversations run at once: the limits, the next id and the
        # entry are read and written as one step, or two adds would take the same id.
        async with book.changing:
            mine = sum(1 for e in entries.values() if e.user == inv.key.user_id)
            if not inv.caller.is_admin and mine >= settings.max_per_user:
                await inv.reply(
                    f"You have {mine} schedules, the most allowed; "
                    f"{inv.prefix}schedule del <id> one first."
                )
                return
            if not inv.caller.is_admin and len(entries) >= settings.max_total:
                await inv.reply("The bridge holds as many schedules as it may; none can be added.")
                return
            if len(entries) >= settings.max_total + ADMIN_RESERVE:
                await inv.reply(
                    f"The bridge holds {len(entries)} schedules, the most even an admin may add "
                    f"(max_total + {ADMIN_RESERVE}); delete some first."
                )
                return
            key = inv.key
            entry = Entry(
                0, key.user_id, key.contact, key.thread, inv.args["kind"], spec, prompt, now, now
            )
            await book.add(entry)
        await inv.reply(
            f"Schedule #{entry.id} added: {entry.when()}, next {book.next_text(entry)}."
        )

    @group.sub(
        "list",
        help="your schedules (admins: list all)",
        args=(Arg("scope", optional=True, choices=("all",)),),
    )
    async def list_(inv: Invocation) -> None:
        every_user = inv.args["scope"] == "all"
        if every_user and not inv.caller.is_admin:
            await inv.reply(f"Only an admin may use {inv.prefix}schedule list all.")
            return
        shown = [e for e in book.entries.values() if every_user or e.user == inv.key.user_id]
        if not shown:
            await inv.reply(f"No schedules. {inv.prefix}help schedule tells how to add one.")
            return
        lines = []
        for e in sorted(shown, key=lambda e: e.id)[:50]:
            who = f" [{e.user} → {e.contact}]" if every_user else ""
            text = e.prompt if len(e.prompt) <= 60 else e.prompt[:59] + "…"
            lines.append(f"#{e.id} {e.when()}{who}: {text} (next {book.next_text(e)})")
        if len(shown) > 50:
            lines.append(f"... and {len(shown) - 50} more")
        await inv.reply("\n".join(lines))

    @group.sub(
        "del", help="delete one of your schedules", aliases=("delete", "rm"), args=(Arg("id"),)
    )
    async def delete(inv: Invocation) -> None:
        raw: str = inv.args["id"].removeprefix("#")
        if not raw.isdigit():
            raise UsageError(f"{raw[:20]!r} is not a schedule id (see {inv.prefix}schedule list)")
        entry = book.entries.get(int(raw))
        # Checked before the delete, and the delete takes the lock itself: an entry replaced
        # in between is impossible (ids are never reused).
        # The same rule as `add`: in a conversation that is not the caller's own (a QQ group),
        # only an admin may change its schedules.
        own = entry is not None and entry.user == inv.key.user_id == inv.caller.id
        if entry is None or not (own or inv.caller.is_admin):
            await inv.reply(f"No schedule #{raw[:20]}.")
            return
        if await book.delete(entry.id) is None:
            await inv.reply(f"No schedule #{raw[:20]}.")
            return
        await inv.reply(f"Schedule #{entry.id} deleted.")
