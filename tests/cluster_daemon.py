"""A real `twistd udpchat` daemon of a cluster (a [cluster] section naming the test's
Redis), for the cluster tests (docs/CLUSTER.md)."""

from __future__ import annotations

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
