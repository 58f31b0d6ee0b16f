"""Real processes for end-to-end tests: start, wait until ready (with a deadline), stop.

Every service of ours takes ``--ready-file PATH`` and writes it once it is ready (the
daemon: listening, with its port; a manager: active; a worker: registered). Tests wait
on that file with a deadline instead of sleeping a fixed time.

``SPREADQUEUE_TEST_SPREAD`` names an external Spread daemon (e.g.
``tcp:host=127.0.0.1:port=4803``): then :func:`spread_daemon` starts none and hands out
that endpoint.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SPREAD_ENV = "SPREADQUEUE_TEST_SPREAD"
#: How long a process may take to become ready on a loaded 2-core machine.
READY_DEADLINE = 30.0


def external_spread() -> str | None:
    """The external daemon named by SPREADQUEUE_TEST_SPREAD, if any."""
    return os.environ.get(SPREAD_ENV) or None


def skip_if_external(reason: str) -> pytest.MarkDecorator:
    """Skip a test that only makes sense against our own embedded daemon."""
    return pytest.mark.skipif(
        external_spread() is not None,
        reason=f"{SPREAD_ENV} is set (external daemon): {reason}",
    )


def child_env(extra_paths: Sequence[Path | str] = (), **overrides: str) -> dict[str, str]:
    """The environment for child processes: the source tree importable, unbuffered.

    ``extra_paths`` go on PYTHONPATH too (``TESTS`` for the tests' handler modules);
    ``overrides`` set (or, given as "", remove) variables.
    """
    env = dict(os.environ)
    paths = [str(ROOT), *map(str, extra_paths)]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in overrides.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    return env


def free_port() -> int:
    """A loopback TCP port that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose output goes to a log file, with a readiness file."""

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        label: str,
        *,
        env: Mapping[str, str] | None = None,
        ready_file: bool = True,
    ) -> None:
        """Start ``args`` (plus ``--ready-file`` unless ``ready_file`` is False)."""
        self.label = label
        self.ready_file = workdir / f"{label}.ready"
        self.log_path = workdir / f"{label}.log"
        self._log = open(self.log_path, "wb")
        self.args = [*args, "--ready-file", str(self.ready_file)] if ready_file else list(args)
        self.popen = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else child_env(),
            cwd=str(workdir),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        """What the process printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, deadline: float = READY_DEADLINE) -> str:
        """Wait for the readiness file; return its content. Fails if the process dies."""
        end = time.monotonic() + deadline
        pause = threading.Event()
        while time.monotonic() < end:
            if self.ready_file.exists():
                return self.ready_file.read_text()
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.label} exited with {self.popen.returncode} before it was ready:\n"
                    + self.log()
                )
            pause.wait(0.01)
        raise AssertionError(f"{self.label} not ready within {deadline} s:\n" + self.log())

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def check_alive(self, what: str) -> None:
        """Fail (with the log) if the process has exited."""
        if self.popen.poll() is not None:
            raise AssertionError(
                f"{self.label} exited with {self.popen.returncode} while waiting for "
                f"{what}:\n{self.log()}"
            )

    def count(self, pattern: str) -> int:
        """How many times the regular expression ``pattern`` occurs in the log."""
        return len(re.findall(pattern, self.log()))

    def wait_log(self, pattern: str, deadline: float = READY_DEADLINE) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (blocking); return the match."""
        end = time.monotonic() + deadline
        pause = threading.Event()
        while True:
            m = re.search(pattern, self.log())
            if m is not None:
                return m
            self.check_alive(repr(pattern))
            if time.monotonic() > end:
                raise AssertionError(
                    f"{self.label}: no {pattern!r} within {deadline} s:\n" + self.log()
                )
            pause.wait(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def twist(plugin: str, *args: str) -> list[str]:
    """The command line that runs one of our twistd plugins in the foreground."""
    return [sys.executable, "-m", "twisted", "--log-format", "text", plugin, *args]


def spreadqueue_cli(*args: str) -> list[str]:
    """The command line ``spreadqueue ARGS`` (from the source tree)."""
    return [sys.executable, "-m", "spreadqueue._service.cli", *args]


@contextmanager
def spread_daemon(workdir: Path) -> Iterator[str]:
    """A Spread daemon endpoint for the duration of the block.

    Uses SPREADQUEUE_TEST_SPREAD when set; otherwise starts ``twist spread-daemon`` on a
    free loopback port (the daemon picks it: ``tcp:0``) and yields its endpoint.
    """
    external = external_spread()
    if external:
        yield external
        return
    proc = Proc(twist("spread-daemon", "--listen", "tcp:0:interface=127.0.0.1"), workdir, "daemon")
    try:
        port = int(proc.wait_ready().strip())
        yield f"tcp:host=127.0.0.1:port={port}"
    finally:
        proc.stop()


async def poll_until(
    condition: Callable[[], object],
    what: str,
    deadline: float = READY_DEADLINE,
    alive: Sequence[Proc] = (),
    interval: float = 0.02,
) -> None:
    """Let the reactor run until ``condition()`` is true; fail after ``deadline``.

    For trial tests with live sessions in the test process: unlike the blocking waits
    of :class:`Proc`, the reactor keeps serving them while we wait. Fails early (with
    the log) if one of the ``alive`` processes exits.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    end = time.monotonic() + deadline
    while not condition():
        for proc in alive:
            proc.check_alive(what)
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)


async def all_ready(*procs: Proc, deadline: float = READY_DEADLINE) -> None:
    """Wait (letting the reactor run) until every process has written its ready file."""
    pending = list(procs)

    def done() -> bool:
        pending[:] = [p for p in pending if not p.ready_file.exists()]
        return not pending

    await poll_until(done, "ready files of " + ", ".join(p.label for p in procs), deadline, procs)


async def log_match(proc: Proc, pattern: str, deadline: float = READY_DEADLINE) -> re.Match[str]:
    """Wait (letting the reactor run) until ``proc``'s log matches ``pattern``."""
    found: list[re.Match[str]] = []

    def matched() -> bool:
        m = re.search(pattern, proc.log())
        if m is not None:
            found.append(m)
        return m is not None

    await poll_until(matched, f"{pattern!r} in the log of {proc.label}", deadline, (proc,))
    return found[0]
