"""/auth: sign-up, sign-in, refresh (rotating pairs), sign-out, me."""

from __future__ import annotations

from aiohttp import web

from adapters.momohub.sandbox.api import ApiError, Fields, ok, read_object
from adapters.momohub.sandbox.state import STATE
from adapters.momohub.sandbox.store import TokenPair

routes = web.RouteTableDef()

MIN_PASSWORD = 8  # the real server's documented rule


def _login(pair: TokenPair, profile: dict[str, object]) -> dict[str, object]:
    return {"user": profile, "tokens": pair.to_api()}


@routes.post("/v1/auth/sign-up/email")
async def sign_up(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fields = Fields(await read_object(request))
    email = fields.string("email", required=True, max_len=254)
    name = fields.string("name", required=True, max_len=64)
    password = fields.string("password", required=True, max_len=256)
    if email and "@" not in email:
        fields.errors["email"] = "must be a valid email address"
    if password is not None and "password" not in fields.errors and len(password) < MIN_PASSWORD:
        fields.errors["password"] = f"must be at least {MIN_PASSWORD} characters"
    fields.check()
    assert email is not None and name is not None and password is not None
    try:
        state.store.create_user(email, password, name.strip())
    except KeyError:
        raise ApiError(409, "an account with this email already exists") from None
    return ok({"success": True}, message="signed up")


@routes.post("/v1/auth/sign-in/email")
async def sign_in(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fields = Fields(await read_object(request))
    email = fields.string("email", required=True)
    password = fields.string("password", required=True)
    fields.check()
    assert email is not None and password is not None
    user = state.store.user_by_email(email)
    if user is None or not state.store.check_password(user, password):
        raise ApiError(401, "wrong email or password")
    pair = state.store.issue_tokens(
        user, state.config.access_token_ttl, state.config.refresh_token_ttl
    )
    state.stats.sign_ins += 1
    return ok(_login(pair, user.profile()))


@routes.post("/v1/auth/refresh")
async def refresh(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fields = Fields(await read_object(request))
    value = fields.string("refreshToken", required=True)
    fields.check()
    assert value is not None
    token = state.store.valid_token(value, "refresh")
    user = state.store.users.get(token.user_id) if token else None
    if token is None or user is None:
        raise ApiError(401, "refresh token is invalid, expired or already used")
    # Rotation: the old refresh token dies now; its access token lives out its own lifetime so
    # requests already in flight don't fail.
    state.store.revoke(token.value)
    pair = state.store.issue_tokens(
        user, state.config.access_token_ttl, state.config.refresh_token_ttl
    )
    state.stats.refreshes += 1
    return ok(_login(pair, user.profile()))


@routes.post("/v1/auth/sign-out")
async def sign_out(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = state.require_user(request)
    access = request.headers["Authorization"].partition(" ")[2].strip()
    token = state.store.tokens.get(access)
    if token is not None:
        state.store.revoke(token.partner)
        state.store.revoke(token.value)
    if request.can_read_body:
        body = await read_object(request)
        extra = body.get("refreshToken")
        if isinstance(extra, str):
            found = state.store.tokens.get(extra)
            if found is not None and found.user_id == user.id:
                state.store.revoke(extra)
    return ok({"success": True}, message="signed out")


@routes.get("/v1/auth/me")
async def me(request: web.Request) -> web.Response:
    user = request.app[STATE].require_user(request)
    return ok(user.profile())
