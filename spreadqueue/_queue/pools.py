"""Where a worker's handlers run: on the reactor, in a thread pool, or in child processes.

A handler that returns a coroutine or a Deferred runs on the reactor, as it must. A
plain function may block (a database query, an HTTP call, pure CPU work): it runs in
the worker's pool, so that the reactor keeps reading Spread traffic (CANCEL, HELLO,
new assignments) while it runs.

- ``threads`` (the default): a Twisted thread pool of the worker's own, ``concurrency``
  threads. A thread cannot be stopped: a cancelled or timed-out task is answered at
  once, its thread runs on, and its late result is dropped and counted. The pool grows
  by one thread per such task while it runs, so the worker keeps its concurrency.
- ``processes``: ``concurrency`` child Python processes (fresh interpreters started
  with the reactor's ``spawnProcess``, so they inherit no reactor), for CPU-bound
  handlers. The function travels by reference (module and name), its arguments and
  result by pickle. A cancelled task's child is killed and replaced; a child that dies
  while it runs a task makes the task count as lost (the manager retries it within
  ``max_attempts``); children are replaced after ``max_tasks_per_child`` tasks.
"""

from __future__ import annotations

import inspect
import os
import pickle
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from types import CoroutineType
from typing import Any, Final, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool as _TwistedThreadPool

from .child import CHILD_IN, CHILD_OUT, LENGTH, frame

__all__ = [
    "POOLS",
    "HandlerError",
    "HandlerProcessDied",
    "ProcessPool",
    "ThreadPool",
    "pool_for",
    "run_in",
]

POOLS: Final = ("reactor", "threads", "processes")
_MARK: Final = "__spreadqueue_pool__"
_REACTOR_RETURNS: Final = ("Deferred", "Awaitable", "Coroutine", "defer.Deferred")

F = TypeVar("F", bound=Callable[..., Any])


def run_in(pool: str) -> Callable[[F], F]:
    """Decorator: run this handler in ``pool`` ('reactor', 'threads' or 'processes'),
    whatever the worker's default pool is."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")

    def mark(fn: F) -> F:
        setattr(fn, _MARK, pool)
        return fn

    return mark


def _runs_on_reactor(fn: Callable[..., Any]) -> bool:
    """A coroutine function, an ``inlineCallbacks`` one, or one annotated to return a
    Deferred or an awaitable: it needs the reactor."""
    if inspect.iscoroutinefunction(fn):
        return True
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None and inspect.isgeneratorfunction(wrapped):
        return True  # twisted's inlineCallbacks (functools.wraps of a generator)
    returns = getattr(fn, "__annotations__", {}).get("return")
    if isinstance(returns, str):
        return returns.startswith(_REACTOR_RETURNS)
    return getattr(returns, "__name__", "") in ("Deferred", "Awaitable", "Coroutine")


def pool_for(fn: Callable[..., Any], default: str) -> str:
    """Where ``fn`` runs: its ``run_in`` mark, else the reactor when it must, else
    ``default``."""
    declared = getattr(fn, _MARK, None)
    on_reactor = _runs_on_reactor(fn)
    if declared is not None:
        if on_reactor and declared != "reactor" and inspect.iscoroutinefunction(fn):
            raise ValueError(f"{fn!r} is a coroutine function: it runs on the reactor")
        return str(declared)
    return "reactor" if on_reactor else default


class HandlerError(Exception):
    """A handler raised in a child process: its type name, message and traceback."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class HandlerProcessDied(Exception):
    """The child process running a task died (a signal, out of memory, os._exit)."""


# --------------------------------------------------------------------------- threads


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    # A handler that never returns must not keep the process alive once the worker
    # has stopped waiting for it.
    return threading.Thread(*args, daemon=True, **kwargs)


class _Job:
    __slots__ = ("args", "child", "d", "fn")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        canceller: Callable[[_Job], None],
    ) -> None:
        self.fn = fn
        self.args = args
        self.d: Deferred[Any] = Deferred(lambda _: canceller(self))
        #: the child it was sent to (processes only)
        self.child: _Child | None = None


class ThreadPool:
    """``size`` threads for blocking handlers; results come back on the reactor."""

    kind = "threads"
    log = Logger()

    def __init__(self, reactor: IReactorFromThreads, size: int, name: str = "") -> None:
        self._reactor = reactor
        self.size = size
        self._pool = _TwistedThreadPool(0, size, name=name or "spreadqueue")
        self._pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        self.busy = 0
        #: tasks answered (cancelled, timed out) whose thread still runs
        self.abandoned = 0
        #: results that came back after their task was answered, dropped
        self.late_results = 0
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._pool.start()

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Deferred[Any]:
        """Call ``fn(*args)`` in a thread; the Deferred fires on the reactor thread.
        Cancelling it answers at once; the thread's late result is then dropped."""
        self.start()
        job = _Job(fn, args, self._abandon)
        self.busy += 1
        call = self._reactor.callFromThread
        self._pool.callInThreadWithCallback(
            lambda ok, result: call(self._finished, job, ok, result), fn, *args
        )
        return job.d

    def _abandon(self, job: _Job) -> None:
        # The thread runs on: one more thread, so that the next task does not queue
        # behind it.
        self.abandoned += 1
        self._pool.adjustPoolsize(maxthreads=self.size + self.abandoned)

    def _finished(self, job: _Job, ok: bool, result: Any) -> None:
        self.busy -= 1
        if job.d.called:
            self.abandoned -= 1
            self.late_results += 1
            self._pool.adjustPoolsize(maxthreads=self.size + self.abandoned)
            self.log.info(
                "handler {fn} returned after its task was answered; its result is dropped",
                fn=getattr(job.fn, "__qualname__", repr(job.fn)),
            )
            return
        if ok and (isinstance(result, Deferred) or type(result) is CoroutineType):
            if type(result) is CoroutineType:
                result.close()
            message = (
                f"handler {getattr(job.fn, '__qualname__', job.fn)!r} returned a "
                f"{type(result).__name__} from a thread: mark it "
                "@spreadqueue.run_in('reactor') (or make it async def)"
            )
            ok, result = False, Failure(TypeError(message))
        if ok:
            job.d.callback(result)
        else:
            job.d.errback(result)

    def stats(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "busy": self.busy,
            "threads": len(self._pool.threads),
            "abandoned": self.abandoned,
            "late_results": self.late_results,
        }

    def stop(self) -> None:
        """Stop the threads; ones still running an abandoned handler end with it."""
        if not self._started:
            return
        self._started = False
        if self.busy:
            # joining would block the reactor until those handlers return
            threading.Thread(target=self._pool.stop, daemon=True).start()
        else:
            self._pool.stop()


# --------------------------------------------------------------------------- processes


class _Child(ProcessProtocol):
    """One child process: runs one task at a time."""

    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool
        self.job: _Job | None = None
        self.tasks = 0
        self.pid: int | None = None
        self.ended = False
        self.killed = False
        self.ready = False
        self._buffer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid  # type: ignore[attr-defined]
        self.transport.closeChildFD(0)  # type: ignore[attr-defined]
        self.transport.writeToChild(  # type: ignore[attr-defined]
            CHILD_IN, frame(("path", list(sys.path), os.getcwd(), list(self.pool.preload)))
        )

    def send(self, job: _Job) -> None:
        self.job = job
        job.child = self
        assert self.transport is not None
        self.transport.writeToChild(  # type: ignore[attr-defined]
            CHILD_IN, frame(("run", job.fn, job.args))
        )

    def kill(self) -> None:
        if not self.ended and self.transport is not None:
            self.killed = True
            try:
                self.transport.signalProcess("KILL")  # type: ignore[attr-defined]
            except Exception:  # already gone: processEnded follows
                pass

    def retire(self) -> None:
        """No more tasks: closing its input ends it."""
        if not self.ended and self.transport is not None:
            self.transport.closeChildFD(CHILD_IN)  # type: ignore[attr-defined]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != CHILD_OUT:
            return
        buffer = self._buffer + data
        while len(buffer) >= 4:
            (n,) = LENGTH.unpack_from(buffer)
            if len(buffer) < 4 + n:
                break
            answer = pickle.loads(buffer[4 : 4 + n])
            buffer = buffer[4 + n :]
            self.pool._answered(self, answer)
        self._buffer = buffer

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.pool._ended(self, reason)


def _how_it_ended(reason: Failure) -> str:
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by signal {sig} ({name})"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


class ProcessPool:
    """``size`` child processes for CPU-bound handlers (see the module's doc)."""

    kind = "processes"
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        size: int,
        max_tasks_per_child: int = 0,
        python: str | None = None,
        preload: tuple[str, ...] = (),
    ) -> None:
        self._reactor = reactor
        #: modules every child imports as it starts (the handlers'), so that the first
        #: task a child runs does not pay for the imports
        self.preload = preload
        self.size = size
        self.max_tasks_per_child = max_tasks_per_child
        self._python = python or sys.executable
        self._children: list[_Child] = []
        self._idle: deque[_Child] = deque()
        self._queue: deque[_Job] = deque()
        # None while running; once stopping, the Deferreds waiting for the end
        self._stopping: list[Deferred[None]] | None = None
        self._ready_waiters: list[Deferred[None]] = []
        self._kill_timer: Any = None
        self._started = False
        self._quick_deaths = 0
        self.stats_counts = {"started": 0, "recycled": 0, "died": 0, "killed": 0}

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        if self._stopping is not None or not self._started:
            return
        child = _Child(self)
        env = dict(os.environ)
        self._reactor.spawnProcess(
            child,
            self._python,
            [self._python, "-m", "spreadqueue._queue.child"],
            env=env,
            childFDs={0: "w", 1: 1, 2: 2, CHILD_IN: "w", CHILD_OUT: "r"},
        )
        self.stats_counts["started"] += 1
        self._children.append(child)
        self._idle.append(child)
        self._dispatch()

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Deferred[Any]:
        """Run ``fn(*args)`` in a child; cancelling the Deferred kills that child."""
        self.start()
        job = _Job(fn, args, self._cancel)
        self._queue.append(job)
        self._dispatch()
        return job.d

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            child = self._idle.popleft()
            if child.ended:
                continue
            job = self._queue.popleft()
            if job.d.called:
                self._idle.appendleft(child)
                continue
            child.send(job)

    def _cancel(self, job: _Job) -> None:
        child = job.child
        if child is None:
            self._queue.remove(job)  # not sent yet
        elif child.job is job:
            self.stats_counts["killed"] += 1
            child.job = None
            child.kill()

    def whenReady(self) -> Deferred[None]:
        """Fires once every child has started and imported the handlers' modules (or
        the pool is stopping): a worker registers only then."""
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        self._check_ready()
        return d

    def _check_ready(self) -> None:
        if not self._ready_waiters:
            return
        if self._stopping is None and not all(c.ready for c in self._children):
            return
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    def _answered(self, child: _Child, answer: tuple[Any, ...]) -> None:
        if answer[0] == "ready":
            child.ready = True
            self._check_ready()
            return
        job, child.job = child.job, None
        child.tasks += 1
        self._quick_deaths = 0
        # The child is filed (idle, or replaced) before the task's Deferred fires: what
        # runs on that result may submit the next task at once.
        limit = self.max_tasks_per_child
        if limit and child.tasks >= limit:
            self.stats_counts["recycled"] += 1
            self._forget(child)
            child.retire()
            self._spawn()
        else:
            self._idle.append(child)
        if job is not None and not job.d.called:
            if answer[0] == "ok":
                job.d.callback(answer[1])
            else:
                job.d.errback(Failure(HandlerError(*answer[1:4])))
        self._dispatch()

    def _forget(self, child: _Child) -> None:
        if child in self._children:
            self._children.remove(child)
        if child in self._idle:
            self._idle.remove(child)

    def _ended(self, child: _Child, reason: Failure) -> None:
        known = child in self._children
        self._forget(child)
        self._check_ready()
        job, child.job = child.job, None
        if job is not None and not job.d.called:
            self.stats_counts["died"] += 1
            how = _how_it_ended(reason)
            job.d.errback(Failure(HandlerProcessDied(f"the handler process {child.pid} {how}")))
        if self._stopping is not None:
            self._check_stopped()
            return
        if known and not child.killed:
            if child.tasks == 0:
                self._quick_deaths += 1
            self.log.warn(
                "handler process {pid} {how}; starting another",
                pid=child.pid,
                how=_how_it_ended(reason),
            )
        if known:
            # A child that cannot even start would be restarted in a tight loop.
            delay = min(5.0, 0.1 * 2 ** max(0, self._quick_deaths - 1))
            if self._quick_deaths:
                self._reactor.callLater(delay, self._spawn)
            else:
                self._spawn()

    def stats(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "busy": sum(1 for c in self._children if c.job is not None),
            "processes": len(self._children),
            "pids": [c.pid for c in self._children],
            "queued": len(self._queue),
            **self.stats_counts,
        }

    def stop(self, grace: float = 5.0) -> Deferred[None]:
        """End the children: each finishes its task, then reads the end of its input;
        what is left after ``grace`` seconds is killed."""
        d: Deferred[None] = Deferred()
        if self._stopping is None:
            self._stopping = []
            for job in list(self._queue):
                job.d.cancel()
            for child in list(self._children):
                child.retire()
            self._kill_timer = self._reactor.callLater(grace, self._kill_all)
        self._stopping.append(d)
        self._check_stopped()
        return d

    def _check_stopped(self) -> None:
        if self._stopping is None or self._children:
            return
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        waiting, self._stopping[:] = list(self._stopping), []
        for d in waiting:
            d.callback(None)

    def _kill_all(self) -> None:
        for child in list(self._children):
            child.kill()


def can_run(reactor: IReactorTime, pool: str) -> bool:
    """Whether ``reactor`` can host ``pool`` (a ``task.Clock`` has no threads)."""
    if pool == "threads":
        return IReactorFromThreads.providedBy(reactor)
    if pool == "processes":
        return IReactorProcess.providedBy(reactor)
    return True
