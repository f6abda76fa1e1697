"""The schedule plugin's parsing, the missed-run rule, the app scheduler and the plugins' start
hooks, without a bridge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.interval import IntervalTrigger

import plugins.schedule as schedule_plugin
from bridge.commands import UsageError
from bridge.config import PluginsConfig
from bridge.engine import Engine, Turn
from bridge.errors import BridgeError, ErrorCode
from bridge.models import ConversationKey, UserRef
from bridge.plugins import PluginContext, PluginHost
from bridge.scheduler import Scheduler, as_datetime, missed_run, next_after
from plugins.schedule import ScheduleSettings, parse_cron, parse_every
from storage import Storage


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5), ("30s", 30), ("15m", 900), ("2h", 7200), ("1.5m", 90), ("10S", 10)],
)
def test_every_accepts_seconds_minutes_hours(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("4s", "the shortest interval is 5s"),
        ("0m", "the shortest interval is 5s"),
        ("10", "not an interval"),
        ("10d", "not an interval"),
        ("-5s", "not an interval"),
        ("9000h", "the longest interval"),
        ("", "not an interval"),
    ],
)
def test_every_refuses_malformed_and_out_of_range(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_every(text)


def test_every_minimum_is_a_setting() -> None:
    assert parse_every("1s", minimum=0.5) == 1
    with pytest.raises(UsageError, match=r"0\.5s"):
        parse_every("0.2s", minimum=0.5)


def test_cron_five_fields_with_sunday_as_zero() -> None:
    # 2024-06-02 is a Sunday.
    sunday = parse_cron("30 9 * * 0", UTC)
    assert next_after(sunday, ts(2024, 6, 1)) == ts(2024, 6, 2, 9, 30)
    seven = parse_cron("30 9 * * 7", UTC)
    assert next_after(seven, ts(2024, 6, 1)) == ts(2024, 6, 2, 9, 30)
    weekdays = parse_cron("0 8 * * 1-5", UTC)
    assert next_after(weekdays, ts(2024, 6, 1)) == ts(2024, 6, 3, 8)  # Monday
    # A weekday step counts from Sunday as crontab does: Sun, Tue, Thu, Sat (not Monday).
    steps = parse_cron("*/15 * * * */2", UTC)
    assert next_after(steps, ts(2024, 6, 3, 10, 1)) == ts(2024, 6, 4)
    assert next_after(steps, ts(2024, 6, 4, 10, 1)) == ts(2024, 6, 4, 10, 15)


WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("0-6", "sun mon tue wed thu fri sat"),
        ("1-5", "mon tue wed thu fri"),
        ("mon-fri", "mon tue wed thu fri"),
        ("0,6", "sun sat"),
        ("5-7", "sun fri sat"),
        ("*/2", "sun tue thu sat"),
        ("1-5/2", "mon wed fri"),
        ("3/2", "wed fri"),
    ],
)
def test_cron_weekday_fields_fire_on_crontabs_days(field: str, days: str) -> None:
    trigger = parse_cron(f"0 12 * * {field}", UTC)
    fired = set()
    at = ts(2024, 6, 1)  # a Saturday; one week of noons follows
    for _ in range(7):
        at = next_after(trigger, at)
        fired.add(WEEK[datetime.fromtimestamp(at, UTC).weekday()])
    assert fired == set(days.split())


def test_cron_reads_times_in_its_zone() -> None:
    tokyo = parse_cron("0 9 * * *", ZoneInfo("Asia/Tokyo"))
    assert next_after(tokyo, ts(2024, 5, 31, 12)) == ts(2024, 6, 1, 0)  # 09:00 JST


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("* * * *", "5 fields"),
        ("* * * * * *", "5 fields"),
        ("61 * * * *", "bad cron line"),
        ("* * * * 9", "weekday '9'"),
        ("* * * * 5-1", "runs backwards"),
        ("0 9 1 * 1", "not both"),
        ("x * * * *", "bad cron line"),
    ],
)
def test_cron_refuses_bad_lines(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_cron(text, UTC)


def test_settings_defaults_and_zone() -> None:
    s = ScheduleSettings()
    assert (s.max_per_user, s.misfire_grace, s.min_interval) == (5, 300.0, 5.0)
    assert ScheduleSettings(timezone="Europe/Paris").zone() == ZoneInfo("Europe/Paris")
    with pytest.raises(ValueError, match="unknown time zone"):
        ScheduleSettings(timezone="Mars/Olympus")


def test_missed_run_only_within_grace_and_only_the_newest() -> None:
    start = ts(2024, 1, 1)
    hourly = IntervalTrigger(seconds=3600, start_date=as_datetime(start))
    # Down from 00:30 to 02:01: runs at 01:00 and 02:00 were owed; 02:00 is 60 s old.
    assert missed_run(hourly, start + 1800, start + 7260, 300) == start + 7200
    # Down until 02:10: the 02:00 run is 600 s old, past the grace.
    assert missed_run(hourly, start + 1800, start + 7800, 300) is None
    # It already ran at 02:00 (last is then): nothing owed.
    assert missed_run(hourly, start + 7200.5, start + 7260, 300) is None
    # Nothing was due.
    assert missed_run(hourly, start + 3700, start + 3800, 300) is None
    cron = parse_cron("0 * * * *", UTC)
    assert missed_run(cron, start, start + 3630, 300) == start + 3600


async def test_scheduler_runs_owned_jobs_once_at_a_time_and_cancels_on_shutdown() -> None:
    scheduler = Scheduler()
    started = asyncio.Event()
    release = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    scheduler.every("slow", slow, 3600)
    scheduler.start()
    assert scheduler.has("slow") and scheduler.next_run("slow") is not None
    first = scheduler.run_now("slow")
    assert first is not None
    async with asyncio.timeout(5):
        await started.wait()
    assert scheduler.run_now("slow") is None  # the first run is still going
    assert scheduler.runs["slow"] == 1
    await scheduler.shutdown()
    assert cancelled.is_set() and first.cancelled()
    assert not scheduler.running


async def test_scheduler_job_failure_is_logged_and_the_job_stays() -> None:
    scheduler = Scheduler()
    calls = 0

    async def boom() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    scheduler.every("boom", boom, 3600)
    scheduler.start()
    try:
        for _ in range(2):
            task = scheduler.run_now("boom")
            assert task is not None
            await asyncio.wait_for(task, 5)
        assert calls == 2 and scheduler.has("boom")
        assert scheduler.remove("boom") and not scheduler.has("boom")
        assert scheduler.run_now("boom") is None
    finally:
        await scheduler.shutdown()


async def test_scheduler_fires_on_its_trigger() -> None:
    scheduler = Scheduler()
    fired = asyncio.Event()

    async def job() -> None:
        fired.set()

    scheduler.every("fast", job, 0.05)
    scheduler.start()
    try:
        async with asyncio.timeout(5):
            await fired.wait()
    finally:
        await scheduler.shutdown()


async def test_start_hooks_run_in_order_and_a_failing_one_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    host = PluginHost(PluginsConfig())

    async def good() -> None:
        calls.append("good")

    async def bad() -> None:
        calls.append("bad")
        raise RuntimeError("nope")

    async def after() -> None:
        calls.append("after")

    from bridge.plugins import PluginContext

    for name, fn in (("a", good), ("b", bad), ("c", after)):
        ctx = PluginContext(host, name)
        assert ctx.on_start(fn) is fn
        host.start_hooks += [(name, f) for f in ctx._done.start_hooks]
    await host.start()
    assert calls == ["good", "bad", "after"]


def test_the_schedule_plugin_registers_a_start_hook() -> None:
    host = PluginHost(PluginsConfig.model_validate({"disabled": ["help"]}))
    host.load()
    assert "schedule" in [p.name for p in host.loaded]
    assert [name for name, _ in host.start_hooks] == ["schedule"]
    assert host.commands.find("schedule") is not None


# ----- a run is recorded once it has ended ------------------------------------------------------

KEY = ConversationKey("u1", "momo", "default")
USER = UserRef("u1")
WAIT = 5.0


class Prompts:
    """Stands in for `Sessions.prompt`: each prompt is a turn of a real engine whose reply
    goes on until the test releases it, or the prompt is refused when the test says so."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.refuse = False

    async def prompt(self, key: ConversationKey, text: str) -> Turn:
        if self.refuse:
            raise BridgeError(ErrorCode.UNAVAILABLE, "the character is unavailable")

        async def job(turn: Turn) -> None:
            self.started.set()
            async with asyncio.timeout(WAIT):
                await self.release.wait()

        return self.engine.submit(key, job)


class Plugin:
    """The schedule plugin on a real store and scheduler, with a clock the test sets."""

    def __init__(self, storage: Storage) -> None:
        self.now = time.time()
        self.storage = storage
        self.scheduler = Scheduler(clock=lambda: self.now)
        self.prompts = Prompts()
        config = PluginsConfig.model_validate({"schedule": {"min_interval": 0.5}})
        self.host = PluginHost(
            config, services=SimpleNamespace(scheduler=self.scheduler, sessions=self.prompts)
        )
        self.host.kv = storage.plugin_kv
        ctx = PluginContext(self.host, "schedule")
        schedule_plugin.setup(ctx)
        for cmd in ctx._done.commands:
            self.host.commands.add(cmd)
        self.said: list[str] = []

    async def say(self, key: ConversationKey, text: str) -> None:
        self.said.append(text)

    async def command(self, line: str) -> str:
        await self.host.run_command(KEY, USER, line, self.say)
        return self.said[-1]

    async def last(self, entry_id: int = 1) -> float | None:
        entry = await self.storage.plugin_kv.get("schedule", f"s:{entry_id}")
        return None if entry is None else float(entry["last"])

    def run(self, entry_id: int = 1) -> asyncio.Task[None]:
        task = self.scheduler.run_now(f"schedule-{entry_id}")
        assert task is not None
        return task


@pytest.fixture
async def plugin(tmp_path: Path) -> AsyncIterator[Plugin]:
    storage = await Storage.open(str(tmp_path / "bridge.db"))
    p = Plugin(storage)
    p.scheduler.start()
    try:
        yield p
    finally:
        p.prompts.release.set()
        await p.scheduler.shutdown()
        await p.prompts.engine.close()
        await storage.close()


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT):
        await event.wait()


async def finish(task: asyncio.Task[Any]) -> None:
    async with asyncio.timeout(WAIT):
        await task


async def test_a_run_is_recorded_when_its_reply_ends_not_when_it_starts(plugin: Plugin) -> None:
    assert (await plugin.command("/schedule add every 1h hi")).startswith("Schedule #1 added")
    created = plugin.now
    assert await plugin.last() == created
    plugin.now += 10
    run = plugin.run()
    await wait_for(plugin.prompts.started)
    assert await plugin.last() == created  # the reply is generating: nothing recorded yet
    plugin.now += 10
    plugin.prompts.release.set()
    await finish(run)
    assert await plugin.last() == plugin.now  # when it ended: what it owed is settled


async def test_a_run_the_stop_cut_short_is_not_recorded(plugin: Plugin) -> None:
    await plugin.command("/schedule add every 1h hi")
    created = plugin.now
    plugin.now += 10
    run = plugin.run()
    await wait_for(plugin.prompts.started)
    # The engine stops (shutdown) before the run notices: its turn ends, cancelled.
    await plugin.prompts.engine.close()
    await finish(run)
    assert await plugin.last() == created


async def test_a_refused_run_counts_as_run(plugin: Plugin) -> None:
    await plugin.command("/schedule add every 1h hi")
    plugin.prompts.refuse = True
    plugin.now += 10
    await finish(plugin.run())
    assert await plugin.last() == plugin.now  # not retried at every start while it is down


async def test_a_reply_still_going_after_the_wait_counts_as_run(
    plugin: Plugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule_plugin, "REPLY_WAIT", 0.05)
    await plugin.command("/schedule add every 1h hi")
    plugin.now += 10
    await finish(plugin.run())
    assert not plugin.prompts.release.is_set()  # the reply goes on
    assert await plugin.last() == plugin.now


async def test_a_schedule_deleted_while_it_runs_is_not_stored_again(plugin: Plugin) -> None:
    await plugin.command("/schedule add every 1h hi")
    run = plugin.run()
    await wait_for(plugin.prompts.started)
    assert await plugin.command("/schedule del 1") == "Schedule #1 deleted."
    plugin.prompts.release.set()
    await finish(run)
    assert await plugin.last() is None
    assert await plugin.command("/schedule list") == (
        "No schedules. /help schedule tells how to add one."
    )
