"""What a queue manager holds: tasks, workers, dead letters, and their snapshot.

These records are the *replicated* part of a manager's state: every manager of a queue,
active or standing by, keeps the same ones, built from the same totally ordered input
(docs/protocol.md, section 10). :func:`snapshot` and :func:`restore` turn them into one
msgpack map and back: the SYNC that brings a joining manager up to date, and the
equality the tests check between replicas (:func:`canonical`).

Pure data and functions: no clock (times come in as arguments), no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

import msgpack

from .messages import MAX_PRIORITY

if TYPE_CHECKING:
    from .credit import Crew

__all__ = [
    "DeadLetter",
    "DeadLetters",
    "Task",
    "Tombstones",
    "Worker",
    "WorkerKey",
    "canonical",
    "restore",
    "snapshot",
]

#: A worker as the manager knows it: (its session's private group, its worker id).
WorkerKey = tuple[str, str]

#: Version of the snapshot map: a SYNC of another version is refused (logged), and the
#: requester stays unsynced until an active manager of its version answers.
SNAPSHOT_VERSION: Final = 1


class Task:
    """A task the managers hold: queued (``worker is None``) or running at ``worker``.

    ``reply_to`` is where its answers go: the sender's private group (a call someone
    waits for), the group a detached task names, or the queue's manager group when
    nobody wants the answer. ``origin`` is the session that submitted it (who may
    cancel it). ``key`` orders the queue (lower first): submits take increasing keys,
    tasks put back at the head decreasing ones, the same at every manager.

    ``pending`` is the active manager's own note, never replicated: the worker it has
    proposed the task to (or ``EXPIRING``) while that decision travels through the
    total order back to it.
    """

    __slots__ = (
        "args",
        "assigned_at",
        "attempt",
        "cancelled",
        "deadline",
        "detached",
        "expires",
        "func",
        "key",
        "not_before",
        "origin",
        "pending",
        "priority",
        "queued_at",
        "reply_to",
        "run_ms",
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
        *,
        origin: str | None = None,
        detached: bool = False,
        run_ms: int | None = None,
        expires: float | None = None,
        not_before: float | None = None,
        priority: int = 0,
        key: int = 0,
    ) -> None:
        self.task_id = task_id
        self.func = func
        self.args = args
        self.reply_to = reply_to
        self.origin = reply_to if origin is None else origin
        #: when its sender stops waiting (rpc tasks; local clock), None: never
        self.deadline = deadline
        self.queued_at = queued_at
        self.assigned_at = queued_at
        self.detached = detached
        #: a detached task's limit for one run (ms), passed to the worker
        self.run_ms = run_ms
        #: when a detached task not started by then is dead-lettered (local clock)
        self.expires = expires
        #: not started before this epoch time (seconds)
        self.not_before = not_before
        self.priority = priority
        self.key = key
        self.attempt = 0
        self.worker: Worker | None = None
        #: None, or the outcome the task counts as once its cancellation is through
        #: ("cancelled", or "timed_out" when its sender's timeout ran out)
        self.cancelled: str | None = None
        self.pending: Any = None


#: ``Task.pending`` of a task whose expiry the active manager has decided.
EXPIRING: Final = "expiring"


class Worker:
    """A registered worker. ``held`` maps the task ids it holds to their task, or to
    None for tasks the managers know nothing about (held since before a manager
    change, or cancelled while their assignment travelled); every held task uses one
    credit. Of its ``capacity``, ``slots`` run at once; the rest is prefetch.

    ``pending`` (the active manager's own count, never replicated) is how many tasks it
    has proposed to this worker whose ASSIGN has not come back through the total
    order yet: they use credit too. ``crew`` and ``used`` are the active manager's
    notes too: the workers it files with it (same functions) and when it was last
    filed (:mod:`.credit`).
    """

    __slots__ = (
        "burst",
        "capacity",
        "crew",
        "drained",
        "functions",
        "held",
        "idle_since",
        "key",
        "pending",
        "registered_at",
        "session",
        "slots",
        "used",
        "worker_id",
    )

    def __init__(self, session: str, worker_id: str, now: float) -> None:
        self.session = session
        self.worker_id = worker_id
        self.key: WorkerKey = (session, worker_id)
        self.capacity = 0
        self.slots = 0
        self.burst = 1
        self.held: dict[str, Task | None] = {}
        self.registered_at = now
        #: when it last held nothing (None while it holds tasks)
        self.idle_since: float | None = now
        #: an operator drained it: it gets no new task
        self.drained = False
        #: the functions it serves (None: every function)
        self.functions: frozenset[str] | None = None
        self.pending = 0
        self.crew: Crew | None = None
        self.used = 0

    @property
    def load(self) -> int:
        """Credits in use: tasks held, and tasks on their way to it."""
        return len(self.held) + self.pending

    def name(self) -> str:
        """How logs and operators name it: its id at its session."""
        return f"{self.worker_id}@{self.session}"


class DeadLetter:
    """A detached task that failed for good, kept for an operator to requeue or purge."""

    __slots__ = (
        "args",
        "at",
        "attempts",
        "error",
        "func",
        "priority",
        "reason",
        "reply_to",
        "run_ms",
        "task_id",
    )

    def __init__(
        self,
        task_id: str,
        func: str,
        args: bytes,
        reply_to: str,
        priority: int,
        run_ms: int | None,
        attempts: int,
        reason: str,
        error: str,
        at: float,
    ) -> None:
        self.task_id = task_id
        self.func = func
        self.args = args
        self.reply_to = reply_to
        self.priority = priority
        self.run_ms = run_ms
        self.attempts = attempts
        #: why: 'failed' (the handler raised), 'unknown_function', 'worker_lost'
        #: (max_attempts runs lost), 'expired' (its time to live ran out)
        self.reason = reason
        self.error = error
        #: when (epoch seconds, the deciding manager's clock)
        self.at = at

    def fields(self) -> list[Any]:
        """Its fields in snapshot order."""
        return [
            self.task_id,
            self.func,
            self.args,
            self.reply_to,
            self.priority,
            self.run_ms,
            self.attempts,
            self.reason,
            self.error,
            self.at,
        ]

    def summary(self, now: float) -> dict[str, Any]:
        """What status shows of it."""
        return {
            "task_id": self.task_id,
            "func": self.func,
            "reason": self.reason,
            "error": self.error,
            "attempts": self.attempts,
            "ago": now - self.at,
        }


class DeadLetters:
    """The dead letters, oldest first, at most ``limit`` (the oldest go first)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the dead-letter limit must be at least 1")
        self.limit = limit
        # ordered by a linked list: dropping the oldest is O(1) (see Tombstones)
        self._items: OrderedDict[str, DeadLetter] = OrderedDict()
        #: dead letters dropped because the list was full
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self._items.values())

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._items

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter`` (replacing one of the same id), dropping the oldest if full."""
        items = self._items
        items.pop(letter.task_id, None)
        while len(items) >= self.limit:
            items.popitem(last=False)
            self.dropped += 1
        items[letter.task_id] = letter

    def take(self, task_ids: Iterable[str]) -> list[DeadLetter]:
        """Remove and return the dead letters of ``task_ids`` (unknown ids skipped)."""
        items = self._items
        return [items.pop(t) for t in list(task_ids) if t in items]

    def ids(self) -> list[str]:
        """Every id, oldest first."""
        return list(self._items)

    def recent(self, n: int) -> list[DeadLetter]:
        """The ``n`` newest, newest first."""
        out: list[DeadLetter] = []
        for letter in reversed(self._items.values()):
            if len(out) >= n:
                break
            out.append(letter)
        return out


class Tombstones(OrderedDict[str, None]):
    """Ids of tasks that ended, so that one submitted or handed over again (by a sender
    whose answer crossed its resubmission, a manager coming back with a journal, or the
    other side of a healed partition) is not run again. Bounded: the oldest are
    forgotten first. A mapping of ids to None, so that ``id in`` costs no Python call
    on the manager's hot path; an OrderedDict, not a dict, because a full one forgets
    its oldest id on every add: a plain dict finds its first live entry by scanning
    past the ones deleted before it (17 us per add at 100,000 ids, measured), an
    OrderedDict unlinks it."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def add(self, task_id: str) -> None:
        if task_id in self:
            return
        if len(self) >= self.limit:
            self.popitem(last=False)
        self[task_id] = None

    def discard(self, task_id: str) -> None:
        self.pop(task_id, None)


# --------------------------------------------------------------------------- snapshots


def _ms(value: float | None, now: float) -> int | None:
    """A local deadline as milliseconds from ``now`` (clocks differ between managers)."""
    return None if value is None else max(0, round((value - now) * 1000))


def _at(ms: int | None, now: float) -> float | None:
    return None if ms is None else now + ms / 1000.0


def snapshot(
    tasks: Iterable[Task],
    workers: Iterable[Worker],
    dead: DeadLetters,
    tombstones: Tombstones,
    *,
    keys: tuple[int, int],
    paused: bool,
    now: float,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The replicated state as one msgpack map (SYNC's payload, docs/protocol.md 10.4).

    Deadlines travel as milliseconds left, so each manager reads them by its own clock.
    """
    data = {
        "version": SNAPSHOT_VERSION,
        "keys": list(keys),
        "paused": paused,
        "tasks": [
            [
                t.task_id,
                t.func,
                t.args,
                t.reply_to,
                t.origin,
                t.detached,
                t.run_ms,
                _ms(t.deadline, now),
                _ms(t.expires, now),
                None if t.not_before is None else round(t.not_before * 1000),
                t.priority,
                t.key,
                t.attempt,
                None if t.worker is None else list(t.worker.key),
                t.cancelled,
            ]
            for t in tasks
        ],
        "workers": [
            [
                w.session,
                w.worker_id,
                w.capacity,
                w.slots,
                w.burst,
                w.drained,
                None if w.functions is None else sorted(w.functions),
                list(w.held),
            ]
            for w in workers
        ],
        "dead": [d.fields() for d in dead],
        "dead_dropped": dead.dropped,
        "tombstones": list(tombstones),
        **(extra or {}),
    }
    return msgpack.packb(data, use_bin_type=True)  # type: ignore[no-any-return]


class Restored:
    """What :func:`restore` read: the records, linked, in their replicated order."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.workers: dict[WorkerKey, Worker] = {}
        self.foreign: dict[str, Worker] = {}
        self.dead: list[DeadLetter] = []
        self.dead_dropped = 0
        self.tombstones: list[str] = []
        self.keys = (0, 0)
        self.paused = False
        self.extra: dict[str, Any] = {}


def restore(data: bytes, now: float) -> Restored:
    """The records of a :func:`snapshot`; ValueError when it is not one we can read."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if raw.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {raw.get('version')!r}, not {SNAPSHOT_VERSION}")
        out = Restored()
        out.keys = (int(raw["keys"][0]), int(raw["keys"][1]))
        out.paused = bool(raw["paused"])
        for w in raw["workers"]:
            session, worker_id, capacity, slots, burst, drained, functions, _held = w
            worker = Worker(session, worker_id, now)
            worker.capacity, worker.slots, worker.burst = capacity, slots, burst
            worker.drained = drained
            worker.functions = None if functions is None else frozenset(functions)
            out.workers[worker.key] = worker
        for f in raw["tasks"]:
            (tid, func, args, reply_to, origin, detached, run_ms, deadline, expires) = f[:9]
            (not_before, priority, key, attempt, at, cancelled) = f[9:15]
            if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
                raise ValueError(f"task {tid!r} has priority {priority!r}, not 0..{MAX_PRIORITY}")
            t = Task(
                tid,
                func,
                args,
                reply_to,
                _at(deadline, now),
                now,
                origin=origin,
                detached=detached,
                run_ms=run_ms,
                expires=_at(expires, now),
                not_before=None if not_before is None else not_before / 1000.0,
                priority=priority,
                key=key,
            )
            t.attempt = attempt
            t.cancelled = cancelled
            if at is not None:
                t.worker = out.workers[(at[0], at[1])]
            out.tasks[tid] = t
        for w in raw["workers"]:
            worker = out.workers[(w[0], w[1])]
            for tid in w[7]:
                held = out.tasks.get(tid)
                if held is not None and held.worker is worker:
                    worker.held[tid] = held
                else:
                    worker.held[tid] = None
                    out.foreign[tid] = worker
            if worker.held:
                worker.idle_since = None
        out.dead = [DeadLetter(*d) for d in raw["dead"]]
        out.dead_dropped = int(raw.get("dead_dropped", 0))
        out.tombstones = list(raw["tombstones"])
        out.extra = {
            k: v
            for k, v in raw.items()
            if k not in ("version", "keys", "paused", "tasks", "workers", "dead", "tombstones")
        }
        return out
    except ValueError:
        raise
    except Exception as e:  # a hostile or broken snapshot: one error type for callers
        raise ValueError(f"not a queue snapshot: {e!r}") from None


def canonical(data: bytes) -> dict[str, Any]:
    """A snapshot in a form where two replicas' states compare equal exactly when they
    hold the same records (order-free where the order is not replicated; deadlines
    left out: they are read by each manager's own clock)."""
    raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
    tasks = sorted(
        ([*f[:7], *f[9:]] for f in raw["tasks"]),
        key=lambda f: f[0],
    )
    workers = sorted(([*w[:7], sorted(w[7])] for w in raw["workers"]), key=lambda w: (w[0], w[1]))
    return {
        "keys": raw["keys"],
        "paused": raw["paused"],
        "tasks": tasks,
        "workers": workers,
        "dead": [d[:9] for d in raw["dead"]],
        "tombstones": raw["tombstones"],
    }
