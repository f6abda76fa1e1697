"""A conversation as the one prompt a MOMO AI agent takes (pure).

MOMO AI's agent API is stateless and takes a single ``prompt`` string, so every request carries
the conversation so far, written out like this:

- A conversation that is just one user message is sent as exactly that message's text.
- Otherwise the prompt starts with the system messages' texts (the bridge's or the client's
  instructions, wherever they stood in the conversation, in order, separated by blank lines),
  then a blank line, then the conversation as a transcript, oldest first, one message per
  paragraph (separated by blank lines), ending with the newest message::

      You are a helpful assistant.

      User: What is the capital of France?

      Assistant: Paris.

      User: And of Italy?

  Tool results read ``Tool: ...``. Empty messages, and an assistant's tool calls without text,
  are left out. A message's own line breaks are kept. Of a message made of parts, text parts are
  kept (one per line) and each image becomes ``[image]`` (audio ``[audio]``, a file ``[file]``).
- When the prompt would be longer than the configured limit (characters), the oldest messages
  are left out first, whole, until it fits. The system part and the newest message are always
  kept whole, even when they alone are longer than the limit.
"""

from __future__ import annotations

from typing import Any

from adapters.momoai.wire import scrub

__all__ = ["build_prompt", "message_text"]

_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool", "function": "Tool"}
_SYSTEM_ROLES = frozenset({"system", "developer"})
_PLACEHOLDERS = {
    "image_url": "[image]",
    "image": "[image]",
    "input_image": "[image]",
    "input_audio": "[audio]",
    "audio": "[audio]",
    "file": "[file]",
    "input_file": "[file]",
}


def message_text(content: Any) -> str:
    """A message's ``content`` as text: a string as it is; a list of parts as its text parts and
    placeholders for images, audio and files, one per line; anything else as ""."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind == "text" or (kind is None and isinstance(part.get("text"), str)):
                text = part.get("text")
                if isinstance(text, str) and text:
                    parts.append(text)
            elif isinstance(kind, str) and kind in _PLACEHOLDERS:
                parts.append(_PLACEHOLDERS[kind])
    return "\n".join(parts)


def build_prompt(messages: list[dict[str, Any]], max_chars: int) -> str:
    """The prompt for ``messages`` (OpenAI-style) in the format the module describes."""
    system: list[str] = []
    # (label, text) of each turn, oldest first.
    turns: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        role = role.lower() if isinstance(role, str) else "user"
        text = message_text(message.get("content"))
        if not text.strip():
            continue
        if role in _SYSTEM_ROLES:
            system.append(text.strip())
        else:
            turns.append((_LABELS.get(role, "User"), text))
    if not system and len(turns) == 1 and turns[0][0] == "User":
        return scrub(turns[0][1])
    head = "\n\n".join(system)
    paragraphs = [f"{label}: {text.strip()}" for label, text in turns]
    # The newest message always; older ones while they fit (each with its blank line).
    used = len(head) + (2 if head and paragraphs else 0)
    first = len(paragraphs)
    if paragraphs:
        first -= 1
        used += len(paragraphs[first])
        while first > 0 and used + 2 + len(paragraphs[first - 1]) <= max_chars:
            first -= 1
            used += 2 + len(paragraphs[first])
    body = "\n\n".join(paragraphs[first:])
    prompt = f"{head}\n\n{body}" if head and body else head or body
    return scrub(prompt)
