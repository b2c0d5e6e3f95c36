"""The optional [cluster] section of the daemon's INI file (docs/CLUSTER.md)::

    [cluster]
    url = redis://127.0.0.1:6379/0
    node = chat-a

Without the section the daemon runs on its own, as ever, and needs nothing more
installed. With it, the daemon talks to Redis with its own small client (udpchat.daemon.resp);
every mistake is one line naming the file, the key and the fix, like the rest of
udpchat.daemon.config.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SECTION = "cluster"
KEYS = ("url", "node")
DEFAULT_REDIS_PORT = 6379
_NODE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the engine is and what this daemon is called in the cluster."""

    host: str
    port: int = DEFAULT_REDIS_PORT
    db: int = 0
    node: str = ""
    username: str | None = None
    password: str | None = None

    @property
    def where(self) -> str:
        """The engine's address for log lines (never the password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def load_cluster(
    name: str, values: dict[str, str], default_node: str, error: type[Exception]
) -> ClusterConfig:
    """The [cluster] section's values (as read) -> ClusterConfig, or `error` (one
    line). `default_node` is used when `node` is not set."""

    def fail(key: str, problem: str, fix: str) -> Exception:
        return error(f"{name}: [{SECTION}] {key} = {values.get(key, '')!r} {problem}; fix: {fix}")

    for key in values:
        if key not in KEYS:
            raise error(
                f"{name}: [{SECTION}] unknown key {key!r}; fix: use one of {', '.join(KEYS)}"
            )
    if "url" not in values:
        raise error(
            f"{name}: [{SECTION}] has no url; fix: add url = redis://HOST:6379/0, or remove "
            f"the [{SECTION}] section to run this daemon on its own"
        )
    fix = "write it as redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0"
    text = values["url"].strip()
    try:
        url = urlsplit(text)
        port = url.port or DEFAULT_REDIS_PORT
    except ValueError:
        raise fail("url", "is not a Redis URL", fix) from None
    if url.scheme != "redis":
        raise fail("url", "is not a redis:// URL (only plain Redis is supported)", fix)
    if not url.hostname:
        raise fail("url", "names no host", fix)
    if url.query or url.fragment:
        raise fail("url", "has a query or fragment", fix)
    path = url.path.strip("/")
    if path and not (path.isdigit() and int(path) < 1 << 16):
        raise fail("url", "has a database that is not a number", fix)
    node = values.get("node", "").strip() or default_node
    if not _NODE_RE.fullmatch(node):
        raise fail("node", "is not a valid node name", "use 1-64 letters, digits and _ . : - ")
    return ClusterConfig(
        host=url.hostname,
        port=port,
        db=int(path) if path else 0,
        node=node,
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password is not None else None,
    )


def default_node(port: int) -> str:
    """This machine's name and the daemon's port: unique unless two daemons on one
    machine share a port, which they cannot."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:50] or "node"
    return f"{host}:{port}"
