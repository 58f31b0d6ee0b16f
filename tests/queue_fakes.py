"""A small in-memory Spread daemon for the queue tests, driven by a task.Clock.

It keeps the Spread semantics the queue relies on (README sections 5.5-5.11):

- one total order: every multicast, join, leave and disconnect becomes an event in
  one global FIFO, processed in later reactor turns (``clock.advance(0)``);
- a message reaches each session once, even when it is in several destination groups;
  private groups are ``#name#fake``; a message to a group without members vanishes;
- membership notices go to every member, with the member list in name order and
  ``changed_member``; the leaver gets a self-leave notice; a disconnected session
  causes CAUSED_BY_DISCONNECT in each of its groups;
- a session with more than ``max_pending`` undelivered messages is cut off, like the
  real daemon's 1000-message limit.

Listener exceptions are recorded in ``FakeSpread.errors`` (tests check it is empty).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from spreadqueue._spread import wire
from spreadqueue._spread.errors import IllegalGroupName, SessionClosed
from spreadqueue._spread.interfaces import ISpreadSession

Listener = Callable[[Any], object]


class FakeSpread:
    """One fake daemon named ``name``."""

    def __init__(self, clock: Clock, name: str = "fake", max_pending: int = 1000) -> None:
        self.clock = clock
        self.name = name
        self.max_pending = max_pending
        self.sessions: dict[str, FakeSession] = {}
        self.members: dict[str, list[str]] = {}
        self.errors: list[Failure] = []
        self.multicasts = 0
        self.high_water: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._counters: dict[str, int] = {}
        self._events: deque[tuple[Callable[[], None], list[str]]] = deque()
        self._call: Any = None
        self._names = itertools.count(1)

    # ------------------------------------------------------------------ API

    def connect(self, name: str | None = None) -> FakeSession:
        """A new session (private name ``name`` or an invented one)."""
        if name is None:
            name = f"s{next(self._names)}"
        wire.check_private_name(name)
        group = f"#{name}#{self.name}"
        if group in self.sessions:
            raise ValueError(f"private name {name!r} is in use")
        session = FakeSession(self, name)
        self.sessions[group] = session
        return session

    def pump(self) -> None:
        """Deliver everything (and everything it causes) now."""
        self.clock.advance(0)

    # ------------------------------------------------------------------ events

    def _enqueue(self, event: Callable[[], None], recipients: Sequence[str] = ()) -> None:
        counted = []
        for r in recipients:
            n = self._pending.get(r, 0) + 1
            self._pending[r] = n
            counted.append(r)
            if n > self.high_water.get(r, 0):
                self.high_water[r] = n
        self._events.append((event, counted))
        for r in counted:
            if self._pending.get(r, 0) > self.max_pending and r in self.sessions:
                # The real daemon cuts off a session that falls 1000 messages behind.
                self.sessions[r]._cut_off()
        if self._call is None:
            self._call = self.clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        # One batch per turn: what the events cause comes in the next turn.
        for _ in range(len(self._events)):
            event, counted = self._events.popleft()
            for r in counted:
                self._pending[r] -= 1
            event()
        if self._events and self._call is None:
            self._call = self.clock.callLater(0, self._run)

    def _notice(
        self, group: str, cause: int, changed: str, to: Sequence[str], members: Sequence[str]
    ) -> None:
        self._counters[group] = self._counters.get(group, 0) + 1
        frame = wire.MembershipMessage(
            service_type=wire.REG_MEMB_MESS | cause,
            group=group,
            cause=cause,
            group_id=wire.GroupId(1, 1, self._counters[group]),
            members=tuple(members),
            vs_sets=((changed,),),
            local_vs_set=0,
            changed_member=changed,
        )
        for m in list(to):
            session = self.sessions.get(m)
            if session is not None:
                session._deliver(frame)

    def _do_join(self, session: FakeSession, group: str) -> None:
        members = self.members.setdefault(group, [])
        me = session.private_group
        if not session.connected or me in members:
            session._joined_done(group)
            return
        members.append(me)
        members.sort()
        session._groups.add(group)
        self._notice(group, wire.CAUSED_BY_JOIN, me, members, members)
        session._joined_done(group)

    def _do_leave(self, session: FakeSession, group: str) -> None:
        members = self.members.get(group, [])
        me = session.private_group
        if me not in members:
            session._left_done(group)
            return
        members.remove(me)
        session._groups.discard(group)
        self._notice(group, wire.CAUSED_BY_LEAVE, me, members, members)
        session._deliver(
            wire.MembershipMessage(
                service_type=wire.CAUSED_BY_LEAVE,
                group=group,
                cause=wire.CAUSED_BY_LEAVE,
                group_id=None,
                is_self_leave=True,
            )
        )
        session._left_done(group)

    def _do_disconnect(self, session: FakeSession) -> None:
        me = session.private_group
        for group in sorted(session._groups):
            members = self.members.get(group, [])
            if me in members:
                members.remove(me)
                self._notice(group, wire.CAUSED_BY_DISCONNECT, me, members, members)
        session._groups.clear()
        if self.sessions.get(me) is session:
            del self.sessions[me]

    def _recipients(self, groups: Sequence[str]) -> list[str]:
        out: dict[str, None] = {}
        for g in groups:
            if g.startswith("#"):
                if g in self.sessions:
                    out[g] = None
            else:
                for m in self.members.get(g, ()):
                    out[m] = None
        return list(out)

    def _do_multicast(self, frame: wire.RegularMessage, discard: str | None) -> None:
        for r in self._recipients(frame.groups):
            if r == discard:
                continue
            session = self.sessions.get(r)
            if session is not None:
                session._deliver(frame)


@implementer(ISpreadSession)
class FakeSession:
    """One session of a :class:`FakeSpread` (membership notices on)."""

    def __init__(self, daemon: FakeSpread, name: str) -> None:
        self.daemon = daemon
        self.name = name
        self.daemon_name = daemon.name
        self.private_group = f"#{name}#{daemon.name}"
        self.connected = True
        self.sent: list[tuple[tuple[str, ...], int, bytes]] = []
        self._groups: set[str] = set()
        self._joining: dict[str, list[Deferred[None]]] = {}
        self._leaving: dict[str, list[Deferred[None]]] = {}
        self._listeners: dict[str | None, list[Listener]] = {}
        self._disconnect_waiters: list[Deferred[None]] = []
        self._receiving = False
        self._received: deque[Any] = deque()
        self._receivers: deque[Deferred[Any]] = deque()

    def __repr__(self) -> str:
        return f"<FakeSession {self.private_group}>"

    # ------------------------------------------------------------------ groups

    def _check(self, group: str) -> str:
        if not self.connected:
            raise SessionClosed(f"{self.private_group} is closed")
        raw = wire.check_group_name(group)
        if raw.startswith(b"#"):
            raise IllegalGroupName("private groups cannot be joined")
        return group

    def join(self, group: str) -> Deferred[None]:
        self._check(group)
        if group in self._groups and group not in self._leaving:
            return succeed(None)
        d: Deferred[None] = Deferred()
        waiters = self._joining.get(group)
        if waiters is None:
            self._joining[group] = [d]
            self.daemon._enqueue(lambda: self.daemon._do_join(self, group))
        else:
            waiters.append(d)
        return d

    def leave(self, group: str) -> Deferred[None]:
        self._check(group)
        if group not in self._groups and group not in self._joining:
            return succeed(None)
        d: Deferred[None] = Deferred()
        waiters = self._leaving.get(group)
        if waiters is None:
            self._leaving[group] = [d]
            self.daemon._enqueue(lambda: self.daemon._do_leave(self, group))
        else:
            waiters.append(d)
        return d

    def _joined_done(self, group: str) -> None:
        for d in self._joining.pop(group, []):
            d.callback(None)

    def _left_done(self, group: str) -> None:
        for d in self._leaving.pop(group, []):
            d.callback(None)

    # ------------------------------------------------------------------ messages

    def multicast(
        self,
        groups: str | Sequence[str],
        data: bytes,
        service: int | None = None,
        mess_type: int = 0,
        self_discard: bool = False,
    ) -> None:
        if not self.connected:
            raise SessionClosed(f"{self.private_group} is closed")
        names = (groups,) if isinstance(groups, str) else tuple(groups)
        if not names:
            raise IllegalGroupName("no destination groups")
        for g in names:
            wire.check_group_name(g)
        wire.check_message_size(len(names), len(data))
        if not -0x8000 <= mess_type <= 0x7FFF:
            raise ValueError("mess_type is 16 bits")
        service = wire.SAFE_MESS if service is None else service
        frame = wire.RegularMessage(
            service_type=service | (wire.SELF_DISCARD if self_discard else 0),
            sender=self.private_group,
            groups=names,
            mess_type=mess_type,
            data=bytes(data),
        )
        self.sent.append((names, mess_type, frame.data))
        self.daemon.multicasts += 1
        daemon = self.daemon
        discard = self.private_group if self_discard else None
        daemon._enqueue(lambda: daemon._do_multicast(frame, discard), daemon._recipients(names))

    def add_listener(self, listener: Listener, group: str | None = None) -> None:
        regs = self._listeners.setdefault(group, [])
        if listener not in regs:
            regs.append(listener)

    def remove_listener(self, listener: Listener, group: str | None = None) -> None:
        regs = self._listeners.get(group, [])
        if listener in regs:
            regs.remove(listener)

    def _deliver(self, frame: Any) -> None:
        if not self.connected:
            return
        keys: tuple[str, ...] = (
            (frame.group,) if isinstance(frame, wire.MembershipMessage) else frame.groups
        )
        calls: list[Listener] = []
        for key in (*keys, None):
            for listener in self._listeners.get(key, ()):
                if listener not in calls:
                    calls.append(listener)
        for listener in calls:
            try:
                listener(frame)
            except Exception:
                self.daemon.errors.append(Failure())
        if self._receiving:
            if self._receivers:
                self._receivers.popleft().callback(frame)
            else:
                self._received.append(frame)

    def receive(self) -> Deferred[Any]:
        self._receiving = True
        if self._received:
            return succeed(self._received.popleft())
        d: Deferred[Any] = Deferred()
        self._receivers.append(d)
        return d

    # ------------------------------------------------------------------ the end

    def disconnect(self) -> Deferred[None]:
        """Close politely; the others see CAUSED_BY_DISCONNECT."""
        self._end()
        return succeed(None)

    def crash(self) -> None:
        """The process died: to the others it looks exactly like a disconnect."""
        self._end()

    def _cut_off(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self.connected:
            return
        self.connected = False
        self.daemon._enqueue(lambda: self.daemon._do_disconnect(self))
        for waiters in (self._joining, self._leaving):
            for ds in waiters.values():
                for d in ds:
                    d.errback(SessionClosed(f"{self.private_group} is closed"))
            waiters.clear()
        waiters_done, self._disconnect_waiters = self._disconnect_waiters, []
        for d in waiters_done:
            d.callback(None)

    def whenDisconnected(self) -> Deferred[None]:
        if not self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._disconnect_waiters.append(d)
        return d
