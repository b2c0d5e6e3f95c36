"""An in-memory udpchat network for client tests: the real chat server (ChatServer:
protocol core, chat rules and server policy) wired to ChatClients, with a fake clock,
optional loss, outages (both ways, or only from the server to one peer), server
crashes and a dead server's port (the network refuses what is sent to it). Or several
servers, one per address a client is given (`daemons`), each of which can die. No
sockets, no sleeping."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cryptography.fernet import Fernet

from udpchat.chat.server import ChatServer, ServerSettings
from udpchat.client.chatclient import ChatClient
from udpchat.client.display import PLAIN, format_item
from udpchat.client.reachability import Finding
from udpchat.core.endpoint import ClientEndpoint
from udpchat.core.limits import ProtocolConfig

#: Short timers so that expiry and reconnects take simulated seconds, not minutes (the
#: sealed-ack delay shrinks with them: it sets a floor under the retransmission timeout).
FAST = ProtocolConfig(keepalive_s=1.0, session_expiry_s=4.0, give_up_s=8.0, sealed_ack_delay_s=0.05)
START = 1_700_000_000.0


@dataclass
class Peer:
    chat: ChatClient
    addr: tuple[str, int]
    lines: list[str] = field(default_factory=list)  # everything shown, plain style
    cut: bool = False  # True: this peer's link is down (both ways)
    deaf: bool = False  # True: what the server sends this peer is lost (one way)

    def collect(self, now: float) -> None:
        for item in self.chat.take_output():
            text = format_item(item, PLAIN, now=now)
            if text is not None:
                self.lines.append(text)


class Net:
    """Clients and one server moving datagrams by hand (see module docstring)."""

    def __init__(
        self,
        config: ProtocolConfig = FAST,
        loss: float = 0.0,
        seed: int = 1,
        server_config: ProtocolConfig | None = None,
        daemons: int = 1,
    ) -> None:
        """`daemons`: with more than one, a client's address index (ChatClient.
        address_index) picks the daemon its datagrams go to; each is on its own (no
        cluster between them)."""
        self.psk = Fernet.generate_key()
        self.config = config
        self.server_config = server_config or config
        self.loss = loss
        self.rng = random.Random(seed)
        self.now = START
        self.up = True  # False: every datagram is lost, both ways
        # True: the server process is gone; the network answers each datagram to its
        # port with "port unreachable" (ICMP), which reaches the client at once.
        self.refusing = False
        self.peers: list[Peer] = []
        self.server_seen: list[bytes] = []  # payloads the chat server received
        self.server_sent: list[tuple[bytes, tuple[str, int]]] = []  # datagrams, to whom
        self.daemons: list[ChatServer] = []
        self.seen_by: list[list[bytes]] = []  # payloads each daemon received
        self.dead: set[int] = set()  # daemons whose process is gone (their port refuses)
        for index in range(daemons):
            self.start_server(index=index)

    def start_server(self, history_lines: int = 50, index: int = 0) -> None:
        """A fresh server process: every session and member forgotten (a crash)."""
        settings = ServerSettings(history_lines=history_lines)
        chat_server = ChatServer(self.psk, settings, protocol=self.server_config)
        if index == len(self.daemons):
            self.daemons.append(chat_server)
            self.seen_by.append([])
        self.daemons[index] = chat_server
        self.dead.discard(index)
        if index == 0:
            self.chat_server = chat_server
            self.server = chat_server.endpoint
        rules = chat_server.rules
        received = rules.message_received

        def seen(session_id: bytes, payload: bytes, now: float) -> None:
            self.server_seen.append(payload)
            self.seen_by[index].append(payload)
            received(session_id, payload, now)

        rules.message_received = seen  # type: ignore[method-assign]

    def daemon_of(self, peer: Peer) -> int:
        """The daemon the peer's datagrams go to (its address index, see daemons)."""
        return peer.chat.address_index if len(self.daemons) > 1 else 0

    def client(
        self, nick: str, room: str = "lobby", start: bool = True, addresses: int = 1, **kw: object
    ) -> Peer:
        n = len(self.peers) + 1
        chat = ChatClient(
            ClientEndpoint(self.psk, self.config),
            nick,
            room,
            rng=random.Random(n),
            **kw,  # type: ignore[arg-type]
        )
        peer = Peer(chat, (f"10.0.0.{n}", 40000 + n))
        self.peers.append(peer)
        if start:
            chat.start(self.now, addresses=addresses)
        return peer

    def _delivered(self, peer: Peer, to_peer: bool = False) -> bool:
        if to_peer and peer.deaf:
            return False
        return self.up and not peer.cut and self.rng.random() >= self.loss

    def _refusing(self, index: int) -> bool:
        return index in self.dead or (self.refusing and index == 0)

    def step(self) -> None:
        now = self.now
        for peer in self.peers:
            for data in peer.chat.datagrams_to_send(now):
                index = self.daemon_of(peer)
                if self._refusing(index) and self.up and not peer.cut:
                    peer.chat.network_error(peer.chat.address_index, Finding.REFUSED, now)
                elif self._delivered(peer):
                    self.daemons[index].receive_datagram(data, peer.addr, now)
        by_addr = {peer.addr: peer for peer in self.peers}
        for index, daemon in enumerate(self.daemons):
            for data, addr in daemon.datagrams_to_send(now):
                if self._refusing(index):
                    continue  # a dead process sends nothing
                self.server_sent.append((data, addr))
                if addr in by_addr and self._delivered(by_addr[addr], to_peer=True):
                    by_addr[addr].chat.receive_datagram(data, now)
        for peer in self.peers:
            peer.collect(now)

    def run(self, seconds: float, dt: float = 0.02) -> None:
        """Advance the clock by ``seconds``, firing timers and moving datagrams."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + dt)
            for peer in self.peers:
                deadline = peer.chat.get_timer()
                if deadline is not None and deadline <= self.now:
                    peer.chat.handle_timer(self.now)
            for index, daemon in enumerate(self.daemons):
                deadline = daemon.get_timer()
                if deadline is not None and deadline <= self.now and index not in self.dead:
                    daemon.handle_timer(self.now)
            self.step()

    def run_until(self, condition: object, timeout: float = 30.0, dt: float = 0.02) -> None:
        end = self.now + timeout
        while not condition():  # type: ignore[operator]
            if self.now >= end:
                raise AssertionError(f"condition not met in {timeout} simulated seconds")
            self.run(dt, dt)

    def submit(self, peer: Peer, *lines: str) -> None:
        for line in lines:
            peer.chat.submit(line, self.now)
        self.step()
