"""``spreadqueue replies GROUP``: watch the answers detached tasks send to a group.

One JSON line per answer on stdout, as it comes (a :class:`ReplyReader` on a
reconnecting session). Exit status: 0 done (``--count`` answers came, or ``--timeout``
passed without ``--count``); 2 usage; 3 fewer than ``--count`` answers within
``--timeout``, or no Spread daemon; 130 interrupted (Ctrl-C: how a watch usually ends).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from .._defaults import default_spread
from .._queue.errors import ReaderStopped, TaskError
from .._queue.replies import Reply, check_reply_group
from .._queue.serializer import JsonSerializer, MsgpackSerializer
from .common import write_ready_file
from .rpc import EXIT_UNANSWERED, EXIT_USAGE, add_spread_option, run_command, to_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spreadqueue replies",
        description="Join Spread group GROUP and print the answers that detached tasks "
        "send there (spreadqueue submit --reply-to GROUP, enqueue(..., reply_to=GROUP)), "
        'one JSON line each: {"task_id", "value", "final"} for an answer, {"task_id", '
        '"error", "message"} for a failed task (error: RemoteError, UnknownFunction, '
        "DeadLettered, ...). Only answers sent while it is in the group are printed; every "
        "reader of a group gets every answer. Exit status: 0 done, 2 usage, 3 fewer than "
        "--count answers within --timeout (or no daemon), 130 interrupted.",
    )
    p.add_argument("group", metavar="GROUP", help="the public Spread group the tasks answer")
    p.add_argument("--count", "-n", type=int, default=None, help="exit after this many answers")
    p.add_argument(
        "--timeout",
        "-t",
        type=float,
        default=None,
        help="exit after this many seconds (status 3 if --count answers did not all come)",
    )
    p.add_argument(
        "--serializer",
        choices=("msgpack", "json"),
        default="msgpack",
        help="how the senders serialize values [default: msgpack, as spreadqueue submit]",
    )
    add_spread_option(p)
    p.add_argument("--ready-file", default=None, help="write this file once in the group")
    return p


def answer_line(outcome: Reply | TaskError) -> str:
    """One answer as the JSON line the command prints."""
    if isinstance(outcome, TaskError):
        fields: dict[str, Any] = {
            "task_id": outcome.task_id,
            "error": type(outcome).__name__,
            "message": outcome.message,
        }
        if getattr(outcome, "remote_traceback", ""):
            fields["traceback"] = outcome.remote_traceback  # type: ignore[attr-defined]
        return to_json(fields)
    return to_json({"task_id": outcome.task_id, "value": outcome.value, "final": outcome.final})


async def _watch(reactor: Any, spread: str, options: argparse.Namespace) -> int:
    from .._spread.client import connect

    session = await connect(reactor, spread, None, timeout=10.0, reconnect=True)
    try:
        return await read_answers(reactor, session, options)
    finally:
        await session.disconnect()


async def read_answers(reactor: Any, session: Any, options: argparse.Namespace) -> int:
    """Print the answers sent to ``options.group`` that ``session`` reads, as the
    command does; the exit status."""
    from .._queue.replies import ReplyReader

    serializer = JsonSerializer() if options.serializer == "json" else MsgpackSerializer()
    reader = ReplyReader(reactor, session, options.group, serializer=serializer)
    timer = None
    try:
        await reader.start()
        print(f"spreadqueue replies: reading the answers sent to {options.group}", file=sys.stderr)
        if options.ready_file:
            write_ready_file(options.ready_file, "joined\n")
        if options.timeout is not None:
            timer = reactor.callLater(options.timeout, reader.stop)
        n = 0
        while options.count is None or n < options.count:
            try:
                outcome: Reply | TaskError = await reader.receive()
            except TaskError as error:
                outcome = error
            except ReaderStopped as stopped:
                if timer is not None and not timer.active():
                    break  # --timeout passed: the timer stopped the reader
                # the session ended for good (the daemon refused it again, say)
                print(f"spreadqueue replies: {stopped}", file=sys.stderr)
                return EXIT_UNANSWERED
            try:
                print(answer_line(outcome), flush=True)
            except BrokenPipeError:
                # whoever read our output has had enough (| head): end quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
            n += 1
        if options.count is not None and n < options.count:
            print(
                f"spreadqueue replies: {n} of {options.count} answer(s) within "
                f"{options.timeout:g}s",
                file=sys.stderr,
            )
            return EXIT_UNANSWERED
        return 0
    finally:
        if timer is not None and timer.active():
            timer.cancel()
        await reader.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spreadqueue replies``; return the exit status."""
    prog = "spreadqueue replies"
    options = _parser().parse_args(argv)
    try:
        check_reply_group(options.group)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    if options.count is not None and options.count < 1:
        print(f"{prog}: --count must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if options.timeout is not None and not options.timeout > 0:
        print(f"{prog}: --timeout must be above 0 seconds", file=sys.stderr)
        return EXIT_USAGE
    spread = options.spread or default_spread()
    return run_command(
        prog,
        spread,
        lambda reactor: Deferred.fromCoroutine(_watch(reactor, spread, options)),
        lambda status: status,
        "interrupted",
    )
