"""The manager's pure state machine: every transition, without I/O or a reactor."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface import implementer

from spreadqueue._queue.interfaces import IAssignmentPolicy
from spreadqueue._queue.messages import (
    Assign,
    Cancel,
    Done,
    Hello,
    Kind,
    Reason,
    Register,
    Release,
    Result,
    Retire,
    Status,
    Submit,
)
from spreadqueue._queue.names import queue_groups
from spreadqueue._queue.state import Effect, QueueManager
from spreadqueue._spread.wire import (
    CAUSED_BY_DISCONNECT,
    CAUSED_BY_JOIN,
    CAUSED_BY_LEAVE,
    CAUSED_BY_NETWORK,
    REG_MEMB_MESS,
    GroupId,
    MembershipMessage,
)

G = queue_groups("q")
ME = "#m1#d"


def notice(
    group: str,
    members: Sequence[str],
    changed: str | None,
    cause: int = CAUSED_BY_JOIN,
    vs_sets: tuple[tuple[str, ...], ...] | None = None,
    local: int = 0,
) -> MembershipMessage:
    return MembershipMessage(
        service_type=REG_MEMB_MESS | cause,
        group=group,
        cause=cause,
        group_id=GroupId(1, 1, 1),
        members=tuple(sorted(members)),
        vs_sets=vs_sets if vs_sets is not None else ((changed,),) if changed else (),
        local_vs_set=local,
        changed_member=changed,
    )


def self_leave(group: str) -> MembershipMessage:
    return MembershipMessage(
        service_type=CAUSED_BY_LEAVE,
        group=group,
        cause=CAUSED_BY_LEAVE,
        group_id=None,
        is_self_leave=True,
    )


class H:
    """Drives one QueueManager through the notices and messages a daemon would give."""

    def __init__(self, me: str = ME, **options: Any) -> None:
        self.me = me
        self.m = QueueManager(G, me, **options)
        self.now = 0.0
        self.members: dict[str, list[str]] = {G.manager: [], G.workers: [], G.senders: []}

    def join(self, group: str, who: str) -> None:
        self.members[group].append(who)
        self.m.on_membership(self.now, notice(group, self.members[group], who))

    def gone(self, group: str, who: str, cause: int = CAUSED_BY_DISCONNECT) -> None:
        self.members[group].remove(who)
        if who == self.me and cause == CAUSED_BY_LEAVE:
            self.m.on_membership(self.now, self_leave(group))
        else:
            self.m.on_membership(self.now, notice(group, self.members[group], who, cause))

    def disconnect(self, session: str) -> None:
        for group, members in self.members.items():
            if session in members:
                self.gone(group, session)

    def start(self) -> list[Effect]:
        for group in (G.workers, G.senders, G.manager):
            self.join(group, self.me)
        return self.effects()

    def worker(self, session: str, wid: str = "w", capacity: int = 1, held: Sequence[str] = ()):
        if session not in self.members[G.workers]:
            self.join(G.workers, session)
        self.msg(session, Kind.REGISTER, [Register(wid, capacity, tuple(held))])

    def msg(self, sender: str, kind: Kind, entries: list[Any]) -> None:
        self.m.on_message(self.now, sender, kind, entries)

    def submit(self, sender: str, *ids: str, timeout_ms: int | None = None) -> None:
        self.msg(sender, Kind.SUBMIT, [Submit(i, "f", b"args", timeout_ms) for i in ids])

    def done(self, session: str, wid: str, *ids: str) -> None:
        self.msg(session, Kind.DONE, [Done(wid, i) for i in ids])

    def tick(self, dt: float) -> None:
        self.now += dt
        self.m.tick(self.now)

    def effects(self) -> list[Effect]:
        return self.m.take_effects()


def of(effects: list[Effect], kind: Kind) -> list[tuple[tuple[str, ...], list[Any]]]:
    return [(e.groups, e.entries) for e in effects if e.kind is kind]


def assigned(effects: list[Effect]) -> list[tuple[str, str, str, int]]:
    """(session, worker id, task id, attempt) of every ASSIGN entry, in order."""
    return [
        (groups[0], a.worker_id, a.task_id, a.attempt)
        for groups, entries in of(effects, Kind.ASSIGN)
        for a in entries
    ]


def ready_manager(**options: Any) -> H:
    h = H(**options)
    h.start()
    return h


# --------------------------------------------------------------------------- activity


def test_a_lone_manager_becomes_active_and_says_hello_to_the_workers() -> None:
    h = H()
    h.join(G.workers, ME)
    h.join(G.senders, ME)
    assert not h.m.active  # not a member of Q-mgr yet: never dispatches
    h.join(G.manager, ME)
    assert h.m.active
    # the HELLO has an id, which workers echo in the REGISTER that answers it
    assert of(h.effects(), Kind.HELLO) == [((G.workers,), [Hello("#m1#d.1")])]


def test_not_active_before_being_a_member_of_all_three_groups() -> None:
    h = H()
    h.join(G.manager, ME)
    h.join(G.workers, ME)
    assert not h.m.active  # cannot see senders leave yet
    h.join(G.senders, ME)
    assert h.m.active
    h.gone(G.workers, ME, CAUSED_BY_LEAVE)
    assert not h.m.active


def test_a_second_manager_stands_by_and_never_dispatches() -> None:
    first, second = H("#m1#d"), H("#m2#d")
    first.start()
    first.effects()
    # the second manager joins: it sees the first already there
    for h in (first, second):
        h.members[G.manager] = ["#m1#d"]
        h.members[G.workers] = ["#m1#d"]
    for group in (G.workers, G.senders, G.manager):
        for h in (first, second):
            h.join(group, "#m2#d")
    assert first.m.active and not second.m.active
    # all the standby says is a request for the queue's state (tests/
    # test_queue_replication.py follows it through; here nobody answers)
    assert [(e.groups, e.kind) for e in second.effects()] == [((G.manager,), Kind.SYNC_REQUEST)]
    for h in (first, second):
        h.worker("#w#d")
        h.submit("#s#d", "t1")
    assert assigned(first.effects()) == [("#w#d", "w", "t1", 1)]
    assert second.effects() == [] and second.m.queued == 0
    assert second.m.stats["ignored_unsynced"] == 2


def test_the_oldest_manager_is_active_even_when_a_newer_one_sorts_first() -> None:
    # '#a#d' sorts before '#z#d' in the member list, but '#z#d' was there first.
    old = H("#z#d")
    old.start()
    old.join(G.manager, "#a#d")
    assert old.m.active
    new = H("#a#d")
    new.members[G.manager] = ["#z#d"]
    new.join(G.manager, "#a#d")
    assert not new.m.active


def test_the_standby_takes_over_when_the_active_manager_goes() -> None:
    h = H("#m2#d")
    h.members = {G.manager: ["#m1#d"], G.workers: ["#m1#d", "#w#d"], G.senders: ["#m1#d"]}
    h.start()
    assert not h.m.active and h.effects() == []
    h.disconnect("#m1#d")
    assert h.m.active
    assert of(h.effects(), Kind.HELLO) == [((G.workers,), [Hello("#m2#d.1")])]
    assert h.m.stats["activations"] == 1


def test_after_a_takeover_dispatch_waits_for_workers_to_reregister() -> None:
    h = H("#m2#d", register_grace=2.0)
    h.members = {G.manager: ["#m1#d"], G.workers: ["#w1#d", "#w2#d"], G.senders: []}
    h.start()
    h.disconnect("#m1#d")
    h.effects()
    h.submit("#s#d", "t1", "t2")
    h.msg("#w1#d", Kind.REGISTER, [Register("w", 1, ())])
    # w2 has not answered HELLO yet: it may still run t1 or t2
    assert assigned(h.effects()) == []
    h.msg("#w2#d", Kind.REGISTER, [Register("w", 1, ("t2",))])
    # t2 is adopted where it runs; t1 goes to the free worker
    assert assigned(h.effects()) == [("#w1#d", "w", "t1", 1)]
    assert h.m.running == 2 and h.m.queued == 0


def test_the_registration_grace_ends_by_time() -> None:
    h = H("#m2#d", register_grace=2.0)
    h.members = {G.manager: ["#m1#d"], G.workers: ["#w1#d", "#silent#d"], G.senders: []}
    h.start()
    h.disconnect("#m1#d")
    h.worker("#w1#d")
    h.submit("#s#d", "t1")
    h.tick(1.9)
    assert assigned(h.effects()) == []
    h.tick(0.2)
    assert assigned(h.effects()) == [("#w1#d", "w", "t1", 1)]


def test_leaving_the_manager_group_steps_down_and_hands_tasks_back() -> None:
    h = ready_manager()
    h.submit("#s#d", "t1", "t2")
    h.effects()
    h.gone(G.manager, ME, CAUSED_BY_LEAVE)
    assert not h.m.active
    failed = of(h.effects(), Kind.FAILED)
    assert [(g, e.task_id, e.reason) for g, es in failed for e in es] == [
        (("#s#d",), "t1", Reason.RESUBMIT),
        (("#s#d",), "t2", Reason.RESUBMIT),
    ]
    assert h.m.queued == 0


def test_a_merge_keeps_one_active_manager_by_vs_set_order() -> None:
    # Two halves of a partition each had an active manager; they merge.
    first, second = H("#a#d1"), H("#b#d2")
    first.start()
    second.start()
    second.submit("#s#d2", "t1")
    second.effects()
    vs = (("#a#d1",), ("#b#d2",))  # same order at every member
    members = ["#a#d1", "#b#d2"]
    first.m.on_membership(0, notice(G.manager, members, None, CAUSED_BY_NETWORK, vs, local=0))
    second.m.on_membership(0, notice(G.manager, members, None, CAUSED_BY_NETWORK, vs, local=1))
    assert first.m.active and not second.m.active
    resubmit = of(second.effects(), Kind.FAILED)
    assert [(e.task_id, e.reason) for _, es in resubmit for e in es] == [("t1", Reason.RESUBMIT)]
    # after the merge the second one is the younger: it takes over if the first goes
    second.m.on_membership(0, notice(G.manager, ["#b#d2"], "#a#d1", CAUSED_BY_DISCONNECT))
    assert second.m.active


def test_a_merge_of_workers_asks_the_newcomers_to_register() -> None:
    h = ready_manager()
    h.effects()
    members = [ME, "#w#d2"]
    vs = ((ME,), ("#w#d2",))
    h.m.on_membership(0, notice(G.workers, members, None, CAUSED_BY_NETWORK, vs))
    assert of(h.effects(), Kind.HELLO) == [((G.workers,), [Hello("#m1#d.2")])]


# --------------------------------------------------------------------------- dispatch


def test_submits_are_acked_in_one_batch_and_dispatched_fifo() -> None:
    h = ready_manager()
    h.worker("#w#d", capacity=3)
    h.submit("#s#d", "t1", "t2", "t3", "t4")
    effects = h.effects()
    # each ACK says how many workers take tasks: here one
    assert of(effects, Kind.ACK) == [(("#s#d",), [("t1", 1), ("t2", 1), ("t3", 1), ("t4", 1)])]
    # three credits: three tasks in one ASSIGN message, no 'ready' round trip needed
    assign = of(effects, Kind.ASSIGN)
    assert len(assign) == 1
    assert [a.task_id for a in assign[0][1]] == ["t1", "t2", "t3"]
    a = assign[0][1][0]
    assert a == Assign("w", "t1", "f", b"args", "#s#d", 1, None)
    assert h.m.queued == 1 and h.m.running == 3
    h.done("#w#d", "w", "t2")
    assert assigned(h.effects()) == [("#w#d", "w", "t4", 1)]


def test_idle_workers_are_chosen_least_recently_used() -> None:
    h = ready_manager()
    for s in ("#w1#d", "#w2#d", "#w3#d"):
        h.worker(s)
    h.submit("#s#d", "t1", "t2")
    assert [a[0] for a in assigned(h.effects())] == ["#w1#d", "#w2#d"]
    h.done("#w1#d", "w", "t1")  # w1 is free again, but w3 waited longer
    h.submit("#s#d", "t3", "t4")
    assert [a[0] for a in assigned(h.effects())] == ["#w3#d", "#w1#d"]


def test_workers_with_spare_credit_take_turns() -> None:
    h = ready_manager()
    h.worker("#a#d", capacity=2)
    h.worker("#b#d", capacity=2)
    h.submit("#s#d", "t1", "t2", "t3", "t4", "t5")
    where = {a[2]: a[0] for a in assigned(h.effects())}  # batched per worker session
    assert where == {"t1": "#a#d", "t2": "#b#d", "t3": "#a#d", "t4": "#b#d"}
    assert h.m.queued == 1


def test_a_final_result_sent_to_the_manager_counts_as_done() -> None:
    h = ready_manager()
    h.worker("#w#d")
    h.submit("#s#d", "t1", "t2")
    h.effects()
    h.msg("#w#d", Kind.RESULT, [Result("t1", "w", False, Status.OK, b"")])
    assert assigned(h.effects()) == []  # not final: still running
    h.msg("#w#d", Kind.RESULT, [Result("t1", "w", True, Status.OK, b"")])
    assert assigned(h.effects()) == [("#w#d", "w", "t2", 1)]
    assert h.m.stats["completed"] == 1


def test_done_from_the_wrong_session_or_worker_is_ignored() -> None:
    h = ready_manager()
    h.worker("#w#d")
    h.worker("#x#d")
    h.submit("#s#d", "t1")
    h.effects()
    h.done("#x#d", "w", "t1")  # t1 runs at #w#d, not #x#d
    h.done("#w#d", "other", "t1")
    h.done("#w#d", "w", "nope")
    assert h.m.running == 1 and h.m.stats["unknown_done"] == 3


@implementer(IAssignmentPolicy)
class Newest:
    """A policy that chooses the most recently used candidate, and notes what it saw."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def choose(self, candidates: Sequence[Any]) -> Any:
        self.calls.append(list(candidates))
        return candidates[-1]


def test_a_custom_policy_is_consulted() -> None:
    policy = Newest()
    h = ready_manager(policy=policy)
    h.worker("#w1#d")
    h.worker("#w2#d")
    h.submit("#s#d", "t1")
    assert [a[0] for a in assigned(h.effects())] == ["#w2#d"]
    assert policy.calls == [[("#w1#d", "w"), ("#w2#d", "w")]]


def test_a_policy_choosing_a_non_candidate_is_an_error() -> None:
    @implementer(IAssignmentPolicy)
    class Broken:
        def choose(self, candidates: Sequence[Any]) -> Any:
            return ("#nobody#d", "w")

    h = ready_manager(policy=Broken())
    h.worker("#w#d")
    with pytest.raises(ValueError, match="not a candidate"):
        h.submit("#s#d", "t1")


def test_a_worker_draining_with_capacity_zero_gets_nothing_new() -> None:
    h = ready_manager()
    h.worker("#w#d", capacity=1)
    h.worker("#w#d", capacity=0)
    h.submit("#s#d", "t1")
    assert assigned(h.effects()) == []
    h.worker("#w#d", capacity=1)
    assert assigned(h.effects()) == [("#w#d", "w", "t1", 1)]


def test_register_from_a_session_outside_the_worker_group_is_refused() -> None:
    h = ready_manager()
    h.msg("#ghost#d", Kind.REGISTER, [Register("w", 1, ())])
    h.submit("#s#d", "t1")
    assert assigned(h.effects()) == []
    assert h.m.worker_count == 0 and h.m.stats["unknown_session_registers"] == 1


def test_duplicate_submit_is_acked_again_but_queued_once() -> None:
    h = ready_manager()
    h.submit("#s#d", "t1")
    h.submit("#s#d", "t1")
    h.submit("#other#d", "t1")  # someone else's id clash: ignored
    assert of(h.effects(), Kind.ACK) == [(("#s#d",), [("t1", 0), ("t1", 0)])]  # no worker
    assert h.m.queued == 1
    assert h.m.stats["duplicate_submits"] == 1 and h.m.stats["id_conflicts"] == 1


def test_queue_full() -> None:
    h = ready_manager(max_queued=2)
    h.submit("#s#d", "t1", "t2", "t3")
    effects = h.effects()
    assert [e.task_id for _, es in of(effects, Kind.ACK) for e in es] == ["t1", "t2"]
    assert [(e.task_id, e.reason) for _, es in of(effects, Kind.FAILED) for e in es] == [
        ("t3", Reason.QUEUE_FULL)
    ]


def test_standby_ignores_everything() -> None:
    h = H()
    h.submit("#s#d", "t1")
    assert h.effects() == [] and h.m.queued == 0


def test_kinds_the_manager_does_not_handle_are_ignored() -> None:
    h = ready_manager()
    h.msg("#x#d", Kind.HELLO, [()])
    h.msg("#x#d", Kind.ACK, [])
    assert h.effects() == []


# --------------------------------------------------------------------------- failures


def test_a_lost_worker_session_requeues_its_tasks_at_the_head() -> None:
    h = ready_manager()
    h.worker("#a#d", "w1", capacity=2)
    h.worker("#a#d", "w2", capacity=1)  # two workers on one session
    h.submit("#s#d", "t1", "t2", "t3", "t4", "t5")
    assert [a[2] for a in assigned(h.effects())] == ["t1", "t2", "t3"]
    h.worker("#b#d", capacity=5)
    assert [a[2] for a in assigned(h.effects())] == ["t4", "t5"]
    h.disconnect("#a#d")
    # the three lost tasks go to #b#d (which has credit for them) before anything
    # queued later; worker by worker, each worker's tasks in their old order
    h.submit("#s#d", "t6")
    effects = assigned(h.effects())
    assert effects == [("#b#d", "w", "t1", 2), ("#b#d", "w", "t3", 2), ("#b#d", "w", "t2", 2)]
    assert h.m.queued == 1 and h.m.stats["requeued"] == 3 and h.m.stats["workers_lost"] == 2


def test_requeued_tasks_go_before_queued_ones() -> None:
    h = ready_manager()
    h.worker("#a#d")
    h.submit("#s#d", "t1", "t2", "t3")
    h.effects()
    h.gone(G.workers, "#a#d", CAUSED_BY_LEAVE)
    assert h.m.queued_ids() == ["t1", "t2", "t3"]


def test_after_max_attempts_the_sender_gets_worker_lost() -> None:
    h = ready_manager(max_attempts=2)
    h.submit("#s#d", "t1")
    for attempt, session in ((1, "#a#d"), (2, "#b#d")):
        h.worker(session)
        assert assigned(h.effects()) == [(session, "w", "t1", attempt)]
        h.disconnect(session)
    failed = of(h.effects(), Kind.FAILED)
    assert [(g, e.task_id, e.reason) for g, es in failed for e in es] == [
        (("#s#d",), "t1", Reason.WORKER_LOST)
    ]
    assert h.m.queued == 0 and h.m.running == 0
    h.worker("#c#d")
    assert assigned(h.effects()) == []  # no endless loop


def test_a_network_partition_loses_the_workers_on_the_other_side() -> None:
    h = ready_manager()
    h.worker("#w#d2")
    h.submit("#s#d", "t1")
    h.effects()
    h.m.on_membership(0, notice(G.workers, [ME], None, CAUSED_BY_NETWORK, ((ME,),)))
    assert h.m.worker_count == 0 and h.m.queued_ids() == ["t1"]


def test_a_transitional_notice_changes_nothing() -> None:
    h = ready_manager()
    h.worker("#w#d")
    h.submit("#s#d", "t1")
    h.effects()
    h.m.on_membership(
        0,
        MembershipMessage(
            service_type=0x2000, group=G.workers, cause=0, group_id=None, is_transition=True
        ),
    )
    assert h.m.worker_count == 1 and h.m.running == 1


def test_retire_requeues_what_the_worker_still_held() -> None:
    h = ready_manager()
    h.worker("#a#d", capacity=2)
    h.submit("#s#d", "t1", "t2")
    h.effects()
    h.done("#a#d", "w", "t1")
    h.msg("#a#d", Kind.RETIRE, [Retire("w")])
    assert h.m.worker_count == 0 and h.m.queued_ids() == ["t2"]


def test_cancel_of_a_queued_task_drops_it() -> None:
    h = ready_manager()
    h.submit("#s#d", "t1", "t2")
    h.msg("#other#d", Kind.CANCEL, [Cancel("t1")])  # not the sender: ignored
    h.msg("#s#d", Kind.CANCEL, [Cancel("t1"), Cancel("unknown")])
    h.worker("#w#d")
    assert assigned(h.effects()) == [("#w#d", "w", "t2", 1)]
    assert h.m.stats["cancelled"] == 1


def test_cancel_of_a_running_task_is_forwarded_to_its_worker() -> None:
    h = ready_manager()
    h.worker("#w#d")
    h.submit("#s#d", "t1")
    h.effects()
    h.msg("#s#d", Kind.CANCEL, [Cancel("t1")])
    h.msg("#s#d", Kind.CANCEL, [Cancel("t1")])  # only forwarded once
    assert of(h.effects(), Kind.CANCEL) == [(("#w#d",), [Cancel("t1")])]
    # if that worker dies now, the cancelled task is not run again
    h.disconnect("#w#d")
    assert h.m.queued == 0 and h.m.running == 0


def test_expired_tasks_are_dropped_not_run() -> None:
    h = ready_manager(sweep_interval=1.0)
    h.submit("#s#d", "late", timeout_ms=500)
    h.submit("#s#d", "sweep", timeout_ms=800)
    h.submit("#s#d", "fine", timeout_ms=60_000)
    h.tick(0.6)  # 'late' is due, but the sweep is not (next at t=1.0)
    h.worker("#w#d", capacity=5)
    effects = assigned(h.effects())
    # 'late' expired at dispatch time; 'sweep' (0.2 s left) and 'fine' run
    assert [a[2] for a in effects] == ["sweep", "fine"]
    assert h.m.stats["expired"] == 1


def test_the_sweep_drops_expired_tasks_while_no_worker_is_there() -> None:
    h = ready_manager(sweep_interval=1.0)
    h.submit("#s#d", "t1", timeout_ms=500)
    h.submit("#s#d", "t2")
    h.tick(1.0)
    assert h.m.queued_ids() == ["t2"] and h.m.stats["expired"] == 1


def test_assign_carries_the_remaining_time() -> None:
    h = ready_manager()
    h.submit("#s#d", "t1", timeout_ms=1000)
    h.tick(0.25)
    h.worker("#w#d")
    [(_, entries)] = of(h.effects(), Kind.ASSIGN)
    assert entries[0].timeout_ms == 750


def test_a_departed_sender_s_tasks_are_dropped_or_cancelled() -> None:
    h = ready_manager()
    h.join(G.senders, "#s#d")
    h.worker("#w#d")
    h.submit("#s#d", "t1", "t2")
    h.submit("#other#d", "t3")
    h.effects()
    h.disconnect("#s#d")
    effects = h.effects()
    assert of(effects, Kind.CANCEL) == [(("#w#d",), [Cancel("t1")])]
    assert h.m.queued_ids() == ["t3"] and h.m.stats["dropped_sender_gone"] == 1


# --------------------------------------------------------------------------- takeover


def test_tasks_held_from_before_a_takeover_use_credit_until_done() -> None:
    h = ready_manager()
    h.worker("#w#d", capacity=2, held=["old1", "old2"])  # assigned by the previous manager
    h.submit("#s#d", "t1")
    assert assigned(h.effects()) == []  # no credit left
    h.done("#w#d", "w", "old1")
    assert assigned(h.effects()) == [("#w#d", "w", "t1", 1)]


def test_a_resubmitted_task_that_a_worker_still_runs_is_not_run_twice() -> None:
    h = ready_manager()
    h.worker("#w#d", capacity=1, held=["t1"])
    h.submit("#s#d", "t1")
    effects = h.effects()
    assert of(effects, Kind.ACK) == [(("#s#d",), [("t1", 1)])]
    assert assigned(effects) == []
    assert h.m.running == 1
    # now the manager knows enough to requeue it if that worker dies
    h.worker("#x#d")
    h.disconnect("#w#d")
    assert assigned(h.effects()) == [("#x#d", "w", "t1", 2)]


def test_register_listing_a_task_already_running_elsewhere_only_counts_credit() -> None:
    h = ready_manager()
    h.worker("#a#d")
    h.submit("#s#d", "t1")
    h.effects()
    h.worker("#b#d", capacity=1, held=["t1"])
    h.submit("#s#d", "t2")
    assert assigned(h.effects()) == []  # both workers busy
    h.done("#b#d", "w", "t1")
    assert assigned(h.effects()) == [("#b#d", "w", "t2", 1)]
    assert h.m.running == 2  # t1 still counted at #a#d until it says done


# --------------------------------------------------------------------------- prefetch


def test_a_free_slot_wins_over_prefetch_credit() -> None:
    """Workers with slots 1 and capacity 3: each gets one task to start before any gets
    a second to keep; a worker that finishes (a free slot again) comes first."""
    h = ready_manager()
    for s in ("#a#d", "#b#d", "#c#d"):
        h.join(G.workers, s)
        h.msg(s, Kind.REGISTER, [Register("w", 3, (), 1)])
    h.submit("#s#d", "t1", "t2", "t3", "t4", "t5")
    where = [(a[0], a[2]) for a in assigned(h.effects())]
    assert sorted(where) == [
        ("#a#d", "t1"),
        ("#a#d", "t4"),
        ("#b#d", "t2"),
        ("#b#d", "t5"),
        ("#c#d", "t3"),
    ]
    h.done("#b#d", "w", "t2")  # b still holds t5: no free slot
    h.done("#a#d", "w", "t1", "t4")  # a is idle
    h.submit("#s#d", "t6", "t7")
    # a has a free slot; then c (prefetch credit, used least recently) before b
    assert [(a[0], a[2]) for a in assigned(h.effects())] == [("#a#d", "t6"), ("#c#d", "t7")]
    assert sorted(h.m.workers()) == [
        (("#a#d", "w"), 3, 1),
        (("#b#d", "w"), 3, 1),
        (("#c#d", "w"), 3, 2),
    ]


def test_a_register_without_slots_means_no_prefetch() -> None:
    h = ready_manager()
    h.worker("#a#d", capacity=2)  # an older worker: no slots field
    h.join(G.workers, "#b#d")
    h.msg("#b#d", Kind.REGISTER, [Register("w", 2, (), 1)])
    h.submit("#s#d", "t1", "t2", "t3")
    # '#a#d' runs 2 at once: both its credits are free slots, preferred to b's prefetch
    where = {a[2]: a[0] for a in assigned(h.effects())}  # (batched per worker session)
    assert where == {"t1": "#a#d", "t2": "#b#d", "t3": "#a#d"}


def test_released_tasks_go_back_to_the_head_and_do_not_count_as_attempts() -> None:
    h = ready_manager(max_attempts=1)
    h.join(G.workers, "#a#d")
    h.msg("#a#d", Kind.REGISTER, [Register("w", 3, (), 1)])
    h.submit("#s#d", "t1", "t2", "t3", "t4")
    assert [a[2] for a in assigned(h.effects())] == ["t1", "t2", "t3"]
    # stopping: capacity 0, and t2, t3 were never started
    h.msg("#a#d", Kind.REGISTER, [Register("w", 0, ("t1", "t2", "t3"), 0)])
    h.msg("#a#d", Kind.RELEASE, [Release("w", "t2"), Release("w", "t3"), Release("w", "zz")])
    assert h.m.queued_ids() == ["t2", "t3", "t4"]
    assert h.m.stats["released"] == 2 and h.m.stats["unknown_release"] == 1
    h.worker("#b#d", capacity=3)
    # attempt 1 again (max_attempts=1 would have failed them as WORKER_LOST otherwise)
    assert assigned(h.effects()) == [
        ("#b#d", "w", "t2", 1),
        ("#b#d", "w", "t3", 1),
        ("#b#d", "w", "t4", 1),
    ]
    assert h.m.running == 4


def test_a_run_the_worker_lost_counts_as_an_attempt_like_a_lost_worker() -> None:
    """RELEASE with lost=True: the handler process died; retried within max_attempts."""
    h = ready_manager(max_attempts=2)
    h.worker("#a#d")
    h.submit("#s#d", "t1")
    assert assigned(h.effects()) == [("#a#d", "w", "t1", 1)]
    h.msg("#a#d", Kind.RELEASE, [Release("w", "t1", True)])
    assert assigned(h.effects()) == [("#a#d", "w", "t1", 2)]  # same worker, next attempt
    assert ("task_run_lost", {"task_id": "t1", "func": "f", "worker": "w@#a#d"}) in events(h)
    h.msg("#a#d", Kind.RELEASE, [Release("w", "t1", True)])
    failed = of(h.effects(), Kind.FAILED)
    assert [(e.task_id, e.reason) for _, es in failed for e in es] == [("t1", Reason.WORKER_LOST)]
    assert h.m.status(0.0)["counts"]["worker_lost"] == 1


def test_a_worker_with_a_burst_takes_that_many_in_a_row_and_bursts_rotate() -> None:
    h = ready_manager()
    for s in ("#a#d", "#b#d", "#c#d"):
        h.join(G.workers, s)
        h.msg(s, Kind.REGISTER, [Register("w", 4, (), 4, 4)])
    h.submit("#s#d", "t1", "t2", "t3", "t4", "t5", "t6")
    where = {a[2]: a[0] for a in assigned(h.effects())}
    assert where == {"t1": "#a#d", "t2": "#a#d", "t3": "#a#d", "t4": "#a#d"} | {
        "t5": "#b#d",
        "t6": "#b#d",
    }
    h.done("#a#d", "w", "t1", "t2", "t3", "t4")
    h.submit("#s#d", "t7", "t8", "t9", "t10", "t11")
    where = {a[2]: a[0] for a in assigned(h.effects())}
    # c waited longest; then b (2 free slots left), then a
    assert where == {"t7": "#c#d", "t8": "#c#d", "t9": "#c#d", "t10": "#c#d", "t11": "#b#d"}


# --------------------------------------------------------------------------- held ACKs


def submit_waiting(h: H, sender: str, *ids: str, ack_ms: int = 5000) -> None:
    """SUBMITs of a sender that says it waits ``ack_ms`` for the ACK."""
    h.msg(sender, Kind.SUBMIT, [Submit(i, "f", b"args", None, ack_ms) for i in ids])


def acked(effects: list[Effect]) -> list[str]:
    return [e.task_id for _, es in of(effects, Kind.ACK) for e in es]


def test_the_ack_of_a_task_assigned_at_once_is_held_and_left_out_if_it_finishes() -> None:
    h = ready_manager(ack_delay=0.05)
    h.worker("#w#d", capacity=2)
    submit_waiting(h, "#s#d", "t1")
    assert acked(h.effects()) == ["t1"]  # the first ACK to a sender is never held
    submit_waiting(h, "#s#d", "t2", "t3", "t4")
    effects = h.effects()
    assert acked(effects) == ["t3", "t4"]  # queued (no credit): acknowledged at once
    assert [a[2] for a in assigned(effects)] == ["t2"]
    assert h.m.next_wakeup() == pytest.approx(0.05)
    h.done("#w#d", "w", "t1", "t2")  # t2 done: its result was the acknowledgement
    h.effects()
    h.tick(0.06)
    assert acked(h.effects()) == []
    assert h.m.stats["acks_held"] == 1 and h.m.stats["acks_saved"] == 1
    assert h.m.next_wakeup() is None


def test_a_held_ack_goes_out_when_due_if_the_task_is_still_running() -> None:
    h = ready_manager(ack_delay=0.05)
    h.worker("#w#d", capacity=4)
    submit_waiting(h, "#s#d", "t1")
    submit_waiting(h, "#s#d", "t2", "t3", ack_ms=80)  # waits 80 ms: held 20 ms at most
    assert acked(h.effects()) == ["t1", "t2", "t3"]  # 20 ms is too short to bother
    submit_waiting(h, "#s#d", "t4")
    assert acked(h.effects()) == []
    h.tick(0.049)
    assert acked(h.effects()) == []
    h.tick(0.002)
    assert acked(h.effects()) == ["t4"]


def test_acks_are_not_held_for_senders_that_do_not_ask_or_with_holding_off() -> None:
    h = ready_manager(ack_delay=0.05)
    h.worker("#w#d", capacity=5)
    h.submit("#s#d", "t1")
    h.submit("#s#d", "t2")  # no ack_ms: a first-revision sender
    assert acked(h.effects()) == ["t1", "t2"]
    off = ready_manager(ack_delay=0)
    off.worker("#w#d", capacity=5)
    submit_waiting(off, "#s#d", "t1")
    submit_waiting(off, "#s#d", "t2")
    assert acked(off.effects()) == ["t1", "t2"]


def test_a_sender_that_leaves_and_comes_back_gets_its_first_ack_at_once() -> None:
    h = ready_manager(ack_delay=0.05)
    h.worker("#w#d", capacity=5)
    h.join(G.senders, "#s#d")
    submit_waiting(h, "#s#d", "t1")
    submit_waiting(h, "#s#d", "t2")
    assert acked(h.effects()) == ["t1"]
    h.disconnect("#s#d")
    h.join(G.senders, "#s#d")
    submit_waiting(h, "#s#d", "t3")
    assert acked(h.effects()) == ["t3"]


# --------------------------------------------------------------------------- batched dispatch


def test_batched_one_dispatch_for_a_run_of_messages_then_the_held_acks() -> None:
    h = ready_manager(ack_delay=0.05, batched=True)
    for s in ("#a#d", "#b#d"):
        h.join(G.workers, s)
        h.msg(s, Kind.REGISTER, [Register("w", 4, (), 1, 2)])
    for s in ("#s1#d", "#s2#d", "#s3#d"):
        submit_waiting(h, s, f"first{s}")  # (a sender's first ACK is never held)
    h.effects()
    h.done("#a#d", "w", "first#s1#d", "first#s3#d")
    h.done("#b#d", "w", "first#s2#d")
    for s in ("#s1#d", "#s2#d", "#s3#d"):
        submit_waiting(h, s, f"t{s[2]}")
    assert h.m.queued == 3  # nothing assigned yet: the batch goes on
    assert h.m.stats["assigned"] == 3
    effects = h.effects()  # the batch's end: one dispatch, in FIFO order
    # a (its last task assigned before b's) takes its burst of 2, b the third
    assert [(a[0], a[2]) for a in assigned(effects)] == [
        ("#a#d", "t1"),
        ("#a#d", "t2"),
        ("#b#d", "t3"),
    ]
    assert len(of(effects, Kind.ASSIGN)) == 2  # one message per worker
    assert acked(effects) == []  # each assigned at once: every ACK held
    assert h.m.stats["acks_held"] == 3
    h.tick(0.06)
    assert sorted(acked(h.effects())) == ["t1", "t2", "t3"]


def test_batched_other_inputs_see_the_dispatch_of_the_messages_before_them() -> None:
    h = ready_manager(batched=True)
    h.worker("#w#d", capacity=1)
    h.submit("#s#d", "t1", "t2")
    h.disconnect("#w#d")  # settles first: t1 ran there, so it is requeued
    assert h.m.stats["requeued"] == 1
    h.worker("#v#d", capacity=2)
    assert [a[2] for a in assigned(h.effects())] == ["t1", "t1", "t2"]


def test_batched_tasks_waiting_with_no_worker_are_reported_at_the_batch_end() -> None:
    h = ready_manager(batched=True)
    events(h)
    h.submit("#s#d", "t1")
    h.submit("#s#d", "t2")
    assert events(h) == []
    h.effects()
    assert events(h) == [("no_workers", {"queued": 2})]


# --------------------------------------------------------------------------- invariants

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 2), st.integers(1, 4)),
        st.tuples(st.just("worker"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("done"), st.integers(0, 3), st.integers(0, 30)),
        st.tuples(st.just("lose"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 2), st.integers(0, 30)),
        st.tuples(st.just("tick"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("sender_gone"), st.integers(0, 2), st.just(0)),
    ),
    max_size=60,
)


def run_ops(
    ops: list[tuple[str, int, int]], me: str = ME, *, batched: bool = False, every: int = 1
) -> tuple[H, list[Effect]]:
    """Apply ``ops``; take the effects (a batch's end) after every ``every`` of them."""
    h = H(me, max_attempts=2, batched=batched)
    out = h.start()
    counter = 0
    for i, (op, a, b) in enumerate(ops):
        if op == "submit":
            # calls of two functions, with priorities
            entries = [
                Submit(f"s{a}.{n}", "fg"[n % 2], b"args", 2000 if a == 2 else None)._replace(
                    priority=n % 10
                )
                for n in range(counter, counter + b)
            ]
            counter += b
            h.msg(f"#s{a}#d", Kind.SUBMIT, entries)
        elif op == "worker":
            # capacities never shrink here; the functions served change with b
            session = f"#w{a}#d"
            if session not in h.members[G.workers]:
                h.join(G.workers, session)
            functions = (None, ("f",), ("g",), ("g", "f"))[b % 4]
            h.msg(session, Kind.REGISTER, [Register("w", a % 3 + 1, (), functions=functions)])
        elif op == "done":
            w = h.m._workers.get((f"#w{a}#d", "w"))
            if w is not None and w.held:
                held = list(w.held)
                h.done(w.session, "w", held[b % len(held)], f"s0.{b}")
        elif op == "lose":
            if f"#w{a}#d" in h.members[G.workers]:
                h.disconnect(f"#w{a}#d")
        elif op == "cancel":
            h.msg(f"#s{a}#d", Kind.CANCEL, [Cancel(f"s{a}.{b}")])
        elif op == "tick":
            h.tick(a * 0.7)
        elif op == "sender_gone":
            if f"#s{a}#d" not in h.members[G.senders]:
                h.join(G.senders, f"#s{a}#d")
            h.disconnect(f"#s{a}#d")
        if (i + 1) % every and i + 1 < len(ops):
            continue
        effects = h.effects()
        # (what a worker serves now: in a batch of several inputs it may have registered
        # again, serving other functions, after an assignment)
        for e in effects if every == 1 else ():
            for a_ in e.entries if e.kind is Kind.ASSIGN else ():
                w = h.m._workers.get((e.groups[0], a_.worker_id))
                served = None if w is None else w.functions
                assert served is None or a_.func in served, "a worker got a function it lacks"
        out.extend(effects)
    return h, out


@settings(max_examples=150, deadline=None, derandomize=True)
@given(OPS)
def test_invariants_hold_for_any_sequence(ops: list[tuple[str, int, int]]) -> None:
    check_invariants(*run_ops(ops))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(OPS, st.integers(1, 8))
def test_invariants_hold_when_dispatch_waits_for_the_batch_end(
    ops: list[tuple[str, int, int]], every: int
) -> None:
    check_invariants(*run_ops(ops, batched=True, every=every))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(OPS)
def test_batched_dispatch_decides_as_unbatched_when_each_input_is_a_batch(
    ops: list[tuple[str, int, int]],
) -> None:
    assert run_ops(ops, batched=True)[1] == run_ops(ops)[1]


def check_invariants(h: H, effects: list[Effect]) -> None:
    m = h.m
    # bookkeeping adds up
    assert m.queued == len(m.queued_ids())
    assert m.queued + m.running == len(m._tasks)
    # no worker ever holds more than its capacity (credits)
    for _key, capacity, held in m.workers():
        assert held <= capacity
    running_at: dict[str, Any] = {}
    for w in m._workers.values():
        for tid, t in w.held.items():
            if t is not None:
                assert t.worker is w
                assert tid not in running_at, "a task runs at two workers"
                running_at[tid] = w
    # no task is both queued and running
    assert not set(m.queued_ids()) & set(running_at)
    # the active manager's index of workers with credit is exact: every worker with
    # credit is filed in its crew, once, and the count of those filed is right
    credit = m._credit
    filed = [w for c in credit.crews.values() for pool in (c.free, c.extra) for w in pool.values()]
    assert credit.open == len(filed) == len({w.key for w in filed})
    for w in m._workers.values():
        has_credit = not w.drained and len(w.held) + w.pending < w.capacity
        assert has_credit == (w in filed), (w.key, has_credit)
        assert w.crew is credit.crews[w.functions]
    # a queued task's function is parked only if no worker that serves it has credit
    for func in m._ready.parked:
        assert not any(c.free or c.extra for c in credit.crews_for(func))
    # every ASSIGN went to a registered session with credit at the time: replay check
    for e in effects:
        if e.kind is Kind.ASSIGN:
            for a in e.entries:
                assert a.attempt <= 2


@settings(max_examples=60, deadline=None, derandomize=True)
@given(OPS)
def test_identical_ordered_input_gives_identical_decisions(ops: list[tuple[str, int, int]]) -> None:
    _, first = run_ops(ops)
    _, second = run_ops(ops)
    assert first == second
    assert run_ops(ops, batched=True, every=3)[1] == run_ops(ops, batched=True, every=3)[1]


DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import hashlib, random, sys
    sys.path.insert(0, {tests!r})
    from test_queue_state import run_ops
    rng = random.Random(7)
    kinds = ["submit", "worker", "done", "lose", "cancel", "tick", "sender_gone"]
    ops = [(rng.choice(kinds), rng.randrange(3), rng.randrange(1, 5)) for _ in range(400)]
    _, effects = run_ops(ops)
    print(hashlib.sha256(repr(effects).encode()).hexdigest())
    """
)


def test_decisions_do_not_depend_on_hash_randomisation() -> None:
    # Managers in different processes have different string hash seeds; they must
    # still decide identically (no iteration over sets in the brain).
    here = os.path.dirname(os.path.abspath(__file__))
    script = DETERMINISM_SCRIPT.format(tests=here)
    digests = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(here), env.get("PYTHONPATH", "")])
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
    assert len(next(iter(digests))) == 64


# --------------------------------------------------------------------------- memory


def bytes_per_queued_task(h: H, func: Any, priority: Any, n: int = 20_000) -> float:
    """What the manager keeps per queued task of 100-byte arguments: ``n`` tasks, task
    ``i`` of function ``func(i)`` and priority ``priority(i)``, in SUBMITs of 500."""
    queued = h.m.queued
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for j in range(0, n, 500):
            # decoded the way the service gets them: fresh strings and bytes per task
            entries = [
                Submit(f"{'ab' * 8}.{i}", func(i), os.urandom(100), None)._replace(
                    priority=priority(i)
                )
                for i in range(j, j + 500)
            ]
            h.msg("#sender#d", Kind.SUBMIT, entries)
            h.effects()
        del entries  # count what the manager keeps, not the last decoded message
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert h.m.queued == queued + n
    return (after - before) / n


def test_a_queued_100_byte_task_costs_less_than_1kb() -> None:
    per_task = bytes_per_queued_task(ready_manager(), lambda _: "resize", lambda _: None)
    assert per_task < 1024, per_task


def test_queued_tasks_of_several_functions_and_priorities_cost_less_than_1kb() -> None:
    """The same with routing and priorities in play: ten functions that the one
    registered worker does not serve (their tasks wait aside), every priority level."""
    h = ready_manager()
    h.join(G.workers, "#w#d")
    h.msg("#w#d", Kind.REGISTER, [Register("w", 1, (), functions=("other",))])
    per_task = bytes_per_queued_task(h, lambda i: f"resize{i % 10}", lambda i: i % 10)
    assert per_task < 1024, per_task
    assert len(h.m._ready.parked) == 10


def test_counters_have_their_documented_names() -> None:
    names = set(QueueManager(G, ME).stats)
    assert {"submitted", "assigned", "completed", "requeued", "expired", "cancelled"} <= names


# --------------------------------------------------------------------------- events


def events(h: H) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, e.fields) for e in h.m.take_events()]


def test_lifecycle_events_for_the_log() -> None:
    """What the manager service logs: activation, workers coming, draining, leaving
    and being lost with what they held, tasks failing for good."""
    h = H(max_attempts=1)
    h.start()
    assert events(h) == [("activated", {"hot": False, "tasks": 0, "awaiting": 0})]
    h.worker("#w#d", "w", capacity=2)
    h.worker("#w#d", "w", capacity=2)  # a re-registration is no news
    h.worker("#v#d", "v", capacity=1)
    everything = "every function"
    assert events(h) == [
        ("worker_registered", {"worker": "w@#w#d", "capacity": 2, "serves": everything}),
        ("worker_registered", {"worker": "v@#v#d", "capacity": 1, "serves": everything}),
    ]
    h.join(G.workers, "#u#d")
    h.msg("#u#d", Kind.REGISTER, [Register("u", 1, (), functions=("g", "f"))])
    assert events(h) == [
        ("worker_registered", {"worker": "u@#u#d", "capacity": 1, "serves": "f, g"}),
    ]
    h.msg("#u#d", Kind.RETIRE, [Retire("u")])
    assert [name for name, _ in events(h)] == ["worker_retired"]
    h.submit("#s#d", "t1", "t2", "t3")
    h.effects()
    h.msg("#v#d", Kind.REGISTER, [Register("v", 0, ("t2",))])  # drains
    h.disconnect("#w#d")  # held t1 (and t3): max_attempts 1 -> t1 fails
    got = events(h)
    assert got[0] == ("worker_draining", {"worker": "v@#v#d", "held": 1})
    assert got[1] == ("worker_lost", {"worker": "w@#w#d", "requeued": 2})
    failed = [f for name, f in got if name == "task_failed"]
    assert [f["task_id"] for f in failed] == ["t1", "t3"]
    assert failed[0] == {
        "task_id": "t1",
        "func": "f",
        "worker": "w@#w#d",
        "reason": "worker lost 1 times (max_attempts)",
    }
    h.msg("#v#d", Kind.RETIRE, [Retire("v")])
    assert [name for name, _ in events(h)] == ["worker_retired", "task_failed"]  # t2, 1 run


def test_tasks_waiting_with_no_worker_are_reported_once_until_one_registers() -> None:
    h = ready_manager()
    events(h)
    h.submit("#s#d", "t1")
    h.submit("#s#d", "t2")
    assert events(h) == [("no_workers", {"queued": 1})]
    h.worker("#w#d")
    h.done("#w#d", "w", "t1")
    h.disconnect("#w#d")
    events(h)
    h.submit("#s#d", "t3")
    assert ("no_workers", {"queued": 2}) in events(h)


def test_refused_tasks_and_the_limit_are_reported() -> None:
    h = ready_manager(max_queued=1)
    events(h)
    h.submit("#s#d", "t1", "t2", "t3")
    assert ("queue_full", {"refused": 2, "limit": 1}) in events(h)
    failed = [e for _, es in of(h.effects(), Kind.FAILED) for e in es]
    assert "queue q holds 1 tasks, its manager's limit (max_queued)" in failed[0].message


def test_a_standby_says_who_came_first_and_a_step_down_what_it_handed_back() -> None:
    first, second = H("#m1#d"), H("#m2#d")
    first.start()
    for h in (first, second):
        h.members[G.manager] = ["#m1#d"]
        h.members[G.workers] = ["#m1#d"]
    for group in (G.workers, G.senders, G.manager):
        for h in (first, second):
            h.join(group, "#m2#d")
    assert ("standby", {"older": "#m1#d"}) in events(second)
    first.submit("#s#d", "t1", "t2")
    events(first)
    first.join(G.manager, "#m0#d")  # not older: nothing changes
    assert events(first) == []
    second.gone(G.manager, "#m1#d")  # (still in Q-wrk: asked to re-register, as workers are)
    assert events(second) == [("activated", {"hot": False, "tasks": 0, "awaiting": 1})]


def test_acks_say_how_many_workers_take_tasks() -> None:
    h = ready_manager()
    h.submit("#s#d", "t1")
    assert [tuple(e) for _, es in of(h.effects(), Kind.ACK) for e in es] == [("t1", 0)]
    h.worker("#w#d", capacity=1)
    h.worker("#v#d", "v", capacity=0)  # draining: takes nothing
    h.submit("#s#d", "t2")
    assert [tuple(e) for _, es in of(h.effects(), Kind.ACK) for e in es] == [("t2", 1)]
