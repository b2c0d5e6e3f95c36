"""A handshake flood from forged sources (issue 9, finding 4), as a separate process.

One key holder sends authentic message 1s at a fixed rate from many loopback source
addresses (127.0.0.2 .. 127.0.0.250, one socket each, standing in for forged
sources: nothing ever reads what comes back). The message 1s are built beforehand
with the protocol core, each with its own ephemeral, and sent round and round: with
more of them than the server's replay cache holds (4096), a message 1 comes back
only after the cache has forgotten it, so each one costs a server without cookies a
whole handshake.

Run as a script (tests/test_daemon_handshake_flood.py, benchmarks/handshake_flood.py):

  python tests/handshake_flood.py HOST PORT KEY_FILE --rate 6000 --seconds 8

It prints "ready" once the message 1s are built and it starts sending, and at the
end one JSON line: {"sent": N, "seconds": S, "rate": N/S, "refused": M}, where
"refused" counts datagrams the local socket would not take (a full buffer).
SIGTERM ends the flood early, with the same last line.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from pathlib import Path

from udpchat.core.endpoint import ClientEndpoint

#: Distinct message 1s sent round and round: more than the replay cache remembers.
DISTINCT_MESSAGES = 8000
SOURCES = [f"127.0.0.{i}" for i in range(2, 251)]
#: How far ahead of now the message 1s are stamped.
STAMP_AHEAD_S = 50.0
#: Sending happens in slices this long: a batch, then sleep until the next.
SLICE_S = 0.002


def build_message_1s(psk: bytes, count: int, now: float) -> list[bytes]:
    """`count` authentic message 1s of new sessions, stamped `now`."""
    out = []
    for _ in range(count):
        client = ClientEndpoint(psk)
        client.connect(now)
        out.append(client.datagrams_to_send(now)[0])
    return out


def open_sources(addresses: list[str]) -> list[socket.socket]:
    sockets = []
    for host in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def flood(
    server: tuple[str, int], psk: bytes, rate: float, seconds: float
) -> dict[str, float | int]:
    """Send authentic message 1s at `rate` per second for `seconds`."""
    # Stamped ahead (a server accepts up to 60 s ahead, PROTOCOL.md 4.5): fresh for
    # STAMP_AHEAD_S + 30 s, long enough for any run without building them again.
    messages = build_message_1s(psk, DISTINCT_MESSAGES, time.time() + STAMP_AHEAD_S)
    sockets = open_sources(SOURCES)
    print("ready", flush=True)
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, frame: stopped.append(number))
    sent = refused = 0
    started = time.monotonic()
    end = started + seconds
    while (now := time.monotonic()) < end and not stopped:
        due = int((now - started) * rate)
        while sent + refused < due:
            index = sent + refused
            try:
                sockets[index % len(sockets)].sendto(messages[index % len(messages)], server)
                sent += 1
            except BlockingIOError:
                refused += 1
        time.sleep(SLICE_S)
    elapsed = time.monotonic() - started
    for sock in sockets:
        sock.close()
    return {
        "sent": sent,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed),
        "refused": refused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("key_file", type=Path)
    parser.add_argument("--rate", type=float, default=6000.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    psk = args.key_file.read_bytes().strip()
    result = flood((args.host, args.port), psk, args.rate, args.seconds)
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
