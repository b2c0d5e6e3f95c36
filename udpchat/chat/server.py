"""ChatServer: the whole chat server, sans-IO, as ChatClient is the whole client.

It owns the protocol core (a ServerEndpoint) and the chat rules (ChatRules) and adds
the server's own policy: the hello deadline, the shutdown wait, what to do with a
member whose send queue is full, and which refusals are worth a log line. A
transport adapter (udpchat.daemon.udp) only moves bytes and keeps one timer::

    server = ChatServer(psk, ServerSettings(...))
    server.set_wall_clock(time.time(), now)    # before each of the calls below
    server.receive_datagram(data, addr, now)   # or address_refused(addr, now)
    server.datagrams_to_send(now) -> [(data, addr), ...]
    server.get_timer() -> float | None         # call handle_timer(now) then
    server.take_log() -> [LogEvent, ...]       # names and addresses, never text
    server.take_drops() -> {reason: count}     # for a periodic summary
    server.take_suppressed() -> {kind: count}  # log lines over the limits, likewise
    server.take_history() -> [Remember | Forget, ...]  # for a history file, in order
    server.restore_history(rooms)              # at start: history from that file
    server.shutdown(now)                       # then wait for server.done

Time is always an argument: `now` is monotonic seconds, for every timer; the Unix
time that handshakes carry and history lines show comes from set_wall_clock.
Nothing that arrives makes these methods raise; an exception that escapes is a bug,
for the adapter to log with its traceback.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import compress
from operator import itemgetter
from typing import TYPE_CHECKING

from udpchat.chat.messages import DEFAULT_ROOM, Shutdown, encode
from udpchat.chat.roomkeys import RoomKeys, seal
from udpchat.chat.rules import (
    ROOM_BURST,
    ROOM_RATE_PER_S,
    Action,
    Broadcast,
    ChatRules,
    Close,
    Forget,
    KeptLine,
    LogEvent,
    PauseReceiving,
    Remember,
    Send,
    UseLazyAcks,
    UsePathChecks,
)
from udpchat.core import events
from udpchat.core.endpoint import QueueFull, ServerEndpoint, UnknownSession
from udpchat.core.limits import ProtocolConfig, keepalive_s
from udpchat.core.ratelimit import TokenBucket
from udpchat.core.wire import MAX_SEALED_PAYLOAD_BYTES

if TYPE_CHECKING:
    from udpchat.chat.cluster import ClusterRules, Reply, Request

SHUTDOWN_TEXT = "stopped by its operator"
_SESSION_ID, _ROOM_KEYS = itemgetter(0), itemgetter(1)  # of Broadcast.members' pairs
#: What a member still on the previous key hears when a key rotation's overlap ends.
KEY_RETIRED_TEXT = (
    "the server's key was replaced and the old one is no longer accepted; "
    "get the new key file from the server's operator"
)
#: A session that has not said a valid hello this long after its handshake is closed
#: (it would otherwise hold a member slot without being a member).
HELLO_DEADLINE_S = 10.0
#: On shutdown, wait at most this long for members to acknowledge the notice.
SHUTDOWN_LINGER_S = 1.0
#: A refused source address is logged at most once per this many seconds ...
REFUSAL_LOG_INTERVAL_S = 60.0
#: ... and this many such addresses are remembered (bounded: sources can be spoofed) ...
REFUSAL_LOG_MAX_ADDRESSES = 1024
#: ... and, since spoofed sources are endless, at most this many refusal lines are
#: written per interval in all; the rest only count in the periodic summary.
REFUSAL_LOG_MAX_LINES = 10
#: Lines a session causes that can come only once per session (it says hello once,
#: it ends once): these pass the per-session limit, only the total limits them.
ONCE_PER_SESSION = frozenset({"join", "takeover", "leave", "timeout", "key-retired"})


@dataclass(frozen=True)
class ServerSettings:
    """What the operator sets (the daemon's [server] section), in the core's units."""

    history_lines: int = 50
    max_members: int = 256
    idle_timeout_s: float = 30.0
    handshake_rate: float = 20.0
    handshake_burst: int = 5
    default_room: str = DEFAULT_ROOM
    room_keys: bool = True  # offer the "room-keys" extension (PROTOCOL.md section 11)
    # Log lines a key holder can cause again and again (roaming, renames, room moves,
    # refused hellos, closes for a full queue): per session a burst of
    # session_log_burst, then one per session_log_interval_s; and, however many
    # sessions, at most log_lines_per_minute in all (joins and leaves included). The
    # rest only count in the periodic summary. A member who joins, renames and
    # leaves gets every line; a flood gets a few lines a minute and a count.
    session_log_burst: int = 5
    session_log_interval_s: float = 10.0
    log_lines_per_minute: int = 60
    # A room's broadcasts per second (and burst): below what clients accept, so fast
    # talkers wait (PauseReceiving) instead of pushing slower members out.
    room_rate_per_s: float = ROOM_RATE_PER_S
    room_burst: int = ROOM_BURST

    def protocol_config(self) -> ProtocolConfig:
        """The core's timers and limits, with the operator's settings applied."""
        return ProtocolConfig(
            session_expiry_s=self.idle_timeout_s,
            keepalive_s=keepalive_s(self.idle_timeout_s),
            # A silent peer must end its session before any message gives up on it.
            give_up_s=max(60.0, 2 * self.idle_timeout_s),
            handshake_rate_per_s=self.handshake_rate,
            handshake_burst=self.handshake_burst,
        )


class LogLimit:
    """Which log lines of one family are written: per key (a source host, a
    session) a burst of `burst` lines, then one per `interval_s`; and at most
    `max_lines` in any `window_s` in all. The others are counted by kind for the
    periodic summary. Memory is bounded: at most `max_keys` keys are remembered
    (least recently seen forgotten first)."""

    def __init__(
        self, burst: int, interval_s: float, max_lines: int, window_s: float, max_keys: int
    ) -> None:
        self._burst = burst
        self._rate_per_s = 1.0 / interval_s
        self._max_lines = max_lines
        self._window_s = window_s
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self._lines: deque[float] = deque()  # when the latest lines were written
        self._suppressed: Counter[str] = Counter()

    def allow(self, key: Hashable, kind: str, now: float, per_key: bool = True) -> bool:
        """Whether to write this line; `per_key=False` skips the key's own limit
        (a line that comes once per key anyway) but not the total."""
        lines = self._lines
        while lines and lines[0] + self._window_s <= now:
            lines.popleft()
        if len(lines) < self._max_lines and (not per_key or self._take(key, now)):
            lines.append(now)
            return True
        self._suppressed[kind] += 1
        return False

    def take_suppressed(self) -> Counter[str]:
        """Lines not written since the last call, by kind."""
        out, self._suppressed = self._suppressed, Counter()
        return out

    def _take(self, key: Hashable, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate_per_s, self._burst, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            # Least recently *seen* first out: a key still flooding keeps its empty
            # bucket, however many quiet keys come after it.
            self._buckets.move_to_end(key)
        return bucket.allow(now)


def sessions_for(max_members: int) -> int:
    """How many established sessions the core may hold for `max_members` members:
    some more, so that on a full server a key holder's handshake still completes and
    its hello gets a clear "server-full" error (or takes over its own stale session),
    instead of silence. Sessions that say no valid hello are closed within
    HELLO_DEADLINE_S, so the spare ones cannot be held for long."""
    return max_members + max(8, max_members // 8)


class ChatServer:
    """The chat server for every session of one daemon (see module docstring)."""

    def __init__(
        self,
        psk: bytes,
        settings: ServerSettings = ServerSettings(),
        protocol: ProtocolConfig | None = None,
        node: str | None = None,
    ) -> None:
        """`protocol` overrides the core's timers derived from `settings` (tests use
        shorter ones than an operator may set). `node`: this daemon's name in a
        cluster (udpchat.chat.cluster); None, the default, for a daemon on its own."""
        self.settings = settings
        self.protocol = protocol or settings.protocol_config()
        # No MessageDelivered events: members' lines are theirs to re-send, and the
        # shutdown wait asks is_idle.
        self.endpoint = ServerEndpoint(
            psk, self.protocol, sessions_for(settings.max_members), report_delivered=False
        )
        rules_settings = dict(
            history_lines=settings.history_lines,
            max_members=settings.max_members,
            default_room=settings.default_room,
            room_keys=settings.room_keys,
            room_rate_per_s=settings.room_rate_per_s,
            room_burst=settings.room_burst,
            wall=self.endpoint.clock.at,
        )
        self.cluster: ClusterRules | None = None
        if node is None:
            self.rules = ChatRules(**rules_settings)  # type: ignore[arg-type]
        else:
            # Imported here: a daemon on its own (most are) never needs the cluster's
            # rules and engine messages, whose import cost ~35 ms of CPU at each start.
            from udpchat.chat.cluster import ClusterRules

            self.rules = self.cluster = ClusterRules(node, **rules_settings)  # type: ignore[arg-type]
        self.room_keys = RoomKeys(max_rooms=2 * settings.max_members)
        self._drops: Counter[str] = Counter()  # refused here (the core counts its own)
        self._log: list[LogEvent] = []
        self._history: list[Remember | Forget] = []
        # For the daemon's metrics: handshakes completed (new sessions) and rekeys.
        self.handshakes = 0
        self.rekeys = 0
        # Refused addresses cost an attacker nothing to forge: once per address per
        # minute, a few a minute in all. Sessions need the key, and get more.
        self._refusals = LogLimit(
            burst=1,
            interval_s=REFUSAL_LOG_INTERVAL_S,
            max_lines=REFUSAL_LOG_MAX_LINES,
            window_s=REFUSAL_LOG_INTERVAL_S,
            max_keys=REFUSAL_LOG_MAX_ADDRESSES,
        )
        self._session_log = LogLimit(
            burst=settings.session_log_burst,
            interval_s=settings.session_log_interval_s,
            max_lines=settings.log_lines_per_minute,
            window_s=60.0,
            max_keys=max(1024, 2 * settings.max_members),
        )
        # Sessions that have not said hello yet, by deadline: insertion order is
        # deadline order, since every deadline is now + HELLO_DEADLINE_S.
        self._hello_due: OrderedDict[bytes, float] = OrderedDict()
        self._held: list[bytes] | None = None  # shutting down: sessions to close last
        # Sessions on a retired key, told why: closed when they acknowledged, or then.
        self._retiring: dict[bytes, float] = {}
        self._shutdown_deadline: float | None = None
        self.done = False  # shutdown finished: every session closed

    # -- input -----------------------------------------------------------------------

    def set_wall_clock(self, wall: float, now: float) -> None:
        """See ServerEndpoint.set_wall_clock: `now` is monotonic, `wall` Unix time."""
        self.endpoint.set_wall_clock(wall, now)

    def receive_datagram(self, data: bytes, addr: events.Address, now: float) -> None:
        self.endpoint.receive_datagram(data, addr, now)
        self._pump(now)

    def address_refused(self, addr: events.Address, now: float) -> None:
        """A datagram from an address the operator's allow/deny lists refuse."""
        self._drops["address-refused"] += 1
        self._refusal(LogEvent("address-refused", None, addr), now)

    def handle_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)
        self.rules.release(now)
        for session_id, due in list(self._retiring.items()):
            if due <= now or self.endpoint.is_idle(session_id):
                del self._retiring[session_id]
                self._close(session_id, now)
        while self._hello_due:
            session_id, due = next(iter(self._hello_due.items()))
            if due > now:
                break
            del self._hello_due[session_id]
            if self.rules.nick_of(session_id) is None:
                self._close(session_id, now)
        self._pump(now)

    def update_settings(self, settings: ServerSettings) -> None:
        """A reload: history_lines and max_members apply at once (ChatRules.set_limits);
        the other settings are fixed at construction (the daemon says they need a
        restart)."""
        self.rules.set_limits(settings.history_lines, settings.max_members)
        self.endpoint.max_sessions = sessions_for(settings.max_members)
        self.settings = replace(
            self.settings, history_lines=settings.history_lines, max_members=settings.max_members
        )

    def cluster_reply(self, reply: Reply, now: float) -> None:
        """An answer of the cluster's engine (udpchat.chat.cluster)."""
        assert self.cluster is not None, "not in a cluster"
        self.cluster.reply(reply, now)
        self._pump(now)

    def take_cluster_requests(self) -> list[Request]:
        """What to ask of the cluster's engine, in order (none outside a cluster)."""
        return [] if self.cluster is None else self.cluster.take_requests()

    def set_keys(self, psk: bytes, previous: bytes | None, now: float) -> int:
        """Key rotation (PROTOCOL.md 4.12): accept handshakes under `psk` and, during
        an overlap, `previous`. Every member on a key that is now neither is told why
        (a `shutdown` message, which every client shows) and its session closed once
        that is acknowledged, or after SHUTDOWN_LINGER_S; the room sees it quit.
        Returns how many were closed."""
        retired = self.endpoint.set_keys(psk, previous)
        payload = encode(Shutdown(KEY_RETIRED_TEXT))
        for session_id in retired:
            nick = self.rules.nick_of(session_id)
            addr = self._address_of(session_id)
            self._send(session_id, payload, now)
            self._hello_due.pop(session_id, None)
            self.rules.session_ended(session_id, "closed", now)
            self._retiring[session_id] = now + SHUTDOWN_LINGER_S
            self._session_event(LogEvent("key-retired", nick, addr, session_id=session_id), now)
        self._pump(now)
        return len(retired)

    def restore_history(self, rooms: Iterable[tuple[str, Sequence[KeptLine]]], now: float) -> None:
        """Put back the rooms' history kept from before a restart (ChatRules.
        restore_room): rooms in the order they were last active, each with its lines
        oldest first. Rooms beyond what the rules keep come back out of take_history
        as Forget."""
        for name, lines in rooms:
            self.rules.restore_room(name, lines)
        self._pump(now)

    def shutdown(self, now: float) -> None:
        """Tell every member the server is going away; close each session once it has
        acknowledged that (or SHUTDOWN_LINGER_S has passed). `done` says when."""
        if self._held is not None:
            return
        self._held = []
        self._hello_due.clear()
        self._shutdown_deadline = now + SHUTDOWN_LINGER_S
        self.rules.shutdown(SHUTDOWN_TEXT, now)
        self._pump(now)

    # -- output ----------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, events.Address]]:
        return self.endpoint.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        if self.done:
            return None
        deadlines = [self.endpoint.get_timer(), self._shutdown_deadline, self.rules.next_release()]
        deadlines.extend(self._retiring.values())
        if self._hello_due:
            deadlines.append(next(iter(self._hello_due.values())))
        return min((d for d in deadlines if d is not None), default=None)

    def take_log(self) -> list[LogEvent]:
        """What happened that is worth a log line, in order; the list is emptied."""
        out, self._log = self._log, []
        return out

    def take_history(self) -> list[Remember | Forget]:
        """Lines accepted into a room's history and rooms forgotten, in order, since
        the last call; the list is emptied. Whatever keeps history outside memory
        must take these before datagrams_to_send: a Remember is then kept before
        the acknowledgement of its line leaves."""
        out, self._history = self._history, []
        return out

    def take_drops(self) -> dict[str, int]:
        """Datagrams dropped without answer since the last call, by reason."""
        counts = Counter(self.endpoint.stats.take())
        counts.update(self._drops)
        self._drops.clear()
        return dict(counts)

    def take_suppressed(self) -> dict[str, int]:
        """Log lines not written since the last call (over the limits), by kind."""
        counts = self._session_log.take_suppressed()
        counts.update(self._refusals.take_suppressed())
        return dict(counts)

    # -- the pump: core events -> rules -> actions -> core ---------------------------

    def _pump(self, now: float) -> None:
        while True:
            event = self.endpoint.next_event()
            if event is not None:
                self._on_event(event, now)
            actions = self.rules.take_actions()
            for action in actions:
                self._do(action, now)
            if event is None and not actions:
                break
        if self._held is not None and not self.done:
            self._finish_shutdown(now)

    def _on_event(self, event: events.Event, now: float) -> None:
        if isinstance(event, events.MessageReceived):
            self.rules.message_received(event.session_id, event.payload, now)
        elif isinstance(event, events.SessionStarted):
            self.handshakes += 1
            if self._held is None:
                self._hello_due[event.session_id] = now + HELLO_DEADLINE_S
            self.rules.session_started(event.session_id, event.addr, now)
        elif isinstance(event, events.SessionEnded):
            self._hello_due.pop(event.session_id, None)
            self.rules.session_ended(event.session_id, event.reason, now)
        elif isinstance(event, events.SessionRoamed):
            self.rules.session_roamed(event.session_id, event.new_addr)
            nick = self.rules.nick_of(event.session_id)
            roamed = LogEvent(
                "roamed", nick, event.new_addr, old_addr=event.old_addr, session_id=event.session_id
            )
            self._session_event(roamed, now)
        elif isinstance(event, events.HandshakeRefused):
            self._refusal(LogEvent("server-full", None, event.addr), now)
        elif isinstance(event, events.SessionRekeyed):
            self.rekeys += 1
        # MessageNotDelivered: nothing to do; a member's lines are the member's to
        # re-send.

    def _do(self, action: Action, now: float) -> None:
        if isinstance(action, Broadcast):
            self._broadcast(action, now)
        elif isinstance(action, Send):
            self._send(action.session_id, action.payload, now)
        elif isinstance(action, PauseReceiving):
            try:
                self.endpoint.pause_receiving(action.session_id, action.paused)
            except UnknownSession:
                pass  # it ended meanwhile: nothing to hold back
        elif isinstance(action, UseLazyAcks):
            try:
                self.endpoint.use_lazy_acks(action.session_id)
            except UnknownSession:
                pass  # it ended while the rules were answering it
        elif isinstance(action, UsePathChecks):
            try:
                self.endpoint.use_path_checks(action.session_id)
            except UnknownSession:
                pass  # it ended while the rules were answering it
        elif isinstance(action, (Remember, Forget)):
            self._history.append(action)
        elif isinstance(action, Close):
            if self._held is not None:
                self._held.append(action.session_id)  # after the notice is acknowledged
            else:
                self._close(action.session_id, now)
        else:
            self._session_event(action, now)

    def _broadcast(self, action: Broadcast, now: float) -> None:
        """One message to a room: sealed once with the room key for the members that
        negotiated room keys (each gets the key first if it lacks it), as is for the
        others. Per member that leaves only an HMAC and a send to do."""
        members = action.members
        # [sid for sid, room_keys in members if room_keys], in C: once per member.
        capable = list(compress(map(_SESSION_ID, members), map(_ROOM_KEYS, members)))
        sealed = None
        if not capable:
            # Nobody may keep the key: a member who comes back later must get a new
            # one, not be counted as holding one it may have dropped long ago.
            self.room_keys.forget(action.room)
        else:
            announce, key_id, fernet = self.room_keys.prepare(action.room, capable, now)
            for session_id, payload in announce:
                self._send(session_id, payload, now)
            sealed = seal(key_id, fernet, action.payload)
            if len(sealed) > MAX_SEALED_PAYLOAD_BYTES:
                sealed = None  # too big to seal (never for a valid line): send it plain
        skip = action.skip
        full: list[bytes] = []
        if sealed is not None:
            sealed_for = capable
            if skip in capable:  # the sender, once: removed in C, not filtered in Python
                sealed_for = capable.copy()
                sealed_for.remove(skip)
            full += self.endpoint.send_many(sealed_for, sealed, now, sealed=True)
        if sealed is None or len(capable) < len(members):  # else everyone got it sealed
            plain = [
                sid for sid, room_keys in members
                if sid != skip and not (room_keys and sealed is not None)
            ]  # fmt: skip
            if plain:
                full += self.endpoint.send_many(plain, action.payload, now)
        for session_id in full:
            self._queue_full(session_id, now)

    def _send(self, session_id: bytes, payload: bytes, now: float, sealed: bool = False) -> None:
        try:
            self.endpoint.send(session_id, payload, now, sealed)
        except UnknownSession:
            pass  # it ended while the rules were still answering it
        except QueueFull:
            self._queue_full(session_id, now)

    def _queue_full(self, session_id: bytes, now: float) -> None:
        # A member that acknowledges nothing while its queue overflows is gone in
        # all but name (the room's rate keeps any member that acknowledges from
        # getting here): the room is told it timed out, the log how much it missed,
        # and closing it bounds the memory.
        nick = self.rules.nick_of(session_id)
        missed = self.endpoint.unacknowledged(session_id)
        entry = LogEvent(
            "queue-full", nick, self._address_of(session_id), detail=str(missed),
            session_id=session_id,
        )  # fmt: skip
        self._session_event(entry, now)
        self.rules.session_ended(session_id, "timeout", now)
        self._close(session_id, now)

    def _close(self, session_id: bytes, now: float) -> None:
        try:
            self.endpoint.close_session(session_id, now)
        except UnknownSession:
            pass

    def _address_of(self, session_id: bytes) -> events.Address:
        try:
            return self.endpoint.session_address(session_id)
        except KeyError:
            return None

    def _refusal(self, entry: LogEvent, now: float) -> None:
        addr = entry.addr
        host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        if self._refusals.allow(host, entry.kind, now):
            self._log.append(entry)

    def _session_event(self, entry: LogEvent, now: float) -> None:
        """A line a session caused: within its own limit and the total, or counted."""
        per_session = entry.kind not in ONCE_PER_SESSION
        if self._session_log.allow(entry.session_id, entry.kind, now, per_session):
            self._log.append(entry)

    def _finish_shutdown(self, now: float) -> None:
        assert self._held is not None and self._shutdown_deadline is not None
        if now < self._shutdown_deadline and not all(self.endpoint.is_idle(s) for s in self._held):
            return
        for session_id in self._held:
            self._close(session_id, now)
        self._held.clear()
        while self.endpoint.next_event() is not None:
            pass  # the closes' aftermath: after the notice, nothing more is said
        self.done = True
