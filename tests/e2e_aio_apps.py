"""asyncio programs on reconnecting sessions, run as processes by tests/test_e2e_aio.py.

``python e2e_aio_apps.py worker QUEUE SPREAD LOOP CONCURRENCY --ready-file PATH``: a
``spreadqueue.aio`` worker on a session opened with ``reconnect=True`` serving ``slow``
(records each execution as tests/e2e_handlers.py does, then answers ``[i, pid]`` after
``delay`` seconds of ``asyncio.sleep``); it writes the ready file once registered and
stops on SIGTERM.

``python e2e_aio_apps.py sender QUEUE SPREAD LOOP RUNS TOTAL IN_FLIGHT RUN_TIME``: a
sender on such a session that keeps ``IN_FLIGHT`` calls of ``slow`` in flight until
``TOTAL`` have an outcome. It prints ``a third answered`` once a third have answers, a
line per reconnect event, then one JSON line: each call's answers with when they came
(``time.monotonic()``, the same clock in every process here), failures, the events
(with the calls pending then), the sender's counters.

LOOP is ``asyncio`` or ``uvloop``. Each ends by checking that nothing was left behind
(no thread, the signal handlers as they were) and prints ``clean``; run them in
Python's development mode with warnings as errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from e2e_handlers import _record

from spreadqueue import SessionBack, SessionLost, aio

#: the calls' own timeout: the daemon's restart must fit in it
TIMEOUT = 30.0
#: submissions are acknowledged by a manager that must be back (and active) after the
#: restart within this, on a loaded machine
ACK_TIMEOUT = 15.0


async def slow(args: dict[str, Any]) -> list[Any]:
    """Record the execution, wait ``delay`` seconds, answer ``[i, pid]``."""
    _record(args)
    await asyncio.sleep(float(args.get("delay", 0.0)))
    return [args["i"], os.getpid()]


async def worker(queue: str, spread: str, concurrency: str, ready_file: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with aio.connect(spread, reconnect=True) as session:
            w = session.worker(queue, {"slow": slow}, concurrency=int(concurrency))
            await w.start()
            Path(ready_file).write_text(w.worker_id)
            await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def sender(
    queue: str, spread: str, runs: str, total: str, in_flight: str, run_time: str
) -> dict[str, Any]:
    total_n, in_flight_n, delay = int(total), int(in_flight), float(run_time)
    answers: dict[int, list[Any]] = {}
    failures: list[tuple[int, str]] = []
    events: list[tuple[float, str, int]] = []  # (when, what, calls pending then)
    done = asyncio.Event()

    async with aio.connect(spread, reconnect=True) as session:
        s = session.sender(queue, ack_timeout=ACK_TIMEOUT)

        def heard(event: SessionLost | SessionBack) -> None:
            events.append((time.monotonic(), type(event).__name__, s.pending))
            print(type(event).__name__, flush=True)

        session.add_reconnect_listener(heard)
        await s.start()
        started = running = 0
        calls: set[asyncio.Task[None]] = set()

        async def call(i: int) -> None:
            nonlocal running
            args = {"i": i, "log": runs, "delay": delay}
            try:
                value = await s.rpc("slow", args, timeout=TIMEOUT)
                answers.setdefault(i, []).append([value, time.monotonic()])
                if len(answers) == total_n // 3:
                    print("a third answered", flush=True)
            except Exception as e:
                failures.append((i, f"{type(e).__name__}: {e}"))
            running -= 1
            more()

        def more() -> None:
            # (counted here: an rpc is submitted only once its task runs)
            nonlocal started, running
            while started < total_n and running < in_flight_n:
                started += 1
                running += 1
                task = asyncio.ensure_future(call(started))
                calls.add(task)
                task.add_done_callback(calls.discard)
            if len(answers) + len(failures) >= total_n:
                done.set()

        more()
        await done.wait()
        await asyncio.gather(*calls)
        stats = dict(s.stats)
    return {
        "answers": {str(i): a for i, a in answers.items()},
        "failures": failures,
        "events": events,
        "stats": stats,
    }


def run(loop: str, main: Coroutine[Any, Any, Any]) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    role, queue, spread, loop, *rest = argv
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    if role == "worker":
        concurrency, _, ready_file = rest  # CONCURRENCY --ready-file PATH
        run(loop, worker(queue, spread, concurrency, ready_file))
    else:
        print(json.dumps(run(loop, sender(queue, spread, *rest))), flush=True)
    assert threading.enumerate() == [threading.main_thread()], threading.enumerate()
    for s, handler in handlers.items():
        assert signal.getsignal(s) == handler, (s, signal.getsignal(s))
    print("clean", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
