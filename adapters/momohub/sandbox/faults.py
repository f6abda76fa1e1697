"""Queued faults for tests: make the next matching request(s) fail, stall or drop."""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.momohub.sandbox.entities import JSON, new_id


@dataclass(slots=True)
class Fault:
    id: str
    pattern: re.Pattern[str]
    status: int | None = None
    retry_after: float | None = None
    count: int = 1
    stall: float | None = None
    drop_after: int | None = None
    bare: bool = False

    def to_api(self) -> JSON:
        return {
            "id": self.id,
            "path": self.pattern.pattern,
            "status": self.status,
            "retry_after": self.retry_after,
            "count": self.count,
            "stall": self.stall,
            "drop_after": self.drop_after,
            "bare": self.bare,
        }


def parse_fault(body: JSON) -> tuple[Fault | None, dict[str, str]]:
    errors: dict[str, str] = {}
    path = body.get("path")
    pattern: re.Pattern[str] | None = None
    if not isinstance(path, str) or not path:
        errors["path"] = "must be a regular expression string"
    else:
        try:
            pattern = re.compile(path)
        except re.error as e:
            errors["path"] = f"not a valid regular expression: {e}"

    def number(
        key: str, *, integer: bool, low: float, default: float | None = None
    ) -> float | None:
        value = body.get(key, default)
        if value is None:
            return None
        kinds = int if integer else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or value < low:
            errors[key] = f"must be {'an integer' if integer else 'a number'} >= {low} or null"
            return None
        return value

    status = number("status", integer=True, low=400)
    if status is not None and status > 599:
        errors["status"] = "must be an error status (400-599) or null"
    retry_after = number("retry_after", integer=False, low=0)
    count = number("count", integer=True, low=1, default=1)
    stall = number("stall", integer=False, low=0)
    drop_after = number("drop_after", integer=True, low=0)
    bare = body.get("bare", False)
    if not isinstance(bare, bool):
        errors["bare"] = "must be a boolean"
    if errors or pattern is None:
        return None, errors
    return (
        Fault(
            id=new_id(),
            pattern=pattern,
            status=int(status) if status is not None else None,
            retry_after=retry_after,
            count=int(count or 1),
            stall=stall,
            drop_after=int(drop_after) if drop_after is not None else None,
            bare=bare,
        ),
        {},
    )


class FaultQueue:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """Consume one use of the oldest fault whose pattern matches all of "METHOD /path"."""
        key = f"{method} {path}"
        for fault in self._faults:
            if fault.pattern.fullmatch(key):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def __len__(self) -> int:
        return len(self._faults)
