"""The schedule plugin's parsing, the missed-run rule, the app scheduler and the plugins' start
hooks, without a bridge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.interval import IntervalTrigger

from bridge.commands import UsageError
from bridge.config import PluginsConfig
from bridge.plugins import PluginHost
from bridge.scheduler import Scheduler, as_datetime, missed_run, next_after
from plugins.schedule import ScheduleSettings, parse_cron, parse_every


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
