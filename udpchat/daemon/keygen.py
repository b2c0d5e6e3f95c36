"""``udpchat-keygen``, the operator's key tool: make a key file, show a key's
fingerprint, or write an invite line.

    udpchat-keygen PATH [--force]                 a new random key at PATH (mode 0600)
    udpchat-keygen --fingerprint PATH             the fingerprint of the key at PATH
    udpchat-keygen --invite HOST[:PORT] [PATH]    an invite line for the key at PATH

An invite's key is the daemon's: PATH (or --key PATH), else the key_file of the
daemon's config (--config, default /etc/udpchat/chat.ini), whose port is also the
invite's when HOST has none.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from udpchat.address import DEFAULT_PORT, AddressError, split_host_port
from udpchat.daemon.config import ConfigError, load_config
from udpchat.fingerprint import fingerprint
from udpchat.invite import Invite
from udpchat.keys import KeyFileError, create_key, load_key, previous_key_path, rotate_key

PROG = "udpchat-keygen"
#: The daemon's default config (udpchat.daemon.tap.DEFAULT_CONFIG_PATH, not imported:
#: that would load twistd's machinery for a one-line answer).
DAEMON_CONFIG_PATH = "/etc/udpchat/chat.ini"

DESCRIPTION = """\
Write a new random udpchat pre-shared key to PATH (mode 0600); or, with --fingerprint,
show the fingerprint of the key in PATH (the daemon logs its key's fingerprint at
start-up: compare the two to tell whether two key files hold the same key); or, with
--invite, print one line that carries the server's address and key, for a new member
to paste into udpchat-client."""

EPILOG = """\
An invite line (udpchat://HOST:PORT/#KEY) IS the key: pass it only over a channel you
trust, as you would the key file. Its key is PATH (or --key PATH), else the key_file of
the daemon's config (--config INI, default /etc/udpchat/chat.ini), whose port the line
gets when HOST has none."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", type=Path, nargs="?", help="the key file")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--fingerprint", action="store_true", help="print the fingerprint of the key in PATH"
    )
    mode.add_argument(
        "--invite",
        metavar="HOST[:PORT]",
        help="print an invite line for clients of the server at HOST (as clients reach it)",
    )
    mode.add_argument(
        "--force", action="store_true", help="replace PATH if it exists (old key stops working)"
    )
    mode.add_argument(
        "--rotate",
        action="store_true",
        help="key rotation: keep the key in PATH as PATH.previous and write a new one; after"
        " a reload the daemon accepts both for key_overlap (README: Reload and key rotation)",
    )
    parser.add_argument(
        "--key", metavar="PATH", type=Path, help="with --invite: the server's key file"
    )
    parser.add_argument(
        "--config",
        metavar="INI",
        type=Path,
        help="with --invite: the daemon's config, for its key and port"
        f" (default {DAEMON_CONFIG_PATH})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status (1: key problem, 2: usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.invite is None and (args.key is not None or args.config is not None):
        parser.error("--key and --config go with --invite")
    try:
        if args.invite is not None:
            return _invite(parser, args)
        if args.path is None:
            parser.error("give the key file's PATH")
        if args.fingerprint:
            print(f"{fingerprint(load_key(args.path))}  {args.path}")
            return 0
        if args.rotate:
            return _rotate(args.path)
        return _new_key(args.path, args.force)
    except KeyFileError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def _rotate(path: Path) -> int:
    old = load_key(path)
    key = rotate_key(path)
    print(
        f"{PROG}: kept the old key as {previous_key_path(path)} (fingerprint "
        f"{fingerprint(old)}); wrote a new key to {path} (mode 0600), fingerprint "
        f"{fingerprint(key)}"
    )
    print(
        f"{PROG}: now reload the daemon (systemctl reload udpchat, or kill -HUP): it accepts "
        "both keys for key_overlap (a day by default) while you hand out the new key file"
    )
    return 0


def _new_key(path: Path, force: bool) -> int:
    key = create_key(path, overwrite=force)
    print(f"{PROG}: wrote a new key to {path} (mode 0600), fingerprint {fingerprint(key)}")
    print(
        f"{PROG}: the server and every client need a copy of this file; "
        "copy it over a secure channel and keep it mode 0600"
    )
    return 0


def _invite(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        host, port = split_host_port(args.invite)
    except AddressError as exc:
        parser.error(str(exc))
    if args.path is not None and args.key is not None and args.path != args.key:
        parser.error("give the key file once: PATH or --key PATH")
    key_path = args.key or args.path
    if key_path is None:
        key_path, config_port = _daemon_key(parser, args.config)
        port = config_port if port is None else port
    key = load_key(key_path)
    print(Invite(host, DEFAULT_PORT if port is None else port, key))
    print(
        f"{PROG}: this line is the key of {key_path} (fingerprint {fingerprint(key)}): "
        "whoever sees it can join; pass it only over a channel you trust",
        file=sys.stderr,
    )
    return 0


def _daemon_key(parser: argparse.ArgumentParser, config: Path | None) -> tuple[Path, int]:
    """The key file and port of the daemon's config (``config`` or the default)."""
    path = config or Path(DAEMON_CONFIG_PATH)
    if config is None and not path.exists():
        parser.error(
            f"no key file given and no daemon config at {path}; name the server's key with "
            "--key PATH (e.g. etc/chat.key), or its config with --config INI"
        )
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return loaded.key_file, loaded.port


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
