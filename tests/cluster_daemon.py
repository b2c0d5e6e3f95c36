"""A real `twistd udpchat` daemon of a cluster (a [cluster] section naming the test's
Redis), for the cluster tests (docs/CLUSTER.md)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon import Daemon


class ClusterDaemon(Daemon):
    """A Daemon whose config has a [cluster] section."""

    def __init__(
        self, folder: Path, env: dict[str, str], url: str, node: str, **settings: Any
    ) -> None:
        self.cluster = {"url": url, "node": node}
        super().__init__(folder, env, **settings)

    def write_config(self) -> None:
        super().write_config()
        lines = ["[cluster]"] + [f"{k} = {v}" for k, v in self.cluster.items()]
        with self.config.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


@contextmanager
def started_daemons(
    tmp_path: Path, env: dict[str, str], url: str, psk_file: Path, **settings: Any
) -> Iterator[list[ClusterDaemon]]:
    """Daemons a, b and c on the Redis at `url`, sharing one key file, started at once
    (each start waits for its daemon); killed on the way out."""
    daemons = []
    for name in ("a", "b", "c"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "chat.key").write_bytes(psk_file.read_bytes())
        (folder / "chat.key").chmod(0o600)
        daemons.append(ClusterDaemon(folder, env, url, name, **settings))
    try:
        with ThreadPoolExecutor(len(daemons)) as pool:
            list(pool.map(ClusterDaemon.start, daemons))
        yield daemons
    finally:
        for daemon in daemons:
            daemon.kill()
