"""What an `openai/completions` request passes before its model: commands, filters, persona.

There the client keeps the conversation and resends all of it with each request, so:
- its newest user message, when it is a command line, is answered by the command (as the
  completion's text) and nothing goes upstream;
- earlier command lines and the answers the client kept for them are left out of what goes
  upstream, and so is everything before the last `/reset` (a command that clears the context);
- the input filters see the newest user message; the stream and reply filters see the reply;
- a model conversation's persona (`/persona set`) goes upstream as a system message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bridge.commands import parse_line
from bridge.errors import BridgeError
from bridge.models import JSON, CompletionRequest, ConversationKey, Delta, Done, ReplyEvent
from bridge.router import Router
from bridge.stream_filters import Consume

if TYPE_CHECKING:
    from bridge.plugins import PluginHost, Say


def content_text(content: Any) -> str:
    """The text of an OpenAI message's ``content`` (a string, or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _with_text(message: JSON, text: str) -> JSON:
    """``message`` with its text replaced (in the first text part, other text parts dropped)."""
    content = message.get("content")
    if not isinstance(content, list):
        return {**message, "content": text}
    parts: list[Any] = []
    placed = False
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            if not placed:
                placed = True
                parts.append({**part, "text": text})
            continue
        parts.append(part)
    return {**message, "content": parts}


def conversation_key(target: Any, request: CompletionRequest) -> ConversationKey:
    """The conversation a completion belongs to: the target's own notion (a character's chat
    is the same as by `onebot/message`), else the model's thread ``conversation_id``."""
    key_of = getattr(target, "conversation_key", None)
    if key_of is not None:
        return key_of(request)
    # A target whose models have contacts of their own (a MOMO AI agent) names that contact.
    contact_of = getattr(target, "completion_contact", None)
    contact = contact_of(request.model) if contact_of is not None else f"model:{request.model}"
    return ConversationKey(request.user.id, contact, request.conversation_id)


@dataclass(slots=True)
class Plan:
    """What to do with a completion: send ``request`` upstream, or answer it here with a
    command (``command``, its line) or with an input filter's answer (``notice``)."""

    request: CompletionRequest
    command: str | None = None
    notice: str | None = None


def without_commands(messages: list[JSON], plugins: PluginHost) -> list[JSON]:
    """The history without command lines and their answers, and without what came before the
    last command that clears the context (the client's leading system messages stay)."""
    out: list[JSON] = []
    skipping = False
    for message in messages:
        role = message.get("role")
        if role == "user":
            parsed = parse_line(content_text(message.get("content")), plugins.prefixes)
            if parsed is not None:
                command = plugins.commands.find(parsed[1])
                if command is not None and command.clears_context:
                    lead = 0
                    while lead < len(out) and out[lead].get("role") == "system":
                        lead += 1
                    out = out[:lead]
                skipping = True
                continue
            skipping = False
        elif role == "assistant" and skipping:
            continue
        out.append(message)
    return out


async def _say_nothing(key: ConversationKey, text: str) -> None:
    return None


async def filtered_history(
    messages: list[JSON], plugins: PluginHost, key: ConversationKey, request: CompletionRequest
) -> list[JSON]:
    """The history through the input filters, as each message was when it was new: a message
    a filter blocked is left out with the answer that followed it, a masked one goes masked
    (the client keeps and resends what the user typed)."""
    if not plugins.input_filters:
        return messages
    out: list[JSON] = []
    skipping = False
    for message in messages:
        role = message.get("role")
        if role == "user":
            skipping = False
            text = content_text(message.get("content"))
            if text:
                result = await plugins.filter_input(key, request.user, text, _say_nothing)
                if isinstance(result, Consume):
                    skipping = True
                    continue
                if result != text:
                    message = _with_text(message, result)
        elif role == "assistant" and skipping:
            continue
        out.append(message)
    return out


async def plan(
    plugins: PluginHost | None, router: Router, key: ConversationKey, request: CompletionRequest
) -> Plan:
    """How to answer ``request`` in conversation ``key``."""
    messages = list(request.messages)
    last = messages[-1] if messages else None
    if plugins is not None and last is not None and last.get("role") == "user":
        text = content_text(last.get("content"))
        if plugins.input_filters and text:
            said: list[str] = []

            async def say(_: ConversationKey, answer: str) -> None:
                said.append(answer)

            result = await plugins.filter_input(key, request.user, text, say)
            if isinstance(result, Consume):
                return Plan(request, notice="\n\n".join(said) or "Your message was not sent.")
            if result != text:
                last = _with_text(last, result)
                text = result
        if plugins.is_command(text):
            return Plan(request, command=text)
        history = without_commands(messages[:-1], plugins)
        messages = [*await filtered_history(history, plugins, key, request), last]
    elif plugins is not None:
        messages = await filtered_history(
            without_commands(messages, plugins), plugins, key, request
        )
    try:
        target = router.contact_target(key.contact)
    except BridgeError:
        target = None
    shape = getattr(target, "with_instructions", None)
    if shape is not None:
        messages = await shape(key, messages)
    return Plan(replace(request, messages=messages))


async def answer(
    plugins: PluginHost | None,
    router: Router,
    key: ConversationKey,
    request: CompletionRequest,
    complete: Callable[[CompletionRequest], AsyncIterator[ReplyEvent]],
    late: Say,
) -> AsyncIterator[ReplyEvent]:
    """The completion's reply: a command's answer, a filter's notice, or the model's reply
    through the filters (``complete`` asks the model)."""
    planned = await plan(plugins, router, key, request)
    if planned.command is not None and plugins is not None:
        inner = command_answer(plugins, key, planned.request, planned.command, late)
    elif planned.notice is not None:
        inner = notice_answer(planned.notice)
    else:
        inner = filtered(plugins, key, complete(planned.request))
    try:
        async for event in inner:
            yield event
    finally:
        await inner.aclose()


class _Answers:
    """A command's answers: the completion's text while it runs; any that come after it has
    ended (work the command left running) go to the conversation as messages, never lost."""

    def __init__(self, late: Say) -> None:
        self.texts: list[str] = []
        self.closed = False
        self._late = late

    async def say(self, key: ConversationKey, text: str) -> None:
        if self.closed:
            await self._late(key, text)
        else:
            self.texts.append(text)


async def command_answer(
    plugins: PluginHost, key: ConversationKey, request: CompletionRequest, line: str, late: Say
) -> AsyncIterator[ReplyEvent]:
    """A command line answered as a completion."""
    answers = _Answers(late)
    try:
        await plugins.run_command(key, request.user, line, answers.say)
    finally:
        answers.closed = True
    yield Delta("\n\n".join(answers.texts))
    yield Done("stop")


async def notice_answer(text: str) -> AsyncIterator[ReplyEvent]:
    yield Delta(text)
    yield Done("stop")


async def filtered(
    plugins: PluginHost | None, key: ConversationKey, stream: AsyncIterator[ReplyEvent]
) -> AsyncIterator[ReplyEvent]:
    """A model's reply through the plugins' stream filters (what shows while it streams) and
    reply filters (the finished text: what they change in it is added at the end, since the
    client already holds what streamed)."""
    guard = plugins.stream_guard(key) if plugins is not None else None
    check_reply = plugins is not None and bool(plugins.reply_filters)
    if guard is None and not check_reply:
        try:
            async for event in stream:
                yield event
        finally:
            # Closed here, in this task: left to the loop's finalizer, the upstream request
            # would be closed by a task nobody owns.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    assert plugins is not None
    text: list[str] = []
    shown: list[str] = []
    try:
        async for event in stream:
            if isinstance(event, Delta) and event.text:
                text.append(event.text)
                if guard is not None:
                    live = guard.feed(event.text)
                    if not live and not event.reasoning:
                        continue
                    event = Delta(live, event.reasoning)
                shown.append(event.text)
            elif isinstance(event, Done):
                if guard is not None and (rest := guard.end()):
                    shown.append(rest)
                    yield Delta(rest)
                if check_reply:
                    seen = "".join(shown)
                    final = await plugins.filter_reply(key, "".join(text))
                    if final != seen:
                        extra = final[len(seen) :] if final.startswith(seen) else f"\n{final}"
                        yield Delta(extra)
            yield event
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
