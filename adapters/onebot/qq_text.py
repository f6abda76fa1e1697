"""Text shaping for the QQ link: pure functions, no I/O.

A character's reply reaches QQ as several ordinary messages (one per sentence or paragraph, as a
person would type them) or, when long, as a merged forward; a group message reaches the character
as plain text. Everything here works on strings and `Segment`s only, so the session code around it
stays thin and every rule is tested with plain data.

Cutting a streamed reply (`cut_ready`) is deterministic per piece: the end of the piece that starts
at a given position depends only on the text from that position on, and a piece is handed out only
once no later text can change where it ends. So a reply cut while it streams, in any chunking,
gives exactly the pieces the whole reply gives when cut at once.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from adapters.onebot.message import ForwardNode
from bridge.models import JSON, Segment, plain_text

__all__ = [
    "cut_ready",
    "forward_nodes",
    "mentions_self",
    "quote_context",
    "reply_id",
    "split_for_limit",
    "strip_trigger",
    "to_model_text",
]

# ----- character classes ----------------------------------------------------------------------

# Sentence ends that need no space after them (CJK text has none).
_CJK_TERMS = "。！？；…｡"
_ASCII_TERMS = ".!?"
_TERMS = frozenset(_CJK_TERMS + _ASCII_TERMS)
# Closing quotes and brackets (and markdown emphasis) stay with the sentence they close.
_CLOSERS = frozenset("\"'”’」』）)]】》〉〕〗〙〛｝}］｣*_")
_TRAILERS = frozenset("~～")
# Characters a piece should not start with, and ones it should not end with (line-breaking rules
# as CJK typesetting applies them), for cuts where no sentence ends.
_NO_BREAK_BEFORE = _TERMS | _CLOSERS | frozenset("，、：,;:%ー々ゝゞヽヾっッ")
_NO_BREAK_AFTER = frozenset("「『（(【《〈〔〖〘〚［[｛{“‘\"'")
# What may separate a nickname from the rest ("momo, hi"); a letter may not ("momonga").
_NICK_SEPARATORS = frozenset(",，:：、!！?？~～")

# Characters the scanner must look at; everything else is skipped in one regex step.
_SPECIAL_RE = re.compile("[\n`" + re.escape(_CJK_TERMS + _ASCII_TERMS) + "]")
_CJK_RE = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff66-\uff9d\U00020000-\U0003134f]"
)
_WS_RE = re.compile(r"\s+")
# An abbreviation made of single letters ("e.g", "U.S", "A" of "A. Smith"), checked on the word
# before a period so that period does not end a sentence.
_LETTER_ABBREV_RE = re.compile(r"[A-Za-z](?:\.[A-Za-z])*")
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "cf", "fig", "approx"}
)
# Inline code longer than this (or running past its line) is taken as stray backticks: a lone
# backtick must not hold back a streamed reply for long.
_INLINE_CODE_MAX = 500


def _is_cjk(ch: str) -> bool:
    return _CJK_RE.match(ch) is not None


def _is_trailer(ch: str) -> bool:
    """Emoji and tildes after a sentence end belong to that sentence ("好的！😊")."""
    o = ord(ch)
    return (
        ch in _TRAILERS
        or 0x1F000 <= o <= 0x1FAFF
        or 0x2600 <= o <= 0x27BF
        or 0x2B00 <= o <= 0x2BFF
        or o in (0x200D, 0xFE0F, 0x20E3)
        or 0xE0020 <= o <= 0xE007F
    )


def _joins(prev: str, cur: str) -> bool:
    """Whether `prev` and `cur` belong to one visible character, so no cut may fall between them.

    Covers combining marks, zero-width joiner sequences, variation selectors, skin tones, tag
    sequences, keycaps, and a surrogate pair left in a badly decoded string (flags: `_splits_char`).
    """
    o, p = ord(cur), ord(prev)
    return (
        unicodedata.category(cur) in ("Mn", "Mc", "Me")
        or o == 0x200D
        or p == 0x200D
        or 0xFE00 <= o <= 0xFE0F
        or 0xE0100 <= o <= 0xE01EF
        or 0x1F3FB <= o <= 0x1F3FF
        or 0xE0020 <= o <= 0xE007F
        or o == 0x20E3
        or (0xD800 <= p <= 0xDBFF and 0xDC00 <= o <= 0xDFFF)
    )


def _is_regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _splits_char(text: str, start: int, w: int) -> bool:
    """Whether a cut at `w` splits a visible character; flags are pairs of regional indicators,
    paired from the piece start."""
    if _joins(text[w - 1], text[w]):
        return True
    if _is_regional(text[w]) and _is_regional(text[w - 1]):
        k = w
        while k > start and _is_regional(text[k - 1]):
            k -= 1
        return (w - k) % 2 == 1
    return False


def _cjk_break(prev: str, cur: str) -> bool:
    """A cut between two characters with no space, allowed next to CJK letters only."""
    if prev.isspace() or cur.isspace():
        return False
    if not (_is_cjk(prev) or _is_cjk(cur)):
        return False
    return cur not in _NO_BREAK_BEFORE and prev not in _NO_BREAK_AFTER and not _joins(prev, cur)


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos].isspace():
        pos += 1
    return pos


def _stripped_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


# ----- the scanner --------------------------------------------------------------------------------

# Events of `_scan`: (kind, a, b).
#   "sentence", "para", "block": a place to cut at `a` (end of a sentence, a blank line, before a
#       code fence opening a line or after one closing it).
#   "code": text[a:b] is code (a fence or inline code); never cut inside it.
#   "end": the scan passed `stop`, or reached the end of a final text.
#   "more": the text ends before what comes next can be known; wait for more of it.
_Event = tuple[str, int, int]


def _scan(text: str, start: int, stop: int, final: bool) -> Iterator[_Event]:
    """Walk `text` from `start` (never inside code) and report cut places and code, in order.

    Only `text[start:]` is read, and an event is reported only once later text cannot change it:
    that is what makes a streamed cut equal to a cut of the whole text.
    """
    n = len(text)
    i = start
    while True:
        if i > stop:
            yield ("end", i, i)
            return
        if i >= n:
            yield ("end" if final else "more", n, n)
            return
        ch = text[i]
        if ch == "`":
            j = i
            while j < n and text[j] == "`":
                j += 1
            if j >= n and not final:
                yield ("more", i, i)
                return
            if j - i >= 3 and i > start and _opens_line(text, start, i):
                yield ("block", i, i)
            span = _code_span(text, i, j, final)
            if span is None:
                yield ("more", i, i)
                return
            kind, end = span
            if kind != "literal":
                yield ("code", i, end)
            if kind == "fence":
                k = end
                while k < n and text[k] in " \t\r":
                    k += 1
                if k >= n and not final:
                    yield ("more", end, end)
                    return
                if k < n and text[k] == "\n":
                    yield ("block", end, end)
            i = end
        elif ch == "\n":
            j = i + 1
            while j < n and text[j] != "\n" and text[j].isspace():
                j += 1
            if j >= n and not final:
                yield ("more", i, i)
                return
            if j < n and text[j] == "\n":
                yield ("para", i, i)
                i = j
            else:
                i += 1
        elif ch in _TERMS:
            # A run reaching past `stop` would end a piece longer than allowed: stop reading it
            # there, or "!!!…" a megabyte long is read once per piece.
            j = i
            while j < n and j <= stop and text[j] in _TERMS:
                j += 1
            e = j
            while e < n and e <= stop and (text[e] in _CLOSERS or _is_trailer(text[e])):
                e += 1
            if e > stop:
                i = e
                continue
            if e >= n and not final:
                yield ("more", i, i)
                return
            if _sentence_end(text, start, i, j, e):
                yield ("sentence", e, e)
            i = e
        else:
            # Nothing else matters to the scan: jump to the next character that does.
            m = _SPECIAL_RE.search(text, i, stop + 1)
            i = m.start() if m else min(n, stop + 1)


def _opens_line(text: str, start: int, i: int) -> bool:
    k = i
    while k > start and text[k - 1] in " \t":
        k -= 1
    return k > start and text[k - 1] == "\n"


def _code_span(text: str, i: int, j: int, final: bool) -> tuple[str, int] | None:
    """What the backtick run `text[i:j]` starts: ("fence"|"inline"|"literal", end) or None.

    Three or more backticks open a fence that the next run at least as long closes (or the end of
    the text, as in Markdown); one or two open inline code closed by a run of the same length on
    the same line. A run that closes nothing is literal text. The line-start rule of Markdown
    fences is not applied: it would make the answer depend on text before the piece.
    """
    n = len(text)
    k = j - i
    if k >= 3:
        s = j
        while True:
            f = text.find("`", s)
            if f < 0:
                return ("fence", n) if final else None
            g = f
            while g < n and text[g] == "`":
                g += 1
            if g >= n and not final:
                return None
            if g - f >= k:
                return ("fence", g)
            s = g
    eol = text.find("\n", j, j + _INLINE_CODE_MAX)
    bound = eol if eol >= 0 else min(n, j + _INLINE_CODE_MAX)
    s = j
    while True:
        f = text.find("`", s, bound)
        if f < 0:
            break
        g = f
        while g < n and text[g] == "`":
            g += 1
        if g >= n and not final:
            return None
        if g - f == k:
            return ("inline", g)
        s = g
    if eol >= 0 or j + _INLINE_CODE_MAX <= n or final:
        return ("literal", j)
    return None


def _sentence_end(text: str, start: int, i: int, j: int, e: int) -> bool:
    """Whether the terminator run `text[i:j]` (closers up to `e`) ends a sentence."""
    n = len(text)
    nxt = text[e] if e < n else ""
    if any(c in _CJK_TERMS for c in text[i:j]):
        # 「…ですね。」と言った, “你好！”他说: a quote whose text runs on is part of the sentence.
        quoted = any(c in _CLOSERS for c in text[j:e])
        return not (quoted and nxt and _is_cjk(nxt))
    if not nxt:
        return True
    if nxt.isspace():
        if j - i == 1 and text[i] == "." and _period_is_not_an_end(text, start, i):
            return False
        return True
    # Half-width punctuation between CJK letters ("好的!我来") still ends a sentence.
    return i > start and _is_cjk(text[i - 1]) and _is_cjk(nxt)


def _period_is_not_an_end(text: str, start: int, i: int) -> bool:
    """A lone period after an abbreviation ("e.g.") or a list number ("2. "), not a sentence."""
    t = i
    while t > start and not text[t - 1].isspace():
        t -= 1
    word = text[t:i].lstrip("(\"'[“‘「『（")
    if _LETTER_ABBREV_RE.fullmatch(word) or word.lower() in _ABBREVIATIONS:
        return True
    if word.isdigit() and len(word) <= 3:
        k = t
        while k > start and text[k - 1] in " \t":
            k -= 1
        return k == start or text[k - 1] == "\n"
    return False


# ----- soft and hard cuts -------------------------------------------------------------------------


def _inside(starts: list[int], regions: list[tuple[int, int]], w: int) -> bool:
    # Regions come from one scan, so they are sorted and do not overlap.
    k = bisect.bisect_left(starts, w) - 1
    return k >= 0 and regions[k][1] > w


# A space or line end with no space before it: where a run of whitespace starts.
_WS_START_RE = re.compile(r"(?<=\S)\s")


def _soft_cut(
    text: str, start: int, limit: int, regions: list[tuple[int, int]], lo: int
) -> int | None:
    """The best cut in [lo, limit] where no sentence ends: a line end in the second half of the
    window, else the last space or CJK letter boundary; never inside code."""
    lo = max(lo, start + 1)
    if lo > limit:
        return None
    starts = [a for a, _ in regions]
    mid = max(lo, start + (limit - start) // 2)
    w = text.rfind("\n", mid, limit + 1)
    while w >= mid:
        if not _inside(starts, regions, w):
            return w
        w = text.rfind("\n", mid, w)
    best = None
    for w in reversed([m.start() for m in _WS_START_RE.finditer(text, lo, limit + 1)]):
        if not _inside(starts, regions, w):
            best = w
            break
    for c in reversed([m.start() for m in _CJK_RE.finditer(text, lo - 1, limit + 1)]):
        for w in (c + 1, c):
            if best is not None and w <= best:
                return best
            if lo <= w <= limit and _cjk_break(text[w - 1], text[w]):
                if not _inside(starts, regions, w):
                    return w
    return best


def _hard_cut(text: str, start: int, limit: int) -> int:
    """`limit`, moved back so no visible character is split (unless it is longer than the piece)."""
    h = limit
    while h > start + 1 and _splits_char(text, start, h):
        h -= 1
    if _splits_char(text, start, h):
        return limit
    return h


def _fallback(text: str, start: int, limit: int, regions: list[tuple[int, int]], lo: int) -> int:
    """Where a piece with no usable sentence end within `limit` ends."""
    w = _soft_cut(text, start, limit, regions, lo)
    if w is not None:
        return w
    for a, b in regions:
        if a < limit < b:
            # Code covers the limit: end before it if there is text before it, else after it.
            return a if a > start else b
    return _hard_cut(text, start, limit)


# ----- streaming cuts -----------------------------------------------------------------------------


def _next_cut(text: str, pos: int, final: bool, min_chars: int, max_chars: int) -> int | None:
    """End of the piece starting at `pos`, or None while more text could still move it."""
    n = len(text)
    start = _skip_ws(text, pos)
    if start >= n:
        return n if final else None
    limit = start + max_chars
    regions: list[tuple[int, int]] = []
    for kind, a, b in _scan(text, start, limit, final):
        if kind == "more":
            return None
        if kind == "code":
            regions.append((a, b))
            continue
        if kind == "end":
            if final and a >= n and _stripped_end(text, start, n) - start <= max_chars:
                return n
            return _fallback(text, start, limit, regions, start + max(min_chars, 1))
        length = _stripped_end(text, start, a) - start
        if min_chars <= length <= max_chars:
            return a
    raise AssertionError("unreachable: the scan always ends with 'end' or 'more'")


def cut_ready(
    buffer: str, *, final: bool = False, min_chars: int = 12, max_chars: int = 600
) -> tuple[list[str], str]:
    """Split a streamed reply into pieces ready to send to QQ now, and the rest to keep.

    A reply is sent as several QQ messages the way a person types: a piece ends at a blank line or
    at the end of a sentence (`。！？；…`, `.!?` before a space; closing quotes and brackets stay
    with it), never inside code. A piece shorter than `min_chars` runs on into the next (no "OK." on
    its own); a piece with no sentence end within `max_chars` is cut at the last line end, space or
    CJK letter boundary, or hard at `max_chars`. Code is never cut, so a code block may make a piece
    longer than `max_chars`: QQ's own limit is `split_for_limit`'s job.

    Call it again with the returned rest plus what streamed in since. With `final` everything left
    is returned as pieces (the last one may be short). Pieces are trimmed; empty ones are dropped.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    min_chars = min(max(min_chars, 0), max_chars)
    pieces: list[str] = []
    pos = 0
    n = len(buffer)
    while pos < n:
        cut = _next_cut(buffer, pos, final, min_chars, max_chars)
        if cut is None:
            break
        piece = buffer[pos:cut].strip()
        if piece:
            pieces.append(piece)
        pos = cut
    return pieces, buffer[pos:]


# ----- splitting to a hard limit -----------------------------------------------------------------


def split_for_limit(text: str, limit: int) -> list[str]:
    """Split `text` into messages of at most `limit` characters, as few as the limit allows.

    QQ implementations reject or truncate long messages (LLOneBot answers retcode 1200), so a long
    text is sent as several. Each message is filled as far as a good cut allows: a blank line, then
    a sentence end, then a line end or space (outside code first), then a hard cut. Only whitespace
    at the cuts is lost.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    parts: list[str] = []
    n = len(text)
    pos = _skip_ws(text, 0)
    while pos < n:
        if _stripped_end(text, pos, n) - pos <= limit:
            parts.append(text[pos:n].strip())
            break
        cut = _limit_cut(text, pos, limit)
        parts.append(text[pos:cut].strip())
        pos = _skip_ws(text, cut)
    return parts


def _limit_cut(text: str, start: int, limit: int) -> int:
    stop = start + limit
    regions: list[tuple[int, int]] = []
    last: dict[str, int] = {}
    for kind, a, b in _scan(text, start, stop, True):
        if kind == "code":
            regions.append((a, b))
        elif kind in ("para", "sentence", "block"):
            if _stripped_end(text, start, a) - start <= limit:
                last["para" if kind == "para" else "sentence"] = a
        elif kind == "end":
            break
    # A cut in the first half of the window would make many short messages; take one there only
    # when nothing fits the second half.
    half = start + max(limit // 2, 1)
    for kind in ("para", "sentence"):
        if last.get(kind, -1) >= half:
            return last[kind]
    w = _soft_cut(text, start, stop, regions, half)
    if w is not None:
        return w
    candidates = list(last.values())
    w = _soft_cut(text, start, stop, regions, start + 1)
    if w is not None:
        candidates.append(w)
    if candidates:
        return max(candidates)
    # Only code (or one unbroken word) in the window: a line end or space even inside code.
    w = _soft_cut(text, start, stop, [], start + 1)
    return w if w is not None else _hard_cut(text, start, stop)


def forward_nodes(text: str, *, name: str, uin: int | str, node_chars: int = 1500) -> list[JSON]:
    """A long reply as the `messages` of a merged forward: one custom node per part of the text.

    A merged forward carries text that is too long for one QQ message. Each node carries both
    spellings of the sender: NapCat reads `user_id ?? uin` and `nickname || name`; go-cqhttp reads
    `[user_id,uin]` and `[name,nickname]` (older builds only `uin`, as a string, and `name`);
    LLOneBot documents `user_id`/`nickname`. The same values under both names cannot disagree.
    go-cqhttp drops a node without a name, so an empty `name` falls back to the uin.
    """
    uin_s = str(uin)
    nickname = name if name.strip() else uin_s
    return [
        ForwardNode(user_id=uin_s, nickname=nickname, content=[Segment.text(part)]).to_json()
        for part in split_for_limit(text, node_chars)
    ]


# ----- group triggers -----------------------------------------------------------------------------


def _is_self_at(seg: Segment, self_id: int) -> bool:
    if seg.type != "at" or not isinstance(seg.data, Mapping):
        return False
    qq = seg.data.get("qq")
    return qq is not None and str(qq).strip() == str(self_id)


def mentions_self(segments: list[Segment], self_id: int) -> bool:
    """Whether the message @-mentions the bot itself (an @all does not count)."""
    return any(_is_self_at(s, self_id) for s in segments)


def reply_id(segments: list[Segment]) -> str | None:
    """The id of the message this one quotes, as a string (QQ ids can be negative), or None."""
    for seg in segments:
        if seg.type == "reply" and isinstance(seg.data, Mapping):
            value = seg.data.get("id")
            if isinstance(value, bool) or not isinstance(value, str | int):
                continue
            s = str(value).strip()
            if s:
                return s
    return None


def _ascii_lower(s: str) -> str:
    # Not str.lower(): it changes non-ASCII letters and can change the length ("İ").
    return s.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _text_of(seg: Segment) -> str:
    # As plain_text reads it, so offsets into plain_text(segments) fall where they should.
    return str(seg.data.get("text", "")) if isinstance(seg.data, Mapping) else ""


def _drop_self_ats(segments: list[Segment], self_id: int) -> tuple[bool, list[Segment]]:
    out: list[Segment] = []
    found = False
    strip_space = False
    for seg in segments:
        if _is_self_at(seg, self_id):
            found = True
            strip_space = True
            continue
        if strip_space and seg.type == "text":
            text = _text_of(seg)
            if text.startswith(" "):
                text = text[1:]
                if not text:
                    strip_space = False
                    continue
                seg = Segment.text(text)
        strip_space = False
        out.append(seg)
    return found, out


def _remove_text_span(segments: list[Segment], a: int, b: int) -> list[Segment]:
    """Remove characters a..b of the message's plain text (its text segments joined)."""
    out: list[Segment] = []
    offset = 0
    for seg in segments:
        if seg.type != "text":
            out.append(seg)
            continue
        text = _text_of(seg)
        lo, hi = offset, offset + len(text)
        offset = hi
        if hi <= a or lo >= b:
            out.append(seg)
            continue
        kept = text[: max(a - lo, 0)] + text[max(b - lo, 0) :]
        if kept:
            out.append(Segment.text(kept))
    return out


def _match_call(text: str, prefixes: Sequence[str], nicknames: Sequence[str]) -> int | None:
    """Length of the prefix or nickname (with its separator) that `text` starts with, or None."""
    folded = _ascii_lower(text)
    words = [(p, False) for p in prefixes if p] + [(w, True) for w in nicknames if w]
    # Longest first: "小桃子" must win over "小桃".
    for word, is_nick in sorted(words, key=lambda w: -len(w[0])):
        if not folded.startswith(_ascii_lower(word)):
            continue
        end = len(word)
        if is_nick and end < len(text):
            nxt = text[end]
            if not (nxt.isspace() or nxt in _NICK_SEPARATORS):
                continue
        # The separator goes with the call: "momo, hi" leaves "hi".
        end = _skip_ws(text, end)
        if end < len(text) and text[end] in _NICK_SEPARATORS:
            end = _skip_ws(text, end + 1)
        return end
    return None


def strip_trigger(
    segments: list[Segment],
    *,
    self_id: int,
    prefixes: Sequence[str],
    nicknames: Sequence[str],
    reply_to_bot: bool,
) -> tuple[bool, list[Segment]]:
    """Whether a group message is meant for the bot, and the message without what called it.

    In a group the bot answers only when called: @-mentioned (not @all), replied to, or addressed
    by a prefix ("#", "小桃") or a nickname at the start of the text. ASCII is matched without
    case; a nickname must be followed by a separator or the end, so "momo" does not answer
    "momonga". The @ (and one space after it) and the prefix or nickname (and its separator) are
    removed, so the character reads only what was said to it.
    """
    mentioned, out = _drop_self_ats(list(segments), self_id)
    plain = plain_text(out)
    lead = len(plain) - len(plain.lstrip())
    called = _match_call(plain[lead:], prefixes, nicknames)
    if called is not None:
        out = _remove_text_span(out, 0, lead + called)
    triggered = mentioned or reply_to_bot or called is not None
    return triggered, (_merge_texts(out) if triggered else list(segments))


def _is_str_text(seg: Segment) -> bool:
    return (
        seg.type == "text"
        and isinstance(seg.data, Mapping)
        and isinstance(seg.data.get("text"), str)
    )


def _merge_texts(segments: list[Segment]) -> list[Segment]:
    # "hi @bot there" leaves "hi " and "there": one text segment, as the message reads.
    out: list[Segment] = []
    for seg in segments:
        if out and _is_str_text(seg) and _is_str_text(out[-1]):
            out[-1] = Segment.text(_text_of(out[-1]) + _text_of(seg))
        else:
            out.append(seg)
    return out


# ----- what a text-only model reads -----------------------------------------------------------------

_CARD_TYPES = frozenset({"json", "xml", "miniapp", "contact"})
_PLACEHOLDER_TYPE_RE = re.compile(r"[^A-Za-z0-9_.\-]")


def _str_field(data: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _web_url(data: Mapping[str, Any]) -> str:
    for key in ("url", "file"):
        value = data.get(key)
        if isinstance(value, str):
            value = value.strip()
            if value.lower().startswith(("http://", "https://")) and not _WS_RE.search(value):
                return value
    return ""


def _media(label: str, data: Mapping[str, Any]) -> str:
    url = _web_url(data)
    return f"[{label}: {url}]" if url else f"[{label}]"


def _segment_text(seg: Segment) -> str:
    data: Mapping[str, Any] = seg.data if isinstance(seg.data, Mapping) else {}
    kind = seg.type if isinstance(seg.type, str) else str(seg.type)
    if kind == "text":
        value = data.get("text")
        if value is None:
            return ""
        return value if isinstance(value, str) else str(value)
    if kind == "image":
        return _media("image", data)
    if kind == "record":
        return _media("voice", data)
    if kind == "video":
        return _media("video", data)
    if kind == "face":
        face = data.get("id")
        if isinstance(face, str | int) and not isinstance(face, bool) and str(face).strip():
            return f"[face:{str(face).strip()}]"
        return "[face]"
    if kind == "at":
        who = _str_field(data, "name", "qq")
        if not who:
            qq = data.get("qq")
            who = str(qq) if isinstance(qq, int) and not isinstance(qq, bool) else ""
        return f"@{who}" if who else "@"
    if kind == "reply":
        return ""  # the caller adds the quoted message as context of its own
    if kind in ("forward", "node"):
        return "[forwarded messages]"
    if kind in _CARD_TYPES:
        return "[card]"
    if kind == "markdown":
        content = data.get("content")
        return content if isinstance(content, str) and content.strip() else "[markdown]"
    if kind == "mface":
        summary = _str_field(data, "summary").strip("[]")
        return f"[sticker: {summary}]" if summary else "[sticker]"
    if kind == "file":
        name = _str_field(data, "name", "file")
        return f"[file: {name}]" if name else "[file]"
    label = _PLACEHOLDER_TYPE_RE.sub("", kind)[:20]
    return f"[{label}]" if label else "[unsupported]"


def to_model_text(segments: list[Segment]) -> str:
    """What a text-only character reads of a QQ message.

    Text as is; media become bracketed notes with their web address (the model may be able to
    fetch it); everything a text model cannot see becomes a short placeholder, so it knows
    something was there. A quoted message (`reply`) is left out: the caller adds it as context.
    Odd segment data (missing or non-string fields) gives a placeholder, never an error.
    """
    return "".join(_segment_text(s) for s in segments if isinstance(s, Segment))


def quote_context(name: str, text: str, max_chars: int = 300) -> str:
    """A one-line note of the message being replied to, put before the user's own text.

    The character needs to know what "this" refers to in a reply, but not the whole quoted
    message: it is collapsed to one line and cut to `max_chars` with an ellipsis.
    """
    who = _WS_RE.sub(" ", name).strip()
    body = _WS_RE.sub(" ", text).strip()
    max_chars = max(max_chars, 1)
    if len(body) > max_chars:
        body = body[: _hard_cut(body, 0, max_chars - 1) if max_chars > 1 else 0].rstrip() + "…"
    head = f"quoting {who}" if who else "quoting"
    return f"[{head}: {body}]\n" if body else f"[{head}]\n"
