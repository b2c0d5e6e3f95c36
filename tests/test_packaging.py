"""Specification of packaging: the twistd plugin ships in the wheel and is found by twistd."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

import udpchat

PLUGIN_FILE = "twisted/plugins/udpchat_plugin.py"


def installed_distribution() -> metadata.Distribution | None:
    """The udpchat distribution installed in site-packages by a real (non-editable)
    install, ignoring the udpchat.egg-info that building leaves in the checkout."""
    repo_root = Path(__file__).resolve().parent.parent
    for dist in metadata.distributions(name="udpchat"):
        if Path(str(dist.locate_file(""))).resolve() == repo_root:
            continue
        direct_url = dist.read_text("direct_url.json")
        if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
            continue
        return dist
    return None


requires_install = pytest.mark.skipif(
    installed_distribution() is None,
    reason="udpchat is not installed non-editably (run: pip install '.[test]'; .ci/run does)",
)


def clean_env() -> dict[str, str]:
    """Environment without PYTHONPATH, so only site-packages can provide udpchat."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.pop("NOTIFY_SOCKET", None)
    return env


def test_plugin_folders_have_no_init_file(repo_root: Path) -> None:
    """twisted/ and twisted/plugins/ must stay namespace folders (no __init__.py), or
    they would shadow the real twisted package."""
    assert not (repo_root / "twisted" / "__init__.py").exists()
    assert not (repo_root / "twisted" / "plugins" / "__init__.py").exists()


def test_package_discovery_includes_the_twisted_plugin(repo_root: Path) -> None:
    """setup.cfg's find_namespace include list picks up udpchat and twisted.plugins only."""
    find_namespace_packages = pytest.importorskip("setuptools").find_namespace_packages
    found = set(
        find_namespace_packages(
            where=str(repo_root), include=["udpchat", "udpchat.*", "twisted.plugins"]
        )
    )
    assert {"udpchat", "twisted.plugins"} <= found
    assert not {"twisted", "tests", "etc", "docs"} & found
    cfg = (repo_root / "setup.cfg").read_text()
    assert "packages = find_namespace:" in cfg and "twisted.plugins" in cfg


def test_plugin_import_is_light(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """Importing the plugin (as `twistd --help` does) does not import udpchat.daemon.tap."""
    code = (
        "import sys; from twisted.plugins import udpchat_plugin as p; "
        "print(p.udpchat.tapname, 'udpchat.daemon.tap' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["udpchat", "False"]


def test_a_daemon_on_its_own_and_the_client_import_no_cluster_and_no_key_formats(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """What a daemon outside a cluster and the client import loads neither the
    cluster's rules and engine messages (only a daemon in a cluster builds them) nor
    cryptography's key serialization formats (the handshake needs raw X25519 bytes
    only): each cost every daemon or client 20-35 ms of CPU at start."""
    code = (
        "import sys\n"
        "import udpchat.daemon.tap, udpchat.daemon.service\n"
        "import udpchat.client.cli, udpchat.client.link, udpchat.client.pipe\n"
        "unwanted = ('udpchat.chat.cluster', 'udpchat.chat.engine', 'udpchat.chat.split',\n"
        "            'cryptography.hazmat.primitives.serialization')\n"
        "print(sorted(set(unwanted) & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_version_is_0_1_0() -> None:
    """The package version (read by setup.cfg) is 0.1.0."""
    assert udpchat.__version__ == "0.1.0"


@requires_install
def test_installed_distribution_contains_the_plugin_and_matches_the_source() -> None:
    """The wheel installs twisted/plugins/udpchat_plugin.py next to the udpchat package."""
    dist = installed_distribution()
    assert dist is not None
    files = {str(f) for f in dist.files or []}
    assert PLUGIN_FILE in files
    assert "udpchat/keys.py" in files
    assert dist.version == udpchat.__version__


@requires_install
def test_installed_twistd_lists_udpchat_from_any_folder(tmp_path: Path) -> None:
    """After a non-editable install, `twistd --help` run outside the checkout lists udpchat."""
    twistd = Path(sysconfig.get_path("scripts")) / "twistd"
    result = subprocess.run(
        [str(twistd), "--help"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    commands = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")]
    assert "udpchat" in commands, result.stdout


@requires_install
def test_installed_keygen_console_script_writes_a_key(tmp_path: Path) -> None:
    """The udpchat-keygen console script is installed and works outside the checkout."""
    keygen = Path(sysconfig.get_path("scripts")) / "udpchat-keygen"
    result = subprocess.run(
        [str(keygen), "sub/chat.key"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sub" / "chat.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI must test the installed package")
def test_ci_tests_an_installed_package() -> None:
    """Under CI (.ci/run) the packaging tests above must run, not skip: udpchat is
    installed non-editably in the test environment."""
    assert installed_distribution() is not None


def test_ci_runs_lint_format_and_type_checks_with_pinned_tools(repo_root: Path) -> None:
    """.ci/run runs ruff, the format check and mypy (on udpchat and on tests) before
    pytest, and the test extra pins ruff and mypy, so that a new release of either
    cannot fail CI on unchanged code."""
    script = (repo_root / ".ci" / "run").read_text()
    checks = [
        "ruff check udpchat tests",
        "ruff format --check udpchat tests",
        "mypy udpchat",
        "mypy tests",
    ]
    positions = [script.find(check) for check in checks]
    assert all(position > script.find("pip install --quiet '.[test]'") for position in positions)
    assert all(position < script.find("pytest ||") for position in positions)
    setup = configparser.ConfigParser()
    setup.read(repo_root / "setup.cfg")
    extra = setup["options.extras_require"]["test"].split()
    for tool in ("ruff", "mypy"):
        assert any(line.startswith(f"{tool}==") for line in extra), tool


# --- what an operator gets besides the code ------------------------------------------------

EXAMPLES = {"config": "chat.ini", "service": "udpchat.service", "socket": "udpchat.socket"}


@pytest.mark.parametrize(("name", "file"), sorted(EXAMPLES.items()))
def test_udpchat_example_prints_the_shipped_file(
    repo_root: Path, capsys: pytest.CaptureFixture[str], name: str, file: str
) -> None:
    """`udpchat-example NAME` prints etc/FILE exactly: the package carries links to
    the checkout's etc/ files (one copy to edit), which a wheel turns into copies."""
    from udpchat.daemon.examples import main

    link = repo_root / "udpchat" / "daemon" / "etc" / file
    assert link.is_symlink() and link.resolve() == (repo_root / "etc" / file).resolve()
    assert main([name]) == 0
    assert capsys.readouterr().out == (repo_root / "etc" / file).read_text()


def test_udpchat_example_config_for_systemd_keeps_the_key_in_the_state_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`udpchat-example config --systemd` is the example config with key_file in the
    unit's StateDirectory= (/var/lib/udpchat), the one folder the sandboxed daemon may
    write; every other setting is the default."""
    from udpchat.daemon.config import load_config
    from udpchat.daemon.examples import main

    assert main(["config", "--systemd"]) == 0
    path = tmp_path / "chat.ini"
    path.write_text(capsys.readouterr().out)
    config = load_config(path)
    assert config.key_file == Path("/var/lib/udpchat/chat.key")
    defaults = load_config(write_empty_config(tmp_path / "empty.ini"))
    for field in ("interface", "port", "history_lines", "max_members", "log_level"):
        assert getattr(config, field) == getattr(defaults, field), field


def write_empty_config(path: Path) -> Path:
    path.write_text("[server]\n")
    return path


def test_udpchat_example_refuses_systemd_for_a_unit(capsys: pytest.CaptureFixture[str]) -> None:
    """--systemd is about the config; with a unit it is a usage error (exit 2)."""
    from udpchat.daemon.examples import main

    with pytest.raises(SystemExit) as info:
        main(["service", "--systemd"])
    assert info.value.code == 2
    assert "--systemd goes with config only" in capsys.readouterr().err


def test_twistd_help_points_to_the_example_command_not_a_checkout_file() -> None:
    """`twistd udpchat --help` names `udpchat-example config`, which a pip install
    has, not etc/chat.ini, which it does not."""
    from udpchat.daemon.tap import Options

    assert "udpchat-example config" in Options.longdesc
    assert "etc/chat.ini" not in str(Options())


def test_license_file_is_the_mit_license_setup_cfg_names(repo_root: Path) -> None:
    """setup.cfg says MIT, and the LICENSE file (put in the wheel by setuptools) is it."""
    setup = configparser.ConfigParser()
    setup.read(repo_root / "setup.cfg")
    assert setup["metadata"]["license"] == "MIT"
    text = (repo_root / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


def test_twistd_files_in_the_checkout_are_ignored(repo_root: Path) -> None:
    """`twistd -n` writes twistd.pid into the folder it runs in, daemonized twistd also
    twistd.log: neither belongs in git."""
    ignored = (repo_root / ".gitignore").read_text().splitlines()
    assert "twistd.pid" in ignored and "twistd.log*" in ignored


@requires_install
def test_installed_udpchat_example_prints_the_config_from_any_folder(
    tmp_path: Path, repo_root: Path
) -> None:
    """After a non-editable install the console script prints the config, read from
    the package data (no checkout needed)."""
    dist = installed_distribution()
    assert dist is not None
    files = {str(f) for f in dist.files or []}
    assert {f"udpchat/daemon/etc/{file}" for file in EXAMPLES.values()} <= files
    example = Path(sysconfig.get_path("scripts")) / "udpchat-example"
    result = subprocess.run(
        [str(example), "config"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (repo_root / "etc" / "chat.ini").read_text()
