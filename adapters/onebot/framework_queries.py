"""The query actions a framework calls: the account itself, its friends (the hub users) and, in
group mode, each user's two-member group. All answered from stored state."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from adapters.onebot import protocol as P
from adapters.onebot.framework_account import Account, ActionFailed

VERSION = "0.1.0"


class QueryActions:
    def __init__(self, account: Account) -> None:
        self._account = account

    def handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        return {
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
        }

    # ----- account and friends ----------------------------------------------------------------

    async def _login_info(self, _: Any) -> dict[str, Any]:
        return {"user_id": self._account.self_id, "nickname": self._account.nickname}

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
        acc = self._account
        out = []
        for u in await acc.storage.users.list():
            out.append(
                {"user_id": await acc.number_of(u.id, u.is_admin), "nickname": u.id, "remark": ""}
            )
        return out

    async def _stranger(self, p: P.GetStrangerInfoParams) -> dict[str, Any]:
        users = await self._account.users_for(p.user_id)
        return {"user_id": p.user_id, "nickname": users[0], "sex": "unknown", "age": 0}

    async def _yes(self, _: Any) -> dict[str, Any]:
        return {"yes": True}

    async def _no(self, _: Any) -> dict[str, Any]:
        return {"yes": False}

    # ----- groups -----------------------------------------------------------------------------

    async def _group_of(self, group_id: int) -> str:
        if self._account.config.onebot.user_message_type != "group":
            raise ActionFailed(
                P.RetCode.BAD_PARAMS, f"unknown group_id {group_id} (the link runs in private mode)"
            )
        user = await self._account.numbers.user_for_number(group_id)
        if user is None:
            raise ActionFailed(P.RetCode.BAD_PARAMS, f"unknown group_id {group_id}")
        return user

    def _group(self, group_id: int, user: str) -> dict[str, Any]:
        return {
            "group_id": group_id,
            "group_name": f"{user} & {self._account.nickname}",
            "member_count": 2,
            "max_member_count": 2,
        }

    async def _groups(self, _: Any) -> list[dict[str, Any]]:
        acc = self._account
        if acc.config.onebot.user_message_type != "group":
            return []
        return [
            self._group(await acc.numbers.number_for(u.id), u.id)
            for u in await acc.storage.users.list()
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
        acc = self._account
        user = await self._group_of(p.group_id)
        row = await acc.storage.users.get(user)
        admin = bool(row and row.is_admin)
        # As in the message events: the owner's hub account appears as admin_qq and owns it.
        return [
            self._member(
                p.group_id, await acc.number_of(user, admin), user, "owner" if admin else "member"
            ),
            self._member(p.group_id, acc.self_id, acc.nickname, "admin" if admin else "owner"),
        ]

    async def _member_info(self, p: P.GetGroupMemberInfoParams) -> dict[str, Any]:
        for m in await self._member_list(P.GetGroupMemberListParams(group_id=p.group_id)):
            if m["user_id"] == p.user_id:
                return m
        raise ActionFailed(P.RetCode.BAD_PARAMS, f"user {p.user_id} is not in group {p.group_id}")
