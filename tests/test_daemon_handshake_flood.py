"""A handshake flood from forged sources against the real daemon (`twistd -n udpchat`)
and the real client (`python -m udpchat.client.cli`, pipe mode), on loopback.

One key holder sends 2,000 authentic message 1s a second (20 times the daemon's
handshake budget; benchmarks/handshake_flood.py measures 6,000) from 249 loopback
source addresses that never answer (tests/handshake_flood.py). Before the handshake budget
and cookies (PROTOCOL.md 4.5, 4.7) the daemon spent a whole handshake on each and a
newcomer waited 8 to more than 45 s (benchmarks/handshake_flood.py). Now the flood
only gets cookie replies, and a newcomer, which returns its cookie, is welcomed at
once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from pipe_client import PipeClient

FLOOD = Path(__file__).resolve().parent / "handshake_flood.py"
FLOOD_RATE = 2000  # enough to keep the daemon under load; more only costs the suite CPU
#: The flood runs this long before the newcomer starts: the daemon is under load.
HEAD_START_S = 1.0
WELCOME_WITHIN_S = 5.0
#: At most: the flood is stopped once the newcomer is in.
FLOOD_S = HEAD_START_S + WELCOME_WITHIN_S + 5


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon(tmp_path, subprocess_env, log_rejects_interval=1)
    yield d.start()
    d.kill()


def start_flood(daemon: Daemon, env: dict[str, str]) -> subprocess.Popen[str]:
    """The flooder, once it has built its message 1s and started sending."""
    flood = subprocess.Popen(
        [sys.executable, str(FLOOD), "127.0.0.1", str(daemon.port), str(daemon.key_file)]
        + ["--rate", str(FLOOD_RATE), "--seconds", str(FLOOD_S)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert flood.stdout is not None
    assert flood.stdout.readline().strip() == "ready"
    return flood


def test_a_newcomer_is_welcomed_within_5_s_during_a_forged_handshake_flood(
    daemon: Daemon, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """While 2,000 authentic message 1s a second arrive from sources that never
    answer, a newcomer (the real client) is welcomed within 5 s of starting: the
    daemon, under load, answers the flood with cookie replies only, and the
    newcomer, whose address gets the cookie, returns it and gets its handshake. The
    operator is told the daemon is under handshake load."""
    flood = start_flood(daemon, subprocess_env)
    newcomer = None
    try:
        time.sleep(HEAD_START_S)
        started = time.monotonic()
        newcomer = PipeClient(daemon.port, daemon.key_file, "newcomer", subprocess_env)
        newcomer.wait_for("-!- you are newcomer in lobby", timeout=WELCOME_WITHIN_S)
        welcomed_s = time.monotonic() - started
        flood.terminate()  # it says what it offered until now
        out, _ = flood.communicate(timeout=10)
    finally:
        if newcomer is not None:
            newcomer.kill()
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    offered = json.loads(out.strip().splitlines()[-1])
    print(f"newcomer welcomed after {welcomed_s:.2f} s; the flood offered {offered}")
    assert offered["rate"] > FLOOD_RATE / 2, offered  # it was a flood
    deadline = time.monotonic() + 3  # the summary comes every second
    while "Under handshake load: asking for cookies" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)
