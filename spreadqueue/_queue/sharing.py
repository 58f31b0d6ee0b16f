"""Group membership shared by several queue components on one Spread session.

Any number of senders, workers and managers may share one session, and several of
them join the same group (every worker of a queue joins ``Q-wrk``). Spread has one
membership per session: the first leave would take all of them out. So components
:func:`acquire` and :func:`release` groups; the session joins on the first acquire
and leaves on the last release.

For the same reason only the first holder of a group sees the session's own join
notice: a component that acquires a group its session is already in gets no notice
until the membership changes again. :func:`membership` gives it the group's current
view instead (the latest membership notice, kept from the first acquire on).
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from .._spread.errors import SessionClosed
from .._spread.interfaces import ISpreadSession
from .._spread.wire import MembershipMessage

__all__ = ["acquire", "holders", "membership", "release"]

_counts: WeakKeyDictionary[Any, dict[str, int]] = WeakKeyDictionary()
_views: WeakKeyDictionary[Any, dict[str, _View]] = WeakKeyDictionary()


class _View:
    """A listener keeping the latest regular membership notice of one group."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: MembershipMessage | None = None

    def __call__(self, frame: object) -> None:
        if type(frame) is MembershipMessage and not frame.is_transition:
            self.last = None if frame.is_self_leave else frame


def acquire(session: ISpreadSession, group: str) -> Deferred[None]:
    """Take a share of ``group``; the Deferred fires once the session is a member."""
    counts = _counts.setdefault(session, {})
    n = counts.get(group, 0)
    counts[group] = n + 1
    if n == 0:
        # Watch the group from before the join is sent, so the view starts with the
        # session's own join notice.
        view = _View()
        _views.setdefault(session, {})[group] = view
        session.add_listener(view, group)
    # ISpreadSession.join is idempotent: a second join returns the pending or
    # confirmed one, so every holder waits for the same membership.
    return session.join(group)  # type: ignore[no-any-return]


def release(session: ISpreadSession, group: str) -> Deferred[None]:
    """Give back a share; the session leaves ``group`` when the last one goes."""
    counts = _counts.get(session)
    n = counts.get(group, 0) if counts is not None else 0
    if n > 1:
        counts[group] = n - 1  # type: ignore[index]
        return succeed(None)
    if counts is not None:
        counts.pop(group, None)
    view = _views.get(session, {}).pop(group, None)
    if view is not None:
        session.remove_listener(view, group)
    if not session.connected:
        return succeed(None)
    try:
        d: Deferred[None] = session.leave(group)
    except SessionClosed:
        return succeed(None)

    def closed_meanwhile(failure: Failure) -> None:
        # A session that ends while we wait for the leave notice has left anyway.
        failure.trap(SessionClosed)

    return d.addErrback(closed_meanwhile)


def holders(session: ISpreadSession, group: str) -> int:
    """How many components currently hold ``group`` on ``session``."""
    counts = _counts.get(session)
    return counts.get(group, 0) if counts is not None else 0


def membership(session: ISpreadSession, group: str) -> MembershipMessage | None:
    """The latest regular membership notice of ``group`` on ``session`` (None while the
    session is not a member through :func:`acquire`)."""
    view = _views.get(session, {}).get(group)
    return view.last if view is not None else None
