"""Hot standby managers and detached tasks, over FakeSpreadNetwork on a task.Clock.

Every manager of a queue follows the same totally ordered input, so once the network
is quiet every synced manager holds the same records (docs/protocol.md, section 10).
The tests compare the managers' snapshots in their canonical form, and count what the
handlers really ran.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from queue_net import Net, Runs, echo, failure_of, fired, pending
from twisted.internet.defer import Deferred

from spreadqueue._queue.errors import NoManager, QueueFull, WorkerLost
from spreadqueue._queue.manager import ManagerService
from spreadqueue._queue.records import canonical, restore, snapshot
from spreadqueue._queue.state import QueueManager


def state_of(m: ManagerService) -> dict[str, Any]:
    state = m.state
    assert state is not None
    return canonical(state.snapshot(0.0))


def same_state(*managers: ManagerService) -> None:
    """Every manager holds the same records (and says it is synced)."""
    first = state_of(managers[0])
    for m in managers:
        assert m.state is not None and m.state.synced
        assert state_of(m) == first


class Held:
    """A handler that records every run and answers only when told (:meth:`release`)."""

    def __init__(self) -> None:
        self.count: Counter[Any] = Counter()
        self.waiting: list[tuple[Any, Deferred[Any]]] = []

    def __call__(self, args: Any) -> Deferred[Any]:
        self.count[args] += 1
        d: Deferred[Any] = Deferred()
        self.waiting.append((args, d))
        return d

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for args, d in waiting:
            d.callback(args)


# --------------------------------------------------------------------------- joining


def test_a_joining_standby_takes_the_queues_state_and_follows_it(net: Net) -> None:
    first = net.manager()
    sender = net.sender()
    calls = [sender.rpc("echo", i, timeout=None) for i in range(5)]  # no worker yet
    net.pump()
    second = net.manager()
    assert second.state is not None and second.state.synced and not second.active
    assert second.state.queued == 5
    same_state(first, second)
    net.worker({"echo": echo}, concurrency=2)
    net.advance(0.5)
    assert [fired(d) for d in calls] == [0, 1, 2, 3, 4]
    more = [sender.rpc("echo", i) for i in range(20)]
    net.advance(0.5)
    assert [fired(d) for d in more] == list(range(20))
    same_state(first, second)
    # the standby decided nothing: it only followed
    assert second.stats["assigned"] == 0 and second.stats["completed"] == 25
    assert first.stats["syncs_sent"] == 1 and second.stats["syncs_loaded"] == 1


def test_three_managers_agree_after_work_that_ends_every_way(net: Net) -> None:
    managers = [net.manager() for _ in range(3)]
    runs = Runs(fail={"bad", "d-bad"})
    net.worker({"f": runs}, concurrency=3)
    net.worker({"f": runs}, concurrency=1, prefetch=0)
    sender = net.sender()
    ok = [sender.rpc("f", i) for i in range(30)]
    others = [sender.rpc("f", "bad"), sender.rpc("nope", 1), sender.rpc("f", "x", timeout=0.01)]
    cancelled = sender.rpc("f", "y")
    cancelled.cancel()
    jobs = [sender.enqueue("f", f"d{i}") for i in range(5)] + [sender.enqueue("f", "d-bad")]
    for d in [*others, cancelled]:
        d.addErrback(lambda _: None)
    net.advance(1.0)
    assert [fired(d) for d in ok] == list(range(30))
    assert len({fired(d) for d in jobs}) == 6
    assert [runs.count[f"d{i}"] for i in range(5)] == [1] * 5
    same_state(*managers)
    state = managers[2].state
    assert state is not None and [d.func for d in state.dead_letters] == ["f"]
    assert managers[0].active and not any(m.active for m in managers[1:])


# --------------------------------------------------------------------------- takeover


def test_a_hot_standby_takes_over_at_once_and_runs_nothing_twice(net: Net) -> None:
    first_session = net.session()
    first = net.manager(first_session)
    second = net.manager()
    runs = Held()
    net.worker({"f": runs}, concurrency=2, prefetch=0)
    sender = net.sender()
    calls = [sender.rpc("f", i, timeout=60) for i in range(10)]
    net.pump()
    same_state(first, second)
    assert second.state is not None and second.state.running == 2 and second.state.queued == 8
    net.crash(first_session)  # kill -9 of the active manager
    net.pump()
    assert second.active
    for _ in range(10):
        runs.release()
        net.advance(0.1)
    assert [fired(d) for d in calls] == list(range(10))
    assert runs.count == Counter(range(10))  # every task ran exactly once
    # no HELLO, no grace, no resubmission needed: the standby knew everything
    assert second.stats["resubmit_requests"] == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.integers(min_value=0, max_value=60), tasks=st.integers(min_value=1, max_value=12))
def test_killing_the_active_manager_at_any_point_loses_no_task(steps: int, tasks: int) -> None:
    """The active manager dies after ``steps`` rounds of deliveries, wherever that falls
    (a SUBMIT read but not acknowledged, an ASSIGN sent but not come back, ...):
    every call is answered once and every detached task runs."""
    net = Net()
    first_session = net.session()
    net.manager(first_session)
    second = net.manager()
    runs = Held()
    net.worker({"f": runs}, concurrency=2)
    sender = net.sender()
    calls = [sender.rpc("f", i, timeout=60) for i in range(tasks)]
    enqueued = [sender.enqueue("f", f"d{i}") for i in range(tasks)]
    for step in range(steps):
        net.clock.advance(0)
        if step % 7 == 3:
            runs.release()
    net.crash(first_session)
    for _ in range(4 * tasks):
        runs.release()
        net.advance(0.1)
    assert second.active
    assert [fired(d) for d in calls] == list(range(tasks))
    assert [isinstance(fired(d), str) for d in enqueued] == [True] * tasks
    for i in range(tasks):
        assert runs.count[i] >= 1 and runs.count[f"d{i}"] >= 1
    # at least once on the loss of a worker; here no worker was lost: exactly once
    assert max(runs.count.values()) == 1, runs.count


def test_managers_agree_with_functions_and_priorities_in_play(net: Net) -> None:
    """Workers that serve different functions, calls and detached tasks of several
    priorities, a function nobody serves: every manager holds the same records (the
    functions each worker serves, the tasks' priorities), and a standby that takes
    over routes as the first did."""
    first_session = net.session()
    managers = [net.manager(first_session), net.manager(), net.manager()]
    f_runs, g_runs = Held(), Held()
    net.worker({"f": f_runs}, concurrency=2)
    net.worker({"g": g_runs})
    sender = net.sender()
    calls = [sender.rpc(func, i, priority=i % 10, timeout=60) for i in range(12) for func in "fg"]
    jobs = [sender.enqueue("g", f"d{i}", priority=9 - i) for i in range(3)]
    orphan = sender.rpc("nobody", 1, timeout=60, priority=4)
    net.pump()
    same_state(*managers)
    state = managers[1].state
    assert state is not None
    assert sorted(sorted(w.functions or ()) for w in state._workers.values()) == [["f"], ["g"]]
    assert {t.func: t.priority for t in state._tasks.values() if t.func == "nobody"} == {
        "nobody": 4
    }
    net.crash(first_session)  # the standby takes over with the same routing
    net.pump()
    assert managers[1].active
    for _ in range(20):
        f_runs.release()
        g_runs.release()
        net.advance(0.1)
    assert [fired(d) for d in calls] == [i for i in range(12) for _ in "fg"]
    assert len({fired(d) for d in jobs}) == 3
    assert set(f_runs.count) == set(range(12))  # f's worker ran f's tasks only
    assert set(g_runs.count) == set(range(12)) | {"d0", "d1", "d2"}
    assert max([*f_runs.count.values(), *g_runs.count.values()]) == 1
    assert pending(orphan)
    same_state(*managers[1:])
    assert [w["func"] for w in managers[1].status()["waiting"]] == ["nobody"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.integers(min_value=0, max_value=60), tasks=st.integers(min_value=1, max_value=8))
def test_killing_the_active_manager_loses_no_task_with_routing_and_priorities(
    steps: int, tasks: int
) -> None:
    """As the test above, with two functions served by different workers, one that
    serves both, and priorities: every task runs once, at a worker that serves it."""
    net = Net()
    first_session = net.session()
    net.manager(first_session)
    second = net.manager()
    runs = {"f": Held(), "g": Held(), "any": Held()}
    net.worker({"f": runs["f"]}, concurrency=2)
    net.worker({"g": runs["g"]})
    net.worker({"f": runs["any"], "g": runs["any"]})
    sender = net.sender()
    calls = [sender.rpc("fg"[i % 2], i, timeout=60, priority=i % 10) for i in range(tasks)]
    enqueued = [sender.enqueue("fg"[i % 2], f"d{i}", priority=9 - i % 10) for i in range(tasks)]
    for step in range(steps):
        net.clock.advance(0)
        if step % 7 == 3:
            for held in runs.values():
                held.release()
    net.crash(first_session)
    for _ in range(4 * tasks):
        for held in runs.values():
            held.release()
        net.advance(0.1)
    assert second.active
    assert [fired(d) for d in calls] == list(range(tasks))
    assert [isinstance(fired(d), str) for d in enqueued] == [True] * tasks
    ran: Counter[Any] = Counter()
    for held in runs.values():
        ran.update(held.count)
    assert ran == Counter([*range(tasks), *(f"d{i}" for i in range(tasks))])

    def func_of(arg: Any) -> str:
        return "fg"[(int(arg[1:]) if isinstance(arg, str) else arg) % 2]

    # each specialised worker ran only the tasks of its function
    assert {func_of(a) for a in runs["f"].count} <= {"f"}
    assert {func_of(a) for a in runs["g"].count} <= {"g"}


def test_pause_and_drain_carry_over_to_the_standby(net: Net) -> None:
    first_session = net.session()
    first = net.manager(first_session)
    second = net.manager()
    assert first.state is not None
    first.state.control(net.clock.seconds(), "r1", first.session.private_group, "pause", "")
    first._flush()
    net.pump()
    assert second.state is not None and second.state.paused
    net.crash(first_session)
    net.pump()
    assert second.active and second.state.paused


# --------------------------------------------------------------------------- detached


def test_a_detached_task_runs_after_its_sender_is_gone(net: Net) -> None:
    net.manager()
    sender_session = net.session()
    sender = net.sender(sender_session)
    held = [sender.enqueue("f", i) for i in range(3)]
    net.pump()
    ids = [fired(d) for d in held]
    assert len(set(ids)) == 3
    net.crash(sender_session)  # the web request that queued them has gone
    net.pump()
    runs = Runs()
    net.worker({"f": runs})
    net.advance(0.5)
    assert runs.count == Counter({0: 1, 1: 1, 2: 1})


def test_a_call_of_a_departed_sender_is_dropped_but_its_detached_task_is_not(net: Net) -> None:
    m = net.manager()
    session = net.session()
    sender = net.sender(session)
    sender.rpc("f", "call", timeout=None).addErrback(lambda _: None)
    sender.enqueue("f", "job")
    net.pump()
    net.crash(session)
    net.pump()
    assert m.state is not None and m.state.queued == 1 and m.state.detached == 1


def test_a_detached_task_answers_the_group_it_names(net: Net) -> None:
    net.manager()
    net.worker({"f": lambda n: n * 2})
    listener = net.session()
    got: list[Any] = []
    listener.add_listener(got.append, "results")
    fired_later(net, listener.join("results"))
    sender = net.sender()
    task_id = fired_later(net, sender.enqueue("f", 21, reply_to="results"))
    net.advance(0.2)
    results = [f for f in got if getattr(f, "mess_type", None) == 0x5100 + 7]
    assert len(results) == 1
    from spreadqueue._queue.messages import decode

    [entry] = decode(results[0].mess_type, results[0].data).entries
    assert entry.task_id == task_id and entry.final
    import msgpack

    assert msgpack.unpackb(entry.payload) == 42


def fired_later(net: Net, d: Deferred[Any]) -> Any:
    net.pump()
    return fired(d)


def test_failed_detached_tasks_are_dead_letters_that_an_operator_requeues(net: Net) -> None:
    m = net.manager()
    runs = Runs(fail={"bad", "worse"})
    # declaring nothing, it gets "missing" too (a worker that declares its functions
    # would not: that task would wait for a worker that serves it)
    net.worker({"f": runs}, declares=False)
    sender = net.sender()
    for arg in ("ok", "bad", "worse"):
        sender.enqueue("f", arg)
    sender.enqueue("missing", 1)
    net.advance(0.5)
    state = m.state
    assert state is not None
    dead = {d.func: d for d in state.dead_letters}
    assert sorted(d.reason for d in state.dead_letters) == ["failed", "failed", "unknown_function"]
    assert "ValueError: no bad" in next(d.error for d in state.dead_letters)
    assert dead["missing"].reason == "unknown_function"
    status = m.status()
    assert status["dead_letters"]["count"] == 3
    # an operator fixes the cause and requeues one; purges the rest
    runs.fail.discard("bad")
    bad_id = next(d.task_id for d in state.dead_letters if d.func == "f")
    now = net.clock.seconds()
    me = m.session.private_group if m.session else ""
    state.control(now, "r1", me, "dead-requeue", bad_id)
    state.control(now, "r2", me, "dead-purge", "all")
    m._flush()
    net.advance(0.5)
    assert runs.count["bad"] == 2 and len(state.dead_letters) == 0


def test_a_detached_task_whose_workers_keep_dying_is_a_dead_letter(net: Net) -> None:
    m = net.manager(max_attempts=2)
    sender = net.sender()
    d = sender.enqueue("f", "poison")
    net.pump()
    fired(d)
    for _ in range(2):
        session = net.session()
        net.worker({"f": lambda _: Deferred()}, session=session)  # never answers
        net.pump()
        net.crash(session)
        net.pump()
    assert m.state is not None
    [letter] = list(m.state.dead_letters)
    assert letter.reason == "worker_lost" and letter.attempts == 2


def test_a_detached_task_that_outlives_its_ttl_is_a_dead_letter(net: Net) -> None:
    m = net.manager()
    sender = net.sender()
    fired_later(net, sender.enqueue("f", 1, ttl=1.0))
    net.advance(2.0)  # no worker came in time
    assert m.state is not None
    [letter] = list(m.state.dead_letters)
    assert letter.reason == "expired"
    runs = Runs()
    net.worker({"f": runs})
    net.advance(0.5)
    assert runs.count == Counter()


def test_a_delayed_task_does_not_start_early(net: Net) -> None:
    net.manager()
    runs = Runs()
    net.worker({"f": runs})
    sender = net.sender()
    fired_later(net, sender.enqueue("f", "later", delay=5.0))
    fired_later(net, sender.enqueue("f", "now"))
    net.advance(4.0)
    assert runs.count == Counter({"now": 1})
    net.advance(1.5)
    assert runs.count == Counter({"now": 1, "later": 1})


def test_enqueue_refuses_what_it_cannot_send() -> None:
    n = Net()
    sender = n.sender()
    for kwargs in (
        {"ttl": -1},
        {"priority": 10},
        {"delay": 1, "run_at": 5},
        {"reply_to": "has space"},
    ):
        failure_of(sender.enqueue("f", 1, **kwargs), ValueError)


def test_enqueue_with_no_manager_fails_with_no_manager(net: Net) -> None:
    sender = net.sender(ack_timeout=1.0)
    d = sender.enqueue("f", 1)
    net.advance(1.5)
    failure_of(d, NoManager)


def test_a_full_queue_refuses_a_detached_task(net: Net) -> None:
    net.manager(max_queued=1)
    sender = net.sender()
    first, second = sender.enqueue("f", 1), sender.enqueue("f", 2)
    net.pump()
    fired(first)
    failure_of(second, QueueFull)


# --------------------------------------------------------------------------- quorum


def test_without_a_quorum_detached_tasks_wait_and_calls_run(net: Net) -> None:
    first = net.manager(quorum=2)
    runs = Runs()
    net.worker({"f": runs})
    sender = net.sender()
    job = sender.enqueue("f", "job")
    call = sender.rpc("f", "call")
    net.advance(0.5)
    fired(job)  # held by the managers there are
    assert fired(call) == "call"
    assert runs.count == Counter({"call": 1})
    assert first.status()["quorum"] == {
        "managers": 1,
        "needed": 2,
        "dispatching_detached": False,
    }
    net.manager(quorum=2)  # the second manager makes the quorum
    net.advance(0.5)
    assert runs.count == Counter({"call": 1, "job": 1})


# --------------------------------------------------------------------------- snapshots


def test_a_snapshot_restores_what_it_holds() -> None:
    n = Net()
    m = n.manager()
    n.worker({"f": lambda _: Deferred()}, concurrency=2)
    sender = n.sender()
    for i in range(4):
        sender.rpc("f", i, timeout=30).addErrback(lambda _: None)
        sender.enqueue("f", f"d{i}", ttl=60, priority=3)
    n.pump()
    state = m.state
    assert state is not None
    data = state.snapshot(n.clock.seconds())
    got = restore(data, n.clock.seconds())
    assert len(got.tasks) == 8 and sum(t.worker is not None for t in got.tasks.values()) == 2
    again = snapshot(
        got.tasks.values(),
        got.workers.values(),
        state.dead_letters,
        state._tombstones,
        keys=got.keys,
        paused=got.paused,
        now=n.clock.seconds(),
    )
    assert canonical(again) == canonical(data)
    with pytest.raises(ValueError):
        restore(b"\x81\xa7version\x63", 0.0)
    with pytest.raises(ValueError):
        restore(b"garbage", 0.0)


def test_worker_lost_for_a_call_still_fails_the_call(net: Net) -> None:
    net.manager(max_attempts=1)
    session = net.session()
    net.worker({"f": lambda _: Deferred()}, session=session)
    sender = net.sender()
    d = sender.rpc("f", 1)
    net.pump()
    net.crash(session)
    net.pump()
    failure_of(d, WorkerLost)


def test_the_state_machine_alone_reports_quorum_and_dead_letters() -> None:
    from spreadqueue._queue.names import queue_groups

    m = QueueManager(queue_groups("q"), "#m#d", quorum=3, max_dead_letters=2)
    status = m.status(0.0)
    assert status["quorum"]["needed"] == 3 and status["dead_letters"]["limit"] == 2
    assert pending(Deferred())
