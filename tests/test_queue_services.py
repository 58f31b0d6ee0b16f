"""Sender, Worker and ManagerService together over spreadqueue.testing.FakeSpreadNetwork
(the embedded daemon's own core, with in-process sessions and a task.Clock)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from queue_net import G, Net, Q, echo, failure_of, fired, pending
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from spreadqueue._queue.errors import (
    NoManager,
    PayloadTooLarge,
    QueueNameError,
    RemoteError,
    SenderStopped,
    TaskTimeout,
    UnknownFunction,
    WorkerLost,
)
from spreadqueue._queue.manager import ManagerService
from spreadqueue._queue.messages import Kind, Result, Status, encode, mess_type
from spreadqueue._queue.sender import Reply, Sender
from spreadqueue._queue.serializer import JsonSerializer
from spreadqueue._queue.worker import Task, Worker
from spreadqueue._spread.interfaces import ISpreadSession
from spreadqueue._spread.session import SpreadSession
from spreadqueue._spread.wire import RegularMessage


def test_the_fake_session_provides_ispreadsession(net: Net) -> None:
    assert verifyObject(ISpreadSession, net.session())


# ---------------------------------------------------------------- Spread::Queue's synopsis


def test_seed_synopsis_submit_and_receive(net: Net) -> None:
    net.manager()
    worker = Worker(net.clock, net.session(), Q)

    @worker.handler("myfunc", with_task=True)
    def myfunc(task: Task, input: Any) -> None:
        worker.respond(task, {"response": "I heard you!", "got": input})

    worker.start()
    sender = net.sender()
    task_id = sender.submit("myfunc", {"name": "value"})
    d = sender.receive()
    net.pump()
    reply = fired(d)
    assert reply == Reply(task_id, {"response": "I heard you!", "got": {"name": "value"}})
    assert sender.pending == 0


def test_seed_synopsis_rpc(net: Net) -> None:
    net.manager()
    net.worker({"myfunc": lambda args: {"response": "I heard you!", **args}})
    sender = net.sender()
    d = sender.rpc("myfunc", {"name": "value"})
    net.pump()
    assert fired(d) == {"response": "I heard you!", "name": "value"}


def test_handlers_may_return_deferreds_or_coroutines(net: Net) -> None:
    clock = net.clock

    async def slow_double(n: int) -> int:
        await deferLater(clock, 1.0)
        return n * 2

    net.manager()
    net.worker(
        {"double": slow_double, "triple": lambda n: deferLater(clock, 0.5, lambda: n * 3)},
        concurrency=2,
    )
    sender = net.sender()
    d2, d3 = sender.rpc("double", 21), sender.rpc("triple", 5)
    net.advance(1.1)
    assert (fired(d2), fired(d3)) == (42, 15)


def test_several_responses_to_one_task(net: Net) -> None:
    net.manager()
    worker = Worker(net.clock, net.session(), Q)

    @worker.handler("progress", with_task=True)
    def progress(task: Task, n: int) -> None:
        for i in range(n):
            worker.respond(task, i)

    worker.start()
    sender = net.sender()
    sender.submit("progress", 3)
    net.pump()
    replies = [fired(sender.receive()) for _ in range(3)]
    assert [(r.value, r.final) for r in replies] == [(0, False), (1, False), (2, True)]
    # rpc waits for the final answer
    d = sender.rpc("progress", 2)
    net.pump()
    assert fired(d) == 1


def test_a_return_value_after_responses_is_the_final_answer(net: Net) -> None:
    net.manager()
    worker = Worker(net.clock, net.session(), Q)

    @worker.handler("f", with_task=True)
    def f(task: Task, _: Any) -> str:
        worker.respond(task, "first")
        return "last"

    worker.start()
    sender = net.sender()
    sender.submit("f")
    net.pump()
    assert [(r.value, r.final) for r in (fired(sender.receive()), fired(sender.receive()))] == [
        ("first", False),
        ("last", True),
    ]
    with pytest.raises(ValueError, match="not a task of this worker"):
        worker.respond("nope", 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- volume


def run_many(net: Net, sender: Sender, n: int) -> tuple[list[str], list[Any]]:
    ids = [sender.submit("square", i) for i in range(n)]
    got: list[Any] = []
    for _ in range(n):
        sender.receive().addBoth(got.append)
    return ids, got


def test_1000_tasks_over_4_workers_each_answered_exactly_once(net: Net) -> None:
    manager = net.manager()
    calls: Counter[str] = Counter()
    workers = []
    for i in range(4):

        def square(n: int, name: str = f"w{i}") -> int:
            calls[name] += 1
            return n * n

        workers.append(net.worker({"square": square}, concurrency=2))
    sender = net.sender()
    ids, got = run_many(net, sender, 1000)
    net.pump()
    assert len(got) == 1000
    assert all(isinstance(r, Reply) and r.final for r in got)
    assert Counter(r.task_id for r in got) == Counter(ids)  # each exactly once
    assert sorted(r.value for r in got) == sorted(i * i for i in range(1000))
    assert sum(calls.values()) == 1000 and len(calls) == 4 and min(calls.values()) >= 200
    # batching: Spread::Queue's flow took 4 messages per task (submit, assign, result,
    # ready); with credits and batching it is about one (one ASSIGN and one
    # RESULT+DONE per worker per round of 8 tasks) - and nobody fell behind
    assert net.messages_sent() < 1100
    assert net.network.high_water() < 100
    assert manager.stats["completed"] == 1000 and manager.state is not None
    assert manager.state.queued == 0 and manager.state.running == 0


def test_a_worker_session_dying_mid_run_loses_no_task(net: Net) -> None:
    clock = net.clock
    manager = net.manager()
    runs: Counter[int] = Counter()

    def slow_square(n: int) -> Deferred[int]:
        runs[n] += 1
        return deferLater(clock, 0.01, lambda: n * n)

    sessions = [net.session() for _ in range(4)]
    # (no prefetch: every task the dead worker held had started; see the prefetch test)
    workers = [
        net.worker({"square": slow_square}, session=s, concurrency=3, prefetch=0) for s in sessions
    ]
    sender = net.sender()
    ids, got = run_many(net, sender, 1000)
    net.advance(0.3)
    assert 0 < len(got) < 1000  # mid-run
    net.crash(sessions[1])
    net.pump()
    assert workers[1].busy == 0  # its tasks are abandoned: nobody could hear the answers
    net.advance(20)
    assert len(got) == 1000
    assert all(isinstance(r, Reply) for r in got), [r for r in got if not isinstance(r, Reply)]
    assert Counter(r.task_id for r in got) == Counter(ids)
    assert sorted(r.value for r in got) == sorted(i * i for i in range(1000))
    assert manager.stats["requeued"] >= 1 and manager.stats["workers_lost"] == 1
    # the tasks the dead worker held ran again elsewhere; nothing else ran twice
    assert sum(runs.values()) == 1000 + manager.stats["requeued"]


def test_the_submit_window_bounds_unacknowledged_tasks(net: Net) -> None:
    net.manager()
    sender = net.sender(window=50)
    for i in range(500):
        sender.submit("nothing", i)
    assert sender.unacknowledged == 50
    net.pump()
    assert sender.unacknowledged == 0 and sender.pending == 500
    # the manager never had more than a handful of our messages waiting
    assert net.network.high_water() < 20


def test_several_senders_workers_and_a_manager_share_one_session(net: Net) -> None:
    shared = net.session()
    manager = net.manager(shared)
    net.worker({"echo": echo}, session=shared, concurrency=2)
    net.worker({"echo": echo}, session=shared)
    senders = [net.sender(shared) for _ in range(3)]
    calls = [(s, s.rpc("echo", [i, n])) for i, s in enumerate(senders) for n in range(20)]
    net.pump()
    for i, s in enumerate(senders):
        assert [fired(d) for t, d in calls if t is s] == [[i, n] for n in range(20)]
    assert manager.stats["completed"] == 60
    assert shared.holders(G.workers) == 3  # two workers and the manager


# --------------------------------------------------------------------------- errors


def test_a_handler_exception_becomes_remote_error(net: Net) -> None:
    def broken(args: Any) -> None:
        raise KeyError("missing thing")

    net.manager()
    net.worker({"broken": broken})
    sender = net.sender()
    d = sender.rpc("broken", 1)
    net.pump()
    err = failure_of(d, RemoteError)
    assert err.type_name == "KeyError"
    assert "missing thing" in err.remote_message
    assert "broken" in err.remote_traceback  # the worker's traceback text
    tid = sender.submit("broken")
    r = sender.receive()
    net.pump()
    assert failure_of(r, RemoteError).task_id == tid


def test_a_call_no_worker_serves_waits_and_its_timeout_names_the_function(net: Net) -> None:
    m = net.manager()
    net.worker({"echo": echo})
    sender = net.sender()
    d = sender.rpc("nope", 1, timeout=2)
    net.advance(1)
    assert pending(d)  # it waits for a worker that serves "nope" (none comes)
    status = m.status()
    assert status["waiting"] == [
        {"func": "nope", "queued": 1, "oldest_for": pytest.approx(1.0, abs=0.1), "workers": 0}
    ]
    net.advance(1.1)
    err = failure_of(d, TaskTimeout)
    assert "no worker serving function 'nope' was registered" in str(err)
    assert m.status()["waiting"] == []  # dropped at its timeout, never run


def test_a_worker_that_declares_nothing_serves_everything_and_answers_unknown_function(
    net: Net,
) -> None:
    net.manager()
    net.worker({"echo": echo}, declares=False)  # as a worker from before routing
    sender = net.sender()
    d = sender.rpc("nope", 1)
    net.pump()
    err = failure_of(d, UnknownFunction)
    assert err.func == "nope" and "nope" in str(err)


def test_unserializable_values(net: Net) -> None:
    net.manager()
    net.worker({"bad": lambda _: object()})
    sender = net.sender()
    with pytest.raises(TypeError):
        sender.submit("echo", object())
    d = sender.rpc("bad")
    net.pump()
    assert "not serializable" in failure_of(d, RemoteError).remote_message


def test_arguments_the_worker_cannot_decode(net: Net) -> None:
    net.manager()
    net.worker({"echo": echo})  # msgpack
    sender = net.sender(serializer=JsonSerializer())
    d = sender.rpc("echo", "just text")  # JSON bytes are not msgpack
    net.pump()
    assert failure_of(d, RemoteError).type_name == "spreadqueue.BadArguments"


def test_json_on_both_sides(net: Net) -> None:
    net.manager()
    net.worker({"echo": echo}, serializer=JsonSerializer())
    sender = net.sender(serializer=JsonSerializer())
    d = sender.rpc("echo", {"a": [1, "b"]})
    net.pump()
    assert fired(d) == {"a": [1, "b"]}


# --------------------------------------------------------------------------- routing


def test_workers_get_only_the_functions_they_have(net: Net) -> None:
    m = net.manager()
    resized: list[Any] = []
    net.worker({"resize": lambda a: resized.append(a) or "resized"}, concurrency=2)
    net.worker({"mail": lambda a: f"mailed {a}"})
    sender = net.sender()
    calls = [sender.rpc("resize", i) for i in range(4)] + [sender.rpc("mail", "x")]
    net.pump()
    assert [fired(d) for d in calls] == ["resized"] * 4 + ["mailed x"]
    assert resized == [0, 1, 2, 3]
    assert m.state is not None
    served = sorted(sorted(w.functions or ()) for w in m.state._workers.values())
    assert served == [["mail"], ["resize"]]
    report = m.status()
    assert sorted(w["functions"] for w in report["workers"]) == [["mail"], ["resize"]]


def test_a_handler_added_to_a_running_worker_is_served_from_then_on(net: Net) -> None:
    m = net.manager()
    worker = net.worker({"echo": echo})
    sender = net.sender()
    d = sender.rpc("upper", "abc", timeout=10)
    net.advance(1)
    assert pending(d)
    assert [w["func"] for w in m.status()["waiting"]] == ["upper"]
    worker.add_handler("upper", str.upper)
    net.pump()
    assert fired(d) == "ABC"


def test_priorities_of_calls_reach_the_manager_and_order_the_queue(net: Net) -> None:
    net.manager()
    order: list[Any] = []
    sender = net.sender()
    calls = [sender.rpc("f", n, priority=p) for n, p in [(1, 0), (2, 9), (3, 5), (4, 9)]]
    tid = sender.submit("f", 5, priority=7)
    net.pump()
    net.worker({"f": lambda n: order.append(n) or n})
    net.pump()
    assert [fired(d) for d in calls] == [1, 2, 3, 4]
    assert order == [2, 4, 5, 3, 1]
    assert fired(sender.receive()).task_id == tid
    for bad in (10, -1, True, 1.5):
        with pytest.raises(ValueError, match="priority"):
            sender.submit("f", priority=bad)
        failure_of(sender.rpc("f", priority=bad), ValueError)


# --------------------------------------------------------------------------- timeouts


def test_rpc_timeout_cancels_the_task_everywhere(net: Net) -> None:
    net.manager()
    cancelled: list[str] = []

    def forever(_: Any) -> Deferred[None]:
        return Deferred(lambda d: cancelled.append("handler"))

    worker = net.worker({"forever": forever})
    sender = net.sender()
    d = sender.rpc("forever", timeout=2.0)
    net.advance(1.9)
    assert pending(d) and worker.busy == 1
    net.advance(0.2)
    err = failure_of(d, TaskTimeout)
    assert err.task_id and "2s" in str(err)
    # the manager was told (CANCEL), forwarded it, and the handler was cancelled
    assert cancelled == ["handler"] and worker.busy == 0
    assert sender.pending == 0
    # the worker's CANCELLED answer arrived after the timeout: dropped and counted
    assert sender.stats["late_replies"] == 1


def test_a_late_reply_after_timeout_is_dropped(net: Net) -> None:
    net.manager()
    sender = net.sender()
    tid = sender.submit("nobody-works", timeout=1.0)
    r = sender.receive()
    net.advance(1.1)
    assert failure_of(r, TaskTimeout).task_id == tid
    impostor = net.session()
    [data] = encode(Kind.RESULT, [Result(tid, "w", True, Status.OK, msgpack.packb(1))])
    impostor.multicast(sender.session.private_group, data, mess_type=mess_type(Kind.RESULT))
    later = sender.receive()
    net.pump()
    assert pending(later)
    assert sender.stats["late_replies"] == 1


def test_rpc_cancellation(net: Net) -> None:
    manager = net.manager()
    cancelled: list[bool] = []
    net.worker({"forever": lambda _: Deferred(lambda d: cancelled.append(True))}, prefetch=0)
    sender = net.sender()
    d = sender.rpc("forever")
    queued = sender.rpc("forever")  # waits in the manager's queue (one worker, no prefetch)
    net.pump()
    d.cancel()
    queued.cancel()
    failure_of(d, CancelledError)
    failure_of(queued, CancelledError)
    net.pump()
    assert cancelled == [True]
    assert manager.state is not None and manager.state.queued == 0
    assert manager.state.running == 0 and manager.stats["cancelled"] == 1


def test_no_manager_fails_within_the_ack_timeout(net: Net) -> None:
    net.worker({"echo": echo})
    sender = net.sender(ack_timeout=3.0)
    d = sender.rpc("echo", 1, timeout=None)
    tid = sender.submit("echo", 2)
    r = sender.receive()
    net.advance(2.9)
    assert pending(d) and pending(r)
    net.advance(0.2)
    err = failure_of(d, NoManager)
    assert "q" in str(err) and "3s" in str(err)
    assert failure_of(r, NoManager).task_id == tid
    assert sender.pending == 0


# --------------------------------------------------------------------------- managers


def test_manager_restart_workers_reregister_and_tasks_finish_once(net: Net) -> None:
    clock = net.clock
    runs: Counter[int] = Counter()

    def slow(n: int) -> Deferred[int]:
        runs[n] += 1
        return deferLater(clock, 1.0, lambda: n)

    first_session = net.session()
    net.manager(first_session)
    worker = net.worker({"slow": slow}, concurrency=2)
    sender = net.sender()
    calls = [sender.rpc("slow", n, timeout=None) for n in range(5)]
    net.advance(0.5)
    assert worker.busy == 2
    net.crash(first_session)  # the manager dies: 2 tasks running, 3 queued there
    net.advance(1.0)
    # the running ones finish anyway (workers answer senders directly)
    assert [fired(d) for d in calls[:2]] == [0, 1]
    second = net.manager()  # a new manager, before the senders give up (ack_timeout)
    net.advance(5)
    assert [fired(d) for d in calls[2:]] == [2, 3, 4]
    assert runs == Counter(range(5))  # nothing ran twice
    assert second.active and second.state is not None
    assert second.state.worker_count == 1  # the worker re-registered on HELLO
    assert sender.stats["resubmitted"] >= 3


def test_a_task_running_across_a_manager_restart_is_adopted_not_rerun(net: Net) -> None:
    clock = net.clock
    runs: Counter[int] = Counter()

    def slow(n: int) -> Deferred[int]:
        runs[n] += 1
        return deferLater(clock, 3.0, lambda: n)

    first_session = net.session()
    net.manager(first_session)
    net.worker({"slow": slow})
    sender = net.sender()
    d = sender.rpc("slow", 7, timeout=None)
    net.advance(0.5)
    net.crash(first_session)
    net.pump()
    second = net.manager()  # the sender resubmits; the worker says it holds the task
    net.advance(4)
    assert fired(d) == 7 and runs == Counter({7: 1})
    assert second.state is not None and second.state.running == 0


def test_a_second_manager_stands_by_then_takes_over(net: Net) -> None:
    first = net.manager()
    fired(first.whenActive())
    second = net.manager()
    second_active = second.whenActive()
    assert first.active and not second.active and pending(second_active)
    net.worker({"echo": echo}, concurrency=4)
    sender = net.sender()
    calls = [sender.rpc("echo", i) for i in range(10)]
    net.pump()
    assert [fired(d) for d in calls] == list(range(10))
    assert first.stats["completed"] == 10 and second.stats["assigned"] == 0
    stopped = first.stopService()
    net.pump()
    fired(stopped)
    assert second.active and first.state is None
    fired(second_active)
    d = sender.rpc("echo", "after")
    net.advance(0.1)
    assert fired(d) == "after"
    # The standby followed the 10 tasks through to the end while the first ran them
    # (hot standby); it decided only the last one.
    assert second.stats["assigned"] == 1 and second.stats["completed"] == 11


def test_queued_tasks_move_to_the_standby_when_the_active_manager_stops(net: Net) -> None:
    first = net.manager()
    net.manager()
    sender = net.sender()
    calls = [sender.rpc("echo", i, timeout=None) for i in range(3)]  # no worker yet
    net.pump()
    assert first.state is not None and first.state.queued == 3
    first.stopService()
    net.pump()
    net.worker({"echo": echo})
    net.advance(0.5)
    assert [fired(d) for d in calls] == [0, 1, 2]


def test_a_manager_with_a_session_factory_reconnects(net: Net) -> None:
    opened: list[SpreadSession] = []

    def factory() -> Deferred[ISpreadSession]:
        s = net.session()
        opened.append(s)
        return succeed(s)

    manager = ManagerService(net.clock, factory, Q, reconnect_delay=1.0, reconnect_jitter=0)
    manager.startService()
    net.pump()
    assert manager.active
    net.crash(opened[0])
    net.pump()
    assert not manager.active
    net.advance(1.1)
    assert manager.active and len(opened) == 2
    net.worker({"echo": echo})
    d = net.sender().rpc("echo", 5)
    net.pump()
    assert fired(d) == 5
    stopped = manager.stopService()
    net.pump()
    fired(stopped)
    assert not opened[1].connected


def test_a_crashed_sender_s_queued_tasks_are_dropped(net: Net) -> None:
    manager = net.manager()
    sender_session = net.session()
    sender = net.sender(sender_session)
    for i in range(5):
        sender.submit("echo", i)
    net.pump()
    assert manager.state is not None and manager.state.queued == 5
    net.crash(sender_session)
    net.pump()
    assert manager.state.queued == 0 and manager.stats["dropped_sender_gone"] == 5


# --------------------------------------------------------------------------- workers


def test_graceful_worker_stop_finishes_running_tasks(net: Net) -> None:
    clock = net.clock
    manager = net.manager()
    worker = net.worker({"slow": lambda n: deferLater(clock, 1.0, lambda: n)}, concurrency=2)
    sender = net.sender()
    calls = [sender.rpc("slow", n) for n in range(3)]
    net.pump()
    stopping, again = worker.stop(), worker.stop()  # one stop, however often asked
    net.pump()
    assert pending(stopping)
    net.advance(1.1)
    fired(stopping)
    fired(again)
    assert [fired(d) for d in calls[:2]] == [0, 1]
    assert pending(calls[2])  # not given to the stopping worker
    assert manager.state is not None and manager.state.worker_count == 0
    assert worker.session.holders(G.workers) == 0
    net.worker({"slow": lambda n: n})
    net.pump()
    assert fired(calls[2]) == 2


def test_worker_stop_timeout_hands_tasks_to_another_worker(net: Net) -> None:
    net.manager()
    runs: list[str] = []

    def stuck(_: Any) -> Deferred[None]:
        runs.append("stuck")
        return Deferred()

    worker = net.worker({"job": stuck})
    sender = net.sender()
    d = sender.rpc("job", timeout=None)
    net.pump()
    stopping = worker.stop(timeout=2.0)
    net.advance(2.1)
    fired(stopping)
    net.crash(worker.session)  # after the stop: must not trip over the finished drain
    net.pump()
    assert pending(d)  # the abandoned task sent no answer
    net.worker({"job": lambda _: "done elsewhere"})
    net.pump()
    assert fired(d) == "done elsewhere" and runs == ["stuck"]


def watch(session: ISpreadSession) -> list[tuple[tuple[str, ...], Kind]]:
    """Record (destination groups, kind) of every queue message ``session`` receives."""
    seen: list[tuple[tuple[str, ...], Kind]] = []

    def listener(frame: Any) -> None:
        if isinstance(frame, RegularMessage) and 0x5100 < frame.mess_type <= 0x510A:
            seen.append((frame.groups, Kind(frame.mess_type - 0x5100)))

    session.add_listener(listener)
    return seen


def test_results_and_done_travel_as_one_message(net: Net) -> None:
    manager = net.manager()
    net.worker({"echo": echo})
    sender = net.sender()
    assert manager.session is not None
    at_manager, at_sender = watch(manager.session), watch(sender.session)
    d = sender.rpc("echo", "small")
    net.pump()
    assert fired(d) == "small"
    both = ((sender.session.private_group, G.manager), Kind.RESULT)
    assert both in at_sender and both in at_manager
    assert not [k for _, k in at_manager if k is Kind.DONE]
    assert manager.stats["completed"] == 1


def test_large_results_go_alone_with_a_separate_done(net: Net) -> None:
    manager = net.manager()
    net.worker({"big": lambda n: b"x" * n})
    sender = net.sender()
    assert manager.session is not None
    at_manager, at_sender = watch(manager.session), watch(sender.session)
    d = sender.rpc("big", 100_000)
    net.pump()
    assert fired(d) == b"x" * 100_000
    assert ((sender.session.private_group,), Kind.RESULT) in at_sender
    assert [k for _, k in at_manager if k is not Kind.SUBMIT] == [Kind.DONE]
    assert manager.stats["completed"] == 1


# --------------------------------------------------------------------------- bad input

MALFORMED = [
    (mess_type(Kind.SUBMIT), b"\xc1garbage"),
    (mess_type(Kind.SUBMIT), msgpack.packb([1, [["id", 42, b"", None]]])),
    (mess_type(Kind.REGISTER), msgpack.packb([1, [["w", "many", []]]])),
    (mess_type(Kind.DONE), b"\x92\x01\xdd\xff\xff\xff\xff"),
    (mess_type(Kind.ASSIGN), msgpack.packb([7, []])),
]


def test_malformed_messages_to_the_manager_are_dropped_and_counted(net: Net) -> None:
    manager = net.manager()
    net.worker({"echo": echo})
    attacker = net.session()
    for mt, data in MALFORMED:
        attacker.multicast(G.manager, data, mess_type=mt)
    attacker.multicast(G.manager, b"app traffic", mess_type=7)
    attacker.multicast(G.manager, msgpack.packb([1, []]), mess_type=0x5100 + 200)  # later kind
    net.pump()
    assert manager.stats["malformed"] == len(MALFORMED)
    assert manager.stats["foreign"] == 1 and manager.stats["unknown_kinds"] == 1
    d = net.sender().rpc("echo", "still working")
    net.pump()
    assert fired(d) == "still working"


def test_malformed_messages_to_a_worker_and_sender_are_dropped_and_counted(net: Net) -> None:
    net.manager()
    worker = net.worker({"echo": echo})
    sender = net.sender()
    attacker = net.session()
    bad_assign = msgpack.packb([1, [[worker.worker_id, "t", "echo", "str-not-bin", "#x#y", 1]]])
    attacker.multicast(worker.session.private_group, bad_assign, mess_type=mess_type(Kind.ASSIGN))
    attacker.multicast(worker.session.private_group, b"\xc1", mess_type=mess_type(Kind.CANCEL))
    attacker.multicast(sender.session.private_group, b"\x92\x01\x91", mess_type=mess_type(Kind.ACK))
    attacker.multicast(
        sender.session.private_group,
        msgpack.packb([1, [["t", "w", True, 0, "not bin"]]]),
        mess_type=mess_type(Kind.RESULT),
    )
    net.pump()
    assert worker.stats["malformed"] == 2 and worker.busy == 0
    assert sender.stats["malformed"] == 2
    d = sender.rpc("echo", "still working")
    net.pump()
    assert fired(d) == "still working"


# --------------------------------------------------------------------------- senders


def test_stopping_a_sender_fails_its_pending_tasks_and_cancels_them(net: Net) -> None:
    manager = net.manager()
    sender = net.sender()
    d = sender.rpc("echo", 1)
    r = sender.receive()
    net.pump()
    assert manager.state is not None and manager.state.queued == 1
    stopped = sender.stop()
    net.pump()
    fired(stopped)
    assert failure_of(d, SenderStopped).task_id
    failure_of(r, SenderStopped)
    assert manager.state.queued == 0
    # no timer of the sender is left behind in the reactor
    assert not sender._deadlines.armed and sender._ack_timer is None
    with pytest.raises(SenderStopped, match="this sender is stopped: the sender was stopped"):
        sender.submit("echo")


def test_a_lost_sender_session_fails_pending_tasks(net: Net) -> None:
    net.manager()
    sender = net.sender()
    d = sender.rpc("echo", 1)
    net.pump()
    sender.session.disconnect()
    net.pump()
    assert "lost" in str(failure_of(d, SenderStopped))
    # later calls say why too, as a TaskError that callers already handle
    why = "this sender is stopped: the Spread session was lost"
    with pytest.raises(SenderStopped) as raised:
        sender.submit("echo", 2)
    assert str(raised.value) == why  # no "(task )": no task got an id
    assert str(failure_of(sender.rpc("echo", 2), SenderStopped)) == why
    assert str(failure_of(sender.enqueue("echo", 2), SenderStopped)) == why


def test_worker_lost_too_often_reaches_the_sender(net: Net) -> None:
    net.manager(max_attempts=2)
    sender = net.sender()
    d = sender.rpc("job", timeout=None)
    for _ in range(2):
        s = net.session()
        net.worker({"job": lambda _: Deferred()}, session=s)
        net.pump()
        net.crash(s)
        net.pump()
    assert "2 attempts" in str(failure_of(d, WorkerLost))


def test_cancel_of_a_submitted_task(net: Net) -> None:
    manager = net.manager()
    sender = net.sender()
    tid = sender.submit("echo", 1)
    net.pump()
    assert sender.cancel(tid) and not sender.cancel(tid)
    net.pump()
    assert manager.state is not None and manager.state.queued == 0
    net.worker({"echo": echo})
    r = sender.receive()
    net.pump()
    assert pending(r)


def test_argument_checks_fail_early(net: Net) -> None:
    sender = net.sender()
    with pytest.raises(ValueError, match="function name"):
        sender.submit("")
    with pytest.raises(ValueError, match="timeout"):
        sender.submit("f", timeout=0)
    with pytest.raises(PayloadTooLarge):
        sender.submit("f", b"x" * 200_000)
    failure_of(sender.rpc("f", object()), TypeError)
    assert sender.pending == 0
    with pytest.raises(ValueError, match="concurrency"):
        Worker(net.clock, net.session(), Q, concurrency=0)
    with pytest.raises(TypeError, match="ISpreadSession"):
        ManagerService(net.clock, "not a session", Q)  # type: ignore[arg-type]
    with pytest.raises(QueueNameError):
        Sender(net.clock, net.session(), "bad name")


def test_many_timeouts_fire_in_order_with_one_timer(net: Net) -> None:
    net.manager()
    sender = net.sender()
    calls = [(1 + i % 3, sender.rpc("nobody", i, timeout=1 + i % 3)) for i in range(900)]
    net.advance(0.01)  # stay clear of float rounding at the whole seconds
    for second in (1, 2, 3):
        net.advance(1.0)
        done = [t for t, d in calls if not pending(d)]
        assert sorted(set(done)) == list(range(1, second + 1))
        assert len(done) == 300 * second
    for _, d in calls:
        failure_of(d, TaskTimeout)
    # one DelayedCall for all of them, not one per task
    assert len(net.clock.getDelayedCalls()) < 10


def test_finished_tasks_do_not_pile_up_in_the_timeout_heap(net: Net) -> None:
    net.manager()
    net.worker({"echo": echo}, concurrency=50)
    sender = net.sender()
    calls = [sender.rpc("echo", i, timeout=30) for i in range(3000)]
    net.pump()
    assert [fired(d) for d in calls] == list(range(3000))
    assert len(sender._deadlines) <= 1024


def test_the_ack_timer_does_not_come_due_per_call(net: Net) -> None:
    """Calls answered long before their acknowledgement deadline leave the deadlines
    as they are answered: past the first deadline, the timer does not come due once
    per call to find each one answered (it used to, with sequential calls)."""
    net.manager()
    net.worker({"echo": echo})
    sender = net.sender(ack_timeout=1.0)
    checks = []
    check_acks = sender._check_acks

    def counted() -> None:
        checks.append(net.clock.seconds())
        check_acks()

    sender._check_acks = counted  # type: ignore[method-assign]
    for i in range(300):  # sequential calls, 3 seconds of them
        d = sender.rpc("echo", i)
        net.advance(0.01)
        assert fired(d) == i
    assert len(checks) <= 6, checks
    assert len(sender._acks) <= 1


# --------------------------------------------------------------------------- found end to end
# Regressions for bugs the process-level tests (tests/test_e2e_queue.py) found.


def test_a_manager_started_after_a_worker_and_a_sender_of_its_session_becomes_active(
    net: Net,
) -> None:
    """A worker and a sender of the session joined Q-wrk and Q-snd first, so the manager
    never gets its own join notices there; it must still see itself a member of both
    (it used to stay inactive forever)."""
    shared = net.session()
    net.worker({"echo": echo}, session=shared)
    sender = net.sender(shared)
    manager = net.manager(shared)
    net.advance(0.1)
    assert manager.active
    d = sender.rpc("echo", 7)
    net.advance(0.1)
    assert fired(d) == 7


def test_a_second_sender_of_a_session_resubmits_when_the_manager_crashes(net: Net) -> None:
    """A sender whose session was in Q-snd already (another sender joined it first) must
    still see the manager leave and resubmit what it had acknowledged (those tasks used
    to wait forever)."""
    manager_session = net.session()
    net.manager(manager_session)
    shared = net.session()
    net.sender(shared)
    second = net.sender(shared)
    calls = [second.rpc("echo", i, timeout=None) for i in range(3)]  # no worker: queued
    net.pump()
    assert second.unacknowledged == 0 and second.pending == 3
    net.crash(manager_session)
    net.pump()
    assert second.stats["resubmitted"] == 3
    net.manager()
    net.worker({"echo": echo})
    net.advance(0.5)
    assert [fired(d) for d in calls] == [0, 1, 2]


def test_the_group_view_of_a_shared_session(net: Net) -> None:
    """view(): the latest notice of a group the session holds, None once released."""
    session, other = net.session(), net.session()
    assert session.view(G.senders) is None
    session.acquire(G.senders)
    other.acquire(G.senders)
    net.pump()
    view = session.view(G.senders)
    assert view is not None and set(view.members) == {session.private_group, other.private_group}
    session.release(G.senders)
    assert session.view(G.senders) is None


def test_stopping_a_manager_that_opened_its_session_waits_until_it_is_closed(
    net: Net,
) -> None:
    """stopService fires only once the session the manager opened is closed: a stopping
    process (twistd) drops what is still unwritten when stopService returns, and that
    used to lose the RESUBMITs of the queued tasks (and the session's KILL)."""
    session = net.session()
    sent: list[int] = []
    multicast = session.multicast

    def recording_multicast(groups: Any, data: bytes, *args: Any, **kwargs: Any) -> None:
        sent.append(kwargs.get("mess_type", 0))
        multicast(groups, data, *args, **kwargs)

    session.multicast = recording_multicast  # type: ignore[method-assign]
    manager = ManagerService(net.clock, lambda: succeed(session), Q)
    manager.startService()
    net.pump()
    net.sender().submit("echo", 1)  # no worker: it stays queued
    net.pump()
    stopped = manager.stopService()
    closed_when_stopped: list[bool] = []
    stopped.addCallback(lambda _: closed_when_stopped.append(session.disconnect_reason is not None))
    net.pump()
    assert sent.count(mess_type(Kind.FAILED)) == 1
    fired(stopped)
    assert closed_when_stopped == [True]  # the session had ended when stopService fired


# --------------------------------------------------------------------------- prefetch


class Gate:
    """Handlers whose tasks finish when the test says so (``block``), or at once
    (``quick``); ``started`` lists the tasks in the order their handler ran."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.blocked: list[Deferred[Any]] = []

    def quick(self, n: Any) -> Any:
        self.started.append(n)
        return n

    def block(self, n: Any) -> Deferred[Any]:
        self.started.append(n)
        d: Deferred[Any] = Deferred()
        self.blocked.append(d)
        return d.addCallback(lambda _: n)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"quick": self.quick, "block": self.block}


def prefetching_worker(net: Net, sender: Sender, gate: Gate, **options: Any) -> Worker:
    """A worker that has run a few short tasks, so it prefetches now."""
    worker = net.worker(gate.handlers(), **options)
    calls = [sender.rpc("quick", i) for i in range(4)]
    net.pump()
    assert [fired(d) for d in calls] == [0, 1, 2, 3]
    net.pump()
    assert worker.prefetching
    gate.started.clear()
    return worker


def test_a_worker_prefetches_once_its_tasks_prove_short(net: Net) -> None:
    manager = net.manager()
    sender = net.sender()
    gate = Gate()
    worker = net.worker(gate.handlers(), concurrency=2, prefetch=8)
    assert manager.state is not None
    assert manager.state.workers()[0][1] == 2  # no prefetch before it knows its tasks
    assigns = watch(worker.session)
    calls = [sender.rpc("quick", i) for i in range(4)]
    net.pump()
    assert [fired(d) for d in calls] == [0, 1, 2, 3]
    net.pump()
    assert worker.prefetching and manager.state.workers()[0][1] == 10
    assigns.clear()
    calls = [sender.rpc("quick", i) for i in range(100)]
    net.pump()
    assert [fired(d) for d in calls] == list(range(100))
    assert gate.started[4:] == list(range(100))  # FIFO
    # 10 tasks per ASSIGN message (and one RESULT+DONE message back for each)
    assert len([k for _, k in assigns if k is Kind.ASSIGN]) == 10
    assert manager.state.running == 0 and manager.stats["completed"] == 104


def test_a_slow_first_task_does_not_keep_a_fresh_worker_from_bursts(net: Net) -> None:
    """The first tasks of a new process run cold; judging by their average put short-
    task workers into single-task prefetch, where they took a fifth of their share."""
    clock = net.clock
    manager = net.manager()
    sender = net.sender()
    gate = Gate()
    worker = net.worker(gate.handlers())
    first = sender.rpc("block", 0)
    net.pump()
    clock.advance(0.05)  # the cold first call: 50 ms
    gate.blocked[0].callback(None)
    net.pump()
    assert fired(first) == 0
    calls = [sender.rpc("quick", i) for i in range(1, 4)]
    net.pump()
    assert [fired(d) for d in calls] == [1, 2, 3]
    net.pump()
    assert worker.prefetching
    assert manager.state is not None
    ((_, capacity, _),) = manager.state.workers()
    w = next(iter(manager.state._workers.values()))
    assert capacity == w.slots == w.burst == 1 + worker.prefetch  # bursts, not 1 slot


def test_tiny_tasks_slowed_now_and_then_keep_a_worker_in_bursts(net: Net) -> None:
    """Wall-clock run times include preemption: every fourth no-op taking 8 ms (under
    the 20 ms stop line) must not drop a worker out of bursts while its peers stay."""
    clock = net.clock
    manager = net.manager()
    sender = net.sender()
    gate = Gate()
    worker = prefetching_worker(net, sender, gate)
    assert manager.state is not None
    for round_ in range(12):
        slow = sender.rpc("block", round_)
        net.pump()
        clock.advance(0.008)
        gate.blocked[-1].callback(None)
        net.pump()
        assert fired(slow) == round_
        calls = [sender.rpc("quick", i) for i in range(3)]
        net.pump()
        assert [fired(d) for d in calls] == [0, 1, 2]
        net.pump()
        w = next(iter(manager.state._workers.values()))
        assert w.slots == w.burst == 1 + worker.prefetch, f"round {round_}"


def test_a_worker_whose_tasks_turn_long_stops_prefetching_and_hands_tasks_back(
    net: Net,
) -> None:
    clock = net.clock
    manager = net.manager()
    sender = net.sender()
    gate = Gate()
    worker = prefetching_worker(net, sender, gate)
    calls = [sender.rpc("block", i) for i in range(5)]
    net.pump()
    assert (worker.busy, worker.prefetched) == (1, 4)
    clock.advance(1.0)  # a long task
    gate.blocked[0].callback(None)
    net.pump()
    assert not worker.prefetching
    assert manager.state is not None and manager.state.workers()[0][1] == 1
    assert manager.stats["released"] == 3  # the next one started when the slot freed
    assert not pending(calls[0]) and (worker.busy, worker.prefetched) == (1, 0)
    other = net.worker(gate.handlers())
    net.pump()
    assert other.busy == 1  # a released task went to the idle worker at once
    for i in range(1, 5):
        gate.blocked[i].callback(None)
        net.pump()
    assert [fired(d) for d in calls] == [0, 1, 2, 3, 4]
    assert sorted(gate.started) == [0, 1, 2, 3, 4]  # each ran once


def test_a_stopping_worker_hands_its_prefetched_tasks_back_at_once(net: Net) -> None:
    manager = net.manager()
    sender = net.sender()
    gate = Gate()
    worker = prefetching_worker(net, sender, gate)
    calls = [sender.rpc("block", i) for i in range(5)]
    net.pump()
    assert (worker.busy, worker.prefetched) == (1, 4)
    stopping = worker.stop()
    net.pump()
    assert worker.prefetched == 0 and pending(stopping)
    assert manager.stats["released"] == 4
    assert manager.state is not None and manager.state.queued == 4
    other = net.worker(gate.handlers(), prefetch=0)
    net.pump()
    assert gate.started == [0, 1]  # taken over while the first is still running
    gate.blocked[0].callback(None)
    net.pump()
    fired(stopping)
    for i in range(1, 5):
        gate.blocked[i].callback(None)
        net.pump()
    assert [fired(d) for d in calls] == [0, 1, 2, 3, 4]
    assert sorted(gate.started) == [0, 1, 2, 3, 4]
    assert other.stats["completed"] == 4


def test_cancelling_a_prefetched_task_drops_it_before_it_starts(net: Net) -> None:
    manager = net.manager()
    sender = net.sender()
    gate = Gate()
    worker = prefetching_worker(net, sender, gate)
    calls = [sender.rpc("block", i) for i in range(3)]
    net.pump()
    assert (worker.busy, worker.prefetched) == (1, 2)
    calls[1].cancel()
    failure_of(calls[1], CancelledError)
    net.pump()
    assert worker.prefetched == 1 and worker.stats["cancelled"] == 1
    assert manager.state is not None and manager.state.running == 2
    for d in gate.blocked[:1]:
        d.callback(None)
    net.pump()
    gate.blocked[1].callback(None)
    net.pump()
    assert (fired(calls[0]), fired(calls[2])) == (0, 2)
    assert gate.started == [0, 2]  # the cancelled one never ran
    assert manager.state.running == 0 and sender.stats["late_replies"] == 1


def test_a_worker_dying_with_prefetched_tasks_loses_none(net: Net) -> None:
    manager = net.manager()
    sender = net.sender()
    gate = Gate()
    session = net.session()
    prefetching_worker(net, sender, gate, session=session)
    calls = [sender.rpc("block", i) for i in range(6)]
    net.pump()
    net.crash(session)
    net.pump()
    assert manager.stats["requeued"] == 6
    net.worker(gate.handlers(), prefetch=0)
    for _ in range(6):
        net.pump()
        gate.blocked[-1].callback(None)
    net.pump()
    assert [fired(d) for d in calls] == list(range(6))
    # only the task that had started ran twice
    assert Counter(gate.started) == Counter({0: 2, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1})


def test_acks_held_back_are_left_out_when_results_come_first(net: Net) -> None:
    manager = net.manager()
    net.worker({"echo": echo})
    sender = net.sender()
    seen = watch(sender.session)
    for i in range(10):
        d = sender.rpc("echo", i)
        net.pump()
        assert fired(d) == i
    net.advance(0.2)
    # one ACK (the first, so the sender knows its manager), then results only
    assert [k for _, k in seen].count(Kind.ACK) == 1
    assert manager.stats["acks_held"] == 9 and manager.stats["acks_saved"] == 9
    assert sender.unacknowledged == 0


def test_a_held_ack_arrives_for_a_long_task_well_within_the_ack_timeout(net: Net) -> None:
    clock = net.clock
    manager = net.manager()
    net.worker({"slow": lambda n: deferLater(clock, 5.0, lambda: n)})
    sender = net.sender(ack_timeout=1.0)
    first = sender.rpc("slow", 0)
    net.advance(0.01)
    assert sender.unacknowledged == 0  # the first ACK is never held
    net.advance(5.1)
    d = sender.rpc("slow", 1)
    net.pump()
    assert sender.unacknowledged == 1
    net.advance(0.1)  # held for at most min(ack_delay, ack_timeout / 4)
    assert sender.unacknowledged == 0 and pending(d)
    net.advance(5.0)
    assert (fired(first), fired(d)) == (0, 1)
    assert manager.stats["acks_held"] == 1 and manager.stats["acks_saved"] == 0


def test_a_task_whose_ack_was_held_survives_losing_its_worker_and_the_manager(
    net: Net,
) -> None:
    """A held ACK, then the worker and the manager go before it is sent: the sender
    still resubmits the task to the standby (the session had an ACK from the manager
    before any was held, which every sender of the session sees; one that saw none
    resubmits when any member goes)."""
    first_session = net.session()
    net.manager(first_session)
    standby = net.manager()
    gate = Gate()
    worker_session = net.session()
    net.worker(gate.handlers(), session=worker_session)
    shared = net.session()
    older = net.sender(shared)
    assert fired(_rpc_pumped(net, older, "quick", 1)) == 1  # the session's first ACK
    newer = net.sender(shared)  # saw that ACK? no: created after it
    held = newer.rpc("block", 2)
    net.pump()
    assert newer.unacknowledged == 1 and gate.started == [1, 2]
    net.crash(worker_session)
    net.crash(first_session)
    net.pump()
    assert standby.active and newer.stats["resubmitted"] == 1
    net.worker(gate.handlers())
    net.pump()
    gate.blocked[-1].callback(None)
    net.pump()
    assert fired(held) == 2


def _rpc_pumped(net: Net, sender: Sender, func: str, arg: Any) -> Deferred[Any]:
    d = sender.rpc(func, arg)
    net.pump()
    return d


# --------------------------------------------------------------------------- what the logs say


def test_a_timeout_says_when_the_queue_had_a_manager_but_no_worker(net: Net) -> None:
    net.manager()
    sender = net.sender()
    d = sender.rpc("echo", 1, timeout=2)
    net.advance(2.1)
    error = failure_of(d, TaskTimeout)
    assert (
        "no result within 2s: queue 'q' has a manager, but no worker serving function 'echo' "
        "was registered when it queued the task"
    ) in str(error)
    net.worker({"slow": lambda _: Deferred()})
    d = sender.rpc("slow", 1, timeout=2)
    net.advance(2.1)
    assert "no worker" not in str(failure_of(d, TaskTimeout))  # a worker had it
    d = sender.rpc("echo", 1, timeout=2)  # a worker is there, but it does not serve echo
    net.advance(2.1)
    assert "no worker serving function 'echo'" in str(failure_of(d, TaskTimeout))


def test_the_manager_logs_lifecycle_failures_and_a_periodic_summary(net: Net) -> None:
    with capturedLogs() as events:
        net.manager(summary_interval=10)
        worker_session = net.session()
        net.worker({"boom": lambda _: 1 / 0, "echo": echo}, session=worker_session)
        sender = net.sender()
        calls = [sender.rpc("echo", i) for i in range(5)]
        net.advance(11)
        net.crash(worker_session)
        net.pump()
        sender.submit("echo", 9)
        net.advance(1)
    assert [fired(d) for d in calls] == list(range(5))
    text = [formatEvent(e) for e in events]
    assert any(
        re.fullmatch(
            r"queue manager q is active on #\S+, from what it holds \(0 task\(s\) held\)", t
        )
        for t in text
    ), text
    assert any(
        re.fullmatch(r"queue q: worker w\w+@#\S+ registered \(capacity 1; serves boom, echo\)", t)
        for t in text
    ), text
    assert any(
        re.fullmatch(r"queue q: 0 queued, 0 in flight, 1 workers, 0\.\d tasks/s done .*", t)
        for t in text
    ), text
    lost = [e for e in events if e.get("manager_event") == "worker_lost"]
    assert len(lost) == 1 and lost[0]["log_level"].name == "warn"
    assert any(t == "queue q: 1 task(s) queued and no worker registered" for t in text), text


def test_a_worker_logs_a_failing_handler_with_task_function_and_worker(net: Net) -> None:
    net.manager()
    worker = net.worker({"boom": lambda _: 1 / 0}, declares=False)  # it gets "nope" too
    sender = net.sender()
    with capturedLogs() as events:
        d = sender.rpc("nope", 1)
        e = sender.rpc("boom", 1)
        net.pump()
    failure_of(d, UnknownFunction)
    failure_of(e, RemoteError)
    warned = [e for e in events if e["log_level"].name == "warn"]
    fields = [(w.get("func"), w.get("worker"), bool(w.get("task_id"))) for w in warned]
    assert fields == [("nope", worker.worker_id, True), ("boom", worker.worker_id, True)]
    assert "ZeroDivisionError" in formatEvent(warned[1])


def test_a_registration_never_claims_a_task_that_ended_before_it_was_sent(net: Net) -> None:
    """A REGISTER asked for (HELLO, a change of prefetch) while a task runs, and the task
    ends before the flush: the REGISTER sent must not list it, or the manager, which
    reads the RESULT first, would keep a credit for it and never fill that slot again."""
    manager = net.manager()
    gate: Deferred[str] = Deferred()
    worker = net.worker({"gate": lambda _: gate, "echo": echo}, concurrency=1, prefetch=0)
    sender = net.sender()
    first = sender.rpc("gate", 1)
    net.pump()
    assert worker.busy == 1
    worker._register()  # what a HELLO does...
    gate.callback("ok")  # ...and the task ends before the next flush
    net.pump()
    assert fired(first) == "ok"
    assert [w["held"] for w in manager.status()["workers"]] == [0]
    second = sender.rpc("echo", 2)
    net.pump()
    assert fired(second) == 2


def test_workers_with_auto_manager_need_no_manager_and_survive_the_active_one(net: Net) -> None:
    """auto_manager: each worker runs a manager on its session; exactly one is active,
    and when its worker's session dies the other takes over and the queue goes on."""
    first = net.worker({"echo": echo}, auto_manager=True)
    second = net.worker({"echo": echo}, auto_manager=True)
    assert first.manager is not None and second.manager is not None
    net.advance(3.0)  # the standby's register grace and the HELLO round
    assert [first.manager.active, second.manager.active] == [True, False]
    sender = net.sender()
    d = sender.rpc("echo", 1)
    net.advance(0.5)
    assert fired(d) == 1
    net.crash(first.session)
    net.advance(3.0)
    assert second.manager.active
    d = sender.rpc("echo", 2, timeout=10)
    net.advance(3.0)
    assert fired(d) == 2
    stopping = second.stop()
    net.advance(1.0)
    assert not pending(stopping) and not second.manager.running
