"""An in-memory Spread daemon that can be killed and restarted, for reconnect tests.

It is the embedded daemon's core with in-process sessions on a ``task.Clock``, as in
``spreadqueue.testing.FakeSpreadNetwork``; its sessions reconnect (``keep_session``
over ``local_session(resume=...)``). :meth:`RestartableDaemon.kill` is kill -9 of the
daemon: every session's connection drops at once, nobody hears of anybody else
leaving, and connecting is refused until :meth:`RestartableDaemon.restart` starts a
new, empty daemon of the same name.
"""

from __future__ import annotations

import random

from test_queue_services import fired
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock

from spreadqueue._spread.daemon import SpreadDaemonFactory
from spreadqueue._spread.keeper import LOCAL_BACKOFF, Backoff, keep_session
from spreadqueue._spread.local import local_session
from spreadqueue._spread.session import SpreadSession
from spreadqueue.testing import FakeSpreadNetwork


class RestartableDaemon:
    """One in-memory daemon named ``name`` on ``clock``, with reconnecting sessions."""

    def __init__(self, clock: Clock | None = None, name: str = "localhost") -> None:
        # the first daemon is a FakeSpreadNetwork's; restart() makes another (on the
        # same clock: the network's flush runs everything of both)
        self.network = FakeSpreadNetwork(clock, name)
        self.clock = self.network.clock
        self._daemon = self.network.daemon
        self.name = name
        self.starts = 1
        self.up = True
        #: (time, private name asked for) of every connection attempt of a session
        self.attempts: list[tuple[float, str | None]] = []
        #: errors the next connection attempts fail with, first to last
        self.refusals: list[BaseException] = []

    @property
    def daemon(self) -> SpreadDaemonFactory:
        """The daemon running now (or the dead one, between kill and restart)."""
        return self._daemon

    # ------------------------------------------------------------------ sessions

    def open_link(self, name: str | None, resume: SpreadSession | None) -> Deferred[SpreadSession]:
        """keep_session's LinkOpener for this daemon."""
        self.attempts.append((self.clock.seconds(), name))
        if self.refusals:
            return fail(self.refusals.pop(0))
        if not self.up:
            return fail(ConnectionRefusedError("the Spread daemon is down"))
        return maybeDeferred(local_session, self.daemon, name or "", resume=resume)

    def session(self, name: str | None = None, backoff: Backoff = LOCAL_BACKOFF) -> SpreadSession:
        """A session that reconnects (by default with the local back-off), no jitter."""
        d = keep_session(self.clock, self.open_link, name, backoff=backoff, randomness=lambda: 0.0)
        session: SpreadSession = fired(d)
        return session

    def plain_session(self, name: str = "") -> SpreadSession:
        """A session that does not reconnect."""
        return local_session(self.daemon, name)

    def members(self, group: str) -> tuple[str, ...]:
        return tuple(self._daemon.core.members(group))

    # ------------------------------------------------------------------ the daemon

    def kill(self) -> None:
        """kill -9 of the daemon: every connection drops; connecting fails until
        :meth:`restart`."""
        self.flush()
        self.up = False
        dead = self.daemon
        # in a set order (by name): the sessions' retries then come in that order too
        for link in sorted(dead.local_links, key=lambda link: link.session.private_group):
            dead.local_links.discard(link)
            session = link.session.sink.session  # type: ignore[attr-defined]
            if session is not None:
                session.connection_lost(ConnectionLost("the Spread daemon died"), link=link)

    def restart(self) -> None:
        """A new daemon of the same name at the same place: empty, accepting again."""
        self.starts += 1
        # seeded: the names it invents are the same on every run
        self._daemon = SpreadDaemonFactory(
            self.clock, self.name, time=self.starts, randrange=random.Random(self.starts).randrange
        )
        self.up = True

    # ------------------------------------------------------------------ time

    def flush(self) -> None:
        """Run everything due at the clock's current time, including what that schedules."""
        self.network.flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, from one timer to the next, delivering everything as
        we go."""
        end = self.clock.seconds() + seconds
        self.flush()
        while True:
            now = self.clock.seconds()
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= end]
            self.clock.advance((min(due) if due else end) - now)
            self.flush()
            if not due:
                return
