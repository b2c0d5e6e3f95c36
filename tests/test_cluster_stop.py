"""A cluster daemon stopped on purpose (docs/CLUSTER.md), with a real `redis-server`
and a real `twistd udpchat`: found by benchmarks/cluster_fanout.py, whose every clean
stop logged the warning an operator watches for when Redis goes away."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis_server import REDIS_SERVER, SKIP_REASON, RedisServer
from test_cluster import ClusterDaemon

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)


def test_a_clean_stop_does_not_say_redis_is_unreachable(
    tmp_path: Path, subprocess_env: dict[str, str], redis: RedisServer, psk_file: Path
) -> None:
    """SIGTERM closes the daemon's Redis connections itself: its blocking read ends
    with them, and that is not Redis going away. The log says the daemon stopped,
    and nothing about Redis being unreachable while Redis is up all along."""
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "chat.key").write_bytes(psk_file.read_bytes())
    (folder / "chat.key").chmod(0o600)
    daemon = ClusterDaemon(folder, subprocess_env, redis.url, "a").start()
    assert daemon.stop() == 0
    log = daemon.log()
    assert "Received SIGTERM" in log
    assert "unreachable" not in log, log
    assert redis.ping()
