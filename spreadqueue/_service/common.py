"""What the service layer's entry points share: readiness files, how a process that
cannot start ends, what a second Ctrl-C does, checks of option values.

Exit statuses, the same for every entry point (``spreadqueue ...``, ``sqm``, ``twistd``
and ``twist`` with our plugins): 0 after a normal stop; 1 when a service cannot start
(a port in use, an address that cannot be bound); 2 for a configuration that cannot
work (a usage error, a private name or version the daemon refuses); 128 + the signal
number when a second SIGINT or SIGTERM cuts a graceful stop short.

The environment defaults are in :mod:`spreadqueue._defaults`.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import ReactorNotRunning
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from .._queue.errors import QueueNameError
from .._queue.journal import JournalError
from .._spread.endpoints import parse_spread_endpoint
from .._spread.errors import ConnectionRejected, IllegalGroupName, QuotaExceeded
from .._spread.wire import check_private_name

log = Logger()

EXIT_FAILED = 1
EXIT_CONFIG = 2


def write_ready_file(path: str, content: str) -> None:
    """Write ``content`` to ``path`` atomically, so a watcher never reads half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ready-")
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.replace(tmp, path)


class ReadyFileService(Service):
    """Removes a readiness file when the process stops, so a stale one never lies."""

    def __init__(self, path: str) -> None:
        self.path = path

    def stopService(self) -> None:
        super().stopService()
        if not self.path:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def exit_status_for(failure: Failure) -> int:
    """2 for a configuration the daemon refuses (it cannot work by trying again), else 1."""
    if failure.check(QuotaExceeded):
        return EXIT_FAILED  # the daemon is full: nothing wrong with our configuration
    if failure.check(ConnectionRejected, IllegalGroupName, QueueNameError, JournalError):
        return EXIT_CONFIG
    return EXIT_FAILED


def fail_startup(failure: Failure, reactor: Any, status: int | None = None) -> None:
    """A service cannot start (the port is taken, the daemon refuses our name): say why
    in one line, stop the reactor (once it runs: services start before it does) and
    exit with ``status`` (by default :func:`exit_status_for` the failure)."""
    code = exit_status_for(failure) if status is None else status
    log.critical("cannot start: {why}", why=failure.getErrorMessage(), exit_status=code)

    def stop() -> None:
        # After everything else has stopped: twistd and twist would otherwise end with
        # status 0, or keep an idle process running.
        reactor.addSystemEventTrigger("after", "shutdown", exit_now, code)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # stopping already: the trigger above still runs

    reactor.callWhenRunning(stop)


def exit_now(status: int) -> None:
    """End the process at once with ``status`` (what was logged is flushed first)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


class ExitOnSecondSignal(Service):
    """Once a graceful stop has begun, a second SIGINT or SIGTERM ends the process at
    once (status 128 + the signal), as people who press Ctrl-C twice expect."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.addSystemEventTrigger("before", "shutdown", self._arm)

    def _arm(self) -> None:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _second_signal)
        except ValueError:
            pass  # not the main thread (an embedded reactor): leave signals alone


def _second_signal(signum: int, frame: object) -> None:
    os.write(2, f"{signal.Signals(signum).name} again: exiting now, not waiting\n".encode())
    exit_now(128 + signum)


# --------------------------------------------------------------------------- option values


class ServiceOptions(usage.Options):
    """What every service command's options share: ``--version`` says ours."""

    def opt_version(self) -> None:
        """Print spreadqueue's version and exit."""
        from .._version import __version__

        print(f"spreadqueue {__version__}")
        raise SystemExit(0)


def check_name_option(name: str | None) -> str | None:
    """A --name value Spread accepts (at most 10 bytes, '$'..'~'), or a UsageError."""
    if name is not None:
        try:
            check_private_name(name)
        except IllegalGroupName as e:
            raise usage.UsageError(f"--name: {e}") from None
    return name


def check_listen_option(option: str, value: str | None) -> str | None:
    """A server endpoint for --metrics or --web (a bare port: 127.0.0.1 only), or a
    UsageError."""
    if value is None:
        return None
    from twisted.internet.endpoints import serverFromString

    from .http import server_endpoint

    try:
        serverFromString(MemoryReactor(), server_endpoint(value))
    except Exception as e:
        raise usage.UsageError(
            f"--{option} {value!r} is not a port or a server endpoint "
            f"(e.g. 9100, or tcp:9100:interface=127.0.0.1): {e}"
        ) from None
    return value


def check_spread_option(spread: str) -> str:
    """A --spread value that names a daemon (Spread's 4803@host or a Twisted client
    endpoint), or a UsageError."""
    try:
        # A memory reactor: parsing must not install the global reactor (twistd
        # chooses it after the options).
        parse_spread_endpoint(MemoryReactor(), spread)
    except Exception as e:
        raise usage.UsageError(f"--spread {spread!r} is not a Spread daemon address: {e}") from None
    return spread
