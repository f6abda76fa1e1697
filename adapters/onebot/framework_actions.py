"""Answers to the actions a bot framework calls on the bridge (which plays the QQ account).

Replies become stored hub messages pushed to the user; queries answer from stored state.
Hub users are the account's friends; in group mode each user also has a two-member group whose
number equals the user's own.

Identities: only a hub admin (logged in with the admin code) appears as ``auth.admin_qq``, and
only the bridge itself as ``auth.bot_qq`` / a link's ``self_id``. These numbers are reserved in
storage, so a hub user whose id happens to be one of them gets a mapped number instead, and a
reply to ``admin_qq`` reaches the admins only.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from functools import partial
from typing import Any

import structlog

from adapters.onebot import protocol as P
from adapters.onebot.framework_link import Job
from adapters.onebot.message import ForwardNode, normalize_message, segments_to_json
from adapters.onebot.segments import from_hub, refused_image, to_hub, to_onebot
from bridge.config import Config
from bridge.models import Segment
from bridge.outbox import Outbox, Push
from storage import Storage

log = structlog.get_logger(__name__)

VERSION = "0.1.0"
# How protocol.validate_params words an empty `message` / `messages`.
EMPTY_MESSAGE = ("message: is empty", "messages: is empty")
# Actions addressed to one user or group, by where the framework names the target.
TO_USER = frozenset({"send_private_msg", "send_private_forward_msg"})
TO_GROUP = frozenset({"send_group_msg", "send_group_forward_msg"})
TO_EITHER = frozenset({"send_msg", "send_forward_msg"})


def reserved_numbers(config: Config) -> set[int]:
    """The QQ numbers that are the bridge's own identities, never a hub user's."""
    numbers = {int(config.auth.admin_qq), int(config.auth.bot_qq)}
    numbers.update(int(link.self_id) for link in config.onebot.frameworks if link.self_id)
    return numbers


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


class ActionFailed(Exception):
    def __init__(self, retcode: int, message: str) -> None:
        super().__init__(message)
        self.retcode = retcode
        self.message = message


class NumberBook:
    """Hub user ↔ QQ number, remembered: storage never changes a number once given out, and
    every event and reply needs one (it was a third of the database round trips per message)."""

    LIMIT = 100_000  # past this many users the book starts afresh rather than grow forever

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._numbers: dict[str, int] = {}
        self._users: dict[int, str] = {}

    def _remember(self, user_id: str, number: int) -> None:
        if len(self._numbers) >= self.LIMIT:
            self._numbers.clear()
            self._users.clear()
        self._numbers[user_id] = number
        self._users[number] = user_id

    async def number_for(self, user_id: str) -> int:
        number = self._numbers.get(user_id)
        if number is None:
            number = await self._storage.users.number_for(user_id)
            self._remember(user_id, number)
        return number

    async def user_for_number(self, number: int) -> str | None:
        user = self._users.get(number)
        if user is None:
            user = await self._storage.users.user_for_number(number)
            if user is not None:
                self._remember(user, number)
        return user


class FrameworkActions:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        outbox: Outbox,
        self_id: int,
        numbers: NumberBook | None = None,
    ) -> None:
        self._config = config
        self._storage = storage
        self.numbers = numbers or NumberBook(storage)
        self._outbox = outbox
        self.self_id = self_id
        self.nickname = config.server.title
        # Read defensively: a number in the config may be an int or a numeric string.
        self.contact = str(config.auth.bot_qq)
        self.admin_qq = int(config.auth.admin_qq)
        storage.users.reserve(*reserved_numbers(config), self_id)
        self._handlers = {
            "send_private_msg": self._send_private,
            "send_group_msg": self._send_group,
            "send_msg": self._send_msg,
            "send_private_forward_msg": self._send_private_forward,
            "send_group_forward_msg": self._send_group_forward,
            "send_forward_msg": self._send_forward,
            "delete_msg": self._delete_msg,
            "get_msg": self._get_msg,
            "get_forward_msg": self._get_forward_msg,
            "get_login_info": self._login_info,
            "get_status": self._status,
            "get_version_info": self._version,
            "get_friend_list": self._friends,
            "get_stranger_info": self._stranger,
            "get_group_list": self._groups,
            "get_group_info": self._group_info,
            "get_group_member_info": self._member_info,
            "get_group_member_list": self._member_list,
            "can_send_image": self._yes,
            "can_send_record": self._no,
            ".handle_quick_operation": self._quick,
        }

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

    # ----- ids --------------------------------------------------------------------------------

    async def number_of(self, user_id: str, is_admin: bool) -> int:
        """A hub user's QQ number: ``admin_qq`` for an admin only, for anyone else their own
        number (never a reserved one, even for a user whose id is ``admin_qq`` itself)."""
        if is_admin:
            return self.admin_qq
        return await self.numbers.number_for(user_id)

    async def users_for(self, number: int) -> list[str]:
        """The hub users a QQ number stands for: ``admin_qq`` every admin and nobody else, any
        other number exactly the one user it was given to."""
        if number == self.admin_qq:
            admins = await self._storage.users.admins()
            if not admins:
                raise ActionFailed(
                    P.RetCode.BAD_PARAMS, f"user_id {number} is the admin, who has not logged in"
                )
            return admins
        if number in self._storage.users.reserved:
            raise ActionFailed(
                P.RetCode.BAD_PARAMS, f"user_id {number} is the bot account itself, not a friend"
            )
        user = await self.numbers.user_for_number(number)
        if user is None:
            raise ActionFailed(P.RetCode.BAD_PARAMS, f"unknown user_id {number}: no such friend")
        return [user]

    # ----- sending ----------------------------------------------------------------------------

    async def deliver_to(self, number: int, segments: list[dict[str, Any]]) -> int:
        users = await self.users_for(number)
        first_id = 0
        for user in users:
            row = await self._storage.messages.add(user, self.contact, "out", segments)
            first_id = first_id or row.id
            await self._outbox.push(
                user,
                Push(
                    kind="message",
                    contact=self.contact,
                    message_id=row.id,
                    segments=segments,
                    time=int(row.time),
                    sender_id=self.contact,
                    sender_name=self.nickname,
                ),
            )
        return first_id

    async def _send_private(self, p: P.SendPrivateMsgParams) -> dict[str, Any]:
        return {"message_id": await self.deliver_to(p.user_id, hub_segments(p.message))}

    async def _send_group(self, p: P.SendGroupMsgParams) -> dict[str, Any]:
        return {"message_id": await self.deliver_to(p.group_id, hub_segments(p.message))}

    async def _send_msg(self, p: P.SendMsgParams) -> dict[str, Any]:
        number = p.group_id if p.message_type == "group" else p.user_id
        assert number is not None
        return {"message_id": await self.deliver_to(number, hub_segments(p.message))}

    async def _nodes(self, nodes: list[ForwardNode]) -> list[dict[str, Any]]:
        out = []
        for node in nodes:
            if node.ref_id is not None:
                row = await self._stored(node.ref_id)
                out.append(
                    {
                        "message_id": row.id,
                        "message": row.content,
                        "sender": {"id": row.user_id if row.direction == "in" else self.contact},
                    }
                )
            else:
                out.append(
                    {
                        "message": hub_segments(node.content or []),
                        "sender": {"id": node.user_id, "name": node.nickname},
                    }
                )
        return [{"type": "nodes", "data": {"messages": out}}]

    async def _send_private_forward(self, p: P.SendPrivateForwardMsgParams) -> dict[str, Any]:
        mid = await self.deliver_to(p.user_id, await self._nodes(p.messages))
        return {"message_id": mid, "forward_id": str(mid)}

    async def _send_group_forward(self, p: P.SendGroupForwardMsgParams) -> dict[str, Any]:
        mid = await self.deliver_to(p.group_id, await self._nodes(p.messages))
        return {"message_id": mid, "forward_id": str(mid)}

    async def _send_forward(self, p: P.SendForwardMsgParams) -> dict[str, Any]:
        number = p.group_id if p.message_type == "group" else p.user_id
        assert number is not None
        mid = await self.deliver_to(number, await self._nodes(p.messages))
        return {"message_id": mid, "forward_id": str(mid)}

    # ----- messages ---------------------------------------------------------------------------

    async def _stored(self, message_id: Any) -> Any:
        try:
            mid = int(message_id)
        except (TypeError, ValueError):
            raise ActionFailed(
                P.RetCode.BAD_PARAMS, f"message_id {message_id!r} is not a number"
            ) from None
        row = await self._storage.messages.get(mid) if 0 < mid < 2**31 else None
        if row is None or row.contact != self.contact:
            raise ActionFailed(P.RetCode.BAD_PARAMS, f"unknown message_id {message_id}")
        return row

    async def _delete_msg(self, p: P.DeleteMsgParams) -> None:
        row = await self._stored(p.message_id)
        if await self._storage.messages.mark_deleted(row.id):
            await self._outbox.push(
                row.user_id, Push(kind="recall", contact=self.contact, message_id=row.id)
            )

    async def _sender(self, row: Any) -> dict[str, Any]:
        if row.direction == "out":
            return {"user_id": self.self_id, "nickname": self.nickname}
        user = await self._storage.users.get(row.user_id)
        number = await self.number_of(row.user_id, bool(user and user.is_admin))
        return {"user_id": number, "nickname": row.user_id}

    async def _get_msg(self, p: P.GetMsgParams) -> dict[str, Any]:
        row = await self._stored(p.message_id)
        segs = to_onebot(from_hub(row.content), forward_id=row.id)
        group = self._config.onebot.user_message_type == "group"
        out: dict[str, Any] = {
            "time": int(row.time),
            "message_type": "group" if group else "private",
            "message_id": row.id,
            "real_id": row.id,
            "sender": await self._sender(row),
            "message": segments_to_json(segs),
        }
        if group:
            out["group_id"] = await self.numbers.number_for(row.user_id)
        return out

    async def _get_forward_msg(self, p: P.GetForwardMsgParams) -> dict[str, Any]:
        row = await self._stored(p.forward_id)
        nodes_seg = next((s for s in row.content if s.get("type") == "nodes"), None)
        if nodes_seg is None:
            raise ActionFailed(P.RetCode.BAD_PARAMS, f"message {row.id} is not a forward message")
        nodes = []
        for node in (nodes_seg.get("data") or {}).get("messages") or []:
            content = segments_to_json(to_onebot(from_hub(node.get("message") or [])))
            user_id, nickname = await self._node_sender(node, row.user_id)
            nodes.append(
                {
                    "type": "node",
                    "data": {"user_id": str(user_id), "nickname": nickname, "content": content},
                    # Readers differ: the spec's node segments above, go-cqhttp's
                    # {sender, time, content}, NapCat's get_msg-like {message}. One item serves all.
                    "sender": {"user_id": user_id, "nickname": nickname},
                    "time": int(row.time),
                    "content": content,
                    "message": content,
                }
            )
        return {"messages": nodes, "message": nodes}

    async def _node_sender(self, node: dict[str, Any], owner: str) -> tuple[int, str]:
        """Who wrote one forwarded node, as a QQ number and a nickname."""
        sender = node.get("sender") or {}
        uid = str(sender.get("id") or "")
        name = str(sender.get("name") or "")
        if uid.isdigit() and 0 < int(uid) <= P.INT32_MAX:
            return int(uid), name or uid
        # A hub user forwarding their own chat: the nodes name stored messages, not senders.
        ref = node.get("message_id")
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 < ref <= P.INT32_MAX:
            row = await self._storage.messages.get(ref)
            # Only the forwarder's own messages: another user's id would leak who they are.
            if (
                row is not None
                and row.user_id == owner
                and (row.direction == "in" or row.contact == self.contact)
            ):
                who = await self._sender(row)
                return int(who["user_id"]), str(who["nickname"])
        return self.self_id, name or uid or self.nickname

    # ----- account and contacts ------------------------------------------------------------------

    async def _login_info(self, _: Any) -> dict[str, Any]:
        return {"user_id": self.self_id, "nickname": self.nickname}

    async def _status(self, _: Any) -> dict[str, Any]:
        return {"online": True, "good": True, "stat": {}}

    async def _version(self, _: Any) -> dict[str, Any]:
        return {
            "app_name": "MomoBridge",
            "app_version": VERSION,
            "protocol_version": "v11",
            "onebot_version": "11",
        }

    async def _friends(self, _: Any) -> list[dict[str, Any]]:
        out = []
        for u in await self._storage.users.list():
            out.append(
                {"user_id": await self.number_of(u.id, u.is_admin), "nickname": u.id, "remark": ""}
            )
        return out

    async def _stranger(self, p: P.GetStrangerInfoParams) -> dict[str, Any]:
        users = await self.users_for(p.user_id)
        return {"user_id": p.user_id, "nickname": users[0], "sex": "unknown", "age": 0}

    async def _group_of(self, group_id: int) -> str:
        if self._config.onebot.user_message_type != "group":
            raise ActionFailed(
                P.RetCode.BAD_PARAMS, f"unknown group_id {group_id} (the link runs in private mode)"
            )
        user = await self.numbers.user_for_number(group_id)
        if user is None:
            raise ActionFailed(P.RetCode.BAD_PARAMS, f"unknown group_id {group_id}")
        return user

    def _group(self, group_id: int, user: str) -> dict[str, Any]:
        return {
            "group_id": group_id,
            "group_name": f"{user} & {self.nickname}",
            "member_count": 2,
            "max_member_count": 2,
        }

    async def _groups(self, _: Any) -> list[dict[str, Any]]:
        if self._config.onebot.user_message_type != "group":
            return []
        return [
            self._group(await self.numbers.number_for(u.id), u.id)
            for u in await self._storage.users.list()
        ]

    async def _group_info(self, p: P.GetGroupInfoParams) -> dict[str, Any]:
        return self._group(p.group_id, await self._group_of(p.group_id))

    def _member(self, group_id: int, user_id: int, nickname: str, role: str) -> dict[str, Any]:
        now = int(time.time())
        return {
            "group_id": group_id,
            "user_id": user_id,
            "nickname": nickname,
            "card": "",
            "sex": "unknown",
            "age": 0,
            "area": "",
            "join_time": now,
            "last_sent_time": now,
            "level": "",
            "role": role,
            "unfriendly": False,
            "title": "",
            "title_expire_time": 0,
            "card_changeable": False,
        }

    async def _member_list(self, p: P.GetGroupMemberListParams) -> list[dict[str, Any]]:
        user = await self._group_of(p.group_id)
        row = await self._storage.users.get(user)
        admin = bool(row and row.is_admin)
        # As in the message events: the owner's hub account appears as admin_qq and owns it.
        return [
            self._member(
                p.group_id, await self.number_of(user, admin), user, "owner" if admin else "member"
            ),
            self._member(p.group_id, self.self_id, self.nickname, "admin" if admin else "owner"),
        ]

    async def _member_info(self, p: P.GetGroupMemberInfoParams) -> dict[str, Any]:
        for m in await self._member_list(P.GetGroupMemberListParams(group_id=p.group_id)):
            if m["user_id"] == p.user_id:
                return m
        raise ActionFailed(P.RetCode.BAD_PARAMS, f"user {p.user_id} is not in group {p.group_id}")

    async def _yes(self, _: Any) -> dict[str, Any]:
        return {"yes": True}

    async def _no(self, _: Any) -> dict[str, Any]:
        return {"yes": False}

    async def _quick(self, p: P.HandleQuickOperationParams) -> None:
        ctx, op = p.context, p.operation
        reply = op.get("reply")
        if reply in (None, "", []):
            return None
        try:
            segs = [Segment(s.type, s.data) for s in _normalize(reply, bool(op.get("auto_escape")))]
        except ValueError as e:
            raise ActionFailed(P.RetCode.BAD_PARAMS, f"operation.reply: {e}") from None
        group = ctx.get("message_type") == "group"
        if group and op.get("at_sender", True) and ctx.get("user_id") is not None:
            segs = [Segment("at", {"qq": str(ctx["user_id"])}), Segment.text(" "), *segs]
        number = ctx.get("group_id") if group else ctx.get("user_id")
        try:
            await self.deliver_to(int(number), hub_segments(segs))
        except (TypeError, ValueError):
            raise ActionFailed(
                P.RetCode.BAD_PARAMS, "context has no user_id/group_id to reply to"
            ) from None
        return None


def _normalize(message: Any, auto_escape: bool) -> list[Segment]:
    return normalize_message(message, auto_escape=auto_escape)


def hub_segments(segments: list[Segment]) -> list[dict[str, Any]]:
    """A framework's message as hub segments, logging each image that could not be carried."""
    for seg in segments:
        why = refused_image(seg)
        if why:
            log.warning("onebot.image_refused", reason=why)
    return to_hub(segments)
