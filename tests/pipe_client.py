"""A real udpchat-client in pipe mode, driven by a test: used by the end-to-end tests
of the client, the daemon's flood tests and the spec interop tests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

CLIENT = [sys.executable, "-m", "udpchat.client.cli"]


class PipeClient:
    """A real udpchat-client in pipe mode. Its stdin is a pipe this test holds open
    (so the client stays until `end_input`); a thread collects every stdout line."""

    def __init__(
        self,
        port: int | None,
        key: Path,
        nick: str,
        env: dict[str, str],
        *args: str,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
    ) -> None:
        """`prefix` goes before the command, e.g. ("ip", "netns", "exec", NAME);
        `port` None: none given (`host` carries it, or a list of daemons, each its own)."""
        self.nick = nick
        ports = () if port is None else ("--port", str(port))
        argv = [*prefix, *CLIENT, host, *ports, "--key", str(key), "--nick", nick]
        self.proc = subprocess.Popen(
            [*argv, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._closed_streams = 0
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.lines), (self.proc.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: IO[bytes], sink: list[str]) -> None:
        for raw in stream:
            with self._changed:
                sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed_streams += 1
            self._changed.notify_all()

    def type(self, *lines: str) -> None:
        """Write ``lines`` to the client's stdin, as a script would."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.proc.stdin.flush()

    def end_input(self) -> None:
        """End of input: the client delivers what is left, leaves and exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait_until(
        self, predicate: Callable[[list[str]], bool], what: str, timeout: float = 20
    ) -> None:
        """Block until ``predicate(lines so far)`` holds (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed_streams == 2:  # timed out, or it exited
                    raise AssertionError(
                        f"{self.nick}: {what} not seen in {timeout} s; exit {self.proc.poll()};"
                        f" stdout {self.lines}; stderr {self.stderr}"
                    )
                self._changed.wait(min(left, 0.5))

    def wait_for(self, line: str, timeout: float = 20, count: int = 1) -> None:
        """Block until ``line`` (a whole output line) was printed ``count`` times."""
        self.wait_until(lambda lines: lines.count(line) >= count, repr(line), timeout)

    def saw_start(self, prefix: str) -> bool:
        """Whether a line starting with ``prefix`` was printed."""
        return any(line.startswith(prefix) for line in self.lines)

    def wait_for_start(self, prefix: str, timeout: float = 20) -> None:
        """Block until a line starting with ``prefix`` was printed."""
        self.wait_until(
            lambda lines: any(line.startswith(prefix) for line in lines), repr(prefix), timeout
        )

    def said(self, nick: str) -> list[str]:
        """The texts of ``nick``'s live chat lines, in the order printed."""
        prefix = f"<{nick}> "
        return [line[len(prefix) :] for line in self.lines if line.startswith(prefix)]

    def finish(self, timeout: float = 30) -> int:
        """End input and return the exit status."""
        self.end_input()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (no goodbye) if still running; then close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
