"""The cluster's Redis client (udpchat.daemon.resp): RESP2 encoding and parsing in
memory, and a round trip with a real redis-server on loopback, including a restart of
Redis under an open connection."""

from __future__ import annotations

import socket
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from redis_server import RedisServer
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from udpchat.daemon.resp import RedisConnection, RedisError, encode_command, parse_reply


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode_command(("SET", b"k\x00", 5, "é")) == (
        b"*4\r\n$3\r\nSET\r\n$2\r\nk\x00\r\n$1\r\n5\r\n$2\r\n\xc3\xa9\r\n"
    )
    with pytest.raises(TypeError):
        encode_command(("SET", None))


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"+OK\r\n", b"OK"),
        (b":42\r\n", 42),
        (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", [b"a", [1]]),
        (b"*0\r\n", []),
    ],
)
def test_replies_of_every_kind_parse_and_a_part_waits_for_the_rest(wire: bytes, value: Any) -> None:
    assert parse_reply(wire) == (value, len(wire))
    for cut in range(len(wire)):
        assert parse_reply(wire[:cut]) is None


def test_an_error_reply_is_a_redis_error_and_garbage_is_refused() -> None:
    parsed = parse_reply(b"-ERR wrong\r\n")
    assert parsed is not None and isinstance(parsed[0], RedisError)
    assert str(parsed[0]) == "ERR wrong"
    with pytest.raises(RedisError):
        parse_reply(b"?what\r\n")
    with pytest.raises(RedisError):
        parse_reply(b"$99999999999\r\n")


@pytest_twisted.inlineCallbacks
def test_a_round_trip_with_a_real_redis_that_restarts(redis: RedisServer) -> Iterator[Any]:
    """Commands sent before the connection is up wait for it; replies come back in
    order and typed; an error reply fails its command only; after Redis restarted on
    the same port the connection comes back by itself within a few seconds."""
    conn = RedisConnection(reactor, "127.0.0.1", redis.port, db=2)
    try:
        first: Deferred[Any] = conn.execute_command("SET", "k", "v")
        assert (yield first) == b"OK"
        assert (yield conn.execute_command("GET", "k")) == b"v"
        assert (yield conn.execute_command("INCR", "n")) == 1
        entry = yield conn.execute_command("XADD", "s", "*", "f", b"\x00\xff")
        assert isinstance(entry, bytes)
        assert (yield conn.execute_command("XREAD", "STREAMS", "s", "0")) == [
            [b"s", [[entry, [b"f", b"\x00\xff"]]]]
        ]
        with pytest.raises(RedisError, match="WRONGTYPE"):
            yield conn.execute_command("INCR", "s")
        assert (yield conn.execute_command("GET", "nothing")) is None
        redis.stop()
        with pytest.raises(Exception):  # noqa: B017 - lost, or refused while away
            yield conn.execute_command("GET", "k")
        redis.start()
        for _ in range(50):  # reconnects within its 2 s maximum delay
            yield deferLater(reactor, 0.1, lambda: None)
            try:
                reply = yield conn.execute_command("PING")
            except Exception:  # noqa: BLE001 - still reconnecting
                continue
            assert reply == b"PONG"
            break
        else:
            raise AssertionError("no reconnection within 5 s")
    finally:
        conn.disconnect()


@pytest_twisted.inlineCallbacks
def test_push_hands_a_command_to_the_kernel_before_the_reactor_turns() -> Generator[Any, Any, None]:
    """The daemon acknowledges a line in the same pass as it asks Redis to publish
    it; push() puts the command into the socket at once (Twisted would write it at
    its next turn), so that a kill -9 after the acknowledgement cannot lose it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    conn = RedisConnection(reactor, "127.0.0.1", listener.getsockname()[1])
    try:
        accepted: tuple[socket.socket, Any] = yield deferToThread(listener.accept)
        server = accepted[0]
        for _ in range(50):  # the client side's connectionMade
            if conn._proto is not None:  # noqa: SLF001
                break
            yield deferLater(reactor, 0.01, lambda: None)
        conn.execute_command("PING").addErrback(lambda _: None)  # never answered
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.recv(100)  # written to Twisted's buffer only
        conn.push()
        assert server.recv(100) == b"*1\r\n$4\r\nPING\r\n"  # no reactor turn since
        server.close()
    finally:
        conn.disconnect()
        listener.close()
