"""The frames of the Spread client protocol: what the decoders yield and the encoders
take, in both directions.

- :data:`ToClient`: what a daemon sends a client (AuthList, Accepted,
  HandshakeRejected, RegularMessage, MembershipMessage, RejectMessage).
- :data:`ToDaemon`: what a client sends a daemon (ConnectRequest, AuthChoice,
  Multicast, Join, Leave, Kill; Relay for a multicast the daemon forwards as received).

:func:`new_frame` builds a hot-path frame from a tuple of its fields without a
Python-level call; mypy checks the fields of each call against the frame's.

Section numbers in this module refer to docs/spread-protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from .constants import LE_MARK_BYTES, REGULAR_MESS, version_number

# The frames of the hot path (messages, notices, group ids) are NamedTuples: built in a
# fraction of a frozen dataclass's time, read-only, with the same attribute names. They
# keep a dataclass's equality: equal only to a frame of the same class with equal
# fields, never to a plain tuple or another kind of frame.

_T = TypeVar("_T")


def _frame_class(cls: type[_T]) -> type[_T]:
    """Give a NamedTuple frame class dataclass-like equality (see above)."""

    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return tuple.__eq__(self, other)  # type: ignore[operator]
        return False if isinstance(other, tuple) else NotImplemented

    def __ne__(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return tuple.__ne__(self, other)  # type: ignore[operator]
        return True if isinstance(other, tuple) else NotImplemented

    cls.__eq__ = __eq__  # type: ignore[assignment,method-assign]
    cls.__ne__ = __ne__  # type: ignore[assignment,method-assign]
    cls.__hash__ = tuple.__hash__  # type: ignore[assignment,method-assign]
    return cls


@_frame_class
class GroupId(NamedTuple):
    """A group's view id: representative daemon, ring time stamp, per-group counter.

    The words are kept unsigned (0..2**32-1), as they are on the wire; libspread and the
    daemon's logs show them as signed ints (``d3``'s 4014350958 is -280616338 there).
    """

    daemon_id: int
    time: int
    counter: int


@dataclass(frozen=True, slots=True)
class AuthList:
    """Daemon -> client: the authentication methods the daemon allows."""

    methods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Accepted:
    """Daemon -> client: the session is accepted."""

    daemon_version: tuple[int, ...]
    private_group: str


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    """Daemon -> client: the session is refused with ``code`` (a negative RejectCode)."""

    code: int


@_frame_class
class RegularMessage(NamedTuple):
    """Daemon -> client: a data message.

    ``endian_mismatch`` is True when the sender wrote its hint big-endian (libspread on
    x86 reports ``endian_mismatch = 1`` then; docs/spread-protocol.md, section 3).
    """

    service_type: int
    sender: str
    groups: tuple[str, ...]
    mess_type: int
    data: bytes
    endian_mismatch: bool = False

    @property
    def service(self) -> int:
        """The service level bit alone (UNRELIABLE .. SAFE)."""
        return self.service_type & REGULAR_MESS


@_frame_class
class MembershipMessage(NamedTuple):
    """Daemon -> client: a membership notice for ``group``.

    ``cause`` is one CAUSED_BY_* bit (0 for a transitional notice). ``members`` is
    the group's current member list (empty for transitional and self-leave notices).
    ``vs_sets`` are the virtual-synchrony sets; ``local_vs_set`` indexes the
    receiver's own set. ``changed_member`` is the member that joined, left or
    disconnected (None for network changes). A transitional notice carries the group's
    previous id as ``group_id``; a self-leave notice has none.
    """

    service_type: int
    group: str
    cause: int
    group_id: GroupId | None
    members: tuple[str, ...] = ()
    vs_sets: tuple[tuple[str, ...], ...] = ()
    local_vs_set: int = 0
    changed_member: str | None = None
    is_transition: bool = False
    is_self_leave: bool = False


@_frame_class
class RejectMessage(NamedTuple):
    """Daemon -> client: one of our messages, returned as rejected (docs/spread-protocol.md,
    section 8.7)."""

    service_type: int
    old_type: int
    sender: str
    groups: tuple[str, ...]
    mess_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """Client -> daemon: the connect record.

    ``priority`` and ``membership`` are derived from ``flags`` the way the daemon does
    (the flags byte taken as a signed char; section 4).
    """

    version: tuple[int, ...]
    membership: bool
    priority: int
    name: str
    flags: int = 0

    @property
    def has_auth_phase(self) -> bool:
        """Libraries from 3.16.0 on get the auth list and send an auth choice."""
        return version_number(self.version) >= 31600

    @property
    def wants_patch_version(self) -> bool:
        """Libraries from 3.15.0 on get the daemon's patch version in the accept record."""
        return version_number(self.version) >= 31500


@dataclass(frozen=True, slots=True)
class AuthChoice:
    """Client -> daemon: the authentication methods chosen (the non-empty slots)."""

    methods: tuple[str, ...]


@_frame_class
class Multicast(NamedTuple):
    """Client -> daemon: a data message to ``groups``.

    ``hint`` is the raw 32-bit hint as the client wrote it (the daemon relays it
    unconverted, so receivers can tell the sender's byte order).
    """

    service_type: int
    sender: str
    groups: tuple[str, ...]
    mess_type: int
    data: bytes
    hint: bytes = LE_MARK_BYTES


@_frame_class
class Join(NamedTuple):
    """Client -> daemon: join ``group``."""

    group: str


@_frame_class
class Leave(NamedTuple):
    """Client -> daemon: leave ``group``."""

    group: str


@dataclass(frozen=True, slots=True)
class Kill:
    """Client -> daemon: disconnect."""


@_frame_class
class Relay(NamedTuple):
    """Client -> daemon: a data message the daemon can forward byte for byte.

    Only a :class:`DaemonDecoder` made with ``relay=True`` yields these, instead of a
    :class:`Multicast`, for the common case: a little-endian header whose type has only
    a service level (and SELF_DISCARD) besides the endian marker, the session's own
    sender field, and destination fields that are each a name followed by NULs. What
    the daemon sends its receivers is then exactly ``wire``, the message as received.
    ``groups_blob`` holds the destination fields (32 bytes each), ``service_type`` the
    type without the endian marker.
    """

    service_type: int
    groups_blob: bytes
    num_groups: int
    wire: bytes


#: What a daemon sends a client.
ToClient = (
    AuthList | Accepted | HandshakeRejected | RegularMessage | MembershipMessage | RejectMessage
)
#: What a client sends a daemon.
ToDaemon = ConnectRequest | AuthChoice | Multicast | Join | Leave | Kill | Relay


if TYPE_CHECKING:

    @overload
    def new_frame(
        cls: type[RegularMessage], fields: tuple[int, str, tuple[str, ...], int, bytes, bool], /
    ) -> RegularMessage: ...

    @overload
    def new_frame(
        cls: type[Multicast], fields: tuple[int, str, tuple[str, ...], int, bytes, bytes], /
    ) -> Multicast: ...

    @overload
    def new_frame(cls: type[Relay], fields: tuple[int, bytes, int, bytes], /) -> Relay: ...

    def new_frame(cls: Any, fields: Any, /) -> Any:
        """Build a frame of ``cls`` from ``fields`` (all of them, in order)."""

else:
    # tuple.__new__ itself: a NamedTuple's own __new__ is a Python function, and these
    # frames are built once per message.
    new_frame = tuple.__new__
