"""Worker handlers for the end-to-end tests (``--handlers e2e_handlers:HANDLERS``).

Worker processes import this module (the tests put ``tests/`` on their PYTHONPATH).
Handlers that take a ``log`` argument append one line per execution to
``<log>/<pid>.runs`` *before* they answer, so a test can count how many times each
task ran, and where, independently of what the sender received.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater


def _record(args: Any) -> None:
    """Append the task's marker to this process's execution log, if asked to."""
    if isinstance(args, dict) and args.get("log"):
        with open(Path(args["log"]) / f"{os.getpid()}.runs", "a") as f:
            f.write(f"{args['i']}\n")


def myfunc(args: Any) -> dict[str, str]:
    """The function of Perl's Spread::Queue synopsis."""
    return {"response": "I heard you!"}


def echo(args: Any) -> Any:
    """Return the arguments unchanged."""
    return args


def fail(args: Any) -> None:
    """Raise ValueError with a message built from the arguments."""
    raise ValueError(f"bad value: {args!r}")


def pid(args: Any) -> int:
    """The worker process's pid."""
    return os.getpid()


def work(args: dict[str, Any]) -> list[Any]:
    """Record the execution, then answer ``[i * 2, pid]`` (immediately)."""
    _record(args)
    return [args["i"] * 2, os.getpid()]


def slow(args: dict[str, Any]) -> Deferred[list[Any]]:
    """Record the execution, wait ``delay`` seconds (cancellable), answer ``[i, pid]``."""
    _record(args)
    return deferLater(reactor, float(args.get("delay", 0.0)), lambda: [args["i"], os.getpid()])


def slow5(args: dict[str, Any]) -> Deferred[list[Any]]:
    """Record the execution, answer ``[i, pid]`` 5 ms later (a short task that takes
    long enough for a run of them to be under way when something is killed)."""
    _record(args)
    return deferLater(reactor, 0.005, lambda: [args["i"], os.getpid()])


def blob(args: Any) -> bytes:
    """Bytes, which JSON has no type for: b"hello" and the argument's text."""
    return b"hello " + str(args).encode()


def crash(args: Any) -> None:
    """Die at once, as a crash would (the manager sees the session disconnect)."""
    os._exit(3)


def block(args: dict[str, Any]) -> list[Any]:
    """Record the execution, block ``delay`` seconds (time.sleep: no reactor), answer
    ``[i, pid, whether it ran off the process's main thread]``."""
    _record(args)
    time.sleep(float(args.get("delay", 0.0)))
    return [args["i"], os.getpid(), threading.current_thread() is not threading.main_thread()]


HANDLERS = {
    "myfunc": myfunc,
    "echo": echo,
    "fail": fail,
    "pid": pid,
    "work": work,
    "slow": slow,
    "slow5": slow5,
    "crash": crash,
    "blob": blob,
    "block": block,
}

#: Workers that serve one function each (routing tests)
PID_ONLY = {"pid": pid}
ECHO_ONLY = {"echo": echo}
