"""Routing by function and priorities in the manager's pure state machine: which worker
gets which task, in which order (docs/protocol.md, "Dispatching")."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from test_queue_state import G, H, Newest, assigned, of, ready_manager

from spreadqueue._queue.messages import Cancel, Done, Kind, Register, Submit
from spreadqueue._queue.ready import Line, Ready, rank
from spreadqueue._queue.records import Task

S = "#s#d"


def register(
    h: H,
    session: str,
    functions: Sequence[str] | None,
    *,
    capacity: int = 1,
    slots: int | None = None,
    burst: int | None = None,
) -> None:
    """A worker ``w`` of ``session`` that serves ``functions`` (None: declares nothing)."""
    if session not in h.members[G.workers]:
        h.join(G.workers, session)
    fs = None if functions is None else tuple(functions)
    h.msg(session, Kind.REGISTER, [Register("w", capacity, (), slots, burst, None, fs)])


def call(
    h: H, *ids: str, func: str = "f", priority: int | None = None, timeout_ms: int | None = None
) -> None:
    """Calls of ``func`` from the sender ``S``, one per id."""
    entries = [
        Submit(i, func, b"a", timeout_ms, None, None, None, None, None, priority) for i in ids
    ]
    h.msg(S, Kind.SUBMIT, entries)


def where(h: H) -> list[tuple[str, str]]:
    """(worker session, task id) of what this turn assigned, in order."""
    return [(a[0], a[2]) for a in assigned(h.effects())]


def done(h: H, session: str, *ids: str) -> None:
    h.msg(session, Kind.DONE, [Done("w", i) for i in ids])


def one_at_a_time(h: H, n: int) -> list[str]:
    """Register a worker of capacity 1 and let it run ``n`` tasks, one after the other:
    the order the manager chose."""
    register(h, "#w#d", None)
    order = []
    for _ in range(n):
        [(_session, tid)] = where(h)
        order.append(tid)
        done(h, "#w#d", tid)
    return order


# --------------------------------------------------------------------------- routing


def test_a_task_goes_only_to_a_worker_that_serves_its_function() -> None:
    h = ready_manager()
    register(h, "#a#d", ["f"])
    register(h, "#b#d", ["g", "h"])
    call(h, "g1", func="g")
    call(h, "f1", "f2")
    call(h, "h1", func="h")
    assert where(h) == [("#b#d", "g1"), ("#a#d", "f1")]
    done(h, "#b#d", "g1")
    assert where(h) == [("#b#d", "h1")]  # f2 waits for #a, which is busy
    done(h, "#a#d", "f1")
    assert where(h) == [("#a#d", "f2")]


def test_workers_that_declare_nothing_serve_everything_and_share_by_least_recent_use() -> None:
    """A worker that serves everything and one that serves only f compete for f's tasks
    by least recent use; g's tasks can go to the first only."""
    h = ready_manager()
    register(h, "#all#d", None)
    register(h, "#f#d", ["f"])
    call(h, "f1", "f2")
    assert where(h) == [("#all#d", "f1"), ("#f#d", "f2")]
    done(h, "#f#d", "f2")  # #f has been free longer than #all will be
    done(h, "#all#d", "f1")
    call(h, "f3", "f4")
    assert where(h) == [("#f#d", "f3"), ("#all#d", "f4")]
    done(h, "#all#d", "f4")
    done(h, "#f#d", "f3")
    call(h, "g1", func="g")
    call(h, "f5")
    assert where(h) == [("#all#d", "g1"), ("#f#d", "f5")]


def test_least_recent_use_holds_within_a_function() -> None:
    h = ready_manager()
    for s in ("#a#d", "#b#d", "#c#d"):
        register(h, s, ["f"])
    register(h, "#g#d", ["g"])
    call(h, "f1", "f2")
    assert where(h) == [("#a#d", "f1"), ("#b#d", "f2")]
    done(h, "#a#d", "f1")  # a is free again, but c waited longer
    call(h, "g1", func="g")
    call(h, "f3", "f4")
    assert where(h) == [("#g#d", "g1"), ("#c#d", "f3"), ("#a#d", "f4")]


def test_a_task_no_worker_can_take_now_does_not_block_the_tasks_behind_it() -> None:
    """Head of the queue: f's tasks, which nobody serves (then: whose worker is busy);
    g's tasks behind them still go at once."""
    h = ready_manager()
    register(h, "#g#d", ["g"], capacity=2)
    call(h, "f1", "f2")
    call(h, "g1", "g2", func="g")
    assert where(h) == [("#g#d", "g1"), ("#g#d", "g2")]
    register(h, "#f#d", ["f"])
    assert where(h) == [("#f#d", "f1")]
    call(h, "f3")
    done(h, "#g#d", "g1")
    call(h, "g3", func="g")  # behind f2 and f3, whose only worker is busy
    assert where(h) == [("#g#d", "g3")]
    done(h, "#f#d", "f1")
    assert where(h) == [("#f#d", "f2")]  # f's own order holds


def test_waiting_tasks_go_in_their_order_when_a_worker_that_serves_them_arrives() -> None:
    h = ready_manager()
    register(h, "#g#d", ["g"])
    call(h, "f1", "f2", "f3")
    assert where(h) == []
    assert h.m.queued == 3
    register(h, "#f#d", ["f"], capacity=2)
    assert where(h) == [("#f#d", "f1"), ("#f#d", "f2")]
    done(h, "#f#d", "f2")
    assert where(h) == [("#f#d", "f3")]


def test_a_worker_that_registers_other_functions_gets_those() -> None:
    h = ready_manager()
    register(h, "#w#d", ["f"])
    call(h, "g1", func="g")
    assert where(h) == []
    register(h, "#w#d", ["f", "g"])  # e.g. a handler was added
    assert where(h) == [("#w#d", "g1")]
    done(h, "#w#d", "g1")
    register(h, "#w#d", ["f"])
    call(h, "g2", func="g")
    call(h, "f1")
    assert where(h) == [("#w#d", "f1")]
    register(h, "#w#d", None)  # declares nothing again: serves everything
    done(h, "#w#d", "f1")
    assert where(h) == [("#w#d", "g2")]


def test_a_worker_that_declares_no_function_at_all_gets_nothing() -> None:
    h = ready_manager()
    register(h, "#w#d", [])
    call(h, "f1")
    assert where(h) == [] and h.m.queued == 1


def test_a_burst_goes_on_among_several_crews() -> None:
    """Crews: the workers that serve everything, and those that serve f. The worker
    chosen takes its burst in a row, then the least recently used one takes its own."""
    h = ready_manager()
    register(h, "#a#d", ["f"], capacity=3, burst=3)
    register(h, "#b#d", None, capacity=3, burst=3)
    call(h, *(f"f{i}" for i in range(1, 7)))
    assert where(h) == [("#a#d", f"f{i}") for i in (1, 2, 3)] + [
        ("#b#d", f"f{i}") for i in (4, 5, 6)
    ]


def test_a_custom_policy_chooses_among_the_workers_that_serve_the_function() -> None:
    policy = Newest()
    h = ready_manager(policy=policy)
    register(h, "#a#d", None)
    register(h, "#g#d", ["g"])
    register(h, "#f#d", ["f"])
    call(h, "f1")
    assert where(h) == [("#f#d", "f1")]
    # oldest idle first, and only those that serve f
    assert policy.calls == [[("#a#d", "w"), ("#f#d", "w")]]


def test_acks_count_the_workers_that_serve_the_function() -> None:
    h = ready_manager()
    register(h, "#a#d", ["f"])
    register(h, "#b#d", ["f", "g"])
    register(h, "#c#d", None)
    register(h, "#d#d", ["f"], capacity=0)  # draining: takes nothing
    call(h, "f1")
    call(h, "g1", func="g")
    call(h, "h1", func="h")
    acks = [tuple(e) for _, es in of(h.effects(), Kind.ACK) for e in es]
    assert acks == [("f1", 3), ("g1", 2), ("h1", 1)]
    h.disconnect("#c#d")
    call(h, "h2", func="h")
    assert [tuple(e) for _, es in of(h.effects(), Kind.ACK) for e in es] == [("h2", 0)]
    assert h.m.serving("f") == 2 and h.m.available_workers == 2


def test_status_says_which_functions_wait_and_whether_a_worker_serves_them() -> None:
    h = ready_manager()
    register(h, "#f#d", ["f"])
    call(h, "f1", "f2", priority=3)
    h.now += 2
    call(h, "g1", "g2", "g3", func="g")
    h.effects()
    status = h.m.status(h.now + 1)
    assert status["waiting"] == [
        {"func": "g", "queued": 3, "oldest_for": 1.0, "workers": 0},
        {"func": "f", "queued": 1, "oldest_for": 3.0, "workers": 1},
    ]
    assert status["queued_by_priority"] == [3, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert [w["functions"] for w in status["workers"]] == [["f"]]
    assert [e.name for e in h.m.take_events()].count("unserved") == 1  # g, once


def test_the_log_says_once_that_a_function_is_served_by_nobody() -> None:
    h = ready_manager()
    h.m.take_events()
    call(h, "f1")  # no worker at all: that is another message
    register(h, "#g#d", ["g"])
    call(h, "f2", "f3")
    call(h, "f4")
    unserved = [e.fields for e in h.m.take_events() if e.name == "unserved"]
    assert unserved == [{"func": "f", "workers": 1}]
    register(h, "#g#d", ["g", "h"])  # the workers change: said again if still true
    call(h, "f5")
    assert [e.name for e in h.m.take_events()].count("unserved") == 1


def test_entries_of_a_waiting_function_that_end_are_cleaned_away() -> None:
    """Tasks of a function nobody serves that time out or are cancelled leave no
    entries behind for ever (the function's line is never read while it waits)."""
    h = ready_manager()
    register(h, "#g#d", ["g"])
    ids = [f"f{i}" for i in range(300)]
    call(h, *ids)
    h.msg(S, Kind.CANCEL, [Cancel(i) for i in ids])
    assert h.m.queued == 0
    assert len(h.m._ready.lines["f"]) < 64


# --------------------------------------------------------------------------- priorities


def test_higher_priorities_go_first_and_each_level_is_fifo() -> None:
    h = ready_manager()
    for tid, p in [("a0", 0), ("a5", 5), ("a9", 9), ("b5", 5), ("b0", 0), ("b9", 9), ("c5", 5)]:
        call(h, tid, priority=p)
    assert one_at_a_time(h, 7) == ["a9", "b9", "a5", "b5", "c5", "a0", "b0"]


def test_priorities_order_the_tasks_across_functions() -> None:
    h = ready_manager()
    call(h, "f0", priority=0)
    call(h, "g0", func="g", priority=0)
    call(h, "g7", func="g", priority=7)
    call(h, "f7", priority=7)
    assert one_at_a_time(h, 4) == ["g7", "f7", "f0", "g0"]


def test_aging_keeps_a_low_task_from_starving_under_a_flood_of_high_ones() -> None:
    """One worker finishes a task every 0.1 s while two priority 9 tasks arrive in the
    same time: without aging the priority 0 task queued at 0 would never run. With
    ``priority_aging`` 1 s it counts as queued 9 s earlier than a 9 that came with it,
    so it runs right after the 9s that came less than 9 s after it, and before every
    later one: the documented bound."""
    h = ready_manager(priority_aging=1.0)
    register(h, "#w#d", None)
    call(h, "busy", priority=9)
    call(h, "low", priority=0)
    submitted: dict[str, float] = {}
    order: list[str] = []
    running = [tid for _, tid in where(h)]
    serial = 0
    while "low" not in order and h.now < 60:
        h.now = round(h.now + 0.1, 6)
        for _ in range(2):
            serial += 1
            submitted[f"h{serial}"] = h.now
            call(h, f"h{serial}", priority=9)
        done(h, "#w#d", *running)
        running = [tid for _, tid in where(h)]
        order.extend(running)
    assert "low" in order, "the low task starved"
    before = order[: order.index("low")]
    # every high task submitted less than 9 s after it went first, in FIFO order ...
    assert before == [t for t, at in submitted.items() if at < 9.0][: len(before)]
    assert max(submitted[t] for t in before) < 9.0
    # ... and the queue still held later ones when low ran: it did not just drain
    assert any(at >= 9.0 for t, at in submitted.items() if t not in order)
    assert 17.0 <= h.now <= 19.0  # 180 tasks ahead of it, 10 a second


def test_a_delayed_task_counts_as_queued_from_its_start_time() -> None:
    h = ready_manager()
    register(h, "#w#d", None)
    call(h, "busy")
    assert where(h) == [("#w#d", "busy")]
    delayed = Submit("late", "f", b"a", None, None, True, None, None, 5000, None)
    h.msg(S, Kind.SUBMIT, [delayed])  # detached, not before t=5 s
    h.now = 4.0
    call(h, "on_time")  # queued at 4 s: before the delayed one's start
    h.now = 6.0
    h.m.tick(h.now)
    done(h, "#w#d", "busy")
    assert where(h) == [("#w#d", "on_time")]
    done(h, "#w#d", "on_time")
    assert where(h) == [("#w#d", "late")]


def test_detached_tasks_wait_for_a_quorum_and_calls_behind_them_go_on() -> None:
    h = ready_manager(quorum=2)
    register(h, "#w#d", None, capacity=4)
    detached = [Submit(f"d{i}", "f", b"a", None, None, True, None, None, None, 9) for i in range(2)]
    h.msg(S, Kind.SUBMIT, detached)
    call(h, "c1")
    assert where(h) == [("#w#d", "c1")]  # the detached ones are held, not in the way
    h.join(G.manager, "#m2#d")  # a second manager: a quorum
    h.tick(0.1)
    assert sorted(tid for _, tid in where(h)) == ["d0", "d1"]


def test_the_aging_must_be_a_positive_number_of_seconds() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="priority_aging"):
            H(priority_aging=bad)


# --------------------------------------------------------------------------- the index


def task(tid: str, key: int, priority: int = 0, at: float = 0.0, func: str = "f") -> Task:
    return Task(tid, func, b"", "#s#d", None, at, priority=priority, key=key)


def test_a_line_orders_by_rank_then_key() -> None:
    line = Line("f")
    aging = 10.0
    a, b, c, d = task("a", 1, 0, 0.0), task("b", 2, 1, 5.0), task("c", 3, 0, 6.0), task("d", 4)
    assert rank(b, aging) == -5.0
    ready = Ready(aging)
    for t in (a, b, c):
        ready.add(t)
    line = ready.lines["f"]
    line.put_back(d, aging)  # key 4, rank 0.0: after a (rank 0.0, key 1)
    assert line.head(aging) == (-5.0, 2, b)
    assert [line.pop(aging) for _ in range(5)] == [b, a, d, c, None]
    assert line.empty() and len(line) == 0


def test_an_empty_line_goes_once_another_has_tasks() -> None:
    ready = Ready()
    ready.add(task("f1", 1, func="f"))
    ready.add(task("g1", 2, func="g"))
    best = ready.best()
    assert best is not None and best.func == "f"
    assert best.pop(ready.aging) is not None
    assert ready.best() is ready.lines["g"]
    assert list(ready.lines) == ["g"] and ready.order == [ready.lines["g"]]


def test_parked_lines_come_back_for_the_functions_a_worker_serves() -> None:
    ready = Ready()
    for i, func in enumerate(["f", "g", "h"]):
        ready.add(task(f"{func}1", i, func=func))
        ready.park(ready.lines[func])
    assert ready.order == []
    ready.unpark(frozenset({"h", "f", "x"}))
    assert [line.func for line in ready.order] == ["f", "h"]
    ready.unpark(None)
    assert [line.func for line in ready.order] == ["f", "h", "g"] and not ready.parked
