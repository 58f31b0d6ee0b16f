"""End to end: the queue with real processes over loopback TCP.

A Spread daemon (``twist spread-daemon``, or the external one named by
SPREADQUEUE_TEST_SPREAD), queue managers (``twist spreadqueue-manager`` or ``sqm``) and
workers (``twist spreadqueue-worker --handlers e2e_handlers:HANDLERS``, or the example
scripts) run as separate processes; senders live in the test process. Each test uses
its own queue and private names, so tests never see each other's traffic, even on a
shared external daemon.

Handlers given a ``log`` directory record every execution there (one file per worker
pid), so the tests count executions independently of what the sender received.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
import urllib.request
from collections import Counter
from typing import Any

import msgpack
import pytest
from e2e_case import (
    HANDLERS,
    RUN_DEADLINE,
    SQM,
    QueueCase,
    failure_of,
    unique_name,
    unique_queue,
    within,
)
from procs import (
    READY_DEADLINE,
    ROOT,
    TESTS,
    Proc,
    all_ready,
    child_env,
    external_spread,
    free_port,
    log_match,
    poll_until,
    skip_if_external,
    twist,
)
from twisted.internet.defer import CancelledError, gatherResults

from spreadqueue._queue.errors import (
    NoManager,
    RemoteError,
    SenderStopped,
    TaskTimeout,
    WorkerLost,
)
from spreadqueue._queue.messages import MESS_TYPE_BASE, Kind, Reason, decode
from spreadqueue._queue.sender import Sender
from spreadqueue._spread import wire


def mess_type(kind: int) -> int:
    """The Spread mess_type of queue message kind ``kind`` (also for unknown kinds)."""
    return MESS_TYPE_BASE + kind


class TheSeedSynopsis(QueueCase):
    """The README's quick start, run as a user runs it."""

    async def test_sqm_worker_and_sender_examples(self) -> None:
        """``sqm QUEUE`` + examples/worker.py + examples/sender.py: the sender prints the
        worker's answer twice (submit/receive, then rpc) and exits 0. Without an external
        daemon sqm finds nothing at $SPREAD_DAEMON and starts an embedded one, which the
        example scripts then use over TCP."""
        external = external_spread()
        spread = external or f"{free_port()}@localhost"
        env = child_env(SPREAD_DAEMON=spread, SPREAD_QUEUE_NAME=self.queue, SPREAD_QUEUE="")
        sqm = self.spawn([sys.executable, "-c", SQM, self.queue], "sqm", env=env)
        await all_ready(sqm)
        if external is None:
            assert "started an embedded Spread daemon" in sqm.log(), sqm.log()
        worker = self.spawn(
            [sys.executable, str(ROOT / "examples" / "worker.py")],
            "worker",
            env=env,
            ready_file=False,
        )
        await log_match(worker, r"worker ready on queue")
        sender = self.run_example("sender.py", env)
        assert sender.returncode == 0, sender
        lines = sender.stdout.splitlines()
        assert lines == [
            "submit + receive: {'response': 'I heard you!'}",
            "rpc: {'response': 'I heard you!'}",
        ], sender
        assert sqm.running and worker.running

    async def test_shared_session_example(self) -> None:
        """examples/shared_session.py: one Spread connection carries the application's
        chat group and the queue; each sees its own traffic and the rpc is answered."""
        env = child_env(SPREAD_DAEMON=self.endpoint, SPREAD_QUEUE_NAME=self.queue)
        manager = self.manager()
        await all_ready(manager)
        done = self.run_example("shared_session.py", env)
        assert done.returncode == 0, done
        lines = done.stdout.splitlines()
        assert lines[0] == f"chat: 1 member(s) in {self.queue}-chat", done
        assert re.fullmatch(r"chat: hello from #[^#]+#\S+", lines[1]), done
        assert lines[2:] == ["rpc: {'response': 'I heard you!'}"], done

    async def test_web_app_example(self) -> None:
        """examples/web_app.py (a worker and a sender inside a Twisted web server):
        GET /double?n=21 goes through the queue and answers 42; GET / shows the
        embedded worker's counters."""
        port = free_port()
        env = child_env(
            [TESTS], SPREAD_DAEMON=self.endpoint, SPREAD_QUEUE_NAME=self.queue, PORT=str(port)
        )
        manager = self.manager()
        web = self.spawn(
            [sys.executable, str(ROOT / "examples" / "web_app.py")],
            "web",
            env=env,
            ready_file=False,
        )
        await all_ready(manager)
        await log_match(web, r"web app on http://")
        # Nothing else runs in this test's reactor: a blocking fetch is fine.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/double?n=21", timeout=30) as r:
            assert r.status == 200
            assert json.loads(r.read()) == {"n": 21, "double": 42}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            page = r.read().decode()
        assert f"worker of {self.queue}" in page
        assert re.search(r"<td>completed</td><td>1</td>", page), page


class Throughput(QueueCase):
    async def test_thousand_tasks_over_four_worker_processes(self) -> None:
        """1,000 tasks over 4 worker processes: each answered exactly once with its own
        value, each run exactly once (the workers' execution logs), every worker got
        some, and no task was answered twice (no late replies at the sender)."""
        workers = [self.worker(f"worker{i}", 2) for i in range(4)]
        manager = self.manager()
        await all_ready(manager, *workers)
        sender = await self.sender()
        n = 1000
        calls = [sender.rpc(*self.task("work", i), timeout=RUN_DEADLINE) for i in range(n)]
        results = await within(gatherResults(calls, consumeErrors=True), RUN_DEADLINE, "1000 rpc")
        assert [value for value, _ in results] == [2 * i for i in range(n)]
        answered_by = Counter(pid for _, pid in results)
        assert set(answered_by) == {w.pid for w in workers}, answered_by
        assert self.run_counts() == Counter(range(n))
        for pid, runs in self.executions().items():
            assert len(runs) == answered_by[pid]
        assert sender.stats["late_replies"] == 0
        assert sender.pending == 0


class WorkerCrash(QueueCase):
    async def test_kill_9_of_a_worker_holding_tasks(self) -> None:
        """SIGKILL of one of 3 workers (4 tasks at a time each) in the middle of 200 slow
        tasks: every task is still answered exactly once, the tasks the dead worker had
        started are run again on the survivors (at least once more) and answered by
        them, and nothing else runs twice."""
        workers = [self.worker(f"worker{i}", 4) for i in range(3)]
        manager = self.manager()
        await all_ready(manager, *workers)
        sender = await self.sender()
        n = 200
        submitted = {
            sender.submit(*self.task("slow", i, delay=0.1), timeout=RUN_DEADLINE): i
            for i in range(n)
        }
        victim, survivors = workers[0], workers[1:]
        victim_runs = self.runs / f"{victim.pid}.runs"

        def victim_busy() -> bool:
            return victim_runs.exists() and len(victim_runs.read_text().split()) >= 8

        await poll_until(victim_busy, "the victim to run 8 tasks", alive=workers)
        victim.kill()

        replies = await self.collect(sender, n)
        self.assert_answered_once(submitted, replies)
        answered_by = {submitted[r.task_id]: r.value[1] for r in replies}
        started_by_victim = set(self.executions()[victim.pid])
        rerun = {i for i in started_by_victim if answered_by[i] != victim.pid}
        assert rerun, "the victim was killed holding no started task"
        survivor_pids = {w.pid for w in survivors}
        assert all(answered_by[i] in survivor_pids for i in rerun)
        # Survivors ran every task the victim did not answer, exactly once.
        survivor_counts = Counter(
            i for pid, runs in self.executions().items() if pid != victim.pid for i in runs
        )
        not_by_victim = {i for i, pid in answered_by.items() if pid != victim.pid}
        assert survivor_counts == Counter(not_by_victim)
        assert sender.stats["late_replies"] == 0
        assert manager.running and all(w.running for w in survivors)


class WorkerLifecycle(QueueCase):
    async def test_a_task_that_kills_every_worker_ends_in_worker_lost(self) -> None:
        """A poison task (its handler kills the worker process) runs on at most
        max_attempts (3) workers, then the sender gets WorkerLost instead of an endless
        loop; the manager keeps serving (a new worker answers the next call)."""
        workers = [self.worker(f"worker{i}") for i in range(3)]
        manager = self.manager()
        await all_ready(manager, *workers)
        sender = await self.sender()
        err = await failure_of(sender.rpc("crash", None, timeout=RUN_DEADLINE), WorkerLost)
        assert "3 attempts" in str(err)
        for w in workers:
            w.popen.wait(READY_DEADLINE)
            assert w.popen.returncode == 3, w.log()  # each ran it once, and died
        fresh = self.worker("fresh")
        await all_ready(fresh)
        assert await within(sender.rpc("echo", "next"), RUN_DEADLINE, "echo") == "next"
        assert manager.running

    async def test_graceful_worker_stop_finishes_its_task(self) -> None:
        """SIGTERM to a worker running a task: it finishes the task and answers it (run
        once, not handed to another worker), then exits cleanly; the queue goes on with
        the other worker."""
        workers = [self.worker(f"worker{i}") for i in range(2)]
        manager = self.manager()
        await all_ready(manager, *workers)
        sender = await self.sender()
        call = sender.rpc(*self.task("slow", 1, delay=1.0), timeout=RUN_DEADLINE)
        await poll_until(lambda: self.run_counts()[1] == 1, "the task to start")
        (holder_pid,) = self.executions()
        holder = next(w for w in workers if w.pid == holder_pid)
        other = next(w for w in workers if w is not holder)
        holder.popen.send_signal(signal.SIGTERM)
        assert await within(call, RUN_DEADLINE, "the task") == [1, holder.pid]
        await poll_until(lambda: not holder.running, "the worker to exit")
        assert holder.popen.returncode in (0, -signal.SIGTERM), holder.log()
        assert self.run_counts() == Counter([1])
        assert await within(sender.rpc("pid", None), RUN_DEADLINE, "pid") == other.pid


class DaemonRestart(QueueCase):
    @skip_if_external("it kills and restarts the Spread daemon")
    async def test_daemon_killed_and_restarted(self) -> None:
        """kill -9 of the Spread daemon: a pending call of a session that does not
        reconnect fails at once with SenderStopped (no hang); once a daemon runs again
        at the same address the manager and worker processes reconnect by themselves
        and calls are answered. The worker keeps running the task of the sender that
        is gone (its session survives the restart: it cannot tell), so it needs a
        second slot for the new call (test_e2e_reconnect: senders that come back)."""
        port = free_port()
        daemon_args = twist("spread-daemon", "--listen", f"tcp:{port}:interface=127.0.0.1")
        daemon = self.spawn(daemon_args, "daemon1")
        await all_ready(daemon)
        self.endpoint = f"tcp:host=127.0.0.1:port={port}"
        worker = self.worker("worker", 2)
        manager = self.manager()
        await all_ready(manager, worker)
        sender = await self.sender()
        pending = sender.rpc(*self.task("slow", 1, delay=60), timeout=RUN_DEADLINE)
        await poll_until(lambda: self.run_counts()[1] == 1, "the task to start")
        started = time.monotonic()
        daemon.kill()
        await failure_of(pending, SenderStopped)
        assert time.monotonic() - started < 10
        again = self.spawn(daemon_args, "daemon2")
        await all_ready(again)
        sender = await self.sender(ack_timeout=RUN_DEADLINE)
        assert await within(sender.rpc("pid", None), RUN_DEADLINE, "pid") == worker.pid
        assert manager.running and worker.running
        assert self.run_counts() == Counter([1])  # not run again: the worker kept it


@pytest.fixture(scope="class")
def one_worker(request: Any, e2e: None, tmp_path_factory: Any) -> Any:
    """A manager and one worker (concurrency 1) shared by the tests of a class."""
    cls = request.cls
    workdir = tmp_path_factory.mktemp("outcomes")
    cls.shared_queue = unique_queue()
    args = ["--queue", cls.shared_queue, "--spread", cls.endpoint]
    procs = [
        Proc(twist("spreadqueue-manager", *args), workdir, "manager"),
        Proc(
            twist("spreadqueue-worker", *args, "--handlers", HANDLERS),
            workdir,
            "worker",
            env=child_env([TESTS]),
        ),
    ]
    try:
        for proc in procs:
            proc.wait_ready()
        cls.shared_procs = procs
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.stop()


@pytest.mark.usefixtures("one_worker")
class CallOutcomes(QueueCase):
    """What a caller gets back: errors, timeouts, cancellation, no manager."""

    shared_queue: str
    shared_procs: list[Proc]

    def setUp(self) -> None:
        super().setUp()
        self.queue = self.shared_queue  # served by the class's manager and worker

    async def test_handler_exception_and_a_function_no_worker_serves(self) -> None:
        """A handler that raises gives RemoteError with the exception's type, message and
        the worker's traceback; a function no worker has waits for one, and its
        TaskTimeout names it; the worker keeps serving."""
        sender = await self.sender()
        err = await failure_of(sender.rpc("fail", {"x": 1}), RemoteError)
        assert err.type_name == "ValueError"
        assert err.remote_message == "bad value: {'x': 1}"
        assert err.traceback.startswith("Traceback")
        assert "e2e_handlers.py" in err.traceback and "raise ValueError" in err.traceback
        missing = await failure_of(sender.rpc("no_such_function", 1, timeout=1), TaskTimeout)
        assert "no worker serving function 'no_such_function'" in str(missing)
        assert await within(sender.rpc("echo", [1, "two"]), 30, "echo") == [1, "two"]

    async def test_timeout_of_a_running_task_frees_the_worker(self) -> None:
        """An rpc whose handler runs far longer than its timeout fails with TaskTimeout
        on time, and the worker (one task at a time) is freed: the next call is answered
        long before the first handler would have finished."""
        sender = await self.sender()
        started = time.monotonic()
        await failure_of(
            sender.rpc(*self.task("slow", 1, delay=60), timeout=0.5), TaskTimeout, seconds=30
        )
        assert time.monotonic() - started < 10
        assert self.run_counts() == Counter([1])  # it did start
        assert await within(sender.rpc("echo", "next", timeout=20), 30, "echo") == "next"

    async def test_cancelled_rpc_is_dropped(self) -> None:
        """Cancelling an rpc fails it with CancelledError and the manager drops the
        task: with the only worker busy the task is queued, and once cancelled it never
        runs, while a task submitted after it does."""
        sender = await self.sender()
        blocker = sender.rpc(*self.task("slow", 1, delay=0.5), timeout=30)
        await poll_until(lambda: self.run_counts()[1] == 1, "the blocker to start")
        dropped = sender.rpc(*self.task("slow", 2), timeout=30)
        await poll_until(lambda: sender.unacknowledged == 0, "the manager's ack")
        dropped.cancel()
        await failure_of(dropped, CancelledError)
        after = sender.rpc(*self.task("slow", 3), timeout=30)
        assert (await within(after, 30, "the later task"))[0] == 3
        assert (await within(blocker, 30, "the blocker"))[0] == 1
        assert self.run_counts() == Counter([1, 3])
        assert sender.pending == 0

    async def test_no_manager(self) -> None:
        """A submit to a queue without a manager fails with NoManager once the ack
        timeout passes (not before, not much later)."""
        self.queue = unique_queue()  # nobody manages this one
        sender = await self.sender(ack_timeout=1.0)
        started = time.monotonic()
        err = await failure_of(sender.rpc("echo", 1, timeout=30), NoManager, seconds=20)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 10, elapsed
        assert self.queue in str(err)
        assert sender.pending == 0


class ManagerRestart(QueueCase):
    async def test_manager_killed_then_stopped_while_workers_and_senders_stay(self) -> None:
        """kill -9 of the only manager with tasks running and queued, tasks submitted
        while no manager runs, then a new manager: every task is answered exactly once
        (acknowledged ones resubmitted by their sender, unacknowledged ones resent when
        the new manager appears), and both workers re-registered (new tasks reach both).
        Then a graceful stop (SIGTERM) of that manager with tasks queued: it hands them
        back (FAILED/RESUBMIT) and a third manager answers each exactly once. The two
        senders share one session, so the second never saw its own join notice."""
        workers = [self.worker(f"worker{i}") for i in range(2)]
        first = self.manager("manager1")
        await all_ready(first, *workers)
        session = await self.session()
        handed_back: list[str] = []

        def private(frame: object) -> None:
            if isinstance(frame, wire.RegularMessage) and frame.mess_type == mess_type(Kind.FAILED):
                for e in decode(frame.mess_type, frame.data).entries:
                    if e.reason == Reason.RESUBMIT:
                        handed_back.append(e.task_id)

        session.add_listener(private, session.private_group)
        senders = [await self.sender(session, ack_timeout=RUN_DEADLINE) for _ in range(2)]

        def submit(numbers: range, delay: float) -> dict[Sender, dict[str, int]]:
            batch: dict[Sender, dict[str, int]] = {s: {} for s in senders}
            for i in numbers:
                s = senders[i % 2]
                task_id = s.submit(*self.task("slow", i, delay=delay), timeout=RUN_DEADLINE)
                batch[s][task_id] = i
            return batch

        async def answered_once(batch: dict[Sender, dict[str, int]]) -> None:
            for s, submitted in batch.items():
                self.assert_answered_once(submitted, await self.collect(s, len(submitted)))

        def all_acknowledged() -> bool:
            return all(s.unacknowledged == 0 for s in senders)

        running = submit(range(12), delay=0.2)
        await poll_until(
            lambda: all_acknowledged() and len(self.executions()) == 2,
            "all acknowledged, both workers busy",
        )
        first.kill()
        # Submitted while no manager exists: nobody acknowledges them; the senders keep
        # them and resend them to the next manager.
        gap = submit(range(100, 106), delay=0.0)
        second = self.manager("manager2")
        await all_ready(second)
        # receive() hands out answers in completion order, and the gap's instant tasks
        # may finish before the slow ones that were running: collect both together.
        await answered_once({s: {**running[s], **gap[s]} for s in senders})
        assert set(self.run_counts()) == set(range(12)) | set(range(100, 106))

        calls = [senders[0].rpc(*self.task("slow", i, delay=0.05)) for i in range(200, 210)]
        results = await within(gatherResults(calls, consumeErrors=True), RUN_DEADLINE, "rpc")
        assert {pid for _, pid in results} == {w.pid for w in workers}

        queued = submit(range(300, 312), delay=0.25)
        await poll_until(all_acknowledged, "all acknowledged")
        second.popen.send_signal(signal.SIGTERM)
        await poll_until(lambda: not second.running, "the manager to stop")
        # twist ends a clean shutdown by re-raising the signal (the Unix convention).
        assert second.popen.returncode in (0, -signal.SIGTERM), second.log()
        await poll_until(lambda: handed_back, "the stopping manager's FAILED/RESUBMIT")
        assert set(handed_back) <= {t for batch in queued.values() for t in batch}
        third = self.manager("manager3")
        await all_ready(third)
        await answered_once(queued)
        assert all(s.pending == 0 for s in senders)
        assert all(w.running for w in workers)


class StandbyManager(QueueCase):
    async def test_second_manager_stands_by_then_takes_over(self) -> None:
        """A second manager on the same queue stands by: while the first is active every
        task is answered once and run once, and the second never becomes active. When
        the first is killed, the second becomes active and every task (including those
        in flight at the kill) is answered exactly once."""
        workers = [self.worker(f"worker{i}", 2) for i in range(2)]
        first = self.manager("manager1")
        await all_ready(first, *workers)

        standby_name = unique_name("m")
        seen: list[list[str]] = []
        session = await self.session()

        def senders_group(frame: object) -> None:
            if isinstance(frame, wire.MembershipMessage):
                seen.append(list(frame.members))

        session.add_listener(senders_group, self.groups.senders)
        sender = await self.sender(session, ack_timeout=RUN_DEADLINE)
        second = self.manager("manager2", "--name", standby_name)
        # A manager joins the sender group last: once there it is fully up.
        await poll_until(
            lambda: any(m.startswith(f"#{standby_name}#") for m in (seen[-1] if seen else [])),
            "the second manager in the sender group",
            alive=[second],
        )

        n = 100
        calls = [sender.rpc(*self.task("work", i)) for i in range(n)]
        results = await within(gatherResults(calls, consumeErrors=True), RUN_DEADLINE, "rpc")
        assert [value for value, _ in results] == [2 * i for i in range(n)]
        assert self.run_counts() == Counter(range(n))
        assert sender.stats["late_replies"] == 0
        assert not second.ready_file.exists() and "is active" not in second.log()

        submitted = {
            sender.submit(*self.task("slow", i, delay=0.1), timeout=RUN_DEADLINE): i
            for i in range(1000, 1020)
        }
        await poll_until(
            lambda: sender.unacknowledged == 0 and self.run_counts()[1000] == 1,
            "tasks in flight",
        )
        first.kill()
        await all_ready(second)
        self.assert_answered_once(submitted, await self.collect(sender, len(submitted)))
        assert set(self.run_counts()) >= set(submitted.values())
        assert await within(sender.rpc("echo", "after"), RUN_DEADLINE, "echo") == "after"
        assert all(w.running for w in workers)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


#: Malformed messages for the manager group: (mess_type, data).
BAD_FOR_MANAGER = [
    (mess_type(Kind.SUBMIT), b"\xc1"),  # not msgpack
    (mess_type(Kind.SUBMIT), b"\x92\x01"),  # truncated
    (mess_type(Kind.SUBMIT), _pack([1, [[123, "f", b"", None]]])),  # task id not a str
    (mess_type(Kind.SUBMIT), _pack([1, [["t.1", "f", "text, not bin", None]]])),
    (mess_type(Kind.SUBMIT), _pack([2, [["t.1", "f", b"", None]]])),  # unknown version
    (mess_type(Kind.SUBMIT), _pack({"version": 1})),  # a map, not [version, entries]
    (mess_type(Kind.REGISTER), _pack([1, [["w1", 10**9, []]]])),  # capacity out of range
    (mess_type(Kind.REGISTER), b"\x92\x01\x91\x93\xa2w1\x01\xdd\xff\xff\xff\xff"),  # 4G ids
    (mess_type(Kind.SUBMIT), b"\x92\x01\x91\x94\xa3t.1\xa1f\xc6\x7f\xff\xff\xff"),  # 2 GB bin
]
#: Malformed messages for a worker's private group.
BAD_FOR_WORKER = [
    (mess_type(Kind.ASSIGN), b"\xc1"),
    (mess_type(Kind.ASSIGN), _pack([1, [["w1", "t.1", "echo"]]])),  # too few fields
    (
        mess_type(Kind.ASSIGN),
        _pack([1, [["w1", "t.1", "echo", b"\xc0", "no group", 1, None]]]),
    ),  # an illegal group
    (mess_type(Kind.CANCEL), b"\x92\x01\xdd\xff\xff\xff\xff"),  # 4G entries
]


class MalformedMessages(QueueCase):
    async def test_garbage_is_dropped_logged_and_harmless(self) -> None:
        """Malformed queue messages (bad msgpack, wrong types, unknown version,
        huge length claims) sent with the queue's mess_types to the manager group and to
        a worker's private group over the real daemon are dropped and logged (the first
        at once, the others counted in one line per interval);
        application traffic outside the range, and kinds of a later revision, are ignored
        silently; both processes stay
        up and go on serving."""
        worker = self.worker("worker")
        manager = self.manager()
        await all_ready(manager, worker)
        worker_group = re.search(r"ready on (#\S+#\S+) ", worker.log())
        assert worker_group is not None, worker.log()

        session = await self.session()
        for mt, data in BAD_FOR_MANAGER:
            session.multicast(self.groups.manager, data, service=wire.AGREED_MESS, mess_type=mt)
        for mt, data in BAD_FOR_WORKER:
            session.multicast(worker_group[1], data, service=wire.AGREED_MESS, mess_type=mt)
        for group in (self.groups.manager, worker_group[1]):
            session.multicast(group, b"application data", service=wire.AGREED_MESS, mess_type=7)
        # A kind of a later revision: ignored without a word (docs/protocol.md).
        later = _pack([1, []])
        session.multicast(self.groups.manager, later, service=wire.AGREED_MESS, mess_type=0x51FF)

        # Same session, sent after the garbage: answered only if both survived it.
        sender = await self.sender(session)
        assert await within(sender.rpc("echo", "still here"), 30, "echo") == "still here"

        # One line at once per peer; the rest counted in one line when the 10 s window
        # ends (a flood of garbage used to make a line per message).
        dropped = re.escape(f"dropped a malformed message from {session.private_group}")
        more = {
            manager: f"{len(BAD_FOR_MANAGER) - 1} more like it from {session.private_group}",
            worker: f"{len(BAD_FOR_WORKER) - 1} more like it from {session.private_group}",
        }
        await poll_until(
            lambda: all(proc.count(re.escape(text)) for proc, text in more.items()),
            "the counted drops in the logs",
        )
        for proc in (manager, worker):
            assert proc.count(dropped) == 2, proc.log()  # the first, and the count
            assert proc.count("malformed") == 2
        assert "unknown queue message kind" not in manager.log()
        assert manager.running and worker.running
        assert "Traceback" not in manager.log() + worker.log()
