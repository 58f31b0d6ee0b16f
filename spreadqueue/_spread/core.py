"""The state of one embedded Spread daemon, without I/O: sessions, groups, routing.

:class:`DaemonCore` holds what a single Spread 5.0.1 daemon knows about its clients
(see docs/spread-protocol.md; section numbers below refer to it): sessions by
private name, groups and their ordered members, group ids, membership notices and the
routing of multicasts. It never touches a socket or a reactor. Each session delivers
through a sink (:class:`ISessionSink`): the TCP protocol of :mod:`.daemon` writes wire
bytes, an in-process session takes the decoded frame.

Every delivered message is an :class:`Envelope` shared by all its receivers: its wire
bytes are encoded once, on first use, and its decoded frame is built once, on first use.

One daemon gives every service type the same total order: messages and membership
changes are delivered in the order the core is asked to perform them. Calls made while
the core is delivering (a sink that answers from inside ``deliver``, or drops its
session) are queued and run right after the current operation, so every receiver sees
the same order (:class:`Sequencer`).

A daemon alone is a ring of its own. Several cores can form one :class:`Ring` (the
daemon membership of section 14): they then share its groups and routing, so a member on
any of them gets what a real ring delivers, and one :class:`Sequencer` orders them all.
:mod:`.ring` changes rings (partitions, merges, a killed daemon); the notices those
changes give are built here, with the others (:meth:`Group.notify_transition`,
:meth:`Group.notify_network`).
"""

from __future__ import annotations

import bisect
import heapq
import random
import time as _time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from .errors import IllegalName, NameNotUnique, QuotaExceeded
from .interfaces import ISessionSink
from .wire import (
    CAUSED_BY_DISCONNECT,
    CAUSED_BY_JOIN,
    CAUSED_BY_LEAVE,
    CAUSED_BY_NETWORK,
    GROUP_FIELD,
    MAX_DAEMON_NAME,
    MAX_GROUP_NAME,
    MAX_PRIVATE_NAME,
    REG_MEMB_MESS,
    REGULAR_MESS,
    SELF_DISCARD,
    TRANSITION_MESS,
    GroupId,
    MembershipMessage,
    RegularMessage,
    Relay,
    ToClient,
    decode_relay,
    encode_hint,
    encode_membership,
    encode_relay,
    encode_self_leave,
    hint_mess_type,
    is_legal_name,
    pad_name,
)
from .wire.constants import U32_LE
from .wire.encode import encode_transition

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "Admission",
    "DaemonCore",
    "Envelope",
    "Group",
    "MembershipEnvelope",
    "RelayEnvelope",
    "Ring",
    "SelfLeaveEnvelope",
    "Sequencer",
    "Session",
    "TransitionEnvelope",
    "WireEnvelope",
    "daemon_id",
]

#: (2000 - 5) / 2 sessions, like the real daemon (section 11).
DEFAULT_MAX_SESSIONS: Final = 997
#: Invented names are ``r<0..9998>-<slot>`` (section 4).
_RANDOM_NAME_RANGE: Final = 9999
#: What a relayed data message keeps of its sender's type bits. Spread relays the bits
#: untouched, but a membership or reject bit would make receivers (ours included) decode
#: a forged notice, so only the service level and SELF_DISCARD go through.
_RELAY_BITS: Final = REGULAR_MESS | SELF_DISCARD


def daemon_id(name: str) -> int:
    """The daemon id the real daemon derives from its name (section 8.3).

    Spread hashes the configured name, terminating NUL included, with Bob Jenkins'
    one-at-a-time hash seeded with the length (``localhost`` -> 482711334, ``d1`` ->
    1552775919); 0 and 0xffffffff are reserved and replaced by ``length << 16``.
    """
    raw = name.encode("latin-1") + b"\0"
    h = len(raw)
    for b in raw:
        # C's plain char is signed on x86: bytes >= 0x80 count as negative.
        h = (h + (b - 256 if b > 127 else b)) & 0xFFFFFFFF
        h = (h + (h << 10)) & 0xFFFFFFFF
        h ^= h >> 6
    h = (h + (h << 3)) & 0xFFFFFFFF
    h ^= h >> 11
    h = (h + (h << 15)) & 0xFFFFFFFF
    if h in (0, 0xFFFFFFFF):
        h = (len(raw) << 16) or 0x10000
    return h


# --------------------------------------------------------------------------- names


def _groups_blob(groups: Sequence[str]) -> bytes:
    # A destination read from a full 32-byte field is 32 characters: cut it as the
    # daemon does (docs/spread-protocol.md, section 6).
    if len(groups) == 1:
        return pad_name(groups[0], cut=True)
    return b"".join([pad_name(g, cut=True) for g in groups])


# --------------------------------------------------------------------------- envelopes


class Envelope:
    """One message on its way to its receivers; shared by all of them.

    :attr:`wire` is the message as the daemon writes it to a client, encoded on first
    use and then reused for every receiver. :attr:`frame` is the same message as
    :class:`~spreadqueue._spread.wire.ClientDecoder` would decode it, for in-process
    sessions that need no bytes.
    """

    __slots__ = ("_frame", "_wire")

    def __init__(self) -> None:
        self._wire: bytes | None = None
        self._frame: ToClient | None = None

    @property
    def wire(self) -> bytes:
        """The encoded message (header, groups, data), built once."""
        wire = self._wire
        if wire is None:
            wire = self._wire = self._encode()
        return wire

    @property
    def frame(self) -> ToClient:
        """The decoded message, built once."""
        frame = self._frame
        if frame is None:
            frame = self._frame = self._decode()
        return frame

    def _encode(self) -> bytes:
        raise NotImplementedError

    def _decode(self) -> ToClient:
        raise NotImplementedError


class RelayEnvelope(Envelope):
    """A data message relayed from ``sender`` (section 8.1)."""

    __slots__ = ("data", "groups", "hint", "raw_sender", "sender", "service_type")

    def __init__(
        self,
        service_type: int,
        sender: str,
        groups: Sequence[str],
        hint: bytes,
        data: bytes,
        raw_sender: bytes | None = None,
    ) -> None:
        self._wire = None
        self._frame = None
        self.service_type = service_type
        self.sender = sender
        self.groups = groups
        self.hint = hint
        self.data = data
        self.raw_sender = sender.encode("latin-1") if raw_sender is None else raw_sender

    def _encode(self) -> bytes:
        # The hint keeps the sender's byte order and marker (section 3).
        return encode_relay(
            self.service_type,
            self.raw_sender,
            _groups_blob(self.groups),
            len(self.groups),
            self.hint,
            self.data,
        )

    def _decode(self) -> ToClient:
        mess_type, little = hint_mess_type(self.hint, 0)
        groups = self.groups if isinstance(self.groups, tuple) else tuple(self.groups)
        if any(len(g) > MAX_GROUP_NAME for g in groups):
            groups = tuple(g[:MAX_GROUP_NAME] for g in groups)
        return RegularMessage(
            self.service_type, self.sender, groups, mess_type, self.data, not little
        )


class WireEnvelope(Envelope):
    """A data message forwarded as the sender wrote it (see
    :class:`~spreadqueue._spread.wire.Relay`): its wire bytes are given, its frame is
    decoded from them on first use."""

    __slots__ = ()

    def __init__(self, wire: bytes) -> None:
        self._wire = wire
        self._frame = None

    def _decode(self) -> ToClient:
        assert self._wire is not None
        return decode_relay(self._wire)


class MembershipEnvelope(Envelope):
    """A regular membership notice, REG_MEMB_MESS | ``cause`` (sections 8.2, 8.4).

    For a join, leave or disconnect the one vs-set holds only ``changed``. A network
    change (CAUSED_BY_NETWORK, ``changed`` None) gives its ``vs_sets``, and
    ``local_vs_set`` indexes the receiver's own set: the members of one set share one
    envelope, each set has its own.
    """

    __slots__ = ("cause", "changed", "group", "group_id", "local_vs_set", "members", "vs_sets")

    def __init__(
        self,
        cause: int,
        group: str,
        members: tuple[str, ...],
        group_id: GroupId,
        changed: str | None,
        vs_sets: tuple[tuple[str, ...], ...] | None = None,
        local_vs_set: int = 0,
    ) -> None:
        self._wire = None
        self._frame = None
        self.cause = cause
        self.group = group
        self.members = members
        self.group_id = group_id
        self.changed = changed
        if vs_sets is None:
            assert changed is not None
            vs_sets = ((changed,),)
        self.vs_sets = vs_sets
        self.local_vs_set = local_vs_set

    def _encode(self) -> bytes:
        return encode_membership(
            REG_MEMB_MESS | self.cause,
            self.group,
            self.members,
            self.group_id,
            self.vs_sets,
            self.local_vs_set,
        )

    def _decode(self) -> ToClient:
        return MembershipMessage(
            REG_MEMB_MESS | self.cause,
            self.group,
            self.cause,
            self.group_id,
            self.members,
            self.vs_sets,
            self.local_vs_set,
            self.changed,
        )


class TransitionEnvelope(Envelope):
    """A transitional notice (section 8.5): TRANSITION_MESS, no members, the group's
    previous id as its body."""

    __slots__ = ("group", "group_id")

    def __init__(self, group: str, group_id: GroupId) -> None:
        self._wire = None
        self._frame = None
        self.group = group
        self.group_id = group_id

    def _encode(self) -> bytes:
        return encode_transition(self.group, self.group_id)

    def _decode(self) -> ToClient:
        return MembershipMessage(TRANSITION_MESS, self.group, 0, self.group_id, is_transition=True)


class SelfLeaveEnvelope(Envelope):
    """The notice to a member that left ``group``: CAUSED_BY_LEAVE alone, no body."""

    __slots__ = ("group",)

    def __init__(self, group: str) -> None:
        self._wire = None
        self._frame = None
        self.group = group

    def _encode(self) -> bytes:
        return encode_self_leave(self.group)

    def _decode(self) -> ToClient:
        return MembershipMessage(
            CAUSED_BY_LEAVE, self.group, CAUSED_BY_LEAVE, None, is_self_leave=True
        )


# --------------------------------------------------------------------------- sinks


# --------------------------------------------------------------------------- state


class Session:
    """One client session of the daemon."""

    __slots__ = (
        "field",
        "groups",
        "is_open",
        "membership",
        "name",
        "private_group",
        "raw_private_group",
        "sink",
        "slot",
    )

    def __init__(
        self, name: str, private_group: str, membership: bool, sink: ISessionSink, slot: int
    ) -> None:
        #: the private name, e.g. ``alice``
        self.name = name
        #: ``#alice#localhost``
        self.private_group = private_group
        self.raw_private_group = private_group.encode("latin-1")
        #: the private group as a 32-byte wire field (the routing key of unicasts)
        self.field = pad_name(private_group)
        #: True when the session gets membership notices
        self.membership = membership
        self.sink = sink
        #: the number standing for the real daemon's socket number (invented names)
        self.slot = slot
        #: the groups this session is a member of, in join order
        self.groups: dict[str, Group] = {}
        self.is_open = True

    def __repr__(self) -> str:
        return f"<Session {self.private_group}>"


class Group:
    """A group and its members, in the order notices list them (section 8.2).

    ``ring_id`` is words 0 and 1 of the group's id: the id of the ring that last set it
    (section 8.3). ``member_key`` orders the members: None for one daemon (by private
    group name); a ring of several daemons orders them by daemon, in configuration
    order, then by name.
    """

    __slots__ = ("counter", "field", "member_key", "members", "name", "order", "ring_id")

    def __init__(
        self,
        name: str,
        ring_id: tuple[int, int] = (0, 0),
        member_key: Callable[[str], Any] | None = None,
    ) -> None:
        self.name = name
        #: the name as a 32-byte wire field (the routing key of multicasts)
        self.field = pad_name(name)
        #: private group name -> session, in join order
        self.members: dict[str, Session] = {}
        #: the members' private group names in notice order
        self.order: list[str] = []
        #: word [2] of the group id: 1 when created, +1 per join, leave or disconnect
        self.counter = 0
        self.ring_id = ring_id
        self.member_key = member_key

    def add(self, session: Session) -> None:
        self.members[session.private_group] = session
        if self.member_key is None:
            bisect.insort(self.order, session.private_group)
        else:
            bisect.insort(self.order, session.private_group, key=self.member_key)
        self.counter += 1

    def remove(self, session: Session) -> None:
        del self.members[session.private_group]
        key = self.member_key
        if key is None:
            del self.order[bisect.bisect_left(self.order, session.private_group)]
        else:
            del self.order[bisect.bisect_left(self.order, key(session.private_group), key=key)]
        self.counter += 1

    def group_id(self) -> GroupId:
        """The group's id now (section 8.3)."""
        return GroupId(self.ring_id[0], self.ring_id[1], self.counter)

    def _tell(self, envelope: Envelope, members: Iterable[str] | None = None) -> None:
        # To the members (all of them, or those named) that get membership notices.
        sessions = self.members
        for member in sessions.values() if members is None else map(sessions.__getitem__, members):
            if member.membership:
                member.sink.deliver(envelope)

    def notify(self, cause: int, changed: str) -> None:
        """REG_MEMB_MESS | ``cause`` for the join, leave or disconnect of ``changed``
        (sections 8.2, 8.4: one vs-set, holding only ``changed``)."""
        self._tell(
            MembershipEnvelope(cause, self.name, tuple(self.order), self.group_id(), changed)
        )

    def notify_transition(self, previous: GroupId) -> None:
        """TRANSITION_MESS with the id of the view being left (section 8.5)."""
        self._tell(TransitionEnvelope(self.name, previous))

    def notify_network(self, vs_sets: tuple[tuple[str, ...], ...]) -> None:
        """REG_MEMB_MESS | CAUSED_BY_NETWORK with ``vs_sets`` (section 8.4): every member
        is in one set, and its notice's offset points at that set."""
        members = tuple(self.order)
        group_id = self.group_id()
        for index, vs_set in enumerate(vs_sets):
            envelope = MembershipEnvelope(
                CAUSED_BY_NETWORK, self.name, members, group_id, None, vs_sets, index
            )
            self._tell(envelope, vs_set)


class Ring:
    """The daemons that reach each other now, a daemon membership (section 14), and what
    they share: the groups, the routing of names to groups and sessions, and the ring's id
    (section 8.3: the representative daemon's id and the ring's time stamp), which groups
    created in it take. A daemon alone is a ring of its own.

    ``member_key`` orders the members of its groups (see :class:`Group`).
    """

    __slots__ = ("by_group", "cores", "groups", "id", "member_key", "targets")

    def __init__(
        self, ring_id: tuple[int, int], member_key: Callable[[str], Any] | None = None
    ) -> None:
        self.id = ring_id
        self.member_key = member_key
        #: the daemons of the ring
        self.cores: list[DaemonCore] = []
        #: group name -> the group, for groups with members
        self.groups: dict[str, Group] = {}
        #: private group name -> the open session (routing of unicasts)
        self.by_group: dict[str, Session] = {}
        #: wire field (a name NUL-padded to 32 bytes) -> its group or private group's
        #: session: routes a Relay without decoding a name
        self.targets: dict[bytes, Group | Session] = {}

    def new_group(self, name: str) -> Group:
        """A new, empty group called ``name`` with this ring's id, routed by the ring."""
        group = Group(name, self.id, self.member_key)
        self.add_group(group)
        return group

    def add_group(self, group: Group) -> None:
        """Route ``group`` (with its members) in this ring."""
        self.groups[group.name] = group
        self.targets[group.field] = group

    def add_session(self, session: Session) -> None:
        """Route ``session``'s private group in this ring."""
        self.by_group[session.private_group] = session
        self.targets[session.field] = session

    def remove_session(self, session: Session) -> None:
        """Stop routing to ``session``."""
        self.by_group.pop(session.private_group, None)
        if self.targets.get(session.field) is session:
            del self.targets[session.field]


class Sequencer:
    """One total order for the operations of the daemons that share it.

    :meth:`run` performs an operation at once, unless one is under way (a sink that
    answers from inside ``deliver``, or drops its session): then it is queued and run
    right after the current one, so every receiver sees the same order.
    """

    __slots__ = ("busy", "queued")

    def __init__(self) -> None:
        self.busy = False
        self.queued: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()

    def run(self, op: Callable[..., None], *args: Any) -> None:
        """Perform ``op(*args)`` now, or after the operation under way."""
        if self.busy:
            self.queued.append((op, args))
            return
        self.busy = True
        try:
            op(*args)
            queued = self.queued
            while queued:
                op, args = queued.popleft()
                op(*args)
        finally:
            self.busy = False


class Admission:
    """A session being admitted: holds a quota slot, then a name, until it opens."""

    __slots__ = ("name", "settled", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.name: str | None = None
        self.settled = False


class DaemonCore(Sequencer):
    """Sessions, groups and routing of one Spread daemon named ``name``.

    ``time`` is word [1] of every group id (the real daemon's membership time stamp,
    epoch seconds); ``max_sessions`` bounds sessions plus admissions in progress;
    ``randrange(n)`` returns a number in ``0..n-1`` for invented names.

    The daemon starts as a ring of its own (:attr:`ring`, id ``(daemon id, time)``)
    with its own :class:`Sequencer`; :mod:`.ring` puts it in rings with other daemons
    (:meth:`enter`, :meth:`order_with`). Queries about groups answer for the whole ring;
    queries about sessions, for this daemon's own.
    """

    #: performs (or queues) each operation: the core's own :meth:`Sequencer.run`, or
    #: what :meth:`order_with` gave (an instance attribute then shadows this; a class
    #: attribute keeps the relay path's call as cheap as a plain method's)
    _run: Callable[..., None] = Sequencer.run

    def __init__(
        self,
        name: str = "localhost",
        *,
        time: int | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        randrange: Callable[[int], int] | None = None,
    ) -> None:
        if not name or len(name.encode("latin-1")) > MAX_DAEMON_NAME or "#" in name:
            raise ValueError(f"daemon name {name!r} must be 1..{MAX_DAEMON_NAME} bytes, no '#'")
        if max_sessions < 0:
            raise ValueError("max_sessions cannot be negative")
        self.name = name
        self.daemon_id = daemon_id(name)
        self.time = (int(_time.time()) if time is None else time) & 0xFFFFFFFF
        self.max_sessions = max_sessions
        self._randrange = randrange or random.randrange
        self._suffix = "#" + name
        #: private name -> Session, or the Admission that claimed it
        self._names: dict[str, Session | Admission] = {}
        #: private group name -> Session, this daemon's own sessions
        self._sessions: dict[str, Session] = {}
        self._admissions = 0
        self._slots_free: list[int] = []
        self._next_slot = 1
        # Its own Sequencer until order_with() gives it a network's.
        Sequencer.__init__(self)
        self.ring = Ring((self.daemon_id, self.time))
        self._bind(self.ring)
        self.ring.cores.append(self)

    # ----------------------------------------------------------------- rings

    def _bind(self, ring: Ring) -> None:
        # The ring's tables, held here too: the relay path reads them at every message.
        #: private group name -> Session, every daemon of the ring (routing of unicasts)
        self._by_group = ring.by_group
        self._groups = ring.groups
        self._targets = ring.targets

    def enter(self, ring: Ring) -> None:
        """Become one of the daemons of ``ring``: route by its tables, in which this
        daemon's sessions are added. Groups are the ring's business (:mod:`.ring`)."""
        self.ring = ring
        ring.cores.append(self)
        self._bind(ring)
        for session in self._sessions.values():
            ring.add_session(session)

    def order_with(self, run: Callable[..., None]) -> None:
        """Perform every operation through ``run`` from now on: the
        :meth:`Sequencer.run` that the daemons of a network share, or a function that
        holds operations while the ring is being changed."""
        self._run = run  # type: ignore[method-assign]

    def halt(self) -> tuple[Session, ...]:
        """The daemon dies: every session ends at once and unannounced, its clients see
        their connections close (sections 12, 14). Return those sessions.

        Their memberships stay in the ring's groups: the other daemons have not noticed
        yet, and the ring change that follows takes them out (:mod:`.ring`).
        """
        sessions = tuple(self._sessions.values())
        for session in sessions:
            session.is_open = False
            self.ring.remove_session(session)
        self._sessions.clear()
        self._names.clear()
        return sessions

    # ----------------------------------------------------------------- queries

    @property
    def session_count(self) -> int:
        """Open sessions."""
        return len(self._sessions)

    @property
    def admissions(self) -> int:
        """Admissions in progress (sessions in their handshake)."""
        return self._admissions

    @property
    def group_count(self) -> int:
        """Groups with at least one member."""
        return len(self._groups)

    def session(self, private_group: str) -> Session | None:
        """The open session whose private group is ``private_group``."""
        return self._sessions.get(private_group)

    def sessions(self) -> tuple[Session, ...]:
        """Every open session."""
        return tuple(self._sessions.values())

    def groups(self) -> tuple[str, ...]:
        """The names of the groups that have members, sorted."""
        return tuple(sorted(self._groups))

    def members(self, group: str) -> tuple[str, ...]:
        """The private group names of ``group``'s members, in notice order."""
        g = self._groups.get(group)
        return tuple(g.order) if g is not None else ()

    def group_id(self, group: str) -> GroupId | None:
        """``group``'s current id, or None when it has no members."""
        g = self._groups.get(group)
        return None if g is None else g.group_id()

    def snapshot(self) -> tuple[frozenset[str], dict[str, tuple[str, ...]], int]:
        """(private groups, group -> members, admissions): compare to check for leaks."""
        return (
            frozenset(self._sessions),
            {name: tuple(g.order) for name, g in self._groups.items()},
            self._admissions,
        )

    def private_group_of(self, name: str) -> str:
        """``#name#daemon``."""
        return "#" + name + self._suffix

    # ----------------------------------------------------------------- admission

    def admit(self) -> Admission:
        """Take a quota slot for a new session; raise QuotaExceeded when full.

        The real daemon refuses at accept time, before reading anything (section 4).
        Admissions in progress count: a client that never finishes its handshake still
        holds its slot until it is abandoned.
        """
        if len(self._sessions) + self._admissions >= self.max_sessions:
            raise QuotaExceeded()
        self._admissions += 1
        if self._slots_free:
            # The lowest free number, as the kernel hands out the lowest free fd.
            slot = heapq.heappop(self._slots_free)
        else:
            slot = self._next_slot
            self._next_slot += 1
        return Admission(slot)

    def claim(self, admission: Admission, name: str | bytes = "") -> str:
        """Reserve the private ``name`` for ``admission``; return it.

        An empty name makes the daemon invent one, ``r<random>-<slot>``. Raises
        IllegalName or NameNotUnique (the real daemon's checks, section 4).
        """
        if admission.settled or admission.name is not None:
            raise ValueError("admission already has a name or is settled")
        text = name if isinstance(name, str) else name.decode("latin-1")
        if not text:
            text = self._invent_name(admission.slot)
        else:
            raw = text.encode("latin-1")
            if len(raw) > MAX_PRIVATE_NAME or not is_legal_name(raw):
                raise IllegalName()
            if text in self._names:
                raise NameNotUnique()
        self._names[text] = admission
        admission.name = text
        return text

    def _invent_name(self, slot: int) -> str:
        while True:
            text = f"r{self._randrange(_RANDOM_NAME_RANGE)}-{slot}"[:MAX_PRIVATE_NAME]
            if text not in self._names:
                return text

    def open(self, admission: Admission, sink: ISessionSink, *, membership: bool = True) -> Session:
        """Turn a named ``admission`` into an open session delivering to ``sink``."""
        if admission.settled or admission.name is None:
            raise ValueError("admission is settled or has no name")
        admission.settled = True
        self._admissions -= 1
        session = Session(
            admission.name, self.private_group_of(admission.name), membership, sink, admission.slot
        )
        self._names[session.name] = session
        self._sessions[session.private_group] = session
        self.ring.add_session(session)
        return session

    def abandon(self, admission: Admission) -> None:
        """Give up ``admission`` (handshake failed): free its slot and name. Idempotent."""
        if admission.settled:
            return
        admission.settled = True
        self._admissions -= 1
        if admission.name is not None and self._names.get(admission.name) is admission:
            del self._names[admission.name]
        heapq.heappush(self._slots_free, admission.slot)

    def connect(
        self, sink: ISessionSink, name: str | bytes = "", *, membership: bool = True
    ) -> Session:
        """Admit, name and open a session at once (in-process sessions).

        Raises QuotaExceeded, IllegalName or NameNotUnique.
        """
        admission = self.admit()
        try:
            self.claim(admission, name)
        except BaseException:
            self.abandon(admission)
            raise
        return self.open(admission, sink, membership=membership)

    # ----------------------------------------------------------------- operations

    def join(self, session: Session, group: str) -> None:
        """``session`` joins ``group``; members get REG_MEMB_MESS | CAUSED_BY_JOIN.

        Joining a group one is in does nothing (section 8). So does a name that
        cannot be a group: empty, longer than 31 bytes, or private (``#...``).
        """
        self._run(self._join, session, group)

    def leave(self, session: Session, group: str) -> None:
        """``session`` leaves ``group``: a self-leave notice to it, CAUSED_BY_LEAVE to
        the others. Leaving a group one is not in does nothing."""
        self._run(self._leave, session, group)

    def disconnect(self, session: Session) -> None:
        """Close ``session``: the members of its groups get CAUSED_BY_DISCONNECT.

        Idempotent.
        """
        self._run(self._disconnect, session)

    def multicast(
        self,
        session: Session,
        service_type: int,
        groups: Sequence[str],
        data: bytes,
        mess_type: int = 0,
        *,
        hint: bytes | None = None,
    ) -> None:
        """Deliver ``data`` from ``session`` to ``groups``, one copy per receiver.

        ``groups`` may name public groups and private groups (``#name#daemon``); unknown
        ones are dropped silently, as are groups without members. The sender need not
        be a member. With SELF_DISCARD in ``service_type`` the sender gets no copy.
        ``hint`` is the sender's raw 4-byte hint (it carries ``mess_type`` and the
        sender's byte order); without it one is made from ``mess_type``.
        """
        if hint is None:
            hint = U32_LE.pack(encode_hint(mess_type))
        self._run(self._multicast, session, service_type, groups, hint, data)

    def relay(self, session: Session, frame: Relay) -> None:
        """Deliver a :class:`~spreadqueue._spread.wire.Relay` from ``session``: as
        :meth:`multicast` does, but routed by its raw destination fields and sent to
        the receivers as the very bytes that came in."""
        self._run(self._relay, session, frame)

    def _relay(self, session: Session, frame: Relay) -> None:
        if not session.is_open:
            return
        service_type, blob, num_groups, wire = frame
        skip = session if service_type & SELF_DISCARD else None
        if num_groups == 1:
            target = self._targets.get(blob)
            if target is None:
                return
            envelope = WireEnvelope(wire)
            if type(target) is Session:
                if target is not skip:
                    target.sink.deliver(envelope)
                return
            for receiver in target.members.values():  # type: ignore[union-attr]
                if receiver is not skip:
                    receiver.sink.deliver(envelope)
            return
        # One copy per receiver, however many destinations it is reached by.
        merged: dict[str, Session] = {}
        targets = self._targets
        for i in range(0, GROUP_FIELD * num_groups, GROUP_FIELD):
            target = targets.get(blob[i : i + GROUP_FIELD])
            if type(target) is Session:
                merged[target.private_group] = target
            elif target is not None:
                merged.update(target.members)  # type: ignore[union-attr]
        if merged:
            envelope = WireEnvelope(wire)
            for receiver in merged.values():
                if receiver is not skip:
                    receiver.sink.deliver(envelope)

    def _join(self, session: Session, name: str) -> None:
        if not session.is_open or name in session.groups:
            return
        if not name or len(name) > MAX_GROUP_NAME or name[0] == "#":
            return
        group = self._groups.get(name)
        if group is None:
            group = self.ring.new_group(name)
        group.add(session)
        session.groups[name] = group
        group.notify(CAUSED_BY_JOIN, session.private_group)

    def _leave(self, session: Session, name: str) -> None:
        group = session.groups.pop(name, None) if session.is_open else None
        if group is None:
            return
        group.remove(session)
        if session.membership:
            session.sink.deliver(SelfLeaveEnvelope(name))
        self._after_departure(group, CAUSED_BY_LEAVE, session.private_group)

    def _disconnect(self, session: Session) -> None:
        if not session.is_open:
            return
        session.is_open = False
        del self._sessions[session.private_group]
        del self._by_group[session.private_group]
        del self._targets[session.field]
        del self._names[session.name]
        heapq.heappush(self._slots_free, session.slot)
        # [inferred] one notice per group, in group-name order like the daemon's
        # sorted group table; only the order within one receiver's stream matters.
        for name in sorted(session.groups):
            group = session.groups[name]
            group.remove(session)
            self._after_departure(group, CAUSED_BY_DISCONNECT, session.private_group)
        session.groups.clear()

    def _after_departure(self, group: Group, cause: int, member: str) -> None:
        if group.members:
            group.notify(cause, member)
        else:
            del self._groups[group.name]
            del self._targets[group.field]

    def _multicast(
        self,
        session: Session,
        service_type: int,
        groups: Sequence[str],
        hint: bytes,
        data: bytes,
    ) -> None:
        if not session.is_open:
            return
        receivers: Iterable[Session]
        if len(groups) == 1:
            name = groups[0]
            if name[:1] == "#":
                target = self._by_group.get(name)
                receivers = () if target is None else (target,)
            else:
                group = self._groups.get(name)
                receivers = () if group is None else group.members.values()
        else:
            # One copy per receiver, however many destinations it is reached by.
            merged: dict[str, Session] = {}
            for name in groups:
                if name[:1] == "#":
                    target = self._by_group.get(name)
                    if target is not None:
                        merged[name] = target
                else:
                    group = self._groups.get(name)
                    if group is not None:
                        merged.update(group.members)
            receivers = merged.values()
        if not receivers:
            return
        skip = session if service_type & SELF_DISCARD else None
        envelope = RelayEnvelope(
            service_type & _RELAY_BITS,
            session.private_group,
            groups,
            hint,
            data,
            session.raw_private_group,
        )
        for receiver in receivers:
            if receiver is not skip:
                receiver.sink.deliver(envelope)
