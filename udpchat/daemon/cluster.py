"""The cluster's engine adapter: ClusterRules' requests to Redis, Redis' answers back.

Twisted-native (udpchat.daemon.resp): nothing here blocks the reactor. Two connections: one
for commands, answered in the order sent (so a member's lines are appended in the
order it said them), and one for the blocking XREAD that follows this daemon's
inbox and the streams of the rooms its members are in. docs/CLUSTER.md has the
design; the key names and scripts are below.

What goes into Redis is sealed with Fernet under a key derived from the pre-shared
key (wire.cluster_keys, its own HKDF label), and every name a key is filed under
(room, nick, node, member) is an HMAC under a second derived key: someone who reads
Redis without the key file learns sizes and timing only.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import InvalidToken
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from udpchat.chat.cluster import (
    ClaimNick,
    DropRoom,
    LoadRoom,
    NickClaimed,
    NickLost,
    PrivateFailed,
    PrivateIn,
    Publish,
    QueryRooms,
    QueryWho,
    ReleaseNick,
    Reply,
    Request,
    RoomEvent,
    RoomLoaded,
    RoomsAnswer,
    SendPrivate,
    WhoAnswer,
)
from udpchat.chat.messages import PrivateMsgIn, fold_nick
from udpchat.chat.server import ChatServer
from udpchat.core.wire import cluster_keys, fernet_key, psk_raw
from udpchat.daemon.clusterconfig import ClusterConfig
from udpchat.daemon.resp import RedisConnection
from udpchat.daemon.udp import ChatProtocol

log = Logger(namespace="udpchat")

PREFIX = "udpchat:"
ROOMS_KEY = PREFIX + "rooms"  # hash: room name's HMAC -> sealed room name
NODES_KEY = PREFIX + "nodes"  # sorted set: node's HMAC -> its lease's end (Redis ms)
#: A room's event stream keeps about this many events: a daemon that falls further
#: behind than that in reading loses the oldest (history is kept apart, below).
STREAM_MAXLEN = 1000
INBOX_MAXLEN = 1000
#: One XREAD waits at most this long (then it is sent again: a cheap liveness check).
READ_BLOCK_MS = 5000
READ_COUNT = 256
#: A hello or rename waits this long for its nick claim before being told the
#: engine is unreachable.
CLAIM_TIMEOUT_S = 3.0
#: After a failed read, wait this long before the next.
RETRY_S = 0.5
HASH_HEX = 32  # characters of a name's HMAC, as hex
#: What a command's Deferred gives its callbacks when it failed (logged already).
FAILED: Any = object()

# Append an event; keep the room's history (lines), member list and the node's list
# of its members in step, in one atomic step.
# KEYS: stream, history, members, rooms, node's members
# ARGV: sealed event, kind (line|join|nick|part), stream maxlen, history lines,
#       member field, sealed nick, room hash, sealed room name, sealed member record
PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1])
local kind = ARGV[2]
if kind == 'line' then
  local n = tonumber(ARGV[4])
  if n > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[1])
    redis.call('LTRIM', KEYS[2], 0, n - 1)
  end
elseif kind == 'join' or kind == 'nick' then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
  redis.call('HSET', KEYS[4], ARGV[7], ARGV[8])
  redis.call('HSET', KEYS[5], ARGV[5], ARGV[9])
elseif kind == 'part' then
  redis.call('HDEL', KEYS[3], ARGV[5])
  redis.call('HDEL', KEYS[5], ARGV[5])
  if redis.call('HLEN', KEYS[3]) == 0 then redis.call('HDEL', KEYS[4], ARGV[7]) end
end
return id
"""
# A room's history (newest first) and the id of its stream's last event, at once.
LOAD_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {id, redis.call('LRANGE', KEYS[2], 0, -1)}
"""
# A nick's key holds member hash .. client hash .. sealed owner. Granted if free, or
# held by the same member (1), or by the same client id: a reconnect through
# another daemon takes it over (2). 0: someone else holds it.
CLAIM_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 32) ~= ARGV[1] and string.sub(v, 33, 64) ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2] .. ARGV[3], 'PX', ARGV[4])
if v and string.sub(v, 1, 32) ~= ARGV[1] then return 2 end
return 1
"""
RELEASE_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 32) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Renew the leases of the nicks this daemon holds; answer which it lost (1-based).
RENEW_SCRIPT = """
local lost = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, 32) == ARGV[i] then
    redis.call('PEXPIRE', k, ARGV[#ARGV])
  else
    table.insert(lost, i)
  end
end
return lost
"""
# This node's lease, by Redis' clock (no two machines' clocks compared); answer the
# nodes whose lease ended, taken out of the set: exactly one daemon reaps each.
HEARTBEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, n in ipairs(dead) do redis.call('ZREM', KEYS[1], n) end
return dead
"""
# The rooms with members, and how many: sealed name, count, ...
ROOMS_SCRIPT = """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local n = redis.call('HLEN', ARGV[1] .. all[i] .. ':members')
  if n > 0 then
    table.insert(out, all[i + 1])
    table.insert(out, n)
  end
end
return out
"""


def incarnation(node: str) -> str:
    """The operator's node name and a random suffix: a daemon restarted after a crash
    is not its former self, whose members the others still have to see leave."""
    return f"{node}.{os.urandom(3).hex()}"


def _stream_id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


@dataclass
class _Followed:
    room: str
    last: bytes  # the id of the last event handed on


class ClusterLink:
    """Connects one daemon's ChatServer to Redis (see module docstring)."""

    def __init__(
        self,
        config: ClusterConfig,
        psk: bytes,
        protocol: ChatProtocol,
        reactor: Any,
        idle_timeout_s: float,
        history_lines: int,
    ) -> None:
        server: ChatServer = protocol.server
        assert server.cluster is not None, "the ChatServer needs a node name"
        self.config = config
        self.node = server.cluster.node
        seal_key, index_key = cluster_keys(psk_raw(psk))
        self._fernet = fernet_key(seal_key)
        self._index_key = index_key
        self._protocol = protocol
        self._server = server
        self._reactor = reactor
        self._history_lines = history_lines
        # A crashed daemon's members leave within idle_timeout: its lease ends after
        # a third of it, and every other daemon looks five times per lease.
        self._lease_ms = int(max(1.0, idle_timeout_s / 3) * 1000)
        self._nick_lease_ms = int(idle_timeout_s * 1000)
        self._node_hash = self._name("node", self.node)
        self._inbox = self._node_key(self._node_hash, "inbox")
        self._inbox_last = b"0-0"
        self._following: dict[bytes, _Followed] = {}
        self._held: dict[bytes, tuple[str, str]] = {}  # nick key -> (member hash, member)
        self._cmd: Any = None
        self._reader: Any = None
        self._running = False
        self._reading = False
        self._reachable: bool | None = None
        self._tick = LoopingCall(self._heartbeat)
        self._tick.clock = reactor
        self._last: Deferred[Any] | None = None  # the last command sent

    # -- names and seals -------------------------------------------------------------

    def _name(self, kind: str, value: str) -> str:
        mac = hmac.new(self._index_key, f"{kind}\0{value}".encode(), "sha256")
        return mac.hexdigest()[:HASH_HEX]

    @staticmethod
    def _node_key(node_hash: str, what: str) -> bytes:
        return f"{PREFIX}node:{node_hash}:{what}".encode()

    def _room_keys(self, room: str) -> tuple[str, bytes, bytes, bytes]:
        h = self._name("room", room)
        base = f"{PREFIX}room:{h}:"
        return (
            h,
            (base + "events").encode(),
            (base + "history").encode(),
            (base + "members").encode(),
        )

    def _nick_key(self, nick: str) -> bytes:
        return f"{PREFIX}nick:{self._name('nick', fold_nick(nick))}".encode()

    def _seal(self, obj: Any) -> bytes:
        return self._fernet.encrypt(json.dumps(obj, separators=(",", ":")).encode())

    def _open(self, token: bytes) -> Any:
        """The sealed JSON value; raises ValueError if it is not one of ours."""
        try:
            return json.loads(self._fernet.decrypt(token))
        except (InvalidToken, TypeError) as exc:
            raise ValueError("not sealed with this cluster's key") from exc

    # -- life ------------------------------------------------------------------------

    def start(self) -> None:
        config = self.config

        def connect() -> RedisConnection:
            return RedisConnection(
                self._reactor, config.host, config.port, config.db, config.username,
                config.password,
            )  # fmt: skip

        self._cmd, self._reader = connect(), connect()
        self._running = True
        self._protocol.after_service = self.flush
        self._tick.start(self._lease_ms / 5000, now=True)
        self._read()
        log.info("Cluster: node {node} on {where}", node=self.node, where=config.where)

    def stop(self) -> Deferred[None]:
        """After the goodbyes (parts) went out: stop reading, drop the connections."""
        self._running = False
        self._protocol.after_service = None
        if self._tick.running:
            self._tick.stop()
        done: Deferred[None] = Deferred()

        def disconnect(_: object = None) -> None:
            for handler in (self._cmd, self._reader):
                if handler is not None:
                    handler.disconnect()
            if not done.called:
                done.callback(None)

        last = self._last
        if last is None or last.called:
            disconnect()
        else:
            # Wait for what was sent last (commands are answered in order), 2 s at most.
            last.addBoth(disconnect)
            self._reactor.callLater(2.0, disconnect)
        return done

    # -- requests --------------------------------------------------------------------

    def flush(self) -> None:
        """Carry out what the chat server asks of the engine (after each datagram,
        timer and reply)."""
        for request in self._server.take_cluster_requests():
            self._do(request)

    def _do(self, request: Request) -> None:
        if isinstance(request, Publish):
            self._publish(request.event, self._node_hash)
        elif isinstance(request, ClaimNick):
            self._claim(request)
        elif isinstance(request, ReleaseNick):
            key = self._nick_key(request.nick)
            member_hash = self._name("member", request.member)
            if self._held.get(key, ("",))[0] == member_hash:
                del self._held[key]
            self._command(("EVAL", RELEASE_SCRIPT, 1, key, member_hash), "release a nick")
        elif isinstance(request, LoadRoom):
            self._load(request.room)
        elif isinstance(request, DropRoom):
            self._following.pop(self._room_keys(request.room)[1], None)
        elif isinstance(request, QueryWho):
            self._who(request)
        elif isinstance(request, QueryRooms):
            self._rooms(request)
        elif isinstance(request, SendPrivate):
            self._private(request)

    def _command(self, args: tuple[Any, ...], what: str) -> Deferred[Any]:
        d: Deferred[Any] = self._cmd.execute_command(*args)
        self._last = d

        def failed(failure: Any) -> Any:
            self._unreachable(f"could not {what}: {failure.getErrorMessage()}")
            return FAILED

        d.addCallback(self._reached)
        d.addErrback(failed)
        return d

    def _reached(self, value: Any) -> Any:
        if self._reachable is not True:
            if self._reachable is False:
                log.info("Cluster: Redis at {where} answers again", where=self.config.where)
            self._reachable = True
        return value

    def _unreachable(self, why: str) -> None:
        if self._reachable is not False:
            self._reachable = False
            log.warn(
                "Cluster: Redis at {where} is unreachable ({why}); serving this daemon's "
                "members only until it answers",
                where=self.config.where,
                why=why,
            )

    def _reply(self, *replies: Reply) -> None:
        if not self._running or not replies:
            return

        def feed(now: float) -> None:
            for reply in replies:
                self._server.cluster_reply(reply, now)

        self._protocol.call(feed)

    def _publish(self, event: RoomEvent, node_hash: str) -> None:
        room_hash, stream, history, members = self._room_keys(event.room)
        kind = {"say": "line", "me": "line"}.get(event.kind, event.kind)
        sealed = self._fernet.encrypt(event.to_json())
        field = self._name("member", event.member)
        nick = room = record = b""
        if kind in ("join", "nick"):
            nick = self._seal(event.nick)
            room = self._seal(event.room)
            record = self._seal({"room": event.room, "nick": event.nick, "member": event.member})
        keys = (stream, history, members, ROOMS_KEY, self._node_key(node_hash, "members"))
        args = (sealed, kind, STREAM_MAXLEN, self._history_lines, field, nick, room_hash, room)
        self._command(("EVAL", PUBLISH_SCRIPT, len(keys), *keys, *args, record), "publish")

    def _claim(self, request: ClaimNick) -> None:
        key = self._nick_key(request.nick)
        member_hash = self._name("member", request.member)
        owner = self._seal({"member": request.member, "node": self._node_hash})
        args = (member_hash, self._name("client", request.client), owner, self._nick_lease_ms)
        answered = False

        def done(result: Any) -> None:
            nonlocal answered
            granted = result is not FAILED and int(result) > 0
            if answered:  # too late: it was refused as unreachable
                if granted:
                    self._command(("EVAL", RELEASE_SCRIPT, 1, key, member_hash), "release")
                return
            answered = True
            if granted:
                self._held[key] = (member_hash, request.member)
            unavailable = result is FAILED
            self._reply(NickClaimed(request.session_id, request.nick, granted, unavailable))

        def timeout() -> None:
            nonlocal answered
            if not answered:
                answered = True
                self._reply(
                    NickClaimed(request.session_id, request.nick, ok=False, unavailable=True)
                )

        self._command(("EVAL", CLAIM_SCRIPT, 1, key, *args), "claim a nick").addCallback(done)
        self._reactor.callLater(CLAIM_TIMEOUT_S, timeout)

    def _load(self, room: str) -> None:
        _, stream, history, _ = self._room_keys(room)

        def loaded(result: Any) -> None:
            if result is FAILED:
                return  # logged; members waiting are not admitted (left in docs/CLUSTER.md)
            last, sealed = result
            events = []
            for token in reversed(sealed):
                try:
                    events.append(RoomEvent.from_json(self._fernet.decrypt(token)))
                except (InvalidToken, ValueError):
                    continue
            self._following[stream] = _Followed(room, last)
            self._reply(RoomLoaded(room, tuple(events)))
            self._wake()

        self._command(("EVAL", LOAD_SCRIPT, 2, stream, history), "load a room").addCallback(loaded)

    def _wake(self) -> None:
        """The blocking read must follow one more stream: an entry in this daemon's
        inbox ends it, and the next read names the new stream."""
        self._command(
            ("XADD", self._inbox, "MAXLEN", "~", INBOX_MAXLEN, "*", "w", b""), "wake the reader"
        )

    def _who(self, request: QueryWho) -> None:
        members = self._room_keys(request.room)[3]

        def answer(result: Any) -> None:
            if result is FAILED:
                return
            nicks = []
            for sealed in result[1::2]:
                try:
                    nicks.append(str(self._open(sealed)))
                except ValueError:
                    continue
            self._reply(WhoAnswer(request.session_id, request.room, tuple(nicks)))

        self._command(("HGETALL", members), "list a room").addCallback(answer)

    def _rooms(self, request: QueryRooms) -> None:
        prefix = f"{PREFIX}room:"

        def answer(result: Any) -> None:
            if result is FAILED:
                return
            counts = []
            for sealed, count in zip(result[0::2], result[1::2], strict=True):
                try:
                    counts.append((str(self._open(sealed)), int(count)))
                except ValueError:
                    continue
            self._reply(RoomsAnswer(request.session_id, tuple(counts)))

        self._command(("EVAL", ROOMS_SCRIPT, 1, ROOMS_KEY, prefix), "list rooms").addCallback(
            answer
        )

    def _private(self, request: SendPrivate) -> None:
        def route(value: Any) -> None:
            if value is FAILED:
                return
            if value is None:
                self._reply(PrivateFailed(request.session_id, request.to))
                return
            try:
                owner = self._open(value[2 * HASH_HEX :])
            except ValueError:
                self._reply(PrivateFailed(request.session_id, request.to))
                return
            message = request.message
            sealed = self._seal(
                {"to": request.to, "from": message.sender, "text": message.text,
                 "id": message.line_id}
            )  # fmt: skip
            inbox = self._node_key(str(owner["node"]), "inbox")
            self._command(
                ("XADD", inbox, "MAXLEN", "~", INBOX_MAXLEN, "*", "p", sealed), "send a message"
            )

        self._command(("GET", self._nick_key(request.to)), "find a nick").addCallback(route)

    # -- the blocking read -----------------------------------------------------------

    def _read(self) -> None:
        if not self._running or self._reading:
            return
        self._reading = True
        streams = [self._inbox, *self._following]
        ids = [self._inbox_last, *(f.last for f in self._following.values())]
        d = self._reader.execute_command(
            "XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS", *streams, *ids
        )
        d.addCallbacks(self._got, self._read_failed)

    def _read_failed(self, failure: Any) -> None:
        self._reading = False
        if not self._running:
            return  # stop() closed the connection under the blocking read: not Redis
        self._unreachable(f"reading: {failure.getErrorMessage()}")
        self._reactor.callLater(RETRY_S, self._read)

    def _got(self, result: Any) -> None:
        self._reading = False
        self._reached(None)
        replies: list[Reply] = []
        for stream, entries in result or ():
            if stream == self._inbox:
                for entry_id, fields in entries:
                    self._inbox_last = entry_id
                    replies.extend(self._inbox_entry(fields))
                continue
            followed = self._following.get(stream)
            if followed is None:
                continue  # dropped meanwhile
            for entry_id, fields in entries:
                if _stream_id(entry_id) <= _stream_id(followed.last):
                    continue  # read before the room was loaded again
                followed.last = entry_id
                try:
                    replies.append(RoomEvent.from_json(self._fernet.decrypt(fields[1])))
                except (InvalidToken, ValueError, IndexError):
                    continue
        try:
            self._reply(*replies)
        finally:
            self._read()

    def _inbox_entry(self, fields: list[bytes]) -> list[Reply]:
        if len(fields) != 2 or fields[0] != b"p":
            return []  # a wake-up
        try:
            obj = self._open(fields[1])
            message = PrivateMsgIn(str(obj["from"]), str(obj["text"]), str(obj["id"]))
            return [PrivateIn(str(obj["to"]), message)]
        except (ValueError, KeyError, TypeError):
            return []

    # -- leases ----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        beat = ("EVAL", HEARTBEAT_SCRIPT, 1, NODES_KEY, self._node_hash, self._lease_ms)
        self._command(beat, "renew this daemon's lease").addCallback(self._reap)
        if self._held:
            held = list(self._held.items())
            keys = [key for key, _ in held]
            hashes = [member_hash for _, (member_hash, _) in held]
            renew = ("EVAL", RENEW_SCRIPT, len(keys), *keys, *hashes, self._nick_lease_ms)

            def lost(result: Any) -> None:
                gone = []
                for index in () if result is FAILED else result:
                    key, (member_hash, member) = held[int(index) - 1]
                    if self._held.get(key, ("",))[0] == member_hash:
                        del self._held[key]
                        gone.append(NickLost(member))
                self._reply(*gone)

            self._command(renew, "renew nicks").addCallback(lost)

    def _reap(self, dead: Any) -> None:
        """Nodes whose lease ended (their daemon died): their members part, with
        reason "timeout", for everyone; their nicks are free again."""
        for node_hash in () if dead is FAILED else dead:
            node_hash = node_hash.decode() if isinstance(node_hash, bytes) else str(node_hash)
            if node_hash == self._node_hash:
                continue  # this daemon was too slow to renew: it is alive all the same
            members_key = self._node_key(node_hash, "members")

            def reap(records: Any, node_hash: str = node_hash, key: bytes = members_key) -> None:
                count = 0
                for sealed in ([] if records is FAILED else records)[1::2]:
                    try:
                        record = self._open(sealed)
                        event = RoomEvent(
                            "part", str(record["room"]), str(record["nick"]),
                            str(record["member"]), reason="timeout",
                        )  # fmt: skip
                    except (ValueError, KeyError, TypeError):
                        continue
                    self._publish(event, node_hash)
                    member_hash = self._name("member", event.member)
                    release = ("EVAL", RELEASE_SCRIPT, 1, self._nick_key(event.nick), member_hash)
                    self._command(release, "release a nick")
                    count += 1
                self._command(("DEL", key, self._node_key(node_hash, "inbox")), "tidy up")
                if count:
                    log.info(
                        "Cluster: a daemon stopped renewing its lease; its {n} members "
                        "left their rooms",
                        n=count,
                    )

            self._command(("HGETALL", members_key), "reap a node").addCallback(reap)
