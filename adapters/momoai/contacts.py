"""MOMO AI agents as contacts (``[momoai] as_contacts``): ``momoai:<id>`` in a hub user's contact
list, and in a QQ chat after ``/char use momoai:<id>``.

Registered whenever MOMO AI is on: the `openai/completions` of an agent belong to the same
conversation (see MomoAITarget.completion_contact), whose persona and /reset live here. Without
``as_contacts`` nobody can message the agents as contacts.

An agent remembers nothing between calls, so the conversation is the bridge's own, exactly as
with a ``model:`` contact (bridge.model_chats): stored, reset by /reset, given a persona by
/persona, and sent as each turn's prompt, trimmed to ``[momoai] history_turns`` turns and
``history_chars`` characters.
"""

from __future__ import annotations

from adapters.momoai import wire
from adapters.momoai.target import MomoAITarget
from bridge.config import MomoAIConfig
from bridge.errors import BridgeError, ErrorCode
from bridge.model_chats import ModelChats
from bridge.models import Contact, UserRef
from bridge.router import Router
from storage import Storage

MAX_BIO = 300


class AgentChats(ModelChats):
    # The `target` label of its replies in /metrics.
    metrics_kind = "momoai"

    def __init__(
        self,
        router: Router,
        storage: Storage,
        config: MomoAIConfig,
        target: MomoAITarget,
        *,
        turns_by_owner: dict[str, int] | None = None,
    ) -> None:
        super().__init__(
            router,
            storage,
            history_turns=config.history_turns,
            history_chars=config.history_chars,
            turns_by_owner=turns_by_owner,
        )
        self._target = target
        self._listed = config.as_contacts

    def model_for(self, contact: str) -> str:
        return contact

    def owns(self, contact: str) -> bool:
        return contact.startswith(wire.MODEL_PREFIX) and len(contact) > len(wire.MODEL_PREFIX)

    def contacts(self, user: UserRef) -> list[Contact]:
        if not self._listed:
            return []
        return [
            Contact(a.model, "character", a.name, bio=a.description[:MAX_BIO] or None)
            for a in self._target.agents()
        ]

    async def check_available(self, contact: str) -> None:
        if not self._listed:
            raise BridgeError(
                ErrorCode.NOT_FOUND,
                "MOMO AI agents are not contacts on this bridge ([momoai] as_contacts is off); "
                "use them as models",
            )
        agent_id = contact[len(wire.MODEL_PREFIX) :]
        if not wire.AGENT_ID_RE.fullmatch(agent_id):
            raise BridgeError(
                ErrorCode.INVALID_DATA,
                "a MOMO AI agent is momoai:<id>, the id 1-64 characters of A-Z a-z 0-9 . _ -",
            )
        if not self._target.offers(agent_id):
            raise BridgeError(ErrorCode.NOT_FOUND, f"no MOMO AI agent {agent_id!r} on this bridge")
