"""The app's one scheduler: apscheduler's AsyncIOScheduler (3.x), started once the hub listens
and shut down with the app.

A job is a coroutine function. apscheduler's asyncio executor would run it as a task nobody
awaits on shutdown, so each run is handed to a task set of ours instead (cancelled and waited on
in `shutdown`), and a job whose previous run is still going skips its turn rather than piling
up runs. Housekeeping (expired shares) runs here; plugins add their own jobs (``schedule``).

``clock`` is what the scheduler's users read "now" from when they reason about runs missed
while the bridge was down (see `missed_run`): tests replace it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bridge.tasks import TaskSet
from storage.client_replies import REPLY_TTL

if TYPE_CHECKING:
    from storage import Storage

log = structlog.get_logger(__name__)

Job = Callable[[], Awaitable[None]]

# The housekeeping job's id and cadence.
PURGE_SHARES = "housekeeping-shares"
PURGE_CLIENT_REPLIES = "housekeeping-client-replies"
HOUSEKEEPING_EVERY = 3600.0
# A run still going when the scheduler shuts down gets this long to unwind.
SHUTDOWN_TIMEOUT = 5.0


def as_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def next_after(trigger: BaseTrigger, t: float) -> float | None:
    """The trigger's first fire time strictly after ``t`` (epoch seconds), None if none."""
    # apscheduler's "now" is inclusive; a millisecond past t makes it strict (cron times are
    # whole seconds, intervals are at least half a second).
    when = trigger.get_next_fire_time(None, as_datetime(t + 1e-3))
    return None if when is None else when.timestamp()


def missed_run(trigger: BaseTrigger, last: float, now: float, grace: float) -> float | None:
    """The latest run the trigger owed between ``last`` and ``now`` that is at most ``grace``
    seconds old (the one to run once at start), or None."""
    due = next_after(trigger, max(last, now - grace))
    if due is None or due > now:
        return None
    # More than one may be owed: the newest is the one that counts (they coalesce into one).
    while True:
        later = next_after(trigger, due)
        if later is None or later > now:
            return due
        due = later


class Scheduler:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._tasks = TaskSet("scheduler")
        # Runs in progress, by job id: bounded by the jobs there are.
        self._running: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, Job] = {}
        # How many runs each job has started (status and tests); bounded by the jobs there are.
        self.runs: dict[str, int] = {}

    @property
    def running(self) -> bool:
        return bool(self._aps.running)

    def start(self) -> None:
        if not self._aps.running:
            self._aps.start()

    async def shutdown(self) -> None:
        """Stop firing and cancel the runs in progress (waits for them to unwind)."""
        if self._aps.running:
            self._aps.shutdown(wait=False)
            # apscheduler defers its shutdown to the loop: let it happen before we return.
            await asyncio.sleep(0)
        await self._tasks.cancel_all(SHUTDOWN_TIMEOUT)
        self._running.clear()

    # ----- jobs ---------------------------------------------------------------------------------

    def add(
        self, job_id: str, fn: Job, trigger: BaseTrigger, *, misfire_grace: float | None = 60.0
    ) -> None:
        """Add or replace ``job_id``. A run the loop wakes up late for still runs if it is at
        most ``misfire_grace`` seconds late (None: however late); late runs coalesce into one."""
        self._jobs[job_id] = fn
        self.runs.setdefault(job_id, 0)
        self._aps.add_job(
            self._fire,
            trigger,
            args=(job_id,),
            id=job_id,
            replace_existing=True,
            misfire_grace_time=None if misfire_grace is None else max(1, int(misfire_grace)),
            coalesce=True,
            # Each run hands off to a task at once, so apscheduler never sees two at a time.
            max_instances=1,
        )

    def every(self, job_id: str, fn: Job, seconds: float) -> None:
        start = as_datetime(self.clock() + seconds)
        self.add(job_id, fn, IntervalTrigger(seconds=seconds, start_date=start, timezone=UTC))

    def remove(self, job_id: str) -> bool:
        self._jobs.pop(job_id, None)
        self.runs.pop(job_id, None)
        if self._aps.get_job(job_id) is None:
            return False
        self._aps.remove_job(job_id)
        return True

    def has(self, job_id: str) -> bool:
        return self._aps.get_job(job_id) is not None

    def job_ids(self) -> list[str]:
        return [j.id for j in self._aps.get_jobs()]

    def next_run(self, job_id: str) -> float | None:
        job = self._aps.get_job(job_id)
        when = getattr(job, "next_run_time", None) if job is not None else None
        return None if when is None else when.timestamp()

    def run_now(self, job_id: str) -> asyncio.Task[None] | None:
        """Start a run of ``job_id`` now, outside its trigger (a run owed from before a restart,
        or a test); None if the job is unknown or its previous run is still going."""
        return self._start_run(job_id)

    # ----- runs ---------------------------------------------------------------------------------

    async def _fire(self, job_id: str) -> None:
        # Called by apscheduler's executor: hand off to a task we own, and return at once.
        self._start_run(job_id)

    def _start_run(self, job_id: str) -> asyncio.Task[None] | None:
        fn = self._jobs.get(job_id)
        if fn is None:
            return None
        if job_id in self._running:
            log.info("scheduler.run_skipped", job=job_id, why="the previous run is still going")
            return None
        self.runs[job_id] = self.runs.get(job_id, 0) + 1
        task = self._tasks.spawn(self._run(job_id, fn), name=f"job-{job_id}")
        self._running[job_id] = task
        task.add_done_callback(lambda t: self._ended(job_id, t))
        return task

    def _ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._running.get(job_id) is task:
            del self._running[job_id]

    @staticmethod
    async def _run(job_id: str, fn: Job) -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            # One failed run must not end the job: the next one runs as planned.
            log.exception("scheduler.job_failed", job=job_id)


def housekeeping(
    scheduler: Scheduler, storage: Callable[[], Storage | None], share_ttl: float
) -> None:
    """The bridge's own periodic jobs. (Confirmed outbox rows are deleted by the confirmation
    itself, and an idle conversation owner leaves the engine as its last turn ends: neither
    needs a sweep.)"""

    async def purge_shares() -> None:
        # Expired shares are never served and a new share deletes them too; this keeps a
        # bridge nobody shares on from holding them forever.
        db = storage()
        if db is not None:
            gone = await db.shares.purge_expired(share_ttl, now=scheduler.clock())
            if gone:
                log.info("housekeeping.shares_purged", count=gone)

    scheduler.every(PURGE_SHARES, purge_shares, HOUSEKEEPING_EVERY)

    async def purge_client_replies() -> None:
        # Web-client replies wait for their client's confirmation; one that never comes back
        # (a browser's data cleared, a guest gone) would wait forever.
        db = storage()
        if db is not None:
            gone = await db.client_replies.expire(scheduler.clock() - REPLY_TTL)
            if gone:
                log.info("housekeeping.client_replies_purged", count=gone)

    scheduler.every(PURGE_CLIENT_REPLIES, purge_client_replies, HOUSEKEEPING_EVERY)
