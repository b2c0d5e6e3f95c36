"""The layers of udpchat, as docs/ARCHITECTURE.md draws them, hold in the code.

udpchat.core    imports nothing from Twisted or from the rest of udpchat
udpchat.chat    imports udpchat.core (and itself), never Twisted
udpchat.keys    imports udpchat.core only; beside it, never importing Twisted either,
                udpchat.address (nothing), udpchat.fingerprint (core) and
                udpchat.invite (core, keys, address, fingerprint)
udpchat.reactorclock  (a Twisted helper) and udpchat.ini (INI files, for both configs)
                import nothing from udpchat
udpchat.daemon  and udpchat.client may import the layers below, never each other
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "udpchat"

#: For each layer, the udpchat packages it may import (besides itself).
#: Key files and what goes with them (fingerprints, invite lines, the addresses they
#: name), for the daemon and the client alike.
KEY_SIDE = {"udpchat.keys", "udpchat.address", "udpchat.fingerprint", "udpchat.invite"}
#: Small modules both the daemon and the client use: the monotonic reactor clock and
#: INI reading.
HELPERS = {"udpchat.reactorclock", "udpchat.ini"}
ALLOWED = {
    "udpchat.core": set(),
    "udpchat.chat": {"udpchat.core"},
    "udpchat.keys": {"udpchat.core"},
    "udpchat.address": set(),
    "udpchat.fingerprint": {"udpchat.core"},
    "udpchat.invite": {"udpchat.core", "udpchat.keys", "udpchat.address", "udpchat.fingerprint"},
    "udpchat.reactorclock": set(),
    "udpchat.ini": set(),
    "udpchat.daemon": {
        "udpchat.core",
        "udpchat.chat",
        "udpchat.reactorclock",
        "udpchat.ini",
        *KEY_SIDE,
    },
    "udpchat.client": {
        "udpchat.core",
        "udpchat.chat",
        "udpchat.reactorclock",
        "udpchat.ini",
        *KEY_SIDE,
    },
}
NO_TWISTED = {"udpchat.core", "udpchat.chat", *KEY_SIDE}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (function-level
    imports included), relative imports resolved."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_every_module_imports_only_what_its_layer_may(module: str, path: Path) -> None:
    """A module imports from its own layer and the layers its layer may use, and the
    sans-IO layers never import Twisted."""
    layer = layer_of(module)
    if layer not in ALLOWED:
        return  # udpchat/__init__.py: the version, nothing else
    for name in imports_of(module, path):
        if name == "udpchat.__version__":
            continue  # the package's version, which any layer may show
        if name.startswith("udpchat.") and layer_of(name) != layer:
            # `from udpchat.core import events` names "udpchat.core" itself too
            assert layer_of(name) in ALLOWED[layer], f"{module} imports {name}"
        if layer in NO_TWISTED:
            assert not name.startswith(("twisted", "zope")), f"{module} imports {name}"


def test_importing_the_core_and_the_chat_layer_loads_no_twisted() -> None:
    """Importing every module of udpchat.core and udpchat.chat (and the key files)
    loads no twisted module at all: they run on any event loop, or none."""
    names = [m for m, _ in modules() if layer_of(m) in NO_TWISTED]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
    assert "udpchat.chat.server" in names and "udpchat.core.endpoint" in names
