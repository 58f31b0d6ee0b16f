"""``ManagerService``: runs a :class:`~spreadqueue._queue.state.QueueManager` on a session.

The service is the thin Twisted shell around the pure state machine: it joins the
queue's groups, decodes frames into inputs, lets time pass, and sends the effects,
batched once per batch of frames (see :class:`~spreadqueue._queue.outbox.Turn`).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spread.interfaces import ISpreadSession
from .._spread.keeper import SessionKeeper
from .._spread.session import SessionBack, SessionLost
from .._spread.wire import SAFE_MESS, MembershipMessage, RegularMessage
from .errors import MalformedMessage
from .interfaces import IAssignmentPolicy
from .journal import Journal
from .messages import (
    ControlReply,
    Kind,
    Message,
    StatusReport,
    UnknownKind,
    decode,
    is_queue_message,
    mess_type,
    pack_report,
)
from .names import queue_groups
from .outbox import SERVICE, Turn, send
from .ready import DEFAULT_AGING
from .records import DeadLetter, Task
from .state import Effect, Event, QueueManager
from .stats import process_info
from .throttle import WarningThrottle

__all__ = ["ManagerService", "SessionFactory"]

#: Makes a new session (e.g. ``lambda: connect(reactor, endpoint)``).
SessionFactory = Callable[[], "Deferred[ISpreadSession]"]

#: The held acknowledgements' timer fires at most this often; an ACK goes out at most
#: this much after its due time (QueueManager holds ACKs only for senders that wait
#: 100 ms or more for them).
_WAKEUP_GRAIN: Final = 0.01

_HELLO: Final = mess_type(Kind.HELLO)
_SYNC: Final = mess_type(Kind.SYNC)
_MANAGER_KINDS: Final = frozenset(
    {
        Kind.SUBMIT,
        Kind.CANCEL,
        Kind.REGISTER,
        Kind.DONE,
        Kind.RESULT,
        Kind.RETIRE,
        Kind.RELEASE,
        Kind.ASSIGN,
        Kind.DECIDE,
        Kind.SYNC_REQUEST,
    }
)


class ManagerService(Service):
    """The queue manager of queue ``queue``, as a Twisted service.

    ``session`` is an :class:`~spreadqueue.interfaces.ISpreadSession` (shared with
    anything else; the service never closes it) or a session factory (a function
    returning a Deferred that fires with a new session); with a
    factory the service opens its own session, and opens a new one (with back-off)
    whenever it is lost, as long as the service runs. A given session that reconnects
    (``connect(..., reconnect=True)``) is treated alike: when it is lost the manager
    lets it go, and once it is back it starts again on it, with the detached tasks and
    dead letters it held.

    Start several for one queue (in other processes, or on other sessions) for
    standby: exactly one is active at a time (see :attr:`active`).

    ``ack_delay`` (seconds) is how long the acknowledgement of a task assigned at once
    may be held back (and then left out if the result came first): docs/protocol.md,
    "ACK".

    Standbys are hot: each takes the queue's state from the active manager when it
    joins and then follows the same ordered input, so that it continues at once when
    the active one goes. ``quorum`` is how many managers must be together for detached
    tasks to be dispatched (a majority of those you run across daemons, so that two
    sides of a partition never both run them); ``max_dead_letters`` bounds the dead
    letters kept. ``priority_aging`` (seconds) is what one priority level is worth
    in waiting time (docs/protocol.md, "Priorities"): the active manager's choice.

    It logs what an operator needs at 3 am: managers becoming active or standing by,
    workers registering, draining, leaving and being lost (info; a lost worker at
    warn), tasks that fail for good, tasks refused or waiting with no worker (warn),
    and every ``summary_interval`` seconds (0: never) a one-line summary of the queue.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        session: ISpreadSession | SessionFactory,
        queue: str,
        *,
        policy: IAssignmentPolicy | None = None,
        max_attempts: int = 3,
        register_grace: float = 2.0,
        max_queued: int | None = None,
        tick_interval: float = 0.25,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        reconnect_jitter: float = 0.1,
        ack_delay: float = 0.05,
        summary_interval: float = 60.0,
        control_allow: Sequence[str] = (),
        quorum: int = 1,
        max_dead_letters: int = 10_000,
        journal: str | None = None,
        journal_sync: str = "full",
        priority_aging: float = DEFAULT_AGING,
    ) -> None:
        self.groups = queue_groups(queue)
        self.name = f"spreadqueue-manager-{queue}"  # type: ignore[assignment]
        self._reactor = reactor
        if ISpreadSession.providedBy(session):
            self._given: ISpreadSession | None = session  # type: ignore[assignment]
            self._keeper: SessionKeeper | None = None
        elif callable(session):
            self._given = None
            self._keeper = SessionKeeper(
                reactor,
                session,
                self._attach,
                who=f"queue manager {queue}",
                initial_delay=reconnect_delay,
                max_delay=max_reconnect_delay,
                jitter=reconnect_jitter,
                on_permanent=self._cannot_open,
            )
        else:
            raise TypeError(f"session must be an ISpreadSession or a factory, not {session!r}")
        self._options: dict[str, Any] = {
            "policy": policy,
            "max_attempts": max_attempts,
            "register_grace": register_grace,
            "max_queued": max_queued,
            "ack_delay": ack_delay,
            "quorum": quorum,
            "max_dead_letters": max_dead_letters,
            "journaled": journal is not None,
            "priority_aging": priority_aging,
            # one dispatch per batch of deliveries: _flush's take_effects settles it
            "batched": True,
        }
        self._journal = (
            None if journal is None else Journal(reactor, journal, queue, sync=journal_sync)
        )
        # What the next state machine starts from: the journal's content at start, then
        # what the previous session's state machine held (detached tasks, dead letters).
        self._carry: tuple[list[Task], list[DeadLetter], list[str]] | None = None
        self._workers_before: list[str] = []  # worker sessions of the previous session
        self._tick_interval = tick_interval
        self._summary_interval = summary_interval
        self._next_summary = 0.0  # 0: not started (the first tick starts the count)
        self._summary_completed = 0
        self._session: ISpreadSession | None = None
        self._state: QueueManager | None = None
        self._ticker: LoopingCall | None = None
        self._wakeup: IDelayedCall | None = None
        self._turn = Turn(reactor, self._flush)
        # one warning line per peer and interval, however much garbage it sends
        self._malformed = WarningThrottle(reactor, self.log)
        self._active_waiters: list[Deferred[None]] = []
        self._counters: dict[str, int] = {
            "malformed": 0,
            "foreign": 0,
            "unexpected": 0,
            "messages_sent": 0,
            "sessions": 0,
            "unknown_kinds": 0,
            "status_requests": 0,
            "control_requests": 0,
            "control_refused": 0,
        }
        self._control_allow = tuple(control_allow)
        self._started = time.time()

    # ------------------------------------------------------------------ status

    @property
    def session(self) -> ISpreadSession | None:
        """The session in use (None while (re)connecting or stopped)."""
        return self._session

    @property
    def state(self) -> QueueManager | None:
        """The state machine of the current session (None while not attached)."""
        return self._state

    @property
    def active(self) -> bool:
        """True while this manager is the queue's active manager."""
        return self._state is not None and self._state.active

    def whenActive(self) -> Deferred[None]:
        """A Deferred that fires once this manager is the queue's active manager.

        It fails when the manager cannot open a session for good (a private name the
        daemon refuses, say): then it never will be.
        """
        if self.active:
            return succeed(None)
        d: Deferred[None] = Deferred(self._active_waiters.remove)
        self._active_waiters.append(d)
        return d

    @property
    def stats(self) -> dict[str, int]:
        """Service counters merged with the state machine's."""
        out = dict(self._counters)
        if self._state is not None:
            out.update(self._state.stats)
        return out

    # ------------------------------------------------------------------ service

    def startService(self) -> None:
        """Join the queue's groups (opening a session first with a factory). With a
        journal, read it first (JournalError if it cannot be read)."""
        if self._journal is not None and self._carry is None:
            started = time.monotonic()
            self._carry = self._journal.load()
            tasks, dead, _ended = self._carry
            self.log.info(
                "queue manager {queue}: journal {path} holds {tasks} detached task(s) and "
                "{dead} dead letter(s) (read in {took:.3f}s)",
                queue=self.groups.queue,
                path=self._journal.path,
                tasks=len(tasks),
                dead=len(dead),
                took=time.monotonic() - started,
            )
        super().startService()
        if self._given is not None:
            self._given.add_reconnect_listener(self._reconnected)
            if self._given.connected:
                self._attach(self._given)  # (one that is away: once it is back)
        elif self._keeper is not None:
            self._keeper.startService()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Leave the groups (the manager group first, so a standby takes over at once)."""
        super().stopService()
        session, keeper = self._session, self._keeper
        self._malformed.stop()
        if self._given is not None:
            self._given.remove_reconnect_listener(self._reconnected)
        if session is None:
            return succeed(None) if keeper is None else keeper.stopService()
        groups = self.groups
        # Leave Q-mgr first: a standby takes over at that point of the total order.
        # Senders then see us leave Q-snd and resubmit to it.
        leaves = [session.release(g) for g in (groups.manager, groups.senders, groups.workers)]
        d: Deferred[Any] = DeferredList(leaves, consumeErrors=True)

        def detach(_: object) -> Deferred[Any] | None:
            self._flush()
            self._detach(session)
            closing = [] if self._journal is None else [self._journal.close()]
            if keeper is not None:
                # Stop only once the session is closed: at reactor shutdown, what is
                # still unwritten (the RESUBMITs just flushed, the KILL) would be lost.
                closing.append(keeper.stopService())
            return DeferredList(closing) if closing else None

        d.addCallback(detach)
        return d  # type: ignore[return-value]

    # ------------------------------------------------------------------ sessions

    def _cannot_open(self, failure: Failure) -> None:
        """The keeper gave up for good: tell those waiting for this manager to activate."""
        waiters, self._active_waiters = self._active_waiters, []
        for d in waiters:
            d.errback(failure)

    def _attach(self, session: ISpreadSession) -> None:
        groups = self.groups
        self._session = session
        self._turn.session = session
        self._counters["sessions"] += 1
        self._state = QueueManager(groups, session.private_group, **self._options)
        if self._carry is not None:
            self._state.recover(*self._carry)
            self._carry = None
        if self._workers_before:
            self._state.expect_workers(self._workers_before)
            self._workers_before = []
        session.add_listener(self._on_manager_group, groups.manager)
        session.add_listener(self._on_worker_group, groups.workers)
        session.add_listener(self._on_sender_group, groups.senders)
        session.add_listener(self._on_private, session.private_group)
        session.whenDisconnected().addCallback(lambda _: self._lost(session))
        # Join Q-wrk first (an active manager must see workers come and go), then
        # Q-mgr, then Q-snd: senders resend unacknowledged submits when a member joins
        # Q-snd, and by then we are in Q-mgr to receive them. The state machine only
        # becomes active once it is a member of all three.
        d = session.acquire(groups.workers)
        d.addCallback(lambda _: self._catch_up(session, groups.workers))
        d.addCallback(lambda _: session.acquire(groups.manager))
        d.addCallback(lambda _: session.acquire(groups.senders))
        d.addCallback(lambda _: self._catch_up(session, groups.senders))
        d.addErrback(self._join_failed, session)
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self._reactor
        self._ticker.start(self._tick_interval, now=False)
        self.log.info(
            "queue manager {queue} attached to {session}",
            queue=groups.queue,
            session=session.private_group,
        )

    def _catch_up(self, session: ISpreadSession, group: str) -> None:
        """Give the state machine the current members of ``group``.

        A worker or sender sharing our session may have joined the group before us:
        then our own join notice never comes, and without it the state machine would
        never count itself a member (and never become active). Replaying the latest
        notice is harmless when we did see it: nothing changed since.
        """
        view = session.view(group)
        state = self._state
        if view is not None and state is not None and session is self._session:
            state.on_membership(self._now(), view)
            self._turn.schedule()

    def _join_failed(self, f: Failure, session: ISpreadSession) -> None:
        if session is self._session and session.connected:
            self.log.failure("queue manager {queue}: joining failed", f, queue=self.groups.queue)

    def _detach(self, session: ISpreadSession) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
        self._turn.cancel()
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        for listener, group in (
            (self._on_manager_group, self.groups.manager),
            (self._on_worker_group, self.groups.workers),
            (self._on_sender_group, self.groups.senders),
            (self._on_private, session.private_group),
        ):
            session.remove_listener(listener, group)
        if self._session is session:
            self._session = None
            self._turn.session = None
            self._state = None

    def _lost(self, session: ISpreadSession) -> None:
        if self._session is not session:
            return
        if self._state is not None:
            # The detached tasks and dead letters go on with the next session's state
            # machine (the calls' senders resubmit theirs).
            self._carry = self._state.export()
            self._workers_before = self._state.worker_sessions()
        self.log.warn(
            "queue manager {queue}: Spread session {session} lost",
            queue=self.groups.queue,
            session=session.private_group,
        )
        self._detach(session)  # (a keeper opens the next session)

    def _reconnected(self, event: SessionLost | SessionBack) -> None:
        """The given session reconnects: lost, let it go as a lost session (giving its
        groups back); back, attach afresh, as to a factory's new session."""
        session = self._given
        assert session is not None
        if isinstance(event, SessionLost):
            if self._session is session:
                self._lost(session)
                for group in (self.groups.manager, self.groups.senders, self.groups.workers):
                    session.release(group)
        elif self.running and self._session is None:
            self._attach(session)

    # ------------------------------------------------------------------ frames

    def _now(self) -> float:
        return self._reactor.seconds()

    def _decode(self, frame: RegularMessage) -> Message | None:
        if not is_queue_message(frame.mess_type):
            self._counters["foreign"] += 1
            return None
        try:
            return decode(frame.mess_type, frame.data)
        except UnknownKind:
            self._counters["unknown_kinds"] += 1  # a later revision's: ignored by design
            return None
        except MalformedMessage as e:
            self._malformed.dropped(
                frame.sender, e, self._counters, "queue manager {queue}", queue=self.groups.queue
            )
            return None

    def _on_manager_group(self, frame: object) -> None:
        state = self._state
        if state is None:
            return
        if type(frame) is MembershipMessage:
            state.on_membership(self._now(), frame)
        elif type(frame) is RegularMessage:
            msg = self._decode(frame)
            if msg is None:
                return
            kind = msg.kind
            if kind in _MANAGER_KINDS:
                state.on_message(self._now(), frame.sender, kind, msg.entries, frame.groups)
            elif kind is Kind.STATUS_REQUEST:
                self._answer_status(frame.sender, msg.entries)
            elif kind is Kind.CONTROL:
                self._control(frame.sender, msg.entries)
            else:
                self._counters["unexpected"] += 1
                return
        self._turn.schedule()

    def _on_worker_group(self, frame: object) -> None:
        state = self._state
        if state is None:
            return
        if type(frame) is MembershipMessage:
            state.on_membership(self._now(), frame)
            self._turn.schedule()
        elif type(frame) is RegularMessage and frame.mess_type == _HELLO:
            msg = self._decode(frame)
            if msg is not None:
                if frame.sender != state.me and state.active:
                    # Two active managers: only possible while a network partition
                    # heals; the merge notice settles it (docs/protocol.md).
                    self.log.warn(
                        "queue manager {queue}: another manager {other} is active too",
                        queue=self.groups.queue,
                        other=frame.sender,
                    )

    def _on_private(self, frame: object) -> None:
        """SYNC: the queue's state, sent to us by the active manager when we joined."""
        state = self._state
        if state is None or type(frame) is not RegularMessage or frame.mess_type != _SYNC:
            return
        msg = self._decode(frame)
        if msg is not None:
            state.on_sync(self._now(), frame.sender, msg.entries)
            self._turn.schedule()

    def _on_sender_group(self, frame: object) -> None:
        state = self._state
        if state is not None and type(frame) is MembershipMessage:
            state.on_membership(self._now(), frame)
            self._turn.schedule()

    def _tick(self) -> None:
        state = self._state
        if state is not None:
            now = self._now()
            state.tick(now)
            self._flush()
            self._summarise(now, state)

    def _woken(self) -> None:
        self._wakeup = None
        self._tick()

    def _flush(self) -> None:
        state, session = self._state, self._session
        if state is None or session is None:
            return
        journal = self._journal
        changes = state.take_journal() if journal is not None else []
        later: list[Effect] = []
        for effect in state.take_effects():
            if effect.after_journal and changes:
                later.append(effect)  # acknowledged once this turn's batch is on disk
            else:
                self._send_effect(session, effect)
        if journal is not None and changes:
            written = journal.write(changes)
            if later:
                written.addCallback(self._send_effects, session, later)
            written.addErrback(self._journal_failed)
        for event in state.take_events():
            self._log_event(event)
        due = state.next_wakeup()
        if due is not None and self._wakeup is None:
            # One timer for all the held acknowledgements, firing at most every
            # _WAKEUP_GRAIN seconds (each firing sends all that are due by then).
            delay = max(due - self._now(), _WAKEUP_GRAIN)
            self._wakeup = self._reactor.callLater(delay, self._woken)
        if state.active and self._active_waiters:
            waiters, self._active_waiters = self._active_waiters, []
            for d in waiters:
                d.callback(None)

    def _send_effects(self, _: object, session: ISpreadSession, effects: list[Effect]) -> None:
        for effect in effects:
            self._send_effect(session, effect)

    def _send_effect(self, session: ISpreadSession, effect: Effect) -> None:
        if not session.connected:
            return
        self._counters["messages_sent"] += send(
            session,
            effect.groups,
            effect.kind,
            effect.entries,
            service=SAFE_MESS if effect.safe else SERVICE,
        )

    def _journal_failed(self, failure: Failure) -> None:
        # The ACKs of this batch are never sent: their senders learn that the tasks
        # are not held (NoManager) rather than believe it.
        self.log.failure(
            "queue manager {queue}: the journal could not record a batch; its detached "
            "tasks are not acknowledged",
            failure,
            queue=self.groups.queue,
        )

    # ------------------------------------------------------------------ status and control

    def status(self) -> dict[str, Any]:
        """What this manager reports (docs/protocol.md, "Status"): the queue as its
        state machine knows it (while active; a standby reports itself), counters, the
        process it runs in."""
        state, session = self._state, self._session
        report: dict[str, Any] = {
            "role": "manager",
            "queue": self.groups.queue,
            "manager": session.private_group if session is not None else None,
            "active": self.active,
            "started": self._started,
            "now": time.time(),
            "process": process_info(),
            "service": dict(self._counters),
        }
        if self._journal is not None:
            report["journal"] = {
                "path": self._journal.path,
                "sync": self._journal.sync,
                **self._journal.stats,
            }
        if state is not None:
            body = state.status(self._now())
            if not state.active:
                # A standby speaks for itself: whether it holds the queue's state (and how
                # much of it), not for the queue: the active manager does that.
                held = {"tasks": state.queued + state.running, "detached": body["detached"]}
                body = {
                    **{k: body[k] for k in ("queue", "manager", "active", "managers", "synced")},
                    "holds": held,
                }
            report.update(body)
        return report

    def _answer_status(self, requester: str, entries: list[Any]) -> None:
        session = self._session
        if session is None or not requester.startswith("#"):
            return
        self._counters["status_requests"] += 1
        report = pack_report(self.status())
        replies = [StatusReport(e.request_id, "manager", report) for e in entries[:4]]
        self._counters["messages_sent"] += send(session, (requester,), Kind.STATUS, replies)

    def may_control(self, requester: str) -> bool:
        """Whether ``requester`` (a private group) may control this queue: sessions on
        this manager's own daemon, and those matching a --control-allow pattern.

        Spread's NULL authentication vouches only for the private name and the daemon
        a session is on: this is all the trust there is (README, "Operations").
        """
        session = self._session
        if session is not None and requester.endswith("#" + session.daemon_name):
            return True
        return any(fnmatch.fnmatchcase(requester, p) for p in self._control_allow)

    def _control(self, requester: str, entries: list[Any]) -> None:
        state, session = self._state, self._session
        if state is None or session is None or not state.active:
            return  # the active manager answers; a standby has nothing to steer
        refusals = []
        for e in entries[:16]:
            self._counters["control_requests"] += 1
            if self.may_control(requester):
                # Done through the manager group when standbys replicate the queue; the
                # state machine answers (and we log it) once it is done.
                state.control(self._now(), e.request_id, requester, e.action, e.target)
                continue
            self._counters["control_refused"] += 1
            text = (
                f"refused: {requester} is not on this manager's daemon "
                f"({session.daemon_name}) and matches no --control-allow pattern"
            )
            self._log_event(
                Event(
                    "control",
                    {
                        "requester": requester,
                        "action": e.action,
                        "target": e.target,
                        "ok": False,
                        "result": text,
                    },
                )
            )
            refusals.append(ControlReply(e.request_id, False, text))
        if refusals:
            self._counters["messages_sent"] += send(
                session, (requester,), Kind.CONTROL_REPLY, refusals
            )

    # ------------------------------------------------------------------ logs

    def _log_event(self, event: Event) -> None:
        level, text = _EVENT_LOGS[event.name]
        fields = event.fields
        if event.name == "control":
            what = (
                f"{fields['action']} {fields['target']}" if fields["target"] else fields["action"]
            )
            fields = {**fields, "what": what}
            level = "info" if fields["ok"] else "warn"
        elif event.name == "activated":
            how = "at once, with the queue's state" if fields["hot"] else "from what it holds"
            fields = {**fields, "how": how}
        elif event.name == "quorum":
            level = "info" if fields["dispatching"] else "warn"
            fields = {
                **fields,
                "what": "detached tasks are dispatched again"
                if fields["dispatching"]
                else "detached tasks are held, not dispatched",
            }
        getattr(self.log, level)(
            text,
            queue=self.groups.queue,
            manager=self._session.private_group if self._session is not None else "?",
            manager_event=event.name,
            **fields,
        )

    def _summarise(self, now: float, state: QueueManager) -> None:
        """Every ``summary_interval`` seconds, one line on the queue (while active)."""
        interval = self._summary_interval
        if not interval or now < self._next_summary:
            return
        completed = state.stats["completed"]
        if self._next_summary and state.active:
            elapsed = interval + now - self._next_summary
            self.log.info(
                "queue {queue}: {queued} queued, {running} in flight, {workers} workers, "
                "{rate:.1f} tasks/s done over the last {elapsed:.0f}s",
                queue=self.groups.queue,
                queued=state.queued,
                running=state.running,
                workers=state.worker_count,
                rate=(completed - self._summary_completed) / elapsed if elapsed > 0 else 0.0,
                elapsed=elapsed,
                manager_event="summary",
            )
        self._summary_completed = completed
        self._next_summary = now + interval


#: How the state machine's events are logged: level and text (fields from the event).
_EVENT_LOGS: Final = {
    "activated": (
        "info",
        "queue manager {queue} is active on {manager}, {how} ({tasks} task(s) held)",
    ),
    "synced": (
        "info",
        "queue manager {queue} on {manager} took the queue's state from {source}: {tasks} "
        "task(s), {workers} worker(s); it stands by, up to date",
    ),
    "sync_refused": (
        "warn",
        "queue manager {queue} on {manager} could not read the state {source} sent: {error}",
    ),
    "merged": (
        "info",
        "queue manager {queue} on {manager}: a healed partition brought back an older "
        "manager; {handed_over} detached task(s) handed over, {ended} that ended here "
        "named, taking its state",
    ),
    "quorum": (
        "warn",
        "queue {queue}: {managers} manager(s) here, {needed} needed for a quorum: {what} "
        "({held} detached task(s) held)",
    ),
    "dead_letter": (
        "warn",
        "queue {queue}: detached task {task_id} ({func}) is a dead letter ({reason}): {error}",
    ),
    "control": ("info", "queue {queue}: {what} asked by {requester}: {result}"),
    "standby": ("info", "queue manager {queue} on {manager} stands by: {older} came first"),
    "stepped_down": (
        "info",
        "queue manager {queue} on {manager} stepped down; {resubmitted} queued task(s) "
        "handed back to their senders, {detached} detached task(s) left to the others",
    ),
    "worker_registered": (
        "info",
        "queue {queue}: worker {worker} registered (capacity {capacity}; serves {serves})",
    ),
    "worker_draining": ("info", "queue {queue}: worker {worker} drains ({held} task(s) to finish)"),
    "worker_retired": ("info", "queue {queue}: worker {worker} left ({requeued} task(s) requeued)"),
    "worker_lost": (
        "warn",
        "queue {queue}: worker {worker} lost (its session ended); {requeued} task(s) requeued",
    ),
    "task_run_lost": (
        "warn",
        "queue {queue}: worker {worker} lost the run of task {task_id} ({func}): its "
        "handler process died; it is retried within max_attempts",
    ),
    "task_failed": ("warn", "queue {queue}: task {task_id} ({func}) failed on {worker}: {reason}"),
    "queue_full": (
        "warn",
        "queue {queue}: refused {refused} task(s): the queue is at its limit of {limit} "
        "(max_queued)",
    ),
    "no_workers": ("warn", "queue {queue}: {queued} task(s) queued and no worker registered"),
    "unserved": (
        "warn",
        "queue {queue}: tasks of function {func} wait: none of the {workers} worker(s) that "
        "take tasks serves it",
    ),
}
