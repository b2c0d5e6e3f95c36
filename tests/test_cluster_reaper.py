"""The reaper of a dead daemon (udpchat.daemon.cluster, REAP_SCRIPT), against a real
`redis-server`: two daemons in this process, each a real ChatServer and ClusterLink
without the UDP side (their members are fed to the chat rules directly), and the room's
stream read back from Redis, as every daemon reads it.

What it specifies (docs/CLUSTER.md, "Daemons that die"): when a daemon stops renewing
its lease, another one parts its members for everyone (reason "timeout") and frees their
nicks, except a member whose client came back through another daemon before the reap:
its nick is held by a live member with the same client id, so it is there, and a part
would tell the room it left. tests/test_cluster_failover.py shows the same end to end,
with a daemon killed with -9.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Generator
from typing import Any, cast

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from cryptography.fernet import Fernet
from redis_server import REDIS_SERVER, SKIP_REASON, RedisServer
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, globalLogPublisher

from udpchat.chat.cluster import RoomEvent
from udpchat.chat.server import ChatServer, ServerSettings
from udpchat.core.wire import cluster_keys, fernet_key, psk_raw
from udpchat.daemon.cluster import ClusterLink, incarnation
from udpchat.daemon.clusterconfig import ClusterConfig
from udpchat.daemon.resp import RedisConnection
from udpchat.daemon.udp import ChatProtocol

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)

PSK = Fernet.generate_key()
SEAL_KEY, INDEX_KEY = cluster_keys(psk_raw(PSK))


def name(kind: str, value: str) -> str:
    """A key's name in Redis, as docs/CLUSTER.md states it: HMAC-SHA256 under the
    derived index key, 128 bits in hex."""
    return hmac.new(INDEX_KEY, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:32]


STREAM = f"udpchat:room:{name('room', 'lobby')}:events"
MEMBERS = f"udpchat:room:{name('room', 'lobby')}:members"


class Daemon:
    """A daemon of the cluster without its UDP port: the ChatServer, its ClusterLink
    to the test's Redis, and members fed straight to its chat rules."""

    def __init__(self, node: str, port: int) -> None:
        settings = ServerSettings(idle_timeout_s=3.0)
        self.server = ChatServer(PSK, settings, node=incarnation(node))
        # A clock that never runs: no session has timers here, only the link works.
        self.protocol = ChatProtocol(self.server, lambda _: True, Clock())
        config = ClusterConfig(host="127.0.0.1", port=port, node=node)
        self.link = ClusterLink(config, PSK, self.protocol, reactor, 3.0, 5)
        self.link.start()

    def hello(self, session: bytes, nick: str, client: str) -> None:
        """A session says hello (what the UDP side would feed after a handshake)."""
        rules = self.server.rules
        hello = {"t": "hello", "nick": nick, "room": "lobby", "client": client}

        def feed(now: float) -> None:
            rules.session_started(session, ("127.0.0.1", 1), now)
            rules.message_received(session, json.dumps(hello).encode(), now)

        self.protocol.call(feed)

    def member(self, session: bytes) -> str | None:
        """The member id of a welcomed session (None: not welcomed)."""
        assert self.server.cluster is not None
        return self.server.cluster.member_id(session)


def until(check: Any, what: str, timeout: float = 5.0) -> Any:
    """A Deferred that fires once `check()` (a Deferred or a value) is true."""

    @pytest_twisted.inlineCallbacks
    def wait() -> Generator[Any, Any, Any]:
        for _ in range(int(timeout / 0.02)):
            value = yield check()
            if value:
                return value
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"{what}: not within {timeout} s")

    return wait()


@pytest_twisted.inlineCallbacks
def test_the_reaper_parts_a_dead_daemons_members_except_those_back_elsewhere(
    redis: RedisServer,
) -> Generator[Any, Any, None]:
    """alice, bob and carol are on daemon A, dave on B, all in lobby. A dies (stops
    renewing its lease; it says nothing). alice's client reconnects through B with
    its client id before the reap: B joins her (her nick is taken over). The reap
    then parts carol (timeout) and frees her nick, but not alice: no part for her, her
    nick stays with her member on B, and lobby's member list holds her once. bob's
    client comes back only after the reap: he is seen to leave, then to join."""
    logged: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "udpchat" and "parted" in event:
            logged.append(f"{event['parted']} parted, {event['back']} back")

    globalLogPublisher.addObserver(cast(ILogObserver, observe))
    a, b = Daemon("a", redis.port), Daemon("b", redis.port)
    conn = RedisConnection(reactor, "127.0.0.1", redis.port)
    fernet = fernet_key(SEAL_KEY)

    def events() -> Any:
        d = conn.execute_command("XRANGE", STREAM, "-", "+")
        return d.addCallback(
            lambda entries: [RoomEvent.from_json(fernet.decrypt(f[1])) for _, f in entries]
        )

    try:
        a.hello(b"alice-a0", "alice", "c1a1c1a1c1a1c1a1")
        a.hello(b"bob-a000", "bob", "c2b0c2b0c2b0c2b0")
        a.hello(b"carol-a0", "carol", "c3c0c3c0c3c0c3c0")
        b.hello(b"dave-b00", "dave", "c4d0c4d0c4d0c4d0")
        yield until(lambda: events().addCallback(lambda e: len(e) == 4), "four joins")
        sessions = {b"alice-a0": "alice", b"bob-a000": "bob", b"carol-a0": "carol"}
        dead = {a.member(session): nick for session, nick in sessions.items()}
        a_node = name("node", a.link.node)
        yield a.link.stop()  # no goodbyes: as far as Redis knows, A just went silent

        b.hello(b"alice-b0", "alice", "c1a1c1a1c1a1c1a1")  # the same client id
        yield until(lambda: b.member(b"alice-b0"), "alice welcomed on B")
        alice_b = b.member(b"alice-b0")
        assert alice_b is not None
        # A's lease runs out now (instead of within a second): B's next renewal reaps.
        yield conn.execute_command("ZADD", "udpchat:nodes", "XX", 0, a_node)
        yield until(lambda: logged, "the reap")
        assert logged == ["2 parted, 1 back"]
        after = [(e.kind, e.nick, e.member, e.reason) for e in (yield events())[4:]]
        assert after[0] == ("join", "alice", alice_b, "")
        # The parts come in the order A's member list is read (a hash): compare as sets.
        parted = {("part", nick, member, "timeout") for member, nick in dead.items()}
        assert len(after) == 3 and set(after[1:]) == {p for p in parted if p[1] != "alice"}
        holder = yield conn.execute_command("GET", f"udpchat:nick:{name('nick', 'alice')}")
        assert holder[:32] == name("member", alice_b).encode()
        assert (yield conn.execute_command("GET", f"udpchat:nick:{name('nick', 'carol')}")) is None
        assert (yield conn.execute_command("HLEN", MEMBERS)) == 2  # alice (on B) and dave

        # bob's client comes back after the reap: his nick is free, he joins again.
        b.hello(b"bob-b000", "bob", "c2b0c2b0c2b0c2b0")
        yield until(lambda: b.member(b"bob-b000"), "bob welcomed on B")
        last = (yield events())[-1]
        assert (last.kind, last.nick, last.member) == ("join", "bob", b.member(b"bob-b000"))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, observe))
        conn.disconnect()
        yield b.link.stop()
