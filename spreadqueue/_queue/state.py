"""The queue manager's brain: a pure, deterministic state machine.

:class:`QueueManager` does no I/O and reads no clock: every input carries ``now`` (a
float in seconds from whatever clock the caller uses) and every decision depends only
on the ordered inputs. Several managers fed the same totally ordered Spread stream
therefore decide the same things (the basis for hot standby). Outputs are
:class:`Effect` s, batched per destination and kind, taken with
:meth:`QueueManager.take_effects`.

Iteration order never depends on hashing: every collection that is iterated to
produce output is a dict (insertion ordered) or a deque.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .._spread.wire import CAUSED_BY_NETWORK, MembershipMessage, split_private_group
from .interfaces import IAssignmentPolicy
from .messages import Ack, Assign, Cancel, Failed, Kind, Reason, Status, new_entry
from .names import QueueGroups
from .policy import LeastRecentlyUsed
from .stats import OUTCOMES, FunctionStats

__all__ = ["Effect", "Event", "QueueManager", "WorkerKey"]

#: A worker as the manager knows it: (its session's private group, its worker id).
WorkerKey = tuple[str, str]

_FUNC_CACHE_MAX: Final = 4096
#: Senders remembered as "acknowledged once" (see QueueManager.ack_delay); past this
#: many the memory is cleared, which only makes the next acknowledgements immediate.
_ACKED_SENDERS_MAX: Final = 10_000
#: Hold an acknowledgement back only if its sender waits 4 times this or more.
_MIN_ACK_HOLD: Final = 0.025


def _due(item: tuple[float, Any]) -> float:
    return item[0]


@dataclass(frozen=True, slots=True)
class Effect:
    """Send ``entries`` of ``kind`` to ``groups`` (one Spread message or more)."""

    groups: tuple[str, ...]
    kind: Kind
    entries: list[Any]


@dataclass(frozen=True, slots=True)
class Event:
    """Something an operator wants in the log: ``name`` and its fields.

    ``activated``, ``standby`` (``active``: the active manager), ``stepped_down``
    (``resubmitted``); ``worker_registered`` (``worker``, ``capacity``),
    ``worker_draining``, ``worker_retired`` and ``worker_lost`` (``worker``,
    ``requeued``); ``task_failed`` (``task_id``, ``func``, ``worker``, ``reason``);
    ``queue_full`` (``refused``, ``limit``); ``no_workers`` (``queued``: tasks wait and
    no worker is registered).
    """

    name: str
    fields: dict[str, Any]


def _name(w: _Worker | None) -> str:
    """How logs name a worker: its id at its session."""
    return "?" if w is None else f"{w.worker_id}@{w.session}"


def _private_name(session: str) -> str:
    """The name part of a private group ``#name#daemon`` (the session itself if not one)."""
    parts = split_private_group(session.encode())
    return parts[0].decode() if parts else session


class _Task:
    """A task the manager knows: queued (``worker is None``) or running at ``worker``."""

    __slots__ = (
        "args",
        "assigned_at",
        "attempt",
        "cancelled",
        "deadline",
        "func",
        "queued_at",
        "reply_to",
        "task_id",
        "worker",
    )

    def __init__(
        self,
        task_id: str,
        func: str,
        args: bytes,
        reply_to: str,
        deadline: float | None,
        queued_at: float,
    ) -> None:
        self.task_id = task_id
        self.func = func
        self.args = args
        self.reply_to = reply_to
        self.deadline = deadline
        self.queued_at = queued_at
        self.assigned_at = queued_at
        self.attempt = 0
        self.worker: _Worker | None = None
        #: None, or the outcome the task counts as once its cancellation is through
        #: ("cancelled", or "timed_out" when its sender's timeout ran out)
        self.cancelled: str | None = None


class _Worker:
    """A registered worker. ``held`` maps the task ids it holds to their task, or to
    None for tasks this manager knows nothing about (held since before a manager
    change); every held task uses one credit. Of its ``capacity``, ``slots`` run at
    once; the rest is prefetch (tasks it keeps to start as slots free up)."""

    __slots__ = (
        "burst",
        "capacity",
        "drained",
        "held",
        "idle_since",
        "key",
        "registered_at",
        "session",
        "slots",
        "worker_id",
    )

    def __init__(self, session: str, worker_id: str, now: float) -> None:
        self.session = session
        self.worker_id = worker_id
        self.key: WorkerKey = (session, worker_id)
        self.capacity = 0
        self.slots = 0
        self.burst = 1
        self.held: dict[str, _Task | None] = {}
        self.registered_at = now
        #: when it last held nothing (None while it holds tasks)
        self.idle_since: float | None = now
        #: an operator drained it: it gets no new task
        self.drained = False


#: Workers remembered as "ever registered" (for the status count), at most.
_EVER_MAX: Final = 100_000
#: Failures kept for status (the most recent).
_RECENT_FAILURES: Final = 20
#: Functions with stats of their own, at most; the others share "(other)".
_FUNCTIONS_MAX: Final = 256
_OK: Final = int(Status.OK)
_OUTCOMES: Final = {int(Status.CANCELLED): "cancelled"}

_STATS: Final = (
    "submitted",
    "duplicate_submits",
    "id_conflicts",
    "assigned",
    "completed",
    "cancelled",
    "expired",
    "requeued",
    "worker_lost_failures",
    "released",
    "unknown_release",
    "acks_held",
    "acks_saved",
    "queue_full",
    "dropped_sender_gone",
    "resubmit_requests",
    "workers_lost",
    "unknown_done",
    "unknown_session_registers",
    "ignored_standby",
    "activations",
)


class QueueManager:
    """The manager of one queue, as a pure state machine.

    ``me`` is the private group of the manager's own session. Feed it every
    membership notice of the queue's three groups (:meth:`on_membership`), every
    queue message delivered to ``Q-mgr`` (:meth:`on_message`) and, now and then,
    the time (:meth:`tick`); send what :meth:`take_effects` returns.

    Exactly one manager of a queue is *active* (it queues, acknowledges and
    dispatches); the others stand by and ignore traffic. The active one is the
    longest-standing member of ``Q-mgr``: every manager works that out the same way
    from the membership notices it sees (docs/protocol.md, "Managers").

    Dispatching prefers workers with a free slot (``slots``) over workers that would
    only prefetch the task; among equals the least recently used one (or the
    ``policy``'s choice among those candidates). A worker chosen takes up to its
    ``burst`` tasks in a row (while it keeps a free slot, or, when no worker has one,
    credit).

    ``ack_delay``: a SUBMIT that says how long its sender waits for the ACK
    (``ack_ms``) and that is assigned at once has its ACK held back for up to
    ``min(ack_delay, ack_ms / 4)`` seconds, and never sent when the task is done by
    then: the result is the acknowledgement. The first ACK to each sender is never
    held (the sender learns which manager it depends on). 0 disables holding.
    :meth:`next_wakeup` says when :meth:`tick` has held ACKs to send.
    """

    def __init__(
        self,
        groups: QueueGroups,
        me: str,
        *,
        policy: IAssignmentPolicy | None = None,
        max_attempts: int = 3,
        register_grace: float = 2.0,
        max_queued: int | None = None,
        sweep_interval: float = 1.0,
        ack_delay: float = 0.05,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.groups = groups
        self.me = me
        self._policy: IAssignmentPolicy = policy if policy is not None else LeastRecentlyUsed()
        self._lru = type(self._policy) is LeastRecentlyUsed
        self.max_attempts = max_attempts
        self.register_grace = register_grace
        self.max_queued = max_queued
        self.sweep_interval = sweep_interval
        self.ack_delay = ack_delay
        #: counters (see docs/protocol.md); all start at 0
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)

        # membership as seen in the three groups (ordered: dicts as ordered sets)
        self._mgr_members: dict[str, None] = {}
        self._wrk_members: dict[str, None] = {}
        self._snd_members: dict[str, None] = {}
        self._older: dict[str, None] = {}  # Q-mgr members that joined before us
        self._active = False

        # work (only while active)
        self._tasks: dict[str, _Task] = {}
        self._queue: deque[_Task] = deque()  # may hold stale entries, skipped lazily
        self._queued = 0
        self._workers: dict[WorkerKey, _Worker] = {}
        self._available = 0  # workers with a capacity above 0 (kept as they change)
        self._by_session: dict[str, dict[WorkerKey, _Worker]] = {}
        # workers with credit, LRU first: with a free slot / with prefetch credit only
        self._free: dict[WorkerKey, _Worker] = {}
        self._extra: dict[WorkerKey, _Worker] = {}
        self._foreign: dict[str, _Worker] = {}  # unknown task id -> worker holding it
        self._awaiting: dict[str, None] = {}  # worker sessions not yet re-registered
        self._grace_until = 0.0
        self._next_sweep = 0.0
        self._funcs: dict[str, str] = {}
        # held acknowledgements: (when due, task, hold) in due order
        self._late_acks: deque[tuple[float, _Task]] = deque()
        self._acked_senders: dict[str, None] = {}

        self._out: dict[tuple[tuple[str, ...], Kind], list[Any]] = {}
        self._events: list[Event] = []
        #: an operator paused dispatch: tasks are queued and acknowledged, not assigned
        self.paused = False
        self._functions: dict[str, FunctionStats] = {}
        self._recent_failures: deque[dict[str, Any]] = deque(maxlen=_RECENT_FAILURES)
        self._last_now = 0.0  # the time of the latest input (for what lacks a ``now``)
        self._ever: dict[WorkerKey, None] = {}  # every worker registered (bounded)
        self._standby_for: str | None = None  # the active manager we last said we wait for
        self._said_no_workers = False

    # ------------------------------------------------------------------ introspection

    @property
    def active(self) -> bool:
        """True while this manager is the queue's active manager."""
        return self._active

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return self._queued

    @property
    def running(self) -> int:
        """Tasks assigned to a worker and not yet done."""
        return len(self._tasks) - self._queued

    @property
    def worker_count(self) -> int:
        """Registered workers."""
        return len(self._workers)

    @property
    def available_workers(self) -> int:
        """Registered workers that take tasks (not draining): what ACKs tell senders."""
        return self._available

    def workers(self) -> list[tuple[WorkerKey, int, int]]:
        """``(key, capacity, held)`` of every registered worker, in registration order."""
        return [(w.key, w.capacity, len(w.held)) for w in self._workers.values()]

    def queued_ids(self) -> list[str]:
        """Ids of the queued tasks, head first."""
        tasks = self._tasks
        return [t.task_id for t in self._queue if t.worker is None and tasks.get(t.task_id) is t]

    def take_effects(self) -> list[Effect]:
        """The messages to send now, one Effect per (destination, kind), in order."""
        if not self._out:
            return []
        out = [Effect(groups, kind, entries) for (groups, kind), entries in self._out.items()]
        self._out = {}
        return out

    def take_events(self) -> list[Event]:
        """What happened since the last call that an operator wants to read, in order."""
        events, self._events = self._events, []
        return events

    def _event(self, name: str, **fields: Any) -> None:
        self._events.append(Event(name, fields))

    def _function(self, func: str) -> FunctionStats:
        stats = self._functions.get(func)
        if stats is None:
            if len(self._functions) >= _FUNCTIONS_MAX:
                func = "(other)"
                stats = self._functions.get(func)
            if stats is None:
                stats = self._functions[func] = FunctionStats()
        return stats

    # ------------------------------------------------------------------ control

    def pause(self) -> str:
        """Stop assigning tasks (they are still queued and acknowledged)."""
        was, self.paused = self.paused, True
        return "dispatch was paused already" if was else "dispatch paused"

    def resume(self, now: float) -> str:
        """Assign tasks again."""
        was, self.paused = self.paused, False
        self._dispatch(now)
        return "dispatch resumed" if was else "dispatch was not paused"

    def purge(self) -> str:
        """Drop every queued task (not the running ones): their senders get FAILED."""
        purged = 0
        for t in list(self._tasks.values()):
            if t.worker is None:
                del self._tasks[t.task_id]
                self._cancelled(t, "purged from the queue by an operator")
                purged += 1
        self._queue.clear()
        self._queued = 0
        return f"{purged} queued task(s) purged"

    def cancel_task(self, task_id: str) -> tuple[bool, str]:
        """Cancel one task: a queued one is dropped (its sender gets FAILED), a running
        one is cancelled at its worker (which answers CANCELLED)."""
        t = self._tasks.get(task_id)
        if t is None:
            return False, f"no task {task_id!r} (unknown, or done already)"
        if t.worker is None:
            del self._tasks[task_id]
            self._queued -= 1
            self._cancelled(t, "cancelled by an operator")
            return True, f"task {task_id} ({t.func}) cancelled before it ran"
        if not t.cancelled:
            t.cancelled = "cancelled"
            self._emit((t.worker.session,), Kind.CANCEL, Cancel(t.task_id))
        return True, f"task {task_id} ({t.func}) is being cancelled at {_name(t.worker)}"

    def drain(self, target: str, drained: bool = True) -> tuple[bool, str]:
        """Give worker ``target`` ('id@session', or the id, session or private name of
        one worker) no new task (``drained``), or take it back into the rotation."""
        found = [
            w
            for w in self._workers.values()
            if target in (_name(w), w.worker_id, w.session, _private_name(w.session))
        ]
        if len(found) != 1:
            known = ", ".join(_name(w) for w in self._workers.values()) or "none"
            what = "no" if not found else "more than one"
            return False, f"{what} worker matches {target!r} (workers: {known})"
        w = found[0]
        w.drained = drained
        self._update_ready(w)
        if drained:
            return True, f"worker {_name(w)} drains: no new task; {len(w.held)} to finish"
        return True, f"worker {_name(w)} takes tasks again"

    def _cancelled(self, t: _Task, message: str) -> None:
        """Tell the sender its task ``t`` (never assigned) was cancelled, and count it."""
        self._emit((t.reply_to,), Kind.FAILED, Failed(t.task_id, Reason.CANCELLED, message))
        self._function(t.func).count("cancelled")

    # ------------------------------------------------------------------ status

    def status(self, now: float) -> dict[str, Any]:
        """What this manager knows, as plain data (docs/protocol.md, "Status")."""
        oldest = None
        for t in self._queue:
            if t.worker is None and self._tasks.get(t.task_id) is t:
                oldest = now - t.queued_at
                break
        workers = []
        for w in self._workers.values():
            workers.append(
                {
                    "worker": _name(w),
                    "session": w.session,
                    "capacity": w.capacity,
                    "slots": w.slots,
                    "held": len(w.held),
                    "drained": w.drained,
                    "registered_for": now - w.registered_at,
                    "idle_for": None if w.idle_since is None else now - w.idle_since,
                }
            )
        # The active manager knows the others stand by; a standby knows only itself.
        other = "standby" if self._active else "unknown"
        me = "active" if self._active else "standby"
        managers = [
            {"manager": m, "role": me if m == self.me else other} for m in self._mgr_members
        ]
        return {
            "queue": self.groups.queue,
            "manager": self.me,
            "active": self._active,
            "paused": self.paused,
            "depth": self._queued,
            "in_flight": self.running,
            "oldest_queued_for": oldest,
            "max_queued": self.max_queued,
            "workers": workers,
            "workers_ever": len(self._ever),
            "senders": sum(1 for s in self._snd_members if s not in self._mgr_members),
            "managers": managers,
            "workers_lost": self.stats["workers_lost"],
            "counts": self._counts(),
            "functions": {f: st.summary() for f, st in self._functions.items()},
            "recent_failures": [
                {**f, "ago": now - f["at"]} for f in reversed(self._recent_failures)
            ],
        }

    def _counts(self) -> dict[str, int]:
        """Tasks by how they ended (the sums of the per-function outcomes), submitted
        and redelivered."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for st in self._functions.values():
            for outcome, n in st.outcomes.items():
                counts[outcome] = counts.get(outcome, 0) + n
        counts["submitted"] = self.stats["submitted"]
        counts["redelivered"] = self.stats["requeued"]
        return counts

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` next has held acknowledgements to send (None: never)."""
        late = self._late_acks
        return late[0][0] if late and self._active else None

    # ------------------------------------------------------------------ inputs

    def on_membership(self, now: float, msg: MembershipMessage) -> None:
        """A membership notice of one of the queue's groups (others are ignored)."""
        self._last_now = now
        if msg.is_transition:
            # The regular notice that follows says who is left; act on that one.
            return
        group = msg.group
        if group == self.groups.manager:
            self._manager_view(now, msg)
        elif group == self.groups.workers:
            self._worker_view(now, msg)
        elif group == self.groups.senders:
            self._sender_view(now, msg)

    def on_message(self, now: float, sender: str, kind: Kind, entries: Sequence[Any]) -> None:
        """A decoded queue message delivered to ``Q-mgr`` from session ``sender``.

        Kinds other than SUBMIT, CANCEL, REGISTER, DONE, RESULT, RETIRE and RELEASE
        are ignored. A standby manager ignores everything.
        """
        self._last_now = now
        if not self._active:
            self.stats["ignored_standby"] += 1
            return
        if kind is Kind.SUBMIT:
            hold = self._submit(now, sender, entries)
            self._dispatch(now)
            if hold:
                self._hold_acks(now, sender, hold)
            self._no_workers_check()
            return
        if kind is Kind.DONE:
            for e in entries:
                self._done(now, sender, e.worker_id, e.task_id, "done")
        elif kind is Kind.RESULT:
            for e in entries:
                if e.final:
                    status = e.status
                    if status == _OK:
                        self._done(now, sender, e.worker_id, e.task_id, "done")
                        continue
                    outcome = _OUTCOMES.get(status, "failed")
                    if outcome == "failed":
                        self._failed_at(now, sender, e)
                    self._done(now, sender, e.worker_id, e.task_id, outcome)
        elif kind is Kind.CANCEL:
            self._cancel(sender, entries)
        elif kind is Kind.REGISTER:
            self._register(now, sender, entries)
        elif kind is Kind.RETIRE:
            self._retire(sender, entries)
        elif kind is Kind.RELEASE:
            self._release(sender, entries)
        else:
            return
        self._dispatch(now)

    def tick(self, now: float) -> None:
        """Let time pass: end the re-registration grace, drop expired queued tasks,
        send the held acknowledgements that are due."""
        self._last_now = now
        if not self._active:
            return
        late = self._late_acks
        if late and late[0][0] <= now:
            self._send_late_acks(now)
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval
            self._sweep(now)
        self._dispatch(now)

    # ------------------------------------------------------------------ membership

    @staticmethod
    def _diff(
        old: dict[str, None], msg: MembershipMessage
    ) -> tuple[dict[str, None], list[str], list[str]]:
        if msg.is_self_leave:
            return {}, list(old), []
        members = dict.fromkeys(msg.members)
        lost = [m for m in old if m not in members]
        new = [m for m in members if m not in old]
        return members, lost, new

    def _manager_view(self, now: float, msg: MembershipMessage) -> None:
        members, lost, new = self._diff(self._mgr_members, msg)
        self._mgr_members = members
        me = self.me
        if me not in members:
            self._older = {}
        elif me in new:
            # Our own join: everyone already there has been there longer.
            self._older = {m: None for m in members if m != me}
        else:
            for m in lost:
                self._older.pop(m, None)
            if new and msg.cause == CAUSED_BY_NETWORK:
                # A merge: the vs-sets come in the same order at every member, so
                # "members of an earlier set are older" is a rule all sides agree on.
                position = {m: i for i, vs in enumerate(msg.vs_sets) for m in vs}
                mine = msg.local_vs_set
                for m in new:
                    if position.get(m, mine) < mine:
                        self._older[m] = None
        self._update_activity(now)

    def _worker_view(self, now: float, msg: MembershipMessage) -> None:
        members, lost, new = self._diff(self._wrk_members, msg)
        self._wrk_members = members
        self._update_activity(now)
        if not self._active:
            return
        lost_tasks: list[_Task] = []
        for session in lost:
            self._awaiting.pop(session, None)
            lost_tasks.extend(self._lose_session(session))
        self._requeue(lost_tasks)
        if msg.cause == CAUSED_BY_NETWORK and any(m != self.me for m in new):
            # Sessions that come with a merge never registered with us: ask them.
            self._emit((self.groups.workers,), Kind.HELLO, None)
        self._dispatch(now)

    def _sender_view(self, now: float, msg: MembershipMessage) -> None:
        members, lost, _new = self._diff(self._snd_members, msg)
        self._snd_members = members
        self._update_activity(now)
        if not (self._active and lost):
            return
        for s in lost:
            self._acked_senders.pop(s, None)
        gone = frozenset(lost)
        for t in list(self._tasks.values()):
            if t.reply_to not in gone:
                continue
            if t.worker is None:
                # Nobody will read the answer: do not run it.
                del self._tasks[t.task_id]
                self._queued -= 1
                self.stats["dropped_sender_gone"] += 1
                self._function(t.func).count("dropped")
            elif not t.cancelled:
                t.cancelled = "cancelled"
                self._emit((t.worker.session,), Kind.CANCEL, Cancel(t.task_id))

    def _update_activity(self, now: float) -> None:
        """Active = the oldest member of Q-mgr, and a member of all three groups.

        Seniority decides between managers; membership of Q-wrk and Q-snd only delays
        our own start until we can see workers and senders come and go (senders
        resend unacknowledged submits when they see a manager join Q-snd).
        """
        me = self.me
        self._set_active(
            now,
            me in self._mgr_members
            and me in self._wrk_members
            and me in self._snd_members
            and not self._older,
        )
        if self._older and me in self._mgr_members:
            older = ", ".join(self._older)
            if older != self._standby_for:
                self._standby_for = older
                self._event("standby", older=older)
        else:
            self._standby_for = None

    def _set_active(self, now: float, active: bool) -> None:
        if active == self._active:
            return
        self._active = active
        if active:
            self.stats["activations"] += 1
            self._said_no_workers = False
            me, managers = self.me, self._mgr_members
            self._awaiting = {s: None for s in self._wrk_members if s != me and s not in managers}
            self._grace_until = now + self.register_grace
            self._next_sweep = now + self.sweep_interval
            # Workers answer HELLO with REGISTER (and the tasks they still hold).
            self._emit((self.groups.workers,), Kind.HELLO, None)
            self._event("activated", awaiting=len(self._awaiting))
            return
        resubmitted = self.stats["resubmit_requests"]
        # Stepping down: queued tasks go back to their senders, who resubmit them to
        # the manager that is active now. Running tasks answer their senders anyway.
        for t in self._queue:
            if t.worker is None and self._tasks.get(t.task_id) is t:
                self._emit(
                    (t.reply_to,),
                    Kind.FAILED,
                    Failed(t.task_id, Reason.RESUBMIT, "queue manager stepped down"),
                )
                self.stats["resubmit_requests"] += 1
        self._tasks.clear()
        self._queue.clear()
        self._queued = 0
        self._workers.clear()
        self._available = 0
        self._by_session.clear()
        self._free.clear()
        self._extra.clear()
        self._foreign.clear()
        self._awaiting.clear()
        self._late_acks.clear()
        self._acked_senders.clear()
        self._event("stepped_down", resubmitted=self.stats["resubmit_requests"] - resubmitted)

    # ------------------------------------------------------------------ messages

    def _submit(
        self, now: float, sender: str, entries: Iterable[Any]
    ) -> list[tuple[_Task, float]] | None:
        """Queue the tasks, acknowledge them; return those whose ACK may be held
        back if they are assigned at once (with how long), or None."""
        acks: list[Ack] = []
        hold: list[tuple[_Task, float]] | None = None
        refused = 0
        workers = self.available_workers
        may_hold = self.ack_delay > 0 and sender in self._acked_senders
        tasks = self._tasks
        for e in entries:
            tid = e.task_id
            known = tasks.get(tid)
            if known is not None:
                if known.reply_to == sender:
                    # A resubmission (after a manager change) of what we have: ack again.
                    acks.append(new_entry(Ack, (tid, workers)))
                    self.stats["duplicate_submits"] += 1
                else:
                    self.stats["id_conflicts"] += 1
                continue
            owner = self._foreign.pop(tid, None)
            if owner is None and self.max_queued is not None and self._queued >= self.max_queued:
                self._emit(
                    (sender,),
                    Kind.FAILED,
                    Failed(
                        tid,
                        Reason.QUEUE_FULL,
                        f"queue {self.groups.queue} holds {self._queued} tasks, its "
                        f"manager's limit (max_queued)",
                    ),
                )
                self.stats["queue_full"] += 1
                self._function(e.func).count("refused")
                refused += 1
                continue
            func = self._funcs.get(e.func)
            if func is None:
                func = e.func
                if len(self._funcs) < _FUNC_CACHE_MAX:
                    self._funcs[func] = func
            deadline = None if e.timeout_ms is None else now + e.timeout_ms / 1000.0
            t = _Task(tid, func, e.args, sender, deadline, now)
            tasks[tid] = t
            self.stats["submitted"] += 1
            if owner is not None:
                # A worker told us it already runs this task (it was assigned by the
                # manager before us): record it there instead of running it twice.
                t.worker = owner
                t.attempt = 1
                owner.held[tid] = t
            else:
                self._queue.append(t)
                self._queued += 1
                if may_hold and e.ack_ms is not None:
                    delay = min(self.ack_delay, e.ack_ms / 4000.0)
                    if delay >= _MIN_ACK_HOLD:
                        if hold is None:
                            hold = []
                        hold.append((t, delay))
                        continue
            acks.append(new_entry(Ack, (tid, workers)))
        if acks:
            self._emit_all((sender,), Kind.ACK, acks)
            acked = self._acked_senders
            if sender not in acked:
                if len(acked) >= _ACKED_SENDERS_MAX:
                    acked.clear()
                acked[sender] = None
        if refused:
            self._event("queue_full", refused=refused, limit=self.max_queued)
        return hold

    def _hold_acks(self, now: float, sender: str, hold: list[tuple[_Task, float]]) -> None:
        """After dispatching: hold back the ACKs of the tasks now running somewhere
        (their results will do), send those of the tasks still queued."""
        acks: list[Ack] = []
        workers = self.available_workers
        late = self._late_acks
        last = late[-1][0] if late else 0.0
        ordered = True
        for t, delay in hold:
            if t.worker is not None:
                due = now + delay
                if due < last:
                    ordered = False
                last = due
                late.append((due, t))
            else:
                acks.append(new_entry(Ack, (t.task_id, workers)))
        self.stats["acks_held"] += len(hold) - len(acks)
        if not ordered:
            # Senders wait for ACKs for different times: keep the deque in due order.
            self._late_acks = deque(sorted(late, key=_due))
        if acks:
            self._emit_all((sender,), Kind.ACK, acks)

    def _send_late_acks(self, now: float) -> None:
        late, tasks = self._late_acks, self._tasks
        workers = self.available_workers
        saved = 0
        while late and late[0][0] <= now:
            _, t = late.popleft()
            if tasks.get(t.task_id) is t:
                self._emit((t.reply_to,), Kind.ACK, new_entry(Ack, (t.task_id, workers)))
            else:
                saved += 1  # done (or failed, cancelled) first: no ACK needed
        self.stats["acks_saved"] += saved

    def _cancel(self, sender: str, entries: Iterable[Any]) -> None:
        for e in entries:
            t = self._tasks.get(e.task_id)
            if t is None or t.reply_to != sender:
                continue
            if t.worker is None:
                del self._tasks[t.task_id]  # its queue entry is now stale
                self._queued -= 1
                self.stats["cancelled"] += 1
                # A sender that timed out while its task waited: it expired unrun.
                self._function(t.func).count("expired" if e.timed_out else "cancelled")
            elif not t.cancelled:
                t.cancelled = "timed_out" if e.timed_out else "cancelled"
                self._emit((t.worker.session,), Kind.CANCEL, Cancel(t.task_id))

    def _register(self, now: float, session: str, entries: Iterable[Any]) -> None:
        if session not in self._wrk_members:
            # We could not see this session die: refuse to depend on it.
            self.stats["unknown_session_registers"] += 1
            return
        self._awaiting.pop(session, None)
        for e in entries:
            key = (session, e.worker_id)
            w = self._workers.get(key)
            if w is None:
                w = self._workers[key] = _Worker(session, e.worker_id, now)
                self._by_session.setdefault(session, {})[key] = w
                if len(self._ever) < _EVER_MAX:
                    self._ever[key] = None
                self._event("worker_registered", worker=_name(w), capacity=e.capacity)
                self._said_no_workers = False
            elif w.capacity and not e.capacity:
                self._event("worker_draining", worker=_name(w), held=len(w.held))
            self._available += bool(e.capacity) - bool(w.capacity)
            w.capacity = e.capacity
            slots = e.slots if len(e) > 3 else None
            w.slots = e.capacity if slots is None else min(slots, e.capacity)
            burst = e.burst if len(e) > 4 else None
            w.burst = max(1, burst or 1)
            # Only ever add what a worker says it holds: an ASSIGN may cross this
            # REGISTER, so a task missing from ``held`` is not proof it is not there.
            for tid in e.held:
                self._adopt(w, tid)
            self._update_ready(w)

    def _adopt(self, w: _Worker, tid: str) -> None:
        if tid in w.held:
            return
        t = self._tasks.get(tid)
        if t is None:
            w.held[tid] = None
            self._foreign[tid] = w
        elif t.worker is None:
            # Queued here (resubmitted) but already running there: run it once.
            self._queue.remove(t)
            self._queued -= 1
            t.worker = w
            t.attempt += 1
            w.held[tid] = t
        else:
            w.held[tid] = None  # running elsewhere as well: only count the credit

    def _failed_at(self, now: float, session: str, e: Any) -> None:
        """Remember a task the worker answered with an error (for status: the last few)."""
        w = self._workers.get((session, e.worker_id))
        t = None if w is None else w.held.get(e.task_id)
        payload = e.payload
        error = f"{payload[0]}: {payload[1]}" if isinstance(payload, tuple) else f"{payload}"
        self._recent_failures.append(
            {
                "task_id": e.task_id,
                "func": t.func if t is not None else "?",
                "worker": f"{e.worker_id}@{session}",
                "error": error[:500],
                "at": now,
            }
        )

    def _done(self, now: float, session: str, worker_id: str, tid: str, outcome: str) -> None:
        w = self._workers.get((session, worker_id))
        if w is None or tid not in w.held:
            self.stats["unknown_done"] += 1
            return
        t = w.held.pop(tid)
        if t is not None:
            if self._tasks.get(tid) is t:
                del self._tasks[tid]
            self.stats["completed"] += 1
            if outcome == "cancelled":
                # Cancelled by whom? Whoever asked us (the sender says when its timeout
                # ran out), else the worker itself: its expiry at the task's deadline.
                timed_out = t.deadline is not None and now >= t.deadline
                outcome = t.cancelled or ("timed_out" if timed_out else outcome)
            stats = self._function(t.func)
            stats.count(outcome)
            stats.run_time.add(now - t.assigned_at)
        elif self._foreign.get(tid) is w:
            del self._foreign[tid]
        if not w.held:
            w.idle_since = now
        self._update_ready(w)

    def _retire(self, session: str, entries: Iterable[Any]) -> None:
        lost: list[_Task] = []
        for e in entries:
            w = self._workers.get((session, e.worker_id))
            if w is not None:
                held = self._remove_worker(w)
                lost.extend(held)
                self._event("worker_retired", worker=_name(w), requeued=len(held))
        self._requeue(lost)

    def _release(self, session: str, entries: Iterable[Any]) -> None:
        """Tasks a worker hands back unstarted: to the head of the queue, and the
        assignment does not count as an attempt. Runs the worker lost (``lost``: its
        handler process died) count, as a lost worker's do."""
        back: list[_Task] = []
        lost: list[_Task] = []
        tasks, foreign = self._tasks, self._foreign
        for e in entries:
            tid = e.task_id
            w = self._workers.get((session, e.worker_id))
            if w is None or tid not in w.held:
                self.stats["unknown_release"] += 1
                continue
            t = w.held.pop(tid)
            if t is None:
                if foreign.get(tid) is w:
                    del foreign[tid]
            elif tasks.get(tid) is t:
                if e.lost is True:
                    lost.append(t)
                    self._event("task_run_lost", task_id=tid, func=t.func, worker=_name(w))
                else:
                    t.attempt = max(0, t.attempt - 1)
                    back.append(t)
            self._update_ready(w)
        if lost:
            self._requeue(lost)
        if back:
            self._requeue(back, counted="released")

    # ------------------------------------------------------------------ workers

    def _update_ready(self, w: _Worker) -> None:
        """File ``w`` with the workers that have a free slot, or prefetch credit only,
        or neither. A worker that changes list goes to its end (least recently used
        first); one that stays keeps its place."""
        n, key = len(w.held), w.key
        if w.drained:
            self._free.pop(key, None)
            self._extra.pop(key, None)
        elif n < w.slots:
            if key not in self._free:
                self._extra.pop(key, None)
                self._free[key] = w
        elif n < w.capacity:
            if key not in self._extra:
                self._free.pop(key, None)
                self._extra[key] = w
        else:
            self._free.pop(key, None)
            self._extra.pop(key, None)

    def _lose_session(self, session: str) -> list[_Task]:
        workers = self._by_session.get(session)
        if not workers:
            return []
        lost: list[_Task] = []
        for w in list(workers.values()):
            held = self._remove_worker(w)
            lost.extend(held)
            self.stats["workers_lost"] += 1
            self._event("worker_lost", worker=_name(w), requeued=len(held))
        return lost

    def _remove_worker(self, w: _Worker) -> list[_Task]:
        del self._workers[w.key]
        self._available -= bool(w.capacity)
        self._free.pop(w.key, None)
        self._extra.pop(w.key, None)
        by_session = self._by_session.get(w.session)
        if by_session is not None:
            by_session.pop(w.key, None)
            if not by_session:
                del self._by_session[w.session]
        out: list[_Task] = []
        for tid, t in w.held.items():
            if t is None:
                if self._foreign.get(tid) is w:
                    del self._foreign[tid]
            elif self._tasks.get(tid) is t:
                out.append(t)
        w.held.clear()
        return out

    def _requeue(self, lost: list[_Task], counted: str = "requeued") -> None:
        """Put tasks of lost workers back at the head of the queue, in order."""
        head: list[_Task] = []
        for t in lost:
            worker, t.worker = t.worker, None
            if t.cancelled:
                del self._tasks[t.task_id]
                self.stats["cancelled"] += 1
                self._function(t.func).count(t.cancelled)
            elif t.attempt >= self.max_attempts:
                del self._tasks[t.task_id]
                self._function(t.func).count("worker_lost")
                self._recent_failures.append(
                    {
                        "task_id": t.task_id,
                        "func": t.func,
                        "worker": _name(worker),
                        "error": f"worker lost {t.attempt} times (max_attempts)",
                        "at": self._last_now,
                    }
                )
                self._event(
                    "task_failed",
                    task_id=t.task_id,
                    func=t.func,
                    worker=_name(worker),
                    reason=f"worker lost {t.attempt} times (max_attempts)",
                )
                self._emit(
                    (t.reply_to,),
                    Kind.FAILED,
                    Failed(
                        t.task_id,
                        Reason.WORKER_LOST,
                        f"worker lost while running the task ({t.attempt} attempts)",
                    ),
                )
                self.stats["worker_lost_failures"] += 1
            else:
                head.append(t)
        if head:
            self._queue.extendleft(reversed(head))
            self._queued += len(head)
            self.stats[counted] += len(head)

    def _no_workers_check(self) -> None:
        """Say once (until a worker registers) that tasks wait and no worker can run them."""
        if self._queued and not self._said_no_workers and not self._workers:
            self._said_no_workers = True
            self._event("no_workers", queued=self._queued)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, now: float) -> None:
        free, extra = self._free, self._extra
        if not (self._active and self._queued and (free or extra)) or self.paused:
            return
        if self._awaiting:
            if now < self._grace_until:
                # After a takeover, wait for the workers to say what they still run,
                # so resubmitted tasks are not started twice.
                return
            self._awaiting.clear()
        queue, tasks, out = self._queue, self._tasks, self._out
        functions = self._functions
        lru = self._lru
        assigned = 0
        chosen: _Worker | None = None  # the worker taking a burst, and how many more
        more = 0
        while self._queued and (free or extra) and queue:
            t = queue.popleft()
            if t.worker is not None or tasks.get(t.task_id) is not t:
                continue  # cancelled or adopted since it was queued
            self._queued -= 1
            deadline = t.deadline
            if deadline is not None and deadline <= now:
                del tasks[t.task_id]
                self.stats["expired"] += 1
                self._function(t.func).count("expired")
                continue
            # A worker with a free slot starts the task now; prefetch credit only
            # when every slot is busy.
            pool = free if free else extra
            if more and chosen is not None and chosen.key in pool:
                key = chosen.key  # the rest of its burst
                more -= 1
            elif lru:
                key = next(iter(pool))
            else:
                key = self._policy.choose(list(pool))
                if key not in pool:
                    raise ValueError(f"assignment policy chose {key!r}, not a candidate")
            w = pool.pop(key)
            if w is not chosen:
                chosen, more = w, w.burst - 1
            t.worker = w
            t.attempt += 1
            t.assigned_at = now
            w.idle_since = None
            stats = functions.get(t.func)
            if stats is None:
                stats = self._function(t.func)
            stats.wait.add(now - t.queued_at)
            held = w.held
            held[t.task_id] = t
            n = len(held)
            if n < w.slots:
                free[key] = w  # back at the end: least recently used first
            elif n < w.capacity:
                extra[key] = w
            remaining = None if deadline is None else max(1, math.ceil((deadline - now) * 1000))
            entry = new_entry(
                Assign, (w.worker_id, t.task_id, t.func, t.args, t.reply_to, t.attempt, remaining)
            )
            okey = ((w.session,), Kind.ASSIGN)
            batch = out.get(okey)
            if batch is None:
                out[okey] = [entry]
            else:
                batch.append(entry)
            assigned += 1
        self.stats["assigned"] += assigned
        if len(queue) > 2 * self._queued + 1024:
            # Too many stale entries (cancelled tasks): rebuild the deque.
            self._queue = deque(t for t in queue if t.worker is None and tasks.get(t.task_id) is t)

    def _sweep(self, now: float) -> None:
        """Drop queued tasks whose deadline passed: their sender gave up on them."""
        tasks = self._tasks
        expired = [
            t
            for t in tasks.values()
            if t.worker is None and t.deadline is not None and t.deadline <= now
        ]
        for t in expired:
            del tasks[t.task_id]
            self._function(t.func).count("expired")
        self._queued -= len(expired)
        self.stats["expired"] += len(expired)

    # ------------------------------------------------------------------ effects

    def _emit(self, groups: tuple[str, ...], kind: Kind, entry: Any) -> None:
        key = (groups, kind)
        entries = self._out.get(key)
        if entries is None:
            entries = self._out[key] = []
        if entry is not None:
            entries.append(entry)

    def _emit_all(self, groups: tuple[str, ...], kind: Kind, entries: list[Any]) -> None:
        key = (groups, kind)
        existing = self._out.get(key)
        if existing is None:
            self._out[key] = entries
        else:
            existing.extend(entries)
