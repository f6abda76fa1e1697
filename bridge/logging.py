"""The one structlog configuration: JSON lines in production, pretty in a terminal.

Everything ends in one handler on the root logger whose formatter is structlog's
``ProcessorFormatter``: our own structlog events, stdlib logging from libraries (asyncio's
"Task exception was never retrieved", websockets, aiohttp, aiosqlite), ``warnings``, and
uncaught exceptions (main thread, other threads, "Exception ignored in ..."). So in JSON mode
every line is one JSON object and a traceback is a field of it, never loose text.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections import deque
from types import TracebackType
from typing import Any

import structlog

_SECRET_KEYS = {
    "token",
    "password",
    "admin_code",
    "user_code",
    "api_key",
    "access_token",
    "refresh_token",
    "mio-chat-token",
    "authorization",
}

# Loggers of this project: they log at the configured level. Everything else (libraries) is
# held at WARNING or above even when debugging: library debug output is noise, and some of it
# (websockets' handshake headers) would carry credentials.
_OWN_LOGGERS = ("bridge", "adapters", "storage", "plugins", "momobridge")


# Key names that mark a secret wherever they appear in a field's name (`x_api_key`, `Cookie`).
_SECRET_PARTS = ("token", "password", "secret", "api_key", "authorization", "cookie", "csrf")


def _secret_key(key: str) -> bool:
    k = key.lower()
    return k in _SECRET_KEYS or any(part in k for part in _SECRET_PARTS)


def _redacted(value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict) and depth < 4:
        return {
            k: "***" if isinstance(k, str) and _secret_key(k) else _redacted(v, depth + 1)
            for k, v in value.items()
        }
    return value


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    # Belt and braces: call sites never pass secrets, but a stray kwarg (or a header dict) must
    # not leak one.
    for key in list(event):
        if _secret_key(key):
            event[key] = "***"
        elif isinstance(event[key], dict):
            event[key] = _redacted(event[key])
    return event


# Events the admin console's log view can show (the newest first to go past this); each field
# cut to this many characters, so one huge event cannot hold much memory.
RECENT_SIZE = 2000
# Fields the log output carries on purpose but the console must not show (the generated admin
# code is printed once for whoever reads the container's log; a console session must not be a
# way to read the code that made it).
_CONSOLE_HIDDEN = {"admin_code.generated": ("code",)}
RECENT_FIELD_MAX = 500
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class RecentLogs:
    """A bounded ring of the latest log events, as the console shows them: a structlog
    processor (in the chain of every entry that passed the level filter) that copies each event
    and passes it on unchanged. Threads log too (``asyncio.to_thread``), hence the lock."""

    def __init__(self, size: int = RECENT_SIZE) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, _: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        hidden = _CONSOLE_HIDDEN.get(str(event.get("event", "")), ())
        fields = {
            k: "***" if k in hidden else _short(v)
            for k, v in event.items()
            if k not in ("event", "level", "timestamp", "logger") and not k.startswith("_")
        }
        entry = {
            "time": time.time(),
            "level": str(event.get("level", method)).lower(),
            "event": _short(event.get("event", "")),
            "logger": _short(event.get("logger", "")),
            "fields": fields,
        }
        with self._lock:
            entry["seq"] = next(self._seq)
            self._ring.append(entry)
        return event

    def since(
        self, after: int = 0, *, level: str = "", conversation: str = "", limit: int = 200
    ) -> list[dict[str, Any]]:
        """Events after sequence number ``after``, at ``level`` or above, whose conversation or
        user field contains ``conversation``; the newest ``limit`` of them, oldest first."""
        floor = _LEVELS.get(level.lower(), 0)
        with self._lock:
            entries = [e for e in self._ring if e["seq"] > after]
        picked = [
            e
            for e in entries
            if _LEVELS.get(e["level"], 0) >= floor
            and (not conversation or _mentions(e["fields"], conversation))
        ]
        return picked[-limit:] if limit > 0 else []


def _short(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= RECENT_FIELD_MAX else text[: RECENT_FIELD_MAX - 1] + "…"


def _mentions(fields: dict[str, Any], needle: str) -> bool:
    # The keys a conversation is bound under (contextvars) or logged with at the call site.
    for key in ("conversation", "user", "user_id", "contact", "key"):
        value = fields.get(key)
        if value is not None and needle in str(value):
            return True
    return False


# The process's one ring: logging is configured once per process, like the ring.
RECENT_LOGS = RecentLogs()


def ensure_recent_logs() -> None:
    """Put the ring (after the redaction) into structlog's chain if `configure_logging` has not:
    a bridge run in-process (the tests, an embedding program) keeps the structlog setup it was
    given, and its console's log view would stay empty. Inserted just before the chain's last
    processor (its renderer), so what is printed stays as it was, but for redacted secrets."""
    processors = list(structlog.get_config()["processors"])
    if any(p is RECENT_LOGS for p in processors):
        return
    at = max(0, len(processors) - 1)
    processors[at:at] = [_redact, RECENT_LOGS]
    structlog.configure(processors=processors)


class _PeerErrorFilter(logging.Filter):
    """aiohttp logs each malformed HTTP request at ERROR with a traceback, although it is the
    client's error and already answered with 400: any remote peer could flood the log with
    them. Dropped; a handler's own crash is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not any(
            c.__name__ == "HttpProcessingError" for c in type(exc).__mro__
        )


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler installed by `configure_logging` (recognised and replaced on reconfigure)."""


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    structlog.get_logger("momobridge").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    structlog.get_logger("momobridge").critical(
        "uncaught_exception",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _unraisablehook(args: Any) -> None:
    # "Exception ignored in: <obj>" (a failing __del__, a callback that raised during shutdown).
    structlog.get_logger("momobridge").error(
        "exception_ignored",
        message=args.err_msg or "Exception ignored in",
        object=None if args.object is None else repr(args.object),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # Run for every entry, structlog's and stdlib's alike.
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        # After the redaction: the console never shows what the log file would not.
        RECENT_LOGS,
    ]
    if use_json:
        # The traceback becomes the "exception" field of the same JSON line.
        final: list[Any] = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _Handler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(numeric)
    server_log = logging.getLogger("aiohttp.server")
    for old_filter in [f for f in server_log.filters if isinstance(f, _PeerErrorFilter)]:
        server_log.removeFilter(old_filter)
    server_log.addFilter(_PeerErrorFilter())
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook
