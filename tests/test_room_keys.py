"""Specification of the "room-keys" extension (docs/PROTOCOL.md section 11).

Three floors, each driven without sockets or sleeping:

- the core: ENVELOPE datagrams between a ServerEndpoint and a ClientEndpoint on the
  seeded LossyNetwork of tests/sim.py (delivery, authentication, replay, what a
  client may put in one, acks as ENVELOPEs, rekeys);
- the chat server: the real ChatServer with raw ClientEndpoints (tests/sim.py
  ChatWorld): caps, room keys handed out before the first sealed line, rotation when
  a holder leaves or the key ages, plain JSON for version-1 members;
- the client: real ChatClients through the real ChatServer (tests/client_net.py).

The interop with a version-1 client written from the spec alone, through the real
daemon, is in tests/test_spec_interop.py.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from functools import partial
from typing import Any

import pytest
from client_net import Net
from cryptography.fernet import Fernet, InvalidToken
from hypothesis import given
from hypothesis import strategies as st
from sim import SERVER_ADDR, ChatWorld, LossyNetwork, Pair, received

from udpchat.chat.lineids import new_line_id
from udpchat.chat.roomkeys import KEY_ID_BYTES, ROOM_KEY_MAX_AGE_S, open_sealed
from udpchat.chat.server import ChatServer, ServerSettings
from udpchat.client.chatclient import State
from udpchat.core import events, wire
from udpchat.core.endpoint import ClientEndpoint, ServerEndpoint
from udpchat.core.fernet import BinaryFernet
from udpchat.core.limits import ProtocolConfig
from udpchat.core.session import KeySet

BAD_NETWORK: dict[str, Any] = dict(loss=0.20, duplicate=0.10, delay_s=0.01, jitter_s=0.03)
#: Short timers so that keepalives, expiry and rekeys take simulated seconds.
FAST = ProtocolConfig(keepalive_s=1.0, session_expiry_s=4.0, give_up_s=8.0)


def make_pair(config: ProtocolConfig = ProtocolConfig(), seed: int = 1234, **network: Any) -> Pair:
    psk = Fernet.generate_key()
    net = LossyNetwork(seed=seed, **network)
    return Pair(ServerEndpoint(psk, config), ClientEndpoint(psk, config), net)


def keyset(client: ClientEndpoint, epoch: int = 0) -> KeySet:
    """The client's keys of ``epoch``. White-box on purpose: a forged or hand-built
    ENVELOPE needs the real MAC key, which the core never hands out."""
    session = client._session  # noqa: SLF001
    assert session is not None
    return session._keys[epoch]  # noqa: SLF001


def envelope(sid: bytes, epoch: int, packet: int, frames: bytes, mac_key: bytes) -> bytes:
    """An ENVELOPE built by hand: header, frames, HMAC-SHA256 under ``mac_key``."""
    data = wire.ENVELOPE_HEADER.pack(wire.ENVELOPE, sid, epoch, packet) + frames
    return data + wire.envelope_mac(mac_key, data)


def sealed_flags(events_: list[events.Event]) -> list[tuple[bytes, bool]]:
    return [(e.payload, e.sealed) for e in events_ if isinstance(e, events.MessageReceived)]


def drain(endpoint: ServerEndpoint | ClientEndpoint) -> list[events.Event]:
    out = []
    while (event := endpoint.next_event()) is not None:
        out.append(event)
    return out


def from_server(pair: Pair) -> list[bytes]:
    return [data for data, src, _ in pair.network.sent if src == SERVER_ADDR]


# --- the core: ENVELOPE datagrams ------------------------------------------------------


@pytest.mark.parametrize("client_envelopes", [False, True], ids=["data-acks", "envelope-acks"])
def test_sealed_and_plain_messages_arrive_once_in_order_with_their_flag(
    client_envelopes: bool,
) -> None:
    """300 server messages, two in three sealed (ENVELOPE) and the rest plain (DATA),
    interleaved, at 20% loss, 10% duplication and reordering: each arrives exactly
    once, in the order sent, flagged sealed=True exactly when it was sent sealed, and
    each is acknowledged to the server (whether the client acks in DATA or, after
    use_envelopes, in ENVELOPEs)."""
    pair = make_pair(**BAD_NETWORK)
    sid = pair.connect()
    if client_envelopes:
        pair.client.use_envelopes()
    start = len(pair.network.sent)
    expected = [(b"m%d" % i, i % 3 != 0) for i in range(300)]
    ids = [pair.server.send(sid, payload, pair.now, sealed=s) for payload, s in expected]

    def done() -> bool:
        delivered = [e for e in pair.server_events if isinstance(e, events.MessageDelivered)]
        return len(received(pair.client_events)) == 300 and len(delivered) == 300

    pair.run(done, max_seconds=600)
    assert sealed_flags(pair.client_events) == expected
    delivered = [e.message_id for e in pair.server_events if isinstance(e, events.MessageDelivered)]
    assert sorted(delivered) == ids
    assert pair.network.sent and any(d[0] == wire.ENVELOPE for d in from_server(pair))
    assert any(d[0] == wire.DATA for d in from_server(pair))
    for stats in (pair.server.stats.take(), pair.client.stats.take()):
        assert not {"bad-mac", "bad-frame", "bad-token"} & stats.keys(), stats
    client_types = {d[0] for d, src, _ in pair.network.sent[start:] if src == pair.client_addr}
    assert client_types == ({wire.ENVELOPE} if client_envelopes else {wire.DATA})


def capture_server_envelope(pair: Pair, sid: bytes) -> bytes:
    """One sealed message, taken off the server's output instead of the network."""
    pair.run(lambda: pair.network.next_arrival() is None, max_seconds=5)
    pair.server.send(sid, b"sealed line", pair.now, sealed=True)
    out = pair.server.datagrams_to_send(pair.now)
    assert len(out) == 1 and out[0][0][0] == wire.ENVELOPE
    return out[0][0]


def capture_client_envelope(pair: Pair, sid: bytes) -> tuple[bytes, int]:
    """The client's ENVELOPE ack of one plain server message, taken off its output;
    with the message id it acknowledges."""
    pair.client.use_envelopes()
    message_id = pair.server.send(sid, b"plain line", pair.now)
    for data, _ in pair.server.datagrams_to_send(pair.now):
        pair.client.receive_datagram(data, pair.now)
    out = pair.client.datagrams_to_send(pair.now + 1.0)  # past the ack delay
    assert len(out) == 1 and out[0][0] == wire.ENVELOPE
    return out[0], message_id


@given(key=st.binary(min_size=32, max_size=32), data=st.binary(max_size=1300))
def test_the_precomputed_envelope_mac_is_hmac_sha256(key: bytes, data: bytes) -> None:
    """The fast MAC the sessions use is exactly the HMAC-SHA256 of PROTOCOL.md 11.4,
    on every call (its hash states are copied, never consumed)."""
    mac = wire.EnvelopeMac(key)
    assert mac(data) == hmac.digest(key, data, "sha256")
    assert mac(data + b"x") == hmac.digest(key, data + b"x", "sha256")


def test_every_bit_flip_of_a_server_envelope_is_dropped() -> None:
    """Each of the 8 x len single-bit flips of a captured server ENVELOPE is dropped
    and counted once (bad-mac, or a cheaper check before it), delivering nothing and
    changing nothing: the untouched datagram is still delivered afterwards, sealed."""
    pair = make_pair()
    sid = pair.connect()
    original = capture_server_envelope(pair, sid)
    pair.client.stats.take()
    for bit in range(len(original) * 8):
        flipped = bytearray(original)
        flipped[bit // 8] ^= 1 << (bit % 8)
        pair.client.receive_datagram(bytes(flipped), pair.now)
        assert pair.client.next_event() is None, bit
    drops = pair.client.stats.take()
    assert sum(drops.values()) == len(original) * 8
    # (A flip of the type byte 0x04 to 0x05 makes it a cookie reply of the wrong size.)
    cheaper = {"unknown-type", "unknown-session", "unknown-epoch", "bad-length"}
    assert set(drops) <= {"bad-mac"} | cheaper
    # Every bit of the packet number, frames and MAC is covered by the MAC.
    assert drops["bad-mac"] == (len(original) - 1 - wire.SESSION_ID_BYTES - 1) * 8
    pair.client.receive_datagram(original, pair.now)
    assert pair.client.next_event() == events.MessageReceived(sid, b"sealed line", True)


def test_every_bit_flip_of_a_client_envelope_is_dropped() -> None:
    """The same for a client's ENVELOPE ack reaching the server: every flip is dropped
    and counted once, none acknowledges anything; the original then does."""
    pair = make_pair()
    sid = pair.connect()
    pair.run(lambda: pair.network.next_arrival() is None, max_seconds=5)
    original, message_id = capture_client_envelope(pair, sid)
    pair.server.stats.take()
    for bit in range(len(original) * 8):
        flipped = bytearray(original)
        flipped[bit // 8] ^= 1 << (bit % 8)
        pair.server.receive_datagram(bytes(flipped), pair.client_addr, pair.now)
        assert pair.server.next_event() is None, bit
    drops = pair.server.stats.take()
    assert sum(drops.values()) == len(original) * 8
    assert set(drops) <= {"bad-mac", "unknown-type", "unknown-session", "unknown-epoch"}
    assert drops["bad-mac"] == (len(original) - 1 - wire.SESSION_ID_BYTES - 1) * 8
    pair.server.receive_datagram(original, pair.client_addr, pair.now)
    assert pair.server.next_event() == events.MessageDelivered(sid, message_id)


def test_a_replayed_envelope_is_dropped_as_replay() -> None:
    """A server ENVELOPE delivered twice is delivered once and the copy is counted as
    "replay"; a client ENVELOPE ack replayed to the server likewise changes nothing."""
    pair = make_pair()
    sid = pair.connect()
    original = capture_server_envelope(pair, sid)
    pair.client.stats.take()
    pair.client.receive_datagram(original, pair.now)
    pair.client.receive_datagram(original, pair.now + 1)
    assert pair.client.next_event() == events.MessageReceived(sid, b"sealed line", True)
    assert pair.client.next_event() is None
    assert pair.client.stats.take() == {"replay": 1}

    ack, message_id = capture_client_envelope(pair, sid)
    pair.server.stats.take()
    pair.server.receive_datagram(ack, pair.client_addr, pair.now)
    first = drain(pair.server)
    assert first[-1] == events.MessageDelivered(sid, message_id)
    pair.server.receive_datagram(ack, pair.client_addr, pair.now + 1)
    assert drain(pair.server) == []
    assert pair.server.stats.take() == {"replay": 1}


@pytest.mark.parametrize(
    ("frames", "delivered", "dropped"),
    [
        (wire.encode_message_frame(0, b"line"), [b"line"], {}),
        (wire.encode_message_frame(0, b"line") + wire.PING_FRAME, [b"line"], {}),
        (wire.encode_message_frame(0, b"line")[:-1], [], {"bad-frame": 1}),
        (wire.encode_message_frame(0, b"line") + b"\x00", [], {"bad-frame": 1}),
        (wire.encode_message_frame(0, b""), [b""], {}),
    ],
    ids=["lone", "then-ping", "short", "trailing-byte", "empty"],
)
def test_a_server_envelope_with_one_message_frame_is_read_as_the_frame_decoder_reads_it(
    frames: bytes, delivered: list[bytes], dropped: dict[str, int]
) -> None:
    """The client reads a room line (an ENVELOPE with one MESSAGE frame and nothing
    else) on a path of its own; every other layout, and a frame whose length does not
    fit, takes the frame decoder, whose strictness decides: delivered once if valid,
    else dropped as "bad-frame" without spending its packet number."""
    pair = make_pair()
    sid = pair.connect()
    pair.run(lambda: pair.network.next_arrival() is None, max_seconds=5)
    pair.client.stats.take()
    drain(pair.client)
    key = keyset(pair.client).mac_receive.key
    pair.client.receive_datagram(envelope(sid, 0, 1000, frames, key), pair.now)
    assert [e.payload for e in drain(pair.client) if isinstance(e, events.MessageReceived)] == (
        delivered
    )
    assert pair.client.stats.take() == dropped
    if dropped:  # the packet number is not spent: a valid datagram with it is taken
        again = envelope(sid, 0, 1000, wire.encode_message_frame(0, b"ok"), key)
        pair.client.receive_datagram(again, pair.now)
        assert drain(pair.client) == [events.MessageReceived(sid, b"ok", True)]


def test_an_envelope_forged_by_another_member_is_dropped_as_bad_mac() -> None:
    """Bob, another session of the same server, knows everything about Alice's session
    but its keys: her session id, epoch, the next packet numbers, the frame layout and
    (as a room member) the sealed payload. An ENVELOPE he MACs with his own session's
    keys is dropped as "bad-mac" by Alice (a sealed message "from the server") and by
    the server (an ack "from Alice"), and changes nothing."""
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk)
    network = LossyNetwork(seed=5)
    alice = Pair(server, ClientEndpoint(psk), network, client_addr=("127.0.0.2", 40000))
    alice_sid = alice.connect()
    bob = Pair(server, ClientEndpoint(psk), network, client_addr=("127.0.0.3", 40000))
    bob.now = alice.now
    bob.connect()
    alice.now = bob.now
    message_id = server.send(alice_sid, b"pending", alice.now)
    alice.flush()  # queued on the network, not yet delivered: nothing acknowledged it
    server.stats.take()
    alice.client.stats.take()

    bob_keys = keyset(bob.client)
    frame = wire.encode_message_frame(0, b"\x00\x00\x00\x07forged sealed line")
    to_alice = envelope(alice_sid, 0, 50, frame, bob_keys.mac_receive.key)
    alice.client.receive_datagram(to_alice, alice.now)
    assert alice.client.next_event() is None
    assert alice.client.stats.take() == {"bad-mac": 1}

    ack = wire.encode_ack_frame(wire.Ack(1))
    to_server = envelope(alice_sid, 0, 50, ack, bob_keys.mac_send.key)
    server.receive_datagram(to_server, alice.client_addr, alice.now)
    assert server.next_event() is None
    assert server.stats.take() == {"bad-mac": 1}
    alice.run(lambda: events.MessageDelivered(alice_sid, message_id) in alice.server_events, 5)
    assert received(alice.client_events) == [b"pending"]


@pytest.mark.parametrize(
    "frames",
    [
        wire.encode_message_frame(0, b'{"t":"say","text":"hi","id":"0123456789abcdef"}'),
        wire.CLOSE_FRAME,
        wire.encode_ack_frame(wire.Ack(0)) + wire.CLOSE_FRAME,
        wire.PING_FRAME + wire.encode_message_frame(0, b"x"),
    ],
    ids=["message", "close", "ack+close", "ping+message"],
)
def test_a_client_envelope_with_a_message_or_close_is_dropped_as_bad_frame(frames: bytes) -> None:
    """An authentic client ENVELOPE (real MAC key) carrying a MESSAGE frame or a CLOSE
    is dropped as "bad-frame": no message is delivered, the session does not end, and
    its packet number is not spent (a valid ENVELOPE with the same number is taken)."""
    pair = make_pair()
    sid = pair.connect()
    pair.run(lambda: pair.network.next_arrival() is None, max_seconds=5)
    pair.server.stats.take()
    keys = keyset(pair.client)
    packet = keys.next_packet
    keys.next_packet += 1  # the client's own next datagram must not reuse it
    bad = envelope(sid, 0, packet, frames, keys.mac_send.key)
    pair.server.receive_datagram(bad, pair.client_addr, pair.now)
    assert pair.server.next_event() is None
    assert pair.server.stats.take() == {"bad-frame": 1}
    valid = envelope(sid, 0, packet, wire.PING_FRAME, keys.mac_send.key)
    pair.server.receive_datagram(valid, pair.client_addr, pair.now)
    assert pair.server.stats.take() == {}
    assert pair.server.session_address(sid) == pair.client_addr  # still there
    message_id = pair.server.send(sid, b"still open", pair.now)
    pair.run(lambda: events.MessageDelivered(sid, message_id) in pair.server_events, 5)
    assert not [e for e in pair.server_events if isinstance(e, events.SessionEnded)]


def test_after_use_envelopes_acks_and_keepalives_are_envelopes() -> None:
    """Once use_envelopes() is on, every datagram the client sends (it has nothing to
    say: only acks and keepalive pings) is an ENVELOPE; the server takes them: each of
    its messages is reported delivered, and the session outlives several expiry
    periods on keepalive ENVELOPEs alone."""
    pair = make_pair(FAST)
    sid = pair.connect()
    pair.client.use_envelopes()
    start = len(pair.network.sent)
    ids = [pair.server.send(sid, b"p%d" % i, pair.now, sealed=i % 2 == 1) for i in range(10)]
    end = pair.now + 3 * FAST.session_expiry_s
    pair.run(lambda: pair.now >= end, max_seconds=4 * FAST.session_expiry_s)
    sent = [d for d, src, _ in pair.network.sent[start:] if src == pair.client_addr]
    assert len(sent) >= 3 * FAST.session_expiry_s / FAST.keepalive_s - 1
    assert {d[0] for d in sent} == {wire.ENVELOPE}
    delivered = [e.message_id for e in pair.server_events if isinstance(e, events.MessageDelivered)]
    assert delivered == ids
    assert received(pair.client_events) == [b"p%d" % i for i in range(10)]
    assert not [
        e for e in pair.server_events + pair.client_events if isinstance(e, events.SessionEnded)
    ]
    assert pair.server.stats.take() == {}


@pytest.mark.parametrize("loss", [0.0, 0.3])
def test_a_rekey_confirmed_by_an_envelope_completes(loss: float) -> None:
    """With acks as ENVELOPEs and nothing else to send, the client's first datagrams
    under new keys are ENVELOPEs: the server, finding the epoch pending, tries its
    candidates, confirms the rekey, and sends under the new epoch from then on; three
    rekeys in a row keep every message flowing, exactly once."""
    config = ProtocolConfig(rekey_after_s=5.0, keepalive_s=1.0)
    pair = make_pair(config, seed=99, loss=loss, duplicate=0.05, jitter_s=0.02)
    sid = pair.connect()
    pair.client.use_envelopes()
    start = len(pair.network.sent)
    sent: list[bytes] = []

    def rekeyed(epoch: int) -> bool:
        return events.SessionRekeyed(sid, epoch) in pair.server_events

    for epoch in (1, 2, 3):
        payload = b"before epoch %d" % epoch
        pair.server.send(sid, payload, pair.now, sealed=epoch % 2 == 1)
        sent.append(payload)
        pair.run(partial(rekeyed, epoch), max_seconds=60)
        assert events.SessionRekeyed(sid, epoch) in pair.client_events
    pair.run(lambda: received(pair.client_events) == sent and pair.server.is_idle(sid), 30)
    client_types = {d[0] for d, src, _ in pair.network.sent[start:] if src == pair.client_addr}
    assert client_types == {wire.ENVELOPE, wire.HANDSHAKE_INIT}
    # The server now speaks epoch 3 only (its datagrams carry epoch byte 3).
    pair.server.send(sid, b"after", pair.now, sealed=True)
    last = pair.server.datagrams_to_send(pair.now)
    assert last and {d[1 + wire.SESSION_ID_BYTES] for d, _ in last} == {3}
    assert not [e for e in pair.server_events if isinstance(e, events.SessionEnded)]


# --- the chat server: caps, room keys, rotation ------------------------------------------


def chat_world(
    settings: ServerSettings = ServerSettings(), protocol: ProtocolConfig | None = None
) -> tuple[ChatWorld, bytes]:
    psk = Fernet.generate_key()
    return ChatWorld(ChatServer(psk, settings, protocol=protocol)), psk


def member(
    world: ChatWorld,
    psk: bytes,
    nick: str,
    room: str = "lobby",
    caps: bool = True,
    client_id: str | None = None,
) -> Any:
    """A raw ClientEndpoint that says hello and, if ``caps``, asks for room keys after
    welcome and (if the server says yes) sends its acks as ENVELOPEs."""
    addr = (f"10.0.0.{len(world.clients) + 1}", 40000)
    hello = {"t": "hello", "nick": nick, "room": room, "client": client_id or new_line_id()}
    world.add_client(addr, psk, hello)
    world.run(lambda: any(m["t"] == "welcome" for m in world.inbox[addr]), 10)
    if caps:
        world.send(addr, t="caps", **{"room-keys": True})
        world.run(lambda: any(m["t"] == "caps" for m in world.inbox[addr]), 10)
        if {"t": "caps", "room-keys": True} in world.inbox[addr]:
            world.clients[addr].use_envelopes()
    world.settle()
    return addr


def say(world: ChatWorld, addr: Any, text: str) -> None:
    world.send(addr, t="say", text=text, id=new_line_id())
    world.settle()


def key_id(sealed: bytes) -> int:
    return int.from_bytes(sealed[:KEY_ID_BYTES], "big")


def timeline(world: ChatWorld, addr: Any) -> list[tuple[dict[str, Any], int | None]]:
    """What ``addr`` received, in order: each message with the id of the room key
    that sealed it (None: plain). A sealed message is opened with the room keys this
    member was sent before it, and only those (open_sealed raises otherwise)."""
    keys: dict[int, BinaryFernet] = {}
    out: list[tuple[dict[str, Any], int | None]] = []
    for event in world.client_events[addr]:
        if not isinstance(event, events.MessageReceived):
            continue
        if event.sealed:
            out.append((json.loads(open_sealed(keys, event.payload)), key_id(event.payload)))
        else:
            msg = json.loads(event.payload)
            if msg["t"] == "room-key":
                keys[msg["id"]] = BinaryFernet.from_key(msg["key"])
            out.append((msg, None))
    return out


def sealed_payloads(world: ChatWorld, addr: Any) -> list[bytes]:
    return [
        e.payload
        for e in world.client_events[addr]
        if isinstance(e, events.MessageReceived) and e.sealed
    ]


def room_keys_of(world: ChatWorld, addr: Any, room: str) -> dict[int, BinaryFernet]:
    return {
        m["id"]: BinaryFernet.from_key(m["key"])
        for m, _ in timeline(world, addr)
        if m["t"] == "room-key" and m["room"] == room
    }


def lines(world: ChatWorld, addr: Any) -> list[dict[str, Any]]:
    return [m for m, _ in timeline(world, addr) if m["t"] in ("say", "me")]


def test_capable_members_get_the_key_first_and_open_every_line_v1_members_get_json() -> None:
    """In one room, three members that negotiated room keys and one version-1 member
    (hello only, no caps): each capable member is sent the room key before the first
    line sealed with it, and opens every say/me of the room; the version-1 member gets
    the very same messages as plain JSON, never a room key or an ENVELOPE. A line is
    sealed once: every capable member gets the same bytes."""
    world, psk = chat_world()
    alice = member(world, psk, "alice")
    bob = member(world, psk, "bob")
    dave = member(world, psk, "dave")
    carol = member(world, psk, "carol", caps=False)
    for text in ("one", "two", "three"):
        say(world, alice, text)
    world.send(alice, t="me", text="waves", id=new_line_id())
    world.settle()

    expected = [m for m in lines(world, carol) if m["nick"] == "alice"]
    assert [(m["t"], m["text"]) for m in expected] == [
        ("say", "one"),
        ("say", "two"),
        ("say", "three"),
        ("me", "waves"),
    ]
    for capable in (bob, dave):
        seen = timeline(world, capable)
        assert {"t": "caps", "room-keys": True} in [m for m, _ in seen]
        assert [m for m, k in seen if m["t"] in ("say", "me")] == expected
        assert all(k is not None for m, k in seen if m["t"] in ("say", "me"))
        first_sealed = next(i for i, (_, k) in enumerate(seen) if k is not None)
        key_msg = next(i for i, (m, _) in enumerate(seen) if m["t"] == "room-key")
        assert key_msg < first_sealed
        assert seen[key_msg][0]["id"] == seen[first_sealed][1]
        assert seen[key_msg][0]["room"] == "lobby"
    assert sealed_payloads(world, bob)[-4:] == sealed_payloads(world, dave)[-4:]
    assert lines(world, alice) == []  # never echoed
    carol_seen = [m for m, _ in timeline(world, carol)]
    assert not [m for m in carol_seen if m["t"] in ("room-key", "caps")]
    assert sealed_payloads(world, carol) == []
    # Notices too: carol's join is plain for her, sealed for the capable members.
    carol_join = {"t": "join", "room": "lobby", "nick": "carol"}
    assert carol_join in carol_seen
    assert [k is not None for m, k in timeline(world, bob) if m == carol_join] == [True]
    carol_addr_datagrams = [d for d, addr in world.written if addr == carol]
    assert {d[0] for d in carol_addr_datagrams} == {wire.HANDSHAKE_RESPONSE, wire.DATA}
    assert world.server.room_keys.rotations == 0


@pytest.mark.parametrize("how", ["part", "bye", "timeout"])
def test_after_a_member_leaves_the_next_message_uses_a_key_it_never_got(how: str) -> None:
    """Alice, Bob and Carol (all capable) in "den"; after Alice leaves (part, bye or
    timeout) the room's next message (her part notice) and Bob's next line are sealed
    with a new key id: Carol opens both, Alice was never sent that key, and the key
    she had does not open the new line."""
    world, psk = chat_world(protocol=FAST)
    alice = member(world, psk, "alice", room="den")
    bob = member(world, psk, "bob", room="den")
    carol = member(world, psk, "carol", room="den")
    say(world, bob, "before")
    old = [k for m, k in timeline(world, carol) if m.get("text") == "before"]
    assert old[0] is not None and old == [
        k for m, k in timeline(world, alice) if m.get("text") == "before"
    ]
    if how == "timeout":
        world.cut.add(alice)
        world.advance(FAST.session_expiry_s + 1)
    else:
        world.send(alice, t=how)
        world.settle()
    say(world, bob, "after")

    seen = timeline(world, carol)
    reason = {"part": "part", "bye": "quit", "timeout": "timeout"}[how]
    part = [
        k for m, k in seen if m == {"t": "part", "room": "den", "nick": "alice", "reason": reason}
    ]
    after = [k for m, k in seen if m.get("text") == "after"]
    assert len(after) == 1 and after == part
    new = after[0]
    assert new is not None and new != old[0]
    alice_keys = room_keys_of(world, alice, "den")
    assert list(alice_keys) == [old[0]]
    assert new not in {m.get("id") for m, _ in timeline(world, alice)}
    after_payload = sealed_payloads(world, carol)[-1]
    with pytest.raises(InvalidToken):
        open_sealed(alice_keys, after_payload)
    with pytest.raises(InvalidToken):  # not even by its id: the old key fails the MAC
        open_sealed({new: alice_keys[old[0]]}, after_payload)
    assert [m["text"] for m in lines(world, bob)] == []  # bob's own lines never echoed
    assert world.server.room_keys.rotations == 1


def test_a_room_key_is_replaced_once_it_is_max_age_old() -> None:
    """A room key seals the room's messages for ROOM_KEY_MAX_AGE_S; the room's first
    message after that gets a new key (the next id), sent to each capable member
    first."""
    world, psk = chat_world()
    alice = member(world, psk, "alice", caps=False)
    bob = member(world, psk, "bob", caps=False)
    for addr in (alice, bob):  # caps after both joined: "first" is the first sealed message
        world.send(addr, t="caps", **{"room-keys": True})
        world.clients[addr].use_envelopes()
    world.settle()
    say(world, bob, "first")
    world.advance(ROOM_KEY_MAX_AGE_S - 2)
    say(world, bob, "aged")
    world.advance(2)
    say(world, bob, "fresh")
    by_text = {m["text"]: k for m, k in timeline(world, alice) if m["t"] == "say"}
    first = by_text["first"]
    assert first is not None
    assert by_text == {"first": first, "aged": first, "fresh": (first + 1) % 2**32}
    assert list(room_keys_of(world, alice, "lobby")) == [first, (first + 1) % 2**32]
    assert world.server.room_keys.rotations == 1


def test_a_server_without_room_keys_says_no_and_sends_everything_plain() -> None:
    """ServerSettings(room_keys=False): caps is answered {"t":"caps","room-keys":false},
    no room key is sent, and every message (lines, notices) is plain DATA."""
    world, psk = chat_world(ServerSettings(room_keys=False))
    alice = member(world, psk, "alice")
    bob = member(world, psk, "bob")
    say(world, alice, "hello")
    assert {"t": "caps", "room-keys": False} in world.inbox[alice]
    assert {"t": "caps", "room-keys": False} in world.inbox[bob]
    assert [m["text"] for m in lines(world, bob)] == ["hello"]
    for addr in (alice, bob):
        assert all(k is None for _, k in timeline(world, addr))
        assert not [m for m in world.inbox[addr] if m["t"] == "room-key"]
    assert {d[0] for d, _ in world.written} == {wire.HANDSHAKE_RESPONSE, wire.DATA}


def test_a_takeover_session_negotiates_again_before_anything_is_sealed_for_it() -> None:
    """Alice reconnects with the same client id (a takeover keeps her place): the new
    session gets the room's lines plain until it sends its own caps; afterwards they
    are sealed with a key the old session was never sent."""
    world, psk = chat_world()
    client_id = new_line_id()
    alice1 = member(world, psk, "alice", client_id=client_id)
    bob = member(world, psk, "bob")
    say(world, bob, "to the old session")
    old = [k for m, k in timeline(world, alice1) if m.get("text") == "to the old session"]
    assert old[0] is not None

    alice2 = member(world, psk, "alice", caps=False, client_id=client_id)
    say(world, bob, "before caps")
    world.send(alice2, t="caps", **{"room-keys": True})
    world.settle()
    world.clients[alice2].use_envelopes()
    say(world, bob, "after caps")

    seen = timeline(world, alice2)
    caps_at = next(i for i, (m, _) in enumerate(seen) if m["t"] == "caps")
    assert all(k is None for _, k in seen[:caps_at])
    by_text = {m["text"]: k for m, k in seen if m["t"] == "say" and "ts" not in m}
    assert by_text["before caps"] is None
    new = by_text["after caps"]
    assert new is not None and new != old[0]
    assert new not in room_keys_of(world, alice1, "lobby")


# --- the client: ChatClients through the real ChatServer -----------------------------------


def envelopes_to(net: Net, addr: tuple[str, int]) -> int:
    return sum(1 for data, to in net.server_sent if to == addr and data[0] == wire.ENVELOPE)


def record_sends(net: Net) -> list[tuple[bytes, bytes, bool]]:
    """Every message the chat server hands its core, as (session id, payload, sealed)."""
    sends: list[tuple[bytes, bytes, bool]] = []
    send = net.server.send

    def record(session_id: bytes, payload: bytes, now: float, sealed: bool = False) -> int:
        sends.append((session_id, payload, sealed))
        return send(session_id, payload, now, sealed)

    send_many = net.server.send_many

    def record_many(
        session_ids: Iterable[bytes], payload: bytes, now: float, sealed: bool = False
    ) -> list[bytes]:
        listed = list(session_ids)
        sends.extend((session_id, payload, sealed) for session_id in listed)
        return send_many(listed, payload, now, sealed)

    net.server.send = record  # type: ignore[method-assign]
    net.server.send_many = record_many  # type: ignore[method-assign]
    return sends


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_two_chat_clients_chat_with_room_keys_every_line_shown_once(loss: float) -> None:
    """Two ChatClients negotiate room keys with the real server (room_keys_active) and
    chat both ways, with and without loss: every line, /me and notice reaches the other
    exactly once and in order, through ENVELOPEs, with no problem shown."""
    net = Net(loss=loss, seed=11)
    sends = record_sends(net)
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.room_keys_active and bob.chat.room_keys_active, 60)
    net.submit(alice, *[f"a{i}" for i in range(20)], "/me waves")
    net.submit(bob, *[f"b{i}" for i in range(20)])
    net.run_until(lambda: alice.chat.unsent == 0 and bob.chat.unsent == 0, 120)
    # Lazy acks (11.8): a lost last datagram waits for a retransmission timeout of
    # at least 1.2 s, doubled for each loss in a row.
    net.run_until(lambda: "* alice waves" in bob.lines and "<bob> b19" in alice.lines, 60)
    net.run(2)
    assert [line for line in bob.lines if line.startswith(("<alice>", "* alice"))] == [
        *[f"<alice> a{i}" for i in range(20)],
        "* alice waves",
    ]
    assert [line for line in alice.lines if line.startswith("<bob>")] == [
        f"<bob> b{i}" for i in range(20)
    ]
    for peer in (alice, bob):
        assert peer.chat.room_keys_active and peer.chat.failures == 0
        assert not [line for line in peer.lines if line.startswith("!!!")]
        assert envelopes_to(net, peer.addr) >= 1
        session_id = peer.chat.endpoint.session_id
        assert sum(1 for sid, _, sealed in sends if sid == session_id and sealed) >= 20
    assert alice.lines.count("-!- bob has joined lobby") == 1


def test_a_version_1_server_answering_caps_with_bad_message_is_not_a_problem() -> None:
    """A server that does not know "caps" (version 1) answers error "bad-message", to
    each of the client's four caps (with "lazy-acks", "notices" and "path-check",
    with "notices" and "path-check", with "path-check", with "room-keys" alone): the
    client shows nothing, counts no failure, leaves room keys off and chats on with
    plain lines."""
    net = Net()
    rules = net.chat_server.rules
    inner = rules.message_received
    refused: list[bytes] = []

    def version_1(session_id: bytes, payload: bytes, now: float) -> None:
        if json.loads(payload)["t"] == "caps":
            refused.append(session_id)
            payload = b'{"t":"capabilities-unknown-to-v1"}'  # answered as v1 answers caps
        inner(session_id, payload, now)

    rules.message_received = version_1  # type: ignore[method-assign]
    sends = record_sends(net)
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: len(refused) == 8)
    net.run(1)
    assert len(refused) == 8
    net.submit(alice, "one", "two")
    net.submit(bob, "three")
    net.run(2)
    assert not [p for _, p, sealed in sends if sealed]
    errors = [json.loads(p) for _, p, _ in sends if json.loads(p)["t"] == "error"]
    assert [e["code"] for e in errors] == ["bad-message"] * 8
    assert [line for line in bob.lines if line.startswith("<alice>")] == [
        "<alice> one",
        "<alice> two",
    ]
    assert [line for line in alice.lines if line.startswith("<bob>")] == ["<bob> three"]
    for peer in (alice, bob):
        assert not peer.chat.room_keys_active
        assert peer.chat.failures == 0 and peer.chat.exit_code == 0
        assert not [line for line in peer.lines if line.startswith("!!!")]
        assert envelopes_to(net, peer.addr) == 0
        assert peer.chat.state is State.READY


def test_a_member_back_in_a_room_it_emptied_reads_it_after_rotations_elsewhere() -> None:
    """Alice is the last to leave "den" (so no part notice rotates its key) and goes
    to lobby, where four rotations hand her four newer keys; back in "den" a minute
    later she sees her own join (and the member list), Bob's join and Bob's line, and
    no problem."""
    net = Net()
    alice, bob = net.client("alice", room="den"), net.client("bob", room="den")
    net.run_until(lambda: alice.chat.room_keys_active and bob.chat.room_keys_active)
    net.submit(bob, "hello den")
    net.run(1)
    net.submit(bob, "/join lobby")
    net.run(1)
    net.submit(alice, "/join lobby")  # den is empty now: its key is not replaced
    net.run(1)
    for _ in range(4):  # bob leaving lobby replaces its key: alice gets a new one
        net.submit(bob, "/join elsewhere")
        net.run(1)
        net.submit(bob, "/join lobby")
        net.run(1)
    net.submit(alice, "/join den")
    net.run(1)
    net.submit(bob, "/join den")
    net.run(1)
    net.submit(bob, "are you there")
    net.run(1)
    assert alice.lines[-4:] == [
        "-!- alice has joined den",
        "-!- Users in den: alice",
        "-!- bob has joined den",
        "<bob> are you there",
    ]
    assert not [line for line in alice.lines if line.startswith("!!!")]


@pytest.mark.parametrize("sealed", [False, True])
def test_the_retransmission_timeout_waits_out_the_sealed_ack_delay(sealed: bool) -> None:
    """A sender of sealed messages never retransmits before sealed_ack_delay_s +
    min_rto_s (the receiver may hold its ack that long), even when its RTT samples
    say 20 ms; plain messages keep the RFC 6298 timeout of those samples."""
    config = ProtocolConfig()
    pair = make_pair(config, delay_s=0.01)
    session_id = pair.connect()
    for i in range(20):  # RTT samples of about 20 ms: the timeout falls to min_rto_s
        pair.server.send(session_id, b"warm %d" % i, pair.now)
        pair.run(lambda: pair.server.is_idle(session_id), 5)
    pair.network.loss = 1.0  # from now on nothing arrives: only the timer resends
    pair.server.send(session_id, b"k" * 40 if sealed else b"plain", pair.now, sealed=sealed)
    sent_at = pair.now
    pair.flush()
    first = len(pair.network.sent)
    pair.run(lambda: len(pair.network.sent) > first, 5)
    waited = pair.now - sent_at
    if sealed:
        assert waited >= config.sealed_ack_delay_s + config.min_rto_s
    else:
        assert config.min_rto_s <= waited < config.sealed_ack_delay_s


def test_lazy_acks_make_the_server_wait_longer_before_it_retransmits() -> None:
    """After "lazy-acks" (11.9) the server waits at least sealed_ack_delay_lazy_s +
    min_rto_s before it sends a sealed message again: its client may hold the ack
    that long."""
    config = ProtocolConfig()
    pair = make_pair(config, delay_s=0.01)
    session_id = pair.connect()
    pair.server.use_lazy_acks(session_id)
    pair.network.loss = 1.0
    pair.server.send(session_id, b"k" * 40, pair.now, sealed=True)
    sent_at = pair.now
    pair.flush()
    first = len(pair.network.sent)
    pair.run(lambda: len(pair.network.sent) > first, 5)
    assert pair.now - sent_at >= config.sealed_ack_delay_lazy_s + config.min_rto_s


@pytest.mark.parametrize("lazy", [False, True])
def test_a_client_acknowledges_sealed_messages_every_16_or_with_lazy_acks_every_32(
    lazy: bool,
) -> None:
    """128 sealed messages 5 ms apart are acknowledged in 8 ACKs (one per 16), or in
    4 (one per 32) once "lazy-acks" is on; a lone one within 500 ms, or within 1 s."""
    config = ProtocolConfig(send_window=128)
    pair = make_pair(config, delay_s=0.005)
    session_id = pair.connect()
    pair.client.use_envelopes()
    if lazy:
        pair.server.use_lazy_acks(session_id)
        pair.client.use_lazy_acks()
    pair.run(lambda: pair.server.is_idle(session_id), 5)
    start = len(pair.network.sent)
    for i in range(128):
        pair.server.send(session_id, b"line %d" % i, pair.now, sealed=True)
        until = pair.now + 0.005
        pair.run(lambda until=until: pair.now >= until, 1)  # type: ignore[misc]
    pair.run(lambda: pair.server.is_idle(session_id), 5)
    acks = [d for d, src, _ in pair.network.sent[start:] if src == pair.client_addr]
    assert len(acks) == (4 if lazy else 8)
    sent_at = pair.now
    start = len(pair.network.sent)
    pair.server.send(session_id, b"lone line", pair.now, sealed=True)
    pair.run(lambda: pair.server.is_idle(session_id), 5)
    waited = pair.now - sent_at
    delay = config.sealed_ack_delay_lazy_s if lazy else config.sealed_ack_delay_s
    assert delay <= waited < delay + 0.1


def refusing_caps_with(net: Net, member: str) -> list[bytes]:
    """Make net's server one of before the extension whose caps member is `member`: it
    answers "bad-message" to any caps that has it (11.1 item 4). Returns the sessions
    refused, in order, as they come."""
    rules = net.chat_server.rules
    inner = rules.message_received
    refused: list[bytes] = []

    def before(session_id: bytes, payload: bytes, now: float) -> None:
        message = json.loads(payload)
        if message["t"] == "caps" and member in message:
            refused.append(session_id)
            payload = b'{"t":"caps","room-keys":true,"unknown-member":1}'  # bad-message
        inner(session_id, payload, now)

    rules.message_received = before  # type: ignore[method-assign]
    return refused


def test_a_server_that_knows_path_check_but_not_lazy_acks_still_checks_paths() -> None:
    """A server of before "lazy-acks" refuses the first caps as "bad-message"; the
    client asks again with "room-keys", "path-check" and "notices", and gets them."""
    net = Net()
    refused = refusing_caps_with(net, "lazy-acks")
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.room_keys_active and alice.chat.path_checks_active, 60)
    assert len(refused) == 1
    assert not alice.chat.lazy_acks_active and alice.chat.notices_active
    assert alice.chat.failures == 0
    assert not [line for line in alice.lines if line.startswith("!!!")]


def test_a_room_keys_server_that_does_not_know_path_check_still_seals() -> None:
    """A server of before "path-check" (and "notices", "lazy-acks") refuses a caps
    with those members as "bad-message" (11.1): the client asks again without the
    newest one each time, then with "room-keys" alone, and gets room keys, without
    showing anything."""
    net = Net()
    refused = refusing_caps_with(net, "path-check")
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.room_keys_active and bob.chat.room_keys_active, 60)
    assert len(refused) == 6
    net.submit(alice, "sealed")
    net.run(2)
    assert "<alice> sealed" in bob.lines
    for peer in (alice, bob):
        assert not peer.chat.path_checks_active
        assert peer.chat.failures == 0
        assert not [line for line in peer.lines if line.startswith("!!!")]


def test_a_server_of_before_notices_is_asked_again_without_and_gives_path_checks() -> None:
    """A server that knows "path-check" but not "notices" (nor "lazy-acks") refuses
    the first two caps as "bad-message" (11.1 item 4): the client asks again without
    "lazy-acks", then without "notices", and gets room keys and path checks, showing
    nothing."""
    net = Net()
    refused = refusing_caps_with(net, "notices")
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.path_checks_active and alice.chat.room_keys_active, 60)
    assert len(refused) == 2
    assert not alice.chat.notices_active and alice.chat.failures == 0
    assert not [line for line in alice.lines if line.startswith("!!!")]


def test_caps_answers_path_check_to_a_client_that_asked_and_enables_it() -> None:
    """The reference client asks for "path-check", "notices" and "lazy-acks" beside
    "room-keys"; the server answers all four and turns path checks and lazy acks on
    for that session (PROTOCOL.md 11.7-11.9)."""
    net = Net()
    sends = record_sends(net)
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.path_checks_active and alice.chat.room_keys_active, 60)
    answers = [json.loads(p) for _, p, _ in sends if json.loads(p)["t"] == "caps"]
    assert answers == [
        {"t": "caps", "room-keys": True, "path-check": True, "notices": True, "lazy-acks": True}
    ]
    assert alice.chat.notices_active and alice.chat.lazy_acks_active
    session_id = alice.chat.endpoint.session_id
    assert session_id is not None
    assert net.server._sessions[session_id].path_checks  # noqa: SLF001
