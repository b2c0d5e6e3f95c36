"""Several daemons, one chat (issue 13, docs/CLUSTER.md), with real parts: a real
`redis-server` on a loopback port, real `twistd udpchat` daemons with a [cluster]
section, and real `udpchat-client`s in pipe mode, one per daemon.

The sans-IO side of it (udpchat.chat.cluster) is specified in test_cluster_rules.py.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_daemon import ClusterDaemon, started_daemons
from pipe_client import PipeClient
from redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)

HISTORY = re.compile(r"^\[\d\d:\d\d\] ")
#: A Fernet token as Redis holds it (base64 of version byte 0x80 and a timestamp).
FERNET_TOKEN = re.compile(rb"gAAAAA[A-Za-z0-9_=-]+")


@pytest.fixture
def three_daemons(
    tmp_path: Path, subprocess_env: dict[str, str], redis: RedisServer, psk_file: Path
) -> Iterator[list[ClusterDaemon]]:
    """Three daemons on one Redis, sharing one key file."""
    with started_daemons(tmp_path, subprocess_env, redis.url, psk_file, history_lines=5) as daemons:
        yield daemons


def test_three_members_on_three_daemons_share_one_room_in_one_order(
    three_daemons: list[ClusterDaemon], redis: RedisServer, subprocess_env: dict[str, str],
    clients: Callable[..., PipeClient],
) -> None:  # fmt: skip
    """The issue's "done when": alice, bob and carol, each on a daemon of their own,
    see each other join; what they say interleaved reaches the other two in one and
    the same order; bob's nick is refused to a newcomer on a third daemon; /who lists
    all three; dave, joining later on a fourth connection, gets the room's history.
    What Redis holds names no nick, room or text."""
    a, b, c = three_daemons
    alice = clients(a.port, a.key_file, "alice", subprocess_env)
    bob = clients(b.port, b.key_file, "bob", subprocess_env)
    carol = clients(c.port, c.key_file, "carol", subprocess_env)

    # Joining at once through three daemons: each sees the joins from the moment it
    # entered the room (perhaps just before its own join went out) to the last, in
    # the one order of the member who entered first and sees all three.
    def joins(lines: list[str]) -> list[str]:
        return [line for line in lines if line.endswith(" has joined lobby")]

    deadline = time.monotonic() + 20
    while not any(len(joins(m.lines)) == 3 for m in (alice, bob, carol)):
        assert time.monotonic() < deadline, [m.lines for m in (alice, bob, carol)]
        time.sleep(0.05)
    order = next(joins(m.lines) for m in (alice, bob, carol) if len(joins(m.lines)) == 3)

    def from_own_on(own: str) -> Callable[[list[str]], bool]:
        def check(lines: list[str]) -> bool:
            seen = joins(lines)
            return own in seen and seen == order[len(order) - len(seen) :]

        return check

    for member in (alice, bob, carol):
        own_join = f"-!- {member.nick} has joined lobby"
        member.wait_until(from_own_on(own_join), f"the joins from its own on, in {order}")

    # Interleaved from three daemons at once: one order for everyone.
    for i in range(5):
        alice.type(f"a{i}")
        bob.type(f"b{i}")
        carol.type(f"c{i}")
    for member in (alice, bob, carol):
        member.wait_until(lambda lines: sum(line.startswith("<") for line in lines) >= 10, "10")

    def room_lines(member: PipeClient) -> list[str]:
        return [line for line in member.lines if line.startswith("<")]

    # Each sees the other two's 10 lines; merged with its own at the same places,
    # the three views are one sequence: compare each pair on the lines both saw.
    views = {m.nick: room_lines(m) for m in (alice, bob, carol)}
    for one, other in (("alice", "bob"), ("bob", "carol"), ("alice", "carol")):
        common = set(views[one]) & set(views[other])
        assert [x for x in views[one] if x in common] == [x for x in views[other] if x in common]
    for member in (alice, bob, carol):
        own_lines = tuple(f"{member.nick[0]}{i}" for i in range(5))
        for nick in {"alice", "bob", "carol"} - {member.nick}:
            assert member.said(nick) == [f"{nick[0]}{i}" for i in range(5)]
        assert not any(line.endswith(own_lines) for line in room_lines(member))

    # bob is taken, cluster-wide: a newcomer on daemon c is refused and picks another.
    other_bob = clients(c.port, c.key_file, "bob", subprocess_env)
    other_bob.wait_for_start("!!! bob is taken")
    other_bob.wait_for_start("-!- you are bob")
    assert not other_bob.saw_start("-!- you are bob in lobby")
    other_bob.kill()

    carol.type("/who")
    carol.wait_until(
        lambda lines: any(
            line.startswith("-!- Users in lobby:")
            and {"alice", "bob", "carol"} <= set(line.split())
            for line in lines
        ),
        "/who with alice, bob and carol",
    )

    # Five more lines, one after the other; dave, later, on daemon a, gets them as the
    # room's history (history_lines = 5), in that order, before his own join.
    said = [
        (alice, "then 1"),
        (bob, "then 2"),
        (carol, "then 3"),
        (alice, "then 4"),
        (bob, "then 5"),
    ]
    for speaker, text in said:
        speaker.type(text)
        for member in {alice, bob, carol} - {speaker}:
            member.wait_for(f"<{speaker.nick}> {text}")
    dave = clients(a.port, a.key_file, "dave", subprocess_env)
    dave.wait_for("-!- dave has joined lobby")
    history = [HISTORY.sub("", line) for line in dave.lines if HISTORY.match(line)]
    assert history == [f"<{speaker.nick}> {text}" for speaker, text in said]
    for member in (alice, bob, carol):
        member.wait_for("-!- dave has joined lobby")

    seen = redis.dump()
    assert b"udpchat:room:" in seen and b"udpchat:nick:" in seen
    # Fernet tokens are base64, where "bob" turns up by chance (in about one run in
    # ten): look for the names outside them. (HMAC names are hex: no o, l, v, r, y.)
    seen = FERNET_TOKEN.sub(b"", seen)
    for secret in (b"alice", b"bob", b"carol", b"dave", b"lobby", b"then "):
        assert secret not in seen


#: How long Redis is away in the split test, from the moment it goes: short in the
#: suite (the code path is the same whatever the length: the daemons split off when
#: Redis fails them, and merge when it answers again). The issue's 10 s, and the
#: frozen variant (about 15 s: a frozen Redis is noticed only after STALL_S), with
#: UDPCHAT_TEST_SPLIT_OUTAGE_S=10 python -m pytest tests/test_cluster.py -k split
SPLIT_OUTAGE_S = float(os.environ.get("UDPCHAT_TEST_SPLIT_OUTAGE_S", "1.5"))
LONG_SPLIT = "UDPCHAT_TEST_SPLIT_OUTAGE_S" in os.environ


@pytest.mark.parametrize(
    "how",
    [
        "stopped",
        pytest.param(
            "frozen",
            marks=pytest.mark.skipif(
                not LONG_SPLIT, reason="long (set UDPCHAT_TEST_SPLIT_OUTAGE_S, e.g. 10)"
            ),
        ),
    ],
)
def test_a_split_redis_away_costs_no_line_and_shows_none_twice(
    how: str, three_daemons: list[ClusterDaemon], redis: RedisServer,
    subprocess_env: dict[str, str], clients: Callable[..., PipeClient],
) -> None:  # fmt: skip
    """The issue's "the engine stopped": alice, bob and carol talk on three daemons
    (dave beside alice); Redis goes away: "stopped", and started again empty on the
    same port (tests/redis_server.py keeps nothing on disk), or "frozen" (SIGSTOP:
    its connections stay open and silent) and thawed with its data. Every member is
    told its room is split, and whole again; meanwhile each daemon serves its own
    (dave sees alice at once); once merged, every member has seen every line the
    others said, before, during and after, exactly once, in each one's order, and
    none was refused; the logs say so."""
    a, b, c = three_daemons
    alice = clients(a.port, a.key_file, "alice", subprocess_env)
    dave = clients(a.port, a.key_file, "dave", subprocess_env)
    bob = clients(b.port, b.key_file, "bob", subprocess_env)
    carol = clients(c.port, c.key_file, "carol", subprocess_env)
    members = (alice, bob, carol, dave)
    for member in members:
        member.wait_for(f"-!- you are {member.nick} in lobby")
    speakers = (alice, bob, carol)
    for speaker in speakers:
        speaker.type(f"{speaker.nick} before")
    for member in members:
        for speaker in set(speakers) - {member}:
            member.wait_for(f"<{speaker.nick}> {speaker.nick} before")

    went = time.monotonic()
    redis.stop() if how == "stopped" else redis.freeze()
    for member in members:
        member.wait_for_start("-!- lobby is split: this server cannot reach")
    for speaker in speakers:
        speaker.type(f"{speaker.nick} during 1", f"{speaker.nick} during 2")
    dave.wait_for("<alice> alice during 2")  # on alice's daemon: at once
    assert not dave.saw_start("<bob> bob during")
    time.sleep(max(0.0, went + SPLIT_OUTAGE_S - time.monotonic()))
    redis.start() if how == "stopped" else redis.thaw()

    for member in members:
        member.wait_for_start("-!- lobby is whole again: this server reaches")
    for speaker in speakers:
        speaker.type(f"{speaker.nick} after")
    said = {
        s.nick: [f"{s.nick} {w}" for w in ("before", "during 1", "during 2", "after")]
        for s in speakers
    }
    for member in members:
        for speaker in set(speakers) - {member}:
            member.wait_for(f"<{speaker.nick}> {speaker.nick} after")
    for member in members:
        for speaker in set(speakers) - {member}:
            assert member.said(speaker.nick) == said[speaker.nick], member.lines
        assert not [line for line in member.lines if line.startswith("!!!")], member.lines
    assert dave.lines.index("<alice> alice during 2") < next(
        i for i, line in enumerate(dave.lines) if line.startswith("-!- lobby is whole again")
    )
    for daemon, here in zip(three_daemons, ("2 members", "1 member", "1 member"), strict=True):
        log = daemon.log()
        assert f"Cluster: split: serving lobby ({here} here) on this daemon alone" in log, log
        # (2 events: the two "during" lines; one more if the daemon had not read its
        # speaker's "before" back when Redis went: it is published again, shown once.)
        merged = re.search(r"Cluster: merged again: lobby; (\d+) kept events? published, ", log)
        assert merged is not None and int(merged[1]) >= 2, log
        assert ("(Redis had restarted empty)" in log) == (how == "stopped"), log
