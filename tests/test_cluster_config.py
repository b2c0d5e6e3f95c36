"""The optional [cluster] section (udpchat.daemon.clusterconfig): absent, nothing
changes; present, each mistake is one line naming the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from udpchat.daemon.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chat.ini"
    path.write_text("[server]\nport = 4000\n" + text)
    return path


def test_without_the_section_the_daemon_is_on_its_own(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).cluster is None


def test_the_section_names_redis_and_the_node(tmp_path: Path) -> None:
    path = write(tmp_path, "[cluster]\nurl = redis://:s3cret@10.0.0.5:6380/2\nnode = chat-a\n")
    cluster = load_config(path).cluster
    assert cluster is not None
    assert (cluster.host, cluster.port, cluster.db, cluster.node) == ("10.0.0.5", 6380, 2, "chat-a")
    assert cluster.password == "s3cret" and "s3cret" not in cluster.where


def test_the_node_defaults_to_this_machine_and_port(tmp_path: Path) -> None:
    cluster = load_config(write(tmp_path, "[cluster]\nurl = redis://[::1]\n")).cluster
    assert cluster is not None and cluster.node.endswith(":4000")
    assert (cluster.host, cluster.port, cluster.db) == ("::1", 6379, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node = a\n", "[cluster] has no url; fix: add url = redis://HOST:6379/0"),
        ("url = http://x/0\n", "[cluster] url = 'http://x/0' is not a redis:// URL"),
        ("url = redis:///0\n", "names no host; fix: write it as redis://HOST:PORT/DB"),
        ("url = redis://x/zero\n", "has a database that is not a number"),
        ("url = redis://x:99999/0\n", "is not a Redis URL"),
        ("url = redis://x\nnode = a b\n", "[cluster] node = 'a b' is not a valid node name"),
        ("url = redis://x\nhost = y\n", "[cluster] unknown key 'host'; fix: use one of url, node"),
    ],
)
def test_mistakes_name_the_file_the_key_and_the_fix(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, "[cluster]\n" + text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and expected in str(caught.value)
