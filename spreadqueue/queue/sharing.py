"""Group membership shared by several queue components on one Spread session.

Any number of senders, workers and managers may share one session, and several of
them join the same group (every worker of a queue joins ``Q-wrk``). Spread has one
membership per session: the first leave would take all of them out. So components
:func:`acquire` and :func:`release` groups; the session joins on the first acquire
and leaves on the last release.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from ..interfaces import ISpreadSession
from ..spread.errors import SessionClosed

__all__ = ["acquire", "holders", "release"]

_counts: WeakKeyDictionary[Any, dict[str, int]] = WeakKeyDictionary()


def acquire(session: ISpreadSession, group: str) -> Deferred[None]:
    """Take a share of ``group``; the Deferred fires once the session is a member."""
    counts = _counts.setdefault(session, {})
    counts[group] = counts.get(group, 0) + 1
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
