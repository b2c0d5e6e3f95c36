"""Key rotation with overlap (PROTOCOL.md 4.12), in memory: the whole chat server and
clients on one simulated network. During the overlap the server takes handshakes
under the new key and the previous one, each session keeps the key it began with,
and members on either key chat in one room; at the end of the overlap the members
still on the previous key are told why and closed, and the previous key gets the
silence any wrong key gets."""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet
from sim import ChatWorld

from udpchat.chat.server import KEY_RETIRED_TEXT, SHUTDOWN_LINGER_S, ChatServer, ServerSettings
from udpchat.core import events
from udpchat.core.endpoint import HandshakeKey
from udpchat.core.handshake import Initiator
from udpchat.core.limits import ProtocolConfig

OLD = Fernet.generate_key()
NEW = Fernet.generate_key()


def world(protocol: ProtocolConfig | None = None) -> ChatWorld:
    server = ChatServer(NEW, ServerSettings(), protocol=protocol)
    server.set_keys(NEW, OLD, 0.0)
    return ChatWorld(server)


def join(w: ChatWorld, nick: str, port: int, psk: bytes) -> Any:
    addr = ("127.0.0.1", port)
    hello = {"t": "hello", "nick": nick, "room": "lobby", "client": f"{port:016x}"}
    w.add_client(addr, psk, hello)
    w.settle()
    return addr


def texts(w: ChatWorld, addr: Any) -> list[str]:
    return [m["text"] for m in w.inbox[addr] if m["t"] == "say"]


def say(w: ChatWorld, addr: Any, text: str, n: int) -> None:
    w.send(addr, t="say", text=text, id=f"{addr[1]:012x}{n:04x}")
    w.settle()


def test_members_on_either_key_chat_in_one_room_across_rekeys() -> None:
    """The overlap: alice still has the previous key, bob the new one. Both get in,
    see each other and keep chatting across several rekeys, each under its own key."""
    w = world(ProtocolConfig(rekey_after_s=20.0))
    alice = join(w, "alice", 1001, OLD)
    bob = join(w, "bob", 1002, NEW)
    assert w.inbox[alice][0] == {"t": "welcome", "nick": "alice", "room": "lobby"}
    assert w.inbox[bob][0] == {"t": "welcome", "nick": "bob", "room": "lobby"}
    for n in range(6):
        say(w, alice, f"from alice {n}", n)
        say(w, bob, f"from bob {n}", n)
        w.advance(10.0)
    assert texts(w, bob) == [f"from alice {n}" for n in range(6)]
    assert texts(w, alice) == [f"from bob {n}" for n in range(6)]
    for addr in (alice, bob):
        rekeys = [e for e in w.client_events[addr] if isinstance(e, events.SessionRekeyed)]
        assert len(rekeys) >= 2
        assert not any(isinstance(e, events.SessionEnded) for e in w.client_events[addr])


def test_the_end_of_the_overlap_tells_and_closes_the_previous_keys_members() -> None:
    """set_keys without the previous key: alice (previous key) gets a shutdown message saying why,
    and her session is closed once she acknowledged it; bob sees her quit and stays.
    Her client's next handshake under the previous key gets no answer at all."""
    w = world()
    alice = join(w, "alice", 1001, OLD)
    bob = join(w, "bob", 1002, NEW)
    assert w.server.set_keys(NEW, None, w.now) == 1
    w.settle()
    w.advance(SHUTDOWN_LINGER_S + 0.5)
    assert {"t": "shutdown", "text": KEY_RETIRED_TEXT} in w.inbox[alice]
    ended = [e for e in w.client_events[alice] if isinstance(e, events.SessionEnded)]
    assert [e.reason for e in ended] == ["closed"]
    assert {"t": "part", "room": "lobby", "nick": "alice", "reason": "quit"} in w.inbox[bob]
    assert not any(isinstance(e, events.SessionEnded) for e in w.client_events[bob])
    assert [e.kind for e in w.log if e.kind == "key-retired"] == ["key-retired"]
    say(w, bob, "still here", 1)  # bob's session is untouched
    written = len(w.written)
    w.clients[alice].connect(w.now)  # alice tries again with the key she has
    w.advance(10.0)
    to_alice = [data for data, addr in w.written[written:] if addr == alice]
    assert to_alice == [], "the retired key gets silence, like any wrong key"
    assert w.server.endpoint.stats["bad-token"] > 0


def test_without_a_previous_key_the_old_key_gets_silence() -> None:
    server = ChatServer(NEW, ServerSettings())
    w = ChatWorld(server)
    alice = ("127.0.0.1", 1001)
    w.add_client(alice, OLD)
    w.advance(5.0)
    assert w.written == []
    server.set_keys(NEW, OLD, w.now)  # a reload that adds it: the next retry gets in
    w.advance(10.0)
    assert w.clients[alice].connected


def test_a_session_keeps_the_key_it_began_with() -> None:
    """A message 1 under the other key for an existing session (as a rekey would
    be) is dropped: nobody can move a session to the other key."""
    w = world()
    alice = join(w, "alice", 1001, OLD)
    session_id = w.clients[alice].session_id
    assert session_id is not None and w.server.endpoint.uses_previous_key(session_id)
    new = HandshakeKey(NEW)
    message_1 = Initiator(new.psk32, new.f_hs, session_id, 1, w.now).message
    before = w.server.endpoint.stats["bad-token"]
    w.datagram(message_1, alice)
    assert w.server.endpoint.stats["bad-token"] == before + 1
    assert w.server.endpoint.uses_previous_key(session_id)


def test_a_rotation_while_running_keeps_everyone_until_the_overlap_ends() -> None:
    """What a reload after `udpchat-keygen --rotate` does: the running key becomes
    the previous one and a new key the current one. Nobody is dropped; both keys get
    in; a second rotation (a third key) ends the members of the oldest key."""
    server = ChatServer(OLD, ServerSettings())
    w = ChatWorld(server)
    alice = join(w, "alice", 1001, OLD)
    assert server.set_keys(NEW, OLD, w.now) == 0
    bob = join(w, "bob", 1002, NEW)
    say(w, alice, "hello bob", 1)
    assert texts(w, bob) == ["hello bob"]
    third = Fernet.generate_key()
    assert server.set_keys(third, NEW, w.now) == 1  # alice's key is gone
    w.advance(SHUTDOWN_LINGER_S + 0.5)
    assert {"t": "shutdown", "text": KEY_RETIRED_TEXT} in w.inbox[alice]
    say(w, bob, "still here", 2)
    assert not any(isinstance(e, events.SessionEnded) for e in w.client_events[bob])
