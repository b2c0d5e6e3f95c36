"""The real daemon (`twistd -n udpchat`) keeps the rooms' history across restarts and
kills, in a file that shows no chat to whoever has the disk but not the key, sets a
damaged file aside, and serves its metrics over HTTP."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import ChatClient, Daemon
from prometheus_client.parser import text_string_to_metric_families

from udpchat.core import events


@pytest.fixture
def daemon_at(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Callable[..., Daemon]]:
    """Make a Daemon in tmp_path with these settings; killed at the end if still running."""
    made: list[Daemon] = []

    def make(**settings: Any) -> Daemon:
        made.append(Daemon(tmp_path, subprocess_env, **settings))
        return made[-1]

    yield make
    for daemon in made:
        daemon.kill()


def delivered(client: ChatClient, message_id: int, timeout: float = 10.0) -> None:
    """Poll until the daemon has acknowledged the message (the client's core says
    MessageDelivered): from then on the daemon has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            isinstance(e, events.MessageDelivered) and e.message_id == message_id
            for e in client.events
        ):
            return
        client.poll(0.01)
    raise AssertionError(f"message {message_id} not acknowledged in {timeout} s")


def member(daemon: Daemon, nick: str, room: str) -> ChatClient:
    client = ChatClient(daemon.address, daemon.psk, nick)
    client.wait_for(lambda m: m["t"] == "welcome")
    client.send({"t": "join", "room": room})
    client.wait_for(lambda m: m["t"] == "join" and m["nick"] == nick)
    return client


def say(client: ChatClient, text: str, line_id: str) -> None:
    delivered(client, client.send({"t": "say", "text": text, "id": line_id}))


def replayed(client: ChatClient, count: int) -> list[tuple[str, str]]:
    """(nick, text) of the history lines the client was replayed (after a join they
    follow the join notice), once `count` came and nothing more within 0.2 s."""
    deadline = time.monotonic() + 10
    lines: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        lines = [(m["nick"], m["text"]) for m in client.messages if m.get("history")]
        if len(lines) >= count:
            break
        client.poll(0.02)
    client.poll(0.2)
    return [(m["nick"], m["text"]) for m in client.messages if m.get("history")]


def leave(*clients: ChatClient) -> None:
    """Say bye (so that a stopping daemon need not wait for their goodbye's ack)."""
    for client in clients:
        client.send({"t": "bye"})
        client.poll(0.05)
        client.close()


def on_disk(folder: Path) -> bytes:
    """The history file and whatever SQLite keeps beside it (WAL, index)."""
    files = sorted(folder.glob("chat.history*"))
    assert files, "no history file"
    return b"".join(p.read_bytes() for p in files)


def test_history_survives_sigterm_and_sigkill_and_the_file_shows_no_chat(
    tmp_path: Path, daemon_at: Callable[..., Daemon]
) -> None:
    """A line acknowledged to its sender survives a stop (SIGTERM) and a kill (SIGKILL
    right after the acknowledgement): a member who joins after the restart is replayed
    both. Meanwhile the history file and its WAL hold no text, nick or room name."""
    daemon = daemon_at().start()
    alice = member(daemon, "alicenick", "vaultroom")
    say(alice, "zebra crossing at noon", "00000000000000a1")
    leave(alice)
    assert daemon.stop() == 0

    daemon.start()
    bob = member(daemon, "bobnick", "vaultroom")
    assert replayed(bob, 1) == [("alicenick", "zebra crossing at noon")]
    say(bob, "yak shaving resumed", "00000000000000b2")
    daemon.kill()  # SIGKILL: no goodbye, no checkpoint, the WAL as it is
    bob.close()

    raw = on_disk(tmp_path)
    for clear in (b"zebra", b"yak shaving", b"alicenick", b"bobnick", b"vaultroom"):
        assert clear not in raw, clear

    daemon.start()
    carol = member(daemon, "carolnick", "vaultroom")
    assert replayed(carol, 2) == [
        ("alicenick", "zebra crossing at noon"),
        ("bobnick", "yak shaving resumed"),
    ]
    assert "restored 2 lines of 1 room" in daemon.log()
    leave(carol)
    assert daemon.stop() == 0


def test_a_damaged_history_file_is_set_aside_and_the_daemon_runs(
    tmp_path: Path, daemon_at: Callable[..., Daemon]
) -> None:
    """A history file SQLite cannot read is renamed chat.history.corrupt-TIMESTAMP
    with a log line that names both; the daemon starts with an empty history and
    keeps the new one. (And, by default, serves no metrics.)"""
    (tmp_path / "chat.history").write_bytes(b"not a database, a disk error perhaps " * 100)
    daemon = daemon_at().start()
    [moved] = [p for p in tmp_path.glob("chat.history.corrupt-*") if "-wal" not in p.name]
    assert moved.read_bytes().startswith(b"not a database")
    log = daemon.log()
    assert f"History file {tmp_path / 'chat.history'} is damaged" in log
    assert f"set it aside as {moved}" in log
    assert "restored 0 lines of 0 rooms" in log
    assert "Serving metrics" not in log
    alice = member(daemon, "alice", "room")
    say(alice, "after the damage", "00000000000000c3")
    bob = member(daemon, "bob", "room")
    assert replayed(bob, 1) == [("alice", "after the damage")]
    leave(alice, bob)
    assert daemon.stop() == 0
    assert (tmp_path / "chat.history").stat().st_size > 0


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """The page and its samples by (name, labels), read with Prometheus's own parser."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def test_metrics_endpoint_answers_with_the_counters_after_some_chat(
    daemon_at: Callable[..., Daemon],
) -> None:
    """metrics = 127.0.0.1:PORT: a plain HTTP GET of /metrics returns Prometheus text
    with members, rooms, sessions, lines, datagrams, drops by reason, handshakes and
    history writes; never a nick, a room name or a line."""
    port = free_tcp_port()
    daemon = daemon_at(metrics=f"127.0.0.1:{port}").start()
    assert f"Serving metrics at http://127.0.0.1:{port}/metrics" in daemon.log()
    alice = member(daemon, "alicenick", "vaultroom")
    bob = member(daemon, "bobnick", "vaultroom")
    for n in range(3):
        say(alice, f"zebra {n}", f"00000000000000d{n}")
    bob.wait_for(lambda m: m.get("text") == "zebra 2", also=(alice,))
    garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    garbage.sendto(b"\x07" * 40, daemon.address)  # an unknown datagram type: one drop
    garbage.close()
    time.sleep(0.2)

    text, samples = scrape(f"http://127.0.0.1:{port}/metrics")

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("udpchat_members") == 2
    assert value("udpchat_rooms") == 1
    assert value("udpchat_sessions") == 2
    assert value("udpchat_lines_relayed_total", kind="room") == 3
    assert value("udpchat_handshakes_total") == 2
    assert value("udpchat_datagrams_received_total") > 10
    assert value("udpchat_datagrams_sent_total") > 10
    assert value("udpchat_dropped_datagrams_total", reason="unknown-type") == 1
    assert value("udpchat_dropped_datagrams_total", reason="replay") == 0
    assert value("udpchat_history_lines_written_total") == 3
    assert value("udpchat_send_queue_bytes") >= 0
    assert "udpchat_retransmissions_total" in text
    for secret in ("alicenick", "bobnick", "vaultroom", "zebra"):
        assert secret not in text
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert info.value.code == 404
    assert "GET /metrics" not in daemon.log(), "no access log line per scrape"
    leave(alice, bob)
    assert daemon.stop() == 0
