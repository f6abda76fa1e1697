"""Strict JSON for the hub wire: hostile text in, only JSON-safe values out, and valid UTF-8 JSON back.

Python's `json` is lenient where a peer can hurt us: it recurses once per nesting level (a frame of
100 000 `[` raises RecursionError), parses integers of any length (and raises an unexpected
ValueError past 4300 digits), turns `1e400` into infinity, accepts NaN/Infinity, and decodes a
`\\ud800` escape into a lone surrogate that cannot be encoded as UTF-8 when echoed back. `loads`
refuses all of these with `WireError`; `dumps` never writes them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

_SURROGATE = re.compile("[\ud800-\udfff]")
# A \uD800-\uDFFF escape; may also match an escaped backslash followed by "uD8..", which only
# costs an exact check of the parsed value.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")
_MAX_INT_CHARS = len(str(INT64_MIN))
# Any integer of up to 18 digits fits in 64 bits; a longer digit run takes the strict parser.
_LONG_DIGITS = re.compile(r"\d{19}")
# Every ASCII digit becomes "0" and every other byte a space, so one substring search (C speed,
# no regex backtracking at each digit) tells whether a run of 19 digits is anywhere in the text.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN_ZEROS = b"0" * 19


class WireError(ValueError):
    """The text is not JSON we accept; `str(e)` says why in a sentence fit for a client."""


def has_surrogate(s: str) -> bool:
    """True if `s` holds a UTF-16 surrogate code point (which UTF-8 cannot encode)."""
    return not s.isascii() and _SURROGATE.search(s) is not None


def json_hazard(value: Any, path: str = "", *, numbers: bool = True) -> tuple[str, str] | None:
    """The first value that is not safe to echo as JSON: `(path, problem)`, or None.

    Checks strings (keys too) for lone surrogates and, with `numbers`, integers outside int64 and
    non-finite floats. `path` names the field like `data.content[0].message_id`.
    """
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            if has_surrogate(v):
                return where, "contains a lone UTF-16 surrogate"
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if numbers and not INT64_MIN <= v <= INT64_MAX:
                return where, "is an integer outside the 64-bit range"
        elif isinstance(v, float):
            if numbers and not math.isfinite(v):
                return where, "is not a finite number"
        elif isinstance(v, dict):
            items = list(v.items())
            for k, item in reversed(items):
                key = k if isinstance(k, str) else str(k)
                if has_surrogate(key):
                    return where or "<root>", "has a key with a lone UTF-16 surrogate"
                if len(key) > 64:
                    key = key[:64] + "…"
                stack.append((f"{where}.{key}" if where else key, item))
        elif isinstance(v, list | tuple):
            for i in range(len(v) - 1, -1, -1):
                stack.append((f"{where}[{i}]", v[i]))
    return None


def nesting_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """True if the JSON text nests arrays/objects deeper than `limit`, judged without parsing.

    Brackets inside strings do not count: with escapes removed, every other piece between quotes
    is outside a string. Each pass then deletes every innermost `[]`/`{}` pair at C speed, so a
    balanced skeleton empties after exactly its depth in passes. Unbalanced text is left for the
    parser to reject (its recursion is caught too).
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    if "\\" in text:
        text = _ESCAPE.sub("", text)
    skeleton = _NOT_BRACKET.sub("", "".join(text.split('"')[0::2]))
    for _ in range(limit):
        reduced = _EMPTY_PAIR.sub("", skeleton)
        if not reduced or reduced == skeleton:
            return False
        skeleton = reduced
    return True


def _long_number(text: str) -> bool:
    """Whether a run of 19+ digits stands outside the strings (only such a number can pass
    64 bits). Strings are cut out at C speed first: a big text must not cost a regex pass."""
    digits = text.encode("utf-8", "surrogatepass").translate(_DIGITS_AS_ZERO)
    if _NINETEEN_ZEROS not in digits:
        return False  # a heartbeat and most frames: no run of 19 digits, in strings or not
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    return _LONG_DIGITS.search("".join(text.split('"')[0::2])) is not None


def _parse_int(s: str) -> int:
    if len(s) > _MAX_INT_CHARS:
        raise WireError("an integer is outside the 64-bit range")
    n = int(s)
    if not INT64_MIN <= n <= INT64_MAX:
        raise WireError("an integer is outside the 64-bit range")
    return n


def _parse_float(s: str) -> float:
    f = float(s)
    if not math.isfinite(f):
        raise WireError(f"the number {s[:32]} is out of range")
    return f


def _parse_constant(name: str) -> Any:
    raise WireError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)


def loads(raw: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one frame's text strictly; raise `WireError` for anything we refuse.

    Bytes must be UTF-8 (a leading BOM is allowed). Refused: invalid JSON, nesting deeper than
    `max_depth`, integers outside int64, non-finite numbers, lone surrogates anywhere.
    """
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise WireError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    else:
        text = raw
    if nesting_exceeds(text, max_depth):
        raise WireError(f"nested deeper than {max_depth} levels")
    if not _long_number(text):
        # The fast path: orjson refuses NaN/Infinity, numbers that overflow a double and lone
        # surrogates by itself, and with no run of 19 digits every integer fits in 64 bits.
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the strict path below names the problem (and the field) precisely
    try:
        obj = _DECODER.decode(text)
    except WireError:
        raise
    except RecursionError:
        raise WireError(f"nested deeper than {max_depth} levels") from None
    except ValueError as e:  # JSONDecodeError, or int() past its digit limit
        raise WireError(str(e)) from None
    raw_surrogate = not text.isascii() and _SURROGATE.search(text) is not None
    if raw_surrogate or ("\\u" in text and _SURROGATE_ESCAPE.search(text)):
        found = json_hazard(obj, numbers=False)
        if found is not None:
            where, problem = found
            raise WireError(f"{where or 'the frame'} {problem}")
    return obj


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(frame: Any) -> str:
    """Compact JSON text that always encodes as valid UTF-8 and is valid JSON.

    A guard against bugs elsewhere: NaN/Infinity become null and lone surrogates become U+FFFD
    (a surrogate pair held as two code points is joined into its character).
    """
    try:
        text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as e:
        if "Out of range float" not in str(e):
            raise
        text = json.dumps(
            _finite(frame), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    if not text.isascii() and _SURROGATE.search(text) is not None:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def dumps_bytes(frame: Any) -> bytes:
    """`dumps` as UTF-8 bytes, the way a frame goes on the wire.

    orjson writes the common frame (NaN/Infinity become null there too) at a fraction of the
    json module's cost; what it refuses (a lone surrogate, an integer past 64 bits, a key that
    is not a string) takes `dumps`, which repairs what must be repaired.
    """
    try:
        return orjson.dumps(frame)
    except (orjson.JSONEncodeError, TypeError):
        return dumps(frame).encode("utf-8")
