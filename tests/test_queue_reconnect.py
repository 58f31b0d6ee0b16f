"""Sender, Worker and ManagerService on sessions that survive a daemon restart.

The daemon of tests/restartable.py (the embedded daemon's core, in-process sessions,
a task.Clock) is killed (every connection drops at once, nobody hears of anybody
leaving) and started again empty; the components' sessions reconnect by themselves.
A caller sees latency, not a failure, when the daemon is back within its timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from restartable import RestartableDaemon
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from spreadqueue._queue.errors import NoManager, SenderStopped, TaskTimeout
from spreadqueue._queue.manager import ManagerService
from spreadqueue._queue.messages import MESS_TYPE_BASE, Kind, decode
from spreadqueue._queue.names import queue_groups
from spreadqueue._queue.sender import Sender
from spreadqueue._queue.worker import Worker
from spreadqueue._spread import errors
from spreadqueue._spread.keeper import LOCAL_BACKOFF, Backoff
from spreadqueue._spread.session import SpreadSession

Q = "q"
G = queue_groups(Q)


class Outcome:
    """What an rpc's Deferred gave, once it gave it (it must give one only)."""

    def __init__(self, d: Deferred[Any]) -> None:
        self.results: list[Any] = []
        d.addBoth(self.results.append)

    @property
    def done(self) -> bool:
        return bool(self.results)

    @property
    def value(self) -> Any:
        assert len(self.results) == 1, self.results
        (result,) = self.results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def error(self) -> BaseException:
        assert len(self.results) == 1 and isinstance(self.results[0], Failure), self.results
        return self.results[0].value  # type: ignore[no-any-return]


def record(session: SpreadSession, kind: Kind) -> list[list[Any]]:
    """The entries of every ``kind`` message ``session`` sends from now on (a list per
    message)."""
    sent: list[list[Any]] = []
    multicast = session.multicast

    def recording(groups: Any, data: Any, *args: Any, **kwargs: Any) -> None:
        multicast(groups, data, *args, **kwargs)
        mess_type = kwargs.get("mess_type", args[1] if len(args) > 1 else 0)
        if mess_type == MESS_TYPE_BASE + kind:
            sent.append(list(decode(mess_type, bytes(data)).entries))

    session.multicast = recording  # type: ignore[method-assign]
    return sent


class Queue:
    """A manager, workers and a sender of queue ``q``, each on its own reconnecting
    session of one restartable daemon. Sessions are named so that they come back in
    the order manager, sender, workers (the retries of the same back-off come in the
    order the sessions were lost, by name)."""

    def __init__(self) -> None:
        self.daemon = RestartableDaemon()
        self.clock = self.daemon.clock
        self.manager_service: ManagerService | None = None

    def manager(self, **options: Any) -> ManagerService:
        m = ManagerService(self.clock, self.daemon.session("m1"), Q, **options)
        m.startService()
        self.daemon.flush()
        self.manager_service = m
        return m

    def worker(self, name: str, handlers: dict[str, Callable[..., Any]], **options: Any) -> Worker:
        w = Worker(self.clock, self.daemon.session(name), Q, handlers, **options)
        w.start()
        self.daemon.flush()
        return w

    def sender(self, name: str = "s1", backoff: Backoff = LOCAL_BACKOFF, **options: Any) -> Sender:
        s = Sender(self.clock, self.daemon.session(name, backoff), Q, **options)
        s.start()
        self.daemon.flush()
        return s

    def advance(self, seconds: float) -> None:
        self.daemon.advance(seconds)

    def slow(self, seconds: float) -> Callable[[Any], Deferred[Any]]:
        """A handler that answers its argument after ``seconds`` (on the clock)."""
        return lambda n: deferLater(self.clock, seconds, lambda: n)


@pytest.fixture
def queue() -> Iterator[Queue]:
    """A fresh restartable queue; at the end, no listener raised and no Deferred
    failure was left unhandled."""
    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield Queue()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == [], [formatEvent(e) for e in failures]


def test_rpcs_in_flight_survive_a_daemon_restart(queue: Queue) -> None:
    """kill -9 of the daemon with tasks queued, running and answered during the
    outage: once it is back every call gets its answer, once, in its own time."""
    manager = queue.manager()
    worker = queue.worker("w1", {"slow": queue.slow(2.0)}, concurrency=2)
    sender = queue.sender(ack_timeout=5.0)
    calls = [Outcome(sender.rpc("slow", i, timeout=30)) for i in range(6)]
    queue.advance(0.5)
    assert worker.busy == 2 and manager.state is not None and manager.state.queued == 4

    queue.daemon.kill()
    assert not any(c.done for c in calls)
    queue.advance(6.0)  # longer than the ack timeout; the two running tasks finish
    assert worker.busy == 0 and worker.stats["completed"] == 2
    assert not any(c.done for c in calls)
    queue.daemon.restart()
    queue.advance(20.0)
    assert [c.value for c in calls] == list(range(6))
    assert sender.pending == 0 and sender.stats["late_replies"] == 0
    assert worker.stats["completed"] == 6  # each ran once


def test_pending_tasks_are_submitted_again_with_the_same_ids(queue: Queue) -> None:
    queue.manager()
    sender = queue.sender()
    submits = record(sender.session, Kind.SUBMIT)
    ids = [sender.submit("missing", i, timeout=60) for i in range(3)]  # no worker: queued
    queue.advance(0.1)
    assert [e.task_id for batch in submits for e in batch] == ids
    submits.clear()
    queue.daemon.kill()
    queue.daemon.restart()
    queue.advance(1.0)
    again = [e for batch in submits for e in batch]
    # (sent again once more when the manager joined Q-snd after us: duplicates are
    # acknowledged, not queued twice)
    assert list(dict.fromkeys(e.task_id for e in again)) == ids
    assert [e.timeout_ms for e in again[:3]] == [59_700] * 3  # what each still waits
    assert queue_state(queue).queued == 3


def test_a_task_whose_timeout_passes_during_the_outage_fails_with_task_timeout(
    queue: Queue,
) -> None:
    queue.manager()
    queue.worker("w1", {"slow": queue.slow(30.0)})
    sender = queue.sender()
    short = Outcome(sender.rpc("slow", 1, timeout=3))
    long = Outcome(sender.rpc("slow", 2, timeout=60))
    queue.advance(0.5)
    queue.daemon.kill()
    queue.advance(3.0)
    error = short.error()
    assert isinstance(error, TaskTimeout) and "no result within 3s" in str(error)
    assert not long.done
    queue.daemon.restart()
    queue.advance(40.0)
    assert long.value == 2


def test_the_ack_timeout_does_not_fire_while_the_daemon_is_away(queue: Queue) -> None:
    """No manager at all: NoManager comes ack_timeout after the resubmission, not
    during the outage."""
    sender = queue.sender(ack_timeout=1.0)
    call = Outcome(sender.rpc("f", 1, timeout=60))
    queue.advance(0.5)
    queue.daemon.kill()
    queue.advance(10.0)
    assert not call.done
    queue.daemon.restart()
    queue.advance(1.0)  # back after 0.6 s (retries at 0.2 s, then 1 s apart)
    assert not call.done
    queue.advance(1.0)
    assert isinstance(call.error(), NoManager)


def test_a_result_made_during_the_outage_reaches_the_sender_and_register_lists_held_tasks(
    queue: Queue,
) -> None:
    queue.manager()
    handlers = {"quick": queue.slow(1.0), "long": queue.slow(10.0)}
    worker = queue.worker("w1", handlers, concurrency=2)
    registers = record(worker.session, Kind.REGISTER)
    sender = queue.sender()
    quick = Outcome(sender.rpc("quick", "q", timeout=60))
    long = Outcome(sender.rpc("long", "l", timeout=60))
    queue.advance(0.1)
    assert worker.busy == 2
    (long_task,) = [t for t in worker._running.values() if t.func == "long"]
    registers.clear()

    queue.daemon.kill()
    queue.advance(2.0)  # the quick task ends while the daemon is away: its answer waits
    assert worker.busy == 1 and worker.stats["completed"] == 1 and not quick.done
    queue.daemon.restart()
    queue.advance(1.5)
    assert quick.value == "q"
    held = [list(e.held) for batch in registers for e in batch]
    assert held and all(h == [long_task.task_id] for h in held)
    queue.advance(10.0)
    assert long.value == "l"
    assert worker.stats["completed"] == 2  # each ran once: the long one was adopted


def test_the_worker_keeps_running_while_the_daemon_is_away(queue: Queue) -> None:
    queue.manager()
    ran: list[int] = []

    def work(n: int) -> Deferred[int]:
        ran.append(n)
        return deferLater(queue.clock, 1.0, lambda: n)

    worker = queue.worker("w1", {"work": work}, concurrency=1, prefetch=4)
    sender = queue.sender()
    calls = [Outcome(sender.rpc("work", i, timeout=60)) for i in range(3)]
    queue.advance(0.1)
    queue.daemon.kill()
    queue.advance(5.0)
    assert worker.busy == 0 and worker.stats["completed"] == len(ran)
    queue.daemon.restart()
    queue.advance(10.0)
    assert [c.value for c in calls] == [0, 1, 2]


def test_a_manager_on_a_reconnecting_session_starts_afresh_when_back(queue: Queue) -> None:
    manager = queue.manager()
    queue.worker("w1", {"echo": lambda n: n})
    first = manager.state
    assert manager.active
    queue.daemon.kill()
    assert manager.state is None and not manager.active
    queue.daemon.restart()
    queue.advance(3.0)
    assert manager.active and manager.state is not first and manager.state is not None
    assert manager.state.worker_count == 1
    assert manager.session is not None and manager.session.holders(G.manager) == 1
    sender = queue.sender()
    assert Outcome_value(sender.rpc("echo", 7), queue) == 7


def Outcome_value(d: Deferred[Any], queue: Queue, seconds: float = 1.0) -> Any:
    call = Outcome(d)
    queue.advance(seconds)
    return call.value


def queue_state(queue: Queue) -> Any:
    assert queue.manager_service is not None and queue.manager_service.state is not None
    return queue.manager_service.state


def test_a_permanent_refusal_when_reconnecting_fails_the_pending_calls(queue: Queue) -> None:
    sender = queue.sender()
    call = Outcome(sender.rpc("f", 1, timeout=60))
    queue.advance(0.1)
    queue.daemon.kill()
    queue.daemon.restart()
    queue.daemon.refusals = [errors.IllegalName()]
    queue.advance(1.0)
    error = call.error()
    assert isinstance(error, SenderStopped) and "could not reconnect" in str(error)
    assert not sender.session.connected and not sender.session.reconnects


def test_a_sender_stopped_while_away_fails_its_calls_and_lets_the_session_go(
    queue: Queue,
) -> None:
    sender = queue.sender()
    call = Outcome(sender.rpc("f", 1, timeout=60))
    queue.advance(0.1)
    queue.daemon.kill()
    stopped = Outcome(sender.stop())
    assert stopped.done and isinstance(call.error(), SenderStopped)
    queue.daemon.restart()
    queue.advance(1.0)
    assert sender.session.connected and sender.session.holders(G.senders) == 0
    assert sender.session.groups == frozenset()


def test_an_answer_sent_before_its_sender_is_back_is_lost_and_the_task_runs_again(
    queue: Queue,
) -> None:
    """What at-least-once means here: a worker back before the sender answers into
    the void (the sender's private group does not exist yet), the sender submits the
    task again, and it runs a second time; the caller still gets one answer."""
    queue.manager()
    worker = queue.worker("w1", {"quick": queue.slow(1.0)})
    sender = queue.sender("s1", Backoff(1.0, 1.0, 0.0))  # back 0.8 s after the others
    call = Outcome(sender.rpc("quick", "q", timeout=60))
    queue.advance(0.1)
    queue.daemon.kill()
    queue.advance(2.0)
    assert worker.stats["completed"] == 1 and not call.done
    queue.daemon.restart()
    queue.advance(5.0)
    assert call.value == "q" and sender.stats["late_replies"] == 0
    assert worker.stats["completed"] == 2


def test_after_a_restart_the_manager_waits_for_the_worker_that_still_runs_a_task(
    queue: Queue,
) -> None:
    """The worker running a call comes back after another worker (sessions return in
    name order: w1, then w2). The manager, starting again without the queue's state,
    waits for the workers it knew, so that the call's resubmission is adopted where it
    runs rather than started again on the worker that came back first."""
    runs: list[Any] = []

    def slow(n: Any) -> Deferred[Any]:
        runs.append(n)
        return deferLater(queue.clock, 3.0, lambda: n)

    queue.manager()
    # w2 tries again later than the others (1 s, not 0.2): it is back last.
    w2 = Worker(queue.clock, queue.daemon.session("w2", Backoff(1.0, 1.0, 0.0)), Q, {"slow": slow})
    w2.start()
    sender = queue.sender()
    call = Outcome(sender.rpc("slow", 1, timeout=60))
    queue.advance(0.5)
    assert runs == [1]
    queue.worker("w1", {"slow": slow})
    queue.daemon.kill()
    queue.daemon.restart()
    queue.advance(10.0)
    assert call.value == 1
    assert runs == [1]  # adopted at w2, not run again at w1
