"""One udpchat session: its key epochs, its reliable message stream and its timers.

The same class serves both sides. The initiator (client) drives handshakes and
rekeys; the responder (server) answers them through its ServerEndpoint and only
starts sending under a new key once the initiator has used it (key confirmation).
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.fernet import InvalidToken

from udpchat.core import events, wire
from udpchat.core.clock import WallClock
from udpchat.core.fernet import BinaryFernet
from udpchat.core.handshake import (
    CLOCK_SKEW_REPORT_S,
    ZERO_TAG,
    HandshakeRejected,
    Initiator,
    respond,
)
from udpchat.core.limits import MAX_DATAGRAM_BYTES, MAX_PAYLOAD_BYTES, ProtocolConfig
from udpchat.core.ratelimit import TokenBucket
from udpchat.core.reliability import MessageTooLarge, ReceiveBuffer, SendQueue, Sent
from udpchat.core.replay import ReplayWindow
from udpchat.core.stats import DropStats
from udpchat.core.wire import Malformed, SessionKeys

_MESSAGE_FRAME_PACK = wire.MESSAGE_FRAME.pack
_FRAME_MESSAGE = wire.FRAME_MESSAGE
_ENVELOPE = wire.ENVELOPE
#: An ENVELOPE's header followed by a MESSAGE frame's (type, sequence, length): the
#: start of a datagram carrying one room line, packed at once (both are "!"-packed,
#: so the two formats in one are the two byte strings one after the other).
_ENVELOPE_MESSAGE_PACK = struct.Struct(
    wire.ENVELOPE_HEADER.format + wire.MESSAGE_FRAME.format[1:]
).pack
_ENVELOPE_HEADER_UNPACK = wire.ENVELOPE_HEADER.unpack_from
_ENVELOPE_MAC_BYTES = wire.ENVELOPE_MAC_BYTES
_MESSAGE_FRAME_UNPACK = wire.MESSAGE_FRAME.unpack_from
#: An ENVELOPE's header and a MESSAGE frame's, without the MAC: a room line is longer.
_LINE_MIN_BYTES = wire.ENVELOPE_HEADER_BYTES + wire.MESSAGE_FRAME_BYTES
_FRAMES_AT = wire.ENVELOPE_HEADER_BYTES
_MAX_SEALED_PAYLOAD_BYTES = wire.MAX_SEALED_PAYLOAD_BYTES

#: Largest plaintext whose Fernet token keeps the datagram within MAX_DATAGRAM_BYTES:
#: the ciphertext is the plaintext PKCS7-padded to a multiple of 16 (at least +1).
MAX_PLAINTEXT_BYTES = (
    MAX_DATAGRAM_BYTES - wire.DATA_HEADER_BYTES - wire.FERNET_OVERHEAD_BYTES
) // 16 * 16 - 1
DATA_TIMESTAMP = 0
#: Answers to retries of one handshake kept until the initiator uses one of them.
MAX_CANDIDATES = 4
#: Until an address is validated, at most this many times the bytes received from it
#: are sent to it (PROTOCOL.md 5.3; QUIC's limit, RFC 9000 section 8).
PATH_CREDIT_FACTOR = 3
FRAMES_BUDGET_BYTES = MAX_PLAINTEXT_BYTES - wire.DATA_HEADER_BYTES - wire.PACKET_NUMBER.size


def check_size(payload: bytes, sealed: bool) -> None:
    """Raise MessageTooLarge for a payload no datagram can carry."""
    limit = wire.MAX_SEALED_PAYLOAD_BYTES if sealed else MAX_PAYLOAD_BYTES
    if len(payload) > limit:
        raise MessageTooLarge(f"{len(payload)} bytes; at most {limit} fit")


def _pack(
    frames: list[bytes], budget: int, first: bytes | None = None, last: tuple[bytes, ...] = ()
) -> list[bytes]:
    """Frames packed greedily, in order, into datagram bodies of at most `budget`
    bytes: `first` (an ack) opens the first body, `last` (close, ping) ends the last."""
    bodies: list[bytes] = []
    current: list[bytes] = [] if first is None else [first]
    size = 0 if first is None else len(first)
    for frame in frames:
        if current and size + len(frame) > budget:
            bodies.append(b"".join(current))
            current, size = [], 0
        current.append(frame)
        size += len(frame)
    if last:
        if current and size + sum(map(len, last)) > budget:
            bodies.append(b"".join(current))
            current = []
        current.extend(last)
    if current:
        bodies.append(b"".join(current))
    return bodies


@dataclass(slots=True)
class KeySet:
    """The keys of one epoch, with the state that is tied to them."""

    epoch: int
    send: BinaryFernet
    receive: BinaryFernet
    resume: bytes
    mac_send: wire.EnvelopeMac  # ENVELOPE MACs (extension "room-keys")
    mac_receive: wire.EnvelopeMac
    created: float
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    next_packet: int = 0
    highest_received: int = -1
    datagrams: int = 0  # sent + received, for rekey_after_datagrams
    retire_at: float | None = None
    # Responder: where the message 2 that offered these keys went. Whoever uses the
    # keys received it there, so using them proves that address reaches the peer.
    handshake_addr: events.Address = None


def _open_with_any(keysets: list[KeySet], token: bytes) -> tuple[KeySet, bytes] | None:
    for keyset in keysets:
        try:
            return keyset, keyset.receive.decrypt(token)
        except InvalidToken:
            continue
    return None


def _keyset(keys: SessionKeys, epoch: int, initiator: bool, now: float) -> KeySet:
    mine, theirs = keys.initiator_to_responder, keys.responder_to_initiator
    if not initiator:
        mine, theirs = theirs, mine
    return KeySet(
        epoch,
        wire.binary_fernet(mine),
        wire.binary_fernet(theirs),
        keys.resume,
        wire.EnvelopeMac(wire.envelope_key(mine)),
        wire.EnvelopeMac(wire.envelope_key(theirs)),
        now,
    )


Emit = Callable[[events.Event], None]


class Session:
    """Keys, reliability and timers of one session (see module docstring)."""

    # Slots: a server holds thousands of sessions (10,000 idle ones within 100 MB).
    __slots__ = (
        "session_id", "initiator", "addr", "_config", "_stats", "_emit", "_keys",
        "_send_epoch", "pending_epoch", "_candidates", "_sendq", "_recvq",
        "_message_bucket", "last_received", "last_sent", "_ack_due", "_ping_needed",
        "_close_pending", "ended", "_handshake_keys", "_clock", "_handshake_out",
        "report_delivered", "envelope_acks", "_sealed_unacked", "_sealed_ack_delay_s",
        "_sealed_ack_every", "_initiator",
        "_handshake_retry_at", "cookie",
        "_handshake_attempts", "path_checks", "_validated", "_path_credit",
        "_challenge", "_challenge_due", "_response_due", "receive_paused",
    )  # fmt: skip

    def __init__(
        self,
        session_id: bytes,
        *,
        initiator: bool,
        config: ProtocolConfig,
        stats: DropStats,
        emit: Emit,
        now: float,
        handshake_keys: tuple[bytes, BinaryFernet],
        clock: WallClock,
        addr: events.Address = None,
    ) -> None:
        """`handshake_keys` are the PSK's 32 bytes and K_hs: the initiator starts every
        handshake of the session with them (rekeys included), the responder answers.
        `clock` turns `now` into the Unix time handshake messages carry (the
        endpoint's, shared by its sessions)."""
        self.session_id = session_id
        self.initiator = initiator
        self.addr = addr
        self._config = config
        self._stats = stats
        self._emit = emit
        self._keys: dict[int, KeySet] = {}
        self._send_epoch: int | None = None
        self.pending_epoch: int | None = None  # responder: answered, not yet confirmed
        self._candidates: list[KeySet] = []  # responder: keys offered for pending_epoch
        self._sendq = SendQueue(config)
        self._recvq = ReceiveBuffer(config)
        self._message_bucket = TokenBucket(config.message_rate_per_s, config.message_burst, now)
        self.last_received = now
        self.last_sent = now
        self._ack_due: float | None = None
        self._ping_needed = False
        self._close_pending = False
        self.ended = False
        self._handshake_keys = handshake_keys
        self._clock = clock
        self._handshake_out: list[tuple[bytes, events.Address]] = []  # with their address
        # False: no MessageDelivered events (a server relaying to a room needs none,
        # and one event per delivered message showed in its profile).
        self.report_delivered = True
        self._sealed_unacked = 0  # sealed messages received since our last ack
        # Initiator, after "room-keys" was negotiated: acks and pings travel as
        # ENVELOPEs (PROTOCOL.md section 11).
        self.envelope_acks = False
        # When sealed room messages are acknowledged: PROTOCOL.md 5.4 and, once
        # negotiated, 11.9.
        self._sealed_ack_delay_s = config.sealed_ack_delay_s
        self._sealed_ack_every = config.sealed_ack_every
        # Responder: the address known to reach the peer (a handshake's message 2 or a
        # PATH_CHALLENGE was answered from it). While the session's address is
        # another, what may be sent there is limited to PATH_CREDIT_FACTOR times the
        # bytes received from it (PROTOCOL.md 5.3): `_path_credit` bytes are left.
        self._validated: events.Address = None
        self._path_credit: int | None = None
        # Both sides, after the peers negotiated "path-check" (PROTOCOL.md 11.7): the
        # responder sends `_challenge` to an address it has not validated, the
        # initiator answers a challenge with `_response_due`.
        self.path_checks = False
        self._challenge: bytes | None = None
        self._challenge_due = False
        self._response_due: bytes | None = None
        # Flow control by the application (ServerEndpoint.pause_receiving): new
        # messages are dropped unacknowledged while True, as over the message rate.
        self.receive_paused = False
        # initiator only
        self._initiator: Initiator | None = None
        self._handshake_retry_at: float | None = None
        self._handshake_attempts = 0
        # The server's cookie for our address, returned in every later message 1 of
        # this session (PROTOCOL.md 4.6); set by the ClientEndpoint.
        self.cookie: bytes | None = None

    # -- state ---------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self._send_epoch is not None

    @property
    def unacknowledged(self) -> int:
        """Messages queued or in flight, not acknowledged yet."""
        return len(self._sendq)

    @property
    def queued_bytes(self) -> int:
        """What its send queue is charged with (ProtocolConfig.send_queue_bytes)."""
        return self._sendq.charged_bytes

    @property
    def idle(self) -> bool:
        """Nothing queued or unacknowledged."""
        return self._sendq.idle

    def request_ping(self) -> None:
        """Send a PING with the next flush if nothing else goes (established only): a
        probe, when the application has a reason to doubt the path."""
        if self.established and not self.ended:
            self._ping_needed = True

    # -- handshakes ------------------------------------------------------------

    def start_handshake(self, now: float, retry: bool = True) -> None:
        """Initiator: send a message 1 for the next epoch (or the first one).
        `retry=False`: a new attempt at once (returning a cookie) that leaves the
        retry timer and its backoff as they are."""
        assert self.initiator, "only the initiator starts handshakes"
        psk32, f_hs = self._handshake_keys
        current = self._keys.get(self._send_epoch) if self._send_epoch is not None else None
        epoch = 0 if current is None else (current.epoch + 1) % 256
        resume = None if current is None else current.resume
        wall = self._clock.at(now)
        self._initiator = Initiator(psk32, f_hs, self.session_id, epoch, wall, resume, self.cookie)
        self._handshake_out = [(self._initiator.message, self.addr)]  # a retry replaces it
        if not retry and self._handshake_retry_at is not None:
            return
        delay = self._config.handshake_retry_s * 2**self._handshake_attempts
        self._handshake_retry_at = now + min(delay, self._config.handshake_retry_max_s)
        self._handshake_attempts += 1

    @property
    def psk32(self) -> bytes:
        """The pre-shared key the session's handshakes use (the same object for all
        sessions under one key)."""
        return self._handshake_keys[0]

    @property
    def handshake_attempts(self) -> int:
        """Initiator: message 1s sent for the handshake in progress (0: none)."""
        return self._handshake_attempts

    def send_clock_probes(self, offsets: Iterable[float], now: float) -> None:
        """Initiator: send the latest message 1 again stamped at each of `offsets`
        from our clock, for a server whose clock differs (PROTOCOL.md 4.11)."""
        if self._initiator is not None:
            probes = self._initiator.probes(offsets, self._clock.at(now))
            self._handshake_out.extend((probe, self.addr) for probe in probes)

    @property
    def handshake_message(self) -> bytes | None:
        """Initiator: the latest message 1, while its handshake is in progress."""
        return None if self._initiator is None else self._initiator.message

    def receive_response(self, datagram: bytes, now: float) -> None:
        """Initiator: message 2 arrived; on success switch sending to the new keys."""
        if self._initiator is None:
            self._stats.drop("unexpected-response")
            return
        try:
            keys, skew = self._initiator.receive_response(datagram, self._clock.at(now))
        except HandshakeRejected as rejected:
            self._stats.drop(rejected.reason)
            return
        if abs(skew) >= CLOCK_SKEW_REPORT_S:
            # Stamp later message 1s (rekeys, reconnects) in the server's time.
            self._clock.correction += skew
            self._emit(events.ClockSkew(self.session_id, self._clock.correction))
        epoch = self._initiator.epoch
        self._initiator = None
        self._handshake_retry_at = None
        self._handshake_attempts = 0
        first = self._send_epoch is None
        self.install(keys, epoch, now)
        self.last_received = now
        # Confirm the keys to the responder at once, even with nothing to say.
        self._ping_needed = True
        if first:
            self._emit(events.SessionStarted(self.session_id, self.addr))
        else:
            self._emit(events.SessionRekeyed(self.session_id, epoch))

    def accept_init(
        self,
        init: wire.Init,
        datagram: bytes,
        addr: events.Address,
        now: float,
        may_establish: bool,
    ) -> None:
        """Responder: answer an authentic message 1 for this session (its replay and
        rate checks already passed), or raise HandshakeRejected.

        A zero resume tag is only allowed while the first handshake has not completed
        (retries of it); any later handshake is a rekey and must prove with the resume
        tag that it comes from the session's own initiator. `may_establish` is False
        when the server is full: a rekey that would confirm a half-open session is then
        refused as "server-full".
        """
        assert not self.initiator, "only the responder answers handshakes"
        if init.resume_tag == ZERO_TAG:
            if self.established or init.epoch != 0:
                raise HandshakeRejected("session-exists")
        else:
            self._check_resume(init, now, may_establish)
        psk32, f_hs = self._handshake_keys
        responded = respond(psk32, f_hs, datagram, init, self._clock.at(now))
        if not self.offer(responded.keys, init.epoch, now, addr):
            raise HandshakeRejected("stale-rekey")
        if not self.established:
            self.last_received = now  # a retry keeps the half-open session alive
        self._handshake_out.append((responded.message, addr))

    def _check_resume(self, init: wire.Init, now: float, may_establish: bool) -> None:
        """A rekey must prove, with the resume tag, that it comes from the session's
        own initiator; a tag that fits a candidate also confirms that candidate."""
        for keyset in self._resumable(init.epoch):
            expected = wire.resume_tag(keyset.resume, init.session_id, init.epoch, init.ephemeral)
            if hmac.compare_digest(expected, init.resume_tag):
                if keyset.epoch == self.pending_epoch:
                    if not self.established and not may_establish:
                        raise HandshakeRejected("server-full")
                    self._confirm(keyset, now)
                return
        raise HandshakeRejected("bad-resume")

    def install(self, keys: SessionKeys, epoch: int, now: float) -> None:
        """Initiator: the keys of a completed handshake, used for sending at once."""
        self._keys[epoch] = _keyset(keys, epoch, self.initiator, now)
        self._promote(epoch, now)

    def offer(self, keys: SessionKeys, epoch: int, now: float, addr: events.Address = None) -> bool:
        """Responder: keys answered for `epoch`, used once the initiator uses them.

        Retries of one handshake (each with a fresh ephemeral) can cross in the
        network, so the responder cannot know which answer the initiator accepted:
        it keeps the last few candidates and promotes whichever authenticates data.
        A confirmed epoch is never replaced. Returns False if the offer is refused.
        """
        if epoch in self._keys:
            return False
        if self.pending_epoch != epoch:
            self._candidates = []
            self.pending_epoch = epoch
        keyset = _keyset(keys, epoch, self.initiator, now)
        keyset.handshake_addr = addr
        self._candidates.append(keyset)
        del self._candidates[:-MAX_CANDIDATES]
        return True

    def _promote(self, epoch: int, now: float) -> None:
        old = self._send_epoch
        if old is not None and old != epoch:
            self._keys[old].retire_at = now + self._config.key_grace_s
        self._send_epoch = epoch
        if self.pending_epoch == epoch:
            self.pending_epoch = None
            self._candidates = []

    def _resumable(self, epoch: int) -> list[KeySet]:
        """Keysets whose resume key may authenticate a rekey to `epoch`.

        Only the current sending keys, or a candidate for the pending epoch (whose
        resume tag then also proves the initiator accepted that candidate), can lead
        to the next epoch; retired keys never can.
        """
        found = []
        if self._send_epoch is not None and (self._send_epoch + 1) % 256 == epoch:
            found.append(self._keys[self._send_epoch])
        if self.pending_epoch is not None and (self.pending_epoch + 1) % 256 == epoch:
            found.extend(self._candidates)
        return found

    def _confirm(self, keyset: KeySet, now: float) -> None:
        """A candidate proved to be the initiator's choice: make it the current keys."""
        self._keys[keyset.epoch] = keyset
        first = self._send_epoch is None
        self._promote(keyset.epoch, now)
        if keyset.handshake_addr is not None:
            self._validate(keyset.handshake_addr)
        if first:
            self._emit(events.SessionStarted(self.session_id, self.addr))
        else:
            self._emit(events.SessionRekeyed(self.session_id, keyset.epoch))

    # -- sending -----------------------------------------------------------------

    def queue(self, payload: bytes, message_id: int, sealed: bool = False) -> None:
        """Queue a message; a `sealed` one (a room message sealed with a room key)
        travels only in ENVELOPE datagrams, a plain one only in DATA."""
        check_size(payload, sealed)
        self._sendq.push(payload, message_id, sealed)

    def send_now(self, message: Sent) -> tuple[bytes, bool] | None:
        """Fast path of queue() + flush() for one message when nothing else is waiting:
        the datagram to send now (with the pending ack if it fits) and whether the
        session's timer may have to move earlier. None if the message must take the
        ordinary path (something queued, lost, a handshake out, the window full) or
        cannot go at all (the session ended or is not established).

        `message` is sent at message.first_sent, and may go to other sessions too (a
        room's line): it is kept as it is until acknowledged. This is what each member
        of a busy room costs the server, once per line; the caller has checked the
        payload's size (check_size), once for the whole room."""
        if (
            self.ended
            or self._send_epoch is None
            or self._handshake_out
            or self._path_credit is not None
        ):
            return None
        sendq = self._sendq
        timer_was_running = sendq.rto_at is not None
        seq = sendq.push_shared(message)
        if seq is None:
            return None
        payload = message.payload
        now = message.first_sent
        keyset = self._keys[self._send_epoch]
        self._ping_needed = False
        if message.sealed and self._ack_due is None:
            # A room line, nothing to acknowledge (the usual case): the envelope's
            # header and the message frame's in one pack; _envelope() written out.
            packet = keyset.next_packet
            data = _ENVELOPE_MESSAGE_PACK(
                _ENVELOPE, self.session_id, keyset.epoch, packet, _FRAME_MESSAGE, seq, len(payload)
            ) + payload  # fmt: skip
            keyset.next_packet = packet + 1
            keyset.datagrams += 1
            self.last_sent = now
            return data + keyset.mac_send(data), not timer_was_running
        frame = _MESSAGE_FRAME_PACK(_FRAME_MESSAGE, seq, len(payload)) + payload
        if self._ack_due is not None:
            ack = wire.encode_ack_frame(self._recvq.ack())
            budget = wire.ENVELOPE_FRAMES_BUDGET_BYTES if message.sealed else FRAMES_BUDGET_BYTES
            if len(ack) + len(frame) <= budget:  # else the ack goes at its own time
                frame = ack + frame
                self._ack_due = None
                self._sealed_unacked = 0
        if message.sealed:
            return self._envelope(keyset, frame, now), not timer_was_running
        return self._seal(keyset, frame, now), not timer_was_running

    def abort(self) -> None:
        """End the session at once after a bug in its handling, telling nobody: its
        state cannot be trusted (the application gets SessionEnded "internal-error")."""
        if not self.ended:
            self._end("internal-error")

    def close(self, now: float) -> None:
        """End the session now, telling the peer (once, best effort)."""
        if self.ended:
            return
        self._close_pending = self.established
        self._end("local-close")

    def flush(self, now: float) -> list[tuple[bytes, events.Address]]:
        """Datagrams to send now, each with its address: handshake messages first,
        then ENVELOPEs (sealed messages, with the ack if one is due), then DATA
        (plain messages, the ack otherwise, close; a ping if nothing else went)."""
        if (
            not self._handshake_out
            and not self._ping_needed
            and not self._close_pending
            and self._response_due is None
            and not self._challenge_due
            and (self._ack_due is None or self._ack_due > now)
            and not self._sendq.has_due(now)
        ):
            # Nothing of what follows would send anything: after most datagrams a
            # client receives (a room line, its ack not due yet) this is the answer.
            return []
        out, self._handshake_out = self._handshake_out, []
        if self._send_epoch is None:
            return out
        handshakes = len(out)  # a ping is owed unless a data datagram goes out
        keyset = self._keys[self._send_epoch]
        ack: bytes | None = None
        if self._ack_due is not None and (
            self._ack_due <= now or self._close_pending or self._sendq.has_due(now)
        ):
            ack = self._ack_frame()
            self._ack_due = None
        plain: list[bytes] = []
        sealed: list[bytes] = []
        if not self.ended:
            for message in self._sendq.due(now):
                frame = wire.encode_message_frame(message.seq, message.payload)
                (sealed if message.sealed else plain).append(frame)
                if message.first_sent is not None:
                    self._stats.retransmissions += 1
                self._sendq.sent(message, now)
        if sealed:
            for body in _pack(sealed, wire.ENVELOPE_FRAMES_BUDGET_BYTES, ack):
                out.append((self._envelope(keyset, body, now), self.addr))
            ack = None
        tail: list[bytes] = []
        if self._close_pending:
            tail.append(wire.CLOSE_FRAME)
            self._close_pending = False
        response, self._response_due = self._response_due, None
        if response is not None:  # in DATA: only the peer that got the challenge sees it
            tail.append(wire.path_response_frame(response))
        if len(out) == handshakes and self._ping_needed and not plain and ack is None:
            if not tail:
                tail.append(wire.PING_FRAME)
        if self.envelope_acks and not plain and not self._closing(tail) and response is None:
            # Negotiated "room-keys": an ack or ping alone costs an HMAC, not Fernet.
            if ack is not None or tail:
                body = b"".join([ack or b"", *tail])
                out.append((self._envelope(keyset, body, now), self.addr))
        elif plain or ack is not None or tail:
            for body in _pack(plain, FRAMES_BUDGET_BYTES, ack, tuple(tail)):
                out.append((self._seal(keyset, body, now), self.addr))
        if len(out) > handshakes:
            self._ping_needed = False
        if self._path_credit is not None and (len(out) > handshakes or self._challenge_due):
            # A due challenge goes even when nothing else does (11.7: at once).
            out[handshakes:] = self._within_credit(keyset, out[handshakes:], now)
        return out

    def _within_credit(
        self, keyset: KeySet, out: list[tuple[bytes, events.Address]], now: float
    ) -> list[tuple[bytes, events.Address]]:
        """What may go to an address not validated yet: a PATH_CHALLENGE first (if
        negotiated and due), then datagrams in order while the credit lasts. Those
        left out are not sent; the messages in them are retransmitted later, when
        the peer has sent more (or proved the address), like any lost datagram."""
        if self._challenge is not None and self._challenge_due:
            self._challenge_due = False
            body = wire.PING_FRAME + wire.path_challenge_frame(self._challenge)
            out.insert(0, (self._seal(keyset, body, now), self.addr))
        sent = []
        credit = self._path_credit or 0
        for datagram, addr in out:
            if len(datagram) <= credit:
                credit -= len(datagram)
                sent.append((datagram, addr))
            else:
                self._stats.drop("unvalidated-path")
        self._path_credit = credit
        return sent

    def _ack_frame(self) -> bytes:
        self._sealed_unacked = 0
        return wire.encode_ack_frame(self._recvq.ack())

    @staticmethod
    def _closing(tail: list[bytes]) -> bool:
        return wire.CLOSE_FRAME in tail

    def _seal(self, keyset: KeySet, frames: bytes, now: float) -> bytes:
        header = wire.DATA_HEADER.pack(wire.DATA, self.session_id, keyset.epoch)
        plaintext = header + wire.PACKET_NUMBER.pack(keyset.next_packet) + frames
        keyset.next_packet += 1
        keyset.datagrams += 1
        self.last_sent = now
        # Data tokens carry timestamp 0: nothing checks it, and a real one would show
        # every observer the sender's clock (Fernet leaves the timestamp in clear).
        return header + wire.seal(keyset.send, plaintext, DATA_TIMESTAMP)

    def _envelope(self, keyset: KeySet, frames: bytes, now: float) -> bytes:
        header = wire.ENVELOPE_HEADER.pack(
            wire.ENVELOPE, self.session_id, keyset.epoch, keyset.next_packet
        )
        keyset.next_packet += 1
        keyset.datagrams += 1
        self.last_sent = now
        data = header + frames
        return data + keyset.mac_send(data)

    # -- receiving ---------------------------------------------------------------

    def receive_data(self, datagram: bytes, addr: events.Address, now: float) -> None:
        """Authenticate, de-duplicate and process one DATA datagram."""
        epoch = datagram[1 + wire.SESSION_ID_BYTES]
        keyset = self._keys.get(epoch)
        if keyset is not None:
            candidates = [keyset]
        elif epoch == self.pending_epoch:
            candidates = self._candidates
        else:
            self._stats.drop("unknown-epoch")
            return
        if keyset is not None and not self._usable(keyset, now):
            return
        opened = _open_with_any(candidates, datagram[wire.DATA_HEADER_BYTES :])
        if opened is None:
            self._stats.drop("bad-token")
            return
        keyset, plaintext = opened
        # Fernet has no associated data: the clear header must be repeated inside.
        if plaintext[: wire.DATA_HEADER_BYTES] != datagram[: wire.DATA_HEADER_BYTES]:
            self._stats.drop("header-mismatch")
            return
        try:
            (packet,) = wire.PACKET_NUMBER.unpack_from(plaintext, wire.DATA_HEADER_BYTES)
            body = plaintext[wire.DATA_HEADER_BYTES + wire.PACKET_NUMBER.size :]
            frames = wire.decode_frames(body, self._config.max_sack_ranges)
        except (Malformed, struct.error):
            self._stats.drop("bad-frame")
            return
        self._accept(keyset, packet, frames, addr, now, sealed=False, size=len(datagram))

    def receive_envelope(self, datagram: bytes, addr: events.Address, now: float) -> None:
        """Authenticate, de-duplicate and process one ENVELOPE datagram. From the
        server its messages are sealed room messages (delivered with sealed=True);
        from a client it may carry only an ACK and a PING."""
        _, _, epoch, packet = _ENVELOPE_HEADER_UNPACK(datagram)
        signed, mac = datagram[:-_ENVELOPE_MAC_BYTES], datagram[-_ENVELOPE_MAC_BYTES:]
        keyset = self._keys.get(epoch)
        if keyset is not None:  # the current keys (or retiring ones): nearly always
            if (
                keyset.retire_at is not None or keyset.created + self._config.reject_after_s <= now
            ) and not self._usable(keyset, now):  # (it counts why not)
                return
            if not hmac.compare_digest(keyset.mac_receive(signed), mac):
                self._stats.drop("bad-mac")
                return
        elif epoch == self.pending_epoch:
            # The first datagram under a rekey's keys: whichever candidate it proves.
            for keyset in self._candidates:
                if hmac.compare_digest(keyset.mac_receive(signed), mac):
                    break
            else:
                self._stats.drop("bad-mac")
                return
        else:
            self._stats.drop("unknown-epoch")
            return
        size = len(signed)
        if size > _LINE_MIN_BYTES and signed[_FRAMES_AT] == _FRAME_MESSAGE and self.initiator:
            # A room line, nearly all a client receives: one MESSAGE frame and
            # nothing else. What decode_frames, _accept and _process do with it,
            # written out: no ack, path frame or close to look at.
            _, seq, length = _MESSAGE_FRAME_UNPACK(signed, _FRAMES_AT)
            if length + _LINE_MIN_BYTES == size and length <= _MAX_SEALED_PAYLOAD_BYTES:
                if not keyset.replay.accept(packet):
                    self._stats.drop("replay")
                    return
                self._fresh(keyset, packet, addr, now, len(datagram))
                self._receive_message(seq, signed[_LINE_MIN_BYTES:], now, True)
                return
        try:
            frames = wire.decode_frames(
                signed[wire.ENVELOPE_HEADER_BYTES :],
                self._config.max_sack_ranges,
                wire.MAX_SEALED_PAYLOAD_BYTES,
            )
            if frames.close or (frames.messages and not self.initiator):
                raise Malformed("an envelope carries no close, and from a client no message")
        except (Malformed, struct.error):
            self._stats.drop("bad-frame")
            return
        self._accept(keyset, packet, frames, addr, now, sealed=True, size=len(datagram))

    def _usable(self, keyset: KeySet, now: float) -> bool:
        """Whether data under `keyset` may still be accepted (counted if not)."""
        if keyset.retire_at is not None and keyset.retire_at <= now:
            self._stats.drop("retired-key")
            return False
        if keyset.created + self._config.reject_after_s <= now:
            self._stats.drop("key-expired")
            return False
        return True

    def _accept(
        self,
        keyset: KeySet,
        packet: int,
        frames: wire.Frames,
        addr: events.Address,
        now: float,
        sealed: bool,
        size: int,
    ) -> None:
        """An authentic datagram: drop it if replayed or breaking a rule of the
        session (checked before anything changes), else let it change state."""
        ack, challenge, response = frames.ack, frames.challenge, frames.response
        if ack is not None and not self._sendq.acks_only_sent(ack):
            self._stats.drop("blind-ack")
            return
        if (challenge is not None or response is not None) and (
            not self.path_checks
            or (challenge is not None and not self.initiator)
            or (response is not None and self.initiator)
        ):
            self._stats.drop("bad-frame")  # path frames only as negotiated, one way each
            return
        if not keyset.replay.accept(packet):
            self._stats.drop("replay")
            return
        self._fresh(keyset, packet, addr, now, size)
        self._process(frames, now, sealed)
        if response is not None and self._challenge is not None:
            if hmac.compare_digest(response, self._challenge):
                self._validate(self.addr)
        if challenge is not None:
            self._response_due = challenge  # answered in the next flush, at once

    def _fresh(
        self, keyset: KeySet, packet: int, addr: events.Address, now: float, size: int
    ) -> None:
        """An authentic datagram passed the replay window and every rule (_accept):
        only now may it change any state. What it says is processed next."""
        self.last_received = now
        keyset.datagrams += 1
        if keyset.epoch == self.pending_epoch:
            self._confirm(keyset, now)
        if packet > keyset.highest_received:  # the newest
            keyset.highest_received = packet
            if keyset.epoch == self._send_epoch and addr != self.addr:
                old, self.addr = self.addr, addr
                if not self.initiator:
                    self._path_changed(fresh=True)
                    if old is not None:
                        self._emit(events.SessionRoamed(self.session_id, old, addr))
        if self._path_credit is not None and addr == self.addr:
            self._path_credit += PATH_CREDIT_FACTOR * size
            self._challenge_due = self._challenge is not None

    def use_lazy_acks(self) -> None:
        """Both peers negotiated "lazy-acks" (PROTOCOL.md 11.8). The initiator (the
        client, which receives sealed messages) acknowledges them later and less
        often; the responder (the server, which sends them) waits that long for it."""
        config = self._config
        if self.initiator:
            self._sealed_ack_delay_s = config.sealed_ack_delay_lazy_s
            self._sealed_ack_every = config.sealed_ack_every_lazy
        else:
            self._sendq.peer_acks_lazily()

    def use_path_checks(self) -> None:
        """The peers negotiated "path-check" (PROTOCOL.md 11.7): the responder may send
        PATH_CHALLENGEs (at once, if its address is not validated), the initiator
        answers them."""
        self.path_checks = True
        if not self.initiator and self._path_credit is not None and self._challenge is None:
            self._challenge = os.urandom(wire.PATH_DATA_BYTES)
            self._challenge_due = True

    def _validate(self, addr: events.Address) -> None:
        """Responder: `addr` is proven to reach the peer."""
        self._validated = addr
        self._path_changed(fresh=False)

    def _path_changed(self, fresh: bool) -> None:
        """Responder: the session's address or the validated one changed. Sending to
        a validated address is unlimited; to another it starts from no credit, with
        a new challenge if the peer can answer one (`fresh`: the address is new)."""
        if self.addr == self._validated:
            self._path_credit = None
            self._challenge = None
            self._challenge_due = False
        elif fresh or self._path_credit is None:
            self._path_credit = 0
            if self.path_checks:
                self._challenge = os.urandom(wire.PATH_DATA_BYTES)
                self._challenge_due = True

    def _process(self, frames: wire.Frames, now: float, sealed: bool) -> None:
        if frames.ack is not None:
            acked = self._sendq.on_ack(frames.ack, now)
            if self.report_delivered:
                for message in acked:
                    self._emit(events.MessageDelivered(self.session_id, message.message_id))
        for seq, payload in frames.messages:
            self._receive_message(seq, payload, now, sealed)
        if frames.close and not self.ended:
            self._end("closed")

    def _receive_message(self, seq: int, payload: bytes, now: float, sealed: bool) -> None:
        """One MESSAGE frame of an authentic, fresh datagram: deliver it (and those
        it completes) in order, or drop it unacknowledged; schedule the ack."""
        recvq = self._recvq
        if seq == recvq.next_expected and not self.receive_paused:
            # The next in order, nearly every message: new, in any window of one or
            # more, and there is always room for it; only its rate is left to check.
            in_order = True
        elif recvq.is_new(seq):
            if self.receive_paused:
                self._stats.drop("receive-paused")  # not acknowledged: it comes again
                return
            if not recvq.has_room(seq, payload):
                # Like beyond-window: not stored, not acknowledged; the sender
                # retransmits it once the stream has moved on (PROTOCOL.md 5.4).
                self._stats.drop("receive-buffer-full")
                return
            in_order = seq == recvq.next_expected
        elif recvq.is_duplicate(seq):
            # Our ack was probably lost: repeat it at once.
            if self._ack_due is None or now < self._ack_due:
                self._ack_due = now
            return
        else:
            self._stats.drop("beyond-window")
            return
        if not self._message_bucket.allow(now):
            # Not acknowledged: the sender retransmits later (backpressure).
            self._stats.drop("message-rate")
            return
        for ready, was_sealed in recvq.add(seq, payload, sealed):
            self._emit(events.MessageReceived(self.session_id, ready, was_sealed))
        if not in_order:
            due = now
        elif sealed:
            self._sealed_unacked += 1
            if self._sealed_unacked >= self._sealed_ack_every:
                due = now
            else:
                due = now + self._sealed_ack_delay_s
        else:
            due = now + self._config.ack_delay_s
        ack_due = self._ack_due
        if ack_due is None or due < ack_due:
            self._ack_due = due

    # -- timers ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        # Called after every flush of every session: written as plain comparisons,
        # without building a list (it showed in the profiles of a busy room).
        # A client asks after every datagram it receives, too.
        if self.ended:
            return None
        config = self._config
        send_epoch = self._send_epoch
        if send_epoch is not None:  # established: _expiry_s(), written out
            deadline = self.last_received + config.session_expiry_s
        else:
            deadline = self.last_received + self._expiry_s()
        ack_due = self._ack_due
        if ack_due is not None and ack_due < deadline:
            deadline = ack_due
        retry = self._handshake_retry_at
        if retry is not None and retry < deadline:
            deadline = retry
        if send_epoch is not None:  # established
            keepalive = self.last_sent + config.keepalive_s
            if keepalive < deadline:
                deadline = keepalive
            retransmit = self._sendq.next_deadline()
            if retransmit is not None and retransmit < deadline:
                deadline = retransmit
            if self.initiator and self._initiator is None:
                current = self._keys[send_epoch]
                if current.datagrams >= config.rekey_after_datagrams:
                    rekey = current.created  # due now
                else:
                    rekey = current.created + config.rekey_after_s
                if rekey < deadline:
                    deadline = rekey
        for keyset in self._keys.values():
            retire = keyset.retire_at
            if retire is not None and retire < deadline:
                deadline = retire
        return deadline

    def handle_timer(self, now: float) -> None:
        if self.ended:
            return
        config = self._config
        if self.last_received + self._expiry_s() <= now:
            self._end("timeout")
            return
        for keyset in [k for k in self._keys.values() if k.retire_at is not None]:
            if keyset.retire_at is not None and keyset.retire_at <= now:
                del self._keys[keyset.epoch]
        self._sendq.on_timer(now)
        if self._sendq.given_up(now):
            self._close_pending = True
            self._end("stalled", undelivered_reason="give-up")
            return
        if self.initiator:
            if self._handshake_retry_at is not None and self._handshake_retry_at <= now:
                self.start_handshake(now)
            elif self._initiator is None and self.established and self._rekey_due(now):
                self.start_handshake(now)
        if self.established and self.last_sent + config.keepalive_s <= now:
            self._ping_needed = True

    def _expiry_s(self) -> float:
        if self.initiator or self.established:
            return self._config.session_expiry_s
        return self._config.pending_session_s  # half-open: answered, never confirmed

    def _rekey_due(self, now: float) -> bool:
        assert self._send_epoch is not None
        current = self._keys[self._send_epoch]
        return (
            current.created + self._config.rekey_after_s <= now
            or current.datagrams >= self._config.rekey_after_datagrams
        )

    def _end(
        self,
        reason: events.EndReason,
        undelivered_reason: events.UndeliveredReason = "session-ended",
    ) -> None:
        self.ended = True
        self._initiator = None
        self._handshake_retry_at = None
        for message in self._sendq.drain():
            self._emit(
                events.MessageNotDelivered(
                    self.session_id, message.message_id, message.payload, undelivered_reason
                )
            )
        # A responder session nobody ever confirmed was never announced either.
        if self.initiator or self.established:
            self._emit(events.SessionEnded(self.session_id, reason))
