"""A daemon of a cluster killed with -9 (issue 13, docs/CLUSTER.md), with real parts:
a real `redis-server`, three real `twistd udpchat` daemons and real `udpchat-client`s in
pipe mode, each given the list of the three daemons (its own first).

The daemons' idle_timeout is short (UDPCHAT_TESTING_ALLOW_SHORT_IDLE_TIMEOUT), so that a
dead daemon's lease (a third of it) ends within two seconds and the test stays quick.
The reaper's rule itself is specified in test_cluster_reaper.py, the client's move to
the next address in test_client_chatclient.py (both without daemons).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_daemon import ClusterDaemon, started_daemons
from pipe_client import PipeClient
from redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

from udpchat.core.limits import TESTING_SHORT_IDLE_ENV

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)

#: The daemons' idle_timeout: their leases last a third of it (2 s).
IDLE_TIMEOUT_S = 6
#: dave, who says nothing, counts a silent daemon as gone after this long
#: (--idle-timeout), should none of his datagrams meet the dead port (his
#: acknowledgements of alice's lines usually do). Once he is back, the daemons'
#: keepalives (a third of their idle_timeout: every 2 s) keep his session alive
#: while nobody talks; he must not flap, or he would miss alice's quit.
DAVE_IDLE_TIMEOUT_S = 3
LINES = [f"line {i:02d}" for i in range(30)]
HISTORY = re.compile(r"^\[\d\d:\d\d\] ")
REAPED = re.compile(
    r"of its members, (\d+) left their rooms \(timeout\) and (\d+) had come back through"
)


@pytest.fixture
def env(subprocess_env: dict[str, str]) -> dict[str, str]:
    return {**subprocess_env, TESTING_SHORT_IDLE_ENV: "1"}


@pytest.fixture
def three_daemons(
    tmp_path: Path, env: dict[str, str], redis: RedisServer, psk_file: Path
) -> Iterator[list[ClusterDaemon]]:
    settings = {"idle_timeout": IDLE_TIMEOUT_S}
    with started_daemons(tmp_path, env, redis.url, psk_file, **settings) as daemons:
        yield daemons


def about(nick: str, lines: list[str]) -> list[str]:
    """The notices about `nick` joining or leaving, in order."""
    return [line for line in lines if line.startswith(f"-!- {nick} has ")]


def test_a_daemon_killed_with_9_costs_no_acknowledged_line(
    three_daemons: list[ClusterDaemon], env: dict[str, str], psk_file: Path,
    clients: Callable[..., PipeClient],
) -> None:  # fmt: skip
    """alice and dave are on daemon a, bob on b, carol on c, all in lobby; each client
    has the three daemons' addresses, its own first. alice says 30 lines, one every
    30 ms; after the tenth reached bob, daemon a is killed with -9.

    alice's and dave's clients meet "port unreachable" (for a line, for an
    acknowledgement), move on to b and join again with their client ids, about a
    second after the kill. Another daemon reaps a when its lease ends (2 s). So, with
    these timings, both are back before the reap: bob and carol see each join again
    and no part, since the reaper skips a member whose client holds its nick again.
    The other order (a client slower than the reap) is allowed too: then they see it
    leave (timeout) and come back. Either way, what bob and carol see agrees with the
    reaper's count (its log line), and nobody is seen to leave while there.

    Every line alice's client had acknowledged (it exits 0: all 30) is seen by bob and
    carol exactly once, in order, live; and by dave exactly once, in order, live or
    (those said while he was away) from the history replayed on his rejoin."""
    a, b, c = three_daemons

    def daemons_from(first: ClusterDaemon) -> str:
        start = three_daemons.index(first)
        order = three_daemons[start:] + three_daemons[:start]
        return ",".join(f"127.0.0.1:{d.port}" for d in order)

    bob = clients(None, psk_file, "bob", env, host=daemons_from(b))
    carol = clients(None, psk_file, "carol", env, host=daemons_from(c))
    bob.wait_for("-!- you are bob in lobby")
    carol.wait_for("-!- you are carol in lobby")
    alice = clients(None, psk_file, "alice", env, host=daemons_from(a))
    dave = clients(
        None, psk_file, "dave", env, "--idle-timeout", str(DAVE_IDLE_TIMEOUT_S),
        host=daemons_from(a),
    )  # fmt: skip
    for member in (bob, carol):
        member.wait_for("-!- dave has joined lobby")
        member.wait_for("-!- alice has joined lobby")

    def talk() -> None:
        for line in LINES:
            alice.type(line)
            time.sleep(0.03)

    talking = threading.Thread(target=talk)
    talking.start()
    bob.wait_for("<alice> line 09")
    killed_at = time.monotonic()
    assert a.proc is not None
    a.proc.kill()  # SIGKILL: no goodbye, no part, its lease simply stops
    talking.join()

    gone = f"(nothing is listening on 127.0.0.1:{a.port} any more; next: 127.0.0.1:{b.port})"
    alice.wait_until(
        lambda lines: any(line.endswith(gone) for line in lines), "the lost daemon named"
    )
    for member in (bob, carol):
        member.wait_until(lambda lines: len(about("dave", lines)) >= 2, "dave back", timeout=15)
        member.wait_until(lambda lines: len(about("alice", lines)) >= 2, "alice back")
    reaped: list[tuple[str, ...]] = []
    while not reaped:
        assert time.monotonic() < killed_at + 15, "no daemon reaped a"
        reaped = [m.groups() for d in (b, c) for m in REAPED.finditer(d.log())]
        time.sleep(0.05)
    assert len(reaped) == 1  # exactly one daemon reaps each dead one
    parted, back = map(int, reaped[0])
    assert parted + back == 2  # alice and dave

    assert alice.finish() == 0  # every line acknowledged, then bye
    for member in (bob, carol):
        member.wait_for("-!- alice has left lobby (quit)")
        assert member.said("alice") == LINES
        seen = {nick: about(nick, member.lines) for nick in ("alice", "dave")}
        assert seen["alice"].pop() == "-!- alice has left lobby (quit)"  # her bye, at the end
        for nick, notices in seen.items():
            joined, left = f"-!- {nick} has joined lobby", f"-!- {nick} has left lobby (timeout)"
            # Back before the reap: joined again, no part; after it: left, then joined.
            assert notices in ([joined, joined], [joined, left, joined])
        # What was seen agrees with the reaper: a part for each member it parted.
        assert sum(len(notices) == 3 for notices in seen.values()) == parted

    dave.wait_for("-!- alice has left lobby (quit)")
    shown = [HISTORY.sub("", line) for line in dave.lines if HISTORY.sub("", line).startswith("<")]
    assert shown == [f"<alice> {line}" for line in LINES]
    assert dave.lines.count("-!- reconnected") == 1  # moved once, then stayed
