"""The hub's permessage-deflate compressor, checked with plain zlib as the peer's inflater."""

from __future__ import annotations

import json
import zlib

import pytest

from adapters.miochat.deflate import WINDOW_BITS, Deflater, negotiated

TAIL = b"\x00\x00\xff\xff"


def messages() -> list[bytes]:
    return [
        json.dumps({"request_id": f"r{i}", "data": {"chunk": "tokens " * (50 + i)}}).encode()
        for i in range(20)
    ]


def test_context_takeover_round_trip_through_a_full_window_inflater() -> None:
    d = Deflater(15)
    peer = zlib.decompressobj(-15)  # what a client negotiating 15 bits keeps
    sizes = []
    for m in messages():
        payload = d.compress(m)
        assert not payload.endswith(TAIL)  # RFC 7692 7.2.1: the tail is removed
        assert peer.decompress(payload + TAIL) == m
        sizes.append(len(payload))
    # With context takeover later messages refer back to earlier ones: they shrink.
    assert sizes[-1] < len(messages()[-1]) // 5


def test_no_context_takeover_makes_each_message_stand_alone() -> None:
    d = Deflater(15, no_context_takeover=True)
    for m in messages():
        assert zlib.decompressobj(-15).decompress(d.compress(m) + TAIL) == m


@pytest.mark.parametrize("bits", [8, 9, 10, 15])
def test_window_never_exceeds_what_was_negotiated(bits: int) -> None:
    d = Deflater(bits)
    peer = zlib.decompressobj(-max(9, min(bits, 15)))
    for m in messages():
        assert peer.decompress(d.compress(m) + TAIL) == m


def test_small_window_is_the_default_cap() -> None:
    # Two identical incompressible blocks further apart than 2**WINDOW_BITS: with the capped
    # window the second cannot refer back to the first; with a full one it could.
    block = zlib.compress(bytes(range(256)) * 64)[:2048]
    data = block + b"x" * (2 << WINDOW_BITS) + block
    payload = Deflater(15).compress(data)
    assert zlib.decompressobj(-15).decompress(payload + TAIL) == data
    full = zlib.compressobj(1, zlib.DEFLATED, -15)
    full_size = len(full.compress(data) + full.flush(zlib.Z_SYNC_FLUSH))
    assert len(payload) > full_size + len(block) // 2


def test_empty_message_is_one_zero_byte() -> None:
    payload = Deflater(15).compress(b"")
    assert zlib.decompressobj(-15).decompress(payload + TAIL) == b""


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("permessage-deflate", (15, False)),
        ("permessage-deflate; server_max_window_bits=10", (10, False)),
        ('permessage-deflate; server_max_window_bits="11"', (11, False)),
        ("permessage-deflate; server_no_context_takeover", (15, True)),
        ("x-other, permessage-deflate; client_max_window_bits=12", (15, False)),
        ("", None),
        ("x-other", None),
    ],
)
def test_negotiated_parameters(header: str, expected: tuple[int, bool] | None) -> None:
    assert negotiated(header) == expected
