"""An in-memory Spread network for testing code that uses spreadqueue.

It is the embedded daemon's own core with in-process sessions: the same group
semantics, membership notices and total order as a real daemon, with no sockets and
no real time. Drive it with a :class:`twisted.internet.task.Clock`::

    from twisted.internet.task import Clock
    from spreadqueue.testing import FakeSpreadNetwork

    clock = Clock()
    network = FakeSpreadNetwork(clock)
    alice = network.session("alice")
    d = alice.join("chat")
    network.flush()            # deliver everything that is due now
    assert d.called

Sessions are :class:`~spreadqueue.SpreadSession` objects, so they provide
:class:`~spreadqueue.interfaces.ISpreadSession` exactly as the ones
:func:`spreadqueue.connect` returns. Everything is deterministic: the names the
network invents, the order of members and of deliveries.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from ._spread.core import DaemonCore
from ._spread.daemon import SpreadDaemonFactory
from ._spread.local import LocalInbox, local_session
from ._spread.session import SpreadSession

__all__ = ["FakeSpreadNetwork"]


class FakeSpreadNetwork:
    """One in-memory Spread daemon named ``name`` on ``clock``."""

    def __init__(self, clock: Clock | None = None, name: str = "localhost") -> None:
        self.clock = clock if clock is not None else Clock()
        # A seeded generator: the names the daemon invents are the same on every run.
        self.daemon = SpreadDaemonFactory(
            self.clock, name, time=1, randrange=random.Random(name).randrange
        )
        # every session's inbox, by private group (closed ones too, for high_water)
        self._inboxes: dict[str, LocalInbox] = {}

    @property
    def core(self) -> DaemonCore:
        """The daemon's state (groups, members), for assertions."""
        return self.daemon.core

    def session(self, name: str = "", *, membership: bool = True) -> SpreadSession:
        """A new connected session; ``name`` '' lets the daemon invent one."""
        session = local_session(self.daemon, name, membership=membership)
        core_session = self.daemon.core.session(session.private_group)
        assert core_session is not None and isinstance(core_session.sink, LocalInbox)
        self._inboxes[session.private_group] = core_session.sink
        return session

    def connect(
        self, name: str | None = None, *, membership: bool = True, **_: Any
    ) -> Deferred[SpreadSession]:
        """Like :func:`spreadqueue.connect`, without the reactor and endpoint."""
        try:
            return succeed(self.session(name or "", membership=membership))
        except Exception as e:
            return fail(e)

    def members(self, group: str) -> tuple[str, ...]:
        """The private groups of ``group``'s members, in Spread's order."""
        return tuple(self.daemon.core.members(group))

    def crash(self, session: SpreadSession) -> None:
        """End ``session`` as a killed process would: no goodbye, the others get
        CAUSED_BY_DISCONNECT notices, the session itself sees its connection lost."""
        for link in list(self.daemon.local_links):
            if link.session.private_group == session.private_group:
                link.send_kill()

    def high_water(self, session: SpreadSession | None = None) -> int:
        """The most frames that waited at once for ``session`` (None: for any session
        of this network). A consumer that lets this grow towards 1000 would be cut off
        by a real daemon."""
        if session is not None:
            inbox = self._inboxes.get(session.private_group)
            return 0 if inbox is None else inbox.high_water
        return max((inbox.high_water for inbox in self._inboxes.values()), default=0)

    def flush(self, max_rounds: int = 10_000) -> None:
        """Run everything due at the clock's current time, including what that schedules."""
        for _ in range(max_rounds):
            now = self.clock.seconds()
            if not any(c.getTime() <= now for c in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise RuntimeError(f"still busy after {max_rounds} rounds: a delivery loop?")

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``, delivering everything on the way."""
        self.flush()
        self.clock.advance(seconds)
        self.flush()
