"""The cluster's engine adapter (udpchat.daemon.cluster.ClusterLink) on its own: how it
notices that Redis went away, even when Redis stops answering without closing its
connections, and how it comes back (docs/CLUSTER.md, "Split and merge"). Its two
Redis connections are replaced by a fake that answers only when told, and time is a
task.Clock: the scenarios take milliseconds. tests/test_cluster.py runs the same
link against a real redis-server."""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock

from udpchat.chat.server import ChatServer
from udpchat.daemon import cluster
from udpchat.daemon.clusterconfig import ClusterConfig
from udpchat.daemon.udp import ChatProtocol

PSK = Fernet.generate_key()


class FakeRedis:
    """A RedisConnection whose commands wait until the test answers them."""

    def __init__(self) -> None:
        self.sent: list[tuple[tuple[Any, ...], Deferred[Any]]] = []
        self.drops = 0

    def execute_command(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.sent.append((args, d))
        return d

    def waiting(self) -> list[tuple[Any, ...]]:
        return [args for args, d in self.sent if not d.called]

    def answer(self, script: str, value: Any) -> None:
        """Answer the first command waiting that runs `script` (or is that command)."""
        for args, d in self.sent:
            if not d.called and (args[0] == script or args[:2] == ("EVAL", script)):
                d.callback(value)
                return
        raise AssertionError(f"no {script[:30]!r} waiting among {self.waiting()}")

    def push(self) -> None:
        """What was sent is out at once here (RedisConnection.push)."""

    def drop(self) -> None:
        self.drops += 1
        for _, d in self.sent:
            if not d.called:
                d.errback(ConnectionLost("dropped"))

    def disconnect(self) -> None:
        self.drop()


def link_on_fakes() -> tuple[cluster.ClusterLink, ChatServer, FakeRedis, Clock]:
    """A ClusterLink as start() leaves it, on fake connections; the first epoch read."""
    clock = Clock()
    server = ChatServer(PSK, node="a.000001")
    protocol = ChatProtocol(server, lambda host: True, clock, clock.seconds)
    # idle_timeout 3 s: a lease of 1 s, so the grace after a merge is MERGE_GRACE_S
    link = cluster.ClusterLink(ClusterConfig("127.0.0.1"), PSK, protocol, clock, 3.0, 5)
    cmd, reader = FakeRedis(), FakeRedis()
    link._cmd, link._reader = cmd, reader  # noqa: SLF001 - what start() connects
    link._running = True  # noqa: SLF001
    protocol.after_service = link.flush
    link._command(link._rejoin_args(), "register").addCallback(link._first_epoch)  # noqa: SLF001
    cmd.answer(cluster.REJOIN_SCRIPT, [b"epoch-1", 1])
    link._read()  # noqa: SLF001
    return link, server, cmd, clock


def test_redis_that_stops_answering_splits_the_daemon_off_after_stall_s() -> None:
    """A command left unanswered for STALL_S (Redis frozen, or the network to it
    silent: nothing closes the connection) makes the link drop the connection at its
    next heartbeat: the rules split off (and serve their members), instead of
    waiting minutes for TCP to give up."""
    link, server, cmd, clock = link_on_fakes()
    assert server.cluster is not None and not server.cluster.split
    link._heartbeat()  # noqa: SLF001 - the lease's renewal, left unanswered
    clock.advance(cluster.STALL_S / 2)
    link._heartbeat()  # noqa: SLF001
    assert cmd.drops == 0 and not server.cluster.split
    clock.advance(cluster.STALL_S)
    link._heartbeat()  # noqa: SLF001
    assert cmd.drops == 1
    assert server.cluster.split


def test_back_after_a_split_it_learns_what_redis_kept_before_telling_the_rules() -> None:
    """While split the link only pings (renewing its lease would hide from the rejoin
    whether a reaper took it for dead); the first answer starts the rejoin, and only
    its answer ends the split: Redis' epoch changed, so Redis restarted empty, and
    the streams are read from their start again. For a while after, its heartbeats
    reap nobody: every daemon's lease ran out while Redis was away."""
    link, server, cmd, clock = link_on_fakes()
    assert server.cluster is not None
    link._reader.drop()  # noqa: SLF001 - Redis went away: the blocking read fails
    assert server.cluster.split
    cmd.sent.clear()
    clock.advance(1.0)
    link._heartbeat()  # noqa: SLF001
    assert cmd.waiting() == [("PING",)]
    cmd.answer("PING", b"PONG")
    (rejoin,) = cmd.waiting()
    assert rejoin[:2] == ("EVAL", cluster.REJOIN_SCRIPT)
    assert server.cluster.split  # not before the rejoin's answer
    cmd.answer(cluster.REJOIN_SCRIPT, [b"epoch-2", 1])
    assert not server.cluster.split
    assert link._inbox_last == b"0-0"  # noqa: SLF001
    link._heartbeat()  # noqa: SLF001
    assert heartbeat(cmd)[-1] == 0  # no reaping yet
    cmd.answer(cluster.HEARTBEAT_SCRIPT, [])
    clock.advance(cluster.MERGE_GRACE_S + 0.1)
    link._heartbeat()  # noqa: SLF001
    assert heartbeat(cmd)[-1] == 1
    assert not server.cluster.split


def heartbeat(cmd: FakeRedis) -> tuple[Any, ...]:
    (beat,) = [args for args in cmd.waiting() if args[:2] == ("EVAL", cluster.HEARTBEAT_SCRIPT)]
    return beat
