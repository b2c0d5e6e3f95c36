"""What a key holder can do to others, tried against the real daemon (issue 9).

Every member holds the pre-shared key, so these attacks need no cryptography: a
member uses its own session against third parties or against the other members.
Each test runs the real `twistd -n udpchat` on loopback, uses addresses in
127.0.0.0/8 as forged sources (binding a socket there is how a test forges one),
is bounded in count and time, and asserts the figure the issue names.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import ChatClient, Daemon

from udpchat.chat.lineids import new_line_id
from udpchat.core import wire
from udpchat.core.endpoint import ClientEndpoint

VICTIM_HOST = "127.0.0.3"  # a third party, never a member: it only counts what it gets


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon(tmp_path, subprocess_env, log_rejects_interval=1)
    yield d
    d.kill()


def own_datagram(core: ClientEndpoint, frames: bytes) -> bytes:
    """A DATA datagram of the key holder's own session carrying any frames, such as an
    ACK of everything (white-box: the core only ever builds valid ones)."""
    session = core._session  # noqa: SLF001
    assert session is not None
    keyset = session._keys[session._send_epoch]  # type: ignore[index]  # noqa: SLF001
    return session._seal(keyset, frames, time.time())  # noqa: SLF001


def drain(sock: socket.socket) -> int:
    """Bytes waiting on a non-blocking socket, read and counted."""
    total = 0
    while True:
        try:
            total += len(sock.recv(4096))
        except BlockingIOError:
            return total


def test_a_key_holder_cannot_aim_the_daemon_at_a_third_party(daemon: Daemon) -> None:
    """Finding 1: a member fills a room's history, then sends one authentic datagram
    of its own session from a victim's address carrying a join of that room (before:
    the history and its retransmissions went to the victim, hundreds of times the
    bytes), then keeps sending "blind" ACKs of everything from there, 20 a second
    (before: each one sped the sending up). The victim gets at most 3x the bytes that
    came from its address."""
    daemon.start()
    mallory = ChatClient(daemon.address, daemon.psk, nick="mallory")
    mallory.wait_for(lambda m: m["t"] == "welcome")
    mallory.send({"t": "join", "room": "full"})
    for i in range(50):
        mallory.send({"t": "say", "text": f"{i:03d} " + "h" * 380, "id": new_line_id()})
    mallory.send({"t": "join", "room": "lobby"})
    mallory.wait_for(lambda m: m["t"] == "join" and m.get("room") == "lobby", 20)
    mallory.poll(0.5)  # everything acknowledged both ways

    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind((VICTIM_HOST, 0))
    victim.setblocking(False)
    sent_from_victim = received_by_victim = 0
    try:
        mallory.send({"t": "join", "room": "full"})  # the history: ~25 KB
        for datagram in mallory.core.datagrams_to_send(time.time()):
            victim.sendto(datagram, daemon.address)
            sent_from_victim += len(datagram)
        time.sleep(1.5)  # the history, and its retransmissions to nobody
        received_by_victim = drain(victim)
        assert received_by_victim <= 3 * sent_from_victim, (received_by_victim, sent_from_victim)
        everything = wire.encode_ack_frame(wire.Ack(2**62))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            blind = own_datagram(mallory.core, everything)
            victim.sendto(blind, daemon.address)
            sent_from_victim += len(blind)
            time.sleep(0.05)
            received_by_victim += drain(victim)
        time.sleep(0.5)  # retransmissions after the flood
        received_by_victim += drain(victim)
    finally:
        victim.close()
        mallory.close()
    assert received_by_victim <= 3 * sent_from_victim, (received_by_victim, sent_from_victim)
    daemon.stop()
    log = daemon.log()
    assert "blind-ack" in log  # counted in the periodic summary, never answered
