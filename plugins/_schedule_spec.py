"""What a schedule is: the plugin's settings, a stored schedule (`Entry`), and the time specs
`/schedule` takes: `every <N>s|m|h` intervals and standard 5-field crontab lines (read into
apscheduler triggers, whose weekday numbering differs from crontab's)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.commands import UsageError
from bridge.models import ConversationKey
from bridge.scheduler import as_datetime

# max_total's own upper bound.
MAX_TOTAL = 100_000

# The longest `every` (a year): longer ones are better said with cron.
MAX_EVERY = 366 * 86400.0
_EVERY = re.compile(r"(\d+(?:\.\d+)?)([smh])", re.IGNORECASE)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# Standard cron numbers the week from Sunday = 0 (7 too); apscheduler 3 from Monday = 0.
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


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
    # When its last run ended (or it was created, or resumed): what a run missed during a
    # restart is counted from. Written only once a run has ended, so one cut short stays owed.
    last: float
    # Paused from the console: stored, not armed (and not run as missed at a start).
    paused: bool = False
    # How its last run ended ("" before the first): shown in the console.
    result: str = ""

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
