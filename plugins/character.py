"""`/char`: the characters a user can talk to — list, search, info, and how to switch.

In a hub conversation the contact *is* the character (each character is its own contact, and
each keeps its own MomoHub chat), so `/char use` says which contact to open rather than
rebinding anything.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.commands import Arg, Invocation, UsageError
from bridge.errors import BridgeError
from bridge.models import Contact, UserRef
from bridge.plugins import PluginContext

# The most characters one answer names: a chat message, not a catalogue.
MAX_SHOWN = 20
MAX_BIO = 80
# An upstream search that takes longer is given up for the local one.
SEARCH_TIMEOUT = 10.0


def _line(c: Contact) -> str:
    bio = (c.bio or "").strip().replace("\n", " ")
    if len(bio) > MAX_BIO:
        bio = bio[: MAX_BIO - 1] + "…"
    return f"{c.name}" + (f" — {bio}" if bio else "")


def _listing(title: str, found: list[Contact]) -> str:
    lines = [title, *(f"• {_line(c)}" for c in found[:MAX_SHOWN])]
    if len(found) > MAX_SHOWN:
        lines.append(f"… and {len(found) - MAX_SHOWN} more.")
    return "\n".join(lines)


def _characters(bridge: Any, user: UserRef) -> list[Contact]:
    if bridge is None:
        return []
    return [c for c in bridge.router.contacts(user) if c.kind == "character"]


def match(characters: list[Contact], wanted: str) -> list[Contact]:
    """The characters ``wanted`` names: its id, else its exact name, else names containing it
    (all case-insensitive)."""
    want = wanted.strip().casefold()
    if not want:
        return []
    by_id = [c for c in characters if c.id.casefold() == want]
    if by_id:
        return by_id
    exact = [c for c in characters if c.name.casefold() == want]
    if exact:
        return exact
    return [c for c in characters if want in c.name.casefold()]


async def _search_upstream(bridge: Any, user: UserRef, query: str) -> list[Contact] | None:
    """The contact targets' own search (see bridge.router.SearchableTarget); None when no
    target of these characters can search or it failed (then only the local search counts)."""
    targets: list[Any] = []
    for c in _characters(bridge, user):
        try:
            target = bridge.router.contact_target(c.id)
        except BridgeError:
            continue
        if not any(t is target for t in targets):
            targets.append(target)
    found: list[Contact] | None = None
    for target in targets:
        search = getattr(target, "search_contacts", None)
        if search is None:
            continue
        try:
            async with asyncio.timeout(SEARCH_TIMEOUT):
                hits = await search(user, query, MAX_SHOWN)
        except (BridgeError, TimeoutError):
            continue
        found = (found or []) + [c for c in hits if c.kind == "character"]
    return found


async def _bind(inv: Invocation, binder: Any, contact: str, name: str) -> None:
    """Switch a conversation whose edge lets it choose (a QQ chat) to ``contact``."""
    try:
        await binder.bind(inv.key, contact)
    except BridgeError as e:
        await inv.reply(f"Could not switch to {name}: {e.reason}")
        return
    await inv.reply(
        f"Now talking to {name}. Each character keeps its own conversation here; "
        f"{inv.prefix}char use switches back at any time."
    )


def setup(ctx: PluginContext) -> None:
    char = ctx.group("char", help="the characters you can talk to", aliases=("角色",))

    @char.sub("list", help="every character you can talk to")
    async def list_(inv: Invocation) -> None:
        found = _characters(ctx.bridge, inv.caller)
        if not found:
            await inv.reply("No characters are available right now.")
            return
        await inv.reply(_listing(f"Characters ({len(found)}):", found))

    @char.sub(
        "search",
        help="find characters by name (or by their description)",
        args=(Arg("query", rest=True),),
    )
    async def search(inv: Invocation) -> None:
        query: str = inv.args["query"]
        known = _characters(ctx.bridge, inv.caller)
        remote = await _search_upstream(ctx.bridge, inv.caller, query)
        want = query.casefold()
        local = [c for c in known if want in c.name.casefold() or want in (c.bio or "").casefold()]
        found: list[Contact] = []
        seen: set[str] = set()
        for c in [*(remote or []), *local]:
            if c.id not in seen:
                seen.add(c.id)
                found.append(c)
        if not found:
            await inv.reply(f"No character matches {query[:40]!r}.")
            return
        await inv.reply(_listing(f"Characters matching {query[:40]!r}:", found))

    @char.sub(
        "info",
        help="a character's name, description and id (this conversation's if none named)",
        args=(Arg("name", rest=True, optional=True),),
    )
    async def info(inv: Invocation) -> None:
        known = _characters(ctx.bridge, inv.caller)
        wanted: str | None = inv.args["name"]
        if wanted:
            found = match(known, wanted)
        else:
            found = [c for c in known if c.id == inv.key.contact]
            if not found:
                await inv.reply("This conversation is not with a character.")
                return
        if not found:
            raise UsageError(f"no character named {wanted[:40]!r}")
        if len(found) > 1:
            await inv.reply(_listing(f"Several characters match {wanted!r}:", found))
            return
        c = found[0]
        lines = [c.name, f"id: {c.id}"]
        if c.bio:
            lines.insert(1, c.bio.strip())
        if c.id == inv.key.contact:
            lines.append("(this conversation's character)")
        await inv.reply("\n".join(lines))

    @char.sub(
        "use",
        help="how to talk to another character",
        args=(Arg("character", rest=True),),
        usage="<name|id>",
    )
    async def use(inv: Invocation) -> None:
        wanted: str = inv.args["character"]
        binder = ctx.bridge.router.binder_for(inv.key)
        if binder is not None and wanted.startswith("model:"):
            await _bind(inv, binder, wanted, wanted)
            return
        found = match(_characters(ctx.bridge, inv.caller), wanted)
        if not found:
            raise UsageError(f"no character named {wanted[:40]!r}")
        if len(found) > 1:
            names = ", ".join(f"{c.name} ({c.id})" for c in found[:MAX_SHOWN])
            await inv.reply(f"Several characters match {wanted[:40]!r}: {names}. Name one.")
            return
        c = found[0]
        if c.id == inv.key.contact:
            await inv.reply(f"You are already talking to {c.name}.")
            return
        if binder is not None:
            await _bind(inv, binder, c.id, c.name)
            return
        # A hub conversation is bound to its contact; each character keeps its own chat.
        await inv.reply(
            f"Here each character is a contact of its own: open {c.name} in your contact list "
            f"to talk to it (id {c.id}). This conversation stays with its character."
        )
