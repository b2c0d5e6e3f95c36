"""Shared pytest fixtures: the repo root, how to run twistd in a subprocess, a PSK file;
and the hypothesis profiles."""

from __future__ import annotations

import compileall
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.fernet import Fernet
from hypothesis import settings
from hypothesis import strategies as st
from pipe_client import PipeClient
from redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

if TYPE_CHECKING:
    from daemon import Daemon

# Property tests: no per-example deadline (a slow example on a loaded 2-core CI machine
# is not a bug, and a deadline makes such runs flaky), and 100 examples each, which
# keeps the whole suite fast. HYPOTHESIS_PROFILE=thorough searches ten times as hard
# (e.g. nightly, or after changing a parser). Tests that need other numbers say so.
settings.register_profile("udpchat", deadline=None, max_examples=100)
settings.register_profile("thorough", settings.get_profile("udpchat"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "udpchat"))

REPO_ROOT = Path(__file__).resolve().parent.parent

# The suite starts a few hundred daemons and clients, each importing udpchat from this
# checkout. A machine that sets PYTHONDONTWRITEBYTECODE made every one of them compile
# the package again: about 0.1 s of CPU per process, a sixth of the suite's CPU. The
# children write and share __pycache__ (git-ignored) instead.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False  # this process too: pytest's rewritten test modules


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the checkout's package once, before the workers' children race to; and
    in the process that hands out tests to xdist's workers, build hypothesis's tables
    of Unicode characters while the workers start."""
    compileall.compile_dir(REPO_ROOT / "udpchat", quiet=1)
    if session.config.pluginmanager.has_plugin("dsession"):
        threading.Thread(target=_build_unicode_tables, daemon=True).start()


def _build_unicode_tables() -> None:
    """Hypothesis draws text from tables of which characters are in which category
    and which ones UTF-8 encodes (st.text() uses both); it builds them from all 1.1
    million code points, 2.2 s of CPU, and keeps them in .hypothesis/unicode_data.
    On a fresh checkout (CI) every worker built them at its first text strategy, at
    once: 8 s of the suite's CPU. Built here first, the workers only read them."""
    st.characters(codec="utf-8").validate()


#: Fixtures that mark a test as one running real processes (daemons, clients, twistd).
PROCESS_FIXTURES = frozenset({"subprocess_env", "twistd_argv"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that start real processes first, the in-memory tests after them.

    The process tests are a tenth of the tests but four fifths of the time, a few of
    them 5-10 s each; the workers take tests from one queue in this order (pyproject:
    --maxschedchunk), so the long ones start early and the many short ones fill the
    workers at the end, instead of one worker finishing a long test alone. Within
    each group the order stays the files' own (a stable sort), the same on every
    worker, as xdist requires.
    """
    items.sort(key=lambda item: PROCESS_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())))


# `python -m twisted` is the newer `twist` runner (no -n, no --pidfile); this runs the
# real twistd with the interpreter running the tests.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
]


@pytest.fixture
def repo_root() -> Path:
    """The checkout's top folder (holds udpchat/, twisted/plugins/, etc/)."""
    return REPO_ROOT


@pytest.fixture
def twistd_argv() -> list[str]:
    """Command prefix for twistd; append e.g. ["-n", "--pidfile=", "udpchat", ...]."""
    return list(TWISTD)


@pytest.fixture
def subprocess_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for child processes: this checkout first on sys.path (so its
    udpchat package and twisted/plugins are found from any cwd), no systemd socket,
    the client's state (kept client ids, input history) in a folder of the test's own,
    and its config folder an empty one (the user's client.ini must not count)."""
    env = dict(os.environ)
    env["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    env["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    """A real daemon on its defaults (loopback, a free port), in tmp_path/server; killed
    at the end. Test modules that need other settings define their own."""
    from daemon import Daemon  # (tests/daemon.py imports this module's TWISTD)

    folder = tmp_path / "server"
    folder.mkdir()
    d = Daemon(folder, subprocess_env)
    yield d.start()
    d.kill()


@pytest.fixture
def psk_file(tmp_path: Path) -> Path:
    """A valid pre-shared key file (mode 0600) at tmp_path/chat.key."""
    path = tmp_path / "chat.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(Fernet.generate_key() + b"\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def clients() -> Iterator[Callable[..., PipeClient]]:
    """Start real pipe-mode clients (PipeClient); every one still running at the end
    is killed."""
    started: list[PipeClient] = []

    def start(*args: object, **kwargs: object) -> PipeClient:
        client = PipeClient(*args, **kwargs)  # type: ignore[arg-type]
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own on a free loopback port, in
    tmp_path/redis; stopped at the end. Skips where Debian's redis-server is missing."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder).start()
    yield server
    server.stop()
