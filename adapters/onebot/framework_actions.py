"""Answers to the actions a bot framework calls on the bridge (which plays the QQ account).

This module parses each action frame, keys it for ordering and hands it to its handler: message
actions (sending, recalling, fetching) in `framework_messages`, queries about the account, its
friends and groups in `framework_queries`. Who is who (numbers, reserved identities, delivery)
is `framework_account`.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial
from typing import Any

import structlog

from adapters.onebot import protocol as P
from adapters.onebot.framework_account import Account, ActionFailed, NumberBook, reserved_numbers
from adapters.onebot.framework_link import Job
from adapters.onebot.framework_messages import MessageActions
from adapters.onebot.framework_queries import QueryActions
from bridge.config import Config
from bridge.outbox import Outbox
from storage import Storage

__all__ = ["FrameworkActions", "NumberBook", "order_key", "reserved_numbers"]

log = structlog.get_logger(__name__)

# How protocol.validate_params words an empty `message` / `messages`.
EMPTY_MESSAGE = ("message: is empty", "messages: is empty")
# Actions addressed to one user or group, by where the framework names the target.
TO_USER = frozenset({"send_private_msg", "send_private_forward_msg"})
TO_GROUP = frozenset({"send_group_msg", "send_group_forward_msg"})
TO_EITHER = frozenset({"send_msg", "send_forward_msg"})


def _as_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _target(message_type: Any, user_id: Any, group_id: Any) -> int | None:
    # As OneBot resolves it: without message_type, the presence of group_id decides.
    if message_type == "group" or (message_type is None and group_id is not None):
        return _as_number(group_id)
    return _as_number(user_id)


def order_key(action: str, params: dict[str, Any]) -> Hashable | None:
    """What keeps a framework's actions in order: the number (user or group; in group mode the
    same number) an action sends to. None for the rest, which may run in any order."""
    if action in TO_USER:
        return _as_number(params.get("user_id"))
    if action in TO_GROUP:
        return _as_number(params.get("group_id"))
    if action in TO_EITHER:
        return _target(params.get("message_type"), params.get("user_id"), params.get("group_id"))
    if action == ".handle_quick_operation":
        ctx = params.get("context")
        if isinstance(ctx, dict):
            return _target(ctx.get("message_type"), ctx.get("user_id"), ctx.get("group_id"))
    return None


async def _answer(response: dict[str, Any] | None) -> dict[str, Any] | None:
    return response


class FrameworkActions(Account):
    def __init__(
        self,
        config: Config,
        storage: Storage,
        outbox: Outbox,
        self_id: int,
        numbers: NumberBook | None = None,
    ) -> None:
        super().__init__(config, storage, outbox, self_id, numbers)
        self._handlers = {**MessageActions(self).handlers(), **QueryActions(self).handlers()}

    def prepare(self, raw: str | bytes) -> Job:
        """One action frame, parsed and keyed for ordering; its Job's run() answers it."""
        try:
            req = P.parse_action(raw)
        except P.ProtocolError as e:
            log.warning("onebot.bad_action", reason=e.message)
            return Job(None, partial(_answer, e.response() if e.echo is not P.NO_ECHO else None))
        return Job(order_key(req.base_action, req.params), partial(self._run, req))

    async def handle(self, raw: str | bytes) -> dict[str, Any] | None:
        """One action frame in, its response out (None: unparseable and nothing to answer)."""
        return await self.prepare(raw).run()

    async def _run(self, req: P.ActionRequest) -> dict[str, Any]:
        action = req.base_action
        handler = self._handlers.get(action)
        if handler is None:
            return req.failed(P.RetCode.NOT_FOUND, f"unsupported action {req.action!r}")
        try:
            params = P.validate_params(action, req.params)
            data = await handler(params if params is not None else req.params)
        except P.ProtocolError as e:
            if e.message.startswith(EMPTY_MESSAGE):
                # Well-formed but nothing to send: a bad value, not a bad request (go-cqhttp
                # and NapCat answer 100 here too).
                return req.failed(P.RetCode.BAD_PARAMS, e.message)
            return req.failed(e.retcode, e.message)
        except ActionFailed as e:
            return req.failed(e.retcode, e.message)
        except Exception as e:
            log.exception("onebot.action_crashed", action=action)
            return req.failed(P.RetCode.OPERATION_FAILED, f"internal error: {type(e).__name__}")
        return req.ok(data)
