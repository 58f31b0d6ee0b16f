"""The benchmark's one launcher: :class:`Child` starts, talks to and stops every child.

Every process ``spreadqueue bench`` starts is a :class:`Child`: the agents
(``python -m spreadqueue._bench.agent ROLE``), the floor's processes
(``python -m spreadqueue._bench.floor ROLE``), the Spread daemon
(``python -m twisted spread-daemon``) and py-spy. Each gets the environment of
:func:`child_env`, a log file ``WORKDIR/LABEL.log`` and the same ending
(:meth:`Child.stop`). Two kinds:

- ours speak the control channel (:mod:`spreadqueue._bench.channel`) on stdin and
  stdout, log on stderr, are ready when they report ``{"event": "ready", ...}``, and
  exit when their stdin closes. A reader thread per child turns its stdout into
  messages, so the parent can wait on any child with a deadline.
- a product or tool command (``channel=False``) is not talked to: its stdout joins its
  log; it is ready when its ``ready_file`` appears (the daemon), or at once (py-spy).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import spreadqueue

__all__ = ["Child", "ChildError", "child_env", "python_module", "stop_all"]

#: How long a process may take to start on a loaded 2-core machine.
START_DEADLINE = 60.0
#: How long a child has between SIGTERM and SIGKILL.
TERM_GRACE_S = 5.0
#: How often to look for a ready file: nothing tells us when it appears.
FILE_POLL_S = 0.01


class ChildError(RuntimeError):
    """A child process failed, answered with an error, or did not answer in time."""


def child_env() -> dict[str, str]:
    """Our environment with the directory holding ``spreadqueue`` first on PYTHONPATH, so
    children import the same code (and twistd finds our plugins) from a checkout too."""
    env = dict(os.environ)
    root = str(Path(spreadqueue.__file__).resolve().parent.parent)
    paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def python_module(module: str, *args: str) -> list[str]:
    """The command line running ``module`` with ``args`` in this Python."""
    return [sys.executable, "-m", module, *args]


def _tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` of a log, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Child:
    """One child process, labelled ``label``, running ``argv`` in ``workdir``.

    With ``channel`` (the default) it is one of ours: driven with :meth:`send`,
    :meth:`reply`, :meth:`request` and :meth:`wait_event`. Without, ``ready_file`` (if
    any) is the file whose appearance says it is ready; its text is then
    ``ready["text"]``.
    """

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        workdir: Path,
        *,
        channel: bool = True,
        ready_file: Path | None = None,
    ) -> None:
        self.label = label
        self.log_path = workdir / f"{label}.log"
        self.ready: dict[str, Any] = {}
        self._ready_file = ready_file
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # a stale one (from a killed run) would lie
        self._channel = channel
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if channel else subprocess.DEVNULL,
            stdout=subprocess.PIPE if channel else self._log,
            stderr=self._log,
            env=child_env(),
            cwd=str(workdir),
        )
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._eof = False
        if channel:
            threading.Thread(target=self._read, name=f"bench-{label}", daemon=True).start()

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped, else None."""
        return self.popen.returncode

    def _fail(self, why: str) -> ChildError:
        return ChildError(f"{self.label} (pid {self.pid}): {why}\n{_tail(self.log_path)}")

    # ------------------------------------------------------------------ readiness

    def wait_ready(self, timeout: float = START_DEADLINE) -> dict[str, Any]:
        """Wait for the child's signal that it is ready (see the class); return it."""
        if self._channel:
            self.ready = self.wait_event("ready", timeout)
        elif self._ready_file is not None:
            self.ready = {"text": self._wait_file(self._ready_file, time.monotonic() + timeout)}
        return self.ready

    def _wait_file(self, path: Path, deadline: float) -> str:
        """The text of ``path`` once it exists (it is written atomically), until ``deadline``."""
        while not path.exists():
            if self.popen.poll() is not None:
                raise self._fail(f"exited with status {self.popen.returncode}")
            if time.monotonic() > deadline:
                raise self._fail("not ready in time")
            time.sleep(FILE_POLL_S)
        return path.read_text().strip()

    # ------------------------------------------------------------------ talking

    def _read(self) -> None:
        """The reader thread: each JSON line of stdout to the inbox, None at the end."""
        stdout = self.popen.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # not ours (nothing else should print there)
                if isinstance(msg, dict):
                    self._inbox.put(msg)
        self._inbox.put(None)

    def _take(self, deadline: float) -> None:
        """Move one message from the child into replies/events, waiting until ``deadline``."""
        if not self._channel:
            raise self._fail("has no control channel")
        if self._eof:
            raise self._fail(f"exited with status {self.popen.poll()}")
        try:
            msg = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise self._fail("no answer in time") from None
        if msg is None:
            self._eof = True
            self.popen.wait(10)
            raise self._fail(f"exited with status {self.popen.returncode}")
        if "id" in msg:
            self._replies[int(msg["id"])] = msg
        else:
            self._events.append(msg)

    def send(self, cmd: str, **args: Any) -> int:
        """Send a command without waiting; returns its id for :meth:`reply`."""
        ident = next(self._ids)
        stdin = self.popen.stdin
        if stdin is None:
            raise self._fail(f"cannot send {cmd!r}: it has no control channel")
        try:
            stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}).encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise self._fail(f"cannot send {cmd!r}: the process is gone") from None
        return ident

    def reply(self, ident: int, timeout: float = 30.0) -> Any:
        """The result of command ``ident``; ChildError if it failed or took too long."""
        deadline = time.monotonic() + timeout
        while ident not in self._replies:
            self._take(deadline)
        msg = self._replies.pop(ident)
        if not msg.get("ok"):
            raise self._fail(f"command failed:\n{msg.get('error')}")
        return msg.get("result")

    def request(self, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
        """Send a command and wait for its result."""
        return self.reply(self.send(cmd, **args), timeout)

    def wait_event(
        self,
        name: str,
        timeout: float,
        match: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        """The first event ``name`` (satisfying ``match``) not yet taken, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event.get("event") == name and match(event):
                    return self._events.pop(i)
            self._take(deadline)

    # ------------------------------------------------------------------ ending

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def ask_to_stop(self) -> None:
        """Close the child's stdin: one of ours stops its objects and exits on that."""
        stdin = self.popen.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:
                pass  # it is gone already: the broken pipe says nothing new

    def finish(self, deadline: float, grace: float = TERM_GRACE_S) -> None:
        """Wait for the exit until ``deadline`` (monotonic), then SIGTERM, then SIGKILL
        ``grace`` seconds later; reap the process and close its log."""
        if not self._exited_by(deadline):
            self.popen.send_signal(signal.SIGTERM)
            if not self._exited_by(time.monotonic() + grace):
                self.kill()
        self._log.close()

    def _exited_by(self, deadline: float) -> bool:
        """Wait until ``deadline`` for the exit; True once it is reaped."""
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to stop (:meth:`ask_to_stop`) and :meth:`finish` it within
        ``timeout`` seconds; 0 for a command that only stops on SIGTERM."""
        self.ask_to_stop()
        self.finish(time.monotonic() + timeout)

    def kill(self) -> None:
        """SIGKILL now (as a crash would), reap the process and close its log."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()


def stop_all(children: Iterable[Child], timeout: float = 10.0) -> None:
    """Stop ``children`` together: ask all, then finish each by one shared deadline."""
    children = list(children)
    for child in children:
        child.ask_to_stop()
    deadline = time.monotonic() + timeout
    for child in children:
        child.finish(deadline)
