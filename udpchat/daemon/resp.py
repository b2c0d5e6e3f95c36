"""A small Redis client on Twisted (RESP2), for the cluster link (udpchat.daemon.cluster).

What the link needs and no more: commands as argument lists, answered in order with
Deferreds (bulk strings as bytes, integers as int, arrays as lists, nil as None, an
error reply as a RedisError failure); AUTH and SELECT on every (re)connection; and
reconnecting within a couple of seconds once Redis is back. Nothing blocks the reactor.

Why not txredisapi: it imports `twisted.internet.ssl` at import time, which needs
pyOpenSSL, and with pyOpenSSL installed Twisted loads its TLS code in every process
that imports the reactor (about 0.1 s of CPU per start here, daemon and client alike).
The protocol is a few dozen lines: https://redis.io/docs/latest/develop/reference/protocol-spec/
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol, ReconnectingClientFactory
from twisted.python.failure import Failure

__all__ = ["RedisConnection", "RedisError", "parse_reply", "encode_command"]

#: Commands held while (re)connecting; beyond this they fail at once (bounded memory
#: while Redis is away; the link says Redis is unreachable).
MAX_QUEUED = 4096
#: Largest reply element we accept (a bulk string or an array's length): a confused
#: or hostile server cannot make us buffer without bound.
MAX_REPLY_BYTES = 64 * 1024 * 1024

Reply = bytes | int | list[Any] | None


class RedisError(Exception):
    """An error reply from Redis (`-ERR ...`), or a broken reply."""


def encode_command(args: tuple[Any, ...]) -> bytes:
    """A command as a RESP array of bulk strings (str as UTF-8, int/float as text)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = str(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse_reply(buf: bytes | bytearray, pos: int = 0) -> tuple[Reply | RedisError, int] | None:
    """One reply from `buf` at `pos`: (value, end), or None if it is not complete yet.
    Raises RedisError for what is not RESP."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        if len(buf) - pos > MAX_REPLY_BYTES:
            raise RedisError("reply line too long")
        return None
    kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    after = end + 2
    if kind == b"+":
        return line, after
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if size > MAX_REPLY_BYTES:
            raise RedisError("bulk reply too large")
        if len(buf) < after + size + 2:
            return None
        return bytes(buf[after : after + size]), after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        if count > MAX_REPLY_BYTES:
            raise RedisError("array reply too large")
        items: list[Any] = []
        for _ in range(count):
            parsed = parse_reply(buf, after)
            if parsed is None:
                return None
            item, after = parsed
            if isinstance(item, RedisError):
                item = None  # an error inside an array (EXEC): not used here
            items.append(item)
        return items, after
    raise RedisError(f"not a RESP reply: {bytes(buf[pos : pos + 16])!r}")


class _RespProtocol(Protocol):
    def __init__(self) -> None:
        self._buf = bytearray()
        self._waiting: deque[Deferred[Any]] = deque()

    def connectionMade(self) -> None:
        self.factory.connection.connected(self)

    def execute(self, args: tuple[Any, ...]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        transport: Any = self.transport  # ITransport (zope interfaces are opaque to mypy)
        transport.write(encode_command(args))
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        pos = 0
        try:
            while self._waiting and (parsed := parse_reply(self._buf, pos)) is not None:
                value, pos = parsed
                d = self._waiting.popleft()
                if isinstance(value, RedisError):
                    d.errback(value)
                else:
                    d.callback(value)
        except (RedisError, ValueError) as exc:
            self._buf.clear()
            transport: Any = self.transport
            transport.loseConnection()  # lost in step: start again
            self._fail(Failure(RedisError(f"broken reply: {exc}")))
            return
        del self._buf[:pos]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._fail(reason or Failure(ConnectionLost()))

    def _fail(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(reason)


class _Factory(ReconnectingClientFactory):
    maxDelay = 2  # reconnect within 2 s once Redis is back
    initialDelay = 0.2
    noisy = False  # no "Starting factory" line per attempt while Redis is away

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> _RespProtocol:
        self.resetDelay()
        proto = _RespProtocol()
        proto.factory = self
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.connection._failed(reason)
        super().clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.connection._lost()
        super().clientConnectionLost(connector, reason)


class RedisConnection:
    """One connection to Redis that comes back by itself (see module docstring).
    Commands sent while it is (re)connecting wait for it, MAX_QUEUED at most; they
    fail if the attempt fails."""

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._setup: list[tuple[Any, ...]] = []
        if password is not None:
            self._setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._setup.append(("SELECT", db))
        self._proto: _RespProtocol | None = None
        self._queued: deque[tuple[tuple[Any, ...], Deferred[Any]]] = deque()
        self._factory = _Factory(self)
        self._closed = False
        self._connector = reactor.connectTCP(host, port, self._factory)

    def execute_command(self, *args: Any) -> Deferred[Any]:
        if self._closed:
            return _failed("the connection to Redis is closed")
        if self._proto is not None:
            return self._proto.execute(args)
        if len(self._queued) >= MAX_QUEUED:
            return _failed("Redis is not connected (too many commands waiting)")
        d: Deferred[Any] = Deferred()
        self._queued.append((args, d))
        return d

    def connected(self, proto: _RespProtocol) -> None:
        for args in self._setup:
            proto.execute(args).addErrback(self._setup_failed, proto)
        self._proto = proto
        queued, self._queued = self._queued, deque()
        for args, d in queued:
            proto.execute(args).chainDeferred(d)

    def _setup_failed(self, failure: Failure, proto: _RespProtocol) -> None:
        transport: Any = proto.transport
        if transport is not None:
            transport.loseConnection()  # AUTH or SELECT refused: try again later

    def _failed(self, reason: Failure) -> None:
        queued, self._queued = self._queued, deque()
        for _, d in queued:
            d.errback(RedisError(f"cannot connect to Redis: {reason.getErrorMessage()}"))

    def _lost(self) -> None:
        self._proto = None

    def push(self) -> None:
        """Hand the commands written so far to the kernel now. Twisted writes a TCP
        transport's buffer at the reactor's next turn; the chat server acknowledges a
        line in the same pass as it asks for the line's publication, and an
        acknowledgement must not leave before the command it depends on is out of
        this process (kill -9 in between would lose an acknowledged line; what the
        kernel holds, it still sends after the process is gone)."""
        transport: Any = None if self._proto is None else self._proto.transport
        if transport is None or not transport.connected or transport.disconnecting:
            return
        transport.doWrite()  # IWriteDescriptor: what the reactor calls when writable

    def drop(self) -> None:
        """Give up on the connection as it is (Redis stopped answering without closing
        it): the commands waiting fail at once, and it connects again."""
        transport: Any = None if self._proto is None else self._proto.transport
        if transport is not None:
            transport.abortConnection()

    def disconnect(self) -> None:
        self._closed = True
        self._factory.stopTrying()
        self._failed(Failure(ConnectionLost("closed")))
        transport: Any = None if self._proto is None else self._proto.transport
        if transport is not None:
            transport.loseConnection()


def _failed(message: str) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(RedisError(message))
    return d
