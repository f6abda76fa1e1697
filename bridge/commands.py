"""Chat commands: what a command is, how its text is split into typed arguments, and the registry
that finds one by name or alias. Pure: no I/O, no awaits; running them is `plugins`' job.

A command line is ``<prefix><name> [sub-command] [arguments]``. Arguments are separated by
spaces; a double-quoted argument may hold spaces (``"*/5 * * * *"``, with ``\\"`` for a quote);
apostrophes are ordinary characters, so ``/persona set I'm a cat`` needs no quoting. The last
argument may take the rest of the line as it was typed (`Arg(rest=True)`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.models import ConversationKey, UserRef

# Longest name or alias; longer words after a prefix are not commands.
MAX_NAME = 32


class UsageError(Exception):
    """The arguments do not fit the command; the message says why."""


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: converted with ``kind`` (str, int or float); ``rest`` takes the remaining
    text as typed (last argument only); ``optional`` ones may be left out (then ``default``)."""

    name: str
    kind: type = str
    optional: bool = False
    rest: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()

    def usage(self) -> str:
        label = f"{self.name}..." if self.rest else self.name
        if self.choices:
            label = "|".join(self.choices)
        return f"[{label}]" if self.optional else f"<{label}>"


@dataclass(slots=True)
class Invocation:
    """What a command's handler gets: where it was typed, by whom, and its arguments.

    ``reply`` answers in that conversation as ordinary messages, whatever the edge."""

    key: ConversationKey
    caller: UserRef
    args: dict[str, Any]
    line: str
    command: Command
    prefix: str
    reply: Callable[[str], Awaitable[None]]
    # The command line's stored message id (0 where it is not stored: `openai/completions`).
    message_id: int = 0


Handler = Callable[[Invocation], Awaitable[None]]


@dataclass(slots=True)
class Command:
    name: str
    handler: Handler | None
    help: str = ""
    aliases: tuple[str, ...] = ()
    args: tuple[Arg, ...] = ()
    usage_text: str = ""
    admin_only: bool = False
    plugin: str = ""
    parent: Command | None = None
    subcommands: dict[str, Command] = field(default_factory=dict)
    # It starts the conversation afresh (`/reset`): where a client resends the whole history
    # (`openai/completions`), what came before its line is not sent on.
    clears_context: bool = False

    def __post_init__(self) -> None:
        # Names match in any case: stored folded, looked up folded.
        self.name = self.name.lower()
        self.aliases = tuple(a.lower() for a in self.aliases)
        for i, arg in enumerate(self.args):
            if arg.rest and i != len(self.args) - 1:
                raise ValueError(f"/{self.name}: only the last argument may take the rest")
        seen_optional = False
        for arg in self.args:
            if seen_optional and not arg.optional:
                raise ValueError(f"/{self.name}: a required argument after an optional one")
            seen_optional |= arg.optional

    @property
    def path(self) -> str:
        return f"{self.parent.path} {self.name}" if self.parent else self.name

    def usage(self, prefix: str = "/") -> str:
        if self.usage_text:
            return f"{prefix}{self.path} {self.usage_text}".rstrip()
        if self.subcommands and self.handler is None:
            subs = "|".join(sorted(self.subcommands))
            return f"{prefix}{self.path} <{subs}> ..."
        parts = [f"{prefix}{self.path}", *(a.usage() for a in self.args)]
        return " ".join(parts)

    def sub(
        self,
        name: str,
        *,
        help: str = "",
        args: tuple[Arg, ...] = (),
        usage: str = "",
        admin_only: bool = False,
        aliases: tuple[str, ...] = (),
    ) -> Callable[[Handler], Handler]:
        """Register a sub-command (``/schedule add ...``) with its own arguments."""

        def register(fn: Handler) -> Handler:
            child = Command(
                name,
                fn,
                help=help,
                aliases=aliases,
                args=args,
                usage_text=usage,
                admin_only=admin_only or self.admin_only,
                plugin=self.plugin,
                parent=self,
            )
            for word in (child.name, *child.aliases):
                if word in self.subcommands:
                    raise ValueError(f"/{self.path} {word} is registered twice")
                self.subcommands[word] = child
            return fn

        return register


def next_word(text: str, i: int = 0) -> tuple[str, int] | None:
    """The word starting at or after ``i`` and the offset where it ends, or None at the end.
    Double quotes group (``\\"`` escapes a quote inside them)."""
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    if i >= n:
        return None
    if text[i] != '"':
        start = i
        while i < n and not text[i].isspace():
            i += 1
        return text[start:i], i
    i += 1
    buf: list[str] = []
    while i < n and text[i] != '"':
        if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\':
            i += 1
        buf.append(text[i])
        i += 1
    if i >= n:
        raise UsageError("a quote is not closed")
    return "".join(buf), i + 1


def _convert(arg: Arg, word: str) -> Any:
    if arg.choices and word.lower() not in arg.choices:
        raise UsageError(f"{arg.name} must be one of {', '.join(arg.choices)}")
    if arg.kind is int:
        try:
            return int(word)
        except ValueError:
            raise UsageError(f"{arg.name} must be a whole number, not {word[:40]!r}") from None
    if arg.kind is float:
        try:
            value = float(word)
        except ValueError:
            raise UsageError(f"{arg.name} must be a number, not {word[:40]!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise UsageError(f"{arg.name} must be a finite number")
        return value
    return word.lower() if arg.choices else word


def _leading_sub(command: Command, text: str) -> tuple[Command, str] | None:
    """The sub-command ``text`` starts with, and the text after its name; None if none."""
    try:
        first = next_word(text)
    except UsageError:
        return None
    if first is None or first[0].lower() not in command.subcommands:
        return None
    return command.subcommands[first[0].lower()], text[first[1] :]


def named_sub(command: Command, text: str) -> Command:
    """The deepest (sub-)command ``text`` names under ``command`` (whose usage a mistake in
    its arguments shows)."""
    while (found := _leading_sub(command, text)) is not None:
        command, text = found
    return command


def bind(command: Command, text: str) -> tuple[Command, dict[str, Any]]:
    """The (sub-)command ``text`` names under ``command`` and its converted arguments.

    Raises UsageError when they do not fit (the caller shows that command's usage)."""
    if command.subcommands:
        found = _leading_sub(command, text)
        if found is not None:
            return bind(*found)
        first = next_word(text)
        if command.handler is None:
            if first is not None:
                raise UsageError(f"unknown sub-command {first[0][:40]!r}")
            raise UsageError("a sub-command is needed")
    values: dict[str, Any] = {}
    at = 0
    for arg in command.args:
        if arg.rest:
            # As typed: quotes and spacing inside the rest are the user's text.
            rest = text[at:].strip()
            if not rest and not arg.optional:
                raise UsageError(f"{arg.name} is missing")
            values[arg.name] = rest or arg.default
            at = len(text)
            continue
        word = next_word(text, at)
        if word is None:
            if not arg.optional:
                raise UsageError(f"{arg.name} is missing")
            values[arg.name] = arg.default
            continue
        values[arg.name] = _convert(arg, word[0])
        at = word[1]
    extra = next_word(text, at)
    if extra is not None:
        raise UsageError(f"unexpected {extra[0][:40]!r}")
    return command, values


class CommandRegistry:
    def __init__(self) -> None:
        self._by_word: dict[str, Command] = {}
        self._commands: list[Command] = []

    def add(self, command: Command) -> None:
        words = (command.name, *command.aliases)
        for word in words:
            if not word or len(word) > MAX_NAME or any(c.isspace() for c in word):
                raise ValueError(f"bad command name {word!r}")
            if word in self._by_word:
                owner = self._by_word[word].plugin
                raise ValueError(f"/{word} is already registered by plugin {owner}")
        for word in words:
            self._by_word[word] = command
        self._commands.append(command)

    def remove_plugin(self, plugin: str) -> None:
        """Forget what a plugin registered (its setup failed half way)."""
        self._commands = [c for c in self._commands if c.plugin != plugin]
        self._by_word = {w: c for w, c in self._by_word.items() if c.plugin != plugin}

    def find(self, word: str) -> Command | None:
        return self._by_word.get(word.lower())

    def all(self) -> list[Command]:
        return list(self._commands)

    def visible_to(self, is_admin: bool) -> list[Command]:
        return [c for c in self._commands if is_admin or not c.admin_only]


def parse_line(text: str, prefixes: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(prefix, name, the rest) if ``text`` is a command line, else None.

    A prefix alone, or followed by a space, is not a command (``/ hello`` is text); neither is
    a word longer than any command name could be (a path such as ``/usr/bin/env``)."""
    stripped = text.lstrip()
    for prefix in sorted(prefixes, key=len, reverse=True):
        if not prefix or not stripped.startswith(prefix):
            continue
        body = stripped[len(prefix) :]
        if not body or body[0].isspace():
            return None
        end = 0
        while end < len(body) and not body[end].isspace():
            end += 1
        name = body[:end]
        if len(name) > MAX_NAME or "/" in name:
            return None
        return prefix, name, body[end:]
    return None
