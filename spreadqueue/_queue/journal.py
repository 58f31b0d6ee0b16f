"""A queue manager's journal: its detached tasks and dead letters on disk (SQLite).

With a journal, detached tasks survive the loss of every manager at once: a manager
that starts again reads what its journal holds and runs it (or hands it to the managers
already there). What is written, and when (docs/protocol.md, section 10.7):

- The state machine says what changed (:meth:`QueueManager.take_journal`); the manager
  service hands each reactor turn's changes to :meth:`Journal.write` as one batch, and
  SQLite transactions write them in the journal's own thread: the reactor never waits
  for the disk. Batches that come in while a transaction is being written go together
  into the next one (group commit: one fsync for many turns).
- The ACK of a detached task goes out only once the batch that holds it is committed.
- ``sync='full'`` (the default) makes each commit an fsync (``PRAGMA synchronous=FULL``
  in WAL mode): a task that was acknowledged survives a power cut. ``sync='normal'``
  leaves the fsync to WAL checkpoints: a task survives the crash of the process (the
  OS has it) but may be lost with the machine.
- Ids of tasks that ended are kept (the last ``max_ended``) so that a stale journal
  cannot run a task again that another manager finished meanwhile.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .records import DeadLetter, Task

__all__ = ["Journal", "JournalError"]

SYNC_MODES: Final = ("full", "normal")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, func TEXT NOT NULL, args BLOB NOT NULL, reply_to TEXT NOT NULL,
    priority INTEGER NOT NULL, run_ms INTEGER, expires REAL, not_before REAL,
    accepted REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead (
    id TEXT PRIMARY KEY, func TEXT NOT NULL, args BLOB NOT NULL, reply_to TEXT NOT NULL,
    priority INTEGER NOT NULL, run_ms INTEGER, attempts INTEGER NOT NULL,
    reason TEXT NOT NULL, error TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ended (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE);
"""


class JournalError(Exception):
    """The journal cannot be opened or read (it belongs to another queue, say)."""


class Journal:
    """The journal of queue ``queue`` at ``path`` (created if missing).

    :meth:`load` reads it (at start, before the manager joins); :meth:`write` records a
    batch of changes in the journal's thread; :meth:`close` finishes the writes.
    """

    def __init__(
        self,
        reactor: Any,
        path: str,
        queue: str,
        *,
        sync: str = "full",
        max_ended: int = 100_000,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        self.path = path
        self.queue = queue
        self.sync = sync
        self.max_ended = max_ended
        self._reactor = reactor
        self._db: sqlite3.Connection | None = None
        self._pool: ThreadPool | None = None
        # batches waiting for the next transaction, whether one is being written, and
        # who waits for the journal to be idle (close)
        self._waiting: list[tuple[list[Any], int, Deferred[None]]] = []  # (rows, changes, d)
        self._committing = False
        self._idle: list[Deferred[None]] = []
        #: transactions, the batches (turns) and changes they wrote, the slowest (seconds)
        self.stats: dict[str, float] = {
            "commits": 0,
            "batches": 0,
            "changes": 0,
            "slowest_commit": 0.0,
        }

    # ------------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        try:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.sync.upper()}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'queue'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('queue', ?)", (self.queue,))
            elif row[0] != self.queue:
                raise JournalError(
                    f"{self.path} is the journal of queue {row[0]!r}, not {self.queue!r}"
                )
            return db
        except sqlite3.Error as e:
            raise JournalError(f"cannot open the journal {self.path}: {e}") from None

    def load(self) -> tuple[list[Task], list[DeadLetter], list[str]]:
        """What the journal holds: detached tasks (oldest first), dead letters and the
        ids of tasks that ended. Opens the journal; raises JournalError."""
        db = self._db = self._connect()
        try:
            tasks = []
            for row in db.execute(
                "SELECT id, func, args, reply_to, priority, run_ms, expires, not_before, "
                "accepted FROM tasks ORDER BY rowid"
            ):
                tid, func, args, reply_to, priority, run_ms, expires, not_before, at = row
                tasks.append(
                    Task(
                        tid,
                        func,
                        bytes(args),
                        reply_to,
                        None,
                        at,
                        detached=True,
                        run_ms=run_ms,
                        expires=expires,
                        not_before=not_before,
                        priority=priority,
                    )
                )
            dead = [
                DeadLetter(r[0], r[1], bytes(r[2]), *r[3:])
                for r in db.execute(
                    "SELECT id, func, args, reply_to, priority, run_ms, attempts, reason, "
                    "error, at FROM dead ORDER BY rowid"
                )
            ]
            ended = [r[0] for r in db.execute("SELECT id FROM ended ORDER BY seq")]
        except sqlite3.Error as e:
            raise JournalError(f"cannot read the journal {self.path}: {e}") from None
        return tasks, dead, ended

    # ------------------------------------------------------------------ writing

    def write(self, ops: Sequence[tuple[str, Any]]) -> Deferred[None]:
        """Record ``ops`` (from QueueManager.take_journal), after every batch written
        before; the Deferred fires once they are committed.

        Group commit: while one transaction is being written, the batches that come in
        wait, and the next transaction writes all of them at once (one fsync for many
        turns, as many senders' turns come in while the disk syncs)."""
        rows = [row for op, value in ops for row in _rows(op, value)]
        d: Deferred[None] = Deferred()
        self._waiting.append((rows, len(ops), d))
        if not self._committing:
            self._commit_waiting()
        return d

    def _commit_waiting(self) -> None:
        batches, self._waiting = self._waiting, []
        rows = [row for batch, _, _ in batches for row in batch]
        changes = sum(n for _, n, _ in batches)
        self._committing = True
        if self._pool is None:
            if not IReactorThreads.providedBy(self._reactor):
                # A reactor without threads (task.Clock in tests): write inline.
                try:
                    self._commit(rows, len(batches), changes)
                except BaseException:
                    self._committed(Failure(), batches)
                else:
                    self._committed(None, batches)
                return
            self._pool = ThreadPool(1, 1, name=f"spreadqueue-journal-{self.queue}")
            self._pool.start()
        assert IReactorFromThreads.providedBy(self._reactor)
        d = deferToThreadPool(self._reactor, self._pool, self._commit, rows, len(batches), changes)
        d.addBoth(self._committed, batches)

    def _committed(
        self, result: Failure | None, batches: list[tuple[list[Any], int, Deferred[None]]]
    ) -> None:
        self._committing = False
        for _, _, d in batches:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
        if self._waiting:
            self._commit_waiting()
        elif self._idle:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def _commit(self, rows: list[tuple[str, tuple[Any, ...]]], batches: int, changes: int) -> None:
        """Write ``rows`` (the SQL of ``changes`` changes from ``batches`` turns) as one
        transaction."""
        db = self._db
        if db is None:
            db = self._db = self._connect()
        started = time.monotonic()
        db.execute("BEGIN")
        try:
            for sql, params in rows:
                db.execute(sql, params)
            if rows:
                db.execute(
                    "DELETE FROM ended WHERE seq <= (SELECT MAX(seq) FROM ended) - ?",
                    (self.max_ended,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        took = time.monotonic() - started
        self.stats["commits"] += 1
        self.stats["batches"] += batches
        self.stats["changes"] += changes
        self.stats["slowest_commit"] = max(self.stats["slowest_commit"], took)

    def close(self) -> Deferred[None]:
        """Finish the writes under way and those waiting, then close."""
        if self._committing or self._waiting:
            d: Deferred[None] = Deferred()
            self._idle.append(d)
        else:
            d = succeed(None)

        def done(_: object) -> None:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.stop()
            if self._db is not None:
                self._db.close()
                self._db = None

        d.addBoth(done)
        return d


def _rows(op: str, value: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """The SQL of one change."""
    if op == "task":
        t: Task = value
        params = (t.task_id, t.func, t.args, t.reply_to, t.priority, t.run_ms, t.expires)
        return [
            (
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*params, t.not_before, t.queued_at),
            ),
            # A task held is not over, whatever it was before: a dead letter requeued,
            # or one a resync brought back; else recovery would skip it as ended.
            ("DELETE FROM ended WHERE id = ?", (t.task_id,)),
        ]
    if op == "end":
        return [
            ("DELETE FROM tasks WHERE id = ?", (value,)),
            ("INSERT OR IGNORE INTO ended (id) VALUES (?)", (value,)),
        ]
    if op == "dead":
        d: DeadLetter = value
        return [
            ("INSERT OR REPLACE INTO dead VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(d.fields()))
        ]
    if op == "undead":
        return [("DELETE FROM dead WHERE id = ?", (value,))]
    if op == "reset":
        return [("DELETE FROM tasks", ()), ("DELETE FROM dead", ())]
    raise ValueError(f"unknown journal change {op!r}")
