"""``Sender``: submits tasks to a queue and collects their results."""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from typing import Any, Final

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spread.interfaces import ISpreadSession
from .._spread.session import SessionBack, SessionLost
from .._spread.wire import SAFE_MESS, MembershipMessage, RegularMessage
from .deadlines import Deadlines
from .errors import (
    MalformedMessage,
    NoManager,
    PayloadTooLarge,
    SenderStopped,
    TaskError,
    TaskTimeout,
)
from .interfaces import ISerializer
from .messages import (
    MAX_FUNC,
    MAX_PAYLOAD,
    MAX_PRIORITY,
    MAX_TIMEOUT_MS,
    MESS_TYPE_BASE,
    Cancel,
    Kind,
    Reason,
    Status,
    Submit,
    decode,
    new_entry,
)
from .names import queue_groups
from .outbox import Turn, send
from .replies import Answers, Reply, answer, failure
from .serializer import default_serializer
from .throttle import WarningThrottle

__all__ = ["Reply", "Sender"]

_BACKLOG: Final = 0  # not sent yet (window full, not started, or to resend)
_UNACKED: Final = 1  # sent, no manager acknowledged it yet
_ACKED: Final = 2  # a manager queued it

_MINE: Final = frozenset(MESS_TYPE_BASE + k for k in (Kind.ACK, Kind.RESULT, Kind.FAILED))
_OK: Final = int(Status.OK)
# (plain names: Kind.ACK costs a descriptor call in Python 3.11, on every message)
_ACK: Final = Kind.ACK
_RESULT: Final = Kind.RESULT
_SUBMIT: Final = Kind.SUBMIT


def _awaits_ack(entry: tuple[float, _Pending]) -> bool:
    """Whether an entry of the acknowledgement deadlines still counts: its task was
    sent with that deadline and is not acknowledged (nor finished: then it is
    _BACKLOG)."""
    deadline, p = entry
    return p.state == _UNACKED and p.ack_deadline == deadline


class _Pending:
    __slots__ = (
        "ack_deadline",
        "acked_by",
        "args",
        "deadline",
        "deferred",
        "detached",
        "func",
        "priority",
        "state",
        "task_id",
        "timeout",
        "workerless",
    )

    def __init__(
        self,
        task_id: str,
        func: str,
        args: bytes,
        timeout: float | None,
        deadline: float | None,
        deferred: Deferred[Any] | None,
    ) -> None:
        self.task_id = task_id
        self.func = func
        self.args = args
        self.timeout = timeout
        self.deadline = deadline
        self.deferred = deferred
        self.priority = 0
        self.state = _BACKLOG
        self.acked_by: str | None = None
        self.ack_deadline = 0.0
        #: the manager said no worker was registered when it queued the task
        self.workerless = False
        #: a detached task's SUBMIT fields after ``ack_ms`` (None: a call)
        self.detached: tuple[Any, ...] | None = None


class Sender:
    """Submits calls to queue ``queue`` over ``session`` and collects the answers.

    - :meth:`submit` queues a call and returns its task id at once; :meth:`receive`
      gives the answers of submitted tasks in completion order.
    - :meth:`rpc` is a call with its own Deferred (cancellable; concurrent calls never
      see each other's answers).

    Every submission must be acknowledged by the queue's active manager within
    ``ack_timeout`` seconds, else it fails with NoManager. At most ``window``
    submissions are unacknowledged at once (more wait here), so a fast sender cannot
    bury the manager. When the manager that acknowledged a task goes away, the task is
    submitted again to whichever manager is active then.

    On a session that reconnects (``connect(..., reconnect=True)``), losing the daemon
    fails nothing: pending tasks wait, each under its own timeout, and once the session
    is back every unfinished one is submitted again with the same id (managers
    acknowledge what they have, adopt what a worker still runs, queue the rest). The
    acknowledgement timeout starts again at that resubmission. On a session that does
    not, pending tasks fail with SenderStopped when it is lost.

    Any number of senders (and workers, managers) may share one session.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        session: ISpreadSession,
        queue: str,
        *,
        serializer: ISerializer | None = None,
        ack_timeout: float = 5.0,
        window: int = 256,
        id_prefix: str | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.groups = queue_groups(queue)
        self.session = session
        self.ack_timeout = ack_timeout
        self.window = window
        self._reactor = reactor
        self._serializer: ISerializer = serializer or default_serializer()
        # Task ids are unique across senders and processes: a random prefix per Sender
        # (several share one session, so the session's name is not enough) + a counter.
        prefix = id_prefix if id_prefix is not None else secrets.token_hex(8)
        if not prefix or len(prefix) > 40 or "." in prefix:
            raise ValueError("id_prefix must be 1..40 characters without '.'")
        self._prefix = prefix + "."
        # Sent with every SUBMIT: a manager may hold the ACK of a task it assigns at
        # once back for a fraction of this, and leave it out when the result is first.
        self._ack_ms: int | None = max(0, min(MAX_TIMEOUT_MS, int(ack_timeout * 1000)))
        self._counter = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._backlog: deque[_Pending] = deque()
        self._unacked = 0
        self._acks: deque[tuple[float, _Pending]] = deque()
        self._ack_timer: IDelayedCall | None = None
        # Task timeouts: one heap and one timer for all tasks, not a DelayedCall each.
        self._deadlines: Deadlines[_Pending] = Deadlines(reactor, self._timed_out, self._is_pending)
        self._answers = Answers()  # what submit()ted tasks answered, for receive()
        self._members: dict[str, None] = {}
        # sessions that sent our session ACKs (the managers we may depend on; managers
        # of other queues sharing the session too, harmlessly: they are not in Q-snd)
        self._ackers: dict[str, None] = {}
        # what the next flush sends to Q-mgr (one message per kind, split if large)
        self._submits: list[Submit] = []
        self._detached: list[Submit] = []  # detached tasks' SUBMITs: sent SAFE
        self._cancels: list[Cancel] = []
        self._to_manager = (self.groups.manager,)
        self._turn = Turn(reactor, self._flush, session)
        self._malformed = WarningThrottle(reactor, self.log)
        self._state = "new"  # new -> starting -> ready -> stopped
        self._stopped_because = "it was stopped"  # what _fail_all last said, for new calls
        # the session is away (reconnecting): nothing goes out until it is back
        self._away = False
        self._start_d: Deferred[None] | None = None
        self.stats: dict[str, int] = {
            "submitted": 0,
            "results": 0,
            "late_replies": 0,
            "resubmitted": 0,
            "malformed": 0,
            "messages_sent": 0,
        }

    # ------------------------------------------------------------------ status

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished (answered, failed, timed out, cancelled)."""
        return len(self._pending)

    @property
    def unacknowledged(self) -> int:
        """Submissions sent and not yet acknowledged by a manager."""
        return self._unacked

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Deferred[None]:
        """Join the queue's sender group; submissions are sent once it fires.

        Called by the first :meth:`submit` / :meth:`rpc` if not called before.
        """
        if self._start_d is not None:
            return self._start_d
        self._state = "starting"
        session = self.session
        session.add_listener(self._on_private, session.private_group)
        session.add_listener(self._on_senders, self.groups.senders)
        session.add_reconnect_listener(self._reconnect_event)
        session.whenDisconnected().addCallback(lambda _: self._session_lost())
        d = session.acquire(self.groups.senders)

        def joined(_: object) -> None:
            if self._state == "starting":
                # When another component of this session joined Q-snd first, no join
                # notice came our way: start from the group's current members, or a
                # manager leaving would go unnoticed (and its tasks unresubmitted).
                view = session.view(self.groups.senders)
                if view is not None:
                    self._members = dict.fromkeys(view.members)
                self._state = "ready"
                self._pump()

        def failed(f: Failure) -> None:
            if self._state == "starting":
                self.log.failure("queue sender {queue}: join failed", f, queue=self.groups.queue)
                self._fail_all("could not join the queue's sender group")

        d.addCallbacks(joined, failed)
        self._start_d = d
        return d

    def stop(self) -> Deferred[None]:
        """Cancel every pending task (telling the manager), leave the sender group."""
        if self._state == "stopped":
            return succeed(None)
        started = self._state != "new"
        self._state = "stopped"
        self._malformed.stop()
        for p in list(self._pending.values()):
            if p.state != _BACKLOG:
                self._cancels.append(Cancel(p.task_id))
        self._fail_all("the sender was stopped")
        if not started:
            return succeed(None)
        self._flush()
        self._turn.cancel()
        session = self.session
        session.remove_listener(self._on_private, session.private_group)
        session.remove_listener(self._on_senders, self.groups.senders)
        session.remove_reconnect_listener(self._reconnect_event)
        return session.release(self.groups.senders)

    # ------------------------------------------------------------------ API

    def submit(
        self, func: str, args: Any = None, *, timeout: float | None = None, priority: int = 0
    ) -> str:
        """Queue ``func(args)``; return its task id at once.

        The answer comes from :meth:`receive`. With ``timeout`` (seconds) the task
        fails with TaskTimeout if no final answer came by then, and the manager is
        told to drop it. ``priority``: 0 (the default) to 9, higher first (FIFO within
        a level; docs/protocol.md, "Dispatching"). Raises TypeError (unserializable
        args), PayloadTooLarge, ValueError (bad function name, timeout or priority) and
        SenderStopped once stopped (its message says why: stopped, or the session lost).
        """
        return self._submit(func, args, timeout, None, priority=priority)

    def rpc(
        self, func: str, args: Any = None, *, timeout: float | None = 30.0, priority: int = 0
    ) -> Deferred[Any]:
        """Call ``func(args)`` on a worker; the Deferred fires with the final answer.

        ``priority``: 0 (the default) to 9, higher first. It fails with RemoteError,
        UnknownFunction, TaskTimeout (which says when no worker serves ``func``),
        WorkerLost, NoManager..., and can be cancelled (the manager is told to drop the
        task).
        """
        cell: list[str] = []
        d: Deferred[Any] = Deferred(lambda _: self._withdraw(cell[0]) if cell else None)
        try:
            cell.append(self._submit(func, args, timeout, d, priority=priority))
        except Exception:
            return fail()
        return d

    def enqueue(
        self,
        func: str,
        args: Any = None,
        *,
        reply_to: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
        run_at: float | None = None,
        timeout: float | None = None,
        priority: int = 0,
    ) -> Deferred[str]:
        """Queue ``func(args)`` as a *detached* task: it runs even when this sender (or
        its process) is gone. The Deferred fires with the task id once the task is
        held: every manager of the queue has it (it went SAFE to the manager group,
        and the active manager acknowledged it after that), and with a journal, it is
        on disk (docs/protocol.md, section 10).

        Nobody waits for its answer: the worker sends it to ``reply_to`` (a Spread
        group name, e.g. one your own listeners join) if given, else nowhere. If it
        fails for good (the handler raised, the function is unknown, its workers
        were lost ``max_attempts`` times, or its time to live passed) it goes to the
        queue's dead letters, where an operator can requeue it.

        ``ttl``: seconds it may wait in the queue before it is dead-lettered as
        expired. ``delay`` (seconds from now) or ``run_at`` (epoch seconds): not
        started before then. ``timeout``: each run is cancelled after that many
        seconds. ``priority``: 0 (the default) to 9, higher first.

        Fails with NoManager (no manager acknowledged it within ``ack_timeout``: it
        may or may not be held; enqueueing it again under the same id is safe only
        through the same sender), QueueFull, or ValueError/TypeError/PayloadTooLarge
        for arguments it cannot send.
        """
        try:
            if reply_to is not None:
                check = reply_to.encode("latin-1") if isinstance(reply_to, str) else None
                if check is None or not 0 < len(check) <= 31 or b" " in check:
                    raise ValueError("reply_to must be a Spread group name of 1..31 characters")
            for name, value in (("ttl", ttl), ("timeout", timeout)):
                if value is not None and not 0 < value * 1000 <= MAX_TIMEOUT_MS:
                    raise ValueError(f"{name} must be positive and at most {MAX_TIMEOUT_MS} ms")
            if delay is not None and run_at is not None:
                raise ValueError("give delay or run_at, not both")
            if delay is not None:
                if not delay >= 0:
                    raise ValueError("delay must be 0 or more seconds")
                run_at = self._reactor.seconds() + delay
            if not (isinstance(priority, int) and 0 <= priority <= MAX_PRIORITY):
                raise ValueError(f"priority must be an int from 0 to {MAX_PRIORITY}")
            extra = (
                True,
                reply_to,
                None if ttl is None else max(1, int(ttl * 1000)),
                None if run_at is None else max(0, round(run_at * 1000)),
                priority or None,
            )
            d: Deferred[str] = Deferred()
            run_ms = None if timeout is None else max(1, int(timeout * 1000))
            self._submit(func, args, None, d, detached=extra, run_ms=run_ms)
        except Exception:
            return fail()
        return d

    def receive(self) -> Deferred[Reply]:
        """The next answer to a task sent with :meth:`submit` (completion order).

        Fires with a :class:`Reply`, or fails with the task's TaskError (RemoteError,
        TaskTimeout, ...; its ``task_id`` says which task).
        """
        return self._answers.get()

    def cancel(self, task_id: str) -> bool:
        """Give up on a task: it will produce no answer; False if it was not pending."""
        p = self._pending.get(task_id)
        if p is None:
            return False
        self._withdraw(task_id)
        if p.deferred is not None and not p.deferred.called:
            p.deferred.cancel()
        return True

    # ------------------------------------------------------------------ submitting

    def _submit(
        self,
        func: str,
        args: Any,
        timeout: float | None,
        deferred: Deferred[Any] | None,
        *,
        detached: tuple[Any, ...] | None = None,
        run_ms: int | None = None,
        priority: int = 0,
    ) -> str:
        state = self._state
        if state == "stopped":
            # a TaskError, as for the calls that were pending: a web application that
            # catches TaskError learns why (its session was lost) instead of crashing
            raise SenderStopped("", f"this sender is stopped: {self._stopped_because}")
        if not isinstance(func, str) or not 0 < len(func) <= MAX_FUNC:
            raise ValueError(f"the function name must be a str of 1..{MAX_FUNC} characters")
        if timeout is not None and not 0 < timeout * 1000 <= MAX_TIMEOUT_MS:
            raise ValueError(f"timeout must be positive and at most {MAX_TIMEOUT_MS} ms")
        if priority and not (type(priority) is int and 0 < priority <= MAX_PRIORITY):
            raise ValueError(f"priority must be an int from 0 to {MAX_PRIORITY}")
        data = self._serializer.dumps(args)
        if len(data) > MAX_PAYLOAD:
            raise PayloadTooLarge(f"arguments of {len(data)} bytes; at most {MAX_PAYLOAD} fit")
        task_id = f"{self._prefix}{next(self._counter)}"
        now = self._reactor.seconds()
        deadline = None if timeout is None else now + timeout
        p = _Pending(task_id, func, data, timeout, deadline, deferred)
        if priority:
            p.priority = priority
        if detached is not None:
            p.detached = detached
            p.timeout = None if run_ms is None else run_ms / 1000.0
        self._pending[task_id] = p
        if deadline is not None:
            self._deadlines.add(deadline, p)
        self.stats["submitted"] += 1
        ready = state == "ready" and not self._away
        if ready and not self._backlog and self._unacked < self.window:
            self._send(p, now)  # the usual case: straight into this turn's SUBMIT
        else:
            self._backlog.append(p)
            if state == "new":
                self.start()
            self._pump()
        return task_id

    def _send(self, p: _Pending, now: float) -> None:
        """Put ``p`` into this turn's SUBMIT message."""
        p.state = _UNACKED
        self._unacked += 1
        deadline = p.deadline
        if p.detached is not None:
            # Held only once every daemon has it: SAFE, in a message of its own.
            run_ms = None if p.timeout is None else max(1, int(p.timeout * 1000))
            self._detached.append(
                new_entry(Submit, (p.task_id, p.func, p.args, run_ms, self._ack_ms, *p.detached))
            )
            submits = self._detached
        else:
            remaining = None if deadline is None else max(1, int((deadline - now) * 1000))
            submits = self._submits
            if p.priority:
                fields = (p.task_id, p.func, p.args, remaining, self._ack_ms, None, None, None)
                submits.append(new_entry(Submit, (*fields, None, p.priority)))
            else:
                entry = (p.task_id, p.func, p.args, remaining, self._ack_ms)
                submits.append(new_entry(Submit, entry))
        ack_deadline = p.ack_deadline = now + self.ack_timeout
        acks = self._acks
        # Drop the entries of tasks acknowledged or answered meanwhile from the front:
        # otherwise, once the first deadline has passed, the timer would come due for
        # nearly every call (one entry each, in order) just to find it answered.
        while acks and not _awaits_ack(acks[0]):
            acks.popleft()
        acks.append((ack_deadline, p))
        if self._ack_timer is None:
            self._ack_timer = self._reactor.callLater(
                max(0.0, self._acks[0][0] - now), self._check_acks
            )
        if len(submits) == 1:
            self._turn.schedule()

    def _pump(self) -> None:
        """Send backlog tasks while the window allows."""
        backlog = self._backlog
        if not backlog or self._state != "ready" or self._away:
            return
        pending = self._pending
        now = self._reactor.seconds()
        while backlog and self._unacked < self.window:
            p = backlog.popleft()
            if pending.get(p.task_id) is not p or p.state != _BACKLOG:
                continue
            self._send(p, now)

    def _check_acks(self) -> None:
        self._ack_timer = None
        now = self._reactor.seconds()
        acks = self._acks
        while acks and acks[0][0] <= now:
            deadline, p = acks.popleft()
            if (
                p.state == _UNACKED
                and p.ack_deadline == deadline
                and self._pending.get(p.task_id) is p
            ):
                self._finish(
                    p,
                    NoManager(
                        p.task_id,
                        f"no manager of queue {self.groups.queue!r} acknowledged the task "
                        f"within {self.ack_timeout:g}s",
                    ),
                    cancel=True,
                )
        while acks and not _awaits_ack(acks[0]):
            acks.popleft()
        if acks:
            self._ack_timer = self._reactor.callLater(acks[0][0] - now, self._check_acks)
        self._pump()

    def _resend(self, tasks: list[_Pending]) -> None:
        """Submit ``tasks`` again (to whichever manager is active now), in order."""
        for p in reversed(tasks):
            if p.state == _UNACKED:
                self._unacked -= 1
            p.state = _BACKLOG
            p.acked_by = None
            self._backlog.appendleft(p)
        self.stats["resubmitted"] += len(tasks)
        self._pump()

    def _is_pending(self, p: _Pending) -> bool:
        return self._pending.get(p.task_id) is p

    def _timed_out(self, p: _Pending) -> None:
        why = f"no result within {p.timeout:g}s"
        if p.workerless and p.state == _ACKED:
            why += (
                f": queue {self.groups.queue!r} has a manager, but no worker serving "
                f"function {p.func!r} was registered when it queued the task"
            )
        self._remove(p, cancel=True, timed_out=True)
        self._deliver(p, TaskTimeout(p.task_id, why))

    def _withdraw(self, task_id: str) -> None:
        """Forget a task without answering it; tell the manager if it was sent."""
        p = self._pending.get(task_id)
        if p is not None:
            self._remove(p, cancel=True)

    def _remove(self, p: _Pending, *, cancel: bool, timed_out: bool = False) -> None:
        del self._pending[p.task_id]
        if p.deadline is not None:
            self._deadlines.done()
        if p.state == _UNACKED:
            self._unacked -= 1
        if cancel and p.state != _BACKLOG and self._state != "stopped":
            self._cancels.append(Cancel(p.task_id, True) if timed_out else Cancel(p.task_id))
            self._turn.schedule()
        p.state = _BACKLOG
        if self._backlog:
            self._pump()

    def _finish(self, p: _Pending, outcome: Reply | TaskError, *, cancel: bool = False) -> None:
        """The task's final outcome: remove it and hand ``outcome`` to its reader."""
        self._remove(p, cancel=cancel)
        self._deliver(p, outcome)

    def _deliver(self, p: _Pending, outcome: Reply | TaskError) -> None:
        d = p.deferred
        if d is not None:
            if isinstance(outcome, TaskError):
                d.errback(outcome)
            else:
                d.callback(outcome.value)
            return
        self._answers.put(outcome)

    def _fail_all(self, why: str) -> None:
        self._stopped_because = why
        for p in list(self._pending.values()):
            self._finish(p, SenderStopped(p.task_id, why))
        self._backlog.clear()
        self._acks.clear()
        self._deadlines.clear()
        timer, self._ack_timer = self._ack_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._answers.close(SenderStopped("", why))

    def _session_lost(self) -> None:
        if self._state != "stopped":
            self._state = "stopped"
            self._malformed.stop()
            why = "the Spread session was lost"
            reason = getattr(self.session, "disconnect_reason", None)
            if self._away and reason is not None:
                why = f"the Spread session could not reconnect: {reason.getErrorMessage()}"
            self._fail_all(why)

    def _reconnect_event(self, event: SessionLost | SessionBack) -> None:
        if self._state == "stopped":
            return
        if isinstance(event, SessionLost):
            self._lost()
        else:
            self._back(event)

    def _lost(self) -> None:
        """The session is away: every unfinished task goes back to the backlog, to be
        submitted again when it is back. Task timeouts keep running; acknowledgement
        timeouts stop (no manager can answer now) and start again at the resubmission."""
        self._away = True
        timer, self._ack_timer = self._ack_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._acks.clear()
        self._submits = []  # not sent: every pending task is resubmitted anyway
        self._detached = []
        self._unacked = 0
        self._backlog = deque(self._pending.values())  # in the order submitted
        for p in self._backlog:
            p.state = _BACKLOG
            p.acked_by = None
        # Who is in Q-snd and who acknowledged us: unknown until we are back.
        self._members = {}
        self._ackers = {}

    def _back(self, event: SessionBack) -> None:
        """The session is back (in Q-snd again): resubmit every unfinished task."""
        self._away = False
        n = len(self._backlog)
        if n:
            self.stats["resubmitted"] += n
            self.log.info(
                "queue sender {queue}: Spread session {session} back after {away:.1f}s; "
                "resubmitting {n} task(s)",
                queue=self.groups.queue,
                session=event.private_group,
                away=event.away,
                n=n,
            )
        self._pump()
        if self._cancels:
            self._turn.schedule()

    # ------------------------------------------------------------------ frames

    def _on_senders(self, frame: object) -> None:
        if type(frame) is not MembershipMessage or frame.is_transition:
            return
        if frame.is_self_leave:
            self._members = {}
            return
        members = dict.fromkeys(frame.members)
        before = self._members
        gone = [m for m in before if m not in members]
        came = [m for m in members if m not in before and m != self.session.private_group]
        self._members = members
        if self._state != "ready" or self._away:
            return  # (back from an outage: everything is resubmitted anyway)
        lost = frozenset(gone)
        # Unacknowledged tasks may be held by a manager that has gone: one that
        # acknowledged our session (managers hold ACKs back only after one), or, if we
        # saw no ACK from a member of this queue (a sender new on a shared session),
        # any member.
        ackers = [m for m in self._ackers if m in before]
        unacked_too = bool(came) or (any(m in lost for m in ackers) if ackers else bool(lost))
        for m in gone:
            self._ackers.pop(m, None)
        again = [
            p
            for p in self._pending.values()
            if (p.state == _ACKED and p.acked_by in lost) or (unacked_too and p.state == _UNACKED)
        ]
        if again:
            # A manager we depended on left (its tasks go to the active one now), or a
            # session joined that may be a (new) manager: submits nobody acknowledged
            # may have gone to an empty manager group, so send them again. Managers
            # acknowledge duplicates without queueing them twice.
            self.log.info(
                "queue sender {queue}: membership changed; resubmitting {n} task(s)",
                queue=self.groups.queue,
                n=len(again),
            )
            self._resend(again)

    def _on_private(self, frame: object) -> None:
        if type(frame) is not RegularMessage or frame.mess_type not in _MINE:
            return
        try:
            msg = decode(frame.mess_type, frame.data)
        except MalformedMessage as exc:
            self._malformed.dropped(
                frame.sender, exc, self.stats, "queue sender {queue}", queue=self.groups.queue
            )
            return
        mine = self._prefix
        pending = self._pending
        kind = msg.kind
        if kind is _ACK:
            # Any ACK to our session names the manager, even one for another sender
            # sharing the session (a manager holds ACKs back once it acked the session).
            if frame.sender not in self._ackers:
                self._ackers[frame.sender] = None
            for e in msg.entries:
                p = pending.get(e.task_id)
                if p is None:
                    continue
                if p.state == _UNACKED:
                    self._unacked -= 1
                    p.state = _ACKED
                p.acked_by = frame.sender
                p.workerless = e.workers == 0
                if p.detached is not None:
                    # Held by the managers: this sender's part is done.
                    self._remove(p, cancel=False)
                    if p.deferred is not None:
                        p.deferred.callback(p.task_id)
            self._pump()
            return
        if kind is _RESULT:
            loads = self._serializer.loads
            for e in msg.entries:
                p = pending.get(e.task_id)
                if p is None:
                    if e.task_id.startswith(mine):
                        self.stats["late_replies"] += 1  # timed out, cancelled or a duplicate
                    continue
                d = p.deferred
                if d is not None and e.status == _OK and e.final:
                    # The usual case (an rpc answered): no Reply, straight to its Deferred.
                    try:
                        value = loads(e.payload)
                    except ValueError:
                        self._result(p, e)
                        continue
                    self.stats["results"] += 1
                    self._remove(p, cancel=False)
                    d.callback(value)
                else:
                    self._result(p, e)
            return
        for e in msg.entries:
            p = pending.get(e.task_id)
            if p is None:
                if e.task_id.startswith(mine):
                    self.stats["late_replies"] += 1
                continue
            self._failed(p, e)

    def _result(self, p: _Pending, e: Any) -> None:
        outcome = answer(p.task_id, p.func, e, self._serializer.loads)
        self.stats["results"] += 1
        if e.final or isinstance(outcome, TaskError):
            self._finish(p, outcome)
        elif p.deferred is None:
            self._deliver(p, outcome)  # an earlier answer of several; rpc waits for the last

    def _failed(self, p: _Pending, e: Any) -> None:
        if e.reason == Reason.RESUBMIT:
            if p.state != _BACKLOG:
                self._resend([p])
            return
        self._finish(p, failure(p.task_id, e.reason, e.message))

    # ------------------------------------------------------------------ sending

    def _flush(self) -> None:
        submits, cancels, detached = self._submits, self._cancels, self._detached
        if not (submits or cancels or detached) or self._away:
            return  # (away: cancels wait until the session is back)
        self._submits, self._cancels, self._detached = [], [], []
        session = self.session
        if session.connected:
            sent = 0
            if submits:
                sent += send(session, self._to_manager, _SUBMIT, submits)
            if detached:
                sent += send(session, self._to_manager, Kind.SUBMIT, detached, service=SAFE_MESS)
            if cancels:
                sent += send(session, self._to_manager, Kind.CANCEL, cancels)
            self.stats["messages_sent"] += sent
