"""``spreadqueue rpc`` and ``spreadqueue submit``: a task from the shell.

``rpc`` calls a function and prints the result as JSON. Exit status: 0 with the result
on stdout; 1 when the task failed (the worker raised, unknown function, worker lost); 2
for a usage error; 3 when nothing answered in time (no manager, timeout, no Spread
daemon); 130 when interrupted.

``submit`` queues a detached task and prints its id once the queue's managers hold it
(docs/protocol.md, section 10): it runs even though the command has ended. Exit status:
0 held; 1 refused (the queue is full); 2 usage; 3 not acknowledged in time (no manager,
no daemon); 130 interrupted.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from .._defaults import default_queue, default_spread
from .._queue.errors import NoManager, RemoteError, TaskError, TaskTimeout
from .._queue.messages import MAX_PRIORITY, MAX_TIMEOUT_MS
from .._queue.names import validate_queue_name
from .._spread.endpoints import parse_spread_endpoint
from .._spread.errors import SpreadError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNANSWERED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def _base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """What rpc and submit share: FUNC, JSON, --queue, --priority, --spread."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "func",
        metavar="FUNC",
        help="function name: only workers that serve it get the task (it waits until one "
        "has room; spreadqueue status lists functions that no worker serves)",
    )
    p.add_argument("args", metavar="JSON", nargs="?", default="null", help="arguments, as JSON")
    p.add_argument("--queue", "-q", default=None, help="queue [default: $SPREAD_QUEUE_NAME]")
    p.add_argument(
        "--priority",
        "-p",
        type=int,
        default=0,
        help=f"0 (default) to {MAX_PRIORITY}: higher levels run first, FIFO within a level; "
        "each level counts as the manager's --priority-aging seconds (10) of waiting, so "
        "low levels are never starved",
    )
    add_spread_option(p)
    return p


def add_spread_option(p: argparse.ArgumentParser) -> None:
    """``--spread``/``-s``, the daemon of a command that connects (rpc, submit,
    replies, status, control)."""
    p.add_argument(
        "--spread",
        "-s",
        default=None,
        help="Spread daemon: 4803@host or a Twisted client endpoint "
        "[default: $SPREAD_DAEMON or 4803@localhost]",
    )


def _parser() -> argparse.ArgumentParser:
    p = _base_parser(
        "spreadqueue rpc",
        "Call FUNC on a worker of the queue with ARGS (JSON); print the result "
        'as JSON (bytes print as {"$base64": "..."}). Exit status: 0 ok, 1 the task '
        "failed, 2 usage, 3 no answer in time (no manager, no worker, no daemon), 130 "
        "interrupted.",
    )
    p.add_argument(
        "--timeout", "-t", type=float, default=30.0, help="seconds to wait [default: 30]"
    )
    return p


def _submit_parser() -> argparse.ArgumentParser:
    p = _base_parser(
        "spreadqueue submit",
        "Queue FUNC(ARGS) as a detached task and print its id once the queue's managers "
        "hold it: it runs even though this command has ended, and nobody waits for its "
        "answer (it goes to --reply-to, if given). If it fails for good it goes to the "
        "queue's dead letters (spreadqueue control QUEUE dead-letters). Exit status: 0 "
        "held, 1 refused (queue full), 2 usage, 3 not acknowledged in time (no manager, no "
        "daemon), 130 interrupted.",
    )
    p.add_argument("--reply-to", default=None, help="a Spread group that gets the task's answer")
    p.add_argument(
        "--ttl",
        type=float,
        default=None,
        help="seconds it may wait for a worker before it is a dead letter (expired)",
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=float, default=None, help="start it no sooner than this")
    when.add_argument(
        "--at", type=float, default=None, help="start it no sooner than this epoch time"
    )
    p.add_argument(
        "--timeout", "-t", type=float, default=None, help="cancel each run after this long"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        help="seconds to wait for the managers' acknowledgement [default: 10]",
    )
    return p


async def _call(
    reactor: Any, spread: str, queue: str, func: str, args: Any, timeout: float, priority: int
) -> Any:
    from .._queue.sender import Sender
    from .._spread.client import connect

    # reconnect: a daemon restarted while the call runs costs latency, not the call
    session = await connect(reactor, spread, None, timeout=min(timeout, 10.0), reconnect=True)
    # Acknowledgements come well before results: half the timeout names a missing manager.
    sender = Sender(reactor, session, queue, ack_timeout=min(timeout / 2, 5.0))
    try:
        return await sender.rpc(func, args, timeout=timeout, priority=priority)
    finally:
        await sender.stop()
        await session.disconnect()


def to_json(value: Any) -> str:
    """``value`` as JSON. Bytes, which JSON has not, become ``{"$base64": "..."}`` (their
    base64 text); bytes used as map keys become ``"$base64:..."``."""

    def plain(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray, memoryview)):
            return {"$base64": base64.b64encode(bytes(v)).decode("ascii")}
        if isinstance(v, dict):
            return {_key(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    def _key(k: Any) -> Any:
        if isinstance(k, (bytes, bytearray)):
            return "$base64:" + base64.b64encode(bytes(k)).decode("ascii")
        return k

    return json.dumps(plain(value), default=repr)


def _usage_error(text: str) -> int:
    print(f"spreadqueue rpc: {text}", file=sys.stderr)
    return EXIT_USAGE


def _checked(options: argparse.Namespace, prog: str) -> tuple[str, Any, str] | int:
    """The queue, the decoded arguments and the daemon of ``options``, or an exit status."""
    from twisted.internet.testing import MemoryReactor

    def usage_error(text: str) -> int:
        print(f"{prog}: {text}", file=sys.stderr)
        return EXIT_USAGE

    try:
        queue = validate_queue_name(options.queue or default_queue() or "")
    except ValueError as e:
        return usage_error(f"{e} (give --queue or set $SPREAD_QUEUE_NAME)")
    try:
        args = json.loads(options.args)
    except ValueError as e:
        return usage_error(f"ARGS is not JSON: {e}")
    if not 0 <= options.priority <= MAX_PRIORITY:
        return usage_error(f"--priority must be from 0 to {MAX_PRIORITY}")
    for name in ("timeout", "ttl", "delay", "wait"):
        value = getattr(options, name, None)
        if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_MS / 1000):
            if name == "delay" and value == 0:
                continue
            return usage_error(
                f"--{name} must be a number of seconds above 0 and at most {MAX_TIMEOUT_MS // 1000}"
            )
    spread = options.spread or default_spread()
    try:
        parse_spread_endpoint(MemoryReactor(), spread)
    except Exception as e:
        return usage_error(f"--spread {spread!r} is not a Spread daemon address: {e}")
    return queue, args, spread


def run_command(
    prog: str,
    spread: str,
    call: Callable[[Any], Deferred[Any]],
    done: Callable[[Any], int | None],
    interrupted_text: str = "interrupted before an answer came",
) -> int:
    """Run ``call(reactor)`` under task.react; ``done(result)`` prints what came and may
    give the exit status (None: 0); failures are printed here. The exit status."""
    from twisted.internet import task

    outcome: list[int] = []
    interrupted: list[bool] = []

    def succeeded(result: Any) -> None:
        outcome.append(done(result) or 0)

    def failed(failure: Any) -> None:
        err = failure.value
        if interrupted:
            return  # said below: the failure is only the session closing
        if isinstance(err, RemoteError):
            print(f"{prog}: the worker raised {err}", file=sys.stderr)
            if getattr(err, "traceback", None):
                print(err.traceback, file=sys.stderr, end="")
            outcome.append(EXIT_FAILED)
        elif isinstance(err, (TaskTimeout, NoManager)):
            print(f"{prog}: {err}", file=sys.stderr)
            outcome.append(EXIT_UNANSWERED)
        elif isinstance(err, TaskError):
            print(f"{prog}: {err}", file=sys.stderr)
            outcome.append(EXIT_FAILED)
        elif isinstance(err, (SpreadError, OSError)) or "Connect" in type(err).__name__:
            print(f"{prog}: cannot reach the Spread daemon at {spread}: {err}", file=sys.stderr)
            outcome.append(EXIT_UNANSWERED)
        else:
            print(f"{prog}: {failure.getErrorMessage()}", file=sys.stderr)
            outcome.append(EXIT_FAILED)

    def run(reactor: Any) -> Deferred[None]:
        def stopping() -> None:
            if not outcome:
                interrupted.append(True)  # Ctrl-C (or SIGTERM) before an answer

        reactor.addSystemEventTrigger("before", "shutdown", stopping)
        return call(reactor).addCallbacks(succeeded, failed)

    try:
        task.react(run)
    except SystemExit:
        pass
    if interrupted and not outcome:
        print(f"{prog}: {interrupted_text}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return outcome[0] if outcome else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spreadqueue rpc``; return the exit status."""
    prog = "spreadqueue rpc"
    options = _parser().parse_args(argv)
    checked = _checked(options, prog)
    if isinstance(checked, int):
        return checked
    queue, args, spread = checked
    return run_command(
        prog,
        spread,
        lambda reactor: Deferred.fromCoroutine(
            _call(reactor, spread, queue, options.func, args, options.timeout, options.priority)
        ),
        lambda result: print(to_json(result)),
    )


async def _enqueue(reactor: Any, spread: str, queue: str, options: argparse.Namespace) -> str:
    from .._queue.sender import Sender
    from .._spread.client import connect

    session = await connect(reactor, spread, None, timeout=min(options.wait, 10.0))
    sender = Sender(reactor, session, queue, ack_timeout=options.wait)
    try:
        return await sender.enqueue(
            options.func,
            json.loads(options.args),
            reply_to=options.reply_to,
            ttl=options.ttl,
            delay=options.delay,
            run_at=options.at,
            timeout=options.timeout,
            priority=options.priority,
        )
    finally:
        await sender.stop()
        await session.disconnect()


def submit_main(argv: Sequence[str] | None = None) -> int:
    """Run ``spreadqueue submit``; return the exit status."""
    prog = "spreadqueue submit"
    options = _submit_parser().parse_args(argv)
    checked = _checked(options, prog)
    if isinstance(checked, int):
        return checked
    queue, _args, spread = checked
    return run_command(
        prog,
        spread,
        lambda reactor: Deferred.fromCoroutine(_enqueue(reactor, spread, queue, options)),
        print,
    )
