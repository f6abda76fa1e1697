"""Scheduled character messages from a hub client, with the MomoHub sandbox behind, over real
sockets: `/schedule` fires the prompt as a turn whose reply reaches the user like any reply."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import plugins.schedule as schedule_plugin
from bridge.scheduler import PURGE_CLIENT_REPLIES, PURGE_SHARES
from tests.conftest import Bridge
from tests.e2e.test_momohub import MOMO, text
from tests.e2e.test_plugins import generations, pushed_texts
from tests.support.hub_client import HubClient, eventually

SETTINGS = {"schedule": {"min_interval": 0.5, "max_per_user": 2}}
WAIT = 20.0


@pytest.fixture
async def hub(bridge_factory) -> Bridge:
    return await bridge_factory(momohub={"enabled": True}, plugins=SETTINGS)


async def ask(c: HubClient, line: str, expect: str) -> str:
    """Send a command line; its answer is the next pushed message starting with ``expect``
    (a scheduled reply may come in between)."""
    before = len(c.pushes("message"))
    rid = await c.send("onebot", "message", text(line), id=MOMO)
    ack = await c.reply(rid)
    assert ack["code"] == 0, ack

    def answered(_: Any) -> bool:
        return any(t.startswith(expect) for t in pushed_texts(c)[before:])

    await c.wait_for(answered, WAIT)
    return next(t for t in pushed_texts(c)[before:] if t.startswith(expect))


async def wait_reply(c: HubClient, prompt: str, count: int = 1) -> None:
    said = f"Momo: you said {prompt}"
    await c.wait_for(lambda _: pushed_texts(c).count(said) >= count, WAIT)


async def stored_in(bridge: Bridge, user: str, kind: str = "message") -> list[str]:
    """The texts stored as the user's own messages (or, with ``kind``, as prompts...)."""
    assert bridge.app.storage is not None
    async with bridge.app.storage.db.conn.execute(
        "SELECT content FROM messages WHERE user_id = ? AND direction = 'in' AND kind = ?",
        (user, kind),
    ) as cur:
        rows = await cur.fetchall()
    return ["".join(s["data"].get("text", "") for s in json.loads(r[0])) for r in rows]


def job_id(entry_id: int) -> str:
    return f"schedule-{entry_id}"


async def test_a_schedule_fires_to_a_live_user_without_showing_the_prompt(hub: Bridge) -> None:
    c = await hub.client("ann")
    other_tab = await hub.client("ann")
    before = await generations(hub)
    answer = await ask(c, "/schedule add every 1s Tell me a joke", "Schedule #1 added")
    assert answer.startswith("Schedule #1 added: every 1s, next ")
    await wait_reply(c, "Tell me a joke")
    await wait_reply(other_tab, "Tell me a joke")
    push = next(
        p["data"]
        for p in c.pushes("message")
        if "you said Tell me a joke" in json.dumps(p["data"]["content"])
    )
    assert push["id"] == MOMO and push["content"]["sender"]["name"] == "Momo"
    # The prompt reached MomoHub as a turn, but is neither stored nor pushed as the user's:
    # it is stored as a prompt (the turn's own record).
    assert await generations(hub) > before
    assert "Tell me a joke" not in await stored_in(hub, "ann")
    assert "Tell me a joke" in await stored_in(hub, "ann", "prompt")
    assert "Tell me a joke" not in pushed_texts(c)
    assert await ask(c, "/schedule del 1", "Schedule #1") == "Schedule #1 deleted."
    assert not hub.app.scheduler.has(job_id(1))
    assert await ask(c, "/schedule list", "No schedules") == (
        "No schedules. /help schedule tells how to add one."
    )


async def test_a_schedule_fires_to_an_offline_users_outbox(hub: Bridge) -> None:
    c = await hub.client("bob")
    await ask(c, "/schedule add every 1s Good night", "Schedule #1 added")
    await c.close()
    assert hub.app.outbox is not None
    outbox = hub.app.outbox
    await eventually(lambda: hub.app.scheduler.runs.get(job_id(1), 0) >= 1, WAIT, "a run")

    async def kept() -> bool:
        return await outbox.pending_count("bob") > 0

    await eventually(kept, WAIT, "a reply kept in the outbox")
    hub.app.scheduler.remove(job_id(1))  # no more runs: the outbox is what we look at
    c2 = await hub.client("bob")
    await wait_reply(c2, "Good night")


async def test_list_del_and_max_per_user(hub: Bridge) -> None:
    c = await hub.client("cat")
    await ask(c, '/schedule add cron "0 9 * * 1-5" Morning briefing', "Schedule #1 added")
    await ask(c, "/schedule add every 2h Drink water", "Schedule #2 added")
    refused = await ask(c, "/schedule add every 1h One too many", "You have")
    assert refused == "You have 2 schedules, the most allowed; /schedule del <id> one first."
    listed = (await ask(c, "/schedule list", "#1")).splitlines()
    assert listed[0].startswith('#1 cron "0 9 * * 1-5": Morning briefing (next ')
    assert listed[1].startswith("#2 every 2h: Drink water (next ")
    # Another user neither sees nor deletes them.
    d = await hub.client("dan")
    assert (await ask(d, "/schedule list", "No schedules")).startswith("No schedules.")
    assert await ask(d, "/schedule del 1", "No schedule") == "No schedule #1."
    assert await ask(d, "/schedule list all", "Only") == (
        "Only an admin may use /schedule list all."
    )
    # Bad input gets the sub-command's usage.
    assert (await ask(c, "/schedule add every 0.1s x", "the shortest")).startswith(
        "the shortest interval is 0.5s. Usage: /schedule add "
    )
    assert (await ask(c, '/schedule add cron "* * *" x', "cron takes")).startswith(
        'cron takes 5 fields, such as "0 9 * * 1-5"; got 3. Usage: /schedule add'
    )
    assert await ask(c, "/schedule del 1", "Schedule #1") == "Schedule #1 deleted."
    assert (await ask(c, "/schedule list", "#2")).startswith("#2 every 2h: Drink water")
    # An admin is not limited, and sees everyone's.
    admin = await hub.client("root", token="admin-secret")
    for i in range(3):
        await ask(admin, f"/schedule add every 3h Admin {i}", f"Schedule #{3 + i} added")
    everyone = await ask(admin, "/schedule list all", "#2")
    assert f"#2 every 2h [cat → {MOMO}]: Drink water" in everyone
    assert await ask(admin, "/schedule del 2", "Schedule #2") == "Schedule #2 deleted."


async def test_adds_at_the_same_moment_get_their_own_ids_and_respect_the_limit(
    hub: Bridge,
) -> None:
    """Commands of different conversations run at once: no two adds share an id, none is
    lost, and one user cannot pass max_per_user by adding from several conversations."""
    import asyncio

    from tests.e2e.test_momohub import KURO

    a = await hub.client("amy")
    b = await hub.client("ben")

    async def add(c: HubClient, contact: str, what: str) -> None:
        rid = await c.send("onebot", "message", text(f"/schedule add every 3h {what}"), id=contact)
        assert (await c.reply(rid))["code"] == 0

    await asyncio.gather(
        add(a, MOMO, "a1"), add(b, MOMO, "b1"), add(a, KURO, "a2"), add(a, KURO, "a3")
    )
    await a.wait_for(lambda _: len(a.pushes("message")) >= 3, WAIT)
    await b.wait_for(lambda _: len(b.pushes("message")) >= 1, WAIT)
    answers = pushed_texts(a) + pushed_texts(b)
    ids = [t.split()[1] for t in answers if t.startswith("Schedule #")]
    assert len(ids) == 3 and len(set(ids)) == 3, answers
    assert sum(t.startswith("You have 2 schedules") for t in pushed_texts(a)) == 1
    admin = await hub.client("root", token="admin-secret")
    everyone = await ask(admin, "/schedule list all", "#")
    assert sorted(line.split()[0] for line in everyone.splitlines()) == sorted(ids)


async def test_schedules_survive_a_restart(hub: Bridge) -> None:
    c = await hub.client("eve")
    await ask(c, "/schedule add every 1h Still there?", "Schedule #1 added")
    await hub.restart()
    assert hub.app.scheduler.has(job_id(1))
    assert hub.app.scheduler.runs[job_id(1)] == 0  # nothing was owed
    c2 = await hub.client("eve")
    assert (await ask(c2, "/schedule list", "#1")).startswith("#1 every 1h: Still there?")
    # Ids keep counting after a restart.
    assert (await ask(c2, "/schedule add every 1s Tick", "Schedule #2")).startswith(
        "Schedule #2 added"
    )
    await wait_reply(c2, "Tick")
    assert await ask(c2, "/schedule del 2", "Schedule #2") == "Schedule #2 deleted."


async def _owe(bridge: Bridge, entry_id: int, overdue: float, period: float = 3600.0) -> None:
    """Rewrite a stored schedule as if the bridge had been down when it was due ``overdue``
    seconds ago (rather than waiting for that to happen)."""
    assert bridge.app.storage is not None
    kv = bridge.app.storage.plugin_kv
    entry = await kv.get("schedule", f"s:{entry_id}")
    entry["created"] = entry["last"] = time.time() - period - overdue
    await kv.set("schedule", f"s:{entry_id}", entry)


async def test_a_missed_run_runs_once_after_a_restart_within_the_grace(hub: Bridge) -> None:
    c = await hub.client("fay")
    await ask(c, "/schedule add every 1h Missed me?", "Schedule #1 added")
    await ask(c, "/schedule add every 1h Too late", "Schedule #2 added")
    await _owe(hub, 1, overdue=60)  # within misfire_grace (300 s)
    await _owe(hub, 2, overdue=1000)  # past it: skipped
    await hub.restart()
    scheduler = hub.app.scheduler
    assert scheduler.runs[job_id(1)] == 1
    assert scheduler.runs[job_id(2)] == 0
    c2 = await hub.client("fay")
    await wait_reply(c2, "Missed me?")
    # The run is recorded once it has ended (just after its reply is pushed).
    kv = hub.app.storage.plugin_kv
    owed_since = time.time() - 3600

    async def recorded() -> bool:
        return (await kv.get("schedule", "s:1"))["last"] > owed_since

    await eventually(recorded, what="the run recorded")
    # Once: it ran, so the next start owes nothing.
    await hub.restart()
    assert hub.app.scheduler.runs[job_id(1)] == 0
    assert hub.app.scheduler.runs[job_id(2)] == 0
    c3 = await hub.client("fay")
    assert (await ask(c3, "/help schedule", "/schedule")).startswith("/schedule <add|del|")
    assert "Momo: you said Too late" not in pushed_texts(c2) + pushed_texts(c3)
    assert pushed_texts(c3).count("Momo: you said Missed me?") <= 1  # the outbox copy, if any


async def test_housekeeping_purges_expired_shares(hub: Bridge) -> None:
    storage = hub.app.storage
    assert storage is not None
    ttl = hub.config.share.ttl_days * 86400.0
    await storage.shares.create({"name": "old"}, now=time.time() - ttl - 60)
    fresh = await storage.shares.create({"name": "fresh"})
    assert await storage.shares.count() == 2
    scheduler = hub.app.scheduler
    assert scheduler.running and scheduler.has(PURGE_SHARES)
    assert scheduler.next_run(PURGE_SHARES) is not None
    task = scheduler.run_now(PURGE_SHARES)
    assert task is not None
    await task
    assert await storage.shares.count() == 1
    assert await storage.shares.get(fresh) == {"name": "fresh"}


async def test_housekeeping_purges_web_client_replies_nobody_came_back_for(hub: Bridge) -> None:
    from storage.client_replies import REPLY_TTL, StoredReply

    storage = hub.app.storage
    assert storage is not None
    for mid, started in (("old", time.time() - REPLY_TTL - 60), ("new", time.time())):
        reply = StoredReply("u1", mid, "c1", "completed", [], None, {"messageId": mid}, started)
        await storage.client_replies.save(reply, 10)
    task = hub.app.scheduler.run_now(PURGE_CLIENT_REPLIES)
    assert task is not None
    await task
    rows = await storage.client_replies.of_contactor("u1", "c1")
    assert [r.message_id for r in rows] == ["new"]


async def test_stop_leaves_no_scheduled_run_behind(hub: Bridge) -> None:
    c = await hub.client("gus")
    await ask(c, "/schedule add every 0.5s /slow Keep talking", "Schedule #1 added")
    await eventually(lambda: hub.app.scheduler.runs.get(job_id(1), 0) >= 1, WAIT, "a run")
    scheduler = hub.app.scheduler
    await hub.app.stop()
    assert not scheduler.running and not scheduler._running
    hub.app = type(hub.app)(hub.config)  # the fixture stops it again on teardown
    await hub.app.start()


async def stored_last(bridge: Bridge, entry_id: int) -> float:
    assert bridge.app.storage is not None
    entry = await bridge.app.storage.plugin_kv.get("schedule", f"s:{entry_id}")
    return float(entry["last"])


async def test_a_run_a_stop_cut_short_runs_once_at_the_next_start(hub: Bridge) -> None:
    """A run is recorded only once its reply has ended: a stop while the reply is generating
    leaves the run owed, and the next start runs it (once) within the misfire grace."""
    # /slow streams a token every 0.2 s: about three seconds for this reply.
    prompt = "/slow " + " ".join(f"w{i}" for i in range(12))
    c = await hub.client("hal")
    await ask(c, f"/schedule add every 1h {prompt}", "Schedule #1 added")
    await _owe(hub, 1, overdue=60)
    owed_since = await stored_last(hub, 1)
    await hub.restart()
    assert hub.app.scheduler.runs[job_id(1)] == 1  # the owed run started at start

    async def streaming() -> bool:
        # Nothing went upstream before (commands never do): this is the owed run's prompt.
        return await generations(hub) >= 1

    # Stopped once MomoHub has the prompt and is streaming the reply.
    await eventually(streaming, WAIT, "the prompt at MomoHub")
    await hub.restart()
    assert await stored_last(hub, 1) == owed_since  # nothing recorded for the cut-short run
    assert hub.app.scheduler.runs[job_id(1)] == 1  # still owed: it runs again
    c2 = await hub.client("hal")
    await wait_reply(c2, prompt)

    async def recorded() -> bool:
        return await stored_last(hub, 1) > owed_since

    await eventually(recorded, WAIT, "the run recorded once its reply ended")
    await hub.restart()
    assert hub.app.scheduler.runs[job_id(1)] == 0  # ran: nothing owed any more
    c3 = await hub.client("hal")
    assert (await ask(c3, "/schedule list", "#1")).startswith(f"#1 every 1h: {prompt[:20]}")


async def test_admins_keep_a_reserve_past_max_total_and_the_start_loads_every_schedule(
    bridge_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an open bridge anyone may fill max_total; an admin may still add, up to the reserve,
    and every stored schedule (more than max_total) is loaded again at start."""
    monkeypatch.setattr(schedule_plugin, "ADMIN_RESERVE", 2)
    b = await bridge_factory(
        momohub={"enabled": True}, plugins={"schedule": {"min_interval": 0.5, "max_total": 2}}
    )
    for user in ("ann", "bob"):  # no user code: anyone may log in as anyone
        c = await b.client(user)
        await ask(c, f"/schedule add every 3h For {user}", "Schedule #")
    late = await b.client("cat")
    assert await ask(late, "/schedule add every 3h Me too", "The bridge") == (
        "The bridge holds as many schedules as it may; none can be added."
    )
    admin = await b.client("root", token="admin-secret")
    await ask(admin, "/schedule add every 3h Admin 1", "Schedule #3 added")
    await ask(admin, "/schedule add every 3h Admin 2", "Schedule #4 added")
    assert await ask(admin, "/schedule add every 3h Admin 3", "The bridge") == (
        "The bridge holds 4 schedules, the most even an admin may add (max_total + 2); "
        "delete some first."
    )
    assert await ask(late, "/schedule add every 3h Me too", "The bridge") == (
        "The bridge holds as many schedules as it may; none can be added."
    )
    await b.restart()
    for entry_id in range(1, 5):
        assert b.app.scheduler.has(job_id(entry_id)), entry_id
    admin = await b.client("root", token="admin-secret")
    listed = await ask(admin, "/schedule list all", "#")
    assert [line.split()[0] for line in listed.splitlines()] == ["#1", "#2", "#3", "#4"]
    # Below the bound again once one is gone.
    assert await ask(admin, "/schedule del 1", "Schedule #1") == "Schedule #1 deleted."
    await ask(admin, "/schedule add every 3h Admin 3", "Schedule #5 added")
