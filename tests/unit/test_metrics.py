"""Metrics: each count moves when its event happens, and the exposition names them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.miochat import protocol as P
from bridge.errors import BridgeError, ErrorCode
from bridge.metrics import Metrics, target_kind
from bridge.models import Delta, Done, Failed, ReplyEvent


def sample(m: Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def events(*items: ReplyEvent | BaseException) -> AsyncIterator[ReplyEvent]:
    for item in items:
        if isinstance(item, BaseException):
            raise item
        yield item


async def drain(stream: AsyncIterator[ReplyEvent]) -> list[ReplyEvent]:
    return [e async for e in stream]


def test_frames_are_counted_by_transport_protocol_and_type() -> None:
    m = Metrics()
    beat = P.parse_request(
        '{"request_id":"1","protocol":"system","type":"heartbeat","data":{}}', logged_in=True
    )
    assert not isinstance(beat, P.FrameError)
    for _ in range(3):
        m.frame(beat)
    m.socketio_frame(beat)
    name = "momobridge_frames_received_total"
    assert sample(m, name, transport="websocket", protocol="system", type="heartbeat") == 3
    assert sample(m, name, transport="socketio", protocol="system", type="heartbeat") == 1
    m.frame(beat)
    assert sample(m, name, transport="websocket", protocol="system", type="heartbeat") == 4


def test_an_unparsable_frame_counts_as_invalid() -> None:
    m = Metrics()
    bad = P.parse_request("not json", logged_in=True)
    assert isinstance(bad, P.FrameError)
    m.frame(bad)
    name = "momobridge_frames_received_total"
    assert sample(m, name, transport="websocket", protocol="invalid", type="invalid") == 1


def test_logins_and_pushes() -> None:
    m = Metrics()
    m.login("websocket", True)
    m.login("websocket", False)
    m.login("websocket", False)
    m.login("socketio", True)
    assert sample(m, "momobridge_logins_total", transport="websocket", result="ok") == 1
    assert sample(m, "momobridge_logins_total", transport="websocket", result="refused") == 2
    assert sample(m, "momobridge_logins_total", transport="socketio", result="ok") == 1
    m.push("stored")
    m.push("offered", 3)
    m.push("confirmed")
    assert sample(m, "momobridge_pushes_total", event="stored") == 1
    assert sample(m, "momobridge_pushes_total", event="offered") == 3
    assert sample(m, "momobridge_pushes_total", event="confirmed") == 1


async def test_a_completed_reply_counts_latency_and_tokens() -> None:
    m = Metrics()
    usage = {"prompt_tokens": 7, "completion_tokens": 5}
    got = await drain(m.track("openai", events(Delta("a"), Delta("b"), Done(usage=usage))))
    assert len(got) == 3
    assert sample(m, "momobridge_replies_total", target="openai", result="completed") == 1
    assert sample(m, "momobridge_reply_seconds_count", target="openai") == 1
    assert sample(m, "momobridge_reply_first_token_seconds_count", target="openai") == 1
    assert sample(m, "momobridge_reply_seconds_bucket", target="openai", le="+Inf") == 1
    assert sample(m, "momobridge_tokens_total", target="openai", kind="prompt") == 7
    assert sample(m, "momobridge_tokens_total", target="openai", kind="completion") == 5


async def test_failures_count_by_code_and_cancels_do_not() -> None:
    m = Metrics()
    await drain(m.track("momohub", events(Failed(ErrorCode.UPSTREAM_TIMEOUT, "slow"))))
    with pytest.raises(BridgeError):
        await drain(m.track("momohub", events(BridgeError(ErrorCode.UPSTREAM_ERROR, "500"))))
    await drain(m.track("momohub", events(Failed(ErrorCode.CANCELLED, "recalled"))))
    assert sample(m, "momobridge_replies_total", target="momohub", result="failed") == 2
    assert sample(m, "momobridge_replies_total", target="momohub", result="cancelled") == 1
    errors = "momobridge_upstream_errors_total"
    assert sample(m, errors, target="momohub", code="UPSTREAM_TIMEOUT") == 1
    assert sample(m, errors, target="momohub", code="UPSTREAM_ERROR") == 1
    assert sample(m, errors, target="momohub", code="CANCELLED") == 0


async def test_a_reply_stopped_before_its_result_counts_as_cancelled() -> None:
    m = Metrics()
    stream = m.track("model_chat", events(Delta("a"), Delta("b"), Done()))
    assert isinstance(await anext(stream), Delta)
    await stream.aclose()  # what a recall or an abort does to the consumer's loop
    assert sample(m, "momobridge_replies_total", target="model_chat", result="cancelled") == 1
    assert sample(m, "momobridge_reply_seconds_count", target="model_chat") == 0


def test_live_values_are_read_at_scrape_time() -> None:
    m = Metrics()
    open_now = [2]
    m.websocket_connections = lambda: open_now[0]
    m.stream_slots = lambda: 4
    assert sample(m, "momobridge_hub_connections", transport="websocket") == 2
    open_now[0] = 5
    assert sample(m, "momobridge_hub_connections", transport="websocket") == 5
    assert sample(m, "momobridge_stream_slots_in_use") == 4


def test_exposition_names_every_metric_and_the_process() -> None:
    m = Metrics()
    m.login("websocket", True)
    text = m.exposition().decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names >= {
        "momobridge_hub_connections",
        "momobridge_stream_slots_in_use",
        "momobridge_outbox_pending",
        "momobridge_frames_received",
        "momobridge_logins",
        "momobridge_pushes",
        "momobridge_replies",
        "momobridge_upstream_errors",
        "momobridge_tokens",
        "momobridge_reply_first_token_seconds",
        "momobridge_reply_seconds",
        "process_cpu_seconds",
    }


def test_two_bridges_do_not_share_counts() -> None:
    a, b = Metrics(), Metrics()
    a.login("websocket", True)
    assert sample(a, "momobridge_logins_total", transport="websocket", result="ok") == 1
    assert sample(b, "momobridge_logins_total", transport="websocket", result="ok") == 0


def test_target_kind_looks_through_a_place_holder() -> None:
    class Character:
        metrics_kind = "momohub"

    class Holder:
        target = Character()

    assert target_kind(Character()) == "momohub"
    assert target_kind(Holder()) == "momohub"
    assert target_kind(object()) == "other"
