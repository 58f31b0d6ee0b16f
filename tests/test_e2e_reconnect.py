"""The Spread daemon restarts under a load of rpcs with long timeouts: none fails.

Real processes on a free loopback port: our daemon (``spreadqueue daemon``), a manager,
two workers, and in this process a sender on a session that reconnects, keeping 40
calls in flight, plus a ``spreadqueue rpc`` process. kill -9 of the daemon while
tasks are queued at the manager and running at the workers; a new daemon on the same
port; every call is answered, each exactly once.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any

from e2e_case import QueueCase, unique_name
from procs import (
    TESTS,
    all_ready,
    child_env,
    poll_until,
    skip_if_external,
    spreadqueue_cli,
)
from twisted.internet.defer import Deferred

from spreadqueue._queue.sender import Sender
from spreadqueue._spread.client import connect
from spreadqueue._spread.session import SessionBack, SessionLost

#: calls in all, calls kept in flight, how long each runs at a worker (seconds)
TOTAL = 300
IN_FLIGHT = 40
RUN_TIME = 0.2
#: the call's own timeout: the restart must fit in it
TIMEOUT = 30.0
#: the whole run, restart included, on a loaded 2-core machine
DEADLINE = 120.0


class DaemonRestartUnderLoad(QueueCase):
    @skip_if_external("it kills and restarts the Spread daemon, which must be ours")
    async def test_the_daemon_restarts_under_load_and_no_call_fails(self) -> None:
        from twisted.internet import reactor

        daemon, daemon_args = await self.own_daemon()
        manager = self.manager()
        workers = [self.worker(f"worker{i}", 4) for i in (1, 2)]
        await all_ready(manager, *workers)

        session = await connect(reactor, self.endpoint, unique_name("s"), reconnect=True)
        self.addCleanup(session.disconnect)
        events: list[tuple[float, Any]] = []
        session.add_reconnect_listener(lambda e: events.append((time.monotonic(), e)))
        # A generous acknowledgement timeout: after the restart the manager process
        # must be back (and active) within it, on a loaded machine.
        sender = Sender(reactor, session, self.queue, ack_timeout=15.0)
        self.addCleanup(sender.stop)
        await sender.start()

        answers: dict[int, list[Any]] = {}
        failures: list[tuple[int, str]] = []
        answered_at: list[float] = []
        started = 0

        def call(i: int) -> None:
            d: Deferred[Any] = sender.rpc(*self.task("slow", i, delay=RUN_TIME), timeout=TIMEOUT)

            def done(value: Any) -> None:
                answers.setdefault(i, []).append(value)
                answered_at.append(time.monotonic())
                more()

            def failed(f: Any) -> None:
                failures.append((i, f.getErrorMessage()))
                more()

            d.addCallbacks(done, failed)

        def more() -> None:
            nonlocal started
            while started < TOTAL and sender.pending < IN_FLIGHT:
                started += 1
                call(started)

        more()
        await poll_until(lambda: len(answers) >= TOTAL // 3, "a third of the calls", DEADLINE)
        # a spreadqueue rpc process too, its call running at a worker at the kill
        rpc = self.spawn(
            spreadqueue_cli(
                "rpc",
                "--queue",
                self.queue,
                "--spread",
                self.endpoint,
                "--timeout",
                "30",
                "slow",
                json.dumps(self.task("slow", 100000, delay=1.5)[1]),
            ),
            "rpc",
            env=child_env([TESTS]),
            ready_file=False,
        )
        await poll_until(lambda: self.run_counts()[100000] == 1, "the rpc command's task")

        running = sum(self.run_counts().values()) - len(answers) - 1
        in_flight = sender.pending
        daemon.kill()
        killed = time.monotonic()
        await poll_until(lambda: any(isinstance(e, SessionLost) for _, e in events), "lost")
        again = self.spawn(daemon_args, "daemon2")
        await all_ready(again)
        restarted = time.monotonic()

        await poll_until(
            lambda: len(answers) + len(failures) >= TOTAL and not rpc.running,
            "every call's outcome",
            DEADLINE,
            alive=[manager, *workers, again],
        )
        assert failures == [], failures[:5]
        assert sorted(answers) == list(range(1, TOTAL + 1))
        assert all(len(a) == 1 for a in answers.values()), "answered twice"
        assert all(a[0][0] == i for i, a in answers.items())
        assert rpc.popen.returncode == 0, rpc.log()
        assert re.search(r"^\[100000, \d+\]$", rpc.log(), re.M), rpc.log()
        assert sender.stats["late_replies"] >= 0  # (counted, reported below)
        back = [t for t, e in events if isinstance(e, SessionBack)]
        assert len(back) == 1, events
        first_after = min(t for t in answered_at if t > killed)
        runs = Counter(self.run_counts())
        for worker in workers:
            assert worker.running, worker.log()
            assert worker.count(r"Spread session \S+ lost \(") == 1, worker.log()
            assert worker.count(r"back after [\d.]+s; registering again with") == 1, worker.log()
        print(
            f"\n{in_flight} call(s) in flight at the kill, {running} running at the workers; "
            f"daemon down {restarted - killed:.2f} s (kill to ready); sender back "
            f"{back[0] - restarted:.2f} s after the new daemon was ready, first answer "
            f"{first_after - restarted:.2f} s after it ({first_after - killed:.2f} s after "
            f"the kill); {len(answers)} of {TOTAL} answered, once each, 0 failed; "
            f"{sum(1 for n in runs.values() if n > 1)} task(s) ran twice; "
            f"{sender.stats['late_replies']} late replies dropped; "
            f"{sender.stats['resubmitted']} resubmissions"
        )
