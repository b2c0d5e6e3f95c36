"""Interoperation of an independent client written only from docs/PROTOCOL.md
(tests/spec_client.py, which imports nothing from udpchat) with the real daemon
(`twistd -n udpchat` on loopback). A reference `ChatClient` is the other member of
the conversation. Every wait is bounded by a timeout of a few seconds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import ChatClient, Daemon
from pipe_client import PipeClient
from spec_client import SpecClient, new_line_id
from udpproxy import UDPProxy


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon(tmp_path, subprocess_env).start()
    try:
        yield d
    finally:
        # Killed, not stopped: the spec clients no longer listen, so a graceful stop
        # would only wait out the shutdown linger (tests/test_daemon.py covers it).
        d.kill()


def joined_pair(daemon: Daemon) -> tuple[SpecClient, ChatClient]:
    """The spec client "alice" and a reference client "bob", both in lobby."""
    alice = SpecClient(daemon.address, daemon.psk)
    alice.connect()
    alice.send({"t": "hello", "nick": "alice", "room": "lobby", "client": alice.client_id})
    welcome = alice.wait_for(lambda m: m["t"] == "welcome", timeout=10)
    assert welcome == {"t": "welcome", "nick": "alice", "room": "lobby"}
    assert alice.epoch == 0
    bob = ChatClient(daemon.address, daemon.psk, "bob")
    bob.wait_for(lambda m: m["t"] == "welcome", also=(alice,))
    joined = alice.wait_for(
        lambda m: m == {"t": "join", "room": "lobby", "nick": "bob"}, also=(bob,)
    )
    assert joined
    return alice, bob


def exchange_lines(alice: SpecClient, bob: ChatClient, tag: str) -> None:
    """A say each way; the spec client acknowledges bob's line, and the daemon
    acknowledges alice's (nothing of hers stays in flight)."""
    line_id = alice.say(f"hello from alice {tag}")
    got = bob.wait_for(lambda m: m["t"] == "say" and m.get("id") == line_id, also=(alice,))
    assert got == {
        "t": "say",
        "room": "lobby",
        "nick": "alice",
        "text": f"hello from alice {tag}",
        "id": line_id,
    }

    bob_id = new_line_id()
    bob.send({"t": "say", "text": f"hi alice {tag}", "id": bob_id})
    got = alice.wait_for(lambda m: m["t"] == "say" and m.get("id") == bob_id, also=(bob,))
    assert got == {
        "t": "say",
        "room": "lobby",
        "nick": "bob",
        "text": f"hi alice {tag}",
        "id": bob_id,
    }
    seq = next(s for s, m in alice.received_seqs.items() if m is got)
    # Within the 25 ms ACK delay plus a little, an ACK covering it has gone out, and
    # alice's own line has been acknowledged by the daemon.
    alice.pump(0.3, also=(bob,))
    assert any(cumulative > seq for cumulative in alice.acks_sent)
    assert not alice.inflight and not alice.queue
    # The daemon took the ACK: it does not retransmit the line (its RTO is >= 0.2 s).
    duplicates = alice.duplicates
    alice.pump(0.7, also=(bob,))
    assert alice.duplicates == duplicates
    assert alice.ended is None


def test_handshake_hello_and_lines_both_ways(daemon: Daemon) -> None:
    """The spec client completes the handshake with the real daemon, says hello and
    gets welcome; its say reaches the reference client as {"t":"say",...} with its
    line id, and a say from the reference client reaches it and is acknowledged."""
    alice, bob = joined_pair(daemon)
    try:
        exchange_lines(alice, bob, "epoch 0")
        assert alice.drops == {}
    finally:
        alice.shutdown()
        bob.close()


def test_rekey_with_resume_tag_keeps_the_session(daemon: Daemon) -> None:
    """Two rekeys (message 1 with epoch+1 and the resume tag of section 2.6): after
    each, the daemon answers, switches to the new epoch once the spec client's PING
    confirms it, and chat lines keep flowing both ways on the same session."""
    alice, bob = joined_pair(daemon)
    try:
        for epoch in (1, 2):
            before = dict(alice.rx_epochs)
            alice.rekey()
            alice.pump(0.3, also=(bob,))
            assert alice.epoch == epoch, alice.drops
            exchange_lines(alice, bob, f"epoch {epoch}")
            # The daemon now sends under the new key set.
            assert alice.rx_epochs.get(epoch, 0) > before.get(epoch, 0)
        assert alice.ended is None
        assert alice.drops == {}
    finally:
        alice.shutdown()
        bob.close()


@pytest.mark.parametrize("how", ["close", "bye"])
def test_leaving_is_seen_as_part(daemon: Daemon, how: str) -> None:
    """A CLOSE frame, or a bye (the daemon then closes the session with its own
    CLOSE), makes the reference client see {"t":"part",...,"reason":"quit"}."""
    alice, bob = joined_pair(daemon)
    try:
        if how == "close":
            alice.close()
        else:
            alice.send({"t": "bye"})
            alice.pump(1.0, also=(bob,))
            assert alice.peer_closed and alice.ended == "closed"
        part = bob.wait_for(lambda m: m["t"] == "part", timeout=5, also=(alice,))
        assert part == {"t": "part", "room": "lobby", "nick": "alice", "reason": "quit"}
    finally:
        alice.shutdown()
        bob.close()


class TypeCountingProxy(UDPProxy):
    """A perfect proxy that counts datagrams by direction and type (first byte)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        self.types: Counter[tuple[str, int]] = Counter()

    def _forward(self, direction: str, client: tuple[str, int], data: bytes, arrival: int) -> None:
        self.types[(direction, data[0])] += 1
        super()._forward(direction, client, data, arrival)


def pump_until(alice: SpecClient, condition: Callable[[], bool], what: str) -> None:
    """Poll the spec client (so it keeps acknowledging) until ``condition`` holds."""
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in 10 s; spec client got {alice.messages}")
        alice.poll(0.02)


def test_a_version_1_client_and_a_room_keys_client_share_a_room(
    daemon: Daemon, subprocess_env: dict[str, str]
) -> None:
    """The spec client (version 1: no caps) and a real udpchat-client in pipe mode (it
    negotiates "room-keys") in one room each see the other's line: the daemon sends
    the spec client plain DATA only, and the real client its room's lines sealed in
    ENVELOPEs, acknowledged with ENVELOPEs."""
    alice = SpecClient(daemon.address, daemon.psk)
    proxy = TypeCountingProxy(daemon.address)
    proxy.start()
    bob: PipeClient | None = None
    try:
        alice.connect()
        alice.send({"t": "hello", "nick": "alice", "room": "lobby", "client": alice.client_id})
        alice.wait_for(lambda m: m["t"] == "welcome", timeout=10)
        bob = PipeClient(proxy.port, daemon.key_file, "bob", subprocess_env)
        pump_until(
            alice,
            lambda: {"t": "join", "room": "lobby", "nick": "bob"} in alice.messages,
            "bob's join",
        )
        # bob acknowledges in ENVELOPEs once the daemon said yes to its caps.
        pump_until(alice, lambda: proxy.types[("to_server", 0x04)] > 0, "an ENVELOPE from bob")

        alice.say("hello from the spec client")
        pump_until(alice, lambda: "<alice> hello from the spec client" in bob.lines, "alice's line")
        bob.type("hi from udpchat-client")
        got = alice.wait_for(lambda m: m["t"] == "say", timeout=10)
        assert got == {
            "t": "say",
            "room": "lobby",
            "nick": "bob",
            "text": "hi from udpchat-client",
            "id": got["id"],
        }
        assert proxy.types[("to_client", 0x04)] > 0  # alice's line reached bob sealed
        assert not [m for m in alice.messages if m["t"] in ("caps", "room-key")]
        assert alice.drops == {}  # never an ENVELOPE (or anything else odd) for her
        assert bob.lines.count("<alice> hello from the spec client") == 1
        assert not [line for line in bob.lines if line.startswith("!!!")]
    finally:
        if bob is not None:
            bob.kill()
        proxy.stop()
        alice.shutdown()
