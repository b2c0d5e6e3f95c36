"""Byte layouts of udpchat datagrams and frames, and the key derivations.

Everything here is a pure function of its arguments; docs/PROTOCOL.md is the
normative description of the same layouts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from udpchat.core.fernet import BinaryFernet
from udpchat.core.limits import MAX_DATAGRAM_BYTES, MAX_PAYLOAD_BYTES

PROTOCOL_VERSION = 1

# Datagram types: the first byte of every datagram, in the clear.
HANDSHAKE_INIT = 0x01
HANDSHAKE_RESPONSE = 0x02
DATA = 0x03
#: Extension "room-keys" (PROTOCOL.md section 11), server to client only: frames in
#: the clear under an HMAC of the session, carrying messages sealed with a room key.
ENVELOPE = 0x04
#: Server to client, under handshake load (PROTOCOL.md 3.10, 4.7): a cookie for the
#: source address of a message 1, to be returned in the next one. Bound to that
#: message 1, so nobody without the key can make one a client takes.
COOKIE_REPLY = 0x05

# Frame types inside a DATA datagram's plaintext.
FRAME_MESSAGE = 0x01
FRAME_ACK = 0x02
FRAME_PING = 0x03
FRAME_CLOSE = 0x04
# Extension "path-check" (PROTOCOL.md 11.7): only between peers that negotiated it.
FRAME_PATH_CHALLENGE = 0x05
FRAME_PATH_RESPONSE = 0x06
PATH_DATA_BYTES = 8

#: A pre-shared key is 32 random bytes, written as a Fernet key: 44 characters of
#: URL-safe base64 (what Fernet.generate_key() returns).
PSK_RAW_BYTES = 32
PSK_B64_CHARS = 44
SESSION_ID_BYTES = 8
PUBLIC_KEY_BYTES = 32
RESUME_TAG_BYTES = 16
#: Message 1 plaintext is zero-padded to this size so that message 1 on the wire is
#: never shorter than message 2 (anti-amplification).
INIT_PLAINTEXT_BYTES = 96
#: version(1) + timestamp(8) + IV(16) + HMAC(32); the ciphertext adds 1..16 bytes.
FERNET_OVERHEAD_BYTES = 57
FERNET_VERSION = 0x80
MIN_FERNET_BYTES = FERNET_OVERHEAD_BYTES + 16
#: Message 1 on the wire (170 bytes); with a cookie returned, the cookie follows it.
INIT_BYTES = 1 + FERNET_OVERHEAD_BYTES + (INIT_PLAINTEXT_BYTES // 16 + 1) * 16
COOKIE_BYTES = 16
INIT_WITH_COOKIE_BYTES = INIT_BYTES + COOKIE_BYTES  # 186
COOKIE_TAG_BYTES = 16
#: type(1) + cookie(16) + tag(16): far smaller than the message 1 it answers, so a
#: forged source gets no amplification out of it.
COOKIE_REPLY_BYTES = 1 + COOKIE_BYTES + COOKIE_TAG_BYTES  # 33

DATA_HEADER = struct.Struct("!B8sB")  # type, session id, key epoch
DATA_HEADER_BYTES = DATA_HEADER.size  # 10
PACKET_NUMBER = struct.Struct("!Q")
MESSAGE_FRAME = struct.Struct("!BQH")  # type, sequence, payload length
MESSAGE_FRAME_BYTES = MESSAGE_FRAME.size  # 11
_MESSAGE_FRAME_UNPACK = MESSAGE_FRAME.unpack_from
ACK_FRAME = struct.Struct("!BQB")  # type, cumulative (next expected), range count
ACK_RANGE = struct.Struct("!QQ")  # [start, end)
INIT_BODY = struct.Struct("!BB8sB32s16s")  # type, version, sid, epoch, e_i, resume tag
RESPONSE_BODY = struct.Struct("!BB8sB32s32s")  # type, version, sid, epoch, e_r, H(msg1)
ENVELOPE_HEADER = struct.Struct("!B8sBQ")  # type, session id, key epoch, packet number
ENVELOPE_HEADER_BYTES = ENVELOPE_HEADER.size  # 18
ENVELOPE_MAC_BYTES = 32  # HMAC-SHA256 over everything before it
#: Frames of one ENVELOPE, and the largest sealed message one MESSAGE frame can carry
#: there (a sealed message is bigger than its JSON: 4-byte key id + Fernet token).
ENVELOPE_FRAMES_BUDGET_BYTES = MAX_DATAGRAM_BYTES - ENVELOPE_HEADER_BYTES - ENVELOPE_MAC_BYTES
MAX_SEALED_PAYLOAD_BYTES = ENVELOPE_FRAMES_BUDGET_BYTES - MESSAGE_FRAME.size

LABEL_HANDSHAKE = b"udpchat v1 handshake key"
LABEL_SESSION = b"udpchat v1 session keys"
LABEL_RESUME = b"udpchat v1 resume"
LABEL_ENVELOPE = b"udpchat v1 envelope"
LABEL_COOKIE_REPLY = b"udpchat v1 cookie reply"
#: Daemons of a cluster (docs/CLUSTER.md): what they put into the message engine.
LABEL_CLUSTER = b"udpchat v1 cluster"


class Malformed(Exception):
    """A datagram or frame does not parse; the caller drops it (never escapes the core)."""


def fernet_key(raw32: bytes) -> Fernet:
    """cryptography's Fernet from 32 raw key bytes (16 signing || 16 encryption), for
    what is kept in text form (the history file, the cluster's engine)."""
    return Fernet(base64.urlsafe_b64encode(raw32))


def binary_fernet(raw32: bytes) -> BinaryFernet:
    """The same key for binary tokens on the wire (udpchat.core.fernet: faster)."""
    return BinaryFernet(raw32)


def psk_raw(psk: bytes) -> bytes:
    """The 32 raw bytes of a pre-shared key given as a Fernet key (URL-safe base64, 44
    characters); raise ValueError if it is not one.

    Only the canonical encoding is accepted, so one key has exactly one spelling and a
    mangled copy on a client fails loudly instead of silently differing. udpchat.keys
    uses this to check key files: the file and the core agree on what a key is.
    """
    if len(psk) != PSK_B64_CHARS:
        raise ValueError(f"expected {PSK_B64_CHARS} characters, got {len(psk)}")
    try:
        raw = base64.b64decode(psk, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not URL-safe base64") from exc
    if len(raw) != PSK_RAW_BYTES or base64.urlsafe_b64encode(raw) != psk:
        raise ValueError(f"does not encode exactly {PSK_RAW_BYTES} bytes")
    return raw


def handshake_key(psk32: bytes) -> bytes:
    """K_hs = HKDF-SHA256(ikm=PSK, salt=none, info=LABEL_HANDSHAKE), 32 bytes."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=LABEL_HANDSHAKE).derive(psk32)


def cluster_keys(psk32: bytes) -> tuple[bytes, bytes]:
    """HKDF-SHA256(ikm=PSK, salt=none, info=LABEL_CLUSTER), 64 bytes: the Fernet key
    that seals what the daemons of a cluster put into the engine (32), and the HMAC
    key of the names they file it under (32). Never on the wire."""
    okm = HKDF(hashes.SHA256(), 64, salt=None, info=LABEL_CLUSTER).derive(psk32)
    return okm[:32], okm[32:]


def fernet_signing_key(raw32: bytes) -> bytes:
    """The HMAC key of a Fernet key given as 32 raw bytes: its first half."""
    return raw32[:16]


def cookie_reply_key(psk32: bytes) -> bytes:
    """K_cookie = HKDF-SHA256(ikm=PSK, salt=none, info=LABEL_COOKIE_REPLY), 32 bytes:
    the MAC key of COOKIE_REPLY datagrams."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=LABEL_COOKIE_REPLY).derive(psk32)


@dataclass(frozen=True)
class SessionKeys:
    """Output of one handshake: a Fernet key per direction and the resume key."""

    initiator_to_responder: bytes
    responder_to_initiator: bytes
    resume: bytes


def session_keys(psk32: bytes, shared_secret: bytes, msg1: bytes, msg2: bytes) -> SessionKeys:
    """HKDF-SHA256(ikm=DH, salt=PSK, info=LABEL_SESSION || SHA256(msg1 || msg2)), 96 bytes."""
    transcript = hashlib.sha256(msg1 + msg2).digest()
    okm = HKDF(hashes.SHA256(), 96, salt=psk32, info=LABEL_SESSION + transcript).derive(
        shared_secret
    )
    return SessionKeys(okm[:32], okm[32:64], okm[64:])


def resume_tag(resume_key: bytes, session_id: bytes, epoch: int, ephemeral: bytes) -> bytes:
    """Proof, in a rekey message 1, that the initiator holds the session's keys."""
    mac = hmac.new(resume_key, LABEL_RESUME + session_id + bytes([epoch]) + ephemeral, "sha256")
    return mac.digest()[:RESUME_TAG_BYTES]


def envelope_key(direction_key: bytes) -> bytes:
    """The MAC key of ENVELOPE datagrams in one direction: HMAC-SHA256(key = that
    direction's 32-byte session key, message = LABEL_ENVELOPE)."""
    return hmac.digest(direction_key, LABEL_ENVELOPE, "sha256")


def envelope_mac(mac_key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of an ENVELOPE's header and frames (PROTOCOL.md 11.4)."""
    return hmac.digest(mac_key, data, "sha256")


_SHA256_BLOCK = 64
_IPAD_TABLE = bytes(b ^ 0x36 for b in range(256))
_OPAD_TABLE = bytes(b ^ 0x5C for b in range(256))


class HmacSha256:
    """HMAC-SHA256 under one key (of at most 64 bytes), with the key's two padded
    SHA-256 blocks hashed once (RFC 2104's precomputation) instead of on every call.

    Same output as hmac.digest(key, data, "sha256"). The server computes one per
    member per room line, and `hmac.digest` also looks the digest up by name each
    time: in a profile of a busy room the MAC was a quarter of the daemon's CPU, this
    makes it a third of that. The hash states (about 500 bytes) are made on first use only, so idle
    sessions do not pay for them."""

    __slots__ = ("key", "_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._inner: hashlib._Hash | None = None
        self._outer: hashlib._Hash | None = None

    def __call__(self, data: bytes) -> bytes:
        inner, outer = self._inner, self._outer
        if inner is None or outer is None:
            block = self.key.ljust(_SHA256_BLOCK, b"\0")  # keys are 32 bytes: no hashing
            inner = self._inner = hashlib.sha256(block.translate(_IPAD_TABLE))
            outer = self._outer = hashlib.sha256(block.translate(_OPAD_TABLE))
        h = inner.copy()
        h.update(data)
        o = outer.copy()
        o.update(h.digest())
        return o.digest()


#: The MAC of ENVELOPE datagrams (envelope_mac, precomputed).
EnvelopeMac = HmacSha256


def seal(f: BinaryFernet, plaintext: bytes, now: float) -> bytes:
    """A Fernet token in its binary form (urlsafe base64 decoded)."""
    return f.seal(plaintext, int(now))


def open_token(f: BinaryFernet, token: bytes) -> tuple[bytes, int]:
    """Verify and decrypt a binary Fernet token; return (plaintext, timestamp).

    Raises InvalidToken for anything that does not authenticate.
    """
    return f.open(token)


# -- handshake messages -------------------------------------------------------


@dataclass(frozen=True)
class Init:
    session_id: bytes
    epoch: int
    ephemeral: bytes
    resume_tag: bytes


def build_init(f_hs: BinaryFernet, init: Init, now: float) -> bytes:
    body = INIT_BODY.pack(
        HANDSHAKE_INIT,
        PROTOCOL_VERSION,
        init.session_id,
        init.epoch,
        init.ephemeral,
        init.resume_tag,
    )
    body += bytes(INIT_PLAINTEXT_BYTES - len(body))
    return bytes([HANDSHAKE_INIT]) + seal(f_hs, body, now)


def parse_init(plaintext: bytes) -> Init:
    if len(plaintext) != INIT_PLAINTEXT_BYTES:
        raise Malformed("init size")
    kind, version, sid, epoch, eph, tag = INIT_BODY.unpack_from(plaintext)
    if kind != HANDSHAKE_INIT or version != PROTOCOL_VERSION:
        raise Malformed("init type/version")
    if any(plaintext[INIT_BODY.size :]):
        raise Malformed("init padding")
    return Init(sid, epoch, eph, tag)


@dataclass(frozen=True)
class Response:
    session_id: bytes
    epoch: int
    ephemeral: bytes
    init_hash: bytes


def build_response(f_hs: BinaryFernet, resp: Response, now: float) -> bytes:
    body = RESPONSE_BODY.pack(
        HANDSHAKE_RESPONSE,
        PROTOCOL_VERSION,
        resp.session_id,
        resp.epoch,
        resp.ephemeral,
        resp.init_hash,
    )
    return bytes([HANDSHAKE_RESPONSE]) + resp.session_id + seal(f_hs, body, now)


def parse_response(plaintext: bytes) -> Response:
    if len(plaintext) != RESPONSE_BODY.size:
        raise Malformed("response size")
    kind, version, sid, epoch, eph, h1 = RESPONSE_BODY.unpack(plaintext)
    if kind != HANDSHAKE_RESPONSE or version != PROTOCOL_VERSION:
        raise Malformed("response type/version")
    return Response(sid, epoch, eph, h1)


def _cookie_tag(mac: HmacSha256, head: bytes, msg1: bytes) -> bytes:
    return mac(head + hashlib.sha256(msg1).digest())[:COOKIE_TAG_BYTES]


def build_cookie_reply(mac: HmacSha256, cookie: bytes, msg1: bytes) -> bytes:
    """The COOKIE_REPLY answering `msg1` (the whole message 1 datagram): type, the
    cookie, and a tag under K_cookie (`mac`) that binds both to msg1."""
    head = bytes([COOKIE_REPLY]) + cookie
    return head + _cookie_tag(mac, head, msg1)


def open_cookie_reply(mac: HmacSha256, datagram: bytes, msg1: bytes) -> bytes | None:
    """The cookie of a COOKIE_REPLY that answers `msg1`, or None if its tag does not
    verify (forged, or answering another message 1). The size is checked by the caller."""
    head = datagram[:-COOKIE_TAG_BYTES]
    if not hmac.compare_digest(datagram[-COOKIE_TAG_BYTES:], _cookie_tag(mac, head, msg1)):
        return None
    return head[1:]


# -- data datagrams and frames --------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """All sequence numbers below `cumulative` were received, plus `ranges` [start, end)."""

    cumulative: int
    ranges: tuple[tuple[int, int], ...] = ()


class Frames(NamedTuple):
    """The decoded content of one DATA or ENVELOPE datagram. A named tuple, not a
    frozen dataclass: one is made for every datagram received, and a frozen
    dataclass sets each of its six fields through object.__setattr__."""

    messages: tuple[tuple[int, bytes], ...] = ()
    ack: Ack | None = None
    ping: bool = False
    close: bool = False
    challenge: bytes | None = None  # PATH_CHALLENGE data (the last one, if several)
    response: bytes | None = None  # PATH_RESPONSE data (the last one, if several)


def encode_message_frame(seq: int, payload: bytes) -> bytes:
    return MESSAGE_FRAME.pack(FRAME_MESSAGE, seq, len(payload)) + payload


def encode_ack_frame(ack: Ack) -> bytes:
    out = [ACK_FRAME.pack(FRAME_ACK, ack.cumulative, len(ack.ranges))]
    out.extend(ACK_RANGE.pack(start, end) for start, end in ack.ranges)
    return b"".join(out)


PING_FRAME = bytes([FRAME_PING])
CLOSE_FRAME = bytes([FRAME_CLOSE, 0])


def path_challenge_frame(data: bytes) -> bytes:
    return bytes([FRAME_PATH_CHALLENGE]) + data


def path_response_frame(data: bytes) -> bytes:
    return bytes([FRAME_PATH_RESPONSE]) + data


def decode_frames(body: bytes, max_ranges: int, max_payload: int = MAX_PAYLOAD_BYTES) -> Frames:
    """Parse the frames after the packet number; anything odd raises Malformed.
    `max_payload` is MAX_PAYLOAD_BYTES in DATA, MAX_SEALED_PAYLOAD_BYTES in ENVELOPE."""
    size = len(body)
    if size > MESSAGE_FRAME_BYTES and body[0] == FRAME_MESSAGE:
        # The usual datagram, a room line: one MESSAGE frame and nothing else. The
        # loop below would read it the same way, and reads everything else.
        _, seq, length = _MESSAGE_FRAME_UNPACK(body)
        if length + MESSAGE_FRAME_BYTES == size and length <= max_payload:
            return Frames(((seq, body[MESSAGE_FRAME_BYTES:]),))
    messages: list[tuple[int, bytes]] = []
    ack: Ack | None = None
    ping = close = False
    challenge = response = None
    pos = 0
    try:
        while pos < len(body):
            kind = body[pos]
            if kind == FRAME_MESSAGE:
                _, seq, length = MESSAGE_FRAME.unpack_from(body, pos)
                pos += MESSAGE_FRAME.size
                if length > max_payload or pos + length > len(body):
                    raise Malformed("message length")
                messages.append((seq, body[pos : pos + length]))
                pos += length
            elif kind == FRAME_ACK and ack is None:
                _, cumulative, count = ACK_FRAME.unpack_from(body, pos)
                pos += ACK_FRAME.size
                if count > max_ranges:
                    raise Malformed("too many ack ranges")
                ranges = []
                floor = cumulative  # ranges ascend, apart, above the cumulative ack
                for _ in range(count):
                    start, end = ACK_RANGE.unpack_from(body, pos)
                    pos += ACK_RANGE.size
                    if not floor < start < end:
                        raise Malformed("ack range")
                    ranges.append((start, end))
                    floor = end
                ack = Ack(cumulative, tuple(ranges))
            elif kind == FRAME_PING:
                ping = True
                pos += 1
            elif kind == FRAME_CLOSE:
                if pos + 2 > len(body):
                    raise Malformed("close")
                close = True
                pos += 2
            elif kind in (FRAME_PATH_CHALLENGE, FRAME_PATH_RESPONSE):
                data = body[pos + 1 : pos + 1 + PATH_DATA_BYTES]
                if len(data) != PATH_DATA_BYTES:
                    raise Malformed("path frame")
                if kind == FRAME_PATH_CHALLENGE:
                    challenge = data
                else:
                    response = data
                pos += 1 + PATH_DATA_BYTES
            else:
                raise Malformed("frame type")
    except struct.error as exc:
        raise Malformed("truncated frame") from exc
    if not (messages or ack or ping or close or challenge or response):
        raise Malformed("no frames")
    return Frames(tuple(messages), ack, ping, close, challenge, response)


__all__ = ["InvalidToken"]
