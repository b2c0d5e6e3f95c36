"""A real network move: two network namespaces joined by a veth pair, which this test
creates and removes itself (iproute2; root only, skipped with the reason otherwise).

The daemon runs in one namespace, a member's client in the other. Mid-conversation
the member's host changes the source address of its traffic (a new address on the
same link, as after a DHCP renewal or a Wi-Fi handover): the session follows, the
daemon checks the new address (PROTOCOL.md 5.3, 11.7), nothing is lost or repeated,
and the move is logged once. Addresses are from TEST-NET-1 (192.0.2.0/24), inside
the test's own namespaces only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from pipe_client import PipeClient

SERVER_IP, FIRST_IP, SECOND_IP = "192.0.2.1", "192.0.2.2", "192.0.2.3"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """(server namespace, client namespace), joined by a veth pair on 192.0.2.0/24;
    the client side has two addresses and sends from the first."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (apt-get install iproute2)")
    tag = uuid.uuid4().hex[:6]
    server, client = f"ucs-{tag}", f"ucc-{tag}"
    try:
        ip("netns", "add", server)
        ip("netns", "add", client)
    except (subprocess.CalledProcessError, OSError) as exc:
        for name in (server, client):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        veth = ["link", "add", f"s{tag}", "netns", server, "type", "veth"]
        ip(*veth, "peer", "name", f"c{tag}", "netns", client)
        ip("-n", server, "addr", "add", f"{SERVER_IP}/24", "dev", f"s{tag}")
        ip("-n", client, "addr", "add", f"{FIRST_IP}/24", "dev", f"c{tag}")
        ip("-n", client, "addr", "add", f"{SECOND_IP}/24", "dev", f"c{tag}")
        for name, dev in ((server, f"s{tag}"), (client, f"c{tag}")):
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "link", "set", dev, "up")
        ip("-n", client, "route", "replace", "192.0.2.0/24", "dev", f"c{tag}", "src", FIRST_IP)
        yield server, client
    finally:
        for name in (server, client):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_a_member_whose_address_changes_keeps_its_session_and_every_line(
    namespaces: tuple[str, str],
    tmp_path: Path,
    subprocess_env: dict[str, str],
    clients: Callable[..., PipeClient],
) -> None:
    server_ns, client_ns = namespaces
    in_server, in_client = ("ip", "netns", "exec", server_ns), ("ip", "netns", "exec", client_ns)
    env = dict(subprocess_env, HOME=str(tmp_path / "home"))
    env.pop("UDPCHAT_KEY_FILE", None)
    daemon = Daemon(tmp_path, env, prefix=in_server, interface=SERVER_IP, history_lines=0)
    daemon.start()
    try:
        key = daemon.key_file
        talker = clients(daemon.port, key, "talker", env, host=SERVER_IP, prefix=in_server)
        talker.wait_for("-!- talker has joined lobby", timeout=40)
        mover = clients(daemon.port, key, "mover", env, host=SERVER_IP, prefix=in_client)
        mover.wait_for("-!- mover has joined lobby", timeout=40)
        before = [f"before {i:02d}" for i in range(40)]
        after = [f"after {i:02d}" for i in range(40)]
        talker.type(*before)
        mover.wait_until(lambda _: len(mover.said("talker")) >= 10, "the first lines")
        route = ["route", "replace", "192.0.2.0/24", "dev", f"c{client_ns[4:]}", "src", SECOND_IP]
        ip("-n", client_ns, *route)
        mover.type("from my new address")
        talker.type(*after)
        mover.wait_until(lambda _: len(mover.said("talker")) >= 80, "every line", timeout=30)
        talker.wait_for("<mover> from my new address", timeout=30)
        assert mover.said("talker") == before + after
        for client in (talker, mover):
            assert not [line for line in client.lines if line.startswith("!!!")]
            assert not [line for line in client.lines if "reconnect" in line]
        assert mover.finish() == 0 and talker.finish() == 0
    finally:
        daemon.stop()
    moves = [line for line in daemon.log().splitlines() if "Session of mover moved" in line]
    assert len(moves) == 1, moves
    assert f"from {FIRST_IP}:" in moves[0] and f"to {SECOND_IP}:" in moves[0]
