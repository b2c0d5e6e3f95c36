"""Several daemons, one chat: the chat rules of a daemon in a cluster, sans-IO.

A daemon with a [cluster] section runs ClusterRules instead of ChatRules. What a
room shares (its lines, joins, parts and renames, its history, its member list)
lives in a message engine that every daemon of the cluster reads
(docs/CLUSTER.md); what a member's own session needs (welcome, errors, history,
flow control, closing) stays here, as in ChatRules. The rules never talk to the
engine: they hand out *requests* and take *replies*, like the rest of the chat
layer, so that they are tested without Redis and the engine adapter
(udpchat.daemon.cluster) only moves them::

    rules = ClusterRules(node="a.5f3c", history_lines=50, ...)
    ... the ChatRules calls ...
    rules.take_requests() -> [Request, ...]   # ClaimNick, Publish, LoadRoom, ...
    rules.reply(reply, now)                   # NickClaimed, RoomEvent, RoomLoaded, ...

One order for a room: a member's line is not shown by the daemon that took it;
it is published (Publish) and every daemon, that one included, shows the room's
events in the order the engine gives them (RoomEvent), each to its own members.
A room is *loaded* (LoadRoom -> RoomLoaded: its history and the point in its
event stream that history ends at) before a member enters it, and *dropped*
(DropRoom) when its last member here leaves: what a daemon holds of a room is
exactly what its events made of it.

Nicks are unique in the whole cluster: a hello or a rename first claims the nick
(ClaimNick -> NickClaimed); only the engine can say yes. /who and /rooms are
asked of the engine (QueryWho, QueryRooms), private messages to a member of
another daemon are sent through it (SendPrivate -> PrivateIn there).

Nothing is shown twice: line ids are remembered where an event is applied, so a
line re-sent after a lost acknowledgement, even through another daemon, is shown
and kept once, by every daemon alike (they all apply the same stream).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from itertools import count
from typing import Any, Literal, TypeAlias

from udpchat.chat.lineids import RecentIds
from udpchat.chat.messages import (
    Hello,
    JoinNotice,
    Me,
    MeOut,
    MessageError,
    NickNotice,
    PartNotice,
    PrivateMsg,
    PrivateMsgIn,
    Say,
    SayOut,
    Welcome,
    encode,
    fold_nick,
    rooms_chunks,
    who_chunks,
)
from udpchat.chat.rules import LINE_IDS_KEPT, ChatRules, LogEvent, _Member, _Room

EventKind: TypeAlias = Literal["say", "me", "join", "part", "nick"]
_EVENT_KINDS = frozenset({"say", "me", "join", "part", "nick"})

#: What a member hears when the engine cannot be asked (a hello, a rename).
ENGINE_DOWN_TEXT = "the chat cluster cannot reach its message engine; try again shortly"
#: The reason of the part a daemon publishes for a stale member whose client took its
#: nick over through another daemon (NickLost): the member is there, so no daemon shows
#: this part (it is not a reason of the protocol's); it keeps the engine's member list
#: in step. The reaper of a dead daemon publishes none for such a member at all.
TAKEN_OVER = "taken-over"


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """One event of a room's stream: what every daemon shows its members of the room.

    ``member`` names the member it is about, where it is connected ("<node>/<n>");
    ``ts`` is when a line was said (Unix time); ``old`` the previous nick of a
    rename; ``reason`` one of the part reasons."""

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


@dataclass(frozen=True, slots=True)
class ClaimNick:
    """Make ``nick`` this member's in the whole cluster (answer: NickClaimed). A nick
    held by the same member, or by the same client id (a reconnect through another
    daemon), is granted too."""

    session_id: bytes
    nick: str
    client: str
    member: str


@dataclass(frozen=True, slots=True)
class ReleaseNick:
    """The member no longer holds ``nick`` (no answer)."""

    nick: str
    member: str


@dataclass(frozen=True, slots=True)
class LoadRoom:
    """Start following a room: answer RoomLoaded (its history), then its events."""

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
    ClaimNick | ReleaseNick | LoadRoom | DropRoom | Publish | QueryWho | QueryRooms | SendPrivate
)


# --- replies: what the engine answers -------------------------------------------------


@dataclass(frozen=True, slots=True)
class NickClaimed:
    """``ok``: the nick is the member's; otherwise someone else holds it, or (with
    ``unavailable``) the engine could not be asked."""

    session_id: bytes
    nick: str
    ok: bool
    unavailable: bool = False


@dataclass(frozen=True, slots=True)
class RoomLoaded:
    """The room's lines said so far (say/me events, oldest first); the room's events
    after them follow as RoomEvent replies."""

    room: str
    history: tuple[RoomEvent, ...]


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
    session_id: bytes
    to: str


@dataclass(frozen=True, slots=True)
class NickLost:
    """The engine no longer has ``member``'s nick as its (a reconnect through another
    daemon took it over): the member here is stale, and closed."""

    member: str


Reply: TypeAlias = (
    NickClaimed | RoomEvent | RoomLoaded | WhoAnswer | RoomsAnswer | PrivateIn | PrivateFailed
    | NickLost
)  # fmt: skip


class ClusterRules(ChatRules):
    """ChatRules for one daemon of a cluster (see the module docstring)."""

    def __init__(self, node: str, **kwargs: Any) -> None:
        """`node` names this daemon in member ids; it must differ between daemons and
        between two runs of one daemon (the adapter adds a random incarnation)."""
        super().__init__(**kwargs)
        self.node = node
        self._requests: list[Request] = []
        self._serial = count(1)
        self._member_ids: dict[_Member, str] = {}
        self._by_member_id: dict[str, _Member] = {}
        self._pending_hello: dict[bytes, tuple[Hello, str]] = {}
        # Renames waiting for the engine: the new nick, and for which member.
        self._pending_rename: dict[bytes, tuple[str, str]] = {}
        # Rooms being loaded, with who waits to enter them (and whether by hello).
        self._loading: dict[str, list[tuple[_Member, bool]]] = {}
        # Line ids applied from the streams (the ChatRules' own set holds those this
        # daemon published): both, so that a re-sent line is published once.
        self._applied = RecentIds(LINE_IDS_KEPT)

    # --- what the server reads -------------------------------------------------------

    def take_requests(self) -> list[Request]:
        """What to ask of the engine, in order; the list is emptied."""
        out, self._requests = self._requests, []
        return out

    def member_id(self, session_id: bytes) -> str | None:
        member = self._members.get(session_id)
        return None if member is None else self._member_ids.get(member)

    # --- what the engine answers -----------------------------------------------------

    def reply(self, reply: Reply, now: float) -> None:
        """One answer of the engine; stale ones (the session ended meanwhile) are
        tidied up and otherwise ignored."""
        if self._shut_down:
            return
        self._now = now
        if isinstance(reply, RoomEvent):
            self._apply(reply)
        elif isinstance(reply, NickClaimed):
            if reply.session_id in self._pending_hello:
                self._hello_claimed(reply)
            else:
                self._rename_claimed(reply)
        elif isinstance(reply, RoomLoaded):
            self._room_loaded(reply)
        elif isinstance(reply, WhoAnswer):
            if reply.session_id in self._members:
                nicks = sorted(reply.nicks, key=fold_nick)
                for chunk in who_chunks(reply.room, nicks):
                    self._send(reply.session_id, chunk)
        elif isinstance(reply, RoomsAnswer):
            if reply.session_id in self._members:
                for listing in rooms_chunks(sorted(reply.counts)):
                    self._send(reply.session_id, listing)
        elif isinstance(reply, PrivateIn):
            target = self._by_nick.get(fold_nick(reply.to))
            if target is not None and self._applied.add(reply.message.line_id):
                self._send(target.session_id, reply.message)
        elif isinstance(reply, PrivateFailed):
            if reply.session_id in self._members:
                self._error(reply.session_id, "no-such-nick", f"no such nick: {reply.to}")
        else:  # NickLost
            member = self._by_member_id.get(reply.member)
            if member is not None:
                session_id = member.session_id
                self._remove(member, TAKEN_OVER, release=False)
                self._log_member("takeover", member)
                self._close(session_id)

    def shutdown(self, text: str, now: float) -> None:
        """The other daemons' members see this one's leave ("shutdown")."""
        if not self._shut_down:
            for member in list(self._members.values()):
                self._remove(member, "shutdown")
        super().shutdown(text, now)

    # --- hello and nicks -------------------------------------------------------------

    def _hello(self, session_id: bytes, msg: Hello) -> None:
        if session_id in self._members or session_id in self._pending_hello:
            self._error(session_id, "bad-message", "hello was already accepted")
            return
        stale = self._by_client.get(msg.client)
        holder = self._by_nick.get(fold_nick(msg.nick))
        if holder is not None and holder is not stale:
            self._refuse(session_id, msg.nick, "nick-taken", f"{holder.nick} is taken")
            return
        waiting = len(self._members) + len(self._pending_hello)
        if stale is None and waiting >= self._max_members:
            full = f"the server is full ({self._max_members} members); try again later"
            self._refuse(session_id, msg.nick, "server-full", full)
            return
        if stale is not None and stale.nick == msg.nick and stale.room == msg.room:
            if stale.room not in self._loading:
                super()._hello(session_id, msg)  # a silent hand-over, as ever
                return
        if stale is not None:
            addr = self._sessions[session_id]
            takeover = LogEvent("takeover", stale.nick, addr, stale.room, session_id=session_id)
            self._actions.append(takeover)
            self._close(stale.session_id)
            self._remove(stale, "quit")
        member_id = f"{self.node}/{next(self._serial)}"
        self._pending_hello[session_id] = (msg, member_id)
        self._requests.append(ClaimNick(session_id, msg.nick, msg.client, member_id))

    def _hello_claimed(self, reply: NickClaimed) -> None:
        session_id = reply.session_id
        msg, member_id = self._pending_hello.pop(session_id)
        if session_id not in self._sessions:  # ended while the engine was asked
            if reply.ok:
                self._requests.append(ReleaseNick(msg.nick, member_id))
            return
        holder = self._by_nick.get(fold_nick(msg.nick))
        if reply.ok and (holder is not None or msg.client in self._by_client):
            self._requests.append(ReleaseNick(msg.nick, member_id))
            reply = NickClaimed(session_id, msg.nick, ok=False)
        if not reply.ok:
            if reply.unavailable:
                self._refuse(session_id, msg.nick, "server-full", ENGINE_DOWN_TEXT)
            else:
                self._refuse(session_id, msg.nick, "nick-taken", f"{msg.nick} is taken")
            return
        member = _Member(session_id, msg.nick, msg.client, msg.room, self._sessions[session_id])
        self._members[session_id] = member
        self._by_nick[fold_nick(member.nick)] = member
        self._by_client[member.client] = member
        self._member_ids[member] = member_id
        self._by_member_id[member_id] = member
        self._enter_room(member, msg.room, hello=True)
        self._log_member("join", member)

    def _rename(self, member: _Member, nick: str) -> None:
        if nick == member.nick:
            self._error(member.session_id, "already-there", f"you are already {nick}")
            return
        holder = self._by_nick.get(fold_nick(nick))
        if holder is not None and holder is not member:
            self._error(member.session_id, "nick-taken", f"{holder.nick} is taken")
            return
        if holder is member:  # only its case changes: the engine's key is the same
            self._renamed(member, nick)
            return
        if member.session_id in self._pending_rename:
            self._error(member.session_id, "nick-taken", "a rename is already under way")
            return
        member_id = self._member_ids[member]
        self._pending_rename[member.session_id] = (nick, member_id)
        self._requests.append(ClaimNick(member.session_id, nick, member.client, member_id))

    def _rename_claimed(self, reply: NickClaimed) -> None:
        pending = self._pending_rename.pop(reply.session_id, None)
        if pending is None:
            return
        nick, member_id = pending
        member = self._by_member_id.get(member_id)
        if member is None:  # it left meanwhile
            if reply.ok:
                self._requests.append(ReleaseNick(nick, member_id))
            return
        holder = self._by_nick.get(fold_nick(nick))
        if reply.ok and holder is not None and holder is not member:
            self._requests.append(ReleaseNick(nick, member_id))
            reply = NickClaimed(reply.session_id, nick, ok=False)
        if not reply.ok:
            text = ENGINE_DOWN_TEXT if reply.unavailable else f"{nick} is taken"
            self._error(member.session_id, "nick-taken", text)
            return
        self._requests.append(ReleaseNick(member.nick, member_id))
        self._renamed(member, nick)

    def _renamed(self, member: _Member, nick: str) -> None:
        old = member.nick
        del self._by_nick[fold_nick(old)]
        member.nick = nick
        self._by_nick[fold_nick(nick)] = member
        if member.room not in self._loading:
            self._publish(member, "nick", old=old)
        self._log_member("rename", member, detail=old)

    # --- rooms -----------------------------------------------------------------------

    def _join(self, member: _Member, name: str) -> None:
        if name == member.room:
            self._error(member.session_id, "already-there", f"you are already in {name}")
            return
        old = member.room
        self._leave_room(member, "part")
        self._enter_room(member, name, hello=False)
        self._log_member("move", member, detail=old)

    def _enter_room(self, member: _Member, name: str, hello: bool) -> None:
        member.room = name
        room = self._rooms.get(name)
        if room is not None and name not in self._loading:
            self._admit(member, room, hello)
            return
        if room is None:
            self._rooms[name] = _Room(name)
            self._loading[name] = []
            self._requests.append(LoadRoom(name))
        self._loading[name].append((member, hello))

    def _admit(self, member: _Member, room: _Room, hello: bool) -> None:
        """Into a loaded room: welcome, history, and the join for everyone."""
        room.members[member.session_id] = member
        if hello:
            self._send(member.session_id, Welcome(member.nick, room.name))
        self._send_history(member)
        self._publish(member, "join")

    def _room_loaded(self, reply: RoomLoaded) -> None:
        waiting = self._loading.pop(reply.room, None)
        room = self._rooms.get(reply.room)
        if waiting is None or room is None:
            return  # dropped while loading
        for event in reply.history:
            if self._applied.add(event.line_id) and self._history_lines:
                said = _line(event, history=True)
                if said is not None:
                    room.remember(encode(said), self._history_lines)
        for member, hello in waiting:
            if self._members.get(member.session_id) is member and member.room == room.name:
                self._admit(member, room, hello)
        if not room.members:
            self._drop(room)

    def _leave_room(self, member: _Member, reason: str) -> None:
        name = member.room
        waiting = self._loading.get(name)
        if waiting is not None:  # it never entered: nobody was told it joined
            waiting[:] = [(m, hello) for m, hello in waiting if m is not member]
            return
        room = self._rooms.get(name)
        if room is None or room.members.pop(member.session_id, None) is None:
            return
        self._publish(member, "part", reason=reason)
        if not room.members:
            # The server must learn that the room's key holders here are gone: an
            # empty broadcast tells it (see ChatRules._fan_out).
            shown = "quit" if reason == TAKEN_OVER else reason
            self._fan_out(room, PartNotice(name, member.nick, shown), None, None)
            self._drop(room)

    def _drop(self, room: _Room) -> None:
        del self._rooms[room.name]
        self._paced.pop(room.name, None)
        room.pending.clear()
        self._requests.append(DropRoom(room.name))

    def _remove(self, member: _Member, reason: str, release: bool = True) -> None:
        self._leave_room(member, reason)
        del self._members[member.session_id]
        del self._by_nick[fold_nick(member.nick)]
        del self._by_client[member.client]
        member_id = self._member_ids.pop(member)
        del self._by_member_id[member_id]
        if release:
            self._requests.append(ReleaseNick(member.nick, member_id))

    def session_ended(self, session_id: bytes, reason: str, now: float) -> None:
        self._pending_hello.pop(session_id, None)  # its claim is released when answered
        super().session_ended(session_id, reason, now)

    # --- lines, who, rooms, private messages -----------------------------------------

    def _line(self, member: _Member, msg: Say | Me, now: float) -> None:
        if msg.line_id in self._applied or not self._line_ids.add(msg.line_id):
            return  # relayed already: only its acknowledgement was lost
        if member.room in self._loading:
            return  # not welcomed yet: no client says anything before its welcome
        kind: EventKind = "say" if isinstance(msg, Say) else "me"
        self._publish(member, kind, text=msg.text, line_id=msg.line_id, ts=self._wall(now))

    def _who(self, member: _Member) -> None:
        self._requests.append(QueryWho(member.session_id, member.room))

    def _list_rooms(self, member: _Member) -> None:
        self._requests.append(QueryRooms(member.session_id))

    def _private(self, member: _Member, msg: PrivateMsg) -> None:
        if msg.line_id in self._line_ids or msg.line_id in self._applied:
            return
        if fold_nick(msg.to) in self._by_nick:
            super()._private(member, msg)
            return
        self._line_ids.add(msg.line_id)
        message = PrivateMsgIn(member.nick, msg.text, msg.line_id)
        self._requests.append(SendPrivate(member.session_id, msg.to, message))

    # --- events ----------------------------------------------------------------------

    def _publish(self, member: _Member, kind: EventKind, **fields: Any) -> None:
        event = RoomEvent(kind, member.room, member.nick, self._member_ids[member], **fields)
        self._requests.append(Publish(event))

    def _apply(self, event: RoomEvent) -> None:
        """One event of a room's stream, to this daemon's members of the room."""
        room = self._rooms.get(event.room)
        if room is None or event.room in self._loading:
            return  # not followed here (any more), or its history is on the way
        local = self._by_member_id.get(event.member)
        if local is not None and local.room != room.name:
            local = None
        try:
            if event.kind in ("say", "me"):
                line, said = _line(event, history=False), _line(event, history=True)
                if line is None or not self._applied.add(event.line_id):
                    return
                skip = None if local is None else local.session_id
                self._broadcast(room, line, skip=skip, sender=local, history=said)
            elif event.kind == "join":
                self._broadcast(room, JoinNotice(room.name, event.nick))
            elif event.kind == "part":
                if event.reason != TAKEN_OVER:  # else it is here, through another daemon
                    self._broadcast(room, PartNotice(room.name, event.nick, event.reason))
            else:
                self._broadcast(room, NickNotice(event.old, event.nick))
        except MessageError:
            return  # not one this module wrote: nothing to show


def _line(event: RoomEvent, history: bool) -> SayOut | MeOut | None:
    """The say/me message of a line event (with its time if replayed), or None."""
    kind = SayOut if event.kind == "say" else MeOut if event.kind == "me" else None
    if kind is None:
        return None
    ts = (event.ts or 0.0) if history else None
    try:
        return kind(event.room, event.nick, event.text, event.line_id, ts=ts)
    except MessageError:
        return None
