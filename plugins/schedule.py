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
import re
from dataclasses import asdict, dataclass
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.commands import Arg, Invocation, UsageError
from bridge.engine import Turn
from bridge.errors import BridgeError
from bridge.models import ConversationKey
from bridge.plugins import PluginContext
from bridge.scheduler import as_datetime, missed_run

# The longest `every` (a year): longer ones are better said with cron.
MAX_EVERY = 366 * 86400.0
MAX_PROMPT = 2000
# How long a run waits for its reply before letting the next run of the schedule go ahead.
REPLY_WAIT = 300.0
# Schedules only admins may add past max_total: on an open bridge anyone can add up to it, and
# an admin must still be able to. max_total + ADMIN_RESERVE is the hard bound on adds.
ADMIN_RESERVE = 100
# max_total's own upper bound.
MAX_TOTAL = 100_000
# What the start reads: every schedule any configuration could have stored, so lowering
# max_total never leaves stored schedules unloaded (and silently never run).
LOAD_LIMIT = MAX_TOTAL + ADMIN_RESERVE
_EVERY = re.compile(r"(\d+(?:\.\d+)?)([smh])", re.IGNORECASE)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# Standard cron numbers the week from Sunday = 0 (7 too); apscheduler 3 from Monday = 0.
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A day number not after a "/" (which is a step, not a day).


class ScheduleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_per_user: int = Field(5, ge=0, le=1000)
    max_total: int = Field(1000, ge=1, le=MAX_TOTAL)
    misfire_grace: float = Field(300.0, ge=0)
    timezone: str = ""
    # A testing knob: users get at least 5 s between runs.
    min_interval: float = Field(5.0, ge=0.5)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if v:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}") from None
        return v

    def zone(self) -> tzinfo:
        if self.timezone:
            return ZoneInfo(self.timezone)
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local


def parse_every(text: str, minimum: float = 5.0) -> float:
    """``30s``, ``15m``, ``2h`` -> seconds. UsageError when malformed or out of range."""
    m = _EVERY.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"{text[:20]!r} is not an interval such as 30s, 15m or 2h")
    seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if seconds < minimum:
        raise UsageError(f"the shortest interval is {minimum:g}s")
    if seconds > MAX_EVERY:
        raise UsageError("the longest interval is 366 days (use cron for rarer ones)")
    return seconds


_NAMES = {name: i for i, name in enumerate(_DAYS[:7])}


def _weekdays(field: str) -> str:
    """A crontab weekday field (Sunday = 0 or 7; `*`, `*/n`, `a-b`, `a-b/n`, lists, names) as
    the explicit day names apscheduler takes: its own numbers start the week on Monday, so a
    range or a step written in crontab numbers cannot be passed on as it is."""
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        body, _, step_text = part.partition("/")
        if step_text and not step_text.isdigit():
            raise UsageError(f"bad weekday step {step_text[:10]!r}")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise UsageError("a weekday step must be at least 1")
        if body == "*":
            lo, hi = 0, 6
        else:
            a, dash, b = body.partition("-")
            lo = _day_number(a)
            hi = _day_number(b) if dash else (6 if step_text else lo)
            if lo > hi:
                raise UsageError(f"weekday range {body[:10]!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DAYS[d] for d in sorted(days))


def _day_number(text: str) -> int:
    if text in _NAMES:
        return _NAMES[text]
    if not text.isdigit() or int(text) > 7:
        raise UsageError(f"weekday {text[:10]!r} is not 0-7 or a day name")
    return int(text)


def parse_cron(text: str, zone: tzinfo) -> CronTrigger:
    """A standard 5-field crontab line (minute hour day month weekday, Sunday = 0 or 7).

    A line restricting both the day of the month and the weekday is refused: crontab fires
    when either matches, apscheduler only when both do, and guessing would fire on wrong days."""
    fields = text.split()
    if len(fields) != 5:
        raise UsageError(f'cron takes 5 fields, such as "0 9 * * 1-5"; got {len(fields)}')
    if fields[2] != "*" and fields[4] != "*":
        raise UsageError("give a day of the month or a weekday, not both")
    fields[4] = _weekdays(fields[4])
    try:
        return CronTrigger.from_crontab(" ".join(fields), timezone=zone)
    except ValueError as e:
        raise UsageError(f"bad cron line: {e}") from None


@dataclass(slots=True)
class Entry:
    id: int
    user: str
    contact: str
    thread: str
    kind: str  # "cron" or "every"
    spec: str  # the cron line, or the interval in seconds
    prompt: str
    created: float
    # When its last run ended (or it was created): what a run missed during a restart is
    # counted from. Written only once a run has ended, so one cut short stays owed.
    last: float

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(self.user, self.contact, self.thread)

    def trigger(self, zone: tzinfo) -> BaseTrigger:
        if self.kind == "cron":
            return parse_cron(self.spec, zone)
        # Anchored at creation: the cadence stays the same across restarts.
        return IntervalTrigger(seconds=float(self.spec), start_date=as_datetime(self.created))

    def when(self) -> str:
        if self.kind == "cron":
            return f'cron "{self.spec}"'
        return f"every {_short(float(self.spec))}"


def _short(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _store_key(entry_id: int) -> str:
    return f"s:{entry_id}"


def _cut_short(turn: Turn) -> bool:
    """Whether the turn ended because the bridge stopped (dropped from its queue or cancelled
    with no reason given) rather than by running: a recall or a failure gives one."""
    stopped = turn.state == "dropped" or (turn.task is not None and turn.task.cancelled())
    return stopped and not turn.stop_reason


def setup(ctx: PluginContext) -> None:
    settings = ctx.settings(ScheduleSettings)
    zone = settings.zone()
    # Every schedule, by id, loaded at start: bounded by max_total + ADMIN_RESERVE (or what a
    # larger max_total stored before).
    entries: dict[int, Entry] = {}
    # Adds, deletes and a run's record are each a read of `entries` and a write of the store
    # that must not interleave (see add; a run ending must not store a deleted schedule again).
    changing = asyncio.Lock()

    def job_id(entry: Entry) -> str:
        return f"schedule-{entry.id}"

    def runner(entry_id: int) -> Any:
        async def run() -> None:
            entry = entries.get(entry_id)
            if entry is None:
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
                await ran(entry)
                return
            ctx.log.info("schedule.run", schedule=entry.id, user=entry.user)
            try:
                await turn.wait(REPLY_WAIT)
            except TimeoutError:
                # The reply goes on and the next run no longer waits for it. Recorded as run
                # (see the module's docstring): after this long, running it again is a repeat.
                ctx.log.warning("schedule.reply_slow", schedule=entry.id, waited=REPLY_WAIT)
            else:
                if _cut_short(turn):
                    ctx.log.info("schedule.run_cut_short", schedule=entry.id)
                    return
            await ran(entry)

        return run

    async def ran(entry: Entry) -> None:
        """Record that a run of ``entry`` has ended: whatever it owed until now is settled."""
        async with changing:
            if entries.get(entry.id) is not entry:
                return  # deleted while it ran: storing it would bring it back
            now = ctx.bridge.scheduler.clock()
            await ctx.store.set(_store_key(entry.id), asdict(entry) | {"last": now})
            entry.last = now

    def arm(entry: Entry) -> None:
        scheduler = ctx.bridge.scheduler
        scheduler.add(
            job_id(entry),
            runner(entry.id),
            entry.trigger(zone),
            misfire_grace=settings.misfire_grace,
        )

    @ctx.on_start
    async def load() -> None:
        scheduler = ctx.bridge.scheduler
        now = scheduler.clock()
        for name in await ctx.store.keys("s:", limit=LOAD_LIMIT):
            raw = await ctx.store.get(name)
            try:
                entry = Entry(**raw)
                trigger = entry.trigger(zone)
            except (TypeError, UsageError) as e:
                ctx.log.error("schedule.unreadable", key=name, error=str(e))
                continue
            entries[entry.id] = entry
            arm(entry)
            if missed_run(trigger, entry.last, now, settings.misfire_grace) is not None:
                ctx.log.info("schedule.missed_run", schedule=entry.id)
                scheduler.run_now(job_id(entry))
        if entries:
            ctx.log.info("schedule.loaded", count=len(entries))
        if len(entries) > settings.max_total + ADMIN_RESERVE:
            # Stored under a larger max_total: all kept and run; adds wait until below it.
            ctx.log.warning("schedule.over_limit", count=len(entries), max_total=settings.max_total)

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
        now = ctx.bridge.scheduler.clock()
        if inv.args["kind"] == "cron":
            spec = " ".join(inv.args["when"].split())
            trigger: BaseTrigger = parse_cron(spec, zone)
        else:
            seconds = parse_every(inv.args["when"], settings.min_interval)
            spec = f"{seconds:g}"
            trigger = IntervalTrigger(seconds=seconds, start_date=as_datetime(now))
        # An impossible date (Feb 31) makes apscheduler search years ahead: off the loop.
        first = await asyncio.to_thread(trigger.get_next_fire_time, None, as_datetime(now))
        if first is None:
            raise UsageError("that cron line never fires")
        # Commands of different conversations run at once: the limits, the next id and the
        # entry are read and written as one step, or two adds would take the same id.
        async with changing:
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
            entry_id = int(await ctx.store.get("next_id", 1))
            await ctx.store.set("next_id", entry_id + 1)
            key = inv.key
            entry = Entry(
                entry_id,
                key.user_id,
                key.contact,
                key.thread,
                inv.args["kind"],
                spec,
                prompt,
                now,
                now,
            )
            await ctx.store.set(_store_key(entry_id), asdict(entry))
            entries[entry_id] = entry
            arm(entry)
        await inv.reply(f"Schedule #{entry_id} added: {entry.when()}, next {_next(entry)}.")

    def _next(entry: Entry) -> str:
        when = ctx.bridge.scheduler.next_run(job_id(entry))
        if when is None:
            return "never"
        return datetime.fromtimestamp(when, tz=zone).strftime("%Y-%m-%d %H:%M:%S")

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
        shown = [e for e in entries.values() if every_user or e.user == inv.key.user_id]
        if not shown:
            await inv.reply(f"No schedules. {inv.prefix}help schedule tells how to add one.")
            return
        lines = []
        for e in sorted(shown, key=lambda e: e.id)[:50]:
            who = f" [{e.user} → {e.contact}]" if every_user else ""
            text = e.prompt if len(e.prompt) <= 60 else e.prompt[:59] + "…"
            lines.append(f"#{e.id} {e.when()}{who}: {text} (next {_next(e)})")
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
        async with changing:
            entry = entries.get(int(raw))
            if entry is None or (entry.user != inv.key.user_id and not inv.caller.is_admin):
                await inv.reply(f"No schedule #{raw[:20]}.")
                return
            del entries[entry.id]
            ctx.bridge.scheduler.remove(job_id(entry))
            await ctx.store.delete(_store_key(entry.id))
        await inv.reply(f"Schedule #{entry.id} deleted.")
