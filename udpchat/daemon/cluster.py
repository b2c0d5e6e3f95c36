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
from typing import Any, NamedTuple

from cryptography.fernet import InvalidToken
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from udpchat.chat.engine import (
    ClaimNick,
    DropRoom,
    EngineBack,
    EngineLost,
    LoadRoom,
    LostWhy,
    NickClaimed,
    NickLost,
    PrivateFailed,
    PrivateIn,
    Publish,
    QueryRooms,
    QueryWho,
    Register,
    ReleaseNick,
    Reply,
    Request,
    RoomEvent,
    RoomLoaded,
    RoomLoadFailed,
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
#: A random value set by the first daemon that finds it missing: a daemon that sees
#: it change knows Redis lost its data (restarted empty) while it was away.
EPOCH_KEY = PREFIX + "epoch"
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
#: A connection whose commands have not been answered for this long is dropped
#: (Redis frozen, or the network to it silent): the daemon splits off (ClusterLink._watch).
STALL_S = 3.0
#: After a merge, no daemon is reaped for this long (at least one lease): every
#: daemon's lease ran out while Redis was away, and the others are coming back too.
MERGE_GRACE_S = 6.0
HASH_HEX = 32  # characters of a name's HMAC, as hex
#: What a command's Deferred gives its callbacks when it failed (logged already).
FAILED: Any = object()

# Append an event; keep the room's history (lines), member list and the node's list
# of its members in step, in one atomic step. Kind "register" (a merge) changes the
# member lists as a join does, and appends nothing.
# KEYS: stream, history, members, rooms, node's members
# ARGV: sealed event, kind (line|join|nick|part|register), stream maxlen, history
#       lines, member field, sealed nick, room hash, sealed room name, sealed record
PUBLISH_SCRIPT = """
local kind = ARGV[2]
local id = false
if kind ~= 'register' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1])
end
if kind == 'line' then
  local n = tonumber(ARGV[4])
  if n > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[1])
    redis.call('LTRIM', KEYS[2], 0, n - 1)
  end
elseif kind == 'join' or kind == 'nick' or kind == 'register' then
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
# A nick's key holds member hash .. client hash .. flag .. sealed owner; the flag is
# "p" for a nick taken while its daemon was split (claimed again at the merge as
# "provisional"), "f" otherwise (values of before the flag hold none, and count as
# "f"). Granted if free, or held by the same member (1), or by the same client id: a
# reconnect through another daemon takes it over (2), or, for a claim "firm" (held
# before a split), held with "p" (3: displaced). 0: someone else holds it.
# ARGV: member hash, client hash, sealed owner, lease ms, claim (n|f|p)
CLAIM_SCRIPT = """
local v = redis.call('GET', KEYS[1])
local code = 1
if v and string.sub(v, 1, 32) ~= ARGV[1] then
  if string.sub(v, 33, 64) == ARGV[2] then
    code = 2
  elseif ARGV[5] == 'f' and string.sub(v, 65, 65) == 'p' then
    code = 3
  else
    return 0
  end
end
local flag = 'f'
if ARGV[5] == 'p' then flag = 'p' end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2] .. flag .. ARGV[3], 'PX', ARGV[4])
return code
"""
_CLAIM_FLAGS = {"new": "n", "firm": "f", "provisional": "p"}
RELEASE_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 32) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Renew the leases of the nicks this daemon holds; answer which it lost (1-based),
# each followed by who holds it now: 0 nobody, 1 the same client id, 2 another.
# ARGV: member hash per key, client hash per key, lease ms
RENEW_SCRIPT = """
local n = #KEYS
local lost = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, 32) == ARGV[i] then
    redis.call('PEXPIRE', k, ARGV[#ARGV])
  else
    local holder = 0
    if v and string.sub(v, 33, 64) == ARGV[n + i] then
      holder = 1
    elseif v then
      holder = 2
    end
    table.insert(lost, i)
    table.insert(lost, holder)
  end
end
return lost
"""
_LOST_WHY: dict[int, LostWhy] = {0: "gone", 1: "takeover", 2: "displaced"}
# This node's lease, by Redis' clock (no two machines' clocks compared); answer the
# nodes whose lease ended, taken out of the set: exactly one daemon reaps each.
# ARGV: node hash, lease ms, whether to reap (0 in the grace after a merge)
HEARTBEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if ARGV[3] == '0' then return {} end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, n in ipairs(dead) do redis.call('ZREM', KEYS[1], n) end
return dead
"""
# Back after a split: Redis' epoch (set if it was missing: Redis lost its data) and
# whether this node's lease was missing (1: a reaper took it for dead meanwhile).
# KEYS: epoch, nodes. ARGV: a new epoch, node hash, lease ms
REJOIN_SCRIPT = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {epoch, redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])}
"""
# One member of a dead node, atomically (so that a reconnect's claim is either
# before it, and seen, or after it, and granted as a free nick): out of the room's
# member list; then, unless its nick is now held by another member with the same
# client id (it came back through another daemon before this reap: it is there, and
# a part would say it left), a part for the room and its nick freed if still its own.
# Answers 1 (parted) or 0 (it is back).
# KEYS: nick, stream, room's members, rooms
# ARGV: member hash, client hash ('' if unknown), sealed part, stream maxlen, room hash
REAP_SCRIPT = """
local v = redis.call('GET', KEYS[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HLEN', KEYS[3]) == 0 then redis.call('HDEL', KEYS[4], ARGV[5]) end
if v and string.sub(v, 1, 32) ~= ARGV[1] and ARGV[2] ~= ''
    and string.sub(v, 33, 64) == ARGV[2] then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[3])
if v and string.sub(v, 1, 32) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
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


class _Held(NamedTuple):
    """A nick this daemon holds for one of its members."""

    member_hash: str
    member: str
    client_hash: str  # the member's client id, as a name (the reaper compares it)


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
        self._held: dict[bytes, _Held] = {}  # by nick key: the nicks to renew
        self._cmd: Any = None
        self._reader: Any = None
        self._running = False
        self._reading = False
        self._flushing = False
        self._reachable: bool | None = None
        # Split: the rules were told the engine is lost (EngineLost), and not yet that
        # it is back (EngineBack, once REJOIN_SCRIPT answered).
        self._split = False
        self._rejoining = False
        self._epoch: bytes | None = None  # Redis' epoch as last seen (EPOCH_KEY)
        self._reap_after = 0.0  # reactor time: no reaping before (MERGE_GRACE_S)
        self._outstanding = 0  # commands sent and not answered yet
        self._progress_at = 0.0  # when one was last answered (or sent, with none out)
        self._read_at = 0.0  # when the blocking read was sent
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
        self._command(self._rejoin_args(), "register this daemon").addCallback(self._first_epoch)
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
        timer and reply), in order: a reply fed back while carrying one out (a command
        that failed at once) leaves its requests to the loop here, after the others."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while requests := self._server.take_cluster_requests():
                for request in requests:
                    self._do(request)
        finally:
            self._flushing = False
        if self._cmd is not None:
            self._cmd.push()  # before the datagrams of this pass (their acks) leave

    def _do(self, request: Request) -> None:
        if isinstance(request, Publish):
            self._publish(request.event, self._node_hash)
        elif isinstance(request, Register):
            self._publish(request.event, self._node_hash, register=True)
        elif isinstance(request, ClaimNick):
            self._claim(request)
        elif isinstance(request, ReleaseNick):
            key = self._nick_key(request.nick)
            member_hash = self._name("member", request.member)
            held = self._held.get(key)
            if held is not None and held.member_hash == member_hash:
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
        if not self._outstanding:
            self._progress_at = self._reactor.seconds()
        self._outstanding += 1
        d: Deferred[Any] = self._cmd.execute_command(*args)
        self._last = d

        def answered(value: Any) -> Any:
            self._outstanding -= 1
            self._progress_at = self._reactor.seconds()
            return value

        def failed(failure: Any) -> Any:
            self._unreachable(f"could not {what}: {failure.getErrorMessage()}")
            return FAILED

        d.addBoth(answered)
        d.addCallback(self._reached)
        d.addErrback(failed)
        return d

    def _watch(self) -> None:
        """Redis may stop answering without closing the connections (a frozen
        process, a network that drops everything): commands would wait for minutes,
        and this daemon's members with them. A connection that has not answered for
        STALL_S (the reader: its block and STALL_S) is dropped, so that this daemon
        splits off and serves its members, and the connection starts again."""
        now = self._reactor.seconds()
        if self._outstanding and now - self._progress_at > STALL_S:
            self._progress_at = now
            self._cmd.drop()
        if self._reading and now - self._read_at > READ_BLOCK_MS / 1000 + STALL_S:
            self._read_at = now
            self._reader.drop()

    def _reached(self, value: Any) -> Any:
        if self._reachable is not True:
            if self._reachable is False:
                log.info("Cluster: Redis at {where} answers again", where=self.config.where)
            self._reachable = True
        if self._split and not self._rejoining:
            self._rejoin()
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
        if not self._split and self._running:
            self._split = True
            self._held.clear()  # claimed again at the merge
            self._reply(EngineLost())

    # -- split and merge -------------------------------------------------------------

    def _rejoin_args(self) -> tuple[Any, ...]:
        epoch = os.urandom(8).hex()  # used if Redis has none (new, or restarted empty)
        args = (epoch, self._node_hash, self._lease_ms)
        return ("EVAL", REJOIN_SCRIPT, 2, EPOCH_KEY, NODES_KEY, *args)

    def _first_epoch(self, result: Any) -> None:
        if result is not FAILED and not self._split:
            self._epoch = result[0]

    def _rejoin(self) -> None:
        """Redis answers again: renew this daemon's lease and learn what Redis kept,
        then tell the rules (EngineBack), which register their members again and
        publish what they kept."""
        self._rejoining = True

        def back(result: Any) -> None:
            self._rejoining = False
            if result is FAILED or not self._split or not self._running:
                return  # still away: the next answer tries again
            epoch, added = result
            kept = self._epoch is not None and epoch == self._epoch
            self._epoch = epoch
            self._split = False
            self._reap_after = self._reactor.seconds() + max(MERGE_GRACE_S, self._lease_ms / 1000)
            if not kept:  # the streams started again: read them from their start
                self._inbox_last = b"0-0"
                for followed in self._following.values():
                    followed.last = b"0-0"
            self._reply(EngineBack(lost_data=not kept, reaped=kept and int(added) == 1))

        self._command(self._rejoin_args(), "register this daemon again").addCallback(back)

    def _reply(self, *replies: Reply) -> None:
        if not self._running or not replies:
            return

        def feed(now: float) -> None:
            for reply in replies:
                self._server.cluster_reply(reply, now)

        self._protocol.call(feed)

    def _publish(self, event: RoomEvent, node_hash: str, register: bool = False) -> None:
        room_hash, stream, history, members = self._room_keys(event.room)
        kind = "register" if register else {"say": "line", "me": "line"}.get(event.kind, event.kind)
        sealed = self._fernet.encrypt(event.to_json())
        field = self._name("member", event.member)
        nick = room = record = b""
        if kind in ("join", "nick", "register"):
            nick = self._seal(event.nick)
            room = self._seal(event.room)
            # The member's client id (as a name) too: the reaper of a dead daemon
            # tells by it whether the member came back through another one.
            held = self._held.get(self._nick_key(event.nick))
            client = held.client_hash if held and held.member == event.member else ""
            record = self._seal(
                {"room": event.room, "nick": event.nick, "member": event.member, "client": client}
            )
        keys = (stream, history, members, ROOMS_KEY, self._node_key(node_hash, "members"))
        args = (sealed, kind, STREAM_MAXLEN, self._history_lines, field, nick, room_hash, room)
        self._command(("EVAL", PUBLISH_SCRIPT, len(keys), *keys, *args, record), "publish")

    def _claim(self, request: ClaimNick) -> None:
        key = self._nick_key(request.nick)
        member_hash = self._name("member", request.member)
        client_hash = self._name("client", request.client)
        owner = self._seal({"member": request.member, "node": self._node_hash})
        flag = _CLAIM_FLAGS[request.kind]
        args = (member_hash, client_hash, owner, self._nick_lease_ms, flag)
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
                self._held[key] = _Held(member_hash, request.member, client_hash)
            self._answer(request, granted, unavailable=result is FAILED)

        def timeout() -> None:
            nonlocal answered
            if not answered:
                answered = True
                self._answer(request, False, unavailable=True)

        self._command(("EVAL", CLAIM_SCRIPT, 1, key, *args), "claim a nick").addCallback(done)
        self._reactor.callLater(CLAIM_TIMEOUT_S, timeout)

    def _answer(self, request: ClaimNick, ok: bool, unavailable: bool) -> None:
        self._reply(
            NickClaimed(
                request.session_id, request.nick, ok, unavailable, request.kind, request.member
            )
        )

    def _load(self, room: str) -> None:
        _, stream, history, _ = self._room_keys(room)

        def loaded(result: Any) -> None:
            if result is FAILED:
                self._reply(RoomLoadFailed(room))  # those waiting are refused
                return
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
        def failed(value: Any) -> None:
            if value is FAILED:
                self._reply(PrivateFailed(request.session_id, request.to, unavailable=True))

        def route(value: Any) -> None:
            if value is FAILED:
                failed(value)
                return
            if value is None:
                self._reply(PrivateFailed(request.session_id, request.to))
                return
            # After the two hashes, the claim's flag (CLAIM_SCRIPT), unless the value
            # is of before the flag: a Fernet token starts with "g".
            start = 2 * HASH_HEX + (1 if value[2 * HASH_HEX : 2 * HASH_HEX + 1] in b"fp" else 0)
            try:
                owner = self._open(value[start:])
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
            ).addCallback(failed)

        self._command(("GET", self._nick_key(request.to)), "find a nick").addCallback(route)

    # -- the blocking read -----------------------------------------------------------

    def _read(self) -> None:
        if not self._running or self._reading:
            return
        self._reading = True
        self._read_at = self._reactor.seconds()
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
        self._watch()
        if self._split:
            # Only to learn when Redis is back: the lease is renewed by the rejoin,
            # which also learns whether a reaper took this daemon for dead meanwhile.
            self._command(("PING",), "ping")
            return
        reap = 0 if self._reactor.seconds() < self._reap_after else 1
        beat = ("EVAL", HEARTBEAT_SCRIPT, 1, NODES_KEY, self._node_hash, self._lease_ms, reap)
        self._command(beat, "renew this daemon's lease").addCallback(self._reap)
        if self._held:
            held = list(self._held.items())
            keys = [key for key, _ in held]
            hashes = [member_hash for _, (member_hash, _, _) in held]
            clients = [client_hash for _, (_, _, client_hash) in held]
            renew = (
                "EVAL", RENEW_SCRIPT, len(keys), *keys, *hashes, *clients, self._nick_lease_ms
            )  # fmt: skip

            def lost(result: Any) -> None:
                gone = []
                found = [] if result is FAILED else result
                for index, holder in zip(found[0::2], found[1::2], strict=True):
                    key, (member_hash, member, _) = held[int(index) - 1]
                    if self._held.get(key, ("",))[0] == member_hash:
                        del self._held[key]
                        gone.append(NickLost(member, _LOST_WHY.get(int(holder), "displaced")))
                self._reply(*gone)

            self._command(renew, "renew nicks").addCallback(lost)

    def _reap(self, dead: Any) -> None:
        """Nodes whose lease ended (their daemon died): their members part, with
        reason "timeout", for everyone, and their nicks are free again; except the
        members that came back through another daemon meanwhile (REAP_SCRIPT)."""
        for node_hash in () if dead is FAILED else dead:
            node_hash = node_hash.decode() if isinstance(node_hash, bytes) else str(node_hash)
            if node_hash == self._node_hash:
                continue  # this daemon was too slow to renew: it is alive all the same
            members_key = self._node_key(node_hash, "members")

            def reap(records: Any, node_hash: str = node_hash, key: bytes = members_key) -> None:
                outcomes = []
                for sealed in ([] if records is FAILED else records)[1::2]:
                    try:
                        record = self._open(sealed)
                        event = RoomEvent(
                            "part", str(record["room"]), str(record["nick"]),
                            str(record["member"]), reason="timeout",
                        )  # fmt: skip
                        client_hash = str(record.get("client", ""))
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue
                    outcomes.append(self._reap_member(event, client_hash))
                self._command(("DEL", key, self._node_key(node_hash, "inbox")), "tidy up")
                if outcomes:
                    gatherResults(outcomes).addCallback(self._reaped)

            self._command(("HGETALL", members_key), "reap a node").addCallback(reap)

    def _reap_member(self, part: RoomEvent, client_hash: str) -> Deferred[Any]:
        """One member of a dead daemon (REAP_SCRIPT): fires with 1 if it was parted,
        0 if it is back through another daemon, FAILED if Redis did not answer."""
        room_hash, stream, _, members = self._room_keys(part.room)
        keys = (self._nick_key(part.nick), stream, members, ROOMS_KEY)
        member_hash = self._name("member", part.member)
        sealed = self._fernet.encrypt(part.to_json())
        args = (member_hash, client_hash, sealed, STREAM_MAXLEN, room_hash)
        return self._command(("EVAL", REAP_SCRIPT, len(keys), *keys, *args), "reap a member")

    @staticmethod
    def _reaped(outcomes: list[Any]) -> None:
        parted = sum(1 for outcome in outcomes if outcome == 1)
        back = sum(1 for outcome in outcomes if outcome == 0)
        log.info(
            "Cluster: a daemon stopped renewing its lease; of its members, {parted} left "
            "their rooms (timeout) and {back} had come back through another daemon",
            parted=parted,
            back=back,
        )
