"""The sans-IO protocol endpoints: ServerEndpoint (many sessions) and ClientEndpoint.

Feed datagrams in with receive_datagram(data, ..., now), ask datagrams_to_send(now),
drain next_event(), and call handle_timer(now) at get_timer(). Nothing here reads a
clock, opens a socket or imports Twisted. `now` is monotonic time in seconds, for
every timer; handshake messages carry Unix time, which the adapter provides with
set_wall_clock(time.time(), now) before each call (udpchat.core.clock; without it,
`now` itself is taken as Unix time). Nothing that arrives can make these methods raise: every
rejected datagram is dropped without a reply and counted in `stats` by reason. An
exception that escapes them is a bug in udpchat, and is left to the caller's adapter
to log with its traceback.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable

from udpchat.core import events, wire
from udpchat.core.clock import WallClock
from udpchat.core.cookies import AddressCookies, HandshakeBudget
from udpchat.core.handshake import (
    CLOCK_PROBE_OFFSETS,
    FERNET_MAX_CLOCK_SKEW_S,
    ZERO_TAG,
    HandshakeRejected,
    check_fresh,
    new_session_id,
    parse_initiation,
)
from udpchat.core.limits import MAX_DATAGRAM_BYTES, ProtocolConfig
from udpchat.core.ratelimit import AddressRateLimiter, BoundedExpiringSet
from udpchat.core.reliability import MessageTooLarge, QueueFull, Sent
from udpchat.core.session import Session, check_size
from udpchat.core.stats import DropStats

__all__ = [
    "ClientEndpoint",
    "MessageTooLarge",
    "NotConnected",
    "QueueFull",
    "ServerEndpoint",
    "UnknownSession",
]

INIT_BYTES = wire.INIT_BYTES
MIN_DATA_BYTES = wire.DATA_HEADER_BYTES + wire.MIN_FERNET_BYTES
HANDSHAKE_TOKEN_MAC_BYTES = 32  # a Fernet token ends with its HMAC-SHA256
MIN_ENVELOPE_BYTES = wire.ENVELOPE_HEADER_BYTES + wire.ENVELOPE_MAC_BYTES
_COOKIE_REPLY, _DATA, _ENVELOPE = wire.COOKIE_REPLY, wire.DATA, wire.ENVELOPE
_SESSION_ID_END = 1 + wire.SESSION_ID_BYTES
#: Message 1s of one handshake a cookie reply may answer (the client's latest ones).
RECENT_INITS = 4
#: A change of the system clock's offset smaller than this is jitter (or NTP slewing,
#: at most 0.5 ms/s), not a step.
CLOCK_STEP_S = 1.0
#: The client sends clock probes with its third message 1 of a handshake, when two
#: went unanswered (after 3 s: 1 s, then 2 s, PROTOCOL.md 4.6 and 4.11).
PROBE_AT_ATTEMPT = 3


class UnknownSession(KeyError):
    """send() or close_session() named a session that does not exist (any more)."""


class NotConnected(Exception):
    """ClientEndpoint.send() before connect(), or after the session ended."""


class HandshakeKey:
    """What a pre-shared key gives the handshake (PROTOCOL.md 2.4, 2.8): its 32 bytes,
    K_hs as a Fernet, K_hs's signing half as a precomputed HMAC, and K_cookie."""

    __slots__ = ("psk32", "f_hs", "hs_mac", "cookie_mac")

    def __init__(self, psk: bytes) -> None:
        self.psk32 = wire.psk_raw(psk)
        k_hs = wire.handshake_key(self.psk32)
        self.f_hs = wire.binary_fernet(k_hs)
        self.hs_mac = wire.HmacSha256(wire.fernet_signing_key(k_hs))
        self.cookie_mac = wire.HmacSha256(wire.cookie_reply_key(self.psk32))

    def signed(self, token: bytes) -> bool:
        """Whether a handshake token carries K_hs's HMAC (PROTOCOL.md 4.2 step 3)."""
        return hmac.compare_digest(self.hs_mac(token[:-32]), token[-32:])


class _Endpoint:
    """What both sides share: keys, events, stats, and the timer heap."""

    def __init__(self, psk: bytes, config: ProtocolConfig) -> None:
        self._config = config
        self._key = HandshakeKey(psk)
        self._events: deque[events.Event] = deque()
        self._message_ids = itertools.count()
        self.stats = DropStats()
        self.clock = WallClock()

    def set_wall_clock(self, wall: float, now: float) -> None:
        """The system clock reads `wall` (Unix time) at monotonic `now`. The I/O
        adapter calls this before each of the other methods; a step of the system
        clock then moves the Unix time of handshake messages, and no timer."""
        self.clock.set(wall, now)

    def next_event(self) -> events.Event | None:
        return self._events.popleft() if self._events else None

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def _emit(self, event: events.Event) -> None:
        self._events.append(event)

    def _new_session(
        self, session_id: bytes, now: float, addr: object, initiator: bool, key: HandshakeKey
    ) -> Session:
        return Session(
            session_id,
            initiator=initiator,
            config=self._config,
            stats=self.stats,
            emit=self._events.append,  # _emit(), without its call per event
            now=now,
            addr=addr,
            handshake_keys=(key.psk32, key.f_hs),
            clock=self.clock,
        )


class ServerEndpoint(_Endpoint):
    """The responder side: sessions keyed by their random id, never by address."""

    def __init__(
        self,
        psk: bytes,
        config: ProtocolConfig = ProtocolConfig(),
        max_sessions: int = 1024,
        report_delivered: bool = True,
    ) -> None:
        """`report_delivered=False`: no MessageDelivered events (is_idle still says
        whether everything sent was acknowledged)."""
        super().__init__(psk, config)
        self.max_sessions = max_sessions
        self._report_delivered = report_delivered
        self._sessions: dict[bytes, Session] = {}
        self._pending: OrderedDict[bytes, None] = OrderedDict()  # half-open, oldest first
        self._dirty: dict[bytes, None] = {}  # sessions with something to flush, in order
        self._out: list[tuple[bytes, events.Address]] = []  # flushed early by close_session
        # Timers: a heap of (deadline, order, session id) with lazy deletion; an entry
        # counts only while it matches the session's deadline in _scheduled.
        self._timers: list[tuple[float, int, bytes]] = []
        self._scheduled: dict[bytes, float] = {}
        self._timer_order = itertools.count()
        # A replayed message 1 is caught here while it is still fresh enough to pass.
        self._seen_ephemerals = BoundedExpiringSet(
            config.handshake_cache_max,
            config.handshake_ttl_s + FERNET_MAX_CLOCK_SKEW_S,
            on_evict=lambda: self.stats.drop("handshake-cache-evicted"),
        )
        # The same message 1s by their token's MAC (in clear): a byte-for-byte replay,
        # all an outsider can make, is refused before it can spend the global budget
        # (which would put the server under load for everyone, issue 9 review).
        self._seen_tokens = BoundedExpiringSet(
            config.handshake_cache_max,
            config.handshake_ttl_s + FERNET_MAX_CLOCK_SKEW_S,
            on_evict=lambda: self.stats.drop("handshake-cache-evicted"),
        )
        self._handshake_limiter = AddressRateLimiter(
            config.handshake_rate_per_s,
            config.handshake_burst,
            config.rate_limiter_max_addresses,
            on_evict=lambda: self.stats.drop("rate-limiter-evicted"),
        )
        # Under handshake load, only message 1s that return a cookie for their source
        # address are handshaken (PROTOCOL.md 4.5, 4.7).
        self._budget = HandshakeBudget(
            config.handshake_budget_per_s, config.handshake_budget_burst, config.under_load_hold_s
        )
        self._cookies = AddressCookies(config.cookie_secret_s)
        self._previous: HandshakeKey | None = None  # during a key rotation

    def __len__(self) -> int:
        return len(self._sessions)

    def is_idle(self, session_id: bytes) -> bool:
        """True when nothing is queued or unacknowledged (or the session is gone)."""
        session = self._sessions.get(session_id)
        return session is None or session.ended or session.idle

    def session_address(self, session_id: bytes) -> events.Address:
        return self._sessions[session_id].addr

    def under_load(self, now: float) -> bool:
        """Whether message 1s without a valid cookie get a cookie reply now."""
        return self._budget.under_load(now)

    # -- input -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: events.Address, now: float) -> None:
        if len(data) > MAX_DATAGRAM_BYTES:
            self.stats.drop("too-large")
        elif not data:
            self.stats.drop("short")
        elif data[0] == wire.DATA:
            if len(data) < MIN_DATA_BYTES:
                self.stats.drop("short")
                return
            session = self._sessions.get(data[1 : 1 + wire.SESSION_ID_BYTES])
            if session is None:
                self.stats.drop("unknown-session")
                return
            if not session.established and self._full():
                # Full since this session was answered: it stays half-open and expires.
                self._refuse_full(addr)
                return
            session.receive_data(data, addr, now)
            if session.established:
                self._pending.pop(session.session_id, None)
            self._touch(session)
        elif data[0] == wire.ENVELOPE:
            # A client's ack or ping under "room-keys" (PROTOCOL.md section 11): only
            # for an established session (the first handshake is confirmed by DATA).
            if len(data) < MIN_ENVELOPE_BYTES:
                self.stats.drop("short")
                return
            session = self._sessions.get(data[1 : 1 + wire.SESSION_ID_BYTES])
            if session is None or not session.established:
                self.stats.drop("unknown-session")
                return
            session.receive_envelope(data, addr, now)
            self._touch(session)
        elif data[0] == wire.HANDSHAKE_INIT:
            if len(data) != INIT_BYTES and len(data) != wire.INIT_WITH_COOKIE_BYTES:
                self.stats.drop("short" if len(data) < INIT_BYTES else "bad-length")
                return
            try:
                self._receive_init(data, addr, now)
            except HandshakeRejected as rejected:
                if rejected.reason == "server-full":
                    self._refuse_full(addr)
                else:
                    self.stats.drop(rejected.reason)
        else:
            self.stats.drop("unknown-type")

    def _refuse_full(self, addr: events.Address) -> None:
        self.stats.drop("server-full")
        self._emit(events.HandshakeRefused(addr))

    def set_wall_clock(self, wall: float, now: float) -> None:
        step = self.clock.set(wall, now)
        if step < -CLOCK_STEP_S:
            # Stepped back: the message 1s seen lately stay fresh for that much longer
            # by the clock that judges them, so they are remembered that much longer.
            self._seen_tokens.extend(-step)
            self._seen_ephemerals.extend(-step)

    # -- keys ------------------------------------------------------------------------

    def set_keys(self, psk: bytes, previous: bytes | None = None) -> list[bytes]:
        """Key rotation (PROTOCOL.md 4.12): handshakes are accepted under `psk` and,
        during an overlap, under `previous` too. A session keeps the key it began
        with. Sessions under a key that is now neither end: the half-open ones are
        forgotten, and the ids of the established ones are returned, for the
        application to tell and close."""
        known = {key.psk32: key for key in (self._key, self._previous) if key is not None}

        def key_for(raw: bytes) -> HandshakeKey:
            # The same object for a key kept: sessions compare keys by identity.
            return known.get(wire.psk_raw(raw)) or HandshakeKey(raw)

        self._key = key_for(psk)
        self._previous = None if previous is None else key_for(previous)
        if self._previous is self._key:
            self._previous = None  # the same key twice: nothing to rotate
        kept = {self._key.psk32} | ({self._previous.psk32} if self._previous else set())
        dropped = []
        for sid, session in list(self._sessions.items()):
            if session.psk32 in kept:
                continue
            if session.established and not session.ended:
                dropped.append(sid)
            elif not session.established:
                self._forget(sid)
        return dropped

    def uses_previous_key(self, session_id: bytes) -> bool:
        session = self._sessions.get(session_id)
        previous = self._previous
        return previous is not None and session is not None and session.psk32 == previous.psk32

    def _key_of(self, token: bytes) -> HandshakeKey:
        """The key whose K_hs signed a message 1's token: the current key, or during
        a rotation the previous one."""
        if len(token) >= wire.MIN_FERNET_BYTES and token[0] == wire.FERNET_VERSION:
            if self._key.signed(token):
                return self._key
            if self._previous is not None and self._previous.signed(token):
                return self._previous
        raise HandshakeRejected("bad-token")

    def _receive_init(self, data: bytes, addr: events.Address, now: float) -> None:
        ttl_s = self._config.handshake_ttl_s
        wall = self.clock.at(now)
        # Cheap checks first (PROTOCOL.md 4.2): a returned cookie is one HMAC, the
        # token's MAC and timestamp another; Fernet decryption and X25519 come later.
        proven = len(data) == wire.INIT_WITH_COOKIE_BYTES and self._cookies.valid(
            data[INIT_BYTES:], addr, now
        )
        token = data[1:INIT_BYTES]
        key = self._key_of(token)  # the token's HMAC, under the current or previous key
        check_fresh(int.from_bytes(token[1:9], "big"), wall, ttl_s)
        token_mac = data[INIT_BYTES - HANDSHAKE_TOKEN_MAC_BYTES : INIT_BYTES]
        if self._seen_tokens.contains(token_mac, now):
            raise HandshakeRejected("replayed-handshake")
        if not proven and self._budget.cookie_required(now):
            # Under load: a cookie for the source instead of a handshake. No state, no
            # decryption, and 33 bytes for 170: a forged source gets nothing to amplify.
            cookie = self._cookies.make(addr, now)
            self._out.append((wire.build_cookie_reply(key.cookie_mac, cookie, data), addr))
            raise HandshakeRejected("cookie-required")
        init = parse_initiation(key.f_hs, data[:INIT_BYTES], wall, ttl_s)
        # A replay is refused before it can spend its (spoofable) source's budget; the
        # limit comes after authentication, so outsiders cannot spend anyone's budget,
        # and before remembering, so one address cannot fill the cache faster.
        if self._seen_ephemerals.contains(init.ephemeral, now):
            raise HandshakeRejected("replayed-handshake")
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        if not self._handshake_limiter.allow(host, now):
            raise HandshakeRejected("rate-limited")
        self._seen_ephemerals.add_evicting(init.ephemeral, now)
        self._seen_tokens.add_evicting(token_mac, now)
        session = self._sessions.get(init.session_id)
        if session is None:
            if init.resume_tag != ZERO_TAG or init.epoch != 0:
                raise HandshakeRejected("unknown-session")
            if self._full():
                raise HandshakeRejected("server-full")
            session = self._new_session(init.session_id, now, addr, initiator=False, key=key)
            session.report_delivered = self._report_delivered
            session.accept_init(init, data, addr, now, may_establish=False)
            self._sessions[init.session_id] = session
            self._add_pending(session)
        elif session.psk32 != key.psk32:
            raise HandshakeRejected("bad-token")  # a session keeps the key it began with
        else:
            session.accept_init(init, data, addr, now, may_establish=not self._full())
            if session.established:
                self._pending.pop(session.session_id, None)
        self._touch(session)

    def _full(self) -> bool:
        """max_sessions established sessions exist (half-open ones do not count)."""
        return len(self._sessions) - len(self._pending) >= self.max_sessions

    def _add_pending(self, session: Session) -> None:
        self._pending[session.session_id] = None
        while len(self._pending) > self._config.max_pending_sessions:
            oldest, _ = self._pending.popitem(last=False)
            self._forget(oldest)
            self.stats.drop("pending-evicted")

    def _forget(self, session_id: bytes) -> None:
        """Remove every trace of a session (its stale heap entries die lazily)."""
        self._sessions.pop(session_id, None)
        self._pending.pop(session_id, None)
        self._scheduled.pop(session_id, None)
        self._dirty.pop(session_id, None)

    # -- output ------------------------------------------------------------------

    def send(self, session_id: bytes, payload: bytes, now: float, sealed: bool = False) -> int:
        """Queue one message for reliable delivery; returns its message id. A `sealed`
        message (a room message sealed with a room key) goes in ENVELOPE datagrams:
        only for a session whose client negotiated "room-keys" (PROTOCOL.md 11)."""
        session = self._sessions.get(session_id)
        if session is None or session.ended or not session.established:
            raise UnknownSession(session_id)
        check_size(payload, sealed)
        message_id = next(self._message_ids)
        self._send(session, payload, message_id, now, sealed)
        return message_id

    def send_many(
        self, session_ids: Iterable[bytes], payload: bytes, now: float, sealed: bool = False
    ) -> list[bytes]:
        """send() of one payload to many sessions, the members of a room: the size is
        checked once, the message is one record in every send queue (one message id,
        unique within each session), and per member what is left is its own
        sequence number, datagram and MAC. Sessions that are gone are skipped. Returns
        the sessions whose send queue was full: nothing was queued for them."""
        check_size(payload, sealed)
        message = Sent(next(self._message_ids), payload, sealed, now)
        session_of = self._sessions.get
        out = self._out.append
        full: list[bytes] = []
        for session_id in session_ids:
            session = session_of(session_id)
            if session is None:
                continue
            # _send(), written out: this loop runs once per member per room line.
            try:
                fast = session.send_now(message)
                if fast is None:
                    if session.ended or not session.established:
                        continue
                    session.queue(payload, message.message_id, sealed)
                    self._touch(session)
                    continue
            except QueueFull:
                full.append(session_id)
                continue
            out((fast[0], session.addr))
            if fast[1]:  # the retransmission timer started: it may be the earliest
                self._schedule(session)
        return full

    def _send(
        self, session: Session, payload: bytes, message_id: int, now: float, sealed: bool
    ) -> None:
        fast = session.send_now(Sent(message_id, payload, sealed, now))
        if fast is None:
            session.queue(payload, message_id, sealed)
            self._touch(session)
        else:
            datagram, timer_moved = fast
            self._out.append((datagram, session.addr))
            if timer_moved:  # the retransmission timer started: it may be the earliest
                self._schedule(session)

    def unacknowledged(self, session_id: bytes) -> int:
        """Messages queued for the session and not acknowledged yet."""
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session.unacknowledged

    def send_queue_bytes(self) -> int:
        """What every session's send queue is charged with, together: one walk over
        the sessions (for a metrics scrape, not for the hot path)."""
        return sum(session.queued_bytes for session in self._sessions.values())

    def pause_receiving(self, session_id: bytes, paused: bool) -> None:
        """Flow control: while paused, the session's new messages are neither
        delivered nor acknowledged (PROTOCOL.md 5.6), so its peer keeps them and
        sends them again later. Acks and everything else still work."""
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        session.receive_paused = paused

    def use_path_checks(self, session_id: bytes) -> None:
        """The session's client negotiated "path-check" (PROTOCOL.md 11.7): challenge
        an address it moves to instead of waiting for its next handshake."""
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        session.use_path_checks()
        self._touch(session)

    def use_lazy_acks(self, session_id: bytes) -> None:
        """The session's client negotiated "lazy-acks" (PROTOCOL.md 11.8): it may hold
        its acks of sealed messages longer, and the retransmission timeout waits."""
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        session.use_lazy_acks()

    def close_session(self, session_id: bytes, now: float) -> None:
        """End a session, telling the peer once (best effort). What was queued for it
        before is sent first, once: a last reply still goes out with the close."""
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        if not session.ended:
            self._out.extend(session.flush(now))
        session.close(now)
        self._touch(session)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, events.Address]]:
        out, self._out = self._out, []
        dirty, self._dirty = self._dirty, {}
        remaining = iter(dirty)
        session: Session | None = None
        try:
            for session_id in remaining:
                session = self._sessions.get(session_id)
                if session is None:
                    continue
                out.extend(session.flush(now))
                if session.ended:
                    self._forget(session_id)
                else:
                    self._schedule(session)
        except Exception:
            # A bug in one session costs that session (ended), not the others'
            # flushes or the datagrams already made: they wait for the next call.
            if session is not None:
                session.abort()
                self._forget(session.session_id)
            self._out = out + self._out
            for session_id in remaining:
                self._dirty[session_id] = None
            raise
        return out

    # -- timers ------------------------------------------------------------------

    def _touch(self, session: Session) -> None:
        """Something changed: flush the session and look at its deadline, once, in the
        next datagrams_to_send (not on every message: that was the hot path)."""
        self._dirty[session.session_id] = None

    def _schedule(self, session: Session) -> None:
        """Make the heap hold the session's next deadline, or an earlier one.

        A deadline that moved later (a keepalive or expiry pushed back by traffic)
        keeps its earlier entry: that entry fires early, handle_timer finds nothing
        due and reschedules. One early wake-up per interval is far cheaper than a
        heap push on every datagram."""
        session_id = session.session_id
        deadline = session.next_deadline()
        scheduled = self._scheduled.get(session_id)
        if deadline is None:
            if scheduled is not None:
                del self._scheduled[session_id]
        elif scheduled is None or deadline < scheduled:
            self._scheduled[session_id] = deadline
            heapq.heappush(self._timers, (deadline, next(self._timer_order), session_id))

    def _current(self, entry: tuple[float, int, bytes]) -> Session | None:
        if self._scheduled.get(entry[2]) != entry[0]:
            return None
        session = self._sessions.get(entry[2])
        if session is None:
            del self._scheduled[entry[2]]  # defensive: every removal goes through _forget
        return session

    def get_timer(self) -> float | None:
        if self._out or self._dirty:
            # Normally empty here: datagrams_to_send takes them. Left over when a bug
            # interrupted it (or before the first call): due at once, whatever `now`.
            return 0.0
        while self._timers and self._current(self._timers[0]) is None:
            heapq.heappop(self._timers)  # superseded: lazy deletion keeps this O(log n)
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        due: list[Session] = []
        while self._timers and self._timers[0][0] <= now:
            session = self._current(heapq.heappop(self._timers))
            if session is not None:
                del self._scheduled[session.session_id]
                due.append(session)
        for index, session in enumerate(due):
            try:
                session.handle_timer(now)
            except Exception:
                # A bug in one session costs that session (ended, so that its timer
                # cannot fire again at once, for ever), never the later ones' timers.
                session.abort()
                self._forget(session.session_id)
                for later in due[index + 1 :]:
                    self._touch(later)
                    self._schedule(later)
                raise
            self._touch(session)
            self._schedule(session)  # now, even if nothing is flushed before get_timer


class ClientEndpoint(_Endpoint):
    """The initiator side: one session to one server at a time."""

    def __init__(self, psk: bytes, config: ProtocolConfig = ProtocolConfig()) -> None:
        super().__init__(psk, config)
        self._session: Session | None = None
        # The latest message 1s sent in this session's handshake: a cookie reply may
        # answer any of them (the server's answers lag behind under load).
        self._recent_inits: deque[bytes] = deque(maxlen=RECENT_INITS)
        # Clock probes (PROTOCOL.md 4.11) go out once until a handshake completes.
        self._may_probe = True

    @property
    def session_id(self) -> bytes | None:
        return None if self._session is None else self._session.session_id

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.established and not self._session.ended

    @property
    def idle(self) -> bool:
        """No message is queued or waiting for its acknowledgement."""
        return self._session is None or self._session.idle

    @property
    def last_received(self) -> float | None:
        """When the current session last received an authentic datagram (its start
        until then); None without a session."""
        return None if self._session is None else self._session.last_received

    def ping(self) -> None:
        """Send a PING with the next flush, if established and nothing else goes then.
        The client probes this way when the network says the server may be gone
        (udpchat.client.chatclient): a second refusal confirms it."""
        if self._session is not None:
            self._session.request_ping()

    def connect(self, now: float) -> None:
        """Start a new session (a fresh id and handshake); ends any current one silently."""
        if self._session is not None and not self._session.ended:
            self._session.close(now)
        session = self._new_session(new_session_id(), now, addr=None, initiator=True, key=self._key)
        session.start_handshake(now)
        self._session = session
        self._recent_inits.clear()

    def receive_datagram(self, data: bytes, now: float) -> None:
        session = self._session
        size = len(data)
        if size > MAX_DATAGRAM_BYTES:
            self.stats.drop("too-large")
            return
        if not size:
            self.stats.drop("short")
            return
        if session is None or session.ended:
            self.stats.drop("unknown-session")
            return
        kind = data[0]
        if kind == _COOKIE_REPLY:  # no session id: bound to our message 1
            self._receive_cookie_reply(session, data, now)
        elif data[1:_SESSION_ID_END] != session.session_id:
            self.stats.drop("unknown-session")
        elif kind == _ENVELOPE:  # most of what a client receives (room lines): first
            if size >= MIN_ENVELOPE_BYTES:
                session.receive_envelope(data, None, now)
            else:
                self.stats.drop("short")
        elif kind == _DATA:
            if size >= MIN_DATA_BYTES:
                session.receive_data(data, None, now)
            else:
                self.stats.drop("short")
        elif kind == wire.HANDSHAKE_RESPONSE:
            session.receive_response(data, now)
            if session.handshake_attempts == 0:  # completed
                self._may_probe = True
        else:
            self.stats.drop("unknown-type")

    def _receive_cookie_reply(self, session: Session, data: bytes, now: float) -> None:
        """The server is under load and asks for the cookie (PROTOCOL.md 4.6): it is
        returned in a new attempt at once, unless the latest message 1 carries it
        already; the retry timer keeps its schedule. The reply must answer one of
        the last RECENT_INITS message 1s of the handshake in progress."""
        if len(data) != wire.COOKIE_REPLY_BYTES:
            self.stats.drop("short" if len(data) < wire.COOKIE_REPLY_BYTES else "bad-length")
            return
        latest = session.handshake_message
        if latest is None:
            self.stats.drop("unexpected-response")
            return
        for message in reversed(self._recent_inits):
            cookie = wire.open_cookie_reply(self._key.cookie_mac, data, message)
            if cookie is not None:
                break
        else:
            self.stats.drop("unbound-response")
            return
        session.cookie = cookie
        if latest[INIT_BYTES:] != cookie:
            session.start_handshake(now, retry=False)

    def send(self, payload: bytes, now: float) -> int:
        """Queue one message (sent once the handshake completes); returns its id."""
        if self._session is None or self._session.ended:
            raise NotConnected("no session: call connect() first")
        message_id = next(self._message_ids)
        self._session.queue(payload, message_id)
        return message_id

    def use_path_checks(self) -> None:
        """This client asked for "path-check" (PROTOCOL.md 11.7): answer the server's
        PATH_CHALLENGEs. Harmless before the server agrees: only a server that knows
        the extension sends them, and only to a client that asked."""
        if self._session is not None:
            self._session.use_path_checks()

    def use_envelopes(self) -> None:
        """The server accepted "room-keys" on this session: send acks and pings as
        ENVELOPEs from now on (PROTOCOL.md section 11)."""
        if self._session is not None:
            self._session.envelope_acks = True

    def use_lazy_acks(self) -> None:
        """The server accepted "lazy-acks" on this session (PROTOCOL.md 11.8):
        acknowledge its sealed messages within 1 s or every 32, not 500 ms or 16."""
        if self._session is not None:
            self._session.use_lazy_acks()

    def close(self, now: float) -> None:
        """End the session, telling the server once (best effort)."""
        if self._session is not None:
            self._session.close(now)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        session = self._session
        if session is None:
            return []
        flushed = session.flush(now)
        if not flushed:  # after nearly every datagram received
            return []
        out = [datagram for datagram, _ in flushed]
        if out and out[0][0] == wire.HANDSHAKE_INIT:  # handshake messages come first
            self._recent_inits.append(out[0])
        return out

    def get_timer(self) -> float | None:
        return None if self._session is None else self._session.next_deadline()

    def handle_timer(self, now: float) -> None:
        session = self._session
        if session is not None:
            deadline = session.next_deadline()
            if deadline is not None and deadline <= now:
                session.handle_timer(now)
                if session.handshake_attempts == PROBE_AT_ATTEMPT and self._may_probe:
                    # Two message 1s went unanswered: perhaps the clocks differ.
                    self._may_probe = False
                    session.send_clock_probes(CLOCK_PROBE_OFFSETS, now)
