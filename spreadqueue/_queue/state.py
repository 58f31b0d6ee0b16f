"""The queue manager's brain: a pure, deterministic state machine, replicated.

:class:`QueueManager` does no I/O and reads no clock: every input carries ``now`` (a
float in seconds from whatever clock the caller uses; epoch seconds in production)
and every decision depends only on the ordered inputs. Outputs are :class:`Effect` s,
batched per destination and kind, taken with :meth:`QueueManager.take_effects`.

Every manager of a queue runs one, fed the same totally ordered Spread stream (AGREED
and SAFE messages and membership notices come in one order everywhere: virtual
synchrony). They therefore hold the same records (:mod:`.records`): the tasks, the
workers, the dead letters. One of them, the active manager, also *decides*: which
worker runs which task, and what follows from timers and operators. It sends each
decision to the manager group in the message that carries it out (an ASSIGN goes to
the worker and to ``Q-mgr`` at once; other decisions are DECIDE messages), and every
manager, the active one included, applies it where it comes back in the total order.
A standby is thus always up to date, and takes over at once when the active manager
goes (docs/protocol.md, section 10). While no standby is there, the active manager
applies its decisions at once and sends them to no one else.

Iteration order never depends on hashing: every collection that is iterated to
produce output is a dict (insertion ordered), a deque or a list.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .._spread.wire import CAUSED_BY_NETWORK, MembershipMessage, split_private_group
from .credit import Credit, Crew
from .interfaces import IAssignmentPolicy
from .messages import (
    MAX_PAYLOAD,
    MAX_PRIORITY,
    Ack,
    Assign,
    Cancel,
    ControlReply,
    Decide,
    Failed,
    Hello,
    Kind,
    Reason,
    Status,
    Submit,
    Sync,
    SyncRequest,
    new_entry,
)
from .names import QueueGroups
from .policy import LeastRecentlyUsed
from .ready import DEFAULT_AGING, Line, Ready
from .records import (
    EXPIRING,
    DeadLetter,
    DeadLetters,
    Task,
    Tombstones,
    Worker,
    WorkerKey,
    restore,
    snapshot,
)
from .stats import OUTCOMES, FunctionStats

__all__ = ["Effect", "Event", "QueueManager", "WorkerKey"]

_FUNC_CACHE_MAX: Final = 4096
#: Senders remembered as "acknowledged once" (see QueueManager.ack_delay); past this
#: many the memory is cleared, which only makes the next acknowledgements immediate.
_ACKED_SENDERS_MAX: Final = 10_000
#: Hold an acknowledgement back only if its sender waits 4 times this or more.
_MIN_ACK_HOLD: Final = 0.025
#: A snapshot travels in chunks of this many bytes (one SYNC entry each).
_SYNC_CHUNK: Final = MAX_PAYLOAD - 4096


def _due(item: tuple[float, Any]) -> float:
    return item[0]


@dataclass(frozen=True, slots=True)
class Effect:
    """Send ``entries`` of ``kind`` to ``groups`` (one Spread message or more).

    ``safe``: send SAFE rather than AGREED (a detached task handed over). ``after_journal``:
    send only once the journal has what came before on disk (the ACKs of detached tasks
    when the manager keeps a journal).
    """

    groups: tuple[str, ...]
    kind: Kind
    entries: list[Any]
    safe: bool = False
    after_journal: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """Something an operator wants in the log: ``name`` and its fields.

    ``activated`` (``hot``, ``tasks``, ``awaiting``), ``standby`` (``older``),
    ``synced`` (``tasks``, ``workers``, ``replayed``), ``stepped_down``
    (``resubmitted``), ``merged`` (``handed_over``), ``quorum`` (``managers``,
    ``needed``, ``dispatching``); ``worker_registered`` (``worker``, ``capacity``, ``serves``),
    ``worker_draining``, ``worker_retired`` and ``worker_lost`` (``worker``,
    ``requeued``); ``unserved`` (``func``, ``workers``): tasks of a function no
    registered worker serves; ``task_failed`` (``task_id``, ``func``, ``worker``, ``reason``);
    ``dead_letter`` (``task_id``, ``func``, ``reason``, ``error``); ``queue_full``
    (``refused``, ``limit``); ``no_workers`` (``queued``); ``control`` (``requester``,
    ``action``, ``target``, ``ok``, ``result``).
    """

    name: str
    fields: dict[str, Any] = field(default_factory=dict)


def _name(w: Worker | None) -> str:
    """How logs name a worker: its id at its session."""
    return "?" if w is None else w.name()


def _private_name(session: str) -> str:
    """The name part of a private group ``#name#daemon`` (the session itself if not one)."""
    parts = split_private_group(session.encode())
    return parts[0].decode() if parts else session


def _serves(functions: frozenset[str] | None, most: int = 10) -> str:
    """What a worker serves, for the log."""
    if functions is None:
        return "every function"
    if not functions:
        return "no function"
    names = sorted(functions)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _error_text(status: int, payload: Any) -> str:
    if isinstance(payload, tuple):
        return f"{payload[0]}: {payload[1]}"
    if status == Status.UNKNOWN_FUNCTION:
        return f"unknown function: {payload}"
    return f"{payload}"


#: Workers remembered as "ever registered" (for the status count), at most.
_EVER_MAX: Final = 100_000
#: Failures kept for status (the most recent).
_RECENT_FAILURES: Final = 20
#: Functions with stats of their own, at most; the others share "(other)".
_FUNCTIONS_MAX: Final = 256
_OK: Final = int(Status.OK)
# The kinds of the hot paths, as plain names: reading an enum member off its class
# (Kind.SUBMIT) costs a descriptor call in Python 3.11, several per message here.
_SUBMIT: Final = Kind.SUBMIT
_DONE: Final = Kind.DONE
_RESULT: Final = Kind.RESULT
_ASSIGN: Final = Kind.ASSIGN
_ACK: Final = Kind.ACK
_SYNC_REQUEST: Final = Kind.SYNC_REQUEST
_OUTCOMES: Final = {int(Status.CANCELLED): "cancelled"}
#: Events logged by every manager; the others only by the active one.
_ROLE_EVENTS: Final = frozenset(
    {"activated", "standby", "synced", "stepped_down", "merged", "sync_refused"}
)
#: Control actions that change nothing: the active manager answers them at once.
_READ_ONLY: Final = frozenset({"dead-letters", "tasks"})
#: Dead letters a ``dead-letters`` control reply lists, at most.
_DEAD_LIST_MAX: Final = 200
#: Tasks a ``tasks`` control reply lists, at most (the oldest first).
_TASK_LIST_MAX: Final = 200
#: Functions a status report lists under ``waiting``, at most (the most queued first).
_WAITING_MAX: Final = 100
#: Functions remembered as "said nobody serves it" (for the log), at most.
_UNSERVED_MAX: Final = 1000

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
    "ignored_unsynced",
    "ignored_not_older",
    "activations",
    "detached_submitted",
    "dead_lettered",
    "dead_requeued",
    "dead_purged",
    "ended_before",
    "syncs_sent",
    "syncs_loaded",
    "handed_over",
    "ended_elsewhere",
)


class QueueManager:
    """The manager of one queue, as a pure state machine.

    ``me`` is the private group of the manager's own session. Feed it every
    membership notice of the queue's three groups (:meth:`on_membership`), every
    queue message delivered to ``Q-mgr`` (:meth:`on_message`, with the message's
    destination groups), every SYNC delivered to its private group (:meth:`on_sync`)
    and, now and then, the time (:meth:`tick`); send what :meth:`take_effects` returns.

    Exactly one manager of a queue is *active*: the longest-standing member of
    ``Q-mgr`` (every manager works that out the same way from the membership notices
    it sees; docs/protocol.md, section 6). The others are *standbys*: a standby that
    joins asks the active one for the queue's state (SYNC_REQUEST, SYNC), then applies
    the same ordered input, so that it holds the same tasks and workers.

    Dispatching takes the queued tasks by rank: priority first (0 to 9, higher first),
    FIFO within a level, and each level worth ``priority_aging`` seconds of waiting, so
    that low levels never starve (:mod:`.ready`). A task goes only to a worker that
    serves its function (it declared the function when it registered, or declared
    nothing); a task no such worker can take now waits without holding up the tasks
    of other functions behind it. Among the workers that may take it, those with a
    free slot (``slots``) come before those that would only prefetch it; among equals
    the least recently used one (or the ``policy``'s choice among those candidates). A
    worker chosen takes up to its ``burst`` tasks in a row (while it keeps a free
    slot, or, when no worker has one, credit).

    ``ack_delay``: a SUBMIT that says how long its sender waits for the ACK
    (``ack_ms``) and that is assigned at once has its ACK held back for up to
    ``min(ack_delay, ack_ms / 4)`` seconds, and never sent when the task is done by
    then: the result is the acknowledgement. The first ACK to each sender is never
    held (the sender learns which manager it depends on). 0 disables holding.
    :meth:`next_wakeup` says when :meth:`tick` has something to do.

    ``batched``: the active manager assigns once per run of SUBMIT, DONE and RESULT
    messages rather than after each, when the next other input, or
    :meth:`take_effects` (the caller's end of a batch of deliveries), comes; the held
    ACKs and the no-workers notice wait for that too. A run of many one-task messages
    (many senders each making one call at a time) then costs one dispatch; every
    other input sees the state as it would unbatched. Off: each message dispatches.

    Detached tasks (SUBMIT ``detached``) outlive their senders: their failures go to
    the dead letters (at most ``max_dead_letters``, the oldest dropped first), and
    they are dispatched only while ``quorum`` managers (a majority of those
    configured) are in the manager group. With ``journaled`` their ACKs wait for the
    journal (:meth:`take_journal`).
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
        quorum: int = 1,
        max_dead_letters: int = 10_000,
        max_tombstones: int = 100_000,
        journaled: bool = False,
        priority_aging: float = DEFAULT_AGING,
        batched: bool = False,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < priority_aging < math.inf:
            raise ValueError("priority_aging must be a positive number of seconds")
        if quorum < 1:
            raise ValueError("quorum must be at least 1")
        self.groups = groups
        self.me = me
        self._policy: IAssignmentPolicy = policy if policy is not None else LeastRecentlyUsed()
        self._lru = type(self._policy) is LeastRecentlyUsed
        self.max_attempts = max_attempts
        self.register_grace = register_grace
        self.max_queued = max_queued
        self.sweep_interval = sweep_interval
        self.ack_delay = ack_delay
        self.quorum = quorum
        self.journaled = journaled
        #: counters (see docs/protocol.md); all start at 0
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)

        # membership as seen in the three groups (ordered: dicts as ordered sets)
        self._mgr_members: dict[str, None] = {}
        self._wrk_members: dict[str, None] = {}
        self._snd_members: dict[str, None] = {}
        self._older: dict[str, None] = {}  # Q-mgr members that joined before us
        self._active = False

        # ---- the replicated records: the same at every synced manager
        self._tasks: dict[str, Task] = {}
        self._queued = 0  # tasks not running anywhere
        self._workers: dict[WorkerKey, Worker] = {}
        # Workers with a capacity above 0 (kept as they change): all of them, those that
        # serve every function, and by function those that declared it.
        self._available = 0
        self._available_all = 0
        self._serving: dict[str, int] = {}
        self._by_session: dict[str, dict[WorkerKey, Worker]] = {}
        self._foreign: dict[str, Worker] = {}  # unknown task id -> worker holding it
        self._dead = DeadLetters(max_dead_letters)
        self._tombstones = Tombstones(max_tombstones)
        self._next_key = 1  # the key of the next task at the tail
        self._head_key = 0  # the key of the next task put back at the head
        #: an operator paused dispatch: tasks are queued and acknowledged, not assigned
        self.paused = False

        # ---- joining: the state comes from the active manager (or we are the first)
        self._synced = False
        self._sync_id: str | None = None  # our SYNC_REQUEST waiting for its answer
        self._sync_serial = 0
        self._buffer: list[tuple[Any, ...]] | None = None  # inputs after our request
        self._chunks: dict[int, bytes] = {}
        self._offer: list[Task] = []  # recovered detached tasks to hand over on joining
        self._expected: dict[str, None] = {}  # worker sessions known before a reconnect
        #: ids of tasks that ended since a partition split the manager group (None: not
        #: split): a side that loses the merge tells the winner, which may still hold them
        self._ended_since_split: list[str] | None = None

        # ---- the active manager's own state (never replicated)
        self._ready = Ready(priority_aging)  # queued tasks, by function and rank
        self._credit = Credit()  # workers with credit, by the functions they serve
        self._proposed: dict[WorkerKey, dict[str, Task]] = {}  # ASSIGNs on their way
        self._awaiting: dict[str, None] = {}  # worker sessions not yet re-registered
        self._grace_until = 0.0
        self._next_sweep = 0.0
        self._hello_id: str | None = None
        self._hello_serial = 0
        self._late_acks: list[tuple[float, Task]] = []
        self._acked_senders: dict[str, None] = {}
        self._had_quorum: bool | None = None

        self._funcs: dict[str, str] = {}
        self._out: dict[tuple[tuple[str, ...], Kind, bool, bool], list[Any]] = {}
        self._journal: list[tuple[str, Any]] = []
        self._events: list[Event] = []
        self._functions: dict[str, FunctionStats] = {}
        self._recent_failures: list[dict[str, Any]] = []
        self._last_now = 0.0  # the time of the latest input (for what lacks a ``now``)
        self._ever: dict[WorkerKey, None] = {}  # every worker registered (bounded)
        self._standby_for: str | None = None  # the active manager we last said we wait for
        self._said_no_workers = False
        self._said_unserved: dict[str, None] = {}  # functions logged as served by nobody
        self.batched = batched
        # batched: SUBMIT/DONE/RESULT applied since the last dispatch, and the ACKs
        # those SUBMITs may hold back (by sender), decided once it has run
        self._unsettled = False
        self._submitted = False  # among them a SUBMIT (the no-workers check)
        self._holds: list[tuple[str, list[tuple[Task, float]]]] = []

    # ------------------------------------------------------------------ introspection

    @property
    def active(self) -> bool:
        """True while this manager is the queue's active manager."""
        return self._active

    @property
    def synced(self) -> bool:
        """True once this manager holds the queue's state (it took it from the active
        manager, or it was the first)."""
        return self._synced

    @property
    def replicating(self) -> bool:
        """True while other managers are in the manager group: decisions go through it."""
        return len(self._mgr_members) > 1

    @property
    def has_quorum(self) -> bool:
        """True while ``quorum`` managers are in the manager group (detached tasks run)."""
        return len(self._mgr_members) >= self.quorum

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return self._queued

    @property
    def running(self) -> int:
        """Tasks assigned to a worker and not yet done."""
        return len(self._tasks) - self._queued

    @property
    def detached(self) -> int:
        """Detached tasks held (queued or running)."""
        return sum(1 for t in self._tasks.values() if t.detached)

    @property
    def dead_letters(self) -> DeadLetters:
        """The dead letters (read them; change them through control actions)."""
        return self._dead

    @property
    def worker_count(self) -> int:
        """Registered workers."""
        return len(self._workers)

    @property
    def available_workers(self) -> int:
        """Registered workers that take tasks (not draining)."""
        return self._available

    def serving(self, func: str) -> int:
        """Registered workers that take tasks (not draining) and serve ``func``: what
        the ACK of a task of ``func`` tells its sender."""
        return self._available_all + self._serving.get(func, 0)

    @property
    def priority_aging(self) -> float:
        """Seconds of waiting one priority level is worth (docs/protocol.md)."""
        return self._ready.aging

    def workers(self) -> list[tuple[WorkerKey, int, int]]:
        """``(key, capacity, held)`` of every registered worker, in registration order."""
        return [(w.key, w.capacity, len(w.held)) for w in self._workers.values()]

    def queued_ids(self) -> list[str]:
        """Ids of the queued tasks, in queue order (head first)."""
        queued = [t for t in self._tasks.values() if t.worker is None]
        return [t.task_id for t in sorted(queued, key=lambda t: t.key)]

    def task(self, task_id: str) -> Task | None:
        """The record of a task the managers hold (None: unknown, or ended)."""
        return self._tasks.get(task_id)

    def take_effects(self) -> list[Effect]:
        """The messages to send now, one Effect per (destination, kind), in order."""
        if self._unsettled:
            self.settle()
        if not self._out:
            return []
        out = [
            Effect(groups, kind, entries, safe, journal)
            for (groups, kind, safe, journal), entries in self._out.items()
        ]
        self._out = {}
        return out

    def take_events(self) -> list[Event]:
        """What happened since the last call that an operator wants to read, in order."""
        events, self._events = self._events, []
        return events

    def take_journal(self) -> list[tuple[str, Any]]:
        """What a journal must record since the last call, in order (``journaled``
        managers only): ``('task', Task)`` a detached task to keep, ``('end', id)`` one
        that ended, ``('dead', DeadLetter)``, ``('undead', id)``."""
        if self._unsettled:
            self.settle()
        ops, self._journal = self._journal, []
        return ops

    def _event(self, name: str, **fields: Any) -> None:
        if self._active or name in _ROLE_EVENTS:
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

    def _failure(self, task_id: str, func: str, worker: str, error: str) -> None:
        """Remember a failure for status (the last few)."""
        recent = self._recent_failures
        recent.append(
            {"task_id": task_id, "func": func, "worker": worker, "error": error[:500]}
            | {"at": self._last_now}
        )
        if len(recent) > _RECENT_FAILURES:
            del recent[0]

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, now: float) -> bytes:
        """The replicated records as one msgpack map (what a SYNC carries)."""
        if self._unsettled:
            self.settle()
        return snapshot(
            self._tasks.values(),
            self._workers.values(),
            self._dead,
            self._tombstones,
            keys=(self._next_key, self._head_key),
            paused=self.paused,
            now=now,
            extra={"queue": self.groups.queue, "max_attempts": self.max_attempts},
        )

    def _load(self, now: float, data: bytes) -> None:
        """Replace the records with those of a snapshot."""
        got = restore(data, now)
        self._tasks = got.tasks
        self._workers = got.workers
        self._foreign = got.foreign
        self._queued = sum(1 for t in got.tasks.values() if t.worker is None)
        self._by_session = {}
        self._available = self._available_all = 0
        self._serving = {}
        for w in got.workers.values():
            self._by_session.setdefault(w.session, {})[w.key] = w
            self._count(w, 1)
        self._dead = DeadLetters(self._dead.limit)
        for letter in got.dead:
            self._dead.add(letter)
        self._dead.dropped = got.dead_dropped
        self._tombstones = Tombstones(self._tombstones.limit)
        for tid in got.tombstones:
            self._tombstones.add(tid)
        self._next_key, self._head_key = got.keys
        self.paused = got.paused
        if self.journaled:
            self._journal.append(("reset", None))
            for t in got.tasks.values():
                if t.detached:
                    self._journal.append(("task", t))
            for letter in got.dead:
                self._journal.append(("dead", letter))

    def recover(
        self,
        tasks: Iterable[Task],
        dead: Iterable[DeadLetter] = (),
        ended: Iterable[str] = (),
    ) -> None:
        """Start from what a journal (or this manager's previous session) kept: detached
        tasks, dead letters and the ids of tasks that ended. Call before the first
        input. If this manager turns out to be the first of the queue, it starts with
        them; if others are there already, it hands the tasks over to them (a SUBMIT
        each; they run what they do not know) and takes their state instead.
        """
        for tid in ended:
            self._tombstones.add(tid)
        for letter in dead:
            self._dead.add(letter)
        for t in tasks:
            if t.task_id in self._tasks or t.task_id in self._tombstones:
                continue
            t.key = self._next_key
            self._next_key += 1
            t.worker = None
            t.pending = None
            self._tasks[t.task_id] = t
            self._queued += 1
            self._offer.append(t)

    def expect_workers(self, sessions: Iterable[str]) -> None:
        """Worker sessions this manager knew before it opened a new session (they keep
        their names when they reconnect): if it starts without the queue's state, its
        grace waits for them too, so that what they still run is adopted, not started
        again elsewhere."""
        for session in sessions:
            self._expected[session] = None

    def worker_sessions(self) -> list[str]:
        """The sessions of the registered workers."""
        return list(self._by_session)

    def export(self) -> tuple[list[Task], list[DeadLetter], list[str]]:
        """What :meth:`recover` takes: the detached tasks held, the dead letters, and
        the ids of tasks that ended (for a manager that opens a new session)."""
        if self._unsettled:
            self.settle()
        tasks = [t for t in self._tasks.values() if t.detached]
        return tasks, list(self._dead), list(self._tombstones)

    # ------------------------------------------------------------------ control

    def control(
        self, now: float, request_id: str, requester: str, action: str, target: str
    ) -> None:
        """Carry out an operator's ``action`` on ``target`` (the caller has checked
        that ``requester`` may): through the manager group when standbys replicate
        the queue, so that they do the same at the same point. The CONTROL_REPLY
        goes out once it is done. Active manager only."""
        self._last_now = now
        if self._unsettled:
            self.settle()
        if not self._active:
            return
        if action in _READ_ONLY:
            ok, text = self._read_only(now, action, target)
            self._emit((requester,), Kind.CONTROL_REPLY, ControlReply(request_id, ok, text))
            self._event(
                "control", requester=requester, action=action, target=target, ok=ok, result=text
            )
        elif self.replicating:
            self._emit(
                (self.groups.manager,),
                Kind.DECIDE,
                Decide("control", request_id, requester, action, target),
            )
        else:
            self._apply_control(now, request_id, requester, action, target)

    def _apply_control(
        self, now: float, request_id: str, requester: str, action: str, target: str
    ) -> None:
        if action == "pause":
            ok, text = True, self.pause()
        elif action == "resume":
            ok, text = True, self.resume(now)
        elif action == "purge":
            ok, text = True, self.purge()
        elif action in ("drain", "undrain"):
            ok, text = self.drain(target, drained=action == "drain")
        elif action == "cancel":
            ok, text = self.cancel_task(target)
        elif action == "dead-requeue":
            ok, text = self._dead_requeue(now, target)
        elif action == "dead-purge":
            ok, text = self._dead_purge(target)
        else:
            ok, text = (
                False,
                f"unknown action {action!r} (pause, resume, purge, drain, undrain, cancel, "
                "tasks, dead-letters, dead-requeue, dead-purge)",
            )
        self._emit((requester,), Kind.CONTROL_REPLY, ControlReply(request_id, ok, text))
        self._event(
            "control", requester=requester, action=action, target=target, ok=ok, result=text
        )
        self._dispatch(now)

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
                self._drop_queued(t)
                self._cancelled(t, "purged from the queue by an operator")
                purged += 1
        return f"{purged} queued task(s) purged"

    def cancel_task(self, task_id: str) -> tuple[bool, str]:
        """Cancel one task: a queued one is dropped (its sender gets FAILED), a running
        one is cancelled at its worker (which answers CANCELLED)."""
        t = self._tasks.get(task_id)
        if t is None:
            return False, f"no task {task_id!r} (unknown, or done already)"
        if t.worker is None:
            self._drop_queued(t)
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

    def _dead_ids(self, target: str) -> list[str]:
        return self._dead.ids() if target in ("", "all", "*") else [target]

    def _dead_requeue(self, now: float, target: str) -> tuple[bool, str]:
        letters = self._dead.take(self._dead_ids(target))
        if not letters:
            return False, f"no dead letter {target!r}" if target else "no dead letters"
        for d in letters:
            if self.journaled:
                self._journal.append(("undead", d.task_id))
            if d.task_id in self._tasks:
                continue  # submitted again meanwhile
            self._tombstones.discard(d.task_id)
            t = Task(
                d.task_id,
                d.func,
                d.args,
                d.reply_to,
                None,
                now,
                origin=self.me,
                detached=True,
                run_ms=d.run_ms,
                priority=d.priority,
                key=self._next_key,
            )
            self._next_key += 1
            self._add_queued(t)
            if self.journaled:
                self._journal.append(("task", t))
        self.stats["dead_requeued"] += len(letters)
        return True, f"{len(letters)} dead letter(s) queued again"

    def _dead_purge(self, target: str) -> tuple[bool, str]:
        letters = self._dead.take(self._dead_ids(target))
        if not letters:
            return False, f"no dead letter {target!r}" if target else "no dead letters"
        if self.journaled:
            self._journal.extend(("undead", d.task_id) for d in letters)
        self.stats["dead_purged"] += len(letters)
        return True, f"{len(letters)} dead letter(s) purged"

    def _read_only(self, now: float, action: str, target: str) -> tuple[bool, str]:
        if action == "tasks":
            return self._list_tasks(now, target)
        letters = self._dead.recent(_DEAD_LIST_MAX)
        if target and target not in ("all", "*"):
            letters = [d for d in letters if d.task_id == target]
        lines = [
            f"{d.task_id}  {d.func}  {d.reason}  attempts {d.attempts}  "
            f"{now - d.at:.0f}s ago  {d.error[:200]}"
            for d in letters
        ]
        head = f"{len(self._dead)} dead letter(s)"
        if len(self._dead) > len(letters) and not target:
            head += f", the newest {len(letters)} below"
        return True, "\n".join([head, *lines])

    def _list_tasks(self, now: float, target: str) -> tuple[bool, str]:
        """The ``tasks`` control: the tasks held (queued or running), the oldest first,
        at most :data:`_TASK_LIST_MAX`; ``target`` a function name or a task id (empty,
        ``all`` or ``*``: every task)."""
        if target in ("all", "*"):
            target = ""
        if target and target in self._tasks:
            chosen = [self._tasks[target]]
        else:
            chosen = [t for t in self._tasks.values() if not target or t.func == target]
        # the oldest few of a queue of any depth, without sorting it all on the reactor
        oldest = heapq.nsmallest(_TASK_LIST_MAX, chosen, key=lambda t: t.queued_at)
        lines = []
        for t in oldest:
            w = t.worker
            where = "queued" if w is None else f"running on {_name(w)}"
            kind = "detached" if t.detached else f"for {t.reply_to}"
            lines.append(
                f"{t.task_id}  {t.func}  {where}  priority {t.priority}  "
                f"{now - t.queued_at:.1f}s old  attempt {t.attempt}  {kind}"
            )
        which = f" of {target!r}" if target else ""
        head = f"{len(chosen)} task(s){which} held ({self._queued} queued in all)"
        if len(chosen) > len(lines):
            head += f", the oldest {len(lines)} below"
        return True, "\n".join([head, *lines])

    def _cancelled(self, t: Task, message: str) -> None:
        """Tell the sender its task ``t`` (never assigned) was cancelled, and count it."""
        if not t.detached:
            self._emit((t.reply_to,), Kind.FAILED, Failed(t.task_id, Reason.CANCELLED, message))
        self._function(t.func).count("cancelled")
        self._ended(t)

    # ------------------------------------------------------------------ status

    def status(self, now: float) -> dict[str, Any]:
        """What this manager knows, as plain data (docs/protocol.md, "Status")."""
        if self._unsettled:
            self.settle()
        oldest = None
        by_priority = [0] * (MAX_PRIORITY + 1)
        waiting: dict[str, list[Any]] = {}  # function -> [queued, queued since]
        for t in self._tasks.values():
            if t.worker is None:
                queued_at = t.queued_at
                if oldest is None or queued_at < oldest:
                    oldest = queued_at
                by_priority[t.priority] += 1
                seen = waiting.get(t.func)
                if seen is None:
                    waiting[t.func] = [1, queued_at]
                else:
                    seen[0] += 1
                    if queued_at < seen[1]:
                        seen[1] = queued_at
        workers = []
        for w in self._workers.values():
            workers.append(
                {
                    "worker": _name(w),
                    "session": w.session,
                    "capacity": w.capacity,
                    "slots": w.slots,
                    "functions": None if w.functions is None else sorted(w.functions),
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
        held = sum(1 for t in self._tasks.values() if t.detached)
        return {
            "queue": self.groups.queue,
            "manager": self.me,
            "active": self._active,
            "synced": self._synced,
            "paused": self.paused,
            "depth": self._queued,
            "in_flight": self.running,
            "detached": held,
            "oldest_queued_for": None if oldest is None else now - oldest,
            "queued_by_priority": by_priority,
            "priority_aging": self._ready.aging,
            "waiting": [
                {
                    "func": f,
                    "queued": waiting[f][0],
                    "oldest_for": now - waiting[f][1],
                    "workers": self.serving(f),
                }
                for f in sorted(waiting, key=lambda f: (-waiting[f][0], f))[:_WAITING_MAX]
            ],
            "max_queued": self.max_queued,
            "workers": workers,
            "workers_ever": len(self._ever),
            "senders": sum(1 for s in self._snd_members if s not in self._mgr_members),
            "managers": managers,
            "quorum": {
                "managers": len(self._mgr_members),
                "needed": self.quorum,
                "dispatching_detached": self.has_quorum,
            },
            "replicating": self.replicating,
            "workers_lost": self.stats["workers_lost"],
            "counts": self._counts(),
            "functions": {f: st.summary() for f, st in self._functions.items()},
            "recent_failures": [
                {**f, "ago": now - f["at"]} for f in reversed(self._recent_failures)
            ],
            "dead_letters": {
                "count": len(self._dead),
                "limit": self._dead.limit,
                "dropped": self._dead.dropped,
                "recent": [d.summary(now) for d in self._dead.recent(20)],
            },
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
        counts["dead_lettered"] = self.stats["dead_lettered"]
        return counts

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` next has something due: held acknowledgements, or a
        delayed task's start (None: nothing)."""
        if not self._active:
            return None
        late = self._late_acks
        due = late[0][0] if late else None
        delayed = self._ready.delayed
        if delayed and (due is None or delayed[0][0] < due):
            due = delayed[0][0]
        return due

    # ------------------------------------------------------------------ inputs

    def on_membership(self, now: float, msg: MembershipMessage) -> None:
        """A membership notice of one of the queue's groups (others are ignored)."""
        self._last_now = now
        if self._unsettled:
            self.settle()
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

    def on_message(
        self,
        now: float,
        sender: str,
        kind: Kind,
        entries: Sequence[Any],
        groups: Sequence[str] = (),
    ) -> None:
        """A decoded queue message delivered to ``Q-mgr`` from session ``sender``, sent
        to ``groups`` (an ASSIGN's worker session is the other group).

        SUBMIT, CANCEL, REGISTER, DONE, RESULT, RETIRE, RELEASE, and from managers
        ASSIGN, DECIDE and SYNC_REQUEST; other kinds are ignored.
        """
        self._last_now = now
        hot = kind is _SUBMIT or kind is _DONE or kind is _RESULT
        if self._unsettled and not hot:
            self.settle()
        if kind is _SYNC_REQUEST:
            self._sync_request(now, sender, entries)
            return
        if not self._synced:
            if self._buffer is not None:
                self._buffer.append(("message", sender, kind, entries, tuple(groups)))
            else:
                self.stats["ignored_unsynced"] += 1
            return
        if kind is _SUBMIT:
            hold = self._submit(now, sender, entries)
            if self._active:
                if self.batched:
                    self._unsettled = self._submitted = True
                    if hold:
                        self._holds.append((sender, hold))
                    return
                self._dispatch(now)
                if hold:
                    self._hold_acks(now, sender, hold)
                self._no_workers_check()
            return
        if hot:  # (DONE or RESULT)
            # The workers whose credit changed are filed again once per message, not per
            # task (a message carries many of one worker's answers).
            touched: dict[WorkerKey, Worker] = {}
            done = self._done
            if kind is _DONE:
                for e in entries:
                    done(now, sender, e.worker_id, e.task_id, "done", None, touched)
            else:
                for e in entries:
                    if e.final:
                        status = e.status
                        if status == _OK:
                            done(now, sender, e.worker_id, e.task_id, "done", None, touched)
                        else:
                            outcome = _OUTCOMES.get(status, "failed")
                            done(now, sender, e.worker_id, e.task_id, outcome, e, touched)
            for w in touched.values():
                self._update_ready(w)
            if self.batched and self._active:
                self._unsettled = True
                return
        elif kind is Kind.CANCEL:
            self._cancel(sender, entries)
        elif kind is Kind.REGISTER:
            self._register(now, sender, entries)
        elif kind is Kind.RETIRE:
            self._retire(sender, entries)
        elif kind is Kind.RELEASE:
            self._release(sender, entries)
        elif kind is Kind.ASSIGN:
            if not self._from_manager(sender):
                return
            session = next((g for g in groups if g != self.groups.manager), None)
            if session is None:
                return
            for e in entries:
                self._assigned(now, sender, session, e)
        elif kind is Kind.DECIDE:
            decides = self._from_manager(sender)
            for e in entries:
                if e.op == "ended":
                    # Not a decision but news from a manager that lost a merge: any
                    # manager of the group may tell it (section 10.6).
                    if sender in self._mgr_members:
                        self._ended_elsewhere(e.a)
                elif decides:
                    self._decided(now, sender, e)
        else:
            return
        if self._active:
            self._dispatch(now)

    def settle(self) -> None:
        """Dispatch what the SUBMIT, DONE and RESULT messages since the last dispatch
        made possible, then hold back or send their ACKs (``batched`` managers; the
        other inputs and :meth:`take_effects` call it)."""
        self._unsettled = False
        submitted, self._submitted = self._submitted, False
        holds, self._holds = self._holds, []
        if not self._active:
            return
        now = self._last_now
        self._dispatch(now)
        for sender, hold in holds:
            self._hold_acks(now, sender, hold)
        if submitted:
            self._no_workers_check()

    def on_sync(self, now: float, sender: str, entries: Sequence[Any]) -> None:
        """SYNC entries delivered to our private group: the queue's state, in parts."""
        self._last_now = now
        if self._unsettled:
            self.settle()
        if self._synced or self._sync_id is None or sender not in self._older:
            return
        count = None
        for e in entries:
            if e.request_id == self._sync_id:
                self._chunks[e.part] = e.chunk
                count = e.parts
        if count is None or len(self._chunks) < count:
            return
        data = b"".join(self._chunks.get(i, b"") for i in range(count))
        buffered, self._buffer = self._buffer or [], None
        self._chunks = {}
        self._sync_id = None
        try:
            self._load(now, data)
        except ValueError as e:
            self._event("sync_refused", source=sender, error=str(e))
            return  # we ask again when the manager group changes
        self._synced = True
        self._offer = []
        self.stats["syncs_loaded"] += 1
        for item in buffered:
            self._replay(now, item)
        self._event(
            "synced",
            tasks=len(self._tasks),
            workers=len(self._workers),
            replayed=len(buffered),
            source=sender,
        )
        self._update_activity(now)

    def _replay(self, now: float, item: tuple[Any, ...]) -> None:
        what = item[0]
        if what == "message":
            self.on_message(now, *item[1:])  # (synced by now: it applies)
        elif what == "workers_lost":
            self._workers_lost(now, item[1])
        elif what == "senders_lost":
            self._senders_lost(item[1])

    def tick(self, now: float) -> None:
        """Let time pass: end the re-registration grace, expire queued tasks whose time
        ran out, start delayed tasks that are due, send the held acknowledgements."""
        self._last_now = now
        if self._unsettled:
            self.settle()
        if not self._active:
            return
        late = self._late_acks
        if late and late[0][0] <= now:
            self._send_late_acks(now)
        self._ready.release_due(now)
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval
            self._sweep(now)
        self._dispatch(now)

    # ------------------------------------------------------------------ applying

    def _from_manager(self, sender: str) -> bool:
        """Decisions count from this manager or an older one (an active manager)."""
        if sender == self.me or sender in self._older:
            return True
        self.stats["ignored_not_older"] += 1
        return False

    def _assigned(self, now: float, sender: str, session: str, e: Assign) -> None:
        """An ASSIGN came back through the manager group: the task runs at the worker
        from this point of the total order on."""
        tid = e.task_id
        key = (session, e.worker_id)
        if sender == self.me:
            self._unpropose(key, tid)
        t = self._tasks.get(tid)
        w = self._workers.get(key)
        if w is None:
            return  # the worker went before this came: the task is still queued
        if t is None or t.worker is not None:
            # Cancelled or expired while the ASSIGN travelled (or running elsewhere):
            # the worker has it anyway, and it uses one credit until the worker is done.
            if tid not in w.held:
                w.held[tid] = None
                self._foreign[tid] = w
                w.idle_since = None
        else:
            self._start(now, t, w)
        self._update_ready(w)

    def _ended_elsewhere(self, tid: str) -> None:
        """Task ``tid`` ended on the other side of a partition: drop it if it waits here
        (a running copy finishes; at least once)."""
        self._tombstones.add(tid)
        t = self._tasks.get(tid)
        if t is not None and t.worker is None and t.pending is None:
            self._drop_queued(t)
            self.stats["ended_elsewhere"] += 1
            if t.detached and self.journaled:
                self._journal.append(("end", tid))

    def _decided(self, now: float, sender: str, e: Decide) -> None:
        if e.op == "expire":
            t = self._tasks.get(e.a)
            if t is None:
                return
            if sender == self.me and t.pending == EXPIRING:
                t.pending = None
            if t.worker is None and t.pending is None:
                self._expire(now, t, e.b)
        elif e.op == "control":
            self._apply_control(now, e.a, e.b, e.c, e.d)

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
        older_before = dict(self._older)
        beaten = False
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
                        beaten = True
        if lost and msg.cause == CAUSED_BY_NETWORK and self._ended_since_split is None:
            # A partition: from here each side goes its own way until a merge.
            self._ended_since_split = []
        if me in lost:
            # We left the manager group (stopping): we no longer follow the queue.
            self._set_active(now, False)
            self._forget()
        elif beaten and me in members:
            self._merged_into_older(now)
        elif new and msg.cause == CAUSED_BY_NETWORK:
            self._ended_since_split = None  # we won the merge: the others tell us
        elif not self._synced and self._sync_id is not None:
            if any(m in lost for m in older_before):
                # Whoever was to answer our request may have gone: ask again.
                self._sync_id = None
                self._buffer = None
                self._chunks = {}
        self._update_activity(now)
        if self._active:
            self._check_quorum()

    def _forget(self) -> None:
        """Drop the replicated records: we are no longer a replica of the queue."""
        self._tasks = {}
        self._queued = 0
        self._workers = {}
        self._available = self._available_all = 0
        self._serving = {}
        self._by_session = {}
        self._foreign = {}
        self._synced = False
        self._sync_id = None
        self._buffer = None
        self._chunks = {}

    def _merged_into_older(self, now: float) -> None:
        """A healed partition brought back managers older than us: their side's records
        win. Hand over the detached tasks ours holds (they dedupe by id) and take their
        state; our calls' senders resubmit to them."""
        if self._active:
            self._resubmit_calls()
        handed = self._hand_over(t for t in self._tasks.values() if t.detached)
        # What ended on our side while we were apart: the winner may still hold it
        # (queued), having lost the worker that ran it here.
        ended, self._ended_since_split = self._ended_since_split or [], None
        if ended:
            self._emit_always(
                (self.groups.manager,),
                Kind.DECIDE,
                [Decide("ended", tid, "", "", "") for tid in ended],
            )
        self._event("merged", handed_over=handed, ended=len(ended))
        self._set_active(now, False, stepping_down=False)
        self._synced = False
        self._sync_id = None
        self._buffer = None
        self._chunks = {}

    def _hand_over(self, tasks: Iterable[Task]) -> int:
        """SUBMIT ``tasks`` (detached) to the manager group, SAFE, as their sender would."""
        now = self._last_now
        entries = []
        for t in tasks:
            reply_to = None if t.reply_to == self.groups.manager else t.reply_to
            expires = None if t.expires is None else max(1, math.ceil((t.expires - now) * 1000))
            not_before = None if t.not_before is None else round(t.not_before * 1000)
            entries.append(
                Submit(
                    t.task_id,
                    t.func,
                    t.args,
                    t.run_ms,
                    None,
                    True,
                    reply_to,
                    expires,
                    not_before,
                    t.priority or None,
                )
            )
        if entries:
            self._emit_always((self.groups.manager,), Kind.SUBMIT, entries, safe=True)
            self.stats["handed_over"] += len(entries)
        return len(entries)

    def _worker_view(self, now: float, msg: MembershipMessage) -> None:
        members, lost, new = self._diff(self._wrk_members, msg)
        self._wrk_members = members
        self._update_activity(now)
        if lost:
            self._workers_lost(now, lost)
        if not self._active:
            return
        if msg.cause == CAUSED_BY_NETWORK and any(m != self.me for m in new):
            # Sessions that come with a merge never registered with us: ask them, and
            # wait for them before dispatching (they may run what we would start).
            self._hello(now, [m for m in new if m != self.me and m not in self._mgr_members])
        elif any(m in self._awaiting for m in new) and self._hello_id is not None:
            # A worker we wait for is back (its session reconnected): it missed our
            # HELLO; say it again, so that its REGISTER answers this one.
            self._emit((self.groups.workers,), Kind.HELLO, Hello(self._hello_id))
        self._dispatch(now)

    def _workers_lost(self, now: float, sessions: list[str]) -> None:
        if not self._synced:
            if self._buffer is not None:
                self._buffer.append(("workers_lost", sessions))
            return
        lost_tasks: list[Task] = []
        for session in sessions:
            self._awaiting.pop(session, None)
            lost_tasks.extend(self._lose_session(session))
        self._requeue(lost_tasks)

    def _sender_view(self, now: float, msg: MembershipMessage) -> None:
        members, lost, _new = self._diff(self._snd_members, msg)
        self._snd_members = members
        self._update_activity(now)
        if lost:
            if self._synced:
                self._senders_lost(lost)
            elif self._buffer is not None:
                self._buffer.append(("senders_lost", lost))

    def _senders_lost(self, lost: list[str]) -> None:
        for s in lost:
            self._acked_senders.pop(s, None)
        gone = frozenset(lost)
        for t in list(self._tasks.values()):
            if t.detached or t.reply_to not in gone:
                continue
            if t.worker is None:
                # Nobody will read the answer: do not run it.
                self._drop_queued(t)
                self.stats["dropped_sender_gone"] += 1
                self._function(t.func).count("dropped")
                self._ended(t)
            elif not t.cancelled:
                t.cancelled = "cancelled"
                self._emit((t.worker.session,), Kind.CANCEL, Cancel(t.task_id))

    def _update_activity(self, now: float) -> None:
        """Active = the oldest member of Q-mgr, and a member of all three groups.

        Seniority decides between managers; membership of Q-wrk and Q-snd only delays
        our own start until we can see workers and senders come and go (senders
        resend unacknowledged submits when they see a manager join Q-snd). A manager
        that is in all three and has older ones asks them for the queue's state.
        """
        me = self.me
        member = me in self._mgr_members and me in self._wrk_members and me in self._snd_members
        self._set_active(now, member and not self._older)
        if member and self._older and not self._synced and self._sync_id is None:
            self._request_sync()
        if self._older and me in self._mgr_members:
            older = ", ".join(self._older)
            if older != self._standby_for:
                self._standby_for = older
                self._event("standby", older=older)
        else:
            self._standby_for = None

    def _request_sync(self) -> None:
        """Ask the active manager for the queue's state (after handing over what we
        recovered, so that it is in that state)."""
        if self._offer:
            self._hand_over(self._offer)
            self._offer = []
        self._sync_serial += 1
        self._sync_id = f"{self.me}.{self._sync_serial}"
        self._buffer = None
        self._chunks = {}
        self._emit_always((self.groups.manager,), Kind.SYNC_REQUEST, [SyncRequest(self._sync_id)])

    def _sync_request(self, now: float, sender: str, entries: Sequence[Any]) -> None:
        if sender == self.me:
            if not self._synced and any(e.request_id == self._sync_id for e in entries):
                # Our own request came back: the state we will get is the state at this
                # point; everything from here on applies on top of it.
                self._buffer = []
            return
        if not (self._active and entries):
            return
        data = self.snapshot(now)
        request_id = entries[0].request_id
        chunks = [data[i : i + _SYNC_CHUNK] for i in range(0, len(data), _SYNC_CHUNK)] or [b""]
        n = len(chunks)
        self._emit_always(
            (sender,), Kind.SYNC, [Sync(request_id, i, n, c) for i, c in enumerate(chunks)]
        )
        self.stats["syncs_sent"] += 1

    def _set_active(self, now: float, active: bool, *, stepping_down: bool = True) -> None:
        if active == self._active:
            return
        self._active = active
        if active:
            self._activate(now)
            return
        if stepping_down:
            resubmitted = self._resubmit_calls()
            held = sum(1 for t in self._tasks.values() if t.detached)
            self._event("stepped_down", resubmitted=resubmitted, detached=held)
        self._ready.clear()
        self._credit.clear(self._workers)
        self._awaiting.clear()
        self._late_acks.clear()
        self._acked_senders.clear()
        for t in self._tasks.values():
            t.pending = None
        for w in self._workers.values():
            w.pending = 0
        self._proposed.clear()
        self._had_quorum = None

    def _activate(self, now: float) -> None:
        hot = self._synced
        self._synced = True
        self._offer = []
        self._buffer = None
        self._sync_id = None
        self.stats["activations"] += 1
        self._said_no_workers = False
        self._said_unserved.clear()
        self._next_sweep = now + self.sweep_interval
        self._ready.rebuild(t for t in self._tasks.values() if t.worker is None)
        for w in self._workers.values():
            self._update_ready(w)
        if hot:
            # A standby that followed the total order knows exactly what runs where:
            # it goes on at once.
            self._awaiting = {}
        else:
            # Workers answer HELLO with REGISTER and the tasks they still hold; until
            # they have, dispatch waits, so that nothing they run is started twice.
            me, managers = self.me, self._mgr_members
            sessions = dict.fromkeys([*self._wrk_members, *self._expected])
            self._hello(now, [s for s in sessions if s != me and s not in managers])
        self._expected = {}
        self._event("activated", hot=hot, tasks=len(self._tasks), awaiting=len(self._awaiting))
        self._check_quorum()

    def _hello(self, now: float, sessions: list[str]) -> None:
        self._hello_serial += 1
        self._hello_id = f"{self.me}.{self._hello_serial}"
        self._emit((self.groups.workers,), Kind.HELLO, Hello(self._hello_id))
        if sessions:
            for s in sessions:
                self._awaiting[s] = None
            self._grace_until = now + self.register_grace

    def _resubmit_calls(self) -> int:
        """Queued calls go back to their senders, who resubmit them to the manager that
        is active now; running ones answer their senders anyway."""
        n = 0
        for t in self._tasks.values():
            if t.worker is None and not t.detached:
                self._emit(
                    (t.reply_to,),
                    Kind.FAILED,
                    Failed(t.task_id, Reason.RESUBMIT, "queue manager stepped down"),
                    always=True,
                )
                n += 1
        self.stats["resubmit_requests"] += n
        return n

    def _check_quorum(self) -> None:
        has = self.has_quorum
        if has != self._had_quorum:
            if self._had_quorum is not None or not has:
                self._events.append(
                    Event(
                        "quorum",
                        {
                            "managers": len(self._mgr_members),
                            "needed": self.quorum,
                            "dispatching": has,
                            "held": sum(1 for t in self._tasks.values() if t.detached),
                        },
                    )
                )
            self._had_quorum = has

    # ------------------------------------------------------------------ messages

    def _submit(
        self, now: float, sender: str, entries: Iterable[Any]
    ) -> list[tuple[Task, float]] | None:
        """Queue the tasks, acknowledge them; return those whose ACK may be held
        back if they are assigned at once (with how long), or None."""
        acks: list[Ack] = []
        detached_acks: list[Ack] = []
        hold: list[tuple[Task, float]] | None = None
        refused = 0
        # ACKs say how many workers take tasks of the function (docs/protocol.md, ACK)
        serve_all, serving = self._available_all, self._serving
        may_hold = self._active and self.ack_delay > 0 and sender in self._acked_senders
        tasks = self._tasks
        for e in entries:
            tid = e.task_id
            detached = e.detached is True
            known = tasks.get(tid)
            if known is not None:
                if known.origin == sender or known.detached:
                    # A resubmission (after a manager change) of what we have: ack again.
                    workers = serve_all + serving.get(e.func, 0)
                    (detached_acks if detached else acks).append(new_entry(Ack, (tid, workers)))
                    self.stats["duplicate_submits"] += 1
                else:
                    self.stats["id_conflicts"] += 1
                continue
            if tid in self._tombstones:
                # It ended already: resubmitted by a sender whose answer was on its way
                # when its manager went, or handed over again by a manager that did not
                # see it end. Acknowledge; do not run it twice.
                workers = serve_all + serving.get(e.func, 0)
                (detached_acks if detached else acks).append(new_entry(Ack, (tid, workers)))
                self.stats["ended_before"] += 1
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
            key = self._next_key
            self._next_key = key + 1
            if detached:
                t = Task(
                    tid,
                    func,
                    e.args,
                    e.reply_to or self.groups.manager,
                    None,
                    now,
                    origin=sender,
                    detached=True,
                    run_ms=e.timeout_ms,
                    expires=None if e.ttl_ms is None else now + e.ttl_ms / 1000.0,
                    not_before=None if e.not_before_ms is None else e.not_before_ms / 1000.0,
                    priority=e.priority or 0,
                    key=key,
                )
                self.stats["detached_submitted"] += 1
                if self.journaled:
                    self._journal.append(("task", t))
            else:
                deadline = None if e.timeout_ms is None else now + e.timeout_ms / 1000.0
                t = Task(tid, func, e.args, sender, deadline, now, key=key)
                if e.priority:
                    t.priority = e.priority
            tasks[tid] = t
            self.stats["submitted"] += 1
            workers = serve_all + serving.get(func, 0) if serving else serve_all
            if owner is not None:
                # A worker told us it already runs this task (it was assigned by the
                # manager before us): record it there instead of running it twice.
                t.worker = owner
                t.attempt = 1
                owner.held[tid] = t
            else:
                # (as _add_queued, inline: once per task)
                tasks[tid] = t
                self._queued += 1
                if self._active:
                    nb = t.not_before
                    if nb is not None and nb > now:
                        self._ready.delay(t, nb)
                    else:
                        self._ready.add(t)
                if not workers and self._available:
                    self._unserved(func)
                if may_hold and not detached and e.ack_ms is not None:
                    delay = min(self.ack_delay, e.ack_ms / 4000.0)
                    if delay >= _MIN_ACK_HOLD:
                        if hold is None:
                            hold = []
                        hold.append((t, delay))
                        continue
            (detached_acks if detached else acks).append(new_entry(Ack, (tid, workers)))
        if acks or detached_acks:
            if acks:
                self._emit_all((sender,), _ACK, acks)
            if detached_acks:
                self._emit_all((sender,), Kind.ACK, detached_acks, after_journal=self.journaled)
            acked = self._acked_senders
            if self._active and sender not in acked:
                if len(acked) >= _ACKED_SENDERS_MAX:
                    acked.clear()
                acked[sender] = None
        if refused:
            self._event("queue_full", refused=refused, limit=self.max_queued)
        return hold

    def _add_queued(self, t: Task) -> None:
        """A new task at the tail of the queue."""
        self._tasks[t.task_id] = t
        self._queued += 1
        if self._active:
            if t.not_before is not None and t.not_before > self._last_now:
                self._ready.delay(t, t.not_before)
            else:
                self._ready.add(t)

    def _drop_queued(self, t: Task) -> None:
        """Forget a queued task (its entry in the dispatch order is now stale). If the
        active manager has just assigned it, the worker is told to drop it."""
        del self._tasks[t.task_id]
        self._queued -= 1
        pending = t.pending
        if pending is not None and pending != EXPIRING and self._active:
            self._emit((pending[0],), Kind.CANCEL, Cancel(t.task_id))
        if self._ready.parked:
            self._ready.dropped(t, self._is_queued)

    def _is_queued(self, t: Task) -> bool:
        """``t`` is still queued (not dropped, not running, not on its way to a worker)."""
        return t.worker is None and t.pending is None and self._tasks.get(t.task_id) is t

    def _unserved(self, func: str) -> None:
        """Say once (until the workers change) that tasks of ``func`` wait and no worker
        that takes tasks serves it."""
        said = self._said_unserved
        if func not in said:
            if len(said) >= _UNSERVED_MAX:
                said.clear()
            said[func] = None
            self._event("unserved", func=func, workers=self._available)

    def _hold_acks(self, now: float, sender: str, hold: list[tuple[Task, float]]) -> None:
        """After dispatching: hold back the ACKs of the tasks now running somewhere
        (their results will do), send those of the tasks still queued."""
        acks: list[Ack] = []
        late = self._late_acks
        last = late[-1][0] if late else 0.0
        ordered = True
        for t, delay in hold:
            if t.worker is not None or (t.pending is not None and t.pending != EXPIRING):
                due = now + delay
                if due < last:
                    ordered = False
                last = due
                late.append((due, t))
            else:
                acks.append(new_entry(Ack, (t.task_id, self.serving(t.func))))
        self.stats["acks_held"] += len(hold) - len(acks)
        if not ordered:
            # Senders wait for ACKs for different times: keep the list in due order.
            late.sort(key=_due)
        if acks:
            self._emit_all((sender,), Kind.ACK, acks)

    def _send_late_acks(self, now: float) -> None:
        late, tasks = self._late_acks, self._tasks
        saved = 0
        n = 0
        for due, t in late:
            if due > now:
                break
            n += 1
            if tasks.get(t.task_id) is t:
                ack = new_entry(Ack, (t.task_id, self.serving(t.func)))
                self._emit((t.reply_to,), Kind.ACK, ack)
            else:
                saved += 1  # done (or failed, cancelled) first: no ACK needed
        del late[:n]
        self.stats["acks_saved"] += saved

    def _cancel(self, sender: str, entries: Iterable[Any]) -> None:
        for e in entries:
            t = self._tasks.get(e.task_id)
            if t is None or t.origin != sender:
                continue
            if t.worker is None:
                self._drop_queued(t)
                self.stats["cancelled"] += 1
                # A sender that timed out while its task waited: it expired unrun.
                self._function(t.func).count("expired" if e.timed_out else "cancelled")
                self._ended(t)
            elif not t.cancelled:
                t.cancelled = "timed_out" if e.timed_out else "cancelled"
                self._emit((t.worker.session,), Kind.CANCEL, Cancel(t.task_id))

    def _register(self, now: float, session: str, entries: Iterable[Any]) -> None:
        if session not in self._wrk_members:
            # We could not see this session die: refuse to depend on it.
            self.stats["unknown_session_registers"] += 1
            return
        for e in entries:
            if self._active and (e.hello is None or e.hello == self._hello_id):
                # (A REGISTER answering an older HELLO may miss what we assigned since.)
                self._awaiting.pop(session, None)
            key = (session, e.worker_id)
            functions = None if e.functions is None else frozenset(e.functions)
            w = self._workers.get(key)
            if w is None:
                w = self._workers[key] = Worker(session, e.worker_id, now)
                self._by_session.setdefault(session, {})[key] = w
                if len(self._ever) < _EVER_MAX:
                    self._ever[key] = None
                self._event(
                    "worker_registered",
                    worker=_name(w),
                    capacity=e.capacity,
                    serves=_serves(functions),
                )
                self._said_no_workers = False
            elif w.capacity and not e.capacity:
                self._event("worker_draining", worker=_name(w), held=len(w.held))
            if bool(w.capacity) != bool(e.capacity) or functions != w.functions:
                self._count(w, -1)
                if functions != w.functions:
                    self._credit.leave(w)  # (filed again below, with its new crew)
                    w.functions = functions
                    self._said_unserved.clear()
                w.capacity = e.capacity
                self._count(w, 1)
            w.capacity = e.capacity
            w.slots = e.capacity if e.slots is None else min(e.slots, e.capacity)
            w.burst = max(1, e.burst or 1)
            # Only ever add what a worker says it holds: an ASSIGN may cross this
            # REGISTER, so a task missing from ``held`` is not proof it is not there.
            for tid in e.held:
                self._adopt(w, tid)
            self._update_ready(w)

    def _count(self, w: Worker, sign: int) -> None:
        """Count ``w`` (``sign`` 1) among the workers that take tasks, or stop counting
        it (-1): in all, and by the functions it serves."""
        if not w.capacity:
            return
        self._available += sign
        if w.functions is None:
            self._available_all += sign
            return
        serving = self._serving
        for f in sorted(w.functions):  # (sorted: the dict's order never follows hashes)
            n = serving.get(f, 0) + sign
            if n:
                serving[f] = n
            else:
                del serving[f]

    def _adopt(self, w: Worker, tid: str) -> None:
        if tid in w.held:
            return
        t = self._tasks.get(tid)
        if t is None:
            w.held[tid] = None
            self._foreign[tid] = w
        elif t.worker is None:
            # Queued here (resubmitted) but already running there: run it once.
            if t.pending is not None and t.pending != EXPIRING:
                self._unpropose(t.pending, tid)
            self._start(self._last_now, t, w, count=False)
        else:
            w.held[tid] = None  # running elsewhere as well: only count the credit
        w.idle_since = None

    def _start(self, now: float, t: Task, w: Worker, *, count: bool = True) -> None:
        """``t`` runs at ``w`` from now on."""
        t.worker = w
        t.attempt += 1
        t.assigned_at = now
        w.idle_since = None
        w.held[t.task_id] = t
        self._queued -= 1
        if count:
            stats = self._functions.get(t.func)
            if stats is None:
                stats = self._function(t.func)
            stats.wait.add(now - t.queued_at)

    def _done(
        self,
        now: float,
        session: str,
        worker_id: str,
        tid: str,
        outcome: str,
        result: Any,
        touched: dict[WorkerKey, Worker],
    ) -> None:
        """Worker ``worker_id`` of ``session`` finished task ``tid``; the worker goes in
        ``touched`` (to be filed again by its new credit)."""
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
            stats = self._functions.get(t.func)
            if stats is None:
                stats = self._function(t.func)
            outcomes = stats.outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            stats.run_time.add(now - t.assigned_at)
            if result is not None and outcome == "failed":
                error = _error_text(result.status, result.payload)
                self._failure(tid, t.func, f"{worker_id}@{session}", error)
                if t.detached:
                    reason = "unknown_function" if result.status != Status.ERROR else "failed"
                    self._dead_letter(t, reason, error)
            if t.detached or self._ended_since_split is not None:
                self._ended(t)
            else:
                # _ended's common case, inline (once per task)
                ended = self._tombstones
                if len(ended) >= ended.limit:
                    ended.popitem(last=False)
                ended[tid] = None
        else:
            if self._foreign.get(tid) is w:
                del self._foreign[tid]
            if result is not None:
                self._failure(
                    tid, "?", f"{worker_id}@{session}", _error_text(result.status, result.payload)
                )
        if not w.held:
            w.idle_since = now
        touched[w.key] = w

    def _ended(self, t: Task) -> None:
        """A task is over (done, failed, cancelled, expired, dropped): remember its id
        (for a while: the tombstones are bounded) so that a stale copy submitted again
        does not run it twice."""
        self._tombstones.add(t.task_id)
        if self._ended_since_split is not None and len(self._ended_since_split) < (
            self._tombstones.limit
        ):
            self._ended_since_split.append(t.task_id)
        if t.detached and self.journaled:
            self._journal.append(("end", t.task_id))

    def _dead_letter(self, t: Task, reason: str, error: str) -> None:
        letter = DeadLetter(
            t.task_id,
            t.func,
            t.args,
            t.reply_to,
            t.priority,
            t.run_ms,
            t.attempt,
            reason,
            error,
            self._last_now,
        )
        self._dead.add(letter)
        self.stats["dead_lettered"] += 1
        if self.journaled:
            self._journal.append(("dead", letter))
        if t.reply_to != self.groups.manager and reason in ("worker_lost", "expired"):
            # The group it answers is told; a handler's own error reached it already.
            self._emit((t.reply_to,), Kind.FAILED, Failed(t.task_id, Reason.DEAD_LETTER, error))
        self._event("dead_letter", task_id=t.task_id, func=t.func, reason=reason, error=error)

    def _retire(self, session: str, entries: Iterable[Any]) -> None:
        lost: list[Task] = []
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
        back: list[Task] = []
        lost: list[Task] = []
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

    def _update_ready(self, w: Worker) -> None:
        """File ``w`` in its crew with the workers that have a free slot, or prefetch
        credit only, or neither (active manager only). A worker that changes list goes
        to its end (least recently used first); one that stays keeps its place. A
        worker that gets credit brings back the waiting functions it serves."""
        if not self._active:
            return
        credit = self._credit
        crew = w.crew
        if crew is None:
            crew = credit.join(w)
        n, key = len(w.held) + w.pending, w.key
        free, extra = crew.free, crew.extra
        if w.drained or n >= w.capacity:
            if free.pop(key, None) is not None or extra.pop(key, None) is not None:
                credit.open -= 1
        elif n < w.slots:
            if key not in free:
                if extra.pop(key, None) is None:
                    # it had no credit: the functions it serves may wait for it
                    credit.open += 1
                    if self._ready.parked:
                        self._ready.unpark(crew.functions)
                credit.stamp = w.used = credit.stamp + 1
                free[key] = w
        elif key not in extra:
            if free.pop(key, None) is None:
                credit.open += 1
                if self._ready.parked:
                    self._ready.unpark(crew.functions)
            credit.stamp = w.used = credit.stamp + 1
            extra[key] = w

    def _lose_session(self, session: str) -> list[Task]:
        workers = self._by_session.get(session)
        if not workers:
            return []
        lost: list[Task] = []
        for w in list(workers.values()):
            held = self._remove_worker(w)
            lost.extend(held)
            self.stats["workers_lost"] += 1
            self._event("worker_lost", worker=_name(w), requeued=len(held))
        return lost

    def _remove_worker(self, w: Worker) -> list[Task]:
        del self._workers[w.key]
        self._count(w, -1)
        self._credit.leave(w)
        for t in self._proposed.pop(w.key, {}).values():
            # Its ASSIGN will find no worker: the task is still queued everywhere.
            t.pending = None
            self._ready.put_back(t)
        w.pending = 0
        by_session = self._by_session.get(w.session)
        if by_session is not None:
            by_session.pop(w.key, None)
            if not by_session:
                del self._by_session[w.session]
        out: list[Task] = []
        for tid, held in w.held.items():
            if held is None:
                if self._foreign.get(tid) is w:
                    del self._foreign[tid]
            elif self._tasks.get(tid) is held:
                out.append(held)
        w.held.clear()
        return out

    def _requeue(self, lost: list[Task], counted: str = "requeued") -> None:
        """Put tasks of lost workers back at the head of the queue, in order."""
        head: list[Task] = []
        for t in lost:
            worker, t.worker = t.worker, None
            self._queued += 1  # (until it is dropped below, or queued again)
            if t.cancelled:
                self._drop_queued(t)
                self.stats["cancelled"] += 1
                self._function(t.func).count(t.cancelled)
                self._ended(t)
            elif t.attempt >= self.max_attempts:
                self._drop_queued(t)
                self._function(t.func).count("worker_lost")
                why = f"worker lost {t.attempt} times (max_attempts)"
                self._failure(t.task_id, t.func, _name(worker), why)
                self._event(
                    "task_failed", task_id=t.task_id, func=t.func, worker=_name(worker), reason=why
                )
                self._ended(t)
                if t.detached:
                    self._dead_letter(t, "worker_lost", why)
                else:
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
        for t in reversed(head):
            t.key = self._head_key
            self._head_key -= 1
            if self._active:
                self._ready.add_head(t)
        if head:
            self.stats[counted] += len(head)

    def _no_workers_check(self) -> None:
        """Say once (until a worker registers) that tasks wait and no worker can run them."""
        if self._queued and not self._said_no_workers and not self._workers:
            self._said_no_workers = True
            self._event("no_workers", queued=self._queued)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, now: float) -> None:
        credit = self._credit
        if not (self._active and self._queued and credit.open) or self.paused:
            return
        ready = self._ready
        order = ready.order
        if not order:
            return  # every function that has tasks waiting is served by no worker with credit
        if self._awaiting:
            if now < self._grace_until:
                # After a takeover, wait for the workers to say what they still run,
                # so resubmitted tasks are not started twice.
                return
            self._awaiting.clear()
        tasks = self._tasks
        managers = len(self._mgr_members)
        detached_ok = managers >= self.quorum
        if detached_ok and ready.held:
            ready.unhold()
        replicating = managers > 1
        lru = self._lru
        aging = ready.aging
        gen = credit.gen
        stamp = credit.stamp
        assigned = 0
        chosen: Worker | None = None  # the worker taking a burst, and how many more
        more = 0
        # The function whose first task ranks best, and the crews of workers that serve
        # it: chosen again for every task when several functions have tasks waiting,
        # once when only one has (the common case), or when it is set aside.
        line: Line | None = None
        several = len(order) > 1
        while credit.open:
            if several or line is None:
                if not order:
                    break
                line = order[0] if len(order) == 1 else ready.best()
                if line is None:
                    break
                if line.gen != gen:
                    line.crews = credit.crews_for(line.func)
                    line.gen = gen
                crews = line.crews
                crew = crews[0] if len(crews) == 1 else None
            if crew is not None:
                # A worker with a free slot starts the task now; prefetch credit only
                # when every slot is busy.
                pool = crew.free or crew.extra
                if not pool:
                    ready.park(line)
                    line, several = None, len(order) > 1
                    continue
            elif not any(c.free or c.extra for c in crews):
                # No worker with credit serves it: it waits aside, and the functions
                # behind it go on.
                ready.park(line)
                line, several = None, len(order) > 1
                continue
            t: Task | None
            if line.mask == 1 and not line.late:
                # The common case (Line.pop's first lines): priority 0 only, in key order.
                level = line.levels[0]
                t = level.popleft()  # type: ignore[union-attr]
                if not level:
                    line.mask = 0
                    line.tops[0] = None
            else:
                t = line.pop(aging)
            if t is None:
                break  # (the last line, empty: best() drops the others)
            if t.worker is not None or t.pending is not None or tasks.get(t.task_id) is not t:
                continue  # cancelled, adopted or assigned since it was queued
            deadline = t.deadline
            if deadline is not None and deadline <= now:
                self._decide_expire(now, t, "deadline")
                continue
            if t.expires is not None and t.expires <= now:
                self._decide_expire(now, t, "ttl")
                continue
            if t.not_before is not None and t.not_before > now:
                ready.delay(t, t.not_before)
                continue
            if t.detached and not detached_ok:
                ready.hold(t)
                continue
            if crew is None:
                pool, key, burst = self._choose_among(crews, chosen if more else None)
                if burst:
                    more -= 1
            elif more and chosen is not None and chosen.key in pool:
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
            if t.detached:
                remaining = t.run_ms
            elif deadline is None:
                remaining = None
            else:
                remaining = max(1, math.ceil((deadline - now) * 1000))
            entry = new_entry(
                Assign,
                (w.worker_id, t.task_id, t.func, t.args, t.reply_to, t.attempt + 1, remaining),
            )
            if replicating:
                # The decision goes to the worker and to every manager in one message;
                # we apply it, as they do, when it comes back in the total order.
                t.pending = key
                w.pending += 1
                proposed = self._proposed.get(key)
                if proposed is None:
                    proposed = self._proposed[key] = {}
                proposed[t.task_id] = t
                okey: tuple[tuple[str, ...], Kind, bool, bool] = (
                    (w.session, self.groups.manager),
                    _ASSIGN,
                    False,
                    False,
                )
            else:
                # Alone: applied now (as _start does; inline: this is the hot path).
                t.worker = w
                t.attempt += 1
                t.assigned_at = now
                w.idle_since = None
                w.held[t.task_id] = t
                self._queued -= 1
                fstats = self._functions.get(t.func)
                if fstats is None:
                    fstats = self._function(t.func)
                fstats.wait.add(now - t.queued_at)
                okey = ((w.session,), _ASSIGN, False, False)
            # Filed again at the end of its list (least recently used first), or not.
            n = len(w.held) + w.pending
            if n < w.slots:
                stamp += 1
                w.used = stamp
                w.crew.free[key] = w
            elif n < w.capacity:
                stamp += 1
                w.used = stamp
                w.crew.extra[key] = w
            else:
                credit.open -= 1
            batch = self._out.get(okey)
            if batch is None:
                self._out[okey] = [entry]
            else:
                batch.append(entry)
            assigned += 1
        credit.stamp = stamp
        self.stats["assigned"] += assigned

    def _choose_among(
        self, crews: tuple[Crew, ...], chosen: Worker | None
    ) -> tuple[dict[WorkerKey, Worker], WorkerKey, bool]:
        """The worker of ``crews`` (several, one with credit at least) for the next task:
        ``chosen`` if it is taking a burst and still qualifies, else the least recently
        used one with a free slot, or with prefetch credit when none has a free slot
        (or the policy's choice among those). Its pool, its key, and whether it was
        the burst's."""
        credit = self._credit
        slot = any(c.free for c in crews)
        if chosen is not None and chosen.crew in crews:
            pool = chosen.crew.free if slot else chosen.crew.extra
            if chosen.key in pool:
                return pool, chosen.key, True
        if self._lru:
            least = credit.least_recent(crews)
            assert least is not None
            return least, next(iter(least)), False
        candidates = credit.candidates(crews)
        key = self._policy.choose([w.key for w in candidates])
        for w in candidates:
            if w.key == key:
                crew = w.crew
                assert crew is not None  # (a candidate is filed in its crew)
                return (crew.free if key in crew.free else crew.extra), key, False
        raise ValueError(f"assignment policy chose {key!r}, not a candidate")

    def _unpropose(self, key: WorkerKey, tid: str) -> None:
        """Our own assignment of task ``tid`` to worker ``key`` came back through the
        total order (or no longer stands): it no longer uses the worker's credit here."""
        proposed = self._proposed.get(key)
        if proposed is None:
            return
        t = proposed.pop(tid, None)
        if t is None:
            return
        if not proposed:
            del self._proposed[key]
        if t.pending == key:
            t.pending = None
        w = self._workers.get(key)
        if w is not None:
            w.pending -= 1

    def _decide_expire(self, now: float, t: Task, why: str) -> None:
        if self.replicating:
            t.pending = EXPIRING
            self._emit(
                (self.groups.manager,), Kind.DECIDE, Decide("expire", t.task_id, why, "", "")
            )
        else:
            self._expire(now, t, why)

    def _expire(self, now: float, t: Task, why: str) -> None:
        """A queued task whose time ran out: its sender gave up (``deadline``), or a
        detached task's time to live passed (``ttl``: a dead letter)."""
        self._drop_queued(t)
        self.stats["expired"] += 1
        self._function(t.func).count("expired")
        self._ended(t)
        if t.detached:
            self._dead_letter(t, "expired", "its time to live ran out before it started")

    def _sweep(self, now: float) -> None:
        """Expire queued tasks whose time ran out (their sender gave up on them, or
        their time to live passed)."""
        for t in list(self._tasks.values()):
            if t.worker is not None or t.pending is not None:
                continue
            if t.deadline is not None and t.deadline <= now:
                self._decide_expire(now, t, "deadline")
            elif t.expires is not None and t.expires <= now:
                self._decide_expire(now, t, "ttl")

    # ------------------------------------------------------------------ effects

    def _emit(
        self, groups: tuple[str, ...], kind: Kind, entry: Any, *, always: bool = False
    ) -> None:
        """Queue ``entry`` for ``groups`` (the active manager's messages; a standby
        sends nothing, unless ``always``)."""
        if not (self._active or always):
            return
        key = (groups, kind, False, False)
        entries = self._out.get(key)
        if entries is None:
            entries = self._out[key] = []
        entries.append(entry)

    def _emit_all(
        self,
        groups: tuple[str, ...],
        kind: Kind,
        entries: list[Any],
        *,
        after_journal: bool = False,
    ) -> None:
        if not self._active:
            return
        key = (groups, kind, False, after_journal)
        existing = self._out.get(key)
        if existing is None:
            self._out[key] = entries
        else:
            existing.extend(entries)

    def _emit_always(
        self, groups: tuple[str, ...], kind: Kind, entries: list[Any], *, safe: bool = False
    ) -> None:
        """Messages any manager sends (joining, handing over)."""
        key = (groups, kind, safe, False)
        existing = self._out.get(key)
        if existing is None:
            self._out[key] = list(entries)
        else:
            existing.extend(entries)
