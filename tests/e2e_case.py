"""The frame of end-to-end tests: a trial TestCase that starts queue processes for one
test and reaps them, senders in the test process, evidence of what ran.

The daemon comes from the ``spread_endpoint`` fixture (conftest.py): ours, one per test
module, or the external one named by SPREADQUEUE_TEST_SPREAD.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from procs import (
    READY_DEADLINE,
    ROOT,
    TESTS,
    Proc,
    all_ready,
    child_env,
    free_port,
    spreadqueue_cli,
    twist,
)
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from spreadqueue._queue.inspect import QueueInspector
from spreadqueue._queue.names import queue_groups
from spreadqueue._queue.sender import Reply, Sender
from spreadqueue._spread.client import connect
from spreadqueue._spread.session import SpreadSession

T = TypeVar("T")

HANDLERS = "e2e_handlers:HANDLERS"
SQM = "import sys; from spreadqueue._service.cli import sqm_main; sys.exit(sqm_main())"
#: How long a whole run of tasks may take on a loaded 2-core machine.
RUN_DEADLINE = 60.0


def unique_queue(prefix: str = "e2e") -> str:
    """A queue name no other test (or test run on a shared daemon) uses."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def unique_name(prefix: str = "t") -> str:
    """A private Spread name (at most 10 characters) nobody else uses."""
    return (prefix + uuid.uuid4().hex)[:10]


async def within(d: Deferred[T], seconds: float, what: str) -> T:
    """Wait for ``d`` at most ``seconds``; fail the test (not hang) when it does not fire."""
    from twisted.internet import defer, reactor

    d.addTimeout(seconds, reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise AssertionError(f"timed out after {seconds} s waiting for {what}") from None


async def failure_of(d: Deferred[Any], kind: type[BaseException], seconds: float = 30.0) -> Any:
    """Wait for ``d`` to fail with ``kind``; return the exception."""
    try:
        result = await within(d, seconds, f"a {kind.__name__}")
    except kind as e:
        return e
    raise AssertionError(f"expected {kind.__name__}, got the result {result!r}")


@pytest.mark.usefixtures("e2e")
class QueueCase(unittest.TestCase):
    """Starts queue processes for one test and reaps them (SIGKILL) afterwards."""

    endpoint: str
    tmp_factory: Any

    def setUp(self) -> None:
        self.queue = unique_queue()
        self.groups = queue_groups(self.queue)
        self.workdir = Path(self.tmp_factory.mktemp(self._testMethodName[:40]))
        self.runs = self.workdir / "runs"
        self.runs.mkdir()
        self.procs: list[Proc] = []
        self.addCleanup(self._reap)

    def _reap(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.stop()

    # ------------------------------------------------------------------ processes

    def spawn(
        self,
        args: list[str],
        label: str,
        *,
        env: dict[str, str] | None = None,
        ready_file: bool = True,
    ) -> Proc:
        proc = Proc(args, self.workdir, label, env=env, ready_file=ready_file)
        self.procs.append(proc)
        return proc

    async def own_daemon(self, label: str = "daemon1") -> tuple[Proc, list[str]]:
        """Start our daemon (``spreadqueue daemon``) on a free loopback port and make it
        this test's endpoint, whatever SPREADQUEUE_TEST_SPREAD says (for tests that
        kill it); return it once ready, and its command line (to start another daemon
        on the same port)."""
        port = free_port()
        args = spreadqueue_cli("daemon", "--listen", f"tcp:{port}:interface=127.0.0.1")
        daemon = self.spawn(args, label)
        await all_ready(daemon)
        self.endpoint = f"tcp:host=127.0.0.1:port={port}"
        return daemon, args

    def manager(self, label: str = "manager", *extra: str) -> Proc:
        """``twist spreadqueue-manager`` for this test's queue (ready = active)."""
        args = ["--queue", self.queue, "--spread", self.endpoint, *extra]
        return self.spawn(twist("spreadqueue-manager", *args), label)

    def worker(self, label: str, concurrency: int = 1, *extra: str) -> Proc:
        """``twist spreadqueue-worker`` running e2e_handlers (ready = registered)."""
        args = ["--queue", self.queue, "--spread", self.endpoint, "--handlers", HANDLERS]
        args += ["--concurrency", str(concurrency), *extra]
        return self.spawn(twist("spreadqueue-worker", *args), label, env=child_env([TESTS]))

    def run_example(
        self, script: str, env: dict[str, str], *args: str
    ) -> subprocess.CompletedProcess[str]:
        """Run examples/SCRIPT (with ``args``) to its end, its output captured."""
        return subprocess.run(
            [sys.executable, str(ROOT / "examples" / script), *args],
            env=env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=RUN_DEADLINE,
        )

    # ------------------------------------------------------------------ senders

    async def session(self) -> SpreadSession:
        from twisted.internet import reactor

        session = await connect(reactor, self.endpoint, unique_name("s"))
        self.addCleanup(lambda: session.disconnect() if session.connected else None)
        return session

    async def sender(
        self, session: SpreadSession | None = None, *, ack_timeout: float = 5.0
    ) -> Sender:
        from twisted.internet import reactor

        session = session or await self.session()
        sender = Sender(reactor, session, self.queue, ack_timeout=ack_timeout)
        self.addCleanup(sender.stop)
        await sender.start()
        return sender

    # ------------------------------------------------------------------ evidence

    def task(self, func: str, i: int, **extra: Any) -> tuple[str, dict[str, Any]]:
        """Function and arguments of a task that records its executions."""
        return func, {"i": i, "log": str(self.runs), **extra}

    def executions(self) -> dict[int, list[int]]:
        """Per worker pid, the task numbers it ran (started), in order."""
        return {
            int(f.name.split(".")[0]): [int(x) for x in f.read_text().split()]
            for f in self.runs.glob("*.runs")
        }

    def run_counts(self) -> Counter[int]:
        """How many times each task number was run, over all workers."""
        return Counter(i for runs in self.executions().values() for i in runs)

    async def collect(self, sender: Sender, n: int) -> list[Reply]:
        """The next ``n`` answers of submitted tasks (failing on a task error)."""
        replies = []
        for _ in range(n):
            replies.append(await within(sender.receive(), RUN_DEADLINE, f"{n} answers"))
        return replies

    def assert_answered_once(self, submitted: dict[str, int], replies: Iterable[Reply]) -> None:
        """Every submitted task got exactly one (final) answer, with its own number."""
        replies = list(replies)
        counts = Counter(r.task_id for r in replies)
        assert set(counts) == set(submitted), (
            f"missing {set(submitted) - set(counts)}, unknown {set(counts) - set(submitted)}"
        )
        assert max(counts.values()) == 1, [t for t, c in counts.items() if c > 1]
        for r in replies:
            assert r.final
            assert r.value[0] == submitted[r.task_id], r


class OpsCase(QueueCase):
    """QueueCase plus the operator's tools: the CLI, an inspector, status polling."""

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """Run ``spreadqueue ARGS`` (against this test's daemon); (exit, out, err)."""
        from twisted.internet.utils import getProcessOutputAndValue

        argv = ["-m", "spreadqueue._service.cli", *args, "--spread", self.endpoint]
        env = child_env(COLUMNS="200")
        d = getProcessOutputAndValue(sys.executable, argv, env=env, path=str(self.workdir))
        out, err, code = await within(d, READY_DEADLINE, f"spreadqueue {' '.join(args)}")
        return code, out.decode(), err.decode()

    async def inspector(self) -> QueueInspector:
        from twisted.internet import reactor

        inspector = QueueInspector(reactor, await self.session(), self.queue)
        self.addCleanup(inspector.close)
        return inspector

    async def status_until(
        self, inspector: QueueInspector, condition: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Ask for the status until ``condition(status)``; fail after a deadline."""
        end = time.monotonic() + RUN_DEADLINE
        while True:
            status = await within(inspector.status(timeout=2.0), 10, "a status")
            if status["active"] is not None and condition(status):
                return status
            for proc in self.procs:
                proc.check_alive(what)
            if time.monotonic() > end:
                raise AssertionError(f"no {what} within {RUN_DEADLINE} s: {status}")

    def pids_of(self, status: dict[str, Any]) -> dict[str, int]:
        """Worker name -> pid, from the workers' own reports."""
        return {w["worker"]: w["report"]["process"]["pid"] for w in status["workers"]}
