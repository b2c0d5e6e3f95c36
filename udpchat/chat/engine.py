"""What a daemon of a cluster asks of its message engine and what the engine answers:
the contract between ClusterRules (udpchat.chat.cluster, sans-IO) and the engine's
adapter (udpchat.daemon.cluster, Redis). docs/CLUSTER.md has the design.

The rules hand out *requests* and take *replies*; the adapter only carries them out.
Everything here is a small frozen dataclass, so that tests can play the engine in
memory (tests/test_cluster_rules.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal, TypeAlias

from udpchat.chat.messages import PrivateMsgIn

EventKind: TypeAlias = Literal["say", "me", "join", "part", "nick"]
_EVENT_KINDS = frozenset({"say", "me", "join", "part", "nick"})


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """One event of a room's stream: what every daemon shows its members of the room.

    ``member`` names the member it is about, where it is connected ("<node>/<n>");
    ``line_id`` is a line's id (say/me) or, for a notice, an id its daemon gave it
    ("<node>:<n>"), so that an event published twice (again after a split, not
    knowing whether the engine got it the first time) is shown once; empty in the
    parts a reaper publishes. ``ts`` is when a line was said (Unix time); ``old`` the
    previous nick of a rename; ``reason`` one of the part reasons."""

    kind: EventKind
    room: str
    nick: str
    member: str
    text: str = ""
    line_id: str = ""
    ts: float | None = None
    old: str = ""
    reason: str = ""

    def to_json(self) -> bytes:
        fields = {k: v for k, v in asdict(self).items() if v not in ("", None)}
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RoomEvent:
        """Raises ValueError on anything but an event this module wrote."""
        try:
            obj = json.loads(data)
            event = cls(**obj)
        except (TypeError, UnicodeDecodeError) as exc:
            raise ValueError(str(exc)) from None
        if event.kind not in _EVENT_KINDS or not all(
            isinstance(getattr(event, name), str)
            for name in ("room", "nick", "member", "text", "line_id", "old", "reason")
        ):
            raise ValueError("not a room event")
        if event.ts is not None and not isinstance(event.ts, (int, float)):
            raise ValueError("not a room event")
        return event


# --- requests: what the rules ask of the engine ---------------------------------------

#: Why a nick is claimed: "new" (a hello or a rename: granted only if nobody else
#: holds it), or again at a merge (docs/CLUSTER.md, "Split and merge"): "firm" for a
#: nick the engine had granted before the split (it displaces one taken during a
#: split elsewhere), "provisional" for one taken while this daemon was split.
ClaimKind: TypeAlias = Literal["new", "firm", "provisional"]


@dataclass(frozen=True, slots=True)
class ClaimNick:
    """Make ``nick`` this member's in the whole cluster (answer: NickClaimed). A nick
    held by the same member, or by the same client id (a reconnect through another
    daemon), is granted too."""

    session_id: bytes
    nick: str
    client: str
    member: str
    kind: ClaimKind = "new"


@dataclass(frozen=True, slots=True)
class ReleaseNick:
    """The member no longer holds ``nick`` (no answer)."""

    nick: str
    member: str


@dataclass(frozen=True, slots=True)
class LoadRoom:
    """Start following a room: answer RoomLoaded (its history), then its events; or
    RoomLoadFailed."""

    room: str


@dataclass(frozen=True, slots=True)
class DropRoom:
    """Stop following a room (no member here is in it any more)."""

    room: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Append an event to its room's stream (and keep the room's member list and
    history in step with it)."""

    event: RoomEvent


@dataclass(frozen=True, slots=True)
class Register:
    """At a merge: put a member of this daemon (a join event: room, nick, member) back
    into the engine's member lists, without appending anything to the room's stream
    (nobody saw it leave). No answer."""

    event: RoomEvent


@dataclass(frozen=True, slots=True)
class QueryWho:
    session_id: bytes
    room: str


@dataclass(frozen=True, slots=True)
class QueryRooms:
    session_id: bytes


@dataclass(frozen=True, slots=True)
class SendPrivate:
    """A private message for ``to``, who is not a member of this daemon: to its
    daemon (answer PrivateFailed if nobody holds the nick)."""

    session_id: bytes
    to: str
    message: PrivateMsgIn


Request: TypeAlias = (
    ClaimNick | ReleaseNick | LoadRoom | DropRoom | Publish | Register | QueryWho | QueryRooms
    | SendPrivate
)  # fmt: skip


# --- replies: what the engine answers -------------------------------------------------


@dataclass(frozen=True, slots=True)
class NickClaimed:
    """``ok``: the nick is the member's; otherwise someone else holds it, or (with
    ``unavailable``) the engine could not be asked. ``kind`` and ``member`` are the
    claim's."""

    session_id: bytes
    nick: str
    ok: bool
    unavailable: bool = False
    kind: ClaimKind = "new"
    member: str = ""


@dataclass(frozen=True, slots=True)
class RoomLoaded:
    """The room's lines said so far (say/me events, oldest first); the room's events
    after them follow as RoomEvent replies."""

    room: str
    history: tuple[RoomEvent, ...]


@dataclass(frozen=True, slots=True)
class RoomLoadFailed:
    """The room could not be loaded (the engine went away meanwhile)."""

    room: str


@dataclass(frozen=True, slots=True)
class WhoAnswer:
    session_id: bytes
    room: str
    nicks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoomsAnswer:
    session_id: bytes
    counts: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class PrivateIn:
    """A private message for ``to``, a member of this daemon, from another daemon."""

    to: str
    message: PrivateMsgIn


@dataclass(frozen=True, slots=True)
class PrivateFailed:
    """Nobody holds ``to``; or, with ``unavailable``, the engine could not be asked."""

    session_id: bytes
    to: str
    unavailable: bool = False


#: Why a member's nick is no longer its own in the engine: "takeover" (the same client
#: id holds it now: the client reconnected through another daemon), "displaced" (a
#: member elsewhere holds it: taken while the cluster was split), "gone" (nobody: its
#: lease ran out, or a reaper freed it).
LostWhy: TypeAlias = Literal["takeover", "displaced", "gone"]


@dataclass(frozen=True, slots=True)
class NickLost:
    """The engine no longer has ``member``'s nick as its (found when renewing)."""

    member: str
    why: LostWhy = "takeover"


@dataclass(frozen=True, slots=True)
class EngineLost:
    """The engine does not answer: this daemon is split from the others until
    EngineBack."""


@dataclass(frozen=True, slots=True)
class EngineBack:
    """The engine answers again, and this daemon's lease is renewed. ``lost_data``:
    it restarted empty (members, nicks, rooms and history are gone from it);
    ``reaped``: it kept its data but took this daemon for dead meanwhile (the others
    saw its members leave)."""

    lost_data: bool
    reaped: bool = False


Reply: TypeAlias = (
    NickClaimed | RoomEvent | RoomLoaded | RoomLoadFailed | WhoAnswer | RoomsAnswer
    | PrivateIn | PrivateFailed | NickLost | EngineLost | EngineBack
)  # fmt: skip
