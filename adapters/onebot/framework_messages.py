"""The message actions a framework calls: sending (plain, forwarded, quick-operation replies),
recalling and fetching. Replies become stored hub messages pushed to the user."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from adapters.onebot import protocol as P
from adapters.onebot.framework_account import Account, ActionFailed
from adapters.onebot.message import ForwardNode, normalize_message, segments_to_json
from adapters.onebot.segments import from_hub, refused_image, to_hub, to_onebot
from bridge.models import Segment
from bridge.outbox import Push

log = structlog.get_logger(__name__)


class MessageActions:
    def __init__(self, account: Account) -> None:
        self._account = account

    def handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        return {
            "send_private_msg": self._send_private,
            "send_group_msg": self._send_group,
            "send_msg": self._send_msg,
            "send_private_forward_msg": self._send_private_forward,
            "send_group_forward_msg": self._send_group_forward,
            "send_forward_msg": self._send_forward,
            "delete_msg": self._delete_msg,
            "get_msg": self._get_msg,
            "get_forward_msg": self._get_forward_msg,
            ".handle_quick_operation": self._quick,
        }

    # ----- sending ----------------------------------------------------------------------------

    async def _send_private(self, p: P.SendPrivateMsgParams) -> dict[str, Any]:
        return {"message_id": await self._account.deliver_to(p.user_id, hub_segments(p.message))}

    async def _send_group(self, p: P.SendGroupMsgParams) -> dict[str, Any]:
        return {"message_id": await self._account.deliver_to(p.group_id, hub_segments(p.message))}

    async def _send_msg(self, p: P.SendMsgParams) -> dict[str, Any]:
        number = p.group_id if p.message_type == "group" else p.user_id
        assert number is not None
        return {"message_id": await self._account.deliver_to(number, hub_segments(p.message))}

    async def _nodes(self, nodes: list[ForwardNode]) -> list[dict[str, Any]]:
        out = []
        for node in nodes:
            if node.ref_id is not None:
                row = await self._stored(node.ref_id)
                out.append(
                    {
                        "message_id": row.id,
                        "message": row.content,
                        "sender": {
                            "id": row.user_id if row.direction == "in" else self._account.contact
                        },
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
        mid = await self._account.deliver_to(p.user_id, await self._nodes(p.messages))
        return {"message_id": mid, "forward_id": str(mid)}

    async def _send_group_forward(self, p: P.SendGroupForwardMsgParams) -> dict[str, Any]:
        mid = await self._account.deliver_to(p.group_id, await self._nodes(p.messages))
        return {"message_id": mid, "forward_id": str(mid)}

    async def _send_forward(self, p: P.SendForwardMsgParams) -> dict[str, Any]:
        number = p.group_id if p.message_type == "group" else p.user_id
        assert number is not None
        mid = await self._account.deliver_to(number, await self._nodes(p.messages))
        return {"message_id": mid, "forward_id": str(mid)}

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
            await self._account.deliver_to(int(number), hub_segments(segs))
        except (TypeError, ValueError):
            raise ActionFailed(
                P.RetCode.BAD_PARAMS, "context has no user_id/group_id to reply to"
            ) from None
        return None

    # ----- stored messages --------------------------------------------------------------------

    async def _stored(self, message_id: Any) -> Any:
        try:
            mid = int(message_id)
        except (TypeError, ValueError):
            raise ActionFailed(
                P.RetCode.BAD_PARAMS, f"message_id {message_id!r} is not a number"
            ) from None
        row = await self._account.storage.messages.get(mid) if 0 < mid < 2**31 else None
        if row is None or row.contact != self._account.contact:
            raise ActionFailed(P.RetCode.BAD_PARAMS, f"unknown message_id {message_id}")
        return row

    async def _delete_msg(self, p: P.DeleteMsgParams) -> None:
        row = await self._stored(p.message_id)
        if await self._account.storage.messages.mark_deleted(row.id):
            await self._account.outbox.push(
                row.user_id, Push(kind="recall", contact=self._account.contact, message_id=row.id)
            )

    async def _sender(self, row: Any) -> dict[str, Any]:
        acc = self._account
        if row.direction == "out":
            return {"user_id": acc.self_id, "nickname": acc.nickname}
        user = await acc.storage.users.get(row.user_id)
        number = await acc.number_of(row.user_id, bool(user and user.is_admin))
        return {"user_id": number, "nickname": row.user_id}

    async def _get_msg(self, p: P.GetMsgParams) -> dict[str, Any]:
        row = await self._stored(p.message_id)
        segs = to_onebot(from_hub(row.content), forward_id=row.id)
        group = self._account.config.onebot.user_message_type == "group"
        out: dict[str, Any] = {
            "time": int(row.time),
            "message_type": "group" if group else "private",
            "message_id": row.id,
            "real_id": row.id,
            "sender": await self._sender(row),
            "message": segments_to_json(segs),
        }
        if group:
            out["group_id"] = await self._account.numbers.number_for(row.user_id)
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
        acc = self._account
        sender = node.get("sender") or {}
        uid = str(sender.get("id") or "")
        name = str(sender.get("name") or "")
        if uid.isdigit() and 0 < int(uid) <= P.INT32_MAX:
            return int(uid), name or uid
        # A hub user forwarding their own chat: the nodes name stored messages, not senders.
        ref = node.get("message_id")
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 < ref <= P.INT32_MAX:
            row = await acc.storage.messages.get(ref)
            # Only the forwarder's own messages: another user's id would leak who they are.
            if (
                row is not None
                and row.user_id == owner
                and (row.direction == "in" or row.contact == acc.contact)
            ):
                who = await self._sender(row)
                return int(who["user_id"]), str(who["nickname"])
        return acc.self_id, name or uid or acc.nickname


def _normalize(message: Any, auto_escape: bool) -> list[Segment]:
    return normalize_message(message, auto_escape=auto_escape)


def hub_segments(segments: list[Segment]) -> list[dict[str, Any]]:
    """A framework's message as hub segments, logging each image that could not be carried."""
    for seg in segments:
        why = refused_image(seg)
        if why:
            log.warning("onebot.image_refused", reason=why)
    return to_hub(segments)
