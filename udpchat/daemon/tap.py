"""twistd glue for udpchat: command-line options and makeService.

`twistd -n udpchat --config PATH` loads the INI config, makes sure the pre-shared key
exists (creating it, mode 0600, on first start), opens the UDP socket (or takes the one
systemd passed) and builds the chat service. Everything that can stop a start happens
here, before twistd daemonizes or writes its pidfile: a bad config, key or port ends
the launching command with one line on stderr and its exit status, never a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from udpchat.daemon import sdnotify
from udpchat.daemon.config import ConfigError, ServerConfig, load_config
from udpchat.daemon.listen import ListenError, Listening, open_socket
from udpchat.daemon.logs import (
    LEVELS,
    PRIORITIES,
    LevelFilter,
    daemon_observer,
    journal_stream_matches,
)
from udpchat.daemon.rotation import PreviousKey, load_previous_key
from udpchat.keys import KeyFileError, ensure_key

# sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus=78 stops systemd from
# restarting a daemon that cannot start until someone edits a file.
EXIT_CONFIG = 78
# sysexits.h EX_TEMPFAIL: the port is in use; a later start may succeed, so systemd's
# Restart=on-failure keeps trying.
EXIT_TEMPFAIL = 75

# Where the systemd unit (etc/udpchat.service) and packagers put it.
DEFAULT_CONFIG_PATH = "/etc/udpchat/chat.ini"

# The state folder of the shipped unit (StateDirectory=udpchat): writable by the daemon
# under ProtectSystem=strict, unlike /etc.
SYSTEMD_STATE_FOLDER = "/var/lib/udpchat"

log = Logger()


class Options(usage.Options):
    """Options of `twistd udpchat`."""

    synopsis = "[--config PATH]"
    longdesc = (
        "Run the udpchat server. Every setting lives in the INI config file; "
        "`udpchat-example config` prints one with every key documented. A missing "
        "key file is created on first start."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG_PATH, "INI config file of the server."],
    ]


class ReadinessNotifier(Service):
    """Tells systemd (Type=notify) when the chat is up and when it starts stopping.

    It is the last child of the top MultiService: children start in order, so READY=1
    goes out after the chat service has bound its port; they stop in reverse order, so
    STOPPING=1 goes out before members are told goodbye.
    """

    def startService(self) -> None:
        super().startService()
        # Only once the reactor runs are twistd's SIGTERM handlers installed: a stop
        # request systemd sends right after READY=1 must find them in place.
        from twisted.internet import reactor

        reactor.callWhenRunning(sdnotify.notify, "READY=1")

    def stopService(self) -> None:
        sdnotify.notify("STOPPING=1")
        super().stopService()


class DaemonService(MultiService):
    """The daemon's top service. Given to twistd's application, it also hands twistd
    the log observer (udpchat.daemon.logs) to use instead of its own."""

    def __init__(self, log_filter: LevelFilter | None) -> None:
        super().__init__()
        #: The level filter in front of the log output; its `level` may change live.
        self.log_filter = log_filter

    def setServiceParent(self, parent: Any) -> None:
        # twistd's application is a Componentized; AppLogger.start, which runs next,
        # uses its ILogObserver component if it has one.
        if self.log_filter is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_filter)
        super().setServiceParent(parent)


def _fail(message: str, status: int = EXIT_CONFIG) -> NoReturn:
    # twistd calls makeService before it starts logging, daemonizes or writes its
    # pidfile, so this line reaches the terminal (or the journal) as is, and the
    # launching command ends with `status`; any exception other than SystemExit would
    # become a traceback.
    prefix = f"<{PRIORITIES[LEVELS['error']]}>" if _stderr_is_journal() else ""
    print(f"{prefix}udpchat: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def _stderr_is_journal() -> bool:
    try:
        return journal_stream_matches(os.environ, sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def _read_only(folder: Path) -> bool:
    """True if `folder`, or its nearest existing parent, is on a read-only mount."""
    for candidate in (folder, *folder.parents):
        try:
            return bool(os.statvfs(candidate).f_flag & os.ST_RDONLY)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return False


def key_problem(message: str, config: ServerConfig, environ: Mapping[str, str]) -> str:
    """The key file error to show: a key that cannot be created on a read-only file
    system (systemd's ProtectSystem=strict makes /etc one) is pointed at the unit's
    state folder; any other problem keeps the key module's own explanation."""
    key = config.key_file
    if key.exists() or not _read_only(key.parent):
        return message
    # $STATE_DIRECTORY: systemd sets it from StateDirectory= (several are ":"-separated).
    state = environ.get("STATE_DIRECTORY", "").split(":")[0] or SYSTEMD_STATE_FOLDER
    return (
        f"cannot create key file {key}: {key.parent} is on a read-only file system "
        "(under systemd, ProtectSystem=strict makes /etc read-only); fix: set "
        f"key_file = {Path(state) / 'chat.key'} in {config.path} (the unit's "
        "StateDirectory=, which the daemon may write)"
    )


def load_settings(config_path: str) -> tuple[ServerConfig, bytes, PreviousKey | None]:
    """Load config, key and a rotation's previous key (udpchat.daemon.rotation),
    exiting with one clear line if any is unusable."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        psk, created = ensure_key(config.key_file)
    except KeyFileError as exc:
        _fail(key_problem(str(exc), config, os.environ))
    if created:
        log.info(
            "Created a new pre-shared key file {path} (mode 0600); "
            "clients need a copy of this file",
            path=str(config.key_file),
        )
    try:
        previous, expired = load_previous_key(config, time.time())
    except KeyFileError as exc:
        _fail(str(exc))
    if expired is not None:
        log.info(expired)
    return config, psk, previous


def open_listening(config: ServerConfig) -> Listening:
    """The daemon's UDP socket (udpchat.daemon.listen), exiting with one clear line
    (EXIT_TEMPFAIL if a later start may succeed, else EXIT_CONFIG) if it cannot be had."""
    try:
        return open_socket(config.interface, config.port, config.path)
    except ListenError as exc:
        _fail(str(exc), EXIT_TEMPFAIL if exc.transient else EXIT_CONFIG)


def makeService(options: Options) -> MultiService:
    """Build the daemon's service tree: the chat service, then the readiness notifier."""
    config, psk, previous = load_settings(options["config"])
    listening = open_listening(config)
    # Imported here, after config and key checks, so those errors never depend on the
    # service module (and `twistd --help` stays light).
    from udpchat.daemon.history import HistoryFileError
    from udpchat.daemon.service import ChatService

    # twistd's own options (the parent of ours): where twistd would log.
    twistd = getattr(options, "parent", None)
    top = DaemonService(daemon_observer(twistd, LEVELS[config.log_level], sys.stdout))
    try:
        # Reads the history file: before the fork.
        chat = ChatService(config, psk, listening=listening, previous=previous)
    except HistoryFileError as exc:
        _fail(str(exc))
    chat.setServiceParent(top)
    if config.metrics is not None:
        from udpchat.daemon.metrics import MetricsError, MetricsService

        try:
            metrics = MetricsService(config.metrics, chat)  # binds: before the fork
        except MetricsError as exc:
            _fail(str(exc), EXIT_TEMPFAIL if exc.transient else EXIT_CONFIG)
        # Before the notifier: READY=1 once the metrics port serves too.
        metrics.setServiceParent(top)
    ReadinessNotifier().setServiceParent(top)
    return top
