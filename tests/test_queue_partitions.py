"""Queues on a ring of Spread daemons that partitions and merges (FakeSpreadNetwork with
several daemons, on a task.Clock): the notices a real ring gives, deterministically.

Three daemons, a manager on each (``quorum=2``: a majority of three), workers on two of
them. During a partition only the side with two managers runs detached tasks; calls run
on both sides; after the merge every task has run, and none twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from queue_net import fired
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from spreadqueue._queue.manager import ManagerService
from spreadqueue._queue.sender import Sender
from spreadqueue._queue.worker import Worker
from spreadqueue.testing import FakeSpreadNetwork

Q = "q"


class Runs:
    """A handler counting its runs by argument, and on which worker."""

    def __init__(self) -> None:
        self.count: Counter[Any] = Counter()
        self.where: dict[Any, list[str]] = {}

    def handler(self, where: str) -> Any:
        def run(args: Any) -> Any:
            self.count[args] += 1
            self.where.setdefault(args, []).append(where)
            return args

        return run


class Ring:
    def __init__(self, daemons: tuple[str, ...] = ("d1", "d2", "d3")) -> None:
        self.clock = Clock()
        self.net = FakeSpreadNetwork(self.clock, daemons=list(daemons))
        self.managers: dict[str, ManagerService] = {}
        self.runs = Runs()

    def pump(self, seconds: float = 0.0, step: float = 0.05) -> None:
        self.net.flush()
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end - 1e-9:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.net.flush()

    def manager(self, daemon: str, **options: Any) -> ManagerService:
        session = self.net.session(f"m{daemon}", daemon=daemon)
        m = ManagerService(self.clock, session, Q, quorum=2, **options)
        m.startService()
        self.pump()
        self.managers[daemon] = m
        return m

    def worker(self, daemon: str) -> Worker:
        w = Worker(
            self.clock,
            self.net.session(f"w{daemon}", daemon=daemon),
            Q,
            {"f": self.runs.handler(daemon)},
            concurrency=2,
        )
        w.start()
        self.pump()
        return w

    def sender(self, daemon: str, **options: Any) -> Sender:
        s = Sender(self.clock, self.net.session(f"s{daemon}", daemon=daemon), Q, **options)
        s.start()
        self.pump()
        return s

    def active(self) -> list[str]:
        return [d for d, m in self.managers.items() if m.active]


@pytest.fixture
def ring() -> Iterator[Ring]:
    r = Ring()
    for d in r.net.daemons:
        r.manager(d)
    yield r


def test_three_managers_on_three_daemons_agree_and_one_is_active(ring: Ring) -> None:
    assert ring.active() == ["d1"]
    assert all(m.state is not None and m.state.synced for m in ring.managers.values())


def test_the_minority_side_holds_detached_tasks_and_the_merge_runs_each_once(
    ring: Ring,
) -> None:
    ring.worker("d1")
    ring.worker("d2")
    near, far = ring.sender("d1"), ring.sender("d2")
    before = [near.enqueue("f", f"before{i}") for i in range(4)]
    ring.pump(0.5)
    assert [isinstance(fired(d), str) for d in before] == [True] * 4
    ring.net.partition(["d1"], ["d2", "d3"])
    ring.pump()
    # d1's side: its manager is alone, one of the three configured: no quorum. The
    # other side's oldest manager took over there, at once, with the state.
    assert sorted(ring.active()) == ["d1", "d2"]
    minority = ring.managers["d1"].status()
    assert minority["quorum"] == {"managers": 1, "needed": 2, "dispatching_detached": False}
    held = [near.enqueue("f", f"near{i}") for i in range(5)]  # acknowledged, held
    running = [far.enqueue("f", f"far{i}") for i in range(5)]
    call = near.rpc("f", "near-call", timeout=60)  # calls go on on both sides
    ring.pump(1.0)
    assert [isinstance(fired(d), str) for d in held + running] == [True] * 10
    assert fired(call) == "near-call"
    ran = ring.runs.count
    assert not any(ran[f"near{i}"] for i in range(5)), ran  # held, not dispatched
    assert all(ran[f"far{i}"] == 1 for i in range(5)), ran
    assert all(where == ["d2"] for k, where in ring.runs.where.items() if k.startswith("far"))
    ring.net.merge()
    ring.pump(3.0)  # the merged workers' registration grace
    assert len(ring.active()) == 1
    for name in [f"before{i}" for i in range(4)] + [f"near{i}" for i in range(5)]:
        assert ran[name] >= 1, (name, ran)
    assert [ran[f"far{i}"] for i in range(5)] == [1] * 5  # not again after the merge
    assert [ran[f"near{i}"] for i in range(5)] == [1] * 5
    states = [m.state for m in ring.managers.values()]
    assert all(s is not None and s.synced and s.detached == 0 for s in states)


def test_a_task_the_majority_ran_is_not_run_again_when_the_minority_wins_the_merge() -> None:
    """Which side's manager stays active after a merge follows the vs-set order (here:
    d3's side first, by its daemon id), not the quorum. The side that ran detached
    tasks during the partition tells the winner they ended, so the winner, which still
    held them, does not run them again."""
    r = Ring()
    for d in r.net.daemons:
        r.manager(d)
    sender = r.sender("d1")
    jobs = [sender.enqueue("f", f"job{i}") for i in range(6)]
    r.pump()
    assert all(isinstance(fired(d), str) for d in jobs)
    r.net.partition(["d3"])  # d3 alone: one manager of three, no quorum
    r.pump()
    r.worker("d2")  # the majority side runs them all
    r.pump(1.0)
    assert r.runs.count == Counter({f"job{i}": 1 for i in range(6)})
    d3 = r.managers["d3"].state
    assert d3 is not None and d3.detached == 6  # the minority still holds them
    r.net.merge()
    r.pump(3.0)
    assert r.active() == ["d3"]  # the minority's manager won the merge
    assert d3.stats["ended_elsewhere"] == 6
    assert r.runs.count == Counter({f"job{i}": 1 for i in range(6)}), r.runs.count
    assert all(m.state is not None and m.state.detached == 0 for m in r.managers.values())


def test_a_killed_daemon_is_a_partition_for_the_others(ring: Ring) -> None:
    ring.worker("d2")
    sender = ring.sender("d3")
    ring.net.kill_daemon("d1")  # the active manager's daemon
    ring.pump()
    assert ring.managers["d2"].active  # two of three: a quorum
    d: Deferred[str] = sender.enqueue("f", "after")
    ring.pump(0.5)
    fired(d)
    assert ring.runs.count["after"] == 1
