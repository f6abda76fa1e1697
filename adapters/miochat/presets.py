"""`GET /api/openai/presets`: MomoHub characters offered to the mio-chat client as presets.

How the client (87eb4e7) turns a preset into a chat, which decides the shape here: picking one
calls `addPresetContactor` (FriendList.vue), which builds the contactor's options with
`mergeOptions(preset)`: it takes `preset.model` and looks for a provider in `llm_providers`
(from `/api/base_info`) whose login-frame `models` list that model (`config.isModelAvailable`),
then sets `options.provider` to it and `options.base.model` to the model. `preset.provider` is
not read; it is sent anyway for clarity. So a character's preset carries
`model: "character:<id>"`, which the bridge's MomoHub provider lists, and the chat is routed to
that character. `namePolicy: 1` keeps the character's name (the default, 2, would let the
client retitle the chat), `avatarPolicy: 1` shows the character's picture when it has one
(0 asks `/p/mava` for the model's, which answers for characters too). `opening` would be shown
as the chat's first assistant line; MomoHub lists no greeting, so it is left out.

Query: `type=recommended|system|common` lists the characters (the default one first),
`type=search&keyword=` those whose name contains the keyword (case-insensitive), each paged
with `start` (default 0) and `limit` (default 20, at most 100). The list comes from the
MomoHub target's cache, so this never waits on MomoHub.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from adapters.miochat.avatars import is_web_url
from bridge.models import Contact

if TYPE_CHECKING:
    from adapters.miochat.client_api import ClientApi

CHARACTER = "character:"
LIST_TYPES = frozenset({"recommended", "system", "common"})
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_KEYWORD = 100
MAX_TITLE = 200


def _int(query: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = query.get(key, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{key} must be between {low} and {high}, got {value}")
    return value


def preset_of(contact: Contact, model: str, provider: str, avatar_ok: bool) -> dict[str, Any]:
    """One character as the client's preset (see the module doc for each field)."""
    preset: dict[str, Any] = {
        "name": contact.name or contact.id,
        "model": model,
        "provider": provider,
        "history": [],
        "tools": [],
        "namePolicy": 1,
        "avatarPolicy": 1 if avatar_ok else 0,
    }
    if avatar_ok:
        preset["avatar"] = contact.avatar
    if contact.bio:
        bio = " ".join(contact.bio.split())
        preset["title"] = bio if len(bio) <= MAX_TITLE else bio[: MAX_TITLE - 1] + "…"
    return preset


def presets_answer(api: ClientApi, query: Mapping[str, str]) -> web.Response:
    kind = query.get("type", "recommended")
    try:
        start = _int(query, "start", 0, 0, 1_000_000)
        limit = _int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    except ValueError as e:
        return api.fail(400, str(e))
    characters = api.characters()
    if kind == "search":
        keyword = query.get("keyword", "").strip().casefold()
        if len(keyword) > MAX_KEYWORD:
            return api.fail(400, f"keyword too long: at most {MAX_KEYWORD} characters")
        characters = [c for c in characters if keyword in (c.name or c.id).casefold()]
    elif kind not in LIST_TYPES:
        return api.fail(400, "type must be recommended, system, common or search")
    owners = api.providers_by_model()
    out: list[dict[str, Any]] = []
    for c in characters[start : start + limit]:
        model = CHARACTER + c.id
        provider = owners.get(model)
        if provider is None:
            continue  # not in the login frame's models: the client could not route it
        out.append(preset_of(c, model, provider, is_web_url(c.avatar)))
    return api.ok(out)
