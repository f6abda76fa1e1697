"""The web client's `llm` replies in a cluster: a tab of the same user on another node that
enters the chat while a reply runs gets the reply as it stands and then its live frames, as a
tab on the node running it would (adapters/miochat/reply_relay). Two bridges on one real
PostgreSQL and Redis, python-socketio clients, the fake OpenAI server's `gated` model."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.conftest import Bridge
from tests.e2e.test_cluster_nodes import cluster
from tests.e2e.test_socketio_llm import completions, enter, login, of, stream, text_of, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.hub_client import eventually

WAIT = 15.0


async def two_nodes(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory: Any
) -> tuple[Bridge, Bridge]:
    shared = {
        "storage": {"url": postgres_dsn},
        "openai": {
            "providers": [{"name": "fake", "base_url": upstream.base_url, "api_key": "sk-test"}]
        },
        "auth": {"user_code": "users"},
        "miochat": {"socketio": True},
    }
    a = await bridge_factory(**shared, cluster=cluster(redis_url, "node-a"))
    b = await bridge_factory(**shared, cluster=cluster(redis_url, "node-b"))
    return a, b


@contextlib.asynccontextmanager
async def tabs_on(uid: str, *nodes: Bridge) -> AsyncIterator[list[Any]]:
    """A web-client tab of user ``uid`` on each of ``nodes`` (in order), closed after."""
    tabs: list[Any] = []
    try:
        for node in nodes:
            tab, _ = await login(node, "websocket", uid)
            tabs.append(tab)
        yield tabs
    finally:
        for tab in tabs:
            await tab.close()


async def reply_streaming(tab: Any, mid: str, contactor: str, words: str) -> None:
    """``tab`` asks the gated model: back once the first part is out (the rest held back)."""
    await tab.send(completions(mid, contactor, "gated", [user(words)]))
    await tab.wait_for(of(mid, "update"))


def relay_of(b: Bridge) -> Any:
    relay = b.app.socketio.relay  # type: ignore[union-attr]
    assert relay is not None
    return relay


async def test_a_tab_on_another_node_gets_the_running_reply_live(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    uid, mid, contactor = "4000000001", "2000000000000001", "601"
    async with tabs_on(uid, a, b) as (tab1, tab2):
        await reply_streaming(tab1, mid, contactor, "tell me")
        await tab2.send(enter(contactor))
        sync = await tab2.wait_for(of(mid, "sync"))
        # The reply as it stands on node A (the stored row has no text yet: it is checkpointed
        # every 2 s), not as stored.
        assert sync["data"]["status"] == "streaming"
        assert sync["data"]["chunks"] == [{"type": "content", "content": "first part, "}]
        assert relay_of(b).watching == 1
        upstream.gate.set()
        await tab2.wait_for(of(mid, "complete"))
        frames = stream(tab2, mid)
        kinds = [f["message"] for f in frames]
        assert kinds[0] == "sync" and kinds[-1] == "complete", kinds
        assert kinds.count("sync") == 1 and kinds.count("complete") == 1, kinds
        assert set(kinds[1:-1]) == {"update"}, kinds
        assert text_of(frames) == "then the rest"
        assert frames[-1]["data"]["metaData"]["contactorId"] == contactor
        # The tab that asked got all of it, once.
        await tab1.wait_for(of(mid, "complete"))
        assert text_of(stream(tab1, mid)) == "first part, then the rest"
        assert [f["message"] for f in stream(tab1, mid)].count("complete") == 1
        # The watch ended with the reply on both sides.
        await eventually(lambda: relay_of(b).watching == 0, WAIT, "node B's watch forgotten")
        assert not relay_of(a)._remotes


async def test_a_reply_that_ends_before_the_watch_lands_is_synced_as_stored(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    uid, mid, contactor = "4000000002", "2000000000000002", "602"
    relay = relay_of(b)
    asked, answers = relay.ask, []

    async def late(row: Any) -> Any:
        # The stored row said `streaming`; the reply ends before the watch reaches node A.
        upstream.gate.set()
        await eventually(
            lambda: a.app.socketio.replies.running == 0,  # type: ignore[union-attr]
            WAIT,
            "the reply finished on node A",
        )
        answers.append(await asked(row))
        return answers[-1]

    relay.ask = late
    async with tabs_on(uid, a, b) as (tab1, tab2):
        await reply_streaming(tab1, mid, contactor, "quick")
        await tab2.send(enter(contactor))
        sync = await tab2.wait_for(of(mid, "sync"))
        assert answers == [{"running": False}]
        d = sync["data"]
        assert d["status"] == "completed" and d["error"] is None
        assert d["chunks"] == [{"type": "content", "content": "first part, then the rest"}]
        assert [f["message"] for f in stream(tab2, mid)] == ["sync"]
        assert relay.watching == 0
        assert not relay_of(a)._remotes


async def test_a_tab_that_moved_to_another_chat_gets_no_more_frames(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    """Live frames go to the tabs whose last entered chat is the reply's; another tab of the
    user on the same node that stays in that chat keeps getting them."""
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    uid, mid, contactor = "4000000003", "2000000000000003", "603"
    async with tabs_on(uid, a, b, b) as (tab1, away, stays):
        await reply_streaming(tab1, mid, contactor, "hm")
        for t in (away, stays):
            await t.send(enter(contactor))
            await t.wait_for(of(mid, "sync"))
        await away.send(enter("604"))
        moved = _conn(b, away)
        await eventually(
            lambda: relay_of(b)._entered.get(moved) == (uid, "604"),
            WAIT,
            "the tab's move to another chat seen by node B",
        )
        upstream.gate.set()
        await stays.wait_for(of(mid, "complete"))
        assert text_of(stream(stays, mid)) == "then the rest"
        await eventually(lambda: relay_of(b).watching == 0, WAIT, "node B's watch forgotten")
        assert [f["message"] for f in stream(away, mid)] == ["sync"]


def _conn(b: Bridge, client: Any) -> Any:
    edge = b.app.socketio
    assert edge is not None
    return edge._conns[client.sio.get_sid()]


async def test_frames_that_arrive_before_the_sync_wait_for_it(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    """The owner's answer and the reply's frames travel on different channels: frames that
    reach the watching node first are held until the tab has its `sync`, then sent once."""
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    uid, mid, contactor = "4000000004", "2000000000000004", "605"
    relay = relay_of(b)
    asked = relay.ask

    async def answer_late(row: Any) -> Any:
        answer = await asked(row)
        assert answer["running"] is True
        upstream.gate.set()  # the rest and the end arrive before the tab gets its sync
        watch = relay._watches[(uid, mid)]
        await eventually(lambda: any(x[3] for x in watch.buffer), WAIT, "the end buffered")
        return answer

    relay.ask = answer_late
    async with tabs_on(uid, a, b) as (tab1, tab2):
        await reply_streaming(tab1, mid, contactor, "race")
        await tab2.send(enter(contactor))
        await tab2.wait_for(of(mid, "complete"))
        frames = stream(tab2, mid)
        kinds = [f["message"] for f in frames]
        assert kinds[0] == "sync" and kinds[-1] == "complete", kinds
        assert kinds.count("sync") == 1 and kinds.count("complete") == 1, kinds
        assert frames[0]["data"]["chunks"] == [{"type": "content", "content": "first part, "}]
        assert text_of(frames) == "then the rest"
        assert relay.watching == 0


async def test_a_watched_reply_whose_node_stops_ends_for_the_watching_tab(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    """Node A stops while its reply streams to a tab on node B: no end marker comes, so B ends
    the watch from the store when A leaves the cluster, and the tab sees the reply failed
    rather than streaming for ever."""
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    uid, mid, contactor = "4000000005", "2000000000000005", "605"
    async with tabs_on(uid, a, b) as (tab1, tab2):
        await reply_streaming(tab1, mid, contactor, "tell me")
        await tab2.send(enter(contactor))
        await tab2.wait_for(of(mid, "sync"))
        assert relay_of(b).watching == 1
        await a.app.stop()
        last = await tab2.wait_for(
            lambda f: (
                f.get("request_id") == mid
                and f.get("message") == "sync"
                and f["data"]["status"] != "streaming"
            ),
        )
        assert last["data"]["status"] == "failed", last
        assert relay_of(b).watching == 0


async def test_a_tab_whose_ask_failed_is_still_told_when_the_node_goes(
    postgres_dsn: str, redis_url: str, upstream: FakeOpenAI, bridge_factory
) -> None:
    """The running node does not answer the ask (it is going): the tab gets the reply as
    stored, still streaming, and is told it failed once that node has left the cluster."""
    a, b = await two_nodes(postgres_dsn, redis_url, upstream, bridge_factory)
    uid, mid, contactor = "4000000006", "2000000000000006", "606"
    relay = relay_of(b)

    async def no_answer(row: Any) -> None:
        return None

    relay.ask = no_answer
    async with tabs_on(uid, a, b) as (tab1, tab2):
        await reply_streaming(tab1, mid, contactor, "tell me")
        await tab2.send(enter(contactor))
        first = await tab2.wait_for(of(mid, "sync"))
        assert first["data"]["status"] == "streaming"
        await a.app.stop()
        last = await tab2.wait_for(
            lambda f: (
                f.get("request_id") == mid
                and f.get("message") == "sync"
                and f["data"]["status"] != "streaming"
            )
        )
        assert last["data"]["status"] == "failed", last
        assert relay.watching == 0
