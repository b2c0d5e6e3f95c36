"""An independent udpchat version-1 client, written only from docs/PROTOCOL.md.

It deliberately imports nothing from the `udpchat` package: it builds every datagram
from the specification's byte layouts with the `cryptography` primitives (X25519,
HKDF, AES-CBC) and the standard library (HMAC-SHA256, SHA-256). It is the initiator
side only, blocking, single-threaded and small: enough to check that the document
is sufficient to interoperate with the real daemon.

Section numbers in comments refer to docs/PROTOCOL.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Section 3.1 / 8.
MAX_DATAGRAM = 1200
MAX_PAYLOAD = 1000
FRAMES_BUDGET = 1101
MSG1_BYTES = 170
MSG2_BYTES = 146
MIN_DATA_BYTES = 83
T_INIT, T_RESPONSE, T_DATA = 0x01, 0x02, 0x03
F_MESSAGE, F_ACK, F_PING, F_CLOSE = 0x01, 0x02, 0x03, 0x04
VERSION = 0x01
ZERO_TAG = bytes(16)
# Section 8.
HANDSHAKE_TTL = 30
FUTURE_SKEW = 60
RETRY_FIRST, RETRY_MAX = 1.0, 8.0
KEY_GRACE = 10.0
REJECT_AFTER = 300.0
KEEPALIVE = 10.0
EXPIRY = 30.0
ACK_DELAY = 0.025
SEND_WINDOW = 64
RECEIVE_WINDOW = 256
MAX_SACK_RANGES = 4
REPLAY_USABLE = 1984
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
RTO = 0.5  # local policy: a fixed first timeout, doubled per retransmission, max 8 s


def hkdf(salt: bytes | None, ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256; salt None means 32 zero bytes (section 1.3, 2.4)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def psk_from_text(text: bytes | str) -> bytes:
    """Section 2.1: 44 characters of URL-safe base64 with padding -> 32 raw bytes."""
    if isinstance(text, str):
        text = text.encode()
    raw = base64.urlsafe_b64decode(text.strip())
    assert len(raw) == 32
    return raw


# -- Fernet tokens in binary form (section 2.3) ---------------------------------------


def seal(key: bytes, plaintext: bytes, timestamp: int) -> bytes:
    signing, encryption = key[:16], key[16:]
    iv = os.urandom(16)
    pad = 16 - len(plaintext) % 16
    padded = plaintext + bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(encryption), modes.CBC(iv)).encryptor()
    body = (
        b"\x80"
        + struct.pack(">Q", timestamp)
        + iv
        + encryptor.update(padded)
        + encryptor.finalize()
    )
    return body + hmac.new(signing, body, hashlib.sha256).digest()


def open_token(key: bytes, token: bytes) -> tuple[int, bytes] | None:
    """(timestamp, plaintext), or None if the token is invalid."""
    if len(token) < 73 or (len(token) - 57) % 16 or token[0] != 0x80:
        return None
    body, mac = token[:-32], token[-32:]
    if not hmac.compare_digest(hmac.new(key[:16], body, hashlib.sha256).digest(), mac):
        return None
    decryptor = Cipher(algorithms.AES(key[16:]), modes.CBC(token[9:25])).decryptor()
    padded = decryptor.update(token[25:-32]) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= 16 or padded[-pad:] != bytes([pad]) * pad:
        return None
    return struct.unpack(">Q", token[1:9])[0], padded[:-pad]


# -- JSON (section 7.1) ---------------------------------------------------------------


def encode_message(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(data) <= MAX_PAYLOAD
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate member {name!r}")
        result[name] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode_message(payload: bytes) -> dict[str, Any]:
    """Strict decoding (section 7.1, the structural part)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("too long")
    value = json.loads(
        payload.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants
    )
    if not isinstance(value, dict) or not isinstance(value.get("t"), str):
        raise ValueError("not a typed object")
    return value


def new_line_id() -> str:
    """Section 7.6: 64 random bits as 16 lowercase hex digits."""
    return os.urandom(8).hex()


# -- client state -----------------------------------------------------------------------


@dataclass
class KeySet:
    """Section 1.2 "key set": keys of one epoch, its packet counter and replay window."""

    epoch: int
    send_key: bytes  # K_i2r
    recv_key: bytes  # K_r2i
    resume_key: bytes
    installed: float
    next_pn: int = 0
    max_pn: int = -1
    seen: set[int] = field(default_factory=set)
    replaced_at: float | None = None

    def replay_ok(self, pn: int) -> bool:
        """Section 5.2."""
        if not 0 <= pn < REJECT_AFTER_MESSAGES:
            return False
        if self.max_pn >= 0 and pn < self.max_pn - REPLAY_USABLE:
            return False
        return pn not in self.seen

    def mark(self, pn: int) -> None:
        self.seen.add(pn)
        if pn > self.max_pn:
            self.max_pn = pn
            self.seen = {n for n in self.seen if n >= pn - 2048}


@dataclass
class Attempt:
    """Section 4.1: the one handshake attempt the initiator keeps."""

    epoch: int
    private: X25519PrivateKey
    msg1: bytes
    next_retry: float
    interval: float


@dataclass
class InFlight:
    seq: int
    payload: bytes
    first_sent: float
    last_sent: float
    count: int = 1


@dataclass
class Parsed:
    pn: int
    ack: tuple[int, list[tuple[int, int]]] | None
    messages: list[tuple[int, bytes]]
    close: bool


class SpecClient:
    """A blocking initiator over a real UDP socket, driven by poll()."""

    def __init__(self, server: tuple[str, int], psk_text: bytes | str) -> None:
        self.server = server
        self.psk = psk_from_text(psk_text)
        self.k_hs = hkdf(None, self.psk, b"udpchat v1 handshake key", 32)
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.client_id = os.urandom(8).hex()
        self.session_id: bytes | None = None
        self.current: KeySet | None = None
        self.old: list[KeySet] = []
        self.attempt: Attempt | None = None
        self.last_rx = 0.0
        self.last_tx = 0.0
        self.ended: str | None = None
        self.confirm_needed = False
        # Sending half of the reliable stream (section 5.4).
        self.next_seq = 0
        self.queue: list[tuple[int, bytes]] = []
        self.inflight: dict[int, InFlight] = {}
        # Receiving half.
        self.next_expected = 0
        self.buffer: dict[int, bytes] = {}
        self.ack_due: float | None = None
        # Observations for tests.
        self.messages: list[dict[str, Any]] = []
        self.received_seqs: dict[int, dict[str, Any]] = {}
        self.duplicates = 0
        self.acks_sent: list[int] = []
        self.rx_epochs: dict[int, int] = {}
        self.drops: dict[str, int] = {}
        self.peer_closed = False

    # -- public API ----------------------------------------------------------------------

    def connect(self) -> None:
        """Section 4.1: a new session id and the first message 1."""
        self.session_id = os.urandom(8)
        now = time.time()
        self.last_rx = now
        self._start_attempt(0, now, RETRY_FIRST)

    def rekey(self) -> None:
        """Section 4.8: message 1 for the next epoch with a resume tag (section 2.6)."""
        assert self.current is not None and self.attempt is None
        self._start_attempt((self.current.epoch + 1) % 256, time.time(), RETRY_FIRST)

    def send(self, message: dict[str, Any]) -> int:
        """Queue one JSON message; returns its seq."""
        seq = self.next_seq
        self.next_seq += 1
        self.queue.append((seq, encode_message(message)))
        self._flush(time.time())
        return seq

    def say(self, text: str) -> str:
        line_id = new_line_id()
        self.send({"t": "say", "text": text, "id": line_id})
        return line_id

    def close(self) -> None:
        """Section 5.9: one DATA datagram with CLOSE and any pending ACK, no MESSAGE."""
        if self.current is not None and self.ended is None:
            frames = [self._ack_frame()] if self.ack_due is not None else []
            frames.append(bytes([F_CLOSE, 0]))
            self._send_data(b"".join(frames), time.time())
        self.ended = "local-close"

    @property
    def epoch(self) -> int | None:
        return None if self.current is None else self.current.epoch

    def poll(self, seconds: float) -> None:
        """Handle datagrams and timers for `seconds` of real time (0: what is ready)."""
        end = time.monotonic() + seconds
        while True:
            self._timers(time.time())
            timeout = max(0.0, min(end - time.monotonic(), 0.005))
            readable, _, _ = select.select([self.sock], [], [], timeout)
            while readable:
                try:
                    data, addr = self.sock.recvfrom(2048)
                except BlockingIOError:
                    break
                if addr[:2] == self.server:  # section 5.3: ignore other sources
                    self.receive(data, time.time())
            if time.monotonic() >= end:
                self._timers(time.time())
                return

    def wait_for(
        self, predicate: Any, timeout: float = 10.0, also: tuple[Any, ...] = ()
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            self.poll(0.02)
            for other in also:
                other.poll(0.0)
        raise AssertionError(
            f"not received in {timeout} s; got {self.messages}, drops {self.drops}"
        )

    def pump(self, seconds: float, also: tuple[Any, ...] = ()) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll(0.02)
            for other in also:
                other.poll(0.0)

    def shutdown(self) -> None:
        self.sock.close()

    # -- handshake (section 4) -------------------------------------------------------------

    def _start_attempt(self, epoch: int, now: float, interval: float) -> None:
        assert self.session_id is not None
        private = X25519PrivateKey.generate()
        e_i = private.public_key().public_bytes_raw()
        if epoch == 0 and self.current is None:
            tag = ZERO_TAG
        else:
            assert self.current is not None
            label = b"udpchat v1 resume" + self.session_id + bytes([epoch]) + e_i
            tag = hmac.new(self.current.resume_key, label, hashlib.sha256).digest()[:16]
        plaintext = (
            bytes([T_INIT, VERSION]) + self.session_id + bytes([epoch]) + e_i + tag + bytes(37)
        )
        assert len(plaintext) == 96
        msg1 = bytes([T_INIT]) + seal(self.k_hs, plaintext, math.floor(now))
        assert len(msg1) == MSG1_BYTES
        self.attempt = Attempt(epoch, private, msg1, now + interval, interval)
        self.sock.sendto(msg1, self.server)

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def receive(self, data: bytes, now: float) -> None:
        """Section 3.1, then 4.3 or 5.1."""
        if self.ended is not None:
            return
        if len(data) > MAX_DATAGRAM:
            return self._drop("too-large")
        if not data:
            return self._drop("short")
        if len(data) < 9 or data[1:9] != self.session_id:
            return self._drop("unknown-session")
        if data[0] == T_RESPONSE:
            return self._receive_response(data, now)
        if data[0] == T_DATA:
            return self._receive_data(data, now)
        return self._drop("unknown-type")

    def _receive_response(self, data: bytes, now: float) -> None:
        attempt = self.attempt
        if attempt is None:
            return self._drop("unexpected-response")
        opened = open_token(self.k_hs, data[9:])
        if opened is None:
            return self._drop("bad-token")
        timestamp, plaintext = opened
        if not now < timestamp + HANDSHAKE_TTL:
            return self._drop("stale-handshake")
        if timestamp > now + FUTURE_SKEW:
            return self._drop("future-handshake")
        if len(plaintext) != 75 or plaintext[0] != T_RESPONSE or plaintext[1] != VERSION:
            return self._drop("bad-handshake")
        if (
            plaintext[2:10] != self.session_id
            or plaintext[10] != attempt.epoch
            or plaintext[43:75] != hashlib.sha256(attempt.msg1).digest()
        ):
            return self._drop("unbound-response")
        try:
            dh = attempt.private.exchange(X25519PublicKey.from_public_bytes(plaintext[11:43]))
        except ValueError:
            return self._drop("bad-point")
        if dh == bytes(32):
            return self._drop("bad-point")
        th = hashlib.sha256(attempt.msg1 + data).digest()
        okm = hkdf(self.psk, dh, b"udpchat v1 session keys" + th, 96)
        keys = KeySet(attempt.epoch, okm[0:32], okm[32:64], okm[64:96], installed=now)
        if self.current is not None:
            self.current.replaced_at = now
            self.old.append(self.current)
        self.current = keys
        self.attempt = None
        self.last_rx = now
        self.confirm_needed = True  # section 4.3 step 5
        self._flush(now)

    # -- DATA (section 5.1) -----------------------------------------------------------------

    def _receive_data(self, data: bytes, now: float) -> None:
        if len(data) < MIN_DATA_BYTES:
            return self._drop("short")
        epoch = data[9]
        keys = next(
            (k for k in [self.current, *self.old] if k is not None and k.epoch == epoch), None
        )
        if keys is None:
            return self._drop("unknown-epoch")
        if keys.replaced_at is not None and now >= keys.replaced_at + KEY_GRACE:
            return self._drop("retired-key")
        if now >= keys.installed + REJECT_AFTER:
            return self._drop("key-expired")
        opened = open_token(keys.recv_key, data[10:])
        if opened is None:
            return self._drop("bad-token")
        plaintext = opened[1]  # the timestamp is ignored (section 2.3)
        if plaintext[:10] != data[:10]:
            return self._drop("header-mismatch")
        parsed = self._parse(plaintext)
        if parsed is None:
            return self._drop("bad-frame")
        if not keys.replay_ok(parsed.pn):
            return self._drop("replay")
        keys.mark(parsed.pn)
        self.last_rx = now
        self.rx_epochs[epoch] = self.rx_epochs.get(epoch, 0) + 1
        if parsed.ack is not None:
            self._on_ack(*parsed.ack)
        for seq, payload in parsed.messages:
            self._on_message(seq, payload, now)
        if parsed.close:
            self.peer_closed = True
            self.ended = "closed"
            return
        self._flush(now)

    @staticmethod
    def _parse(plaintext: bytes) -> Parsed | None:
        """Section 3.6; None means bad-frame."""
        if len(plaintext) < 18:
            return None
        pn = struct.unpack(">Q", plaintext[10:18])[0]
        ack = None
        messages: list[tuple[int, bytes]] = []
        close = False
        frames = 0
        i, n = 18, len(plaintext)
        while i < n:
            kind = plaintext[i]
            if kind == F_MESSAGE:
                if n - i < 11:
                    return None
                seq, length = struct.unpack(">QH", plaintext[i + 1 : i + 11])
                if length > MAX_PAYLOAD or i + 11 + length > n:
                    return None
                messages.append((seq, plaintext[i + 11 : i + 11 + length]))
                i += 11 + length
            elif kind == F_ACK:
                if n - i < 10 or ack is not None:
                    return None
                cumulative, count = struct.unpack(">QB", plaintext[i + 1 : i + 10])
                if count > MAX_SACK_RANGES or i + 10 + 16 * count > n:
                    return None
                ranges = [
                    struct.unpack(">QQ", plaintext[i + 10 + 16 * k : i + 26 + 16 * k])
                    for k in range(count)
                ]
                bound = cumulative
                for start, end in ranges:
                    if not bound < start < end:
                        return None
                    bound = end
                ack = (cumulative, ranges)
                i += 10 + 16 * count
            elif kind == F_PING:
                i += 1
            elif kind == F_CLOSE:
                if n - i < 2:
                    return None
                close = True
                i += 2
            else:
                return None
            frames += 1
        if frames == 0:
            return None
        return Parsed(pn, ack, messages, close)

    # -- the reliable stream (section 5.4, 5.5) -----------------------------------------

    def _on_ack(self, cumulative: int, ranges: list[tuple[int, int]]) -> None:
        for seq in list(self.inflight):
            if seq < cumulative or any(start <= seq < end for start, end in ranges):
                del self.inflight[seq]

    def _on_message(self, seq: int, payload: bytes, now: float) -> None:
        if seq < self.next_expected or seq in self.buffer:
            self.duplicates += 1
            self.ack_due = now
            return
        if seq >= self.next_expected + RECEIVE_WINDOW:
            self._drop("beyond-window")
            return
        self.buffer[seq] = payload
        due = now + ACK_DELAY if seq == self.next_expected else now
        self.ack_due = due if self.ack_due is None else min(self.ack_due, due)
        while self.next_expected in self.buffer:
            data = self.buffer.pop(self.next_expected)
            try:
                message = decode_message(data)
            except ValueError:
                message = {"t": "<invalid>", "raw": data.decode("utf-8", "replace")}
            self.messages.append(message)
            self.received_seqs[self.next_expected] = message
            self.next_expected += 1

    def _ack_frame(self) -> bytes:
        runs: list[list[int]] = []
        for seq in sorted(self.buffer):
            if runs and runs[-1][1] == seq:
                runs[-1][1] = seq + 1
            else:
                runs.append([seq, seq + 1])
        runs = runs[:MAX_SACK_RANGES]
        frame = struct.pack(">BQB", F_ACK, self.next_expected, len(runs))
        frame += b"".join(struct.pack(">QQ", start, end) for start, end in runs)
        self.acks_sent.append(self.next_expected)
        self.ack_due = None
        return frame

    def _send_data(self, frames: bytes, now: float) -> None:
        """Section 3.4: header, then a token of header copy + packet number + frames."""
        keys = self.current
        assert keys is not None and self.session_id is not None
        assert 0 < len(frames) <= FRAMES_BUDGET
        header = bytes([T_DATA]) + self.session_id + bytes([keys.epoch])
        plaintext = header + struct.pack(">Q", keys.next_pn) + frames
        keys.next_pn += 1
        datagram = header + seal(keys.send_key, plaintext, 0)
        assert len(datagram) <= MAX_DATAGRAM
        self.sock.sendto(datagram, self.server)
        self.last_tx = now
        self.confirm_needed = False

    def _flush(self, now: float) -> None:
        """Section 3.8: ACK, retransmissions, new messages; PING if needed."""
        if self.current is None or self.ended is not None:
            return
        while True:
            due = [
                f
                for f in self.inflight.values()
                if now >= f.last_sent + min(RTO * 2 ** (f.count - 1), 8.0)
            ]
            oldest = min([*self.inflight, *(seq for seq, _ in self.queue)], default=self.next_seq)
            fresh = [(s, p) for s, p in self.queue if s < oldest + SEND_WINDOW]
            if not due and not fresh and not (self.ack_due is not None and now >= self.ack_due):
                if self.confirm_needed:
                    self._send_data(bytes([F_PING]), now)
                return
            frames = b""
            if self.ack_due is not None:
                frames += self._ack_frame()
            for f in sorted(due, key=lambda f: f.seq):
                frame = struct.pack(">BQH", F_MESSAGE, f.seq, len(f.payload)) + f.payload
                if len(frames) + len(frame) > FRAMES_BUDGET:
                    break
                frames += frame
                f.last_sent, f.count = now, f.count + 1
            for seq, payload in fresh:
                frame = struct.pack(">BQH", F_MESSAGE, seq, len(payload)) + payload
                if len(frames) + len(frame) > FRAMES_BUDGET:
                    break
                frames += frame
                self.queue.remove((seq, payload))
                self.inflight[seq] = InFlight(seq, payload, now, now)
            self._send_data(frames, now)

    def _timers(self, now: float) -> None:
        if self.ended is not None:
            return
        if now >= self.last_rx + EXPIRY:  # section 5.8
            self.ended = "timeout"
            return
        self.old = [k for k in self.old if now < (k.replaced_at or now) + KEY_GRACE]
        attempt = self.attempt
        if attempt is not None and now >= attempt.next_retry:  # section 4.6
            self._start_attempt(attempt.epoch, now, min(attempt.interval * 2, RETRY_MAX))
        if self.current is None:
            return
        self._flush(now)
        if now >= self.last_tx + KEEPALIVE:
            self._send_data(bytes([F_PING]), now)
