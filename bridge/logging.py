"""The one structlog configuration: JSON lines in production, pretty in a terminal.

Everything ends in one handler on the root logger whose formatter is structlog's
``ProcessorFormatter``: our own structlog events, stdlib logging from libraries (asyncio's
"Task exception was never retrieved", websockets, aiohttp, aiosqlite), ``warnings``, and
uncaught exceptions (main thread, other threads, "Exception ignored in ..."). So in JSON mode
every line is one JSON object and a traceback is a field of it, never loose text.
"""

from __future__ import annotations

import logging
import sys
import threading
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


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    # Belt and braces: call sites never pass secrets, but a stray kwarg must not leak one.
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


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
