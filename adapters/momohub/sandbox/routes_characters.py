"""/characters: public list, search, mine, CRUD."""

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
from adapters.momohub.sandbox.entities import JSON, Character, User
from adapters.momohub.sandbox.state import STATE, SandboxState

routes = web.RouteTableDef()


def render(state: SandboxState, character: Character) -> JSON:
    author = state.store.users.get(character.author_id) if character.author_id else None
    return character.to_api(author)


def _listing(request: web.Request, characters: list[Character]) -> web.Response:
    page, limit = parse_paging(request)
    state = request.app[STATE]
    ordered = sorted(characters, key=lambda c: (c.created_ms, c.id))
    return ok(paged([render(state, c) for c in ordered], page, limit))


def _parse_fields(body: JSON) -> JSON:
    fields = Fields(body)
    fields.string("name", required=True, max_len=100)
    fields.string("avatar", max_len=2048)
    fields.string("bio", max_len=2000)
    fields.string("originPrompt", max_len=20_000)
    fields.boolean("isPublic")
    fields.check()
    return body


def _owned(state: SandboxState, request: web.Request, user: User) -> Character:
    character = state.store.characters.get(parse_uuid(request, "characterId"))
    if character is None:
        raise ApiError(404, "character not found")
    if character.author_id != user.id:
        raise ApiError(403, "only the author may change this character")
    return character


@routes.get("/v1/characters/public")
async def list_public(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _listing(request, [c for c in state.store.characters.values() if c.is_public])


@routes.get("/v1/characters/search")
async def search(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.require_user(request)
    needle = request.query.get("q", "").strip().casefold()
    found = [
        c
        for c in state.store.characters.values()
        if (c.is_public or c.author_id == user.id) and needle in c.name.casefold()
    ]
    return _listing(request, found)


@routes.get("/v1/characters")
async def list_mine(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.require_user(request)
    return _listing(request, [c for c in state.store.characters.values() if c.author_id == user.id])


@routes.post("/v1/characters")
async def create(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.require_user(request)
    body = _parse_fields(await read_object(request))
    return ok(render(state, state.store.create_character(user, body)), status=201)


@routes.get("/v1/characters/{characterId}")
async def get_one(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.optional_user(request)
    character = state.store.characters.get(parse_uuid(request, "characterId"))
    if character is None:
        raise ApiError(404, "character not found")
    if not character.is_public and (user is None or character.author_id != user.id):
        raise ApiError(403, "this character is private")
    return ok(render(state, character))


@routes.put("/v1/characters/{characterId}")
async def update(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.require_user(request)
    character = _owned(state, request, user)
    body = _parse_fields(await read_object(request))
    state.store.update_character(character, body)
    return ok(render(state, character))


@routes.delete("/v1/characters/{characterId}")
async def delete(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.require_user(request)
    state.store.delete_character(_owned(state, request, user))
    return no_content()
