"""Loading the configuration: a TOML file, then ``MOMOBRIDGE_<SECTION>__<KEY>`` environment
overrides, validated by the model tree in `bridge.config`, with errors that name the key, the file
or variable it came from, and why.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bridge.config import ENV_PREFIX, Config, ConfigError, CrossFieldError, _dotted

_SECRET_PARTS = ("code", "password", "token", "key", "secret")


def _shown(name: str, value: str) -> str:
    """``NAME=value`` for an error message; secrets and long values are not echoed."""
    key = name.rsplit("__", 1)[-1].lower()
    if any(part in key for part in _SECRET_PARTS):
        value = "***"
    elif len(value) > 60:
        value = value[:57] + "..."
    return f"{name}={value}"


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> dict[tuple[str | int, ...], str]:
    """Apply MOMOBRIDGE_A__B__C=value; a numeric part indexes a list (providers, frameworks).

    Returns the key path each variable set, mapped to ``NAME=value`` for error messages.
    """
    applied: dict[tuple[str | int, ...], str] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        loc: list[str | int] = []
        node: Any = raw
        for part in path[:-1]:
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{name}: no list entry {part} to override")
                node = node[int(part)]
                loc.append(int(part))
            elif isinstance(node, dict):
                if part.isdigit() and part not in node:  # no section has numeric keys
                    raise ConfigError(f"{name}: no list entry {part} to override")
                loc.append(part)
                if part not in node:  # a section only this variable mentions
                    node[part] = {}
                    applied.setdefault(tuple(loc), _shown(name, value))
                node = node[part]
            else:
                raise ConfigError(f"{name}: {part} is not a section")
        if isinstance(node, dict):
            node[path[-1]] = _env_value(tuple(loc), path[-1], value)
            applied[(*loc, path[-1])] = _shown(name, value)
        else:
            raise ConfigError(f"{name}: cannot set {path[-1]} here")
    return applied


def _env_value(loc: tuple[Any, ...], key: str, value: str) -> Any:
    """A variable's text as the key wants it: a list key takes a JSON array (``["a", "b"]``) or
    comma-separated items (``123,456``); anything else the text itself."""
    model = _model_at(loc)
    field = model.model_fields.get(key) if model is not None else None
    if field is None or typing.get_origin(field.annotation) is not list:
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value  # the model says what is wrong with it
    return [item.strip() for item in value.split(",") if item.strip()]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the keys at ``loc`` (for "did you mean" suggestions)."""
    annotation: Any = Config
    for part in loc:
        if isinstance(part, int):
            if typing.get_origin(annotation) is not list:
                return None
            annotation = typing.get_args(annotation)[0]
        else:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return None
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _unknown_key(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc[:-1])
    key = str(loc[-1])
    if model is not None:
        known = list(model.model_fields)
        close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
        # A shortened key ("ttl" for "ttl_days") is too short for difflib's ratio.
        close = close or [k for k in known if k.startswith(key.lower()) and len(key) >= 3][:1]
        if close:
            return f"unknown key, did you mean {close[0]!r}?"
    return "unknown key"


def _error_text(e: Any) -> str:
    if e["type"] == "extra_forbidden":
        return _unknown_key(tuple(e["loc"]))
    msg = str(e["msg"])
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validation_problems(err: ValidationError, where: str) -> list[str]:
    """Each problem of ``err`` as "<where>.<key>: why" (for tables validated outside Config)."""
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = f"{where}.{loc}" if loc else where
        text = "unknown key" if e["type"] == "extra_forbidden" else _error_text(e)
        out.append(f"{key}: {text}")
    return out


def _env_source(keys: tuple[tuple[Any, ...], ...], env: dict[tuple[Any, ...], str]) -> str | None:
    """The variable that set one of ``keys`` (or created a section above it), if any did."""
    for key in keys:
        for n in range(len(key), 0, -1):
            if key[:n] in env:
                return env[key[:n]]
    return None


def _describe(err: ValidationError, file: str | None, env: dict[tuple[Any, ...], str]) -> str:
    """One paragraph: every problem with its key, grouped by where the value came from."""
    by_source: dict[str | None, list[str]] = {}
    for e in err.errors():
        ctx = e.get("ctx") or {}
        error = ctx.get("error")
        if isinstance(error, CrossFieldError):
            items = [(p.keys, str(p)) for p in error.problems]
        else:
            loc = tuple(e["loc"])
            items = [((loc,), f"{_dotted(loc)}: {_error_text(e)}")]
        for keys, text in items:
            source = _env_source(keys, env) or file
            by_source.setdefault(source, []).append(text)
    parts = []
    for source, texts in by_source.items():
        joined = "; ".join(texts)
        parts.append(f"{source}: {joined}" if source else joined)
    return "; ".join(parts)


def load_config(
    path: str | Path | None, environ: dict[str, str] | None = None, *, must_exist: bool = False
) -> tuple[Config, bool]:
    """Load config from ``path`` (TOML) plus env overrides.

    Returns the config and whether the file existed. A missing file means built-in defaults
    unless ``must_exist``. Every problem is a ``ConfigError`` naming the key (and the variable,
    when an environment override caused it).
    """
    raw: dict[str, Any] = {}
    found = False
    if path is not None:
        p = Path(path)
        try:
            if p.is_file():
                found = True
                raw = tomllib.loads(p.read_text(encoding="utf-8"))
            elif must_exist:
                raise ConfigError(f"{p}: no such file")
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text: {e}") from e
        except OSError as e:
            raise ConfigError(_unreadable(p, e)) from e
    env = _apply_env(raw, dict(os.environ if environ is None else environ))
    try:
        return Config.model_validate(raw), found
    except ValidationError as e:
        file = str(path) if path is not None and found else None
        raise ConfigError(_describe(e, file, env)) from e


def _unreadable(path: Path, error: OSError) -> str:
    """Why the config file cannot be read, with the fix (a bind mount owned by another user is
    the usual cause in a container)."""
    where = path if path.exists() or path.parent == path else path.parent
    try:
        st = where.stat()
        owner = f"owned by uid {st.st_uid}, mode {st.st_mode & 0o777:o}; "
    except OSError:
        owner = ""
    return (
        f"{path}: cannot be read ({owner}this process runs as uid {os.getuid()}; "
        f"{error.strerror or error}). Fix: make it readable by that user, e.g. "
        f"`sudo chown -R {os.getuid()}:{os.getgid()} {path.parent}` on the host for a bind mount."
    )
