"""The manager's journal: detached tasks and dead letters that survive every manager."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from queue_net import Net, Runs, fired
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from spreadqueue._queue.journal import Journal, JournalError
from spreadqueue._queue.manager import ManagerService
from spreadqueue._queue.names import queue_groups
from spreadqueue._queue.records import DeadLetter, Task
from spreadqueue._queue.state import QueueManager
from spreadqueue._spread.interfaces import ISpreadSession


def test_a_journal_keeps_tasks_dead_letters_and_ended_ids(tmp_path: Path) -> None:
    path = str(tmp_path / "q.journal")
    j = Journal(Clock(), path, "q")
    assert j.load() == ([], [], [])
    t1 = Task("t1", "f", b"\x01", "q-mgr", None, 5.0, detached=True, run_ms=100, priority=2)
    t2 = Task("t2", "g", b"", "results", None, 6.0, detached=True, expires=99.0, not_before=7.5)
    dead = DeadLetter("t0", "f", b"x", "q-mgr", 0, None, 3, "failed", "ValueError: no", 4.0)
    fired(j.write([("task", t1), ("task", t2), ("dead", dead)]))
    fired(j.write([("end", "t1"), ("undead", "nothing")]))
    fired(j.close())
    tasks, dead_letters, ended = Journal(Clock(), path, "q").load()
    assert [(t.task_id, t.func, t.args, t.reply_to) for t in tasks] == [("t2", "g", b"", "results")]
    assert (tasks[0].expires, tasks[0].not_before, tasks[0].detached) == (99.0, 7.5, True)
    assert [d.fields() for d in dead_letters] == [dead.fields()]
    assert ended == ["t1"]


def test_a_task_held_again_is_no_longer_among_the_ended(tmp_path: Path) -> None:
    j = Journal(Clock(), str(tmp_path / "j"), "q")
    j.load()
    t = Task("t1", "f", b"", "q-mgr", None, 5.0, detached=True)
    fired(j.write([("task", t), ("end", "t1"), ("end", "t2")]))
    assert j.load()[0::2] == ([], ["t1", "t2"])
    fired(j.write([("task", t)]))  # a dead letter requeued
    tasks, _, ended = j.load()
    assert ([t.task_id for t in tasks], ended) == (["t1"], ["t2"])


def test_a_journal_of_another_queue_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    Journal(Clock(), path, "q").load()
    with pytest.raises(JournalError, match="journal of queue 'q', not 'other'"):
        Journal(Clock(), path, "other").load()
    (tmp_path / "bad").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError):
        Journal(Clock(), str(tmp_path / "bad"), "q").load()


def test_the_ended_ids_are_bounded(tmp_path: Path) -> None:
    j = Journal(Clock(), str(tmp_path / "j"), "q", max_ended=3)
    j.load()
    for i in range(10):
        fired(j.write([("end", f"t{i}")]))
    assert j.load()[2] == ["t7", "t8", "t9"]


def test_acks_of_detached_tasks_wait_for_the_journal() -> None:
    m = QueueManager(queue_groups("q"), "#m#d", journaled=True)
    from test_queue_state import H

    h = H(journaled=True)
    h.start()
    h.effects()
    from spreadqueue._queue.messages import Kind, Submit

    h.msg("#s#d", Kind.SUBMIT, [Submit("d1", "f", b"", None, None, True)])
    h.msg("#s#d", Kind.SUBMIT, [Submit("c1", "f", b"", None)])
    acks = [(e.after_journal, [a.task_id for a in e.entries]) for e in h.effects()]
    assert sorted(acks) == [(False, ["c1"]), (True, ["d1"])]
    assert [(op, getattr(v, "task_id", v)) for op, v in h.m.take_journal()] == [("task", "d1")]
    assert m.take_journal() == []


def test_every_manager_lost_with_a_journal_then_back_runs_every_task(
    net: Net, tmp_path: Path
) -> None:
    journal = str(tmp_path / "q.journal")
    sessions = [net.session(), net.session()]
    managers = [net.manager(s, journal=journal + str(i)) for i, s in enumerate(sessions)]
    sender = net.sender()
    held = [sender.enqueue("f", i) for i in range(20)]
    net.pump()
    assert len({fired(d) for d in held}) == 20
    for s in sessions:  # every manager dies at once (kill -9), nothing ran yet
        net.crash(s)
    net.pump()
    for m in managers:
        m.stopService()
    net.pump()
    # They come back in the other order, each with its own journal.
    back = [net.manager(journal=journal + "1"), net.manager(journal=journal + "0")]
    runs = Runs()
    net.worker({"f": runs}, concurrency=4)
    net.advance(1.0)
    assert runs.count == Counter(range(20))
    assert back[0].active and back[1].state is not None and back[1].state.synced
    assert back[0].state is not None and back[0].state.detached == 0


def test_a_manager_that_reconnects_keeps_its_detached_tasks(net: Net) -> None:
    opened: list[ISpreadSession] = []

    def factory() -> Deferred[ISpreadSession]:
        session = net.session()
        opened.append(session)
        return succeed(session)

    manager = ManagerService(net.clock, factory, "q", reconnect_delay=0.5)
    manager.startService()
    net.pump()
    sender = net.sender()
    fired_ids = [sender.enqueue("f", i) for i in range(3)]
    net.pump()
    assert [isinstance(fired(d), str) for d in fired_ids] == [True] * 3
    net.crash(opened[0])  # the daemon dropped the manager's session
    net.advance(1.0)
    assert len(opened) == 2 and manager.active
    assert manager.state is not None and manager.state.detached == 3
    runs = Runs()
    net.worker({"f": runs})
    net.advance(2.5)  # the new session's HELLO round (cold: nobody else had the state)
    assert runs.count == Counter(range(3))


def test_dead_letters_survive_in_the_journal(net: Net, tmp_path: Path) -> None:
    journal = str(tmp_path / "q.journal")
    session = net.session()
    net.manager(session, journal=journal)
    net.worker({"f": Runs(fail={"bad"})})
    sender = net.sender()
    fired_later = sender.enqueue("f", "bad")
    net.advance(0.5)
    fired(fired_later)
    net.crash(session)
    net.pump()
    again = net.manager(journal=journal)
    assert again.state is not None
    [letter] = list(again.state.dead_letters)
    assert letter.reason == "failed" and "no bad" in letter.error
    assert again.status()["journal"]["path"] == journal


def test_a_requeued_dead_letter_is_held_again_after_a_restart(net: Net, tmp_path: Path) -> None:
    """dead-requeue makes a task live again; a manager that starts from the journal holds
    it (the journal had kept its id among the ended ones, and the restart dropped it)."""
    journal = str(tmp_path / "q.journal")
    session = net.session()
    m = net.manager(session, journal=journal)
    sender = net.sender()
    held = sender.enqueue("later", 1, ttl=1)  # nobody serves it: its time to live runs out
    net.advance(3)
    fired(held)
    state = m.state
    assert state is not None
    [letter] = list(state.dead_letters)
    assert letter.reason == "expired"
    me = session.private_group
    state.control(net.clock.seconds(), "r1", me, "dead-requeue", "all")
    m._flush()
    net.advance(0.5)
    assert m.status()["detached"] == 1 and list(state.dead_letters) == []
    net.crash(session)
    net.pump()
    again = net.manager(journal=journal)
    net.advance(0.5)
    status = again.status()
    assert (status["detached"], status["dead_letters"]["count"]) == (1, 0)
    runs = Runs()
    net.worker({"later": runs})
    net.advance(0.5)
    assert runs.count == Counter({1: 1})


class _Threads:
    """A reactor and a thread pool that run the journal's commits only when told."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:
        self.jobs.append((on_result, f, args))

    def stop(self) -> None:
        """(What the journal calls on its pool when it closes.)"""

    def run_one(self) -> None:
        on_result, f, args = self.jobs.pop(0)
        try:
            result = f(*args)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


def test_batches_that_come_during_a_commit_go_together_into_the_next(tmp_path: Path) -> None:
    """Group commit: while one transaction is written, the turns' batches wait, and the
    next transaction writes them all (one fsync for many turns)."""

    threads = _Threads()
    directlyProvides(threads, IReactorThreads, IReactorFromThreads)
    j = Journal(threads, str(tmp_path / "j"), "q")
    j.load()
    j._pool = threads  # type: ignore[assignment]  # (the commits wait for run_one)

    def task(i: int) -> Task:
        return Task(f"t{i}", "f", b"", "q-mgr", None, 0.0, detached=True)

    first = j.write([("task", task(0))])
    later = [j.write([("task", task(i)), ("end", f"e{i}")]) for i in (1, 2, 3)]
    assert len(threads.jobs) == 1 and not first.called
    threads.run_one()
    assert first.called and not any(d.called for d in later)
    assert len(threads.jobs) == 1  # the three waiting batches, in one transaction
    threads.run_one()
    assert all(d.called for d in later)
    # changes, not SQL statements (a task is two, an end two)
    assert (j.stats["commits"], j.stats["batches"], j.stats["changes"]) == (2, 4, 7)
    closed = j.close()
    assert closed.called
    assert [t.task_id for t in Journal(Clock(), str(tmp_path / "j"), "q").load()[0]] == [
        "t0",
        "t1",
        "t2",
        "t3",
    ]
