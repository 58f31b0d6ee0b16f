"""``spreadqueue rpc``: call a function on a queue from the shell, print the result as JSON.

Exit status: 0 with the result on stdout; 1 when the task failed (the worker raised,
unknown function, worker lost); 2 for a usage error; 3 when nothing answered in time
(no manager, timeout, no Spread daemon).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from .._defaults import default_queue, default_spread
from .._queue.errors import NoManager, RemoteError, TaskError, TaskTimeout
from .._queue.messages import MAX_TIMEOUT_MS
from .._queue.names import validate_queue_name
from .._spread.endpoints import parse_spread_endpoint
from .._spread.errors import SpreadError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNANSWERED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spreadqueue rpc",
        description="Call FUNC on a worker of the queue with ARGS (JSON); print the result "
        'as JSON (bytes print as {"$base64": "..."}). Exit status: 0 ok, 1 the task '
        "failed, 2 usage, 3 no answer in time (no manager, no worker, no daemon), 130 "
        "interrupted.",
    )
    p.add_argument("func", metavar="FUNC", help="function name registered by the workers")
    p.add_argument("args", metavar="JSON", nargs="?", default="null", help="arguments, as JSON")
    p.add_argument("--queue", "-q", default=None, help="queue [default: $SPREAD_QUEUE_NAME]")
    p.add_argument(
        "--spread",
        "-s",
        default=None,
        help="Spread daemon [default: $SPREAD_DAEMON or 4803@localhost]",
    )
    p.add_argument(
        "--timeout", "-t", type=float, default=30.0, help="seconds to wait [default: 30]"
    )
    return p


async def _call(reactor: Any, spread: str, queue: str, func: str, args: Any, timeout: float) -> Any:
    from .._queue.sender import Sender
    from .._spread.client import connect

    # reconnect: a daemon restarted while the call runs costs latency, not the call
    session = await connect(reactor, spread, None, timeout=min(timeout, 10.0), reconnect=True)
    # Acknowledgements come well before results: half the timeout names a missing manager.
    sender = Sender(reactor, session, queue, ack_timeout=min(timeout / 2, 5.0))
    try:
        return await sender.rpc(func, args, timeout=timeout)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spreadqueue rpc``; return the exit status."""
    from twisted.internet import task
    from twisted.internet.testing import MemoryReactor

    options = _parser().parse_args(argv)
    try:
        queue = validate_queue_name(options.queue or default_queue() or "")
    except ValueError as e:
        return _usage_error(f"{e} (give --queue or set $SPREAD_QUEUE_NAME)")
    try:
        args = json.loads(options.args)
    except ValueError as e:
        return _usage_error(f"ARGS is not JSON: {e}")
    if not (math.isfinite(options.timeout) and 0 < options.timeout <= MAX_TIMEOUT_MS / 1000):
        return _usage_error(
            f"--timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_MS // 1000}"
        )
    spread = options.spread or default_spread()
    try:
        parse_spread_endpoint(MemoryReactor(), spread)
    except Exception as e:
        return _usage_error(f"--spread {spread!r} is not a Spread daemon address: {e}")
    outcome: list[int] = []
    interrupted: list[bool] = []

    def done(result: Any) -> None:
        print(to_json(result))
        outcome.append(0)

    def failed(failure: Any) -> None:
        err = failure.value
        if interrupted:
            return  # said below: the failure is only the session closing
        if isinstance(err, RemoteError):
            print(f"spreadqueue rpc: the worker raised {err}", file=sys.stderr)
            if getattr(err, "traceback", None):
                print(err.traceback, file=sys.stderr, end="")
            outcome.append(EXIT_FAILED)
        elif isinstance(err, (TaskTimeout, NoManager)):
            print(f"spreadqueue rpc: {err}", file=sys.stderr)
            outcome.append(EXIT_UNANSWERED)
        elif isinstance(err, TaskError):
            print(f"spreadqueue rpc: {err}", file=sys.stderr)
            outcome.append(EXIT_FAILED)
        elif isinstance(err, (SpreadError, OSError)) or "Connect" in type(err).__name__:
            print(
                f"spreadqueue rpc: cannot reach the Spread daemon at {spread}: {err}",
                file=sys.stderr,
            )
            outcome.append(EXIT_UNANSWERED)
        else:
            print(f"spreadqueue rpc: {failure.getErrorMessage()}", file=sys.stderr)
            outcome.append(EXIT_FAILED)

    def run(reactor: Any) -> Deferred[None]:
        def stopping() -> None:
            if not outcome:
                interrupted.append(True)  # Ctrl-C (or SIGTERM) before an answer

        reactor.addSystemEventTrigger("before", "shutdown", stopping)
        d = Deferred.fromCoroutine(
            _call(reactor, spread, queue, options.func, args, options.timeout)
        )
        return d.addCallbacks(done, failed)

    try:
        task.react(run)
    except SystemExit:
        pass
    if interrupted and not outcome:
        print("spreadqueue rpc: interrupted before an answer came", file=sys.stderr)
        return EXIT_INTERRUPTED
    return outcome[0] if outcome else EXIT_FAILED
