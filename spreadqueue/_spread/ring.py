"""Several embedded daemons as one Spread network: rings, partitions, merges, dead daemons.

:class:`DaemonNetwork` joins several :class:`~spreadqueue._spread.core.DaemonCore` into
the rings a real Spread 5.0.1 network forms (docs/spread-protocol.md; section numbers
below refer to it, with ../shared/spread-wire/README.md section 5.13 and the traces p1..p8
behind them). It does no I/O and knows no reactor: it is told which daemons reach which
(:meth:`~DaemonNetwork.set_sides`), which die (:meth:`~DaemonNetwork.kill`) or start
again (:meth:`~DaemonNetwork.restart`), and when the daemons notice
(:meth:`~DaemonNetwork.detect`, :meth:`~DaemonNetwork.merge`); whoever drives it (the
test fake, :mod:`spreadqueue.testing`) decides when that is.

What it reproduces:

- **One ring, one order.** The daemons of a ring share their groups and routing
  (:class:`~spreadqueue._spread.core.Ring`) and one
  :class:`~spreadqueue._spread.core.Sequencer` orders every daemon of the network, so all
  members see one total order of messages and membership changes. Every daemon has a
  message at once, so SAFE is delivered as AGREED is (section 14: 0.4 ms across daemons).
- **Member order** (section 8.2): by daemon in configuration order (the order the cores
  are given), then by name; the ring's id, words 0 and 1 of the ids of groups that
  change in it (section 8.3), is the id of its first daemon in configuration order and
  the ring's time stamp: whole seconds of ``now()``, made to grow by at least one at
  each change so that every ring has an id of its own. The pieces of one partition share
  their time stamp, as in p3 and p6.
- **A loss** (partition, killed daemon; sections 8.4, 8.5, 12, 14; p3, p5, p6): in every
  group that loses members, the members left on each side get TRANSITION_MESS with the
  group's previous id, then REG_MEMB_MESS | CAUSED_BY_NETWORK with one vs-set, the
  members kept, and the group's new id (the side's ring id, counter 1). As in the
  daemon's groups code, every transitional notice of the change comes first (groups in
  name order), then every regular one. A group with no member on the lost daemons gets
  nothing and keeps its id (p3 ``grpP3solo``). Operations that the ring's daemons are
  asked for between the cut and its detection wait and are performed after the new
  membership, on their own side only (p7: what is sent after the cut comes after the
  new membership). Messages under way at the cut are not modelled: everything sent
  before it is delivered before the TRANSITION_MESS, on every side (p7 shows the other
  case, messages delivered between the two notices; in many runs nothing was in flight).
- **A merge** (sections 8.4, 8.5; p4, p6): the groups with members on more than one of
  the merging rings get REG_MEMB_MESS | CAUSED_BY_NETWORK alone, no transitional notice,
  with one vs-set per previous ring, ordered as the daemon orders them: by the group's
  previous id, word 0 then word 1 compared as signed 32-bit ints, then by configuration
  order. The other groups get nothing and keep their ids (p4 ``grpP4solo``).
- **A killed daemon** (sections 12, 14; p5): its sessions end at once, announced to no
  one; to the others it is a loss like a partition (never CAUSED_BY_DISCONNECT).
- **A restarted daemon** comes back empty, alone, and merges like any ring; with no
  members yet, it changes no group and gives no notice.

Messages sent while partitioned stay on their side for ever (p3, p4): each ring routes
only to its own sessions, and nothing is replayed at a merge. A join or leave is seen
on its own side only.

Not modelled: a change that loses and gains daemons at once (Spread's state exchange
after a transitional configuration, and its join-in-transition vs-set, section 8.4
[src]); here a loss is settled first and a merge after it, which is what the timings
of section 14 make the rule (3 s to notice a loss, up to 31 s to merge).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .core import DaemonCore, Group, Ring, Sequencer, Session

__all__ = ["DaemonNetwork"]


def _signed(word: int) -> int:
    """A 32-bit word as the daemon's signed int32 (section 8.4)."""
    return word - 0x1_0000_0000 if word & 0x8000_0000 else word


def _daemon_of(private_group: str) -> str:
    """The daemon part of ``#name#daemon``."""
    return private_group[private_group.rindex("#") + 1 :]


class DaemonNetwork:
    """The daemons ``cores`` (in the order of their configuration file) as one network.

    They start as one ring, with ring time ``time`` (default: the first core's). Ring time
    stamps come from ``now()`` (seconds). Each core must be fresh (no session yet) and
    is given to the network for good: it orders its operations with the network's and
    routes through its ring's tables.
    """

    def __init__(
        self,
        cores: Sequence[DaemonCore],
        *,
        now: Callable[[], float] = lambda: 0.0,
        time: int | None = None,
    ) -> None:
        if not cores:
            raise ValueError("a network needs at least one daemon")
        names = [core.name for core in cores]
        if len(set(names)) != len(names):
            raise ValueError(f"daemon names must differ: {names}")
        for core in cores:
            self._check_fresh(core)
        #: the daemons' names in configuration order
        self.daemons: tuple[str, ...] = tuple(names)
        self._rank = {name: i for i, name in enumerate(names)}
        self._cores = {core.name: core for core in cores}
        self._alive = dict.fromkeys(names, True)
        #: daemon -> the side of the network it is on (daemons on one side reach each other)
        self._side = dict.fromkeys(names, 0)
        self._now = now
        self._time = (cores[0].time if time is None else time) & 0xFFFFFFFF
        self._sequencer = Sequencer()
        #: rings whose daemons stopped reaching each other -> the operations they hold
        self._held: dict[Ring, list[tuple[Callable[..., None], tuple[Any, ...]]]] = {}
        for core in cores:
            core.order_with(self._sequencer.run)
        self._rings: list[Ring] = [self._new_ring(list(cores), self._time)]

    # ----------------------------------------------------------------- queries

    def core(self, name: str) -> DaemonCore:
        """The current core of daemon ``name`` (a restart makes a new one)."""
        self._check_name(name)
        return self._cores[name]

    def is_alive(self, name: str) -> bool:
        """False from :meth:`kill` of daemon ``name`` to its :meth:`restart`."""
        self._check_name(name)
        return self._alive[name]

    def rings(self) -> tuple[tuple[str, ...], ...]:
        """The rings now installed, as their live daemons' names in configuration order
        (a ring that has lost daemons is listed as it was until :meth:`detect`)."""
        return tuple(tuple(c.name for c in ring.cores if self._is_live(c)) for ring in self._rings)

    def needs_detection(self) -> bool:
        """True when a ring holds daemons that no longer reach each other (or dead ones):
        :meth:`detect` then splits it."""
        return bool(self._held)

    def needs_merge(self) -> bool:
        """True when rings that reach each other wait for :meth:`merge`."""
        sides = [self._side[ring.cores[0].name] for ring in self._rings if ring not in self._held]
        return len(set(sides)) < len(sides)

    # ----------------------------------------------------------------- changes

    def set_sides(self, sides: Iterable[Iterable[str]]) -> None:
        """Which daemons reach which from now on: each of ``sides`` is a set of daemons
        that reach each other and none of the others; the daemons named in none form one
        more side together (so ``set_sides([])`` heals everything).

        Rings that now span sides stop at once (their operations wait) until
        :meth:`detect` splits them; rings that now reach each other wait for
        :meth:`merge`. Raises ValueError for an unknown daemon or one on two sides.
        """
        side_of: dict[str, int] = {}
        lists = [list(side) for side in sides]
        for i, side in enumerate(lists):
            for name in side:
                self._check_name(name)
                if name in side_of:
                    raise ValueError(f"daemon {name!r} is on two sides")
                side_of[name] = i
        rest = len(lists)
        self._side = {name: side_of.get(name, rest) for name in self.daemons}
        self._stop_broken_rings()

    def kill(self, name: str) -> tuple[Session, ...]:
        """Daemon ``name`` dies: its sessions end at once with no notice to anyone (the
        caller closes their connections); the rest of its ring waits for :meth:`detect`,
        which gives them what a partition gives. Return the sessions it had."""
        if not self.is_alive(name):
            raise ValueError(f"daemon {name!r} is not running")
        core = self._cores[name]
        self._alive[name] = False
        sessions = core.halt()
        ring = core.ring
        if any(self._is_live(c) for c in ring.cores):
            self._stop_broken_rings()
        else:
            # No one left to notice: the ring and its groups are gone.
            self._rings.remove(ring)
            self._held.pop(ring, None)
        return sessions

    def restart(self, core: DaemonCore) -> None:
        """Daemon ``core.name`` runs again as ``core`` (fresh, no session): alone at
        first, it joins the rest of its side at the next :meth:`merge`."""
        name = core.name
        if self.is_alive(name):
            raise ValueError(f"daemon {name!r} is running")
        self._check_fresh(core)
        self._cores[name] = core
        self._alive[name] = True
        core.order_with(self._sequencer.run)
        self._rings.append(self._new_ring([core], self._next_time()))
        self._rings.sort(key=self._ring_rank)

    def detect(self) -> None:
        """The daemons notice what they lost: split every stopped ring into its live
        pieces, one per side, with the notices of a loss (see the module doc); then
        perform the operations held meanwhile."""
        self._sequencer.run(self._detect)

    def merge(self) -> None:
        """The daemons' periodic probe: rings on the same side merge, with the notices
        of a merge (see the module doc). Stopped rings wait for :meth:`detect`."""
        self._sequencer.run(self._merge)

    # ----------------------------------------------------------------- internals

    def _check_name(self, name: str) -> None:
        if name not in self._rank:
            raise ValueError(f"no daemon {name!r}; the daemons are {', '.join(self.daemons)}")

    @staticmethod
    def _check_fresh(core: DaemonCore) -> None:
        if core.session_count or core.admissions or core.group_count:
            raise ValueError(f"daemon {core.name!r} already has sessions")

    def _is_live(self, core: DaemonCore) -> bool:
        return self._alive[core.name] and self._cores[core.name] is core

    def _ring_rank(self, ring: Ring) -> int:
        return self._rank[ring.cores[0].name]

    def _member_key(self, private_group: str) -> tuple[int, str]:
        # Section 8.2: by daemon in configuration order, then by name; within one
        # daemon the private group names sort as the names do ('#' is below every
        # legal name byte).
        return self._rank.get(_daemon_of(private_group), len(self._rank)), private_group

    def _next_time(self) -> int:
        self._time = max(self._time + 1, int(self._now())) & 0xFFFFFFFF
        return self._time

    def _new_ring(self, cores: list[DaemonCore], time: int) -> Ring:
        """A ring of ``cores`` (in configuration order): the first is its representative
        (section 8.3, [obs: p1..p8])."""
        ring = Ring((cores[0].daemon_id, time), self._member_key)
        for core in cores:
            core.enter(ring)
        return ring

    def _stop_broken_rings(self) -> None:
        for ring in self._rings:
            if ring in self._held:
                continue
            live = [c for c in ring.cores if self._is_live(c)]
            if len(live) < len(ring.cores) or len({self._side[c.name] for c in live}) > 1:
                held: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
                self._held[ring] = held

                def hold(op: Callable[..., None], *args: Any, held: list[Any] = held) -> None:
                    held.append((op, args))

                for core in ring.cores:
                    core.order_with(hold)

    def _detect(self) -> None:
        if not self._held:
            return
        time = self._next_time()
        rings: list[Ring] = []
        changed: list[tuple[Group, Any]] = []
        thawed: list[tuple[list[DaemonCore], list[tuple[Callable[..., None], Any]]]] = []
        for ring in self._rings:
            held = self._held.pop(ring, None)
            if held is None:
                rings.append(ring)
                continue
            thawed.append((list(ring.cores), held))
            live = [c for c in ring.cores if self._is_live(c)]
            pieces: dict[int, list[DaemonCore]] = {}
            for core in live:
                pieces.setdefault(self._side[core.name], []).append(core)
            if len(pieces) == 1 and len(live) == len(ring.cores):
                rings.append(ring)  # healed before anyone noticed: nothing changes
                continue
            news = [self._new_ring(piece, time) for piece in pieces.values()]
            rings.extend(news)
            changed.extend(self._split_groups(ring, news))
        self._rings = sorted(rings, key=self._ring_rank)
        # Section 8.5: every transitional notice of the change, then every regular one.
        for group, previous in changed:
            group.notify_transition(previous)
        for group, _ in changed:
            group.notify_network((tuple(group.order),))
        for cores, held in thawed:
            for core in cores:
                core.order_with(self._sequencer.run)
            for op, args in held:
                self._sequencer.run(op, *args)  # queued: runs right after this change

    def _split_groups(self, ring: Ring, news: list[Ring]) -> list[tuple[Group, Any]]:
        """Share ``ring``'s groups among the rings ``news`` it splits into; return each
        changed group's new part with the group's previous id."""
        ring_of = {core.name: new for new in news for core in new.cores}
        changed = []
        for name in sorted(ring.groups):
            group = ring.groups[name]
            parts: dict[Ring, list[Session]] = {}
            lost = False
            for member in group.order:
                new = ring_of.get(_daemon_of(member))
                if new is None:
                    lost = True  # on a daemon that died
                else:
                    parts.setdefault(new, []).append(group.members[member])
            if not lost and len(parts) == 1:
                (new,) = parts
                new.add_group(group)  # untouched: no notice, the same id (p3 grpP3solo)
                continue
            previous = group.group_id()
            for new, sessions in parts.items():
                changed.append((self._regroup(new, name, sessions), previous))
        return changed

    def _merge(self) -> None:
        by_side: dict[int, list[Ring]] = {}
        for ring in self._rings:
            if ring not in self._held:
                by_side.setdefault(self._side[ring.cores[0].name], []).append(ring)
        merging = [rings for rings in by_side.values() if len(rings) > 1]
        if not merging:
            return
        time = self._next_time()
        changed: list[tuple[Group, tuple[tuple[str, ...], ...]]] = []
        for rings in merging:
            cores = sorted((c for r in rings for c in r.cores), key=lambda c: self._rank[c.name])
            new = self._new_ring(cores, time)
            for name in sorted({name for r in rings for name in r.groups}):
                parts = [r.groups[name] for r in rings if name in r.groups]
                if len(parts) == 1:
                    new.add_group(parts[0])  # on one side only: no notice (p4 grpP4solo)
                    continue
                parts.sort(key=self._vs_set_rank)
                vs_sets = tuple(tuple(part.order) for part in parts)
                sessions = [part.members[m] for part in parts for m in part.order]
                changed.append((self._regroup(new, name, sessions), vs_sets))
            self._rings = [r for r in self._rings if r not in rings]
            self._rings.append(new)
        self._rings.sort(key=self._ring_rank)
        for group, vs_sets in changed:
            group.notify_network(vs_sets)

    def _vs_set_rank(self, group: Group) -> tuple[int, int, int]:
        # The daemon's groups code orders vs-sets by the membership id each came with
        # (the group's id words 0 and 1, compared as signed ints), then by the daemons'
        # configuration order (section 8.4, [obs: p4, p6]).
        return (
            _signed(group.ring_id[0]),
            _signed(group.ring_id[1]),
            self._member_key(group.order[0])[0],
        )

    @staticmethod
    def _regroup(ring: Ring, name: str, sessions: list[Session]) -> Group:
        """Group ``name`` anew in ``ring`` with ``sessions``: the ring's id, counter 1
        (section 8.3: a network change gives a group a fresh id)."""
        group = ring.new_group(name)
        for session in sessions:
            group.add(session)
            session.groups[name] = group
        group.counter = 1
        return group
