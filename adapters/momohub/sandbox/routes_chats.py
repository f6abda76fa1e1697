"""/chats: chat CRUD, history, config and plugins (sending a message lives in streaming.py)."""

from __future__ import annotations

from aiohttp import web

from adapters.momohub.sandbox.api import (
    ApiError,
    Fields,
    no_content,
    ok,
    paged,
    parse_paging,
    parse_uuid,
    read_object,
)
from adapters.momohub.sandbox.entities import Chat
from adapters.momohub.sandbox.state import STATE, SandboxState

routes = web.RouteTableDef()

CONFIG_KEYS = ("temperature", "maxTokens", "topP", "systemPrompt")


def owned_chat(state: SandboxState, request: web.Request) -> Chat:
    user = state.require_user(request)
    chat = state.store.chats.get(parse_uuid(request, "chatId"))
    if chat is None:
        raise ApiError(404, "chat not found")
    if chat.user_id != user.id:
        raise ApiError(403, "this chat belongs to another user")
    return chat


@routes.post("/v1/chats")
async def create(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.require_user(request)
    fields = Fields(await read_object(request))
    character_id = fields.uuid("characterId")
    name = fields.string("name", max_len=200)
    temporary = fields.boolean("temporary")
    fields.check()
    assert character_id is not None
    character = state.store.characters.get(character_id)
    if character is None:
        raise ApiError(404, "character not found")
    if not character.is_public and character.author_id != user.id:
        raise ApiError(403, "this character is private")
    chat = state.store.create_chat(user, character, name, bool(temporary))
    return ok(chat.to_api(), status=201)


@routes.get("/v1/chats")
async def list_chats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.require_user(request)
    page, limit = parse_paging(request)
    return ok(paged([c.to_api() for c in state.store.chats_of(user.id)], page, limit))


@routes.get("/v1/chats/{chatId}")
async def get_chat(request: web.Request) -> web.Response:
    return ok(owned_chat(request.app[STATE], request).to_api())


@routes.delete("/v1/chats/{chatId}")
async def delete_chat(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.store.delete_chat(owned_chat(state, request))
    return no_content()


@routes.put("/v1/chats/{chatId}/name")
async def rename(request: web.Request) -> web.Response:
    state = request.app[STATE]
    chat = owned_chat(state, request)
    fields = Fields(await read_object(request))
    name = fields.string("name", max_len=200)
    fields.check()
    state.store.rename_chat(chat, name)
    return ok(chat.to_api())


@routes.get("/v1/chats/{chatId}/messages")
async def list_messages(request: web.Request) -> web.Response:
    state = request.app[STATE]
    chat = owned_chat(state, request)
    page, limit = parse_paging(request)
    # Newest first: the order is undocumented, and clients are meant to sort by createdAt.
    newest_first = reversed(state.store.messages.get(chat.id, []))
    return ok(paged([m.to_api() for m in newest_first], page, limit))


@routes.delete("/v1/chats/{chatId}/messages")
async def clear_messages(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.store.clear_messages(owned_chat(state, request))
    return no_content()


@routes.delete("/v1/chats/{chatId}/messages/{messageId}")
async def delete_message(request: web.Request) -> web.Response:
    state = request.app[STATE]
    chat = owned_chat(state, request)
    if not state.store.delete_message(chat, parse_uuid(request, "messageId")):
        raise ApiError(404, "message not found")
    return no_content()


@routes.get("/v1/chats/{chatId}/config")
async def get_config(request: web.Request) -> web.Response:
    chat = owned_chat(request.app[STATE], request)
    return ok(dict(chat.config) if chat.config is not None else None)


@routes.put("/v1/chats/{chatId}/config")
async def put_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    chat = owned_chat(state, request)
    body = await read_object(request)
    fields = Fields(body)
    fields.number("temperature", 0, 2)
    fields.number("maxTokens", 1, None, integer=True)
    fields.number("topP", 0, 1)
    fields.string("systemPrompt", max_len=20_000)
    fields.check()
    # Absent keys keep their value (every field of the request is optional); explicit nulls clear.
    config = dict(chat.config or dict.fromkeys(CONFIG_KEYS))
    config.update({k: body[k] for k in CONFIG_KEYS if k in body})
    state.store.set_chat_config(chat, config)
    return ok(config)


@routes.get("/v1/chats/{chatId}/plugins")
async def list_plugins(request: web.Request) -> web.Response:
    owned_chat(request.app[STATE], request)
    return ok([])


@routes.put("/v1/chats/{chatId}/plugins/{pluginId}")
async def toggle_plugin(request: web.Request) -> web.Response:
    owned_chat(request.app[STATE], request)
    raise ApiError(404, "plugin not found (the sandbox has no plugins)")


@routes.put("/v1/chats/{chatId}/plugins/{pluginId}/config")
async def plugin_config(request: web.Request) -> web.Response:
    owned_chat(request.app[STATE], request)
    raise ApiError(404, "plugin subscription not found (the sandbox has no plugins)")
