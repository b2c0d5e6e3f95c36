"""What a daemon of a cluster keeps while its message engine does not answer, and what
it tells its members about it (docs/CLUSTER.md, "Split and merge"). Sans-IO.

Every event a daemon's members cause (a line, a join, a part, a rename) is *kept*
here from the moment it happens until the engine gives it back in the room's stream:
so whatever the engine may have lost when it went away is still here to publish
again at the merge, in the order it happened. The events are bounded: past
KEPT_EVENTS_MAX a member's line, move, rename or hello is refused with an error
(never taken and lost); a member leaving always fits (each member leaves once).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from udpchat.chat.engine import RoomEvent
from udpchat.chat.messages import NICK_MAX_CHARS

#: Events kept at most (this daemon's, not yet given back by the engine): about 10 s
#: of 200 lines a second. A RoomEvent with a line of 400 bytes is under 1 KB.
KEPT_EVENTS_MAX = 2048
#: A member whose nick turned out to be someone else's at a merge is renamed; this
#: many nicks are tried (each claimed in the engine) before it is closed instead.
RENAME_TRIES = 8
#: How much of a refused line its error quotes, in characters.
QUOTE_CHARS = 40


def split_text(room: str) -> str:
    """What a member hears when its daemon is cut off from the engine (notice "split")."""
    return (
        f"{room} is split: this server cannot reach the rest of the chat cluster, so you "
        "see only the members connected here; what is said here is kept, and goes to "
        "the others when the cluster is whole again"
    )


def merged_text(room: str) -> str:
    """... and when it reaches it again (notice "merged")."""
    return (
        f"{room} is whole again: this server reaches the rest of the chat cluster, and "
        "what was said here meanwhile goes to the others now"
    )


def renamed_text(old: str, new: str) -> str:
    """A member renamed at a merge (notice "renamed")."""
    return (
        f"the nick {old} was taken elsewhere in the chat cluster while it was split; "
        f"you are {new} now"
    )


def full_text(kept: int, quote: str = "") -> str:
    """The error of a line (or a move, rename, hello) refused at the bound."""
    if len(quote) > QUOTE_CHARS:
        quote = quote[: QUOTE_CHARS - 1] + "\u2026"
    said = f': "{quote}"' if quote else ""
    return (
        f"not sent{said}: this server already keeps {kept} events for the chat cluster, "
        "whose message engine does not answer; try again when it is whole"
    )


def nick_variant(nick: str, attempt: int, salt: int) -> str:
    """The ``attempt``-th nick to try for a member whose ``nick`` is someone else's:
    "bob_", "bob__", then the nick's start and four digits from ``salt`` (the
    member's serial) and the attempt, so two daemons rarely pick the same."""
    if attempt < 2 and len(nick) + attempt + 1 <= NICK_MAX_CHARS:
        return nick + "_" * (attempt + 1)
    return nick[: NICK_MAX_CHARS - 4] + f"{(salt * 7919 + attempt * 104729) % 10000:04d}"


@dataclass(slots=True)
class Kept:
    event: RoomEvent
    shown: bool  # shown to this daemon's members already (split: at once)


class KeptEvents:
    """This daemon's events that the engine has not given back yet, in the order they
    happened, by event id (``RoomEvent.line_id``).

    A room's stream gives this daemon's events back in the order they were published
    (one connection, answered in order), so an event given back confirms the earlier
    ones of its room too: those the engine trimmed before this daemon read them
    (docs/CLUSTER.md: a daemon that falls far behind) are not kept for ever."""

    def __init__(self, limit: int = KEPT_EVENTS_MAX) -> None:
        self.limit = limit
        self._events: OrderedDict[str, Kept] = OrderedDict()
        self._rooms: dict[str, deque[str]] = {}  # room -> its kept event ids, in order

    def __len__(self) -> int:
        return len(self._events)

    def full(self) -> bool:
        """No room for an event a member causes on purpose (a part still fits)."""
        return len(self._events) >= self.limit

    def add(self, event: RoomEvent, shown: bool) -> None:
        self._events[event.line_id] = Kept(event, shown)
        self._rooms.setdefault(event.room, deque()).append(event.line_id)

    def add_first(self, events: list[RoomEvent]) -> None:
        """Events that come before every kept one (shown here already)."""
        for event in reversed(events):
            self._events[event.line_id] = Kept(event, True)
            self._events.move_to_end(event.line_id, last=False)
            self._rooms.setdefault(event.room, deque()).appendleft(event.line_id)

    def confirm(self, event_id: str) -> list[Kept]:
        """The engine gave this event back: it, and the earlier ones of its room, are
        no longer kept; returned in order. Empty if it is not a kept event."""
        kept = self._events.get(event_id) if event_id else None
        if kept is None:
            return []
        room = kept.event.room
        ids = self._rooms[room]
        out = []
        while ids:
            out.append(self._events.pop(ids[0]))
            if ids.popleft() == event_id:
                break
        if not ids:
            del self._rooms[room]
        return out

    def take_unshown(self) -> list[RoomEvent]:
        """The events not shown here yet, in order; they count as shown from now on."""
        out = []
        for kept in self._events.values():
            if not kept.shown:
                kept.shown = True
                out.append(kept.event)
        return out

    def events(self) -> list[RoomEvent]:
        """Every kept event, in order."""
        return [kept.event for kept in self._events.values()]

    def holds(self, room: str) -> bool:
        """Whether an event of ``room`` is kept (the room must still be followed, to
        see it come back)."""
        return room in self._rooms
