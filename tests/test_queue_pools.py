"""Where handlers run: the routing rules, the thread pool's cancellation (on real threads,
results handed back through a fake reactor), the process pool on the real reactor, and a
lost run counted as an attempt by the manager."""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from e2e_case import within
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.python.failure import Failure
from twisted.trial import unittest

from spreadqueue import Worker, run_in
from spreadqueue._queue.pools import (
    HandlerError,
    HandlerProcessDied,
    ProcessPool,
    ThreadPool,
    pool_for,
)
from spreadqueue.testing import FakeSpreadNetwork

# ------------------------------------------------------------------ handlers (importable
# by reference from a child process: module-level functions of this module)


def plain(args: Any) -> Any:
    return args


def child_pid(args: Any) -> int:
    return os.getpid()


def raising(args: Any) -> None:
    raise ValueError(f"bad value: {args!r}")


def sleeping(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def coroutine(args: Any) -> Any:
    return args


@inlineCallbacks
def generator(args: Any) -> Any:
    yield None
    return args


def annotated(args: Any) -> Deferred[Any]:
    return Deferred()


# ------------------------------------------------------------------ routing


def test_plain_functions_go_to_the_default_pool_and_async_ones_to_the_reactor() -> None:
    assert pool_for(plain, "threads") == "threads"
    assert pool_for(plain, "processes") == "processes"
    assert pool_for(coroutine, "threads") == "reactor"
    assert pool_for(generator, "threads") == "reactor"
    assert pool_for(annotated, "threads") == "reactor"
    assert pool_for(run_in("processes")(lambda a: a), "threads") == "processes"
    assert pool_for(run_in("reactor")(lambda a: a), "threads") == "reactor"


def test_run_in_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="pool must be one of reactor, threads, processes"):
        run_in("gevent")

    async def c(args: Any) -> Any:
        return args

    with pytest.raises(ValueError, match="coroutine function: it runs on the reactor"):
        pool_for(run_in("threads")(c), "threads")


def test_a_process_handler_must_be_importable_by_reference() -> None:
    net = FakeSpreadNetwork()
    session = net.session("w")
    worker = Worker(net.clock, session, "q", pool="processes")
    with pytest.raises(ValueError, match="module-level function"):
        worker.add_handler("f", lambda a: a)
    with pytest.raises(ValueError, match="with_task handlers cannot run in a process pool"):
        worker.add_handler("g", plain, with_task=True)
    with pytest.raises(ValueError, match="pool must be one of"):
        Worker(net.clock, session, "q", pool="fork")


def test_on_a_clock_plain_handlers_run_inline() -> None:
    """task.Clock has no threads: spreadqueue.testing users keep deterministic tests."""
    net = FakeSpreadNetwork()
    worker = Worker(net.clock, net.session("w"), "q", {"f": plain})
    assert worker._handlers["f"][2] == "reactor"


# ------------------------------------------------------------------ threads


class ThreadReactor:
    """callFromThread queues the call; the test runs it (the reactor's side)."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))

    def run_one(self) -> None:
        f, args = self.calls.get(timeout=30)
        f(*args)


def outcome(d: Deferred[Any]) -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def test_a_thread_s_result_and_error_come_back_on_the_reactor() -> None:
    reactor = ThreadReactor()
    pool = ThreadPool(reactor, 2)  # type: ignore[arg-type]
    try:
        ok, bad = outcome(pool.run(plain, (5,))), outcome(pool.run(raising, (1,)))
        reactor.run_one()
        reactor.run_one()
        assert ok == [5]
        assert isinstance(bad[0], Failure) and bad[0].check(ValueError)
        assert "in raising" in bad[0].getTraceback()
        assert pool.stats()["busy"] == 0
    finally:
        pool.stop()


def test_a_cancelled_thread_task_is_answered_at_once_and_its_late_result_dropped() -> None:
    reactor = ThreadReactor()
    pool = ThreadPool(reactor, 1)  # type: ignore[arg-type]
    try:
        d = pool.run(sleeping, (0.2,))
        got = outcome(d)
        d.cancel()
        assert isinstance(got[0], Failure) and got[0].check(CancelledError)
        # the one thread is still busy: the pool grew so the next task need not wait
        assert pool.stats()["abandoned"] == 1 and pool._pool.max == 2
        reactor.run_one()  # the late result
        stats = pool.stats()
        assert stats["late_results"] == 1 and stats["abandoned"] == 0 and pool._pool.max == 1
    finally:
        pool.stop()


def test_a_thread_handler_that_returns_a_deferred_is_told_where_it_belongs() -> None:
    reactor = ThreadReactor()
    pool = ThreadPool(reactor, 1)  # type: ignore[arg-type]
    try:
        got = outcome(pool.run(lambda a: Deferred(), (1,)))
        reactor.run_one()
        assert got[0].check(TypeError)
        assert "run_in('reactor')" in str(got[0].value)
    finally:
        pool.stop()


# ------------------------------------------------------------------ processes


class ProcessPoolTests(unittest.TestCase):
    """On the real reactor: children are real processes."""

    def pool(self, size: int = 1, max_tasks: int = 0) -> ProcessPool:
        from twisted.internet import reactor

        pool = ProcessPool(reactor, size, max_tasks)
        self.addCleanup(pool.stop)
        pool.start()
        return pool

    async def test_a_child_runs_the_function_and_returns_its_result(self) -> None:
        pool = self.pool()
        await within(pool.whenReady(), 30, "the child to start")
        assert pool._children[0].ready
        pid = await within(pool.run(child_pid, (None,)), 30, "a child's answer")
        assert pid != os.getpid()
        assert pool.stats()["pids"] == [pid]
        assert await within(pool.run(plain, ({"a": [1, b"x"]},)), 30, "echo") == {"a": [1, b"x"]}

    async def test_an_exception_comes_back_with_its_type_and_traceback(self) -> None:
        pool = self.pool()
        try:
            await within(pool.run(raising, (7,)), 30, "the error")
        except HandlerError as e:
            assert e.type_name == "ValueError" and e.message == "bad value: 7"
            assert "in raising" in e.traceback and "test_queue_pools.py" in e.traceback
        else:
            raise AssertionError("no HandlerError")

    async def test_a_cancelled_task_s_child_is_killed_and_replaced(self) -> None:
        pool = self.pool()
        first = await within(pool.run(child_pid, (None,)), 30, "a pid")
        d = pool.run(sleeping, (60,))
        d.cancel()
        self.assertFailure(d, CancelledError)
        second = await within(pool.run(child_pid, (None,)), 30, "the new child's pid")
        assert second != first
        assert pool.stats()["killed"] == 1

    async def test_a_child_killed_by_a_signal_fails_its_task_and_the_pool_refills(self) -> None:
        pool = self.pool()
        victim = await within(pool.run(child_pid, (None,)), 30, "a pid")
        d = pool.run(sleeping, (60,))
        os.kill(victim, signal.SIGKILL)
        try:
            await within(d, 30, "the task to fail")
        except HandlerProcessDied as e:
            assert str(e) == f"the handler process {victim} was killed by signal 9 (SIGKILL)"
        else:
            raise AssertionError("the task did not fail")
        assert await within(pool.run(plain, (1,)), 30, "the refilled pool") == 1
        assert pool.stats()["died"] == 1

    async def test_children_are_replaced_after_max_tasks(self) -> None:
        pool = self.pool(max_tasks=2)
        pids = [await within(pool.run(child_pid, (None,)), 30, "a pid") for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert pool.stats()["recycled"] == 2

    async def test_stop_ends_every_child(self) -> None:
        pool = self.pool(size=2)
        await within(pool.run(child_pid, (None,)), 30, "a pid")
        pids = pool.stats()["pids"]
        await within(pool.stop(), 30, "the children to end")
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
