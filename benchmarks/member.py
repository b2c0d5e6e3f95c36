"""A chat member for the benchmarks: the reference client's protocol core over one
non-blocking loopback socket, with an outbox like the real client's (lines wait
while the core's queue is full). Subclasses say what they do with events."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from udpchat.chat.lineids import new_line_id
from udpchat.client.cli import client_protocol_config
from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint, QueueFull


class Member:
    def __init__(self, server: tuple[str, int], psk: bytes, nick: str) -> None:
        self.server = server
        self.core = ClientEndpoint(psk, client_protocol_config(30.0))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.nick = nick
        self.failed = 0  # lines the core could not deliver
        self.ended = 0  # sessions that ended
        self.backlog: list[bytes] = []
        self.core.connect(time.time())
        self.send({"t": "hello", "nick": nick, "room": "lobby", "client": os.urandom(8).hex()})

    def send(self, message: dict[str, Any]) -> None:
        self.backlog.append(json.dumps(message).encode())

    def say(self, text: str) -> None:
        self.send({"t": "say", "text": text, "id": new_line_id()})

    def pump(self) -> None:
        """Feed the core, read, run its timer, send, and hand over its events."""
        now = time.time()
        while self.backlog:
            try:
                self.core.send(self.backlog[0], now)
            except QueueFull:
                break
            self.backlog.pop(0)
        while True:
            try:
                data, _ = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            self.core.receive_datagram(data, now)
        timer = self.core.get_timer()
        if timer is not None and timer <= now:
            self.core.handle_timer(now)
        for data in self.core.datagrams_to_send(now):
            try:
                self.sock.sendto(data, self.server)
            except OSError:
                pass  # UDP may lose it; the core retransmits
        while (event := self.core.next_event()) is not None:
            if isinstance(event, events.MessageReceived):
                self.received(json.loads(event.payload))
            elif isinstance(event, events.MessageNotDelivered):
                self.failed += 1
            elif isinstance(event, events.SessionEnded):
                self.ended += 1
            else:
                self.other(event)

    def received(self, message: dict[str, Any]) -> None:
        """An application message from the server."""

    def other(self, event: events.Event) -> None:
        """Any other event of the core (rekeys, for instance)."""
