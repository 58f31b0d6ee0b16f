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

Several daemons make a network that partitions, merges and loses daemons as a ring of
real Spread 5.0.1 daemons does (docs/spread-protocol.md, sections 8 and 14)::

    network = FakeSpreadNetwork(clock, daemons=["d1", "d2", "d3"])
    alice = network.session("alice", daemon="d1")     # private group #alice#d1
    bob = network.session("bob", daemon="d2")
    alice.join("chat")
    bob.join("chat")
    network.flush()
    network.partition(["d1"], ["d2", "d3"])
    network.flush()   # alice gets TRANSITION_MESS, then CAUSED_BY_NETWORK [#alice#d1]
    network.merge()
    network.flush()   # CAUSED_BY_NETWORK, vs-sets [#bob#d2] [#alice#d1], no transition

What a member sees:

- **One ring.** Members on every daemon appear in notices with their own daemon's
  suffix, ordered by daemon (in the order of ``daemons``, the configuration file's),
  then by name; multicasts and unicasts reach members on any daemon, in one total
  order. Every daemon has a message at once, so SAFE is delivered as AGREED is.
- **A partition** (:meth:`~FakeSpreadNetwork.partition`, or a killed daemon): in each
  group that loses members, the members on each side get TRANSITION_MESS, then
  REG_MEMB_MESS | CAUSED_BY_NETWORK with one vs-set, the members kept. Groups that lose
  no one get nothing. While partitioned, messages, joins and leaves stay on their side,
  unicasts to the other side are dropped silently, and nothing crosses at the merge.
- **A merge** (:meth:`~FakeSpreadNetwork.merge`): REG_MEMB_MESS | CAUSED_BY_NETWORK with
  one vs-set per side, and no transitional notice.
- **A killed daemon** (:meth:`~FakeSpreadNetwork.kill_daemon`): its sessions see their
  connection closed; the others see a partition. :meth:`~FakeSpreadNetwork.restart_daemon`
  brings it back empty; it joins the ring with no notice.

By default the daemons notice a change at once, which is what deterministic tests want.
Real daemons take 2.5 to 3 s to notice a loss and up to about 31 s to merge (section
14): ``detection_delay=3, merge_delay=31`` reproduce that on the clock. Between a cut
and its detection, what sessions of the stopped ring send waits, and is delivered after
the new membership on its own side (a message under way at the cut, delivered between
the two notices as trace p7 shows, is not modelled). :mod:`spreadqueue._spread.ring` has
the details and the sources.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.logger import Logger

from ._spread.core import DaemonCore
from ._spread.daemon import SpreadDaemonFactory
from ._spread.local import LocalInbox, local_session
from ._spread.ring import DaemonNetwork
from ._spread.session import SpreadSession

__all__ = ["FakeSpreadNetwork"]

log = Logger(namespace="spreadqueue.testing")


class FakeSpreadNetwork:
    """In-memory Spread daemons on ``clock``: one named ``name``, or the ring ``daemons``
    (names, in the order of their configuration file: it orders members and picks the
    representative whose id starts group ids, section 8.3).

    ``detection_delay`` and ``merge_delay`` (seconds on the clock, default 0: at once)
    are how long the daemons take to notice a loss (a partition, a killed daemon) and to
    merge after :meth:`merge`; a restarted daemon joins after ``detection_delay``.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        name: str = "localhost",
        *,
        daemons: Sequence[str] | None = None,
        detection_delay: float = 0.0,
        merge_delay: float = 0.0,
    ) -> None:
        if daemons is not None and name != "localhost":
            raise ValueError("give either a daemon name or daemons, not both")
        if detection_delay < 0 or merge_delay < 0:
            raise ValueError("delays cannot be negative")
        self.clock = clock if clock is not None else Clock()
        self.detection_delay = detection_delay
        self.merge_delay = merge_delay
        started = [self._start(n) for n in ((name,) if daemons is None else daemons)]
        self._network = DaemonNetwork([d.core for d in started], now=self.clock.seconds)
        self._daemons = {d.name: d for d in started}
        # every session's inbox, by private group (closed ones too, for high_water)
        self._inboxes: dict[str, LocalInbox] = {}
        self._calls: dict[str, IDelayedCall] = {}

    def _start(self, name: str) -> SpreadDaemonFactory:
        # A seeded generator: the names the daemon invents are the same on every run.
        return SpreadDaemonFactory(
            self.clock, name, time=1, randrange=random.Random(name).randrange
        )

    # ----------------------------------------------------------------- daemons

    @property
    def daemons(self) -> tuple[str, ...]:
        """The daemons' names, in configuration order."""
        return self._network.daemons

    @property
    def daemon(self) -> SpreadDaemonFactory:
        """The first daemon (the only one by default)."""
        return self._daemons[self.daemons[0]]

    @property
    def core(self) -> DaemonCore:
        """The first daemon's state (groups, members), for assertions."""
        return self.daemon.core

    def rings(self) -> tuple[tuple[str, ...], ...]:
        """The daemons that form one ring now, ring by ring (a change not yet detected
        shows the ring as it was, without its dead daemons)."""
        return self._network.rings()

    # ----------------------------------------------------------------- sessions

    def session(
        self, name: str = "", *, daemon: str | None = None, membership: bool = True
    ) -> SpreadSession:
        """A new connected session of ``daemon`` (default: the first); ``name`` ''
        lets the daemon invent one. Raises ConnectionRefusedError when the daemon is
        down, and as :func:`spreadqueue.connect` does for a refused name."""
        factory = self._running(daemon)
        session = local_session(factory, name, membership=membership)
        core_session = factory.core.session(session.private_group)
        assert core_session is not None and isinstance(core_session.sink, LocalInbox)
        self._inboxes[session.private_group] = core_session.sink
        return session

    def connect(
        self,
        name: str | None = None,
        *,
        membership: bool = True,
        daemon: str | None = None,
        **_: Any,
    ) -> Deferred[SpreadSession]:
        """Like :func:`spreadqueue.connect`, without the reactor and endpoint."""
        try:
            return succeed(self.session(name or "", daemon=daemon, membership=membership))
        except Exception as e:
            return fail(e)

    def members(self, group: str, *, daemon: str | None = None) -> tuple[str, ...]:
        """The private groups of ``group``'s members, in Spread's order, as ``daemon``
        sees them. Without ``daemon``: as the whole network sees them, which only makes
        sense while it is one ring (ValueError otherwise)."""
        if daemon is None:
            rings = [ring for ring in self.rings() if ring]
            if len(rings) > 1:
                raise ValueError(f"the network is partitioned {rings}: give daemon=")
            if not rings:
                return ()
            daemon = rings[0][0]
        return self._running(daemon).core.members(group)

    def crash(self, session: SpreadSession) -> None:
        """End ``session`` as a killed process would: no goodbye, the others get
        CAUSED_BY_DISCONNECT notices, the session itself sees its connection lost."""
        for factory in self._daemons.values():
            for link in list(factory.local_links):
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

    # ----------------------------------------------------------------- the network

    def partition(self, *sides: Sequence[str]) -> None:
        """Cut the network into ``sides``, lists of daemons that reach each other and
        none of the others; daemons named on no side form one more side together (so
        ``partition(["d3"])`` cuts d3 off from the rest). Daemons that lose each other
        see a partition, after ``detection_delay``; daemons that come to reach each
        other merge, after ``merge_delay``."""
        self._network.set_sides(sides)
        log.info("fake Spread network: sides {sides}", sides=[list(s) for s in sides])
        self._settle()

    def merge(self) -> None:
        """Heal every cut: the daemons (those running) merge into one ring after
        ``merge_delay``."""
        self._network.set_sides([])
        log.info("fake Spread network: healed")
        self._settle()

    def kill_daemon(self, name: str) -> None:
        """Daemon ``name`` dies (kill -9): its sessions see their connection closed at
        once; members on the other daemons see a partition after ``detection_delay``."""
        self._network.kill(name)  # its sessions end, with no notice to anyone ...
        self._daemons[name].close_all()  # ... and their clients see it
        log.info("fake Spread daemon {name} killed", name=name)
        self._settle()

    def restart_daemon(self, name: str) -> None:
        """Daemon ``name``, killed before, runs again with no session; it joins the
        daemons it reaches after ``detection_delay``, changing no group."""
        if self._network.is_alive(name):
            raise ValueError(f"daemon {name!r} is running")
        factory = self._start(name)
        self._network.restart(factory.core)
        self._daemons[name] = factory
        log.info("fake Spread daemon {name} restarted", name=name)
        self._settle(merge_delay=self.detection_delay)

    def _running(self, daemon: str | None) -> SpreadDaemonFactory:
        name = self.daemons[0] if daemon is None else daemon
        if not self._network.is_alive(name):  # raises ValueError for an unknown name
            raise ConnectionRefusedError(f"Spread daemon {name} is not running")
        return self._daemons[name]

    def _settle(self, merge_delay: float | None = None) -> None:
        # Let the daemons notice what changed: now, or on the clock.
        if self._network.needs_detection():
            self._when("detect", self.detection_delay, self._detect)
        if self._network.needs_merge():
            delay = self.merge_delay if merge_delay is None else merge_delay
            self._when("merge", delay, self._merge)

    def _when(self, what: str, delay: float, action: Any) -> None:
        if delay <= 0:
            action()
            return
        call = self._calls.get(what)
        if call is not None and call.active():
            if call.getTime() > self.clock.seconds() + delay:
                call.reset(delay)
            return
        self._calls[what] = self.clock.callLater(delay, action)

    def _detect(self) -> None:
        self._calls.pop("detect", None)
        self._network.detect()
        self._settle()

    def _merge(self) -> None:
        self._calls.pop("merge", None)
        self._network.merge()
        self._settle()

    # ----------------------------------------------------------------- time

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
