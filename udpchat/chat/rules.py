"""ChatRules: the chat rules (nicks, rooms, history) as a sans-IO state machine.

udpchat.chat.server.ChatServer feeds it what the protocol core reports and carries out
what it says; it never touches a socket, a reactor or a clock (``now`` is passed in)::

    rules = ChatRules(history_lines=50, max_members=256, default_room="lobby")
    rules.session_started(session_id, addr, now)        # SessionStarted
    rules.session_roamed(session_id, new_addr)          # SessionRoamed (for the logs)
    rules.message_received(session_id, payload, now)    # MessageReceived
    rules.session_ended(session_id, reason, now)        # SessionEnded
    rules.shutdown(text, now)                           # the daemon is stopping
    rules.take_actions() -> list[Action]  # Send, Broadcast, Close, LogEvent, in order
    rules.restore_room(room, lines)  # before any session: history kept from before

Send before Close in that list means the reply goes out before the session closes;
a Broadcast is one message for the members of a room (with who negotiated room keys,
so that the server can seal it once); a LogEvent carries names, rooms and addresses,
never message text.

Rules, in short (docs/PROTOCOL.md section 7 has the messages):

- A session is a member once a valid hello is accepted. Until then every message but
  hello gets error "not-joined" (bye just closes it); a refused hello (nick-taken,
  bad-nick, bad-room, server-full) leaves it unnamed and it may retry.
- Nicks are unique case-insensitively. A hello whose client id matches a current
  member's is a reconnect: the stale member is replaced and its session handed back
  by a Close action. If the nick and room are unchanged this is silent (the room
  sees nothing); otherwise the stale member parts with reason "quit" and the new one
  joins as usual.
- Hello: welcome, then the room's history (say/me with ts and history: true), then a
  join notice to the whole room, the newcomer included. Join and part (back to the
  default room): a part notice (reason "part") to the old room, a join notice to the
  whole new room, then its history to the mover.
- say/me go, in order, to every other member of the sender's room, never echoed, and
  into the room's history (bounded to ``history_lines``). A ``Remember`` action
  carries each history line as soon as it is accepted (it may then wait for the
  room's rate), a ``Forget`` action each room forgotten, so that the server can keep
  the history in a file; ``restore_room`` puts such history back after a restart.
  A say/me/msg whose line id was already relayed (the sender re-sent it after a
  reconnect because the acknowledgement was lost, perhaps from another room by then)
  is acknowledged by the core but neither relayed nor stored again.
- Memory is bounded: members by ``max_members``, occupied rooms by the members, and
  empty rooms, kept only for their history, by ``idle_rooms_kept`` (oldest forgotten
  first); each room's history by ``history_lines`` and ``HISTORY_BYTES_PER_ROOM``
  (oldest lines forgotten first), stored as the encoded messages it is replayed as;
  the line ids remembered, for the whole server, by ``LINE_IDS_KEPT``; who/rooms
  answers are chunked to fit one message each.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal, NamedTuple, TypeAlias

from udpchat.chat.lineids import RecentIds
from udpchat.chat.messages import (
    DEFAULT_ROOM,
    Bye,
    Caps,
    Error,
    Hello,
    Join,
    JoinNotice,
    Me,
    MeOut,
    MessageError,
    Nick,
    NickNotice,
    Part,
    PartNotice,
    PrivateMsg,
    PrivateMsgIn,
    Rooms,
    Say,
    SayOut,
    ServerMessage,
    Shutdown,
    Welcome,
    Who,
    decode_client,
    encode,
    fold_nick,
    rooms_chunks,
    text_error,
    valid_room,
    who_chunks,
)
from udpchat.core.ratelimit import TokenBucket

#: Line ids of say/me/msg remembered for the whole server, so that a line re-sent
#: after a lost acknowledgement is not relayed twice, even from another room. The
#: re-send comes within about a minute (the client's session expiry and reconnect).
LINE_IDS_KEPT = 8192
#: A room's history is kept as the encoded messages it is replayed as (UTF-8 JSON,
#: one bytes object per line, the same object sent to every member who joins): as
#: Python strings a line of 400 bytes took up to 1.6 KB (4 bytes per character once
#: one needs them) plus a dataclass. Each line counts its length plus
#: HISTORY_LINE_OVERHEAD_BYTES (the bytes object's header, the list's slot), and a
#: room keeps at most HISTORY_BYTES_PER_ROOM of them, oldest forgotten first, as
#: well as at most history_lines. 50 lines of the largest kind (about 600 bytes
#: each) fit; so does a whole history replayed into one member's send queue
#: (ProtocolConfig.send_queue_bytes).
HISTORY_BYTES_PER_ROOM = 64 * 1024
HISTORY_LINE_OVERHEAD_BYTES = 48
#: Empty rooms kept for their history, by default (the oldest is forgotten first).
IDLE_ROOMS_KEPT = 256

Address: TypeAlias = tuple[Any, ...]
LogKind: TypeAlias = Literal[
    "join",
    "leave",
    "timeout",
    "rename",
    "move",
    "takeover",
    "refused",
    # Reported by udpchat.chat.server, not by the rules:
    "roamed",
    "address-refused",
    "server-full",
    "queue-full",
    "flood",
    "key-retired",
    # Reported by udpchat.chat.cluster (a daemon of a cluster):
    "renamed",
    "split",
    "merged",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Send one encoded message on one session."""

    session_id: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send one encoded message to every member of ``room`` but ``skip``.

    ``members`` lists the whole room (``skip`` included) in join order, each with
    whether it negotiated "room-keys": the server may then seal the message once with
    the room's key for those, and must keep that key from anyone no longer listed."""

    room: str
    members: tuple[tuple[bytes, bool], ...]
    payload: bytes
    skip: bytes | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """Close one session (what was sent to it before goes out first)."""

    session_id: bytes


@dataclass(frozen=True, slots=True)
class LogEvent:
    """Something worth a log line. Carries names, rooms and addresses, never text.

    kind: "join" (a hello was accepted), "leave" (bye or session closed; detail is
    "quit" or the core's reason), "timeout", "rename" (detail: the old nick), "move"
    (room change; detail: the old room), "takeover" (a reconnect replaced a stale
    session), "refused" (a hello was refused; detail: the error code). The server
    adds "roamed" (old_addr: where it was), "address-refused" (allow/deny),
    "server-full" (a handshake over the member limit) and "queue-full" (a member
    closed because its send queue overflowed). A daemon of a cluster adds "split" and
    "merged" (detail: its rooms and what it did; no session) and "renamed" (a nick
    found to be someone else's at a merge; detail: the old nick).

    session_id names the session that caused it (None for a refused address), so
    that the server can limit how many lines one session gets.
    """

    kind: LogKind
    nick: str | None
    addr: Address | None
    room: str | None = None
    detail: str = ""
    old_addr: Address | None = None  # "roamed": where the session was before
    session_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class UsePathChecks:
    """The session's client negotiated "path-check" (PROTOCOL.md 11.7): the core may
    send it PATH_CHALLENGE frames."""

    session_id: bytes


@dataclass(frozen=True, slots=True)
class UseLazyAcks:
    """The session's client negotiated "lazy-acks" (PROTOCOL.md 11.8): it will hold
    its acks of sealed messages longer, and the core must wait for them."""

    session_id: bytes


@dataclass(frozen=True, slots=True)
class PauseReceiving:
    """Flow control: stop (or resume) accepting new messages from the session. The
    core then leaves them unacknowledged, so its client holds them and sends them
    again later (PROTOCOL.md 5.6): its lines wait instead of being lost."""

    session_id: bytes
    paused: bool


@dataclass(frozen=True, slots=True)
class Remember:
    """A line accepted into a room's history, encoded as it is replayed (say/me with
    "ts" and "history": true): for the server to keep where it survives a restart.
    It comes when the line is accepted, in the room's order, before the line goes out
    (it may wait for the room's rate first), so whatever the core has acknowledged to
    the sender is in a Remember already."""

    room: str
    line: bytes


class KeptLine(NamedTuple):
    """A history line kept outside memory, to put back with restore_room: the line as
    Remember gave it, and its line id."""

    line: bytes
    line_id: str


@dataclass(frozen=True, slots=True)
class Forget:
    """A room and its history were forgotten (the oldest empty room beyond
    ``idle_rooms_kept``): whatever keeps history for it may drop it too."""

    room: str


Action: TypeAlias = (
    Send
    | Broadcast
    | Close
    | LogEvent
    | UsePathChecks
    | UseLazyAcks
    | PauseReceiving
    | Remember
    | Forget
)

#: A room's broadcasts (lines and notices) go out at most this many per second, with
#: bursts of ROOM_BURST: no more than what every client accepts (message_rate_per_s,
#: 100/s with bursts of 200 by default, PROTOCOL.md 5.6; the reference client takes
#: 200/s), so a member that acknowledges as fast as the protocol allows never falls
#: behind however fast others talk (issue 9, finding 2). As fast as that allows:
#: a room of 50 with 10 members saying 10 lines a second each is what issue 8
#: measures, and must not wait.
ROOM_RATE_PER_S = 100.0
ROOM_BURST = 200
#: A member with this many broadcasts waiting for its room's rate is paused (its new
#: messages are not acknowledged) until no more than RESUME_AT are left.
PAUSE_AT = 16
RESUME_AT = 4
#: The pause takes effect only after the core has delivered what it already took (a
#: gap filled at once can deliver a burst): a member with this many broadcasts
#: waiting all the same is working around flow control, and is closed, so that
#: waiting lines stay bounded (and within the daemon's memory budget).
WAITING_MAX = 64


@dataclass(eq=False, slots=True)
class _Member:
    session_id: bytes
    nick: str
    client: str
    room: str
    addr: Address | None
    room_keys: bool = False  # negotiated "room-keys" (caps)
    notices: bool = False  # asked for server notices (caps "notices", PROTOCOL.md 11.8)
    waiting: int = 0  # its broadcasts held back by the room's rate
    paused: bool = False  # PauseReceiving(paused=True) is in force


@dataclass(eq=False, slots=True)
class _Paced:
    """A broadcast waiting for its room's rate."""

    msg: ServerMessage
    skip: bytes | None
    sender: _Member | None
    history: bytes | None  # the line to add to the room's history when it goes out


@dataclass(eq=False, slots=True)
class _Room:
    name: str
    # Encoded say/me messages with ts and history: true, oldest first. Lists, not
    # deques: an empty deque costs 760 bytes, and a daemon with 10,000 members in
    # rooms of their own holds 10,000 rooms (PERFORMANCE.md: within 100 MB).
    history: list[bytes] = field(default_factory=list)
    history_bytes: int = 0  # what the history is charged with (HISTORY_BYTES_PER_ROOM)
    # In join order, which is the order notices are fanned out in.
    members: dict[bytes, _Member] = field(default_factory=dict)
    rate: TokenBucket | None = None
    pending: list[_Paced] = field(default_factory=list)  # in the order accepted

    def remember(self, line: bytes, max_lines: int) -> None:
        """Add a line to the history, forgetting the oldest beyond either bound."""
        self.history.append(line)
        self.history_bytes += len(line) + HISTORY_LINE_OVERHEAD_BYTES
        self.trim(max_lines)

    def trim(self, max_lines: int) -> None:
        history = self.history
        while len(history) > max_lines or self.history_bytes > HISTORY_BYTES_PER_ROOM:
            self.history_bytes -= len(history.pop(0)) + HISTORY_LINE_OVERHEAD_BYTES


_ROOM_KEYS = attrgetter("room_keys")  # of a _Member


class ChatRules:
    """The chat rules for every session of one daemon. See the module docstring."""

    def __init__(
        self,
        history_lines: int = 50,
        max_members: int = 256,
        default_room: str = DEFAULT_ROOM,
        idle_rooms_kept: int = IDLE_ROOMS_KEPT,
        room_keys: bool = True,
        room_rate_per_s: float = ROOM_RATE_PER_S,
        room_burst: int = ROOM_BURST,
        wall: Callable[[float], float] = float,
    ) -> None:
        """`room_keys`: whether to offer the "room-keys" extension to clients that
        ask (caps); the server composition does the sealing. `wall` gives the Unix
        time of a `now` (which is monotonic): the time a line was said, kept in the
        history. By default `now` is taken to be Unix time."""
        if history_lines < 0 or max_members < 1 or idle_rooms_kept < 0:
            raise ValueError("history_lines, idle_rooms_kept >= 0 and max_members >= 1")
        if not valid_room(default_room):
            raise ValueError(f"default_room {default_room!r} is not a valid room name")
        self._history_lines = history_lines
        self._max_members = max_members
        self._default_room = default_room
        self._idle_rooms_kept = idle_rooms_kept
        self._room_keys = room_keys
        self._room_rate = (room_rate_per_s, room_burst)
        self._paced: dict[str, _Room] = {}  # rooms with broadcasts waiting for their rate
        self._now = 0.0  # of what is being fed in
        self._wall = wall
        self._sessions: dict[bytes, Address | None] = {}  # every live session
        self._members: dict[bytes, _Member] = {}  # sessions that said hello
        self._by_nick: dict[str, _Member] = {}  # fold_nick(nick) -> member
        self._by_client: dict[str, _Member] = {}  # client id -> member
        self._rooms: dict[str, _Room] = {}
        self._idle_rooms: OrderedDict[str, None] = OrderedDict()  # empty, kept for history
        self._line_ids = RecentIds(LINE_IDS_KEPT)  # say/me/msg relayed, any room
        self._actions: list[Action] = []
        self._shut_down = False
        # For the daemon's metrics: say/me lines accepted for their room, and private
        # messages passed on (counts only, never who or what).
        self.lines_relayed = 0
        self.private_relayed = 0

    # --- what the server reads -------------------------------------------------------

    def take_actions(self) -> list[Action]:
        """What to do, in order: send, close (bye, replaced by a reconnect, shutdown)
        and log. The list is emptied."""
        out, self._actions = self._actions, []
        return out

    @property
    def member_count(self) -> int:
        """How many sessions are members (said a valid hello)."""
        return len(self._members)

    @property
    def room_count(self) -> int:
        """How many rooms have members."""
        return len(self._rooms) - len(self._idle_rooms)

    @property
    def kept_room_count(self) -> int:
        """How many rooms are kept: those with members and the empty ones kept for
        their history."""
        return len(self._rooms)

    def nick_of(self, session_id: bytes) -> str | None:
        """The nick of a member session, or None if it has none."""
        member = self._members.get(session_id)
        return member.nick if member else None

    # --- what the daemon feeds in ----------------------------------------------------

    def session_started(self, session_id: bytes, addr: Address, now: float) -> None:
        """A handshake completed; the session is not a member until its hello."""
        self._now = now
        if not self._shut_down:
            self._sessions[session_id] = addr

    def session_roamed(self, session_id: bytes, addr: Address) -> None:
        """The peer's address changed (only the logs care)."""
        if session_id in self._sessions:
            self._sessions[session_id] = addr
            if member := self._members.get(session_id):
                member.addr = addr

    def set_limits(self, history_lines: int, max_members: int) -> None:
        """A reload: a shorter history forgets the oldest lines at once; a lower member
        limit refuses newcomers until members left, and closes nobody."""
        if history_lines < 0 or max_members < 1:
            raise ValueError("history_lines >= 0 and max_members >= 1")
        self._history_lines, self._max_members = history_lines, max_members
        for room in self._rooms.values():
            room.trim(history_lines)

    def session_ended(self, session_id: bytes, reason: str, now: float) -> None:
        """The session is gone ("timeout", "closed", "local-close"): a member parts
        with reason "timeout" or "quit". Unknown or already removed sessions, and
        anything after shutdown: no-op."""
        if self._shut_down:
            return
        self._now = now
        self._sessions.pop(session_id, None)
        member = self._members.get(session_id)
        if member is None:
            return
        if reason == "timeout":
            self._remove(member, "timeout")
            self._log_member("timeout", member)
        else:
            self._remove(member, "quit")
            self._log_member("leave", member, detail=reason)

    def shutdown(self, text: str, now: float) -> None:
        """Tell every session {"t":"shutdown"}, then close them all; afterwards
        everything fed in is ignored."""
        if self._shut_down:
            return
        payload = encode(Shutdown(text))
        for session_id in self._sessions:
            self._actions.append(Send(session_id, payload))
        self._actions.extend(Close(session_id) for session_id in self._sessions)
        self._paced.clear()  # the members are told the server is going away
        self._shut_down = True
        self._sessions.clear()

    def restore_room(self, name: str, lines: Sequence[KeptLine]) -> None:
        """Put back a room's history kept from before a restart: its lines oldest
        first, as Remember gave them (say/me of this room, with "ts"); call it for the
        rooms in the order they were last active. The room is kept like any empty room
        with history (the oldest beyond ``idle_rooms_kept`` are forgotten: a Forget
        action each), within the same bounds as a history built live. The lines' ids
        count as relayed: a line whose acknowledgement the restart cut off, sent again
        by its client, is acknowledged but not relayed or kept twice. Only before the
        first session (the caller's mistake otherwise)."""
        if self._sessions or self._members or self._shut_down:
            raise RuntimeError("restore_room is for a server that has no session yet")
        if not self._history_lines or not lines:
            return
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = _Room(name)
        for kept in lines:
            room.remember(kept.line, self._history_lines)
            self._line_ids.add(kept.line_id)
        self._keep_idle(room.name)

    def message_received(self, session_id: bytes, payload: bytes, now: float) -> None:
        """One application message from a session. Never raises on bad input: a
        malformed message is answered with an error to its sender. Messages from a
        session that was not started, or already removed, are ignored."""
        if self._shut_down or session_id not in self._sessions:
            return
        self._now = now
        try:
            msg = decode_client(payload)
        except MessageError as exc:
            self._error(session_id, exc.code, str(exc))
            return
        member = self._members.get(session_id)
        if isinstance(msg, Hello):
            self._hello(session_id, msg)
        elif member is None:
            if isinstance(msg, Bye):
                self._close(session_id)
            else:
                self._error(session_id, "not-joined", "say hello first")
        elif isinstance(msg, (Say, Me)):
            self._line(member, msg, now)
        elif isinstance(msg, PrivateMsg):
            self._private(member, msg)
        elif isinstance(msg, Nick):
            self._rename(member, msg.nick)
        elif isinstance(msg, Join):
            self._join(member, msg.room)
        elif isinstance(msg, Part):
            self._join(member, self._default_room)
        elif isinstance(msg, Who):
            self._who(member)
        elif isinstance(msg, Rooms):
            self._list_rooms(member)
        elif isinstance(msg, Caps):
            self._caps(member, msg)
        else:  # Bye
            self._remove(member, "quit")
            self._log_member("leave", member, detail="quit")
            self._close(session_id)

    # --- the rules -------------------------------------------------------------------

    def _hello(self, session_id: bytes, msg: Hello) -> None:
        addr = self._sessions[session_id]
        if session_id in self._members:
            self._error(session_id, "bad-message", "hello was already accepted")
            return
        stale = self._by_client.get(msg.client)
        holder = self._by_nick.get(fold_nick(msg.nick))
        if holder is not None and holder is not stale:
            self._refuse(session_id, msg.nick, "nick-taken", f"{holder.nick} is taken")
            return
        if stale is None and len(self._members) >= self._max_members:
            full = f"the server is full ({self._max_members} members); try again later"
            self._refuse(session_id, msg.nick, "server-full", full)
            return
        if stale is not None:
            takeover = LogEvent("takeover", stale.nick, addr, stale.room, session_id=session_id)
            self._actions.append(takeover)
            self._close(stale.session_id)
            if stale.nick == msg.nick and stale.room == msg.room:
                self._hand_over(stale, session_id, addr)
                self._send(session_id, Welcome(stale.nick, stale.room))
                self._send_history(stale)
                return
            self._remove(stale, "quit")
        member = _Member(session_id, msg.nick, msg.client, msg.room, addr)
        self._members[session_id] = member
        self._by_nick[fold_nick(member.nick)] = member
        self._by_client[member.client] = member
        room = self._enter(member, msg.room)
        self._send(session_id, Welcome(member.nick, room.name))
        self._send_history(member)
        self._broadcast(room, JoinNotice(room.name, member.nick))
        self._log_member("join", member)

    def _caps(self, member: _Member, msg: Caps) -> None:
        """Extensions (PROTOCOL.md 11.1): the answer names only the members the
        client's caps had, so that a client that does not know one never sees it."""
        member.room_keys = msg.room_keys and self._room_keys
        member.notices = bool(msg.notices)
        if msg.path_check:
            self._actions.append(UsePathChecks(member.session_id))
        notices = None if msg.notices is None else True  # this server may send them
        # lazy-acks is about sealed messages: only with room keys (11.9).
        lazy_acks = None if msg.lazy_acks is None else msg.lazy_acks and member.room_keys
        if lazy_acks:
            self._actions.append(UseLazyAcks(member.session_id))
        answer = Caps(member.room_keys, msg.path_check, notices, lazy_acks)
        self._send(member.session_id, answer)

    def _hand_over(self, member: _Member, session_id: bytes, addr: Address | None) -> None:
        """Move a member to a new session, keeping its place in its room."""
        old = member.session_id
        self._sessions.pop(old, None)
        del self._members[old]
        member.session_id, member.addr = session_id, addr
        member.room_keys = member.notices = False  # the new session negotiates anew
        self._members[session_id] = member
        room = self._rooms[member.room]
        room.members = {(session_id if k == old else k): m for k, m in room.members.items()}
        for paced in room.pending:  # its own lines still waiting are not shown to it
            if paced.skip == old:
                paced.skip = session_id
        if member.paused:  # the new session is held back like the old one
            self._actions.append(PauseReceiving(session_id, True))

    def _line(self, member: _Member, msg: Say | Me, now: float) -> None:
        room = self._rooms[member.room]
        if not self._line_ids.add(msg.line_id):
            return  # relayed already: only its acknowledgement was lost
        kind = SayOut if isinstance(msg, Say) else MeOut
        line = kind(room.name, member.nick, msg.text, msg.line_id)
        # Into the history when it goes out (said now, shown with the time said).
        said = kind(room.name, member.nick, msg.text, msg.line_id, ts=self._wall(now))
        self._broadcast(room, line, skip=member.session_id, sender=member, history=said)

    def _private(self, member: _Member, msg: PrivateMsg) -> None:
        if msg.line_id in self._line_ids:
            return  # relayed already (its target may have left since): nothing to say
        target = self._by_nick.get(fold_nick(msg.to))
        if target is None:
            self._error(member.session_id, "no-such-nick", f"no such nick: {msg.to}")
        else:
            self._line_ids.add(msg.line_id)
            self.private_relayed += 1
            self._send(target.session_id, PrivateMsgIn(member.nick, msg.text, msg.line_id))

    def _who(self, member: _Member) -> None:
        room = self._rooms[member.room]
        nicks = sorted((m.nick for m in room.members.values()), key=fold_nick)
        for chunk in who_chunks(room.name, nicks):
            self._send(member.session_id, chunk)

    def _list_rooms(self, member: _Member) -> None:
        counts = sorted((r.name, len(r.members)) for r in self._rooms.values() if r.members)
        for listing in rooms_chunks(counts):
            self._send(member.session_id, listing)

    def _rename(self, member: _Member, nick: str) -> None:
        if nick == member.nick:
            self._error(member.session_id, "already-there", f"you are already {nick}")
            return
        holder = self._by_nick.get(fold_nick(nick))
        if holder is not None and holder is not member:
            self._error(member.session_id, "nick-taken", f"{holder.nick} is taken")
            return
        old = member.nick
        del self._by_nick[fold_nick(old)]
        member.nick = nick
        self._by_nick[fold_nick(nick)] = member
        self._broadcast(self._rooms[member.room], NickNotice(old, nick), sender=member)
        self._log_member("rename", member, detail=old)

    def _join(self, member: _Member, name: str) -> None:
        if name == member.room:
            self._error(member.session_id, "already-there", f"you are already in {name}")
            return
        old = member.room
        self._leave_room(member, "part")
        room = self._enter(member, name)
        self._broadcast(room, JoinNotice(room.name, member.nick), sender=member)
        self._send_history(member)
        self._log_member("move", member, detail=old)

    # --- rooms and members -----------------------------------------------------------

    def _enter(self, member: _Member, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is None:
            room = _Room(name)
            self._rooms[name] = room
        self._idle_rooms.pop(name, None)
        room.members[member.session_id] = member
        member.room = name
        return room

    def _leave_room(self, member: _Member, reason: str) -> None:
        room = self._rooms[member.room]
        del room.members[member.session_id]
        self._broadcast(room, PartNotice(room.name, member.nick, reason))
        if room.members:
            return
        # Nobody left to wait for: what waits goes out now (into the history; and the
        # server learns that the room's key holders are gone).
        while room.pending:
            self._release_one(room)
        self._paced.pop(room.name, None)
        if not room.history:
            del self._rooms[room.name]
            return
        self._keep_idle(room.name)

    def _keep_idle(self, name: str) -> None:
        """Keep an empty room for its history, as the most recently active one;
        forget the oldest beyond idle_rooms_kept."""
        self._idle_rooms[name] = None
        self._idle_rooms.move_to_end(name)
        while len(self._idle_rooms) > self._idle_rooms_kept:
            forgotten, _ = self._idle_rooms.popitem(last=False)
            del self._rooms[forgotten]
            self._actions.append(Forget(forgotten))

    def _remove(self, member: _Member, reason: str) -> None:
        """Take a member out of its room (part notice) and out of every index."""
        self._leave_room(member, reason)
        del self._members[member.session_id]
        del self._by_nick[fold_nick(member.nick)]
        del self._by_client[member.client]

    # --- output ----------------------------------------------------------------------

    def _send(self, session_id: bytes, msg: ServerMessage) -> None:
        self._actions.append(Send(session_id, encode(msg)))

    def _broadcast(
        self,
        room: _Room,
        msg: ServerMessage,
        skip: bytes | None = None,
        sender: _Member | None = None,
        history: SayOut | MeOut | None = None,
    ) -> None:
        """To the room now if its rate allows and nothing waits, else in turn (see
        release). A `sender` with too much waiting is paused (PauseReceiving). A line
        (`history`) is accepted here: counted, and a Remember for the history."""
        if room.rate is None:
            room.rate = TokenBucket(*self._room_rate, self._now)
        now_ok = not room.pending and room.rate.allow(self._now)
        if not now_ok and sender is not None and sender.waiting >= WAITING_MAX:
            if sender.session_id in self._sessions:
                self._log_member("flood", sender, detail=str(sender.waiting))
                self._close(sender.session_id)
            return
        kept = None
        if history is not None:
            self.lines_relayed += 1
            if self._history_lines:
                kept = encode(history)
                self._actions.append(Remember(room.name, kept))
        if now_ok:
            self._fan_out(room, msg, skip, kept)
            return
        room.pending.append(_Paced(msg, skip, sender, kept))
        self._paced[room.name] = room
        if sender is not None:
            sender.waiting += 1
            if sender.waiting >= PAUSE_AT and not sender.paused:
                sender.paused = True
                self._actions.append(PauseReceiving(sender.session_id, True))

    def _fan_out(
        self, room: _Room, msg: ServerMessage, skip: bytes | None, history: bytes | None
    ) -> None:
        # Even to an empty room (the last member just left): the server must learn
        # that the room's key holders are gone.
        # Once per line for the whole room: zipped in C, not walked in Python.
        members = tuple(zip(room.members, map(_ROOM_KEYS, room.members.values()), strict=True))
        self._actions.append(Broadcast(room.name, members, encode(msg), skip))
        if history is not None:
            room.remember(history, self._history_lines)

    def _release_one(self, room: _Room) -> None:
        paced = room.pending.pop(0)
        self._fan_out(room, paced.msg, paced.skip, paced.history)
        sender = paced.sender
        if sender is not None:
            sender.waiting -= 1
            if sender.paused and sender.waiting <= RESUME_AT:
                sender.paused = False
                if sender.session_id in self._members:
                    self._actions.append(PauseReceiving(sender.session_id, False))

    # --- the rooms' rate -------------------------------------------------------------

    def waiting_broadcasts(self) -> int:
        """Broadcasts waiting for their room's rate, all rooms together."""
        return sum(len(room.pending) for room in self._paced.values())

    def next_release(self) -> float | None:
        """When a room's next waiting broadcast may go out (None: nothing waits)."""
        times = [room.rate.ready_at() for room in self._paced.values() if room.rate]
        return min(times, default=None)

    def release(self, now: float) -> None:
        """Send what waited for its room's rate and may go now, in order."""
        if self._shut_down:
            return
        self._now = now
        for name, room in list(self._paced.items()):
            assert room.rate is not None
            while room.pending and room.rate.allow(now):
                self._release_one(room)
            if not room.pending:
                del self._paced[name]

    def _send_history(self, member: _Member) -> None:
        session_id = member.session_id
        self._actions.extend(Send(session_id, line) for line in self._rooms[member.room].history)

    def _error(self, session_id: bytes, code: str, text: str) -> None:
        if text_error(text) is not None:  # never let a bad reason break the answer
            text = "malformed message"
        self._send(session_id, Error(code, text))

    def _refuse(self, session_id: bytes, nick: str, code: str, text: str) -> None:
        self._error(session_id, code, text)
        addr = self._sessions[session_id]
        self._actions.append(LogEvent("refused", nick, addr, detail=code, session_id=session_id))

    def _close(self, session_id: bytes) -> None:
        self._sessions.pop(session_id, None)
        self._actions.append(Close(session_id))

    def _log_member(self, kind: LogKind, member: _Member, detail: str = "") -> None:
        entry = LogEvent(
            kind, member.nick, member.addr, member.room, detail, session_id=member.session_id
        )
        self._actions.append(entry)
