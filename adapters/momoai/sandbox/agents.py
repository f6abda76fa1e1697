"""The sandbox's agents and its deterministic "model": the reply, its deltas, its tokens and cost."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_REMAINING_TOKENS = 50_000
MAX_ECHO = 200

DEFAULT_AGENTS: list[dict[str, Any]] = [
    {
        "id": 159,
        "name": "gpt5.2",
        "description": "最新的 GPT 模型",
        "price_per_1k_tokens": 0.01,
        "rating": 4.8,
    },
    {
        "id": 160,
        "name": "翻译助手",
        "description": "中英互译, 保留原文格式",
        "price_per_1k_tokens": 0.002,
        "rating": 4.6,
    },
    {
        "id": 161,
        "name": "code-helper",
        "description": "Explains and reviews code",
        "price_per_1k_tokens": 0.005,
        "rating": 4.5,
    },
    {
        "id": 162,
        "name": "故事大王",
        "description": "讲一个有趣的小故事",
        "price_per_1k_tokens": 0.001,
        "rating": 4.2,
    },
]

# An ASCII word with its trailing spaces, or any other single character with its trailing spaces:
# Latin text streams word by word and Chinese character by character, as real models roughly do.
_PIECE = re.compile(r"[A-Za-z0-9_]+\s*|\S\s*|\s+")


@dataclass(slots=True)
class Agent:
    id: int
    name: str
    description: str = ""
    price_per_1k_tokens: float = 0.01
    rating: float = 4.5
    remaining_tokens: int = DEFAULT_REMAINING_TOKENS
    # Any other keys a test passed: listed as given, so a client's tolerance of extras is testable.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "price_per_1k_tokens": self.price_per_1k_tokens,
            "rating": self.rating,
            **self.extra,
        }


def make_agents(specs: list[dict[str, Any]]) -> dict[int, Agent]:
    """Agents by id, in the given order; ValueError on a spec the sandbox cannot serve."""
    agents: dict[int, Agent] = {}
    known = {"id", "name", "description", "price_per_1k_tokens", "rating", "remaining_tokens"}
    for spec in specs:
        agent_id, name = spec.get("id"), spec.get("name")
        if isinstance(agent_id, bool) or not isinstance(agent_id, int):
            raise ValueError(f"agent id must be an int: {spec!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"agent name must be a non-empty string: {spec!r}")
        if agent_id in agents:
            raise ValueError(f"duplicate agent id {agent_id}")
        agents[agent_id] = Agent(
            id=agent_id,
            name=name,
            description=str(spec.get("description", "")),
            price_per_1k_tokens=float(spec.get("price_per_1k_tokens", 0.01)),
            rating=float(spec.get("rating", 4.5)),
            remaining_tokens=int(spec.get("remaining_tokens", DEFAULT_REMAINING_TOKENS)),
            extra={k: v for k, v in spec.items() if k not in known},
        )
    return agents


def reply_pieces(agent: Agent, prompt: str, max_tokens: int | None = None) -> list[str]:
    """The deltas of the reply: `"<name> 收到: <last non-empty prompt line, <= 200 chars>"`.

    `max_tokens` caps the number of deltas, so a capped reply is a prefix of the full one.
    """
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    echo = (lines[-1] if lines else prompt.strip())[:MAX_ECHO]
    pieces = _PIECE.findall(f"{agent.name} 收到: {echo}")
    return pieces if max_tokens is None else pieces[:max_tokens]


def tokens_used(prompt: str, content: str) -> int:
    return (len(prompt) + len(content)) // 2 + 1


def cost(agent: Agent, tokens: int) -> float:
    return round(tokens / 1000 * agent.price_per_1k_tokens, 6)
