"""Per-datagram cost of the server core with few and with many sessions.

The protocol promises that nothing on the per-datagram path costs O(number of
sessions). Timing one machine's absolute speed means little on shared hardware, so
this compares ratios inside one run: the cost per datagram with 10 sessions and
with 2,000 should be about the same (ratio near 1), and so should the cost of a
garbage datagram. It also reports the server core's memory per idle session (every
cache and queue is bounded; this is the cost of one member).
Run: python benchmarks/bench_core.py
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc

from cryptography.fernet import Fernet

from udpchat.core.endpoint import ClientEndpoint, ServerEndpoint

START = 1_800_000_000.0


def build(sessions: int) -> tuple[ServerEndpoint, list[ClientEndpoint]]:
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk, max_sessions=sessions + 1)
    clients = []
    for i in range(sessions):
        client = ClientEndpoint(psk)
        client.connect(START)
        addr = (f"127.{i // 250}.{i % 250}.1", 40000)
        for data in client.datagrams_to_send(START):
            server.receive_datagram(data, addr, START)
        for data, _ in server.datagrams_to_send(START):
            client.receive_datagram(data, START)
        for data in client.datagrams_to_send(START):
            server.receive_datagram(data, addr, START)
        clients.append(client)
    server.datagrams_to_send(START)
    assert len(server) == sessions
    return server, clients


def per_datagram(server: ServerEndpoint, client: ClientEndpoint, count: int) -> float:
    """Server time per authentic data datagram (the client's work is not counted)."""
    spent, handled, now = 0.0, 0, START + 1
    for _ in range(count):
        now += 0.011  # under the per-session message rate limit
        client.send(b"x" * 100, now)
        datagrams = client.datagrams_to_send(now)
        began = time.perf_counter()
        for data in datagrams:
            server.receive_datagram(data, ("127.0.0.1", 40000), now)
        replies = server.datagrams_to_send(now)
        server.get_timer()
        spent += time.perf_counter() - began
        handled += len(datagrams)
        for data, _ in replies:
            client.receive_datagram(data, now)
        client.handle_timer(now)
    return spent / handled


def per_garbage(server: ServerEndpoint, count: int) -> float:
    junk = [bytes([3]) + os.urandom(120) for _ in range(count)]
    began = time.perf_counter()
    for data in junk:
        server.receive_datagram(data, ("127.0.0.1", 40000), START + 1)
    return (time.perf_counter() - began) / count


def memory_per_session(sessions: int) -> float:
    """Bytes the server core holds per idle established session (tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    server, clients = build(sessions)
    del clients  # the clients' memory is not the server's
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(server) == sessions
    return held / sessions


def main() -> None:
    print(f"server memory per idle session: {memory_per_session(500) / 1024:.1f} KiB")
    results = {}
    for sessions in (10, 2000):
        server, clients = build(sessions)
        per_datagram(server, clients[0], 200)  # warm up
        results[sessions] = (per_datagram(server, clients[0], 1000), per_garbage(server, 5000))
        print(
            f"{sessions:5d} sessions: {results[sessions][0] * 1e6:7.1f} us per data datagram, "
            f"{results[sessions][1] * 1e6:6.2f} us per garbage datagram"
        )
    data_ratio = results[2000][0] / results[10][0]
    junk_ratio = results[2000][1] / results[10][1]
    print(f"ratio 2000/10 sessions: data {data_ratio:.2f}, garbage {junk_ratio:.2f} (1.0 = flat)")


if __name__ == "__main__":
    main()
