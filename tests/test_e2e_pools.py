"""End to end: blocking handlers in the worker's thread pool, CPU-bound ones in its process
pool, with real worker processes. The reactor stays free while handlers block: the worker
answers status requests, gets CANCELs, and is not dropped by a flood of messages."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from e2e_case import RUN_DEADLINE, failure_of, within
from procs import all_ready
from test_e2e_ops import OpsCase

from spreadqueue._queue.errors import RemoteError, TaskTimeout
from spreadqueue._spread.wire import RELIABLE_MESS


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ThreadPoolWorker(OpsCase):
    async def test_four_blocking_tasks_run_side_by_side_with_concurrency_4(self) -> None:
        manager, worker = self.manager(), self.worker("w", 4)
        await all_ready(manager, worker)
        sender = await self.sender()
        await within(sender.rpc("echo", 0), RUN_DEADLINE, "a first answer")
        started = time.monotonic()
        calls = [sender.rpc(*self.task("block", i, delay=1.0)) for i in range(4)]
        answers = [await within(c, RUN_DEADLINE, "the blocking tasks") for c in calls]
        took = time.monotonic() - started
        print(f"4 tasks of a 1 s blocking handler took {took:.2f} s")
        assert took < 2.0, took  # one after another would be 4 s and more
        assert all(off_main for _, _, off_main in answers)  # in the pool, not the reactor

    async def test_a_worker_blocked_in_handlers_still_reads_spread(self) -> None:
        manager, worker = self.manager(), self.worker("w", 1, "--prefetch", "0")
        await all_ready(manager, worker)
        sender = await self.sender()
        # A cancel reaches the busy worker: the sender's timeout is answered at once and
        # the handler's late result is dropped.
        timeout = sender.rpc(*self.task("block", 1, delay=3.0), timeout=0.5)
        await failure_of(timeout, TaskTimeout, RUN_DEADLINE)
        # While the next long task blocks its only thread: status answers, and 2,000
        # messages to its private group (twice the daemon's slow-reader limit) are read.
        long = sender.rpc(*self.task("block", 2, delay=4.0), timeout=60)
        inspector = await self.inspector()
        status = await self.status_until(
            inspector, lambda s: s["workers"][0]["report"].get("running") == 1, "running 1"
        )
        report = status["workers"][0]["report"]
        assert report["pool"] == "threads" and report["pools"]["threads"]["busy"] >= 1
        private = report["worker"].split("@", 1)[1]
        flood = await self.session()
        for _ in range(2000):
            flood.multicast(private, b"x" * 100, RELIABLE_MESS, mess_type=1)
        answer = await within(long, RUN_DEADLINE, "the long task")
        assert answer[0] == 2
        # still the same registered worker: it was not dropped and re-registered
        status = await self.status_until(
            inspector,
            lambda s: s["workers"][0]["report"]["pools"]["threads"]["late_results"] >= 1,
            "the late result counted",
        )
        assert len(status["workers"]) == 1
        assert status["active"]["workers_lost"] == 0
        assert status["workers"][0]["report"]["counts"]["completed"] >= 1

    async def test_a_worker_blocked_in_a_handler_answers_a_new_manager_s_hello(self) -> None:
        worker, first = self.worker("w", 1, "--prefetch", "0"), self.manager("manager1")
        await all_ready(first, worker)
        second = self.manager("manager2")
        inspector = await self.inspector()
        await self.status_until(inspector, lambda s: len(s["managers"]) == 2, "a standby")
        sender = await self.sender(ack_timeout=RUN_DEADLINE)
        long = sender.rpc(*self.task("block", 1, delay=5.0), timeout=RUN_DEADLINE)
        await self.status_until(
            inspector, lambda s: s["workers"][0]["report"].get("running") == 1, "running 1"
        )
        first.kill()
        await all_ready(second)
        # The new manager's HELLO reached the worker while its one thread was blocked:
        # it registered again, holding the task it still runs.
        await self.status_until(
            inspector,
            lambda s: (
                [(w.get("registered"), w.get("held")) for w in s["workers"]] == [(True, 1)]
                and s["workers"][0]["report"].get("running") == 1
            ),
            "the worker registered with the new manager while blocked",
        )
        assert (await within(long, RUN_DEADLINE, "the long task"))[0] == 1


class ProcessPoolWorker(OpsCase):
    def process_worker(self, *extra: str) -> Any:
        return self.worker("w", 2, "--pool", "processes", "--prefetch", "0", *extra)

    async def test_children_answer_raise_and_are_recycled(self) -> None:
        manager, worker = self.manager(), self.process_worker("--max-tasks-per-child", "3")
        await all_ready(manager, worker)
        sender = await self.sender()
        pids = [(await within(sender.rpc("pid", i), RUN_DEADLINE, "a pid")) for i in range(9)]
        worker_pid = worker.pid
        assert worker_pid not in pids
        assert len(set(pids)) >= 3, pids  # 9 tasks, 3 per child at most
        error = await failure_of(sender.rpc("fail", 5), RemoteError, RUN_DEADLINE)
        assert error.type_name == "ValueError" and "bad value: 5" in str(error)
        assert "e2e_handlers.py" in error.traceback and "in fail" in error.traceback

    async def test_a_killed_child_s_task_is_retried_and_a_timed_out_one_is_killed(
        self,
    ) -> None:
        manager, worker = self.manager(), self.process_worker()
        await all_ready(manager, worker)
        sender = await self.sender()
        call = sender.rpc(*self.task("block", 1, delay=2.0), timeout=120)
        victim = await self.started_by_a_child(1)
        os.kill(victim, signal.SIGKILL)
        # The task runs again in another child (its attempt 2) and is answered.
        i, pid, _ = await within(call, RUN_DEADLINE, "the retried task")
        assert (i, pid != victim) == (1, True)
        log = worker.log()
        assert f"the handler process {victim} was killed by signal 9 (SIGKILL)" in log, log
        # A timed-out task's child is killed (a process can be stopped, unlike a thread).
        # (3 s: time for the replacement child to start, even on a loaded machine)
        late = sender.rpc(*self.task("block", 2, delay=30.0), timeout=3.0)
        await failure_of(late, TaskTimeout, RUN_DEADLINE)
        second = await self.started_by_a_child(2)
        end = time.monotonic() + RUN_DEADLINE
        while alive(second) and time.monotonic() < end:
            await within(self.sleep(0.05), 5, "a tick")
        assert not alive(second)
        # and the pool is whole again
        assert await within(sender.rpc("echo", 3), RUN_DEADLINE, "an echo") == 3

    async def started_by_a_child(self, i: int) -> int:
        """The pid of the child that recorded task ``i``."""
        end = time.monotonic() + RUN_DEADLINE
        while time.monotonic() < end:
            for pid, runs in self.executions().items():
                if i in runs:
                    return pid
            await within(self.sleep(0.05), 5, "a tick")
        raise AssertionError(f"task {i} never started")

    def sleep(self, seconds: float) -> Any:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        return deferLater(reactor, seconds, lambda: None)
