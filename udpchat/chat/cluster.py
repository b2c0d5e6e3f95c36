"""Several daemons, one chat: the chat rules of a daemon in a cluster, sans-IO.

A daemon with a [cluster] section runs ClusterRules instead of ChatRules. What a
room shares (its lines, joins, parts and renames, its history, its member list)
lives in a message engine that every daemon of the cluster reads
(docs/CLUSTER.md); what a member's own session needs (welcome, errors, history,
flow control, closing) stays here, as in ChatRules. The rules never talk to the
engine: they hand out *requests* and take *replies* (udpchat.chat.engine), like
the rest of the chat layer, so that they are tested without Redis and the engine
adapter (udpchat.daemon.cluster) only moves them::

    rules = ClusterRules(node="a.5f3c", history_lines=50, ...)
    ... the ChatRules calls ...
    rules.take_requests() -> [Request, ...]   # ClaimNick, Publish, LoadRoom, ...
    rules.reply(reply, now)                   # NickClaimed, RoomEvent, RoomLoaded, ...

One order for a room: a member's line is not shown by the daemon that took it;
it is published (Publish) and every daemon, that one included, shows the room's
events in the order the engine gives them (RoomEvent), each to its own members.
A room is *loaded* (LoadRoom -> RoomLoaded: its history and the point in its
event stream that history ends at) before a member enters it, and *dropped*
(DropRoom) once its last member here left and the engine gave back every event
this daemon published in it: what a daemon holds of a room is exactly what its
events made of it.

Nicks are unique in the whole cluster: a hello or a rename first claims the nick
(ClaimNick -> NickClaimed); only the engine can say yes. /who and /rooms are
asked of the engine (QueryWho, QueryRooms), private messages to a member of
another daemon are sent through it (SendPrivate -> PrivateIn there).

Split and merge: while the engine does not answer (EngineLost), the daemon serves
its own members as a single daemon would: their events are shown here at once,
and kept (udpchat.chat.split) in order, bounded; hellos and renames are decided
here, their nicks *provisional*. Members who asked for notices are told their room
is split, and again when it is merged back (EngineBack): then the daemon claims
its members' nicks again, puts them back into the engine's member lists, loads the
rooms entered meanwhile, and publishes what it kept; a member whose nick turns out
to be someone else's is renamed (docs/CLUSTER.md states who keeps a nick).

Nothing is shown twice: every event carries an id (a line's id, or one its daemon
gave a notice), remembered where an event is applied, so an event published again
(a line re-sent after a lost acknowledgement, even through another daemon; an
event published again at a merge) is shown and kept once, by every daemon alike.
"""

from __future__ import annotations

from itertools import count
from typing import Any

from udpchat.chat.engine import (
    ClaimKind,
    ClaimNick,
    DropRoom,
    EngineBack,
    EngineLost,
    EventKind,
    LoadRoom,
    NickClaimed,
    NickLost,
    PrivateFailed,
    PrivateIn,
    Publish,
    QueryRooms,
    QueryWho,
    Register,
    ReleaseNick,
    Reply,
    Request,
    RoomEvent,
    RoomLoaded,
    RoomLoadFailed,
    RoomsAnswer,
    SendPrivate,
    WhoAnswer,
)
from udpchat.chat.lineids import RecentIds
from udpchat.chat.messages import (
    Caps,
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
    ServerNotice,
    Welcome,
    encode,
    fold_nick,
    rooms_chunks,
    who_chunks,
)
from udpchat.chat.rules import LINE_IDS_KEPT, ChatRules, LogEvent, _Member, _Room
from udpchat.chat.split import (
    KEPT_EVENTS_MAX,
    RENAME_TRIES,
    KeptEvents,
    full_text,
    merged_text,
    nick_variant,
    renamed_text,
    split_text,
)

__all__ = [  # the engine's contract, for those who import it from here
    "ClaimNick", "ClusterRules", "DropRoom", "EngineBack", "EngineLost", "LoadRoom",
    "NickClaimed", "NickLost", "PrivateFailed", "PrivateIn", "Publish", "QueryRooms",
    "QueryWho", "Register", "ReleaseNick", "Reply", "Request", "RoomEvent", "RoomLoaded",
    "RoomLoadFailed", "RoomsAnswer", "SendPrivate", "WhoAnswer",
]  # fmt: skip

#: What a member hears when the engine cannot be asked (a hello, a rename, a room).
ENGINE_DOWN_TEXT = "the chat cluster cannot reach its message engine; try again shortly"
#: The reason of the part a daemon publishes for a stale member whose client took its
#: nick over through another daemon (NickLost): the member is there, so no daemon shows
#: this part (it is not a reason of the protocol's); it keeps the engine's member list
#: in step. The reaper of a dead daemon publishes none for such a member at all.
TAKEN_OVER = "taken-over"


class ClusterRules(ChatRules):
    """ChatRules for one daemon of a cluster (see the module docstring)."""

    def __init__(self, node: str, *, kept_max: int = KEPT_EVENTS_MAX, **kwargs: Any) -> None:
        """`node` names this daemon in member ids; it must differ between daemons and
        between two runs of one daemon (the adapter adds a random incarnation).
        `kept_max`: how many of its events the daemon keeps for the engine at most
        (udpchat.chat.split)."""
        super().__init__(**kwargs)
        self.node = node
        self._requests: list[Request] = []
        self._serial = count(1)
        self._events = count(1)
        self._member_ids: dict[_Member, str] = {}
        self._by_member_id: dict[str, _Member] = {}
        self._pending_hello: dict[bytes, tuple[Hello, str]] = {}
        # Renames waiting for the engine: the new nick, and for which member.
        self._pending_rename: dict[bytes, tuple[str, str]] = {}
        # Rooms being loaded, with who waits to enter them (and whether by hello).
        self._loading: dict[str, list[tuple[_Member, bool]]] = {}
        # Ids of the events applied from the streams (the ChatRules' own set holds the
        # line ids this daemon took from its members): both, so that a line re-sent
        # is published once, and an event published twice is shown once.
        self._applied = RecentIds(LINE_IDS_KEPT)
        # -- split and merge --
        self.split = False  # the engine does not answer: serving this daemon alone
        self._kept = KeptEvents(kept_max)  # this daemon's events not given back yet
        # Members as the engine last confirmed them (room, nick), by member id: what
        # the others saw last, to show them again if they were reaped meanwhile.
        self._confirmed: dict[str, tuple[str, str]] = {}
        self._provisional: set[str] = set()  # member ids whose nick was taken while split
        # Nicks the engine had granted and their members let go of while split: to
        # release at the merge (folded nick -> nick, member id).
        self._released: dict[str, tuple[str, str]] = {}
        self._unloaded: set[str] = set()  # rooms entered while split: loaded at the merge
        self._conflicted: dict[str, int] = {}  # member id -> renames tried so far

    # --- what the server reads -------------------------------------------------------

    def take_requests(self) -> list[Request]:
        """What to ask of the engine, in order; the list is emptied."""
        out, self._requests = self._requests, []
        return out

    def member_id(self, session_id: bytes) -> str | None:
        member = self._members.get(session_id)
        return None if member is None else self._member_ids.get(member)

    @property
    def room_count(self) -> int:
        """How many rooms have members here (a room whose last member left is kept
        until the engine gave its last events back)."""
        return sum(1 for room in self._rooms.values() if room.members)

    @property
    def kept_events(self) -> int:
        """This daemon's events the engine has not given back yet."""
        return len(self._kept)

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
            if reply.kind != "new":
                self._reclaimed(reply)
            elif reply.session_id in self._pending_hello:
                self._hello_claimed(reply)
            else:
                self._rename_claimed(reply)
        elif isinstance(reply, RoomLoaded):
            self._room_loaded(reply)
        elif isinstance(reply, RoomLoadFailed):
            self._room_load_failed(reply.room)
        elif isinstance(reply, EngineLost):
            self._split_off()
        elif isinstance(reply, EngineBack):
            self._merge(reply)
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
                self._no_such_nick(reply.session_id, reply.to, reply.unavailable)
        else:
            self._nick_lost(reply)

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
        if self._kept.full():  # its join could not be kept
            self._refuse(session_id, msg.nick, "server-full", full_text(len(self._kept)))
            return
        if stale is not None:
            addr = self._sessions[session_id]
            takeover = LogEvent("takeover", stale.nick, addr, stale.room, session_id=session_id)
            self._actions.append(takeover)
            self._close(stale.session_id)
            self._remove(stale, "quit")
        member_id = f"{self.node}/{next(self._serial)}"
        if self.split:  # decided here; claimed in the engine at the merge
            self._provisional.add(member_id)
            self._welcome_member(session_id, msg, member_id)
            return
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
        self._welcome_member(session_id, msg, member_id)

    def _welcome_member(self, session_id: bytes, msg: Hello, member_id: str) -> None:
        member = _Member(session_id, msg.nick, msg.client, msg.room, self._sessions[session_id])
        self._members[session_id] = member
        self._by_nick[fold_nick(member.nick)] = member
        self._by_client[member.client] = member
        self._member_ids[member] = member_id
        self._by_member_id[member_id] = member
        self._enter_room(member, msg.room, hello=True)
        self._log_member("join", member)

    def _caps(self, member: _Member, msg: Caps) -> None:
        super()._caps(member, msg)
        # A member welcomed while split learns it as soon as it can be told.
        if self.split and member.session_id in self._rooms.get(member.room, _NO_ROOM).members:
            self._notice(member, "split", split_text(member.room))

    def _rename(self, member: _Member, nick: str) -> None:
        if nick == member.nick:
            self._error(member.session_id, "already-there", f"you are already {nick}")
            return
        holder = self._by_nick.get(fold_nick(nick))
        if holder is not None and holder is not member:
            self._error(member.session_id, "nick-taken", f"{holder.nick} is taken")
            return
        if self._kept.full():
            self._error(member.session_id, "server-full", full_text(len(self._kept)))
            return
        if holder is member:  # only its case changes: the engine's key is the same
            self._renamed(member, nick)
            return
        if member.session_id in self._pending_rename:
            self._error(member.session_id, "nick-taken", "a rename is already under way")
            return
        member_id = self._member_ids[member]
        if self.split:
            self._release(member.nick, member_id)
            self._provisional.add(member_id)
            self._renamed(member, nick)
            return
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
        conflicted = member_id in self._conflicted
        if not reply.ok:
            if conflicted and not reply.unavailable:
                self._conflict(member)  # that one is taken too: the next
            elif not conflicted:
                text = ENGINE_DOWN_TEXT if reply.unavailable else f"{nick} is taken"
                self._error(member.session_id, "nick-taken", text)
            return
        old = member.nick
        self._requests.append(ReleaseNick(old, member_id))
        self._provisional.discard(member_id)
        self._renamed(member, nick)
        if conflicted:
            del self._conflicted[member_id]
            self._notice(member, "renamed", renamed_text(old, nick))
            self._log_member("renamed", member, detail=old)

    def _renamed(self, member: _Member, nick: str) -> None:
        old = member.nick
        del self._by_nick[fold_nick(old)]
        member.nick = nick
        self._by_nick[fold_nick(nick)] = member
        if member.room not in self._loading:
            self._emit(member, "nick", old=old)
        self._log_member("rename", member, detail=old)

    def _release(self, nick: str, member_id: str) -> None:
        """The member no longer holds ``nick``: tell the engine (while split, at the
        merge; a nick taken while split was never the engine's)."""
        if not self.split:
            self._requests.append(ReleaseNick(nick, member_id))
        elif member_id not in self._provisional:
            self._released[fold_nick(nick)] = (nick, member_id)

    def _nick_lost(self, reply: NickLost) -> None:
        member = self._by_member_id.get(reply.member)
        if member is None:
            return
        if reply.why == "takeover":  # its client came back through another daemon
            session_id = member.session_id
            self._remove(member, TAKEN_OVER, release=False)
            self._log_member("takeover", member)
            self._close(session_id)
        elif self.split or member.session_id in self._pending_rename:
            return  # the merge claims it again; or it is changing anyway
        elif reply.why == "gone":  # its lease ran out: still this member's to take
            kind: ClaimKind = "provisional" if reply.member in self._provisional else "firm"
            claim = ClaimNick(member.session_id, member.nick, member.client, reply.member, kind)
            self._requests.append(claim)
        else:
            self._conflict(member)

    def _reclaimed(self, reply: NickClaimed) -> None:
        """The answer to a nick claimed again (at a merge, or after its lease ran out)."""
        member = self._by_member_id.get(reply.member)
        if member is None or fold_nick(member.nick) != fold_nick(reply.nick):
            if reply.ok:  # it left, or was renamed, meanwhile
                self._requests.append(ReleaseNick(reply.nick, reply.member))
            return
        if reply.ok:
            self._provisional.discard(reply.member)
        elif not reply.unavailable and member.session_id not in self._pending_rename:
            self._conflict(member)
        # Unavailable: the engine went away again; the next merge claims it again.

    def _conflict(self, member: _Member) -> None:
        """The member's nick is someone else's in the engine (taken while split): it is
        renamed to a variant the engine grants (RENAME_TRIES at most, else closed)."""
        member_id = self._member_ids[member]
        tries = self._conflicted.get(member_id, 0)
        session_id = member.session_id
        if tries >= RENAME_TRIES:
            text = f"{member.nick} is someone else's in the chat cluster; come back as another"
            self._error(session_id, "nick-taken", text)
            self._conflicted.pop(member_id, None)
            self._provisional.add(member_id)  # not this member's to release
            self._remove(member, "quit")
            self._log_member("leave", member, detail="nick-taken")
            self._close(session_id)
            return
        self._conflicted[member_id] = tries + 1
        self._provisional.add(member_id)
        serial = int(member_id.rsplit("/", 1)[-1])
        nick = nick_variant(member.nick, tries, serial)
        while fold_nick(nick) in self._by_nick and tries < 100:
            tries += 1
            nick = nick_variant(member.nick, tries, serial)
        self._pending_rename[session_id] = (nick, member_id)
        self._requests.append(ClaimNick(session_id, nick, member.client, member_id))

    # --- rooms -----------------------------------------------------------------------

    def _join(self, member: _Member, name: str) -> None:
        if name == member.room:
            self._error(member.session_id, "already-there", f"you are already in {name}")
            return
        if self._kept.full():
            self._error(member.session_id, "server-full", full_text(len(self._kept)))
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
            room = self._rooms[name] = _Room(name)
            if self.split:  # a room of this daemon alone until the merge loads it
                self._unloaded.add(name)
                self._admit(member, room, hello)
                return
            self._loading[name] = []
            self._requests.append(LoadRoom(name))
        self._loading[name].append((member, hello))

    def _admit(self, member: _Member, room: _Room, hello: bool) -> None:
        """Into a loaded room: welcome, history, and the join for everyone."""
        room.members[member.session_id] = member
        if hello:
            self._send(member.session_id, Welcome(member.nick, room.name))
        self._send_history(member)
        self._emit(member, "join")

    def _room_loaded(self, reply: RoomLoaded) -> None:
        room = self._rooms.get(reply.room)
        if reply.room in self._unloaded and room is not None:
            self._unloaded.discard(reply.room)
            self._merge_history(room, reply)
            return
        waiting = self._loading.pop(reply.room, None)
        if waiting is None or room is None:
            return  # dropped while loading
        for event in reply.history:
            if event.line_id and self._applied.add(event.line_id) and self._history_lines:
                said = _line(event, history=True)
                if said is not None:
                    room.remember(encode(said), self._history_lines)
        for member, hello in waiting:
            if self._members.get(member.session_id) is member and member.room == room.name:
                self._admit(member, room, hello)
        self._maybe_drop(room)

    def _merge_history(self, room: _Room, reply: RoomLoaded) -> None:
        """A room entered while split, loaded at the merge: the engine's lines first,
        then those said here meanwhile, within the history's bounds."""
        older = []
        for event in reply.history:
            said = _line(event, history=True)
            if said is not None and event.line_id and self._applied.add(event.line_id):
                older.append(encode(said))
        if not older or not self._history_lines:
            return
        lines = [*older, *room.history]
        room.history.clear()
        room.history_bytes = 0
        for line in lines:
            room.remember(line, self._history_lines)

    def _room_load_failed(self, name: str) -> None:
        """The engine went away between the claim and the load: those waiting are
        refused like a failed claim (a hello may come again; a move is closed, so that
        its client comes back into the room it knows)."""
        if name in self._unloaded:
            return  # a merge's load: the next merge asks again
        waiting = self._loading.pop(name, None)
        room = self._rooms.get(name)
        if waiting is None:
            return
        if room is not None and not room.members:
            del self._rooms[name]
        for member, hello in waiting:
            if self._members.get(member.session_id) is not member or member.room != name:
                continue
            session_id = member.session_id
            self._remove(member, "quit")  # it never entered: nobody hears it leave
            if hello:
                self._refuse(session_id, member.nick, "server-full", ENGINE_DOWN_TEXT)
            else:
                text = f"could not enter {name}: {ENGINE_DOWN_TEXT}"
                self._error(session_id, "server-full", text)
                self._log_member("leave", member, detail="server-full")
                self._close(session_id)

    def _leave_room(self, member: _Member, reason: str) -> None:
        name = member.room
        waiting = self._loading.get(name)
        if waiting is not None:  # it never entered: nobody was told it joined
            waiting[:] = [(m, hello) for m, hello in waiting if m is not member]
            return
        room = self._rooms.get(name)
        if room is None or room.members.pop(member.session_id, None) is None:
            return
        self._emit(member, "part", reason=reason)
        if not room.members and not self.split:
            # The server must learn that the room's key holders here are gone: an
            # empty broadcast tells it (see ChatRules._fan_out). Split, the part
            # notice shown here just did.
            shown = "quit" if reason == TAKEN_OVER else reason
            self._fan_out(room, PartNotice(name, member.nick, shown), None, None)
        self._maybe_drop(room)

    def _maybe_drop(self, room: _Room) -> None:
        """Drop a room without members here, once the engine gave back this daemon's
        events of it (else it keeps following it, to see them come back)."""
        if not room.members and room.name not in self._loading and not self._kept.holds(room.name):
            self._drop(room)

    def _drop(self, room: _Room) -> None:
        del self._rooms[room.name]
        self._paced.pop(room.name, None)
        self._unloaded.discard(room.name)
        room.pending.clear()
        self._requests.append(DropRoom(room.name))

    def _remove(self, member: _Member, reason: str, release: bool = True) -> None:
        self._leave_room(member, reason)
        del self._members[member.session_id]
        del self._by_nick[fold_nick(member.nick)]
        del self._by_client[member.client]
        member_id = self._member_ids.pop(member)
        del self._by_member_id[member_id]
        self._conflicted.pop(member_id, None)
        if release:
            self._release(member.nick, member_id)
        self._provisional.discard(member_id)

    def session_ended(self, session_id: bytes, reason: str, now: float) -> None:
        self._pending_hello.pop(session_id, None)  # its claim is released when answered
        super().session_ended(session_id, reason, now)

    # --- lines, who, rooms, private messages -----------------------------------------

    def _line(self, member: _Member, msg: Say | Me, now: float) -> None:
        if msg.line_id in self._applied or not self._line_ids.add(msg.line_id):
            return  # relayed already: only its acknowledgement was lost
        if member.room in self._loading:
            return  # not welcomed yet: no client says anything before its welcome
        if self._kept.full():
            self._error(member.session_id, "server-full", full_text(len(self._kept), msg.text))
            return
        kind: EventKind = "say" if isinstance(msg, Say) else "me"
        self._emit(member, kind, text=msg.text, line_id=msg.line_id, ts=self._wall(now))

    def _who(self, member: _Member) -> None:
        if self.split:
            super()._who(member)  # the members here: the only ones it can see now
        else:
            self._requests.append(QueryWho(member.session_id, member.room))

    def _list_rooms(self, member: _Member) -> None:
        if self.split:
            super()._list_rooms(member)
        else:
            self._requests.append(QueryRooms(member.session_id))

    def _private(self, member: _Member, msg: PrivateMsg) -> None:
        if msg.line_id in self._line_ids or msg.line_id in self._applied:
            return
        if fold_nick(msg.to) in self._by_nick:
            super()._private(member, msg)
            return
        if self.split:
            self._no_such_nick(member.session_id, msg.to, unavailable=True)
            return
        self._line_ids.add(msg.line_id)
        message = PrivateMsgIn(member.nick, msg.text, msg.line_id)
        self._requests.append(SendPrivate(member.session_id, msg.to, message))

    def _no_such_nick(self, session_id: bytes, nick: str, unavailable: bool) -> None:
        # The text names the nick: the client cancels the echo of that msg by it.
        if unavailable:
            text = f"cannot reach {nick}: {ENGINE_DOWN_TEXT}"
        else:
            text = f"no such nick: {nick}"
        self._error(session_id, "no-such-nick", text)

    # --- events ----------------------------------------------------------------------

    def _emit(self, member: _Member, kind: EventKind, **fields: Any) -> None:
        """An event a member of this daemon caused: published (shown when the engine
        gives it back), or shown at once while split; kept until given back."""
        if "line_id" not in fields:
            fields["line_id"] = self._event_id()
        event = RoomEvent(kind, member.room, member.nick, self._member_ids[member], **fields)
        if self.split:
            self._kept.add(event, shown=True)
            self._applied.add(event.line_id)
            room = self._rooms.get(event.room)
            if room is not None:
                self._show(room, event)
        else:
            self._kept.add(event, shown=False)
            self._requests.append(Publish(event))

    def _event_id(self) -> str:
        """A notice's id: unique in the cluster (the node's name is)."""
        return f"{self.node}:{next(self._events)}"

    def _apply(self, event: RoomEvent) -> None:
        """One event of a room's stream, to this daemon's members of the room."""
        room = self._rooms.get(event.room)
        followed = room is not None and event.room not in self._loading
        confirmed = self._kept.confirm(event.line_id)
        if confirmed:  # ours, given back (and any of ours before it the engine trimmed)
            for kept in confirmed:
                self._applied.add(kept.event.line_id)
                self._confirm(kept.event)
                if followed and not kept.shown:
                    assert room is not None
                    self._show(room, kept.event)
            if room is not None:
                self._maybe_drop(room)
            return
        if not followed:
            return  # not followed here (any more), or its history is on the way
        if event.line_id and not self._applied.add(event.line_id):
            return  # shown already (published twice)
        assert room is not None
        self._show(room, event)

    def _confirm(self, event: RoomEvent) -> None:
        """What the others have seen of this daemon's members, for a merge."""
        if event.kind == "part":
            self._confirmed.pop(event.member, None)
        elif event.kind in ("join", "nick"):
            self._confirmed[event.member] = (event.room, event.nick)

    def _show(self, room: _Room, event: RoomEvent) -> None:
        local = self._by_member_id.get(event.member)
        if local is not None and local.room != room.name:
            local = None
        try:
            if event.kind in ("say", "me"):
                line, said = _line(event, history=False), _line(event, history=True)
                if line is None:
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

    # --- split and merge -------------------------------------------------------------

    def _notice(self, member: _Member, code: str, text: str) -> None:
        if member.notices:
            self._send(member.session_id, ServerNotice(code, text, member.room))

    def _split_off(self) -> None:
        """The engine does not answer: from now on this daemon serves its members on
        its own. What it published and has not seen come back is shown here now."""
        if self.split:
            return
        self.split = True
        for event in self._kept.take_unshown():
            self._applied.add(event.line_id)
            room = self._rooms.get(event.room)
            if room is not None and event.room not in self._loading:
                self._show(room, event)
        rooms = sorted(name for name, room in self._rooms.items() if room.members)
        for member in self._members.values():
            if member.session_id in self._rooms.get(member.room, _NO_ROOM).members:
                self._notice(member, "split", split_text(member.room))
        detail = f"{_listed(rooms)} ({_count(len(self._members), 'member')} here)"
        self._actions.append(LogEvent("split", None, None, detail=detail))

    def _merge(self, back: EngineBack) -> None:
        """The engine answers again: tell it who is here, then what happened here."""
        if not self.split:
            return
        self.split = False
        for nick, member_id in self._released.values():
            self._requests.append(ReleaseNick(nick, member_id))
        self._released.clear()
        admitted = []
        for member in self._members.values():
            member_id = self._member_ids[member]
            if member.session_id in self._pending_rename:
                continue  # its claim is under way
            kind: ClaimKind = "provisional" if member_id in self._provisional else "firm"
            self._requests.append(
                ClaimNick(member.session_id, member.nick, member.client, member_id, kind)
            )
            if member.session_id in self._rooms.get(member.room, _NO_ROOM).members:
                admitted.append(member)
        # Loaded before this daemon's events are published, so that they come back.
        self._requests.extend(LoadRoom(name) for name in sorted(self._unloaded))
        if back.reaped:  # the others saw our members leave: they see them come back
            rejoins = [
                RoomEvent("join", room, nick, member_id, line_id=self._event_id())
                for member_id, (room, nick) in self._confirmed.items()
            ]
            self._kept.add_first(rejoins)
            self._applied_all(rejoins)
        else:  # the others still have them; an engine that restarted does not
            for member in admitted:
                join = RoomEvent("join", member.room, member.nick, self._member_ids[member])
                self._requests.append(Register(join))
        events = self._kept.events()
        self._requests.extend(Publish(event) for event in events)
        rooms = sorted(name for name, room in self._rooms.items() if room.members)
        for member in admitted:
            self._notice(member, "merged", merged_text(member.room))
        detail = f"{_listed(rooms)}; {_count(len(events), 'kept event')} published, "
        detail += _count(len(admitted), "member")
        if back.lost_data:
            detail += " registered again (Redis had restarted empty)"
        elif back.reaped:
            detail += " shown to the others again (Redis had taken this daemon for dead)"
        else:
            detail += " registered again"
        self._actions.append(LogEvent("merged", None, None, detail=detail))

    def _applied_all(self, events: list[RoomEvent]) -> None:
        for event in events:
            self._applied.add(event.line_id)


_NO_ROOM = _Room("lobby")  # an empty room, for lookups of a room that is gone


def _listed(rooms: list[str], most: int = 5) -> str:
    """Room names for a log line: the first few, and how many more."""
    if not rooms:
        return "no rooms"
    shown = ", ".join(rooms[:most])
    return shown if len(rooms) <= most else f"{shown} and {len(rooms) - most} more"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


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
