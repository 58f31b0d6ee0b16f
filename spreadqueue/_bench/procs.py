"""The benchmark's child processes, seen from the parent: start, talk to, stop, kill.

- :class:`AgentProcess`: ``python -m spreadqueue._bench.agent ROLE ...`` with its
  control channel (:mod:`spreadqueue._bench.channel`) on stdin/stdout and its log
  (stderr) in a file. A reader thread per agent turns its stdout into messages, so
  the parent can wait on any agent with a deadline.
- :class:`DaemonProcess`: the embedded Spread daemon,
  ``python -m twisted spread-daemon --listen tcp:0:interface=127.0.0.1 --ready-file F``
  (the daemon picks a free loopback port and writes it to F).
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import spreadqueue

__all__ = ["AgentError", "AgentProcess", "DaemonProcess", "child_env", "stop_all"]

#: How long a process may take to start on a loaded 2-core machine.
START_DEADLINE = 60.0


class AgentError(RuntimeError):
    """A child process failed, answered with an error, or did not answer in time."""


def child_env() -> dict[str, str]:
    """Our environment with the directory holding ``spreadqueue`` first on PYTHONPATH, so
    children import the same code (and twistd finds our plugins) from a checkout too."""
    env = dict(os.environ)
    root = str(Path(spreadqueue.__file__).resolve().parent.parent)
    paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class AgentProcess:
    """One agent process: ``role`` with command-line ``args``, logging to ``workdir``."""

    def __init__(self, role: str, args: Iterable[str], workdir: Path, label: str) -> None:
        self.role = role
        self.label = label
        self.log_path = workdir / f"{label}.log"
        self.ready: dict[str, Any] = {}
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "spreadqueue._bench.agent", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=child_env(),
            cwd=str(workdir),
        )
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._eof = False
        threading.Thread(target=self._read, name=f"bench-{label}", daemon=True).start()

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def private_group(self) -> str:
        """The agent's Spread private group (once ready)."""
        return str(self.ready["private_group"])

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        for line in stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not ours (nothing else should print there)
            if isinstance(msg, dict):
                self._inbox.put(msg)
        self._inbox.put(None)

    def _fail(self, why: str) -> AgentError:
        return AgentError(
            f"{self.label} ({self.role}, pid {self.pid}): {why}\n{_tail(self.log_path)}"
        )

    def _take(self, deadline: float) -> None:
        """Move one message from the agent into replies/events, waiting until ``deadline``."""
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

    # ------------------------------------------------------------------ commands

    def send(self, cmd: str, **args: Any) -> int:
        """Send a command without waiting; returns its id for :meth:`reply`."""
        ident = next(self._ids)
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}).encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise self._fail(f"cannot send {cmd!r}: the process is gone") from None
        return ident

    def reply(self, ident: int, timeout: float = 30.0) -> Any:
        """The result of command ``ident``; AgentError if it failed or took too long."""
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

    def wait_ready(self, timeout: float = START_DEADLINE) -> dict[str, Any]:
        """Wait for the agent's ready event."""
        self.ready = self.wait_event("ready", timeout)
        return self.ready

    # ------------------------------------------------------------------ ending

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def ask_to_stop(self) -> None:
        """Tell the agent to stop its objects and exit (see :meth:`finish`)."""
        if self.alive():
            try:
                self.send("stop")
            except AgentError:
                pass
            stdin = self.popen.stdin
            if stdin is not None:
                try:
                    stdin.close()
                except OSError:
                    pass

    def finish(self, deadline: float) -> None:
        """Wait for the exit until ``deadline`` (monotonic), then SIGTERM, then SIGKILL."""
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.alive():
                self.popen.send_signal(sig)
            try:
                self.popen.wait(max(0.1, deadline - time.monotonic()) if sig is None else 5)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()

    def kill(self) -> None:
        """SIGKILL now (as a crash would) and reap the process."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()


def stop_all(agents: Iterable[AgentProcess], timeout: float = 10.0) -> None:
    """Stop ``agents`` together: ask all, then wait for each (killing laggards)."""
    agents = list(agents)
    for agent in agents:
        agent.ask_to_stop()
    deadline = time.monotonic() + timeout
    for agent in agents:
        agent.finish(deadline)


class DaemonProcess:
    """The embedded Spread daemon in a process of its own, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.ready_file = workdir / "daemon.ready"
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twisted",
                "--log-format",
                "text",
                "spread-daemon",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--ready-file",
                str(self.ready_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=str(workdir),
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def wait_ready(self, timeout: float = START_DEADLINE) -> str:
        """Wait until it listens; return its client endpoint (``tcp:host=...:port=...``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                port = int(self.ready_file.read_text().strip())
                return f"tcp:host=127.0.0.1:port={port}"
            if self.popen.poll() is not None:
                raise AgentError(
                    f"the Spread daemon exited with status {self.popen.returncode}:\n"
                    + _tail(self.log_path)
                )
            time.sleep(0.02)
        raise AgentError("the Spread daemon did not start in time:\n" + _tail(self.log_path))

    def stop(self) -> None:
        """SIGTERM (twistd stops cleanly), then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
