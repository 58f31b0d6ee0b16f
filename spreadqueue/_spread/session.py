"""One Spread session, transport-agnostic: join/leave/multicast, listeners, receive().

:class:`SpreadSession` holds no socket. It sends through an
:class:`~spreadqueue.interfaces.ISessionLink` and is driven by whoever owns the link:

- :meth:`SpreadSession.deliver` with the decoded daemon -> client frames of one read
  (:class:`~spreadqueue._spread.wire.RegularMessage`,
  :class:`~spreadqueue._spread.wire.MembershipMessage`,
  :class:`~spreadqueue._spread.wire.RejectMessage`), in stream order;
- :meth:`SpreadSession.connection_lost` once, when the session ends for any reason;
- optionally :meth:`SpreadSession.pause_writing` / :meth:`SpreadSession.resume_writing`
  when the link's outgoing buffer fills up and drains (back-pressure).

The TCP client (:class:`~spreadqueue._spread.client.SpreadClientProtocol`) is one such
owner; the embedded daemon can give in-process sessions the very same class.

Delivery rules:

- A frame goes to the listeners registered for each group it concerns (a regular or
  reject message: every group in its destination list, including our private group
  for unicasts; a membership notice: its group) and to the catch-all listeners. Each
  listener is called at most once per frame, even when registered for several of the
  frame's groups and as a catch-all. Lookups are per group (dict), never a scan of all
  listeners, so many independent users can share one session cheaply.
- Frames reach listeners in stream order. A frame fed while another is being
  dispatched (an in-process link delivering synchronously from inside a listener) is
  queued and dispatched after the current one: every listener sees one total order.
- The frames of one :meth:`SpreadSession.deliver` call are one batch
  (:class:`~spreadqueue._spread.batch.DeliveryBatch`). Work a listener puts off with
  :meth:`SpreadSession.after_delivery` runs when the last of them has been dispatched,
  in the same reactor turn and before the link writes: batching per read costs no
  extra turn.
- A listener that raises is logged; the others are still called.
- Listeners may add and remove listeners while being called. A listener removed
  during a dispatch is not called again, not even for the frame being dispatched; one
  added during a dispatch is called from the next frame on.
- After :meth:`SpreadSession.disconnect` no further frame is dispatched.

A session that **reconnects** (:func:`~spreadqueue.connect` with ``reconnect=True``, or
any session after :meth:`SpreadSession.survive_reconnects`) outlives its link. When the
link is lost the session is *away*: ``connected`` is False, :meth:`SpreadSession.multicast`
raises :class:`SessionReconnecting`, joins, leaves, acquires and releases are remembered,
and listeners, shares, ``receive()`` waiters and producers stay. Whoever reconnects gives
it a new link with :meth:`SpreadSession.relink`; the session then joins every group it
was in (or was joining) again, in the order it first joined them, and once the daemon
has confirmed them all it is *back*. Reconnect listeners
(:meth:`SpreadSession.add_reconnect_listener`) hear :class:`SessionLost` and
:class:`SessionBack`; :meth:`SpreadSession.whenDisconnected` fires only when the session
ends for good (:meth:`SpreadSession.disconnect`, or reconnecting failed for good).

Several users of one session (queue senders, workers and managers, the application)
may want the same group: :meth:`SpreadSession.acquire` and
:meth:`SpreadSession.release` count them, so the session joins on the first acquire
and leaves on the last release, and :meth:`SpreadSession.view` gives a late comer the
group's current membership (its own join notice came long ago).

Section numbers in this module refer to docs/spread-protocol.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .batch import DeliveryBatch
from .errors import IllegalGroupName, IllegalService, SessionClosed, SpreadError
from .interfaces import ISessionLink, ISpreadSession

__all__ = [
    "DEFAULT_RECEIVE_QUEUE",
    "Frame",
    "Listener",
    "ReceiveOverflow",
    "ReconnectListener",
    "SessionBack",
    "SessionLost",
    "SessionReconnecting",
    "SpreadSession",
]

#: What listeners and :meth:`SpreadSession.receive` get.
Frame = wire.RegularMessage | wire.MembershipMessage | wire.RejectMessage
#: A listener: called with each frame that concerns it; its return value is ignored.
Listener = Callable[[Frame], object]

#: Default bound of the :meth:`SpreadSession.receive` queue. It matches the real daemon's
#: per-session backlog (MaxSessionMessages = 1000): a script further behind than that
#: would have been cut off by a real daemon anyway.
DEFAULT_RECEIVE_QUEUE = 1000

_SERVICES = frozenset(wire.SERVICE_LEVELS)
_JOIN = 1
_LEAVE = 2
_NAME_CACHE_MAX = 4096


class ReceiveOverflow(SpreadError):
    """Frames were dropped because the :meth:`SpreadSession.receive` queue was full.

    ``dropped`` is how many consecutive frames were lost at this point of the stream.
    """

    def __init__(self, dropped: int) -> None:
        super().__init__(
            f"{dropped} frame(s) dropped here: the receive() queue was full "
            "(call receive() faster or use listeners)"
        )
        self.dropped = dropped


class SessionReconnecting(SessionClosed):
    """The session lost its daemon connection and is reconnecting: nothing can be sent
    until it is back (a :class:`SessionClosed`, so code that handles a closed session
    handles this too)."""


@dataclass(frozen=True, slots=True)
class SessionLost:
    """What reconnect listeners hear when a reconnecting session loses its daemon
    connection: it is away now, and reconnects."""

    #: the session's private group
    private_group: str
    #: why the connection was lost
    reason: str


@dataclass(frozen=True, slots=True)
class SessionBack:
    """What reconnect listeners hear when a reconnecting session is back: connected
    again, and a member again of every group it was in."""

    #: the session's private group now (normally the one it had)
    private_group: str
    #: seconds since it was lost
    away: float
    #: its private group before; differs only when the daemon that answered is another
    #: one (messages addressed to the old name then reach nobody)
    previous_group: str


#: A reconnect listener: called with a SessionLost or a SessionBack.
ReconnectListener = Callable[[SessionLost | SessionBack], object]


class _Gap:
    """Marks where frames were dropped in the receive queue."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 1


class _GroupOp:
    """A join or leave we sent and whose own notice has not come back yet."""

    __slots__ = ("kind", "waiters")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.waiters: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred(self._cancel)
        self.waiters.append(d)
        return d

    def _cancel(self, d: Deferred[None]) -> None:
        # The JOIN/LEAVE is already on the wire: cancelling only stops waiting. The op
        # stays queued so the daemon's notice still lines up with it.
        if d in self.waiters:
            self.waiters.remove(d)


@implementer(ISpreadSession)
class SpreadSession:
    """One Spread session (one private name, one mailbox), shared by many users.

    ``link`` is what the session sends through; ``private_group`` is the name the
    daemon gave us (``#name#daemon``); ``membership`` says whether the session was
    opened with membership notices on (it decides when :meth:`join` and
    :meth:`leave` fire). ``receive_queue_size`` bounds the :meth:`receive` queue.
    ``batch`` is the link's :class:`~spreadqueue._spread.batch.DeliveryBatch` when the
    link writes at the end of a delivery (work put off by listeners then runs first);
    by default the session has its own.

    Errors known when a method is called (an illegal group name, a message too long,
    a closed session) are raised at once by :meth:`join`, :meth:`leave` and
    :meth:`multicast`; the Deferreds they return fail only for what happens later.
    """

    _log = Logger()

    def __init__(
        self,
        link: ISessionLink,
        private_group: str | bytes,
        *,
        membership: bool = True,
        receive_queue_size: int = DEFAULT_RECEIVE_QUEUE,
        batch: DeliveryBatch | None = None,
    ) -> None:
        parts = wire.split_private_group(wire.to_bytes(private_group))
        if parts is None:
            raise ValueError(f"{private_group!r} is not a private group name ('#name#daemon')")
        if receive_queue_size < 1:
            raise ValueError("receive_queue_size must be at least 1")
        #: Our private group, e.g. ``'#alice#localhost'``: send here to reach only us.
        self.private_group: str = wire.to_bytes(private_group).decode("latin-1")
        #: Our private name, e.g. ``'alice'``.
        self.name: str = parts[0].decode("latin-1")
        #: The daemon's name, e.g. ``'localhost'``.
        self.daemon_name: str = parts[1].decode("latin-1")
        #: Whether the daemon sends us membership notices.
        self.membership: bool = membership
        #: True while the session has a link to its daemon: False once it is closed,
        #: lost, :meth:`disconnect` was called, or while it is away reconnecting.
        self.connected: bool = True
        #: Why the session ended (a Failure), once it has.
        self.disconnect_reason: Failure | None = None
        #: True when losing the link leaves the session away, reconnecting, instead of
        #: closed (see :meth:`survive_reconnects`).
        self.reconnects: bool = False

        self._link = link
        self._closed = False  # the session has ended for good
        self._closing = False  # disconnect() was called: the link's loss is the end
        self._away = False  # the link was lost; a new one will come (relink)
        # group (None = catch-all) -> listeners in registration order (dict as ordered set)
        self._listeners: dict[str | None, dict[Listener, None]] = {}
        # immutable snapshots of the above, rebuilt on change, iterated by dispatch
        self._snapshots: dict[str, tuple[Listener, ...]] = {}
        self._catch_all: tuple[Listener, ...] = ()
        self._dispatching = 0
        self._removed: set[tuple[Listener, str | None]] = set()
        self._delivering = False
        self._backlog: deque[Frame] = deque()
        # the batch each delivery runs in (the link's, when it writes at its end)
        self._batch = batch if batch is not None else DeliveryBatch()
        # reconnecting: who hears lost / back, since when we are away (None: not), the
        # groups to join again (with their waiters), those whose notice is still due
        self._reconnect_listeners: dict[ReconnectListener, None] = {}
        self._clock: IReactorTime | None = None
        self._down_since: float | None = None
        self._previous_group = self.private_group
        self._rejoin: dict[str, _GroupOp] = {}
        self._rejoining: set[str] = set()
        self._back_due = False
        # acquire(): holders per group, and the latest regular notice of held groups
        self._holds: dict[str, int] = {}
        self._views: dict[str, wire.MembershipMessage | None] = {}
        # groups our own notices say we are in (in the order joined), and the
        # joins/leaves still in flight
        self._joined: dict[str, None] = {}
        self._ops: dict[str, deque[_GroupOp]] = {}
        self._names: dict[str | bytes, bytes] = {}
        # destination tuples already checked -> their names (see multicast)
        self._dests: dict[tuple[str | bytes, ...], tuple[bytes, ...]] = {}
        # receive()
        self._receiving = False
        self._receive_limit = receive_queue_size
        self._receive_queue: deque[Frame | _Gap] = deque()
        self._receive_waiters: deque[Deferred[Frame]] = deque()
        # end of session
        self._disconnect_waiters: list[Deferred[None]] = []
        # back-pressure
        self._writable = True
        self._writable_waiters: list[Deferred[None]] = []
        self._producers: dict[IPushProducer, None] = {}

    def __repr__(self) -> str:
        state = "connected" if self.connected else "away" if self._away else "closed"
        return f"<SpreadSession {self.private_group} {state}>"

    # ------------------------------------------------------------------ names

    def _group_bytes(self, group: str | bytes) -> bytes:
        """Validate a group name once; cached because names repeat on every send."""
        raw = self._names.get(group)
        if raw is None:
            raw = wire.check_group_name(group)
            if len(self._names) < _NAME_CACHE_MAX:
                self._names[group] = raw
        return raw

    def _check_open(self) -> None:
        if not self.connected and not self._away:
            raise SessionClosed(f"Spread session {self.private_group} is closed")

    def _joinable(self, group: str | bytes) -> tuple[bytes, str]:
        raw = self._group_bytes(group)
        if raw[:1] == b"#":
            raise IllegalGroupName(f"{raw!r} is a private group; private groups cannot be joined")
        return raw, raw.decode("latin-1")

    # ------------------------------------------------------------------ join / leave

    def join(self, group: str | bytes) -> Deferred[None]:
        """Join ``group``; the Deferred fires with None once we are a member.

        With membership notices on it fires on our own CAUSED_BY_JOIN notice (after the
        group's listeners have seen that notice); otherwise as soon as the join is
        written. Joining a group we are in (or are already joining) sends nothing and
        fires with the pending or confirmed join. Raises IllegalGroupName (also for a
        private group) and SessionClosed at once; the Deferred fails with
        SessionClosed if the session ends first. While the session is away
        (reconnecting) the join is remembered and made when it is back.
        """
        raw, key = self._joinable(group)
        self._check_open()
        return self._request(_JOIN, raw, key)

    def leave(self, group: str | bytes) -> Deferred[None]:
        """Leave ``group``; the Deferred fires with None once we have left.

        With membership notices on it fires on the daemon's self-leave notice;
        otherwise as soon as the leave is written. Leaving a group we are not in sends
        nothing and fires at once (the daemon would stay silent); so does leaving while
        the session is away (it is in no group then, and will not join this one again).
        Errors as for :meth:`join`.
        """
        raw, key = self._joinable(group)
        self._check_open()
        return self._request(_LEAVE, raw, key)

    def _request(self, kind: int, raw: bytes, key: str) -> Deferred[None]:
        if self._away:
            return self._request_away(kind, key)
        if not self.membership:
            # No notices will come: what we asked for is what we believe.
            if kind == _JOIN:
                self._link.send_join(raw)
                self._joined[key] = None
            else:
                self._link.send_leave(raw)
                self._joined.pop(key, None)
            return succeed(None)
        ops = self._ops.get(key)
        if ops:
            if ops[-1].kind == kind:
                return ops[-1].wait()
        elif (key in self._joined) == (kind == _JOIN):
            return succeed(None)
        # Register what we wait for before sending: a link that answers synchronously
        # (an in-process daemon) must find the op already queued.
        op = _GroupOp(kind)
        if ops is None:
            ops = self._ops[key] = deque()
        ops.append(op)
        waiter = op.wait()
        if kind == _JOIN:
            self._link.send_join(raw)
        else:
            self._link.send_leave(raw)
        return waiter

    def _request_away(self, kind: int, key: str) -> Deferred[None]:
        """A join or leave asked for while away: it changes what is joined again."""
        if kind == _JOIN:
            op = self._rejoin.get(key)
            if op is None:
                op = self._rejoin[key] = _GroupOp(_JOIN)
            return op.wait()
        left = self._rejoin.pop(key, None)
        if left is not None:
            # Joined and left again while away: both are done (we are not a member).
            for d in left.waiters:
                d.callback(None)
        return succeed(None)

    def _complete(self, group: str, kind: int) -> list[Deferred[None]]:
        """Pop the in-flight op of ``kind`` at the head of ``group``'s queue."""
        ops = self._ops.get(group)
        if not ops or ops[0].kind != kind:
            return []
        op = ops.popleft()
        if not ops:
            del self._ops[group]
        if kind == _JOIN and group in self._rejoining:
            self._rejoining.discard(group)
            if not self._rejoining:
                self._back_due = True  # announced once the notice is dispatched
        return op.waiters

    def _membership_changed(self, frame: wire.MembershipMessage) -> list[Deferred[None]]:
        """Track our own membership from a notice; return the waiters it completes."""
        group = frame.group
        me = self.private_group
        views = self._views
        if group in views and not frame.is_transition:
            views[group] = None if frame.is_self_leave else frame
        if frame.is_self_leave:
            self._joined.pop(group, None)
            return self._complete(group, _LEAVE)
        if frame.is_transition:
            return []
        cause = frame.cause
        if cause == wire.CAUSED_BY_JOIN and frame.changed_member == me:
            self._joined[group] = None
            return self._complete(group, _JOIN)
        if cause == wire.CAUSED_BY_NETWORK:
            # A join caught by a network change puts us in a CAUSED_BY_NETWORK notice
            # instead of our own CAUSED_BY_JOIN (docs/spread-protocol.md, section 8.4, [src]).
            ops = self._ops.get(group)
            if ops and ops[0].kind == _JOIN and me in frame.members:
                self._joined[group] = None
                return self._complete(group, _JOIN)
        return []

    # ------------------------------------------------------------------ shared groups

    def acquire(self, group: str) -> Deferred[None]:
        """Take a share of ``group`` for one of the session's users; the Deferred fires
        once the session is a member (at once if it already is).

        The session joins on the first share and leaves on the last
        :meth:`release`, so users sharing a session never take each other out of a
        group. Raises as :meth:`join` does.
        """
        raw, key = self._joinable(group)
        self._check_open()
        holds = self._holds
        n = holds.get(key, 0)
        holds[key] = n + 1
        if n == 0:
            # Watch the group from before the join goes out, so the view starts with
            # the session's own join notice.
            self._views[key] = None
        # join() is idempotent: every holder waits for the same membership.
        return self._request(_JOIN, raw, key)

    def release(self, group: str) -> Deferred[None]:
        """Give back a share of ``group``; the session leaves it with the last share.

        Never fails for a session that is closed or closes meanwhile: it has left then.
        """
        key = wire.to_bytes(group).decode("latin-1")
        holds = self._holds
        n = holds.get(key, 0)
        if n > 1:
            holds[key] = n - 1
            return succeed(None)
        holds.pop(key, None)
        self._views.pop(key, None)
        if not self.connected and not self._away:
            return succeed(None)
        d = self.leave(key)

        def closed_meanwhile(failure: Failure) -> None:
            failure.trap(SessionClosed)

        return d.addErrback(closed_meanwhile)

    def holders(self, group: str) -> int:
        """How many users hold a share of ``group`` (see :meth:`acquire`)."""
        return self._holds.get(group, 0)

    def view(self, group: str) -> wire.MembershipMessage | None:
        """The latest regular membership notice of a group held through
        :meth:`acquire` (None while it is not held, or before the first notice)."""
        return self._views.get(group)

    # ------------------------------------------------------------------ multicast

    def multicast(
        self,
        groups: str | bytes | Sequence[str | bytes],
        data: bytes | bytearray | memoryview,
        service: int | None = wire.SAFE_MESS,
        mess_type: int = 0,
        self_discard: bool = False,
    ) -> None:
        """Send ``data`` to ``groups`` (one name or a sequence; private groups allowed).

        ``service`` is one of UNRELIABLE_MESS .. SAFE_MESS (None means SAFE);
        ``mess_type`` a signed 16-bit tag delivered with the message; ``self_discard``
        keeps our own copy from coming back. Nothing is written unless every check
        passes: raises IllegalGroupName (bad name, no groups), MessageTooLong (more
        than 100 groups, or 48 + 32 * groups + len(data) > 143200, the most a real
        5.0.1 daemon carries without aborting), IllegalService (a ValueError: not one
        service level), ValueError (mess_type outside -32768..32767) and
        SessionClosed (SessionReconnecting while the session is away). Returns None:
        Spread acknowledges nothing.
        """
        if not self.connected:
            if self._away:
                raise SessionReconnecting(
                    f"Spread session {self.private_group} is reconnecting (its daemon "
                    "connection was lost): nothing can be sent until it is back"
                )
            raise SessionClosed(f"Spread session {self.private_group} is closed")
        names: tuple[bytes, ...] | None
        if isinstance(groups, (str, bytes)):
            names = (self._group_bytes(groups),)
        else:
            # the queue sends to the same few destination tuples over and over
            names = self._dests.get(groups) if type(groups) is tuple else None
            if names is None:
                names = tuple([self._group_bytes(g) for g in groups])
                if not names:
                    raise IllegalGroupName("a multicast needs at least one destination group")
                if type(groups) is tuple and len(self._dests) < _NAME_CACHE_MAX:
                    self._dests[groups] = names
        payload = data if type(data) is bytes else bytes(data)
        wire.check_message_size(len(names), len(payload))
        if service is None:
            service = wire.SAFE_MESS
        if service not in _SERVICES:
            raise IllegalService(
                f"service 0x{service:x} is not one of UNRELIABLE, RELIABLE, FIFO, CAUSAL, "
                "AGREED, SAFE"
            )
        if not -0x8000 <= mess_type <= 0x7FFF:
            raise ValueError(f"mess_type {mess_type} is not a signed 16-bit value")
        if self_discard:
            service |= wire.SELF_DISCARD
        self._link.send_multicast(service, names, mess_type, payload)

    # ------------------------------------------------------------------ listeners

    def add_listener(self, listener: Listener, group: str | bytes | None = None) -> None:
        """Call ``listener(frame)`` for every frame concerning ``group`` (None: all).

        Registering the same listener twice for the same group has no extra effect.
        """
        key = None if group is None else self._group_bytes(group).decode("latin-1")
        regs = self._listeners.setdefault(key, {})
        regs[listener] = None
        self._removed.discard((listener, key))
        self._snapshot(key)

    def remove_listener(self, listener: Listener, group: str | bytes | None = None) -> None:
        """Stop calling ``listener`` for ``group`` (no error if it was not registered)."""
        key = None if group is None else wire.to_bytes(group).decode("latin-1")
        regs = self._listeners.get(key)
        if regs is None or listener not in regs:
            return
        del regs[listener]
        if not regs:
            del self._listeners[key]
        if self._dispatching:
            self._removed.add((listener, key))
        self._snapshot(key)

    def _snapshot(self, key: str | None) -> None:
        regs = self._listeners.get(key)
        snap = tuple(regs) if regs else ()
        if key is None:
            self._catch_all = snap
        elif snap:
            self._snapshots[key] = snap
        else:
            self._snapshots.pop(key, None)

    # ------------------------------------------------------------------ incoming frames

    def deliver(self, frames: Iterable[Frame]) -> None:
        """Dispatch the frames of one read, in order, as one batch (called by the link).

        What listeners put off with :meth:`after_delivery` runs once the last frame has
        been dispatched.
        """
        batch = self._batch
        batch.begin()
        try:
            if self._delivering:
                # re-entrant (an in-process link delivering from inside a listener):
                # after the frame being dispatched, as frame_received does
                self._backlog.extend(frames)
                return
            # frame_received() per frame, inlined: this runs once per read
            self._delivering = True
            backlog = self._backlog
            try:
                for frame in frames:
                    self._deliver(frame)
                    while backlog:
                        self._deliver(backlog.popleft())
            finally:
                self._delivering = False
        finally:
            batch.end()

    def after_delivery(self, fn: Callable[[], object]) -> bool:
        """Run ``fn()`` once the frames being delivered now have all been dispatched.

        Returns False, and schedules nothing, when no delivery is under way (the caller
        then picks its own moment, e.g. ``callLater(0)``). ``fn`` runs in the same
        reactor turn, before what the listeners sent is written: the place to flush
        work batched over the frames of one read.
        """
        return self._batch.defer(fn)

    def frame_received(self, frame: Frame) -> None:
        """Dispatch one decoded frame (a batch of its own outside :meth:`deliver`)."""
        if self._delivering:
            # Re-entrant delivery (a listener's send looped straight back in process):
            # finish the current frame first so every listener sees one order.
            self._backlog.append(frame)
            return
        self._delivering = True
        batch = self._batch
        batch.depth += 1  # batch.begin(), inlined: once per frame
        try:
            self._deliver(frame)
            while self._backlog:
                self._deliver(self._backlog.popleft())
        finally:
            self._delivering = False
            if batch.depth > 1:
                batch.depth -= 1  # inside deliver(): its end runs the work
            else:
                batch.end()

    def _deliver(self, frame: Frame) -> None:
        if not self.connected:
            return
        kind = type(frame)
        if kind is wire.RegularMessage or kind is wire.RejectMessage:
            groups = frame.groups  # type: ignore[union-attr]
            if self._catch_all:
                self._dispatch_many(frame, groups)
            elif len(groups) == 1:
                self._dispatch(frame, groups[0])
            else:
                # Several groups (a RESULT goes to [sender, Q-mgr]), usually only one
                # of them ours: then there is nothing to merge either.
                snapshots = self._snapshots
                ours = [group for group in groups if group in snapshots]
                if len(ours) == 1:
                    self._dispatch(frame, ours[0])
                elif ours:
                    self._dispatch_many(frame, groups)
        elif kind is wire.MembershipMessage:
            done = self._membership_changed(frame)  # type: ignore[arg-type]
            if self._catch_all:
                self._dispatch_many(frame, (frame.group,))  # type: ignore[union-attr]
            else:
                self._dispatch(frame, frame.group)  # type: ignore[union-attr]
            if self._receiving:
                self._enqueue(frame)
            for d in done:
                d.callback(None)
            if self._back_due:
                self._back()  # the last group joined again: the session is back
            return
        else:
            self._log.warn("Spread session ignores unexpected frame {frame!r}", frame=frame)
            return
        if self._receiving:
            self._enqueue(frame)

    def _dispatch(self, frame: Frame, group: str) -> None:
        """The common case, one group and no catch-all listener: nothing to merge or
        de-duplicate. The bench's relay phase is 14% slower without this path;
        test_session's agreement test holds it to what :meth:`_dispatch_many` does."""
        found = self._snapshots.get(group)
        if not found:
            return
        self._dispatching += 1
        try:
            for listener in found:
                if self._removed and (listener, group) in self._removed:
                    continue
                try:
                    listener(frame)
                except Exception:
                    self._log.failure(
                        "Spread listener {listener!r} (group {group}) failed on {frame!r}",
                        listener=listener,
                        group=group,
                        frame=frame,
                    )
        finally:
            self._dispatching -= 1
            if not self._dispatching and self._removed:
                self._removed.clear()

    def _dispatch_many(self, frame: Frame, groups: Sequence[str]) -> None:
        """The general case: several groups, or catch-all listeners (one call per
        listener however many of its keys the frame concerns)."""
        snapshots = self._snapshots
        catch_all = self._catch_all
        calls: list[tuple[Listener, str | None]] = []
        sources = 0
        for group in groups:
            found = snapshots.get(group)
            if found:
                sources += 1
                calls.extend((listener, group) for listener in found)
        if catch_all:
            sources += 1
            calls.extend((listener, None) for listener in catch_all)
        if not calls:
            return
        if sources > 1:
            # one call per listener, even when it is registered under several keys
            seen: set[Listener] = set()
            unique = []
            for call in calls:
                if call[0] not in seen:
                    seen.add(call[0])
                    unique.append(call)
            calls = unique
        self._dispatching += 1
        try:
            for listener, key in calls:
                if self._removed and (listener, key) in self._removed:
                    continue
                try:
                    listener(frame)
                except Exception:
                    self._log.failure(
                        "Spread listener {listener!r} (group {group}) failed on {frame!r}",
                        listener=listener,
                        group=key,
                        frame=frame,
                    )
        finally:
            self._dispatching -= 1
            if not self._dispatching:
                self._removed.clear()

    # ------------------------------------------------------------------ receive()

    def receive(self) -> Deferred[Frame]:
        """A Deferred for the next frame this session receives (for simple scripts).

        Frames are queued only once receive() has been called, and then every frame
        is queued (listeners or not). The queue holds ``receive_queue_size`` frames;
        when it is full, newer frames are dropped (tail drop) and a marker takes their
        place: the receive() that reaches the marker fails with
        :class:`ReceiveOverflow` (``dropped`` = how many), and the following calls go
        on with the frames received after the gap. So the order is kept and no loss
        is silent. After the session ends, queued frames are still handed out, then
        receive() fails with SessionClosed. Cancelling the Deferred gives up the
        waiting slot.
        """
        self._receiving = True
        if self._receive_queue:
            item = self._receive_queue.popleft()
            if isinstance(item, _Gap):
                return fail(ReceiveOverflow(item.count))
            return succeed(item)
        if self._closed:
            return fail(self._closed_error())
        d: Deferred[Frame] = Deferred(self._cancel_receive)
        self._receive_waiters.append(d)
        return d

    def _cancel_receive(self, d: Deferred[Frame]) -> None:
        if d in self._receive_waiters:
            self._receive_waiters.remove(d)

    def _enqueue(self, frame: Frame) -> None:
        if self._receive_waiters:
            self._receive_waiters.popleft().callback(frame)
            return
        queue = self._receive_queue
        if len(queue) < self._receive_limit:
            queue.append(frame)
            return
        tail = queue[-1]
        if isinstance(tail, _Gap):
            tail.count += 1
        else:
            queue.append(_Gap())
            self._log.warn(
                "Spread session {private_group}: receive() queue full ({limit} frames); "
                "dropping frames until it drains",
                private_group=self.private_group,
                limit=self._receive_limit,
            )

    # ------------------------------------------------------------------ back-pressure

    @property
    def writable(self) -> bool:
        """False while the link's outgoing buffer is full (the daemon is not keeping up).

        Sends still work while not writable (they are buffered); well-behaved
        producers wait for :meth:`whenWritable` or register with
        :meth:`register_producer`.
        """
        return self._writable

    def whenWritable(self) -> Deferred[None]:
        """A Deferred that fires with None once the session is writable (at once if it
        is); fails with SessionClosed if the session ends first."""
        if self._closed:
            return fail(self._closed_error())
        if self._writable:
            return succeed(None)
        d: Deferred[None] = Deferred(self._cancel_writable)
        self._writable_waiters.append(d)
        return d

    def _cancel_writable(self, d: Deferred[None]) -> None:
        if d in self._writable_waiters:
            self._writable_waiters.remove(d)

    def register_producer(self, producer: IPushProducer) -> None:
        """Have ``producer`` paused and resumed with the session's writability.

        Any number of producers may share a session. A producer registered while the
        session is not writable is paused at once; all get stopProducing() when the
        session ends.
        """
        if self._closed:
            producer.stopProducing()
            return
        self._producers[producer] = None
        if not self._writable:
            producer.pauseProducing()

    def unregister_producer(self, producer: IPushProducer) -> None:
        """Stop telling ``producer`` about writability (no error if unknown)."""
        self._producers.pop(producer, None)

    def pause_writing(self) -> None:
        """The link's buffer is full: pause registered producers (called by the link)."""
        if not self._writable or self._closed or self._away:
            return
        self._writable = False
        for producer in list(self._producers):
            if producer in self._producers:
                producer.pauseProducing()

    def resume_writing(self) -> None:
        """The link's buffer drained: wake waiters and producers (called by the link)."""
        if self._writable or self._closed or self._away:
            return
        self._writable = True
        while self._writable and self._writable_waiters:
            self._writable_waiters.pop(0).callback(None)
        for producer in list(self._producers):
            if not self._writable:
                break  # someone filled the buffer again: the rest stay paused
            if producer in self._producers:
                producer.resumeProducing()

    # ------------------------------------------------------------------ end of session

    def disconnect(self) -> Deferred[None]:
        """Send KILL_MESS and close for good (a reconnecting session too: it stops
        reconnecting); the Deferred fires with None once closed.

        No frame is dispatched after this call. Calling it again, or on a closed
        session, is harmless.
        """
        if self._closed:
            return succeed(None)
        d = self.whenDisconnected()
        self._closing = True
        if self._away:
            self.connection_lost(SessionClosed("disconnected while reconnecting"))
        elif self.connected:
            self.connected = False
            self._log.info(
                "Spread session {private_group} disconnecting", private_group=self.private_group
            )
            self._link.send_kill()
        return d

    def whenDisconnected(self) -> Deferred[None]:
        """A new Deferred that fires with None when the session ends for good (at once
        if it has): closed, or lost without reconnecting; :attr:`disconnect_reason`
        then says why. A reconnecting session's lost connections do not count (see
        :meth:`add_reconnect_listener`)."""
        if self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred(self._cancel_disconnect_waiter)
        self._disconnect_waiters.append(d)
        return d

    def _cancel_disconnect_waiter(self, d: Deferred[None]) -> None:
        if d in self._disconnect_waiters:
            self._disconnect_waiters.remove(d)

    def _closed_error(self) -> SessionClosed:
        why = ""
        if self.disconnect_reason is not None:
            why = f": {self.disconnect_reason.getErrorMessage()}"
        return SessionClosed(f"Spread session {self.private_group} is closed{why}")

    def connection_lost(
        self, reason: Failure | BaseException | None = None, link: ISessionLink | None = None
    ) -> None:
        """The link was lost (called by the link, once; ``link`` says which, so that
        late news of an earlier link is ignored).

        A session that :attr:`reconnects` (and was not asked to :meth:`disconnect`) is
        away now (see the module doc). Otherwise the session ends: pending
        join/leave/receive/whenWritable Deferreds fail with SessionClosed, registered
        producers get stopProducing(), whenDisconnected() Deferreds fire.
        """
        if self._closed or (link is not None and link is not self._link):
            return
        if reason is None:
            reason = SessionClosed("session closed")
        failure = reason if isinstance(reason, Failure) else Failure(reason)
        if self.reconnects and not self._closing:
            self._link_lost(failure)
            return
        self._closed = True
        self._away = False
        self.connected = False
        self.disconnect_reason = failure
        self._log.info(
            "Spread session {private_group} ended: {reason}",
            private_group=self.private_group,
            reason=self.disconnect_reason.getErrorMessage(),
        )
        error = self._closed_error()
        pending: list[Deferred[None]] = []
        for ops in self._ops.values():
            for op in ops:
                pending.extend(op.waiters)
        for op in self._rejoin.values():
            pending.extend(op.waiters)
        self._ops.clear()
        self._rejoin.clear()
        self._rejoining.clear()
        self._joined.clear()
        self._reconnect_listeners.clear()
        pending.extend(self._writable_waiters)
        self._writable_waiters.clear()
        receivers = list(self._receive_waiters)
        self._receive_waiters.clear()
        producers = list(self._producers)
        self._producers.clear()
        waiters, self._disconnect_waiters = self._disconnect_waiters, []
        for d in pending:
            d.errback(Failure(error))
        for r in receivers:
            r.errback(Failure(error))
        for producer in producers:
            try:
                producer.stopProducing()
            except Exception:
                self._log.failure("stopProducing of {producer!r} failed", producer=producer)
        for d in waiters:
            d.callback(None)

    # ------------------------------------------------------------------ reconnecting

    def survive_reconnects(self, clock: IReactorTime) -> None:
        """From now on a lost link leaves the session away, waiting for
        :meth:`relink`, instead of ending it (see the module doc); ``clock`` times the
        outages. Whoever reconnects the session calls this
        (:func:`~spreadqueue._spread.keeper.keep_session`); to end such a session for
        good, set :attr:`reconnects` to False and call :meth:`connection_lost`.
        """
        self.reconnects = True
        self._clock = clock

    def add_reconnect_listener(self, listener: ReconnectListener) -> None:
        """Call ``listener(event)`` with a :class:`SessionLost` when the session loses
        its daemon connection and reconnects, and with a :class:`SessionBack` once it
        is connected again and back in all its groups. A connection lost again before
        the session was back is another SessionLost (then one SessionBack). A session
        that does not reconnect never calls it. Adding a listener twice has no extra
        effect."""
        self._reconnect_listeners[listener] = None

    def remove_reconnect_listener(self, listener: ReconnectListener) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        self._reconnect_listeners.pop(listener, None)

    def _tell(self, event: SessionLost | SessionBack) -> None:
        for listener in list(self._reconnect_listeners):
            if listener not in self._reconnect_listeners:
                continue  # removed by an earlier one
            try:
                listener(event)
            except Exception:
                self._log.failure(
                    "Spread reconnect listener {listener!r} failed on {event!r}",
                    listener=listener,
                    event=event,
                )

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else 0.0

    def _link_lost(self, failure: Failure) -> None:
        """The link is gone and another will come: be away until it does."""
        if self._away:
            return
        self.connected = False
        self._away = True
        self._writable = False
        self._back_due = False
        # What to join again: the groups we are in and those we are joining, in the
        # order first joined, unless the last thing asked of them was a leave.
        order = dict.fromkeys(self._joined)
        order.update(dict.fromkeys(self._ops))
        rejoin = self._rejoin
        done: list[Deferred[None]] = []
        for group in order:
            ops = self._ops.get(group)
            if ops and ops[-1].kind == _LEAVE:
                for op in ops:
                    done.extend(op.waiters)  # we are out of every group now
                continue
            op = rejoin[group] = _GroupOp(_JOIN)
            for earlier in ops or ():
                (op.waiters if earlier.kind == _JOIN else done).extend(earlier.waiters)
        self._ops.clear()
        self._joined.clear()
        self._rejoining.clear()
        for group in self._views:
            self._views[group] = None
        for producer in list(self._producers):
            producer.pauseProducing()
        reason = failure.getErrorMessage()
        if self._down_since is None:
            self._down_since = self._now()
            self._previous_group = self.private_group
            self._log.warn(
                "Spread session {private_group} lost ({reason}); reconnecting",
                private_group=self.private_group,
                reason=reason,
                spread_event="lost",
            )
        else:
            # lost again before it was back: the same outage (SessionBack counts from
            # its start), but its reconnector must hear of this connection's end too
            self._log.info(
                "Spread session {private_group} lost again before it was back ({reason})",
                private_group=self.private_group,
                reason=reason,
            )
        self._tell(SessionLost(self.private_group, reason))
        for d in done:
            d.callback(None)

    def relink(
        self, link: ISessionLink, private_group: str | bytes, *, batch: DeliveryBatch | None = None
    ) -> None:
        """Go on over a new ``link`` (called by whoever reconnected it): join every
        group again; the session is back (reconnect listeners hear
        :class:`SessionBack`) once the daemon has confirmed them all.

        ``private_group`` is the name the daemon gave this time: normally the same (the
        session asks for its name again); if another daemon answered, listeners of the
        old private group move to the new one. ``batch`` is the new link's
        DeliveryBatch, as for the constructor. Raises SessionClosed if the session has
        ended for good (the caller then drops the link), ValueError if it is not away.
        """
        if self._closed or self._closing:
            raise SessionClosed(f"Spread session {self.private_group} is closed")
        if not self._away:
            raise ValueError(f"{self!r} is not away: it has a link")
        raw = wire.to_bytes(private_group)
        parts = wire.split_private_group(raw)
        if parts is None:
            raise ValueError(f"{private_group!r} is not a private group name ('#name#daemon')")
        group = raw.decode("latin-1")
        if group != self.private_group:
            self._rename(group, parts)
        self._link = link
        self._batch = batch if batch is not None else DeliveryBatch()
        self._away = False
        self.connected = True
        rejoin, self._rejoin = self._rejoin, {}
        try:
            for key, op in rejoin.items():
                raw_group = self._group_bytes(key)
                if self.membership:
                    self._ops[key] = deque([op])
                    self._rejoining.add(key)
                    link.send_join(raw_group)
                else:
                    link.send_join(raw_group)
                    self._joined[key] = None
                    for d in op.waiters:
                        d.callback(None)
        except SpreadError as e:
            # The new link died at once: its loss (connection_lost) is on its way.
            self._log.info("Spread session {group}: rejoining failed: {e}", group=group, e=e)
            return
        self.resume_writing()
        if not self._rejoining:
            self._back()

    def _rename(self, group: str, parts: tuple[bytes, bytes]) -> None:
        """The daemon that answered gave another private group: move its listeners."""
        old = self.private_group
        self._log.warn(
            "Spread session {old} came back as {new} (another daemon): what was "
            "addressed to {old} reaches nobody",
            old=old,
            new=group,
        )
        self.private_group = group
        self.name = parts[0].decode("latin-1")
        self.daemon_name = parts[1].decode("latin-1")
        moved = self._listeners.pop(old, None)
        if moved:
            self._listeners.setdefault(group, {}).update(moved)
        self._snapshot(old)
        self._snapshot(group)

    def _back(self) -> None:
        self._back_due = False
        since, self._down_since = self._down_since, None
        away = 0.0 if since is None else max(0.0, self._now() - since)
        self._log.info(
            "Spread session {private_group} back after {away:.1f}s, in {groups} group(s) again",
            private_group=self.private_group,
            away=away,
            groups=len(self._joined),
            spread_event="back",
        )
        self._tell(SessionBack(self.private_group, away, self._previous_group))

    # ------------------------------------------------------------------ misc

    @property
    def groups(self) -> frozenset[str]:
        """The groups we are in: confirmed by our own notices (membership on), or
        asked for (membership off)."""
        return frozenset(self._joined)

    def listeners(self, group: str | None = None) -> Iterable[Listener]:
        """The listeners registered for ``group`` (None: the catch-all ones)."""
        return tuple(self._listeners.get(group, ()))
