"""`udpchat-example`: print the example config and systemd units that ship inside the
package, so that a pip install has them as well as a checkout.

The files are package data (udpchat/daemon/etc/, links to the checkout's etc/, so
there is one copy to edit): `udpchat-example config > chat.ini` starts a config,
`udpchat-example config --systemd` is the same for the shipped unit, whose sandbox
lets the daemon write only its state folder.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from importlib.resources import files

#: What `udpchat-example NAME` prints: the file of that name in udpchat/daemon/etc/.
FILES = {
    "config": "chat.ini",
    "service": "udpchat.service",
    "socket": "udpchat.socket",
}

#: The key file in the shipped unit's StateDirectory=udpchat: /etc is read-only there.
SYSTEMD_KEY_FILE = "/var/lib/udpchat/chat.key"

_SYSTEMD_HEADER = (
    "# For udpchat.service: key_file is in the unit's StateDirectory= (/var/lib/udpchat),\n"
    "# the one folder its sandbox lets the daemon write (ProtectSystem=strict makes /etc\n"
    "# read-only). Written by: udpchat-example config --systemd\n#\n"
)


def example(name: str, systemd: bool = False) -> str:
    """The text of example `name` (a key of FILES); with `systemd`, the config as the
    shipped unit needs it."""
    text = files("udpchat.daemon").joinpath("etc", FILES[name]).read_text(encoding="utf-8")
    if systemd and name == "config":
        text, found = re.subn(
            r"^key_file = .*$", f"key_file = {SYSTEMD_KEY_FILE}", text, flags=re.MULTILINE
        )
        if found != 1:
            raise RuntimeError(f"{FILES[name]} has {found} key_file lines, not one")
        text = _SYSTEMD_HEADER + text
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """`udpchat-example {config,service,socket} [--systemd]`: print it; return 0."""
    parser = argparse.ArgumentParser(
        prog="udpchat-example",
        description="Print an example file that ships with udpchat, e.g. "
        "udpchat-example config > chat.ini",
    )
    parser.add_argument(
        "name",
        choices=sorted(FILES),
        help="config: chat.ini, every key documented at its default; service: the "
        "systemd unit; socket: the systemd socket unit (socket activation)",
    )
    parser.add_argument(
        "--systemd",
        action="store_true",
        help=f"with config: key_file = {SYSTEMD_KEY_FILE}, the unit's state folder",
    )
    args = parser.parse_args(argv)
    if args.systemd and args.name != "config":
        parser.error("--systemd goes with config only")
    sys.stdout.write(example(args.name, args.systemd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
