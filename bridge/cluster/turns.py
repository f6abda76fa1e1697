"""One owner per conversation across the cluster: a conversation's turns run one at a time, in
the order the cluster received them, whichever node received each.

Each turn takes a ticket from its conversation's counter in Redis the moment it is submitted (a
node takes its tickets for one conversation in submit order, which is also the order its engine
runs them), and runs once every earlier ticket is finished. The node running the current ticket
owns the conversation; the turn stays on the node that received it, so its reply is rendered
by the edge that asked and nothing but the ticket crosses the cluster.

The ticket is the fencing token and the node's registry heartbeat is the lease's renewal: a
ticket whose node run is gone from the registry (it died, lost Redis for longer than the node
ttl, or was restarted: a ticket names the run, `<node id>#<run>`) is given up by whoever waits
behind it, so a dead node hands its conversations over within the node ttl plus a recheck. A
node that cannot renew its heartbeat refuses new turns and stops its running ones before the
others can give them up (`_maintain`), so a turn never runs beside the next one.

Taking a ticket is idempotent (each take has an id the script remembers), so a take whose
answer was lost (a timeout, redis-py resending it) is asked again for the same ticket, and one
never answered is finished later by the upkeep: no ticket is left to block a conversation while
its node lives.

Keys under the prefix, per conversation (``h``: a digest of its key, so user input never makes
a key long): ``turns:{h}:next`` (tickets handed out), ``turns:{h}:done`` (every ticket up to it
ran, was dropped or was given up), ``turns:{h}:who`` (ticket → node run of each unfinished ticket,
``-`` for one dropped before its time), ``turns:{h}:takes`` (take id → ticket, until finished).
All expire together ``IDLE_TTL`` after the last use (a node renews those of the conversations it
holds tickets of): an idle conversation leaves nothing in Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
import structlog

from bridge.cluster.client import DEFAULT_PREFIX, ClusterError, call, millis, text
from bridge.errors import BridgeError, ErrorCode
from bridge.models import ConversationKey
from bridge.tasks import Chains, TaskSet

if TYPE_CHECKING:
    from bridge.cluster.bus import Bus
    from bridge.engine import Turn

log = structlog.get_logger(__name__)

IDLE_TTL = 3600.0  # seconds an untouched conversation's keys live (far above any turn)
RENEW_EVERY = 600.0  # seconds between renewals of the keys of conversations held here
RECHECK = 1.0  # seconds between looks at a blocked conversation (a lost wake-up, a dead node)
MAX_WAIT = 300.0  # seconds a turn waits for the conversation's earlier turns on other nodes
FAIL_AFTER = 10.0  # seconds of Redis failing before a waiting turn gives up
TAKE_ATTEMPTS = 3  # a take Redis did not answer is asked again (the same take) this often
TAKE_RETRY = 0.2
TOMBSTONE_TTL = 600.0  # seconds a given-up take is remembered (a copy of it running late)
TICK = 1.0  # seconds between upkeep rounds (finishes retried, the fence checked), at most
CHANNEL = "turns"  # the bus channel telling waiters a conversation moved on
NOT_ALIVE = "this bridge lost its connection to the cluster"

# Shared by the scripts. KEYS: next, done, who, takes. ARGV[1]: node key prefix, ARGV[2]: ttl.
_COMMON = """
local function holds(w)
  if not w or w == '-' then return false end
  local node, run = string.match(w, '^(.*)#([^#]*)$')
  if not node then return false end
  return redis.call('HGET', ARGV[1] .. node, 'run') == run
end
local function advance(done)
  local last = tonumber(redis.call('GET', KEYS[1]) or '0')
  while done < last do
    local n = done + 1
    if holds(redis.call('HGET', KEYS[3], n)) then break end
    redis.call('HDEL', KEYS[3], n)
    done = n
  end
  return done
end
local function keep(done)
  local ttl = tonumber(ARGV[2])
  redis.call('SET', KEYS[2], done, 'PX', ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
local function current()
  local done = tonumber(redis.call('GET', KEYS[2]) or '0')
  local last = tonumber(redis.call('GET', KEYS[1]) or '0')
  -- Keys that expired apart (they never should): the counter restarts past what was done.
  if done > last then redis.call('SET', KEYS[1], done) end
  return done
end
"""

# KEYS[5]: the take's tombstone. ARGV: node prefix, ttl ms, this node's run, take id. Returns
# {ticket, 1 if it may run now}, or {-1, 0} for a take given up already (a late copy).
_TAKE = (
    _COMMON
    + """
if redis.call('EXISTS', KEYS[5]) == 1 then return {-1, 0} end
local t = tonumber(redis.call('HGET', KEYS[4], ARGV[4]) or '0')
local before = current()
if t == 0 then
  t = redis.call('INCR', KEYS[1])
  redis.call('HSET', KEYS[3], t, ARGV[3])
  redis.call('HSET', KEYS[4], ARGV[4], t)
end
local moved = advance(before)
keep(moved)
if moved == t - 1 then return {t, 1} end
return {t, 0}
"""
)

# ARGV: node prefix, ttl ms, ticket. Returns {1} run, {2} given up, {0, next, its holder}.
_CHECK = (
    _COMMON
    + """
local t = tonumber(ARGV[3])
local moved = advance(current())
keep(moved)
if moved >= t then return {2} end
if moved == t - 1 then return {1} end
return {0, moved + 1, redis.call('HGET', KEYS[3], moved + 1) or ''}
"""
)

# KEYS[5]: the take's tombstone. ARGV: node prefix, ttl ms, ticket ('' for the ticket of the
# take id: a take whose answer never came, tombstoned for ARGV[7] ms), channel, digest, take
# id. Returns the new `done`; -1 when the ticket was dropped before its time (marked, to be
# skipped); -2 when it was already given up; -3 when the take never happened.
_FINISH = (
    _COMMON
    + """
local t = tonumber(ARGV[3] ~= '' and ARGV[3] or redis.call('HGET', KEYS[4], ARGV[6]) or '0')
redis.call('HDEL', KEYS[4], ARGV[6])
if ARGV[3] == '' then
  -- A take whose answer never came: a copy of it running late must not take a ticket.
  redis.call('SET', KEYS[5], 1, 'PX', tonumber(ARGV[7]))
end
if t == 0 then return -3 end
local done = current()
if done >= t then
  redis.call('HDEL', KEYS[3], t)
  keep(done)
  return -2
end
if done < t - 1 then
  redis.call('HSET', KEYS[3], t, '-')
  keep(done)
  return -1
end
redis.call('HDEL', KEYS[3], t)
local moved = advance(t)
keep(moved)
if tonumber(redis.call('GET', KEYS[1]) or '0') > moved then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return moved
"""
)


def digest(key: ConversationKey) -> str:
    raw = f"{key.user_id}\x00{key.contact}\x00{key.thread}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


@dataclass(eq=False, slots=True)
class Ticket:
    """A turn's place in its conversation's order."""

    h: str
    number: asyncio.Future[tuple[int, bool]]
    take_id: str = field(default_factory=lambda: secrets.token_hex(8))
    finished: bool = False


@dataclass(slots=True)
class _Waiting:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class ConversationTurns:
    """The engine's gate in a cluster (see `bridge.engine.TurnGate`). ``identity``: this run of
    this node (NodeRegistry.identity), as tickets name their holder."""

    def __init__(
        self,
        redis: aioredis.Redis,
        bus: Bus,
        identity: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        alive: Callable[[], bool] = lambda: True,
        recheck: float = RECHECK,
        max_wait: float = MAX_WAIT,
        tick: float = TICK,
    ) -> None:
        if "#" not in identity:
            raise ValueError(f"not a node run: {identity!r} (expected <node id>#<run>)")
        self._redis = redis
        self._bus = bus
        self.identity = identity
        self._prefix = prefix
        self._node_prefix = f"{prefix}node:"
        self._channel = bus.channel_name(CHANNEL)
        self._alive = alive  # whether this node's heartbeat still holds
        self._recheck = recheck
        self._max_wait = max_wait
        self._tick = min(tick, TICK)
        self._take = redis.register_script(_TAKE)
        self._check = redis.register_script(_CHECK)
        self._finish = redis.register_script(_FINISH)
        self._tasks = TaskSet("cluster.turns")
        self._chains = Chains(self._tasks)  # per conversation: takes and finishes in order
        self._waiting: dict[str, _Waiting] = {}
        # Tickets this node holds and has not finished, per conversation.
        self._held: dict[str, set[int]] = {}
        self._running: dict[Turn, None] = {}
        # Finishes Redis did not take yet: (conversation, ticket or 0 if unknown, take id).
        self._unfinished: dict[tuple[str, int, str], None] = {}
        self._stop: Callable[[Turn, str], object] | None = None
        self._started = False
        # Awaited before a ticket is finished (the node's pushes leaving first: see
        # PushFanout.flushed); bounded by its own timeout.
        self.before_finish: Callable[[], Awaitable[None]] | None = None

    def _keys(self, h: str, take_id: str = "-") -> list[str]:
        base = f"{self._prefix}turns:{h}:"
        return [
            base + "next",
            base + "done",
            base + "who",
            base + "takes",
            base + "gone:" + take_id,
        ]

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, stop: Callable[[Turn, str], object]) -> None:
        """Listen for conversations moving on; ``stop(turn, why)`` ends a running turn (the
        engine's stop_nowait) when this node loses its place in the cluster."""
        self._stop = stop
        await self._bus.subscribe(CHANNEL, self._moved)
        self._started = True
        self._tasks.spawn(self._maintain(), name="cluster.turns.maintain")

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._bus.unsubscribe(CHANNEL)
        # Finishes still on their way get a moment: the others would give them up only once
        # this node is gone from the registry.
        if self._chains.running:
            await asyncio.wait(list(self._chains.running), timeout=2.0)
        await self._tasks.cancel_all()

    # -- the gate -----------------------------------------------------------------------------

    def take(self, key: ConversationKey) -> Ticket:
        loop = asyncio.get_running_loop()
        ticket = Ticket(digest(key), loop.create_future())
        self._chains.run(ticket.h, self._take_now(ticket), name="cluster.turns.take")
        return ticket

    async def _take_now(self, ticket: Ticket) -> None:
        for attempt in range(TAKE_ATTEMPTS):
            try:
                number, ready = await call(
                    "take a turn",
                    self._take(
                        keys=self._keys(ticket.h, ticket.take_id),
                        args=[self._node_prefix, millis(IDLE_TTL), self.identity, ticket.take_id],
                    ),
                )
                if int(number) <= 0:
                    raise ClusterError("the take was given up already")
                break
            except ClusterError as e:
                if attempt + 1 < TAKE_ATTEMPTS:
                    await asyncio.sleep(TAKE_RETRY * (attempt + 1))
                    continue
                # It may have been taken all the same: the upkeep finishes it if so.
                self._unfinished[(ticket.h, 0, ticket.take_id)] = None
                if not ticket.number.done():
                    ticket.number.set_exception(
                        BridgeError(
                            ErrorCode.UNAVAILABLE,
                            f"the cluster could not order this conversation's messages: {e}",
                        )
                    )
                return
        self._held.setdefault(ticket.h, set()).add(int(number))
        if not ticket.number.done():
            ticket.number.set_result((int(number), bool(ready)))

    async def enter(self, turn: Turn) -> None:
        """Until every earlier turn of the conversation, on any node, is finished; BridgeError
        when that cannot be known, takes longer than max_wait, or this node lost the cluster."""
        ticket: Ticket = turn.ticket
        try:
            async with asyncio.timeout(self._max_wait):
                number, ready = await asyncio.shield(ticket.number)
                if not ready or turn.inherits:
                    await self._wait(ticket.h, number)
        except TimeoutError:
            raise BridgeError(
                ErrorCode.BUSY,
                f"this conversation's earlier messages were still being answered after "
                f"{self._max_wait:g} s",
            ) from None
        if not self._alive():
            # The others may count this node as gone and run the next turn meanwhile.
            raise BridgeError(ErrorCode.UNAVAILABLE, NOT_ALIVE)
        self._running[turn] = None

    async def _wait(self, h: str, number: int) -> None:
        waiting = self._waiting.get(h)
        if waiting is None:
            waiting = self._waiting[h] = _Waiting()
        waiting.count += 1
        failing_since: float | None = None
        try:
            while True:
                waiting.event.clear()  # before looking: a wake-up after the look is kept
                try:
                    state = await call(
                        "check a turn",
                        self._check(
                            keys=self._keys(h),
                            args=[self._node_prefix, millis(IDLE_TTL), number],
                        ),
                    )
                except ClusterError as e:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > FAIL_AFTER:
                        raise BridgeError(
                            ErrorCode.UNAVAILABLE,
                            f"the cluster could not order this conversation's messages: {e}",
                        ) from e
                    state = [0]
                else:
                    failing_since = None
                if int(state[0]) == 1:
                    return
                if int(state[0]) == 2:
                    raise BridgeError(
                        ErrorCode.UNAVAILABLE,
                        "this bridge lost its place in the cluster while the message waited",
                    )
                if len(state) == 3 and text(state[2]) == self.identity:
                    await self._orphan(h, int(state[1]))
                try:
                    async with asyncio.timeout(self._recheck):
                        await waiting.event.wait()
                except TimeoutError:
                    pass
        finally:
            waiting.count -= 1
            if waiting.count == 0 and self._waiting.get(h) is waiting:
                del self._waiting[h]

    async def _orphan(self, h: str, number: int) -> None:
        """The ticket ahead is this run's. Held by a turn here, or with a take or finish of
        this conversation on its way, it is finished in its time; otherwise nothing here ever
        finishes it, so it is finished now (else the conversation would wait for this node to
        die)."""
        if number in self._held.get(h, ()) or h in self._chains:
            return
        log.warning("cluster.turns.orphan_ticket", conversation=h, ticket=number)
        await self._finish_now(h, number, "")

    def leave(self, turn: Turn) -> None:
        """The turn is over (ran, dropped or refused), or it handed its place on (no ticket
        left): a ticket it still has lets the next one run."""
        self._running.pop(turn, None)
        ticket: Ticket | None = turn.ticket
        if ticket is None or ticket.finished:
            return
        ticket.finished = True
        self._chains.run(ticket.h, self._leave_now(ticket), name="cluster.turns.finish")

    async def _leave_now(self, ticket: Ticket) -> None:
        if not ticket.number.done():
            return  # the take is on the same chain, before this: cannot be
        if ticket.number.cancelled() or ticket.number.exception() is not None:
            return  # the take failed: the upkeep finishes it, if it was taken after all
        number, _ = ticket.number.result()
        if self.before_finish is not None:
            await self.before_finish()
        await self._finish_now(ticket.h, number, ticket.take_id)

    async def _finish_now(self, h: str, number: int, take_id: str) -> None:
        try:
            await call(
                "finish a turn",
                self._finish(
                    keys=self._keys(h, take_id or "-"),
                    args=[
                        self._node_prefix,
                        millis(IDLE_TTL),
                        str(number) if number else "",
                        self._channel,
                        h,
                        take_id,
                        millis(TOMBSTONE_TTL),
                    ],
                ),
            )
        except ClusterError as e:
            # Kept and retried: until Redis has it, this node holds the conversation.
            log.warning("cluster.turns.finish_failed", conversation=h, ticket=number, error=str(e))
            self._unfinished[(h, number, take_id)] = None
            return
        self._unfinished.pop((h, number, take_id), None)
        held = self._held.get(h)
        if held is not None:
            held.discard(number)
            if not held:
                del self._held[h]

    # -- wake-ups and upkeep ------------------------------------------------------------------

    def _moved(self, payload: bytes) -> None:
        waiting = self._waiting.get(payload.decode("ascii", "replace"))
        if waiting is not None:
            waiting.event.set()

    async def _maintain(self) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._tick)
            if self._running and not self._alive() and self._stop is not None:
                # The others may already count this node as gone and run the next turns.
                for turn in list(self._running):
                    self._running.pop(turn, None)
                    log.warning("cluster.turns.fenced", conversation=str(turn.key))
                    self._stop(turn, NOT_ALIVE)
            for h, number, take_id in list(self._unfinished):
                if h not in self._chains:  # one retry at a time per conversation
                    self._chains.run(
                        h, self._finish_now(h, number, take_id), name="cluster.turns.finish"
                    )
            if time.monotonic() - renewed >= RENEW_EVERY:
                renewed = time.monotonic()
                await self._renew()

    async def _renew(self) -> None:
        """A turn may run longer than IDLE_TTL: the keys of conversations held here stay."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for h in list(self._held):
                    for key in self._keys(h)[:4]:
                        pipe.pexpire(key, millis(IDLE_TTL))
                await call("renew turns", pipe.execute())
        except ClusterError as e:
            log.warning("cluster.turns.renew_failed", error=str(e))
