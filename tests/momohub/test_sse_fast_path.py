"""The one-step path for MomoHub's usual block against the per-line parser it shortcuts.

A parser whose fast path is switched off is the reference: for random streams made of the
quirks the module doc lists (bare lines, blank lines inside tokens, comments, `[DONE]`, ids,
unnamed events, CR/CRLF) and random chunkings, both must give exactly the same events.
"""

from __future__ import annotations

import random

import pytest

from adapters.momohub.sse import SSEEvent, SSEParser


class PerLineParser(SSEParser):
    def _lines(self, lines: list[str], out: list[SSEEvent]) -> None:
        for line in lines[:-1]:
            self._line(line, out)
        self._buf = lines[-1]


PIECES = [
    "event: delta\ndata: tok\n\n",
    "event: delta\ndata:tok\n\n",
    "event:delta\ndata: two words\n\n",
    "event: delta\ndata: \n\n",
    "event: delta\ndata: line1\nbare line\n\n",
    "event: delta\ndata: a\n\nafter a blank line\n\n",
    "event: delta\ndata: ends in newlines\n\n\n\n",
    "event: delta\ndata: x\nevent: not a field\n\n",
    "event: delta\ndata: x\ndata: y\n\n",
    "event: done\ndata: {}\n\n",
    'event: error\ndata: {"message": "boom"}\n\n',
    "data: [DONE]\n\n",
    'data: {"content": "json"}\n\n',
    ": heartbeat\n\n",
    "id: 7\nevent: delta\ndata: with id\n\n",
    "event: delta\nid: 8\ndata: id between\n\n",
    "retry: 10\n\n",
    "event: delta\ndata: 中文 ✓\n\n",
    "event: delta\r\ndata: crlf\r\n\r\n",
    "event : spaced name\ndata: y\n\n",
    "note: hi\n\n",
    "\n",
]


def parse(parser: SSEParser, data: bytes, cuts: list[int]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    last = 0
    for cut in [*cuts, len(data)]:
        out += parser.feed(data[last:cut])
        last = cut
    return out + parser.close()


@pytest.mark.parametrize("seed", range(300))
def test_fast_path_matches_the_per_line_parser(seed: int) -> None:
    rng = random.Random(seed)
    pieces = PIECES if seed % 3 else [p for p in PIECES if "\r" not in p]
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
    if rng.random() < 0.2:
        text = text.rstrip("\n")  # an unterminated last event
    data = text.encode()
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
    assert parse(SSEParser(), data, cuts) == parse(PerLineParser(), data, cuts)


def test_a_burst_of_usual_blocks_in_one_read() -> None:
    data = b"".join(b"event: delta\ndata: t%d\n\n" % i for i in range(50)) + b"event: done\n"
    parser = SSEParser()
    events = parser.feed(data)
    assert [e.data for e in events] == [f"t{i}" for i in range(50)]
    assert all(e.event == "delta" and not e.continuation for e in events)
    # The unfinished block waits for its data line and blank line.
    assert parser.feed(b"data: {}\n\n") == [SSEEvent("event", event="done", data="{}")]
