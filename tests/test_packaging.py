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
