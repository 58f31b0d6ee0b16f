"""The Spread client protocol, sans-IO: constants, encoders and incremental decoders.

Everything here follows the wire as recorded from a real Spread 5.0.1 daemon and its C
library (see ``shared/spread-wire/README.md``; section numbers below refer to it). There
is no I/O, no Twisted and no logging in this module: callers feed it bytes and get typed
frames back, or ask it for the bytes of a frame.

Two decoders cover the two directions of a connection:

- :class:`ClientDecoder` reads what a daemon sends to a client (auth list, accept
  record, then messages) and yields :class:`AuthList`, :class:`Accepted`,
  :class:`HandshakeRejected`, :class:`RegularMessage`, :class:`MembershipMessage` and
  :class:`RejectMessage`.
- :class:`DaemonDecoder` reads what a client sends to a daemon (connect record, auth
  choice, then messages) and yields :class:`ConnectRequest`, :class:`AuthChoice`,
  :class:`Multicast`, :class:`Join`, :class:`Leave` and :class:`Kill`. It applies the
  real daemon's handshake and header rules (sections 5.3, 5.6) and raises
  :class:`~spreadqueue._spread.errors.WireError` where the real daemon would refuse.

Both accept chunks of any size. A frame that arrives in one chunk costs one copy (its
data); a frame spread over several chunks keeps references to them and is joined once
when complete. A decoder that raised stays failed; the exception's ``frames`` holds what
the same ``feed`` call decoded before the bad unit.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from .errors import HandshakeError, IllegalGroupName, IllegalService, MessageTooLong, WireError

__all__ = [
    "Accepted",
    "AuthChoice",
    "AuthList",
    "ClientDecoder",
    "ClientFrame",
    "ConnectRequest",
    "DaemonDecoder",
    "DaemonFrame",
    "GroupId",
    "HandshakeRejected",
    "Join",
    "Kill",
    "Leave",
    "MembershipMessage",
    "Multicast",
    "RegularMessage",
    "RejectCode",
    "RejectMessage",
    "Relay",
    "ServiceType",
    "check_group_name",
    "check_message_size",
    "check_private_name",
    "decode_relay",
    "encode_accept",
    "encode_auth_choice",
    "encode_auth_list",
    "encode_client_frame",
    "encode_connect",
    "encode_daemon_frame",
    "encode_header",
    "encode_hint",
    "encode_join",
    "encode_kill",
    "encode_leave",
    "encode_membership",
    "encode_message",
    "encode_reject",
    "encode_reject_message",
    "encode_relay",
    "encode_self_leave",
    "encode_transition",
]


class ServiceType(enum.IntFlag):
    """The ``type`` bits of a message header (section 5.8)."""

    UNRELIABLE = 0x00000001
    RELIABLE = 0x00000002
    FIFO = 0x00000004
    CAUSAL = 0x00000008
    AGREED = 0x00000010
    SAFE = 0x00000020
    SELF_DISCARD = 0x00000040
    CAUSED_BY_JOIN = 0x00000100
    CAUSED_BY_LEAVE = 0x00000200
    CAUSED_BY_DISCONNECT = 0x00000400
    CAUSED_BY_NETWORK = 0x00000800
    REG_MEMB_MESS = 0x00001000
    TRANSITION_MESS = 0x00002000
    JOIN_MESS = 0x00010000
    LEAVE_MESS = 0x00020000
    KILL_MESS = 0x00040000
    GROUPS_MESS = 0x00080000
    REJECT_MESS = 0x00400000


UNRELIABLE_MESS: Final = 0x01
RELIABLE_MESS: Final = 0x02
FIFO_MESS: Final = 0x04
CAUSAL_MESS: Final = 0x08
AGREED_MESS: Final = 0x10
SAFE_MESS: Final = 0x20
SELF_DISCARD: Final = 0x40
REGULAR_MESS: Final = 0x3F
CAUSED_BY_JOIN: Final = 0x100
CAUSED_BY_LEAVE: Final = 0x200
CAUSED_BY_DISCONNECT: Final = 0x400
CAUSED_BY_NETWORK: Final = 0x800
REG_MEMB_MESS: Final = 0x1000
TRANSITION_MESS: Final = 0x2000
MEMBERSHIP_MESS: Final = 0x3F00
CAUSE_MASK: Final = 0x0F00
JOIN_MESS: Final = 0x10000
LEAVE_MESS: Final = 0x20000
KILL_MESS: Final = 0x40000
GROUPS_MESS: Final = 0x80000
REJECT_MESS: Final = 0x400000
ENDIAN_MARKER: Final = 0x80000080
CONTROL_MESS: Final = JOIN_MESS | LEAVE_MESS | KILL_MESS

#: The six service levels, weakest first.
SERVICE_LEVELS: Final = (
    UNRELIABLE_MESS,
    RELIABLE_MESS,
    FIFO_MESS,
    CAUSAL_MESS,
    AGREED_MESS,
    SAFE_MESS,
)


class RejectCode(enum.IntEnum):
    """Accept and reject codes of the handshake (section 5.9)."""

    ACCEPT_SESSION = 1
    REJECT_QUOTA = -3
    REJECT_NO_NAME = -4
    REJECT_ILLEGAL_NAME = -5
    REJECT_NOT_UNIQUE = -6
    REJECT_VERSION = -7
    REJECT_AUTH = -9


# Limits (section 5.10).
MAX_PRIVATE_NAME: Final = 10
MAX_DAEMON_NAME: Final = 19
MAX_GROUP_NAME: Final = 31  # characters; the wire field is 32 bytes with the NUL
GROUP_FIELD: Final = 32
MAX_GROUPS: Final = 100
HEADER_SIZE: Final = 48
#: What libspread checks: data + 32 * groups <= 144000.
LIBRARY_LIMIT: Final = 144000
#: What the daemon checks: data + 32 * groups <= 143952; above it the session is dropped.
DAEMON_CHECK_LIMIT: Final = 143952
#: What a 5.0.1 daemon can really store: 48 + 32 * groups + data <= 143200. Between this
#: and the daemon's check the real daemon aborts (section 5.10, the upstream bug).
MAX_MESSAGE_BYTES: Final = 143200
#: The largest payload one can send to one group (143200 - 48 - 32).
MAX_DATA_ONE_GROUP: Final = MAX_MESSAGE_BYTES - HEADER_SIZE - GROUP_FIELD
AUTH_SLOT: Final = 30
AUTH_SLOTS: Final = 3
AUTH_CHOICE_SIZE: Final = AUTH_SLOT * AUTH_SLOTS
MAX_AUTH_LIST: Final = 90
#: The version this library announces: libspread 5.0.1's, so our handshake bytes are its.
LIBRARY_VERSION: Final = (5, 0, 1)
#: The version the embedded daemon announces.
DAEMON_VERSION: Final = (5, 0, 1)
#: Client-side bound on one incoming frame (membership notices of big groups carry one
#: 32-byte name per member, so this is larger than what a client may send).
DEFAULT_MAX_INCOMING: Final = 4 * 1024 * 1024
#: The authentication methods a default daemon allows (``AllowedAuthMethods = "NULL"``).
DEFAULT_AUTH_METHODS: Final = ("NULL",)

_HEADER_LE = struct.Struct("<I32siIi")
_HEADER_BE = struct.Struct(">I32siIi")
#: A daemon -> client header with the sender's 4 hint bytes as they came.
_RELAY_HEAD = struct.Struct("<I32si4si")
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct(">I")
_GROUP_ID_LE = struct.Struct("<III")
_GROUP_ID_BE = struct.Struct(">III")
_MEMB_HEAD_LE = struct.Struct("<IIIII")
_MEMB_HEAD_BE = struct.Struct(">IIIII")
_ZERO32: Final = bytes(GROUP_FIELD)
_HINT_ALLOWED: Final = 0x80FFFF80
#: Type bits that keep a message from being relayed byte for byte (see Relay): all but
#: the endian marker, the service levels and SELF_DISCARD.
_NOT_VERBATIM: Final = 0xFFFFFFFF & ~(0x80000080 | 0x3F | 0x40)
_LE_MARK_BYTES: Final = _U32_LE.pack(ENDIAN_MARKER)
#: Bytes a private or group name may hold: '$' (0x24) .. '~' (0x7E) (section 5.3).
_LEGAL_NAME_BYTES: Final = bytes(range(0x24, 0x7F))
#: Pieces smaller than this are staged into a buffer instead of being kept by reference,
#: so that a stream dribbled in tiny chunks does not pin one object per chunk.
_SMALL_PIECE: Final = 512
_CACHE_LIMIT: Final = 16384


# --------------------------------------------------------------------------- names


def is_legal_name(name: bytes) -> bool:
    """True when every byte of ``name`` is in 0x24..0x7E (``$`` to ``~``)."""
    # translate() deletes the legal bytes in C; anything left over is illegal.
    return not name.translate(None, _LEGAL_NAME_BYTES)


def to_bytes(name: str | bytes) -> bytes:
    """A name as wire bytes (latin-1, so every byte value round-trips)."""
    return name if isinstance(name, bytes) else name.encode("latin-1")


def check_private_name(name: str | bytes) -> bytes:
    """Validate a private name as the daemon does: 0..10 bytes in 0x24..0x7E."""
    raw = to_bytes(name)
    if len(raw) > MAX_PRIVATE_NAME:
        raise IllegalGroupName(
            f"private name {raw!r} is {len(raw)} bytes; Spread allows at most {MAX_PRIVATE_NAME}"
        )
    if not is_legal_name(raw):
        raise IllegalGroupName(
            f"private name {raw!r} has bytes outside '$'..'~' (no spaces, no '#')"
        )
    return raw


def check_group_name(name: str | bytes) -> bytes:
    """Validate a multicast destination: 1..31 bytes in 0x24..0x7E (libspread's rule).

    Private group names (``#name#daemon``, a unicast) are accepted too, when they parse
    the way the daemon parses them: a 1..10 byte name and a 1..19 byte daemon name.
    """
    raw = to_bytes(name)
    if not raw:
        raise IllegalGroupName("a group name cannot be empty")
    if len(raw) > MAX_GROUP_NAME:
        raise IllegalGroupName(
            f"group name {raw!r} is {len(raw)} bytes; Spread allows at most {MAX_GROUP_NAME}"
        )
    if raw[0] == 0x23:  # '#': a private group, '#name#daemon'
        parts = split_private_group(raw)
        if (
            parts is None
            or not 1 <= len(parts[0]) <= MAX_PRIVATE_NAME
            or not 1 <= len(parts[1]) <= MAX_DAEMON_NAME
            or not (is_legal_name(parts[0]) and is_legal_name(parts[1]))
        ):
            raise IllegalGroupName(f"private group name {raw!r} is not '#name#daemon'")
        return raw
    if not is_legal_name(raw):
        raise IllegalGroupName(f"group name {raw!r} has bytes outside '$'..'~' (no spaces, no '#')")
    return raw


def _check_joinable(name: str | bytes) -> bytes:
    """SP_join / SP_leave's rule: 1..31 bytes in 0x24..0x7E, so never a private group."""
    raw = check_group_name(name)
    if raw[0] == 0x23:
        raise IllegalGroupName(f"cannot join or leave the private group {raw!r}")
    return raw


def private_group_name(name: str | bytes, daemon: str | bytes) -> bytes:
    """``#name#daemon``, the private group of a session (section 5.4)."""
    return b"#" + to_bytes(name) + b"#" + to_bytes(daemon)


def split_private_group(group: bytes) -> tuple[bytes, bytes] | None:
    """``(name, daemon)`` of a private group name, or None if it is not one."""
    if not group.startswith(b"#"):
        return None
    parts = group.split(b"#")
    if len(parts) != 3:
        return None
    return parts[1], parts[2]


_padded_cache: dict[str | bytes, bytes] = {}


def pad_name(name: str | bytes) -> bytes:
    """A name NUL-padded to the 32-byte wire field (cached: names repeat a lot)."""
    padded = _padded_cache.get(name)
    if padded is None:
        raw = to_bytes(name)
        if len(raw) > MAX_GROUP_NAME:
            raise IllegalGroupName(f"name {raw!r} is longer than {MAX_GROUP_NAME} bytes")
        if b"\0" in raw:
            # The receiver would stop at the NUL: a different name than the one meant.
            raise IllegalGroupName(f"name {raw!r} contains a NUL byte")
        padded = raw + _ZERO32[len(raw) :]
        if len(_padded_cache) < _CACHE_LIMIT:
            _padded_cache[name] = padded
    return padded


_group_field_cache: dict[str | bytes, bytes] = {}


def _group_field(name: str | bytes) -> bytes:
    """A validated multicast destination, padded to its 32-byte field (cached)."""
    field = _group_field_cache.get(name)
    if field is None:
        field = pad_name(check_group_name(name))
        if len(_group_field_cache) < _CACHE_LIMIT:
            _group_field_cache[name] = field
    return field


def _field_name(field: bytes) -> bytes:
    """The name in a 32-byte field: the bytes up to the first NUL (section 5.5)."""
    nul = field.find(b"\0")
    return field if nul < 0 else field[:nul]


_name_cache: dict[bytes, str] = {}


def _name(field: bytes) -> str:
    """The name in a 32-byte field as a str (cached: the same fields recur)."""
    name = _name_cache.get(field)
    if name is None:
        nul = field.find(b"\0")
        name = (field if nul < 0 else field[:nul]).decode("latin-1")
        if len(_name_cache) < _CACHE_LIMIT:
            _name_cache[field] = name
    return name


_canonical: dict[bytes, str] = {}


def canonical_field(field: bytes) -> str | None:
    """The name in a 32-byte field that is exactly that name NUL-padded (what this
    daemon would write for it), or None for any other field (cached)."""
    name = _canonical.get(field)
    if name is None:
        nul = field.find(b"\0")
        if nul < 0 or field[nul:] != _ZERO32[nul:]:
            return None
        name = field[:nul].decode("latin-1")
        if len(_canonical) < _CACHE_LIMIT:
            _canonical[field] = name
    return name


_one_group: dict[bytes, tuple[str, ...]] = {}


def _one_group_of(field: bytes) -> tuple[str, ...]:
    """The destination list of a one-group message (cached: the tuple is reused)."""
    dests = (_name(field),)
    if len(_one_group) < _CACHE_LIMIT:
        _one_group[field] = dests
    return dests


def _groups(buf: bytes, start: int, count: int) -> tuple[str, ...]:
    if count == 1:
        return (_name(buf[start : start + GROUP_FIELD]),)
    return tuple(
        [_name(buf[i : i + GROUP_FIELD]) for i in range(start, start + GROUP_FIELD * count, 32)]
    )


def message_size(num_groups: int, data_len: int) -> int:
    """Bytes a message takes in the daemon: 48 + 32 * groups + data."""
    return HEADER_SIZE + GROUP_FIELD * num_groups + data_len


def check_message_size(num_groups: int, data_len: int) -> None:
    """Refuse a message a real 5.0.1 daemon cannot carry (see MAX_MESSAGE_BYTES)."""
    if num_groups > MAX_GROUPS:
        raise MessageTooLong(f"{num_groups} groups; Spread allows at most {MAX_GROUPS}")
    size = message_size(num_groups, data_len)
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLong(
            f"message of {data_len} bytes to {num_groups} group(s) is {size} bytes on the "
            f"wire; a Spread daemon carries at most {MAX_MESSAGE_BYTES} "
            f"(48 + 32 * groups + data)"
        )


# --------------------------------------------------------------------------- frames

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


#: Builds a frame from a tuple of its fields without a Python-level call (hot paths).
_new: Final = tuple.__new__


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
    x86 reports ``endian_mismatch = 1`` then, section 5.2).
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
    """Daemon -> client: one of our messages, returned as rejected (section 5.7)."""

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
    (the flags byte taken as a signed char; section 5.3).
    """

    version: tuple[int, ...]
    membership: bool
    priority: int
    name: str
    flags: int = 0

    @property
    def has_auth_phase(self) -> bool:
        """Libraries from 3.16.0 on get the auth list and send an auth choice."""
        return _version_number(self.version) >= 31600

    @property
    def wants_patch_version(self) -> bool:
        """Libraries from 3.15.0 on get the daemon's patch version in the accept record."""
        return _version_number(self.version) >= 31500


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
    hint: bytes = _LE_MARK_BYTES


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


ClientFrame = (
    AuthList | Accepted | HandshakeRejected | RegularMessage | MembershipMessage | RejectMessage
)
DaemonFrame = ConnectRequest | AuthChoice | Multicast | Join | Leave | Kill | Relay

_KILL: Final = Kill()


def _signed8(b: int) -> int:
    return b - 256 if b > 127 else b


def _signed16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


def _version_number(version: Sequence[int]) -> int:
    """major*10000 + minor*100 + patch, each taken as a signed char like the daemon does."""
    parts = [_signed8(v & 0xFF) for v in version[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


def _hint_mess_type(buf: bytes, pos: int) -> tuple[int, bool]:
    """``(mess_type, little_endian)`` of the hint at ``buf[pos:pos + 4]``.

    The hint keeps its writer's byte order through the daemon, so it is read by its own
    marker, as libspread does (section 5.2).
    """
    b1 = buf[pos + 1]
    b2 = buf[pos + 2]
    # The marker 0x80000080 reads the same in both orders, so test the raw bytes:
    # little-endian iff byte 0 and byte 3 both have bit 7 set (section 5.2).
    if buf[pos] & 0x80 and buf[pos + 3] & 0x80:
        return _signed16(b1 | b2 << 8), True
    return _signed16(b1 << 8 | b2), False


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


# --------------------------------------------------------------------------- encoders


def encode_connect(
    name: str | bytes | None,
    *,
    membership: bool = True,
    priority: int = 0,
    version: Sequence[int] = LIBRARY_VERSION,
) -> bytes:
    """The connect record, as libspread 5.0.1 writes it (section 5.3, step 1).

    Unlike libspread, a name over 10 bytes or with illegal bytes raises
    :class:`IllegalGroupName` instead of being cut short (libspread) or refused by the
    daemon: two long names cut to the same 10 bytes would collide.
    """
    raw = b"" if name is None else check_private_name(name)
    if len(version) < 2 or not all(0 <= v <= 255 for v in version):
        raise ValueError(f"version {tuple(version)!r} is not 2 or 3 bytes")
    flags = (0x10 if priority >= 1 else 0x00) | (0x01 if membership else 0x00)
    head = bytes(version[:2])
    # The patch byte is only sent (and only read by the daemon) above 3.14 (trace c6).
    if _version_number((*version[:2], 0)) > 31400:
        head += bytes(version[2:3]) or b"\0"
    return head + bytes((flags, len(raw))) + raw


def encode_auth_list(methods: Iterable[str] = DEFAULT_AUTH_METHODS) -> bytes:
    """The daemon's auth list: length byte, then each method followed by a space."""
    body = b"".join(m.encode("ascii") + b" " for m in methods)
    if len(body) > MAX_AUTH_LIST:
        raise ValueError("auth method list longer than 90 bytes")
    return bytes((len(body),)) + body


def encode_auth_choice(methods: Sequence[str] = DEFAULT_AUTH_METHODS) -> bytes:
    """The client's 90-byte auth choice: three NUL-padded 30-byte slots."""
    if len(methods) > AUTH_SLOTS:
        raise ValueError("at most three auth methods")
    out = bytearray(AUTH_CHOICE_SIZE)
    for i, method in enumerate(methods):
        raw = method.encode("ascii")
        if not raw or len(raw) >= AUTH_SLOT or b"\0" in raw:
            raise ValueError(f"auth method name {method!r} does not fit a 30-byte slot")
        out[i * AUTH_SLOT : i * AUTH_SLOT + len(raw)] = raw
    return bytes(out)


def encode_accept(
    private_group: str | bytes,
    *,
    client_version: Sequence[int] = LIBRARY_VERSION,
    daemon_version: Sequence[int] = DAEMON_VERSION,
) -> bytes:
    """The daemon's accept record (section 5.3, step 4).

    The daemon's patch version is only sent to libraries from 3.15.0 on (trace c6).
    """
    raw = to_bytes(private_group)
    if len(raw) > MAX_GROUP_NAME:
        raise IllegalGroupName(f"private group {raw!r} is longer than {MAX_GROUP_NAME} bytes")
    version = bytes(daemon_version[:2])
    if _version_number(client_version) >= 31500:
        version += bytes(daemon_version[2:3]) or b"\0"
    return b"\x01" + version + bytes((len(raw),)) + raw


def encode_reject(code: int) -> bytes:
    """A handshake reject: one negative byte (section 5.3)."""
    if not -128 <= code < 0:
        raise ValueError(f"reject codes are negative bytes, not {code}")
    return bytes((code & 0xFF,))


def encode_hint(mess_type: int) -> int:
    """The hint word for ``mess_type`` (signed 16-bit), little-endian marker included."""
    if not -0x8000 <= mess_type <= 0xFFFF:
        raise ValueError(f"mess_type {mess_type} does not fit 16 bits")
    return ((mess_type << 8) & 0x00FFFF00) | ENDIAN_MARKER


def encode_header(
    service_type: int, sender: str | bytes, num_groups: int, hint: int, data_len: int
) -> bytes:
    """A 48-byte little-endian header with the marker set in ``type``."""
    return _HEADER_LE.pack(
        (service_type | ENDIAN_MARKER) & 0xFFFFFFFF, pad_name(sender), num_groups, hint, data_len
    )


def _check_service(service_type: int) -> None:
    # The daemon drops a session whose message has not exactly one service bit (rule 1
    # of section 5.6); SELF_DISCARD is the only other bit a multicast may carry.
    level = service_type & REGULAR_MESS
    if not level or level & (level - 1) or service_type & ~(REGULAR_MESS | SELF_DISCARD):
        raise IllegalService(
            f"service type 0x{service_type:x} must be one of UNRELIABLE..SAFE, "
            "optionally with SELF_DISCARD"
        )


def encode_message(
    service_type: int,
    sender: str | bytes,
    groups: Sequence[str | bytes] | str | bytes,
    data: bytes = b"",
    mess_type: int = 0,
) -> bytes:
    """A whole client -> daemon multicast (header + groups + data), as libspread sends it.

    Refuses what a real daemon cannot carry: a service type that is not exactly one
    level (:class:`IllegalService`), destinations that are not legal group names
    (:class:`IllegalGroupName`), more than 100 groups or 48 + 32 * groups + data over
    143200 bytes (:class:`MessageTooLong`, see :data:`MAX_MESSAGE_BYTES`).
    """
    if isinstance(groups, (str, bytes)):
        groups = (groups,)
    _check_service(service_type)
    check_message_size(len(groups), len(data))
    head = _HEADER_LE.pack(
        service_type | ENDIAN_MARKER,
        pad_name(sender),
        len(groups),
        encode_hint(mess_type),
        len(data),
    )
    if len(groups) == 1:
        return b"".join((head, _group_field(groups[0]), data))
    return b"".join((head, *map(_group_field, groups), data))


def _encode_control(kind: int, sender: str | bytes, group: bytes) -> bytes:
    return encode_header(kind, sender, 1, ENDIAN_MARKER, 0) + pad_name(group)


def encode_join(sender: str | bytes, group: str | bytes) -> bytes:
    """JOIN_MESS for ``group`` from the session whose private group is ``sender``."""
    return _encode_control(JOIN_MESS, sender, _check_joinable(group))


def encode_leave(sender: str | bytes, group: str | bytes) -> bytes:
    """LEAVE_MESS for ``group``."""
    return _encode_control(LEAVE_MESS, sender, _check_joinable(group))


def encode_kill(sender: str | bytes) -> bytes:
    """KILL_MESS: the disconnect message (its one group is the sender's private group).

    libspread leaves stack bytes after the NUL of that group field (trace a1); the daemon
    ignores the field, and we send zeros.
    """
    return _encode_control(KILL_MESS, sender, to_bytes(sender))


def encode_relay(
    service_type: int,
    sender: bytes,
    groups_blob: bytes,
    num_groups: int,
    hint: bytes,
    data: bytes,
) -> bytes:
    """A daemon -> client data message: our order for type/num_groups/data_len, the
    sender's ``hint`` bytes untouched (section 5.2)."""
    head = _RELAY_HEAD.pack(
        service_type | ENDIAN_MARKER, pad_name(sender), num_groups, hint, len(data)
    )
    return b"".join((head, groups_blob, data))


def decode_relay(buf: bytes) -> RegularMessage:
    """The frame a client decodes from ``buf``, one whole daemon -> client data message
    with a little-endian header (what :func:`encode_relay` makes, or a :class:`Relay`'s
    ``wire``): the decoding of :class:`ClientDecoder`, without a decoder."""
    stype, sender, num_groups, _hint, data_len = _HEADER_LE.unpack_from(buf)
    if not stype & REGULAR_MESS or stype & REJECT_MESS or not 0 <= num_groups <= MAX_GROUPS:
        raise WireError(f"not a relayed data message (type 0x{stype:08x})", 0)
    doff = HEADER_SIZE + GROUP_FIELD * num_groups
    if len(buf) != doff + data_len:
        raise WireError(f"relayed message of {len(buf)} bytes; its header says {doff + data_len}")
    if num_groups == 1:
        field = buf[HEADER_SIZE:doff]
        dests = _one_group.get(field) or _one_group_of(field)
    else:
        dests = _groups(buf, HEADER_SIZE, num_groups)
    mess_type, little = _hint_mess_type(buf, 40)
    return _new(  # type: ignore[no-any-return]
        RegularMessage,
        (
            stype & ~ENDIAN_MARKER,
            _name_cache.get(sender) or _name(sender),
            dests,
            mess_type,
            buf[doff:],
            not little,
        ),
    )


def _gid_bytes(group_id: GroupId) -> bytes:
    # Accept signed words too (as libspread and the daemon's log print them).
    return _GROUP_ID_LE.pack(
        group_id.daemon_id & 0xFFFFFFFF, group_id.time & 0xFFFFFFFF, group_id.counter & 0xFFFFFFFF
    )


def encode_membership(
    service_type: int,
    group: str | bytes,
    members: Sequence[str | bytes],
    group_id: GroupId,
    vs_sets: Sequence[Sequence[str | bytes]],
    local_vs_set: int = 0,
) -> bytes:
    """A daemon -> client regular membership notice (section 5.7).

    ``service_type`` is REG_MEMB_MESS with one CAUSED_BY_* bit; the body's
    local-set offset is computed from ``local_vs_set`` (an index into ``vs_sets``).
    """
    sets = [_U32_LE.pack(len(vs)) + b"".join(map(pad_name, vs)) for vs in vs_sets]
    offset = 0
    local_offset = 0
    for i, chunk in enumerate(sets):
        if i == local_vs_set:
            local_offset = offset
        offset += len(chunk)
    if sets and not 0 <= local_vs_set < len(sets):
        raise ValueError(f"local_vs_set {local_vs_set} is not one of {len(sets)} vs-sets")
    data = b"".join(
        (_gid_bytes(group_id), _U32_LE.pack(len(sets)), _U32_LE.pack(local_offset), *sets)
    )
    names = b"".join(map(pad_name, members))
    head = encode_header(service_type, group, len(members), ENDIAN_MARKER, len(data))
    return b"".join((head, names, data))


def encode_transition(group: str | bytes, group_id: GroupId) -> bytes:
    """A daemon -> client TRANSITION_MESS: the group's previous id as its body."""
    data = _gid_bytes(group_id)
    return encode_header(TRANSITION_MESS, group, 0, ENDIAN_MARKER, len(data)) + data


def encode_self_leave(group: str | bytes) -> bytes:
    """A daemon -> client self-leave notice: CAUSED_BY_LEAVE alone, no body."""
    return encode_header(CAUSED_BY_LEAVE, group, 0, ENDIAN_MARKER, 0)


def encode_reject_message(
    old_type: int,
    sender: str | bytes,
    groups: Sequence[str | bytes],
    data: bytes = b"",
    hint: bytes = _LE_MARK_BYTES,
) -> bytes:
    """A daemon -> client REJECT_MESS returning a message to its sender (section 5.7).

    The type is REJECT_MESS (plus SELF_DISCARD if the original had it); ``old_type``
    follows the header; ``hint`` is the original's raw hint bytes.
    """
    stype = REJECT_MESS | (old_type & SELF_DISCARD)
    head = _HEADER_LE.pack(stype | ENDIAN_MARKER, pad_name(sender), len(groups), 0, len(data))
    return b"".join(
        (
            head[:40],
            hint,
            head[44:],
            _U32_LE.pack((old_type | ENDIAN_MARKER) & 0xFFFFFFFF),
            *map(pad_name, groups),
            data,
        )
    )


def _hint_bytes(mess_type: int, big_endian: bool) -> bytes:
    if big_endian:
        return _U32_BE.pack((mess_type << 8) & 0x00FFFF00)
    return _U32_LE.pack(encode_hint(mess_type))


def encode_client_frame(
    frame: ClientFrame, *, client_version: Sequence[int] = LIBRARY_VERSION
) -> bytes:
    """The bytes a daemon sends for ``frame`` (the inverse of :class:`ClientDecoder`).

    ``client_version`` shapes the accept record. A regular message's hint is written
    big-endian when ``endian_mismatch`` is set, as a big-endian sender's would be.
    """
    if isinstance(frame, RegularMessage):
        blob = b"".join(map(pad_name, frame.groups))
        hint = _hint_bytes(frame.mess_type, frame.endian_mismatch)
        return encode_relay(
            frame.service_type, to_bytes(frame.sender), blob, len(frame.groups), hint, frame.data
        )
    if isinstance(frame, MembershipMessage):
        if frame.is_transition:
            if frame.group_id is None:
                return encode_header(TRANSITION_MESS, frame.group, 0, ENDIAN_MARKER, 0)
            return encode_transition(frame.group, frame.group_id)
        if frame.is_self_leave:
            return encode_self_leave(frame.group)
        if frame.group_id is None:
            raise ValueError("a regular membership notice needs a group id")
        return encode_membership(
            frame.service_type,
            frame.group,
            frame.members,
            frame.group_id,
            frame.vs_sets,
            frame.local_vs_set,
        )
    if isinstance(frame, RejectMessage):
        hint = _hint_bytes(frame.mess_type, False)
        return encode_reject_message(frame.old_type, frame.sender, frame.groups, frame.data, hint)
    if isinstance(frame, AuthList):
        return encode_auth_list(frame.methods)
    if isinstance(frame, Accepted):
        return encode_accept(
            frame.private_group, client_version=client_version, daemon_version=frame.daemon_version
        )
    if isinstance(frame, HandshakeRejected):
        return encode_reject(frame.code)
    raise TypeError(f"not a client frame: {frame!r}")


def encode_daemon_frame(frame: DaemonFrame, *, sender: str | bytes = b"") -> bytes:
    """The bytes a client sends for ``frame`` (the inverse of :class:`DaemonDecoder`).

    ``sender`` is the session's private group, which message frames do not all carry.
    """
    if isinstance(frame, Multicast):
        head = _HEADER_LE.pack(
            frame.service_type | ENDIAN_MARKER,
            pad_name(frame.sender),
            len(frame.groups),
            0,
            len(frame.data),
        )
        names = b"".join(map(pad_name, frame.groups))
        return b"".join((head[:40], frame.hint, head[44:], names, frame.data))
    if isinstance(frame, Join):
        return _encode_control(JOIN_MESS, sender, to_bytes(frame.group))
    if isinstance(frame, Leave):
        return _encode_control(LEAVE_MESS, sender, to_bytes(frame.group))
    if isinstance(frame, Kill):
        return encode_kill(sender)
    if isinstance(frame, ConnectRequest):
        raw = to_bytes(frame.name)
        return bytes(frame.version) + bytes((frame.flags & 0xFF, len(raw))) + raw
    if isinstance(frame, AuthChoice):
        return encode_auth_choice(frame.methods)
    raise TypeError(f"not a daemon frame: {frame!r}")


# --------------------------------------------------------------------------- decoders


class _Build(Protocol):
    def __call__(
        self,
        hbuf: bytes,
        hpos: int,
        little: bool,
        stype: int,
        sender: bytes,
        num_groups: int,
        data_len: int,
        gbuf: bytes,
        goff: int,
        payload: bytes,
    ) -> Any: ...


class _Check(Protocol):
    def __call__(
        self, stype: int, sender: bytes, num_groups: int, hint: int, data_len: int, total: int
    ) -> None: ...


class _Relay(Protocol):
    def __call__(
        self, buf: bytes, pos: int, total: int, stype: int, sender: bytes, num_groups: int
    ) -> Any: ...


def _join(parts: list[Any]) -> bytes:
    if not parts:
        return b""
    if len(parts) == 1 and type(parts[0]) is bytes:
        return parts[0]  # type: ignore[no-any-return]
    return b"".join(parts)


class _MessageStream:
    """Splits the message phase of a stream into messages and builds their frames.

    A message is a 48-byte header, then ``prefix`` (the 4-byte old_type of a REJECT_MESS
    in the daemon -> client direction, then 32 bytes per group), then ``data``. Whole
    messages inside one chunk are built straight from it. A message cut by a chunk
    boundary is collected as references to the chunks' bytes (tiny pieces are staged in
    a buffer instead) and joined once complete, so each byte is copied once into its
    frame and at most once more into a staging buffer: linear in the stream's length
    whatever the chunk sizes.
    """

    __slots__ = (
        "_build",
        "_check",
        "_data",
        "_dneed",
        "_failed",
        "_hdr",
        "_head",
        "_old_type_field",
        "_pneed",
        "_prefix",
        "_relay",
        "offset",
        "staged",
    )

    def __init__(
        self,
        build: _Build,
        check: _Check,
        *,
        old_type_field: bool,
        relay: _Relay | None = None,
    ) -> None:
        self._build = build
        self._check = check
        # Tried first on every whole little-endian message (``buf[pos:pos + total]``);
        # when it returns a frame, ``build`` is not called.
        self._relay = relay
        # Only the daemon writes the REJECT_MESS old_type field; a client's header with
        # that bit is just a header (the daemon reads no extra bytes for it).
        self._old_type_field = old_type_field
        self._head = bytearray()
        self._hdr: tuple[Any, ...] | None = None
        self._prefix: list[Any] = []
        self._data: list[Any] = []
        self._pneed = 0
        self._dneed = 0
        self._failed: WireError | None = None
        #: Stream offset of the first byte of the message being decoded.
        self.offset = 0
        #: Bytes copied into staging buffers so far (not counting the frames' own copy).
        self.staged = 0

    @property
    def buffered(self) -> int:
        """Bytes received that belong to a message not yet complete."""
        if self._hdr is None:
            return len(self._head)
        return self._hdr[-1] - self._pneed - self._dneed  # type: ignore[no-any-return]

    def feed(self, data: bytes) -> list[Any]:
        """Decode ``data``; return the frames it completed."""
        if self._failed is not None:
            raise WireError("the stream already failed to decode", self._failed.offset)
        out: list[Any] = []
        try:
            self._feed(data, out)
        except WireError as err:
            err.frames = out
            self._failed = err
            raise
        return out

    def _parse(self, hbuf: bytes, hpos: int) -> tuple[Any, ...]:
        """Parse and check the header at ``hbuf[hpos:]``; return its fields."""
        little = bool(hbuf[hpos] & 0x80 and hbuf[hpos + 3] & 0x80)
        stype, sender, num_groups, hint, data_len = (
            _HEADER_LE if little else _HEADER_BE
        ).unpack_from(hbuf, hpos)
        extra = 4 if self._old_type_field and stype & REJECT_MESS else 0
        total = HEADER_SIZE + extra + GROUP_FIELD * num_groups + data_len
        self._check(stype, sender, num_groups, hint, data_len, total)
        if num_groups < 0 or data_len < 0:
            raise WireError(
                f"negative count in header (groups={num_groups}, data_len={data_len})",
                self.offset,
            )
        return (little, stype, sender, num_groups, data_len, extra, total)

    def _feed(self, data: bytes, out: list[Any]) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # we keep references: never to a buffer the caller may reuse
        n = len(data)
        pos = 0
        if self._hdr is not None:
            pos = self._fill(data, 0, out)
            if self._hdr is not None:
                return
        elif self._head:
            need = HEADER_SIZE - len(self._head)
            if n < need:
                self._head += data
                self.staged += n
                return
            self._head += memoryview(data)[:need]
            self.staged += need
            pos = need
            hbuf = bytes(self._head)
            self._head.clear()
            self._start(hbuf, self._parse(hbuf, 0), out)
            if self._hdr is not None:
                pos = self._fill(data, pos, out)
                if self._hdr is not None:
                    return
        # The hot loop: whole messages inside this chunk. It repeats _parse inline, as
        # a call per message is a measurable share of the cost of a small message.
        build = self._build
        check = self._check
        relay = self._relay
        old_type_field = self._old_type_field
        unpack_le = _HEADER_LE.unpack_from
        unpack_be = _HEADER_BE.unpack_from
        while n - pos >= HEADER_SIZE:
            little = bool(data[pos] & 0x80 and data[pos + 3] & 0x80)
            stype, sender, num_groups, hint, data_len = (unpack_le if little else unpack_be)(
                data, pos
            )
            extra = 4 if old_type_field and stype & REJECT_MESS else 0
            total = HEADER_SIZE + extra + GROUP_FIELD * num_groups + data_len
            check(stype, sender, num_groups, hint, data_len, total)
            if num_groups < 0 or data_len < 0:
                self._parse(data, pos)  # raises the error
            if n - pos < total:
                fields = (little, stype, sender, num_groups, data_len, extra, total)
                self._start(data[pos : pos + HEADER_SIZE], fields, out)
                self._fill(data, pos + HEADER_SIZE, out)
                return
            if relay is not None and little:
                frame = relay(data, pos, total, stype, sender, num_groups)
                if frame is not None:
                    out.append(frame)
                    pos += total
                    self.offset += total
                    continue
            goff = pos + HEADER_SIZE
            doff = goff + extra + GROUP_FIELD * num_groups
            out.append(
                build(
                    data,
                    pos,
                    little,
                    stype,
                    sender,
                    num_groups,
                    data_len,
                    data,
                    goff,
                    data[doff : doff + data_len],
                )
            )
            pos += total
            self.offset += total
        if pos < n:
            self._head += memoryview(data)[pos:]
            self.staged += n - pos

    def _start(self, hbuf: bytes, fields: tuple[Any, ...], out: list[Any]) -> None:
        """Begin collecting the body of the message whose header is ``hbuf``."""
        _little, _stype, _sender, num_groups, data_len, extra, total = fields
        self._hdr = (hbuf, *fields)
        self._pneed = extra + GROUP_FIELD * num_groups
        self._dneed = data_len
        if total == HEADER_SIZE:
            self._finish(out)

    def _add(self, parts: list[Any], data: bytes, pos: int, take: int) -> None:
        if take >= _SMALL_PIECE:
            parts.append(data if take == len(data) else memoryview(data)[pos : pos + take])
            return
        piece = memoryview(data)[pos : pos + take]
        if parts and type(parts[-1]) is bytearray:
            parts[-1] += piece
        else:
            parts.append(bytearray(piece))
        self.staged += take

    def _fill(self, data: bytes, pos: int, out: list[Any]) -> int:
        """Add ``data[pos:]`` to the message being collected; return the new position."""
        n = len(data)
        if self._pneed:
            take = min(self._pneed, n - pos)
            if take:
                self._add(self._prefix, data, pos, take)
                self._pneed -= take
                pos += take
            if self._pneed:
                return pos
        if self._dneed:
            take = min(self._dneed, n - pos)
            if take:
                self._add(self._data, data, pos, take)
                self._dneed -= take
                pos += take
            if self._dneed:
                return pos
        self._finish(out)
        return pos

    def _finish(self, out: list[Any]) -> None:
        assert self._hdr is not None
        hbuf, little, stype, sender, num_groups, data_len, extra, total = self._hdr
        relay = self._relay
        if relay is not None and little:
            # One join of the whole message: forwarded as is, it is copied only once.
            whole = b"".join([hbuf, *self._prefix, *self._data])
            self._prefix = []
            self._data = []
            self._hdr = None
            frame = relay(whole, 0, total, stype, sender, num_groups)
            if frame is None:
                doff = HEADER_SIZE + extra + GROUP_FIELD * num_groups
                frame = self._build(
                    whole,
                    0,
                    little,
                    stype,
                    sender,
                    num_groups,
                    data_len,
                    whole,
                    HEADER_SIZE,
                    whole[doff:],
                )
            out.append(frame)
            self.offset += total
            return
        prefix = _join(self._prefix)
        payload = _join(self._data)
        self._prefix = []
        self._data = []
        self._hdr = None
        out.append(
            self._build(hbuf, 0, little, stype, sender, num_groups, data_len, prefix, 0, payload)
        )
        self.offset += total


class ClientDecoder:
    """Decodes the daemon -> client stream of one connection.

    ``version`` is the library version the client announced: it decides whether an
    auth list comes and whether the accept record carries a patch version. Frames
    larger than ``max_frame`` bytes raise :class:`WireError` as soon as their header is
    seen, before anything is buffered for them.
    """

    def __init__(
        self,
        version: Sequence[int] = LIBRARY_VERSION,
        *,
        max_frame: int = DEFAULT_MAX_INCOMING,
    ) -> None:
        self._version = _version_number(version)
        self._state = "auth" if self._version >= 31600 else "accept"
        self._hs = bytearray()
        self._offset = 0
        self._max_frame = max_frame
        self._failed: WireError | None = None
        self._messages = _MessageStream(self._message, self._check, old_type_field=True)

    @property
    def established(self) -> bool:
        """True once the accept record has been decoded."""
        return self._state == "messages"

    @property
    def buffered(self) -> int:
        """Bytes held for a unit that is not complete yet."""
        if self._state == "messages":
            return self._messages.buffered
        return len(self._hs)

    @property
    def staged_bytes(self) -> int:
        """Message bytes copied into staging buffers so far (a diagnostic).

        Frames cut by chunk boundaries stage their tiny pieces; big pieces are kept by
        reference. Whatever the chunking, this never exceeds the bytes fed: no buffer
        is ever re-copied as it grows.
        """
        return self._messages.staged

    def feed(self, data: bytes) -> list[ClientFrame]:
        """Decode ``data`` (any chunk of the stream); return the frames it completed.

        Raises :class:`WireError` when the stream breaks the protocol; its ``frames``
        are the frames decoded from ``data`` before the bad unit. After a
        :class:`HandshakeRejected` the daemon closes: later bytes are ignored.
        """
        if self._state == "messages":
            return self._messages.feed(data)  # type: ignore[no-any-return]
        if self._failed is not None:
            raise WireError("the stream already failed to decode", self._failed.offset)
        if self._state == "closed":
            return []
        out: list[ClientFrame] = []
        try:
            self._hs += data
            while self._state in ("auth", "accept") and self._hs:
                frame, used = self._handshake_unit(self._hs)
                if frame is None:
                    return out
                out.append(frame)
                self._offset += used
                del self._hs[:used]
            if self._state == "messages" and self._hs:
                rest = bytes(self._hs)
                self._hs.clear()
                out.extend(self._messages.feed(rest))
        except WireError as err:
            err.frames = out + err.frames
            self._failed = err
            raise
        return out

    def _handshake_unit(self, buf: bytearray) -> tuple[ClientFrame | None, int]:
        code = _signed8(buf[0])
        if code < 0:
            # libspread reads the auth-list length and the accept code as signed chars:
            # negative is a reject code, and the daemon closes after it (section 5.3).
            self._state = "closed"
            return HandshakeRejected(code), 1
        if self._state == "auth":
            if code > MAX_AUTH_LIST:
                raise WireError(f"auth list length {code} exceeds {MAX_AUTH_LIST}", self._offset)
            if len(buf) < 1 + code:
                return None, 0
            methods = tuple(bytes(buf[1 : 1 + code]).decode("ascii", "replace").split())
            self._state = "accept"
            return AuthList(methods), 1 + code
        if code != RejectCode.ACCEPT_SESSION:
            raise WireError(f"unexpected accept code {code}", self._offset)
        nver = 3 if self._version >= 31500 else 2
        if len(buf) < 2 + nver:
            return None, 0
        glen = buf[1 + nver]
        version = tuple(buf[1 : 1 + nver])
        if glen > MAX_GROUP_NAME or any(v > 127 for v in version):
            # libspread refuses these (CONNECTION_CLOSED): not a daemon's accept record.
            raise WireError(
                f"accept record with version {version} and a {glen}-byte private group",
                self._offset,
            )
        if len(buf) < 2 + nver + glen:
            return None, 0
        group = bytes(buf[2 + nver : 2 + nver + glen]).decode("latin-1")
        self._state = "messages"
        self._messages.offset = self._offset + 2 + nver + glen
        return Accepted(version, group), 2 + nver + glen

    def _check(
        self, stype: int, sender: bytes, num_groups: int, hint: int, data_len: int, total: int
    ) -> None:
        if total > self._max_frame:
            raise WireError(
                f"frame of {total} bytes exceeds the limit of {self._max_frame}",
                self._messages.offset,
            )

    def _message(
        self,
        hbuf: bytes,
        hpos: int,
        little: bool,
        stype: int,
        sender: bytes,
        num_groups: int,
        data_len: int,
        gbuf: bytes,
        goff: int,
        payload: bytes,
    ) -> ClientFrame:
        # The order of the tests is libspread's: REJECT_MESS first, then any service
        # bit makes a regular message, then the membership bits.
        sender_name = _name_cache.get(sender) or _name(sender)
        if stype & REJECT_MESS:
            (old_type,) = (_U32_LE if little else _U32_BE).unpack_from(gbuf, goff)
            mess_type, _ = _hint_mess_type(hbuf, hpos + 40)
            return RejectMessage(
                stype & ~ENDIAN_MARKER,
                old_type & ~ENDIAN_MARKER,
                sender_name,
                _groups(gbuf, goff + 4, num_groups),
                mess_type,
                payload,
            )
        stype &= ~ENDIAN_MARKER
        if stype & REGULAR_MESS:
            # _hint_mess_type, inlined: this runs once per message received.
            if hbuf[hpos + 40] & 0x80 and hbuf[hpos + 43] & 0x80:
                mess_type = hbuf[hpos + 41] | hbuf[hpos + 42] << 8
                big_endian = False
            else:
                mess_type = hbuf[hpos + 41] << 8 | hbuf[hpos + 42]
                big_endian = True
            if mess_type & 0x8000:
                mess_type -= 0x10000
            if num_groups == 1:  # the common case, without a call
                field = gbuf[goff : goff + GROUP_FIELD]
                dests = _one_group.get(field) or _one_group_of(field)
            else:
                dests = _groups(gbuf, goff, num_groups)
            return _new(  # type: ignore[no-any-return]
                RegularMessage, (stype, sender_name, dests, mess_type, payload, big_endian)
            )
        if stype & MEMBERSHIP_MESS:
            return self._membership(little, stype, sender_name, gbuf, goff, num_groups, payload)
        raise WireError(
            f"daemon sent a message of unknown type 0x{stype:08x}", self._messages.offset
        )

    def _membership(
        self,
        little: bool,
        stype: int,
        group: str,
        gbuf: bytes,
        goff: int,
        num_groups: int,
        body: bytes,
    ) -> MembershipMessage:
        offset = self._messages.offset
        if stype & REG_MEMB_MESS:
            return self._regular_membership(little, stype, group, gbuf, goff, num_groups, body)
        if stype & TRANSITION_MESS:
            gid = None
            if len(body) >= 12:
                gid = GroupId(*(_GROUP_ID_LE if little else _GROUP_ID_BE).unpack_from(body))
            return MembershipMessage(stype, group, 0, gid, is_transition=True)
        if stype & MEMBERSHIP_MESS == CAUSED_BY_LEAVE:
            # CAUSED_BY_LEAVE alone: the notice to the member that left (section 5.7).
            return MembershipMessage(stype, group, CAUSED_BY_LEAVE, None, is_self_leave=True)
        raise WireError(f"membership notice of unknown type 0x{stype:08x}", offset)

    def _regular_membership(
        self,
        little: bool,
        stype: int,
        group: str,
        gbuf: bytes,
        goff: int,
        num_groups: int,
        body: bytes,
    ) -> MembershipMessage:
        offset = self._messages.offset
        if len(body) < 20:
            raise WireError(f"membership body of {len(body)} bytes is shorter than 20", offset)
        d0, d1, d2, nsets, local_off = (_MEMB_HEAD_LE if little else _MEMB_HEAD_BE).unpack_from(
            body
        )
        u32 = _U32_LE if little else _U32_BE
        sets: list[tuple[str, ...]] = []
        local = -1
        cur = 20
        end = len(body)
        # Each set takes at least 4 bytes, so a forged count cannot loop past the body.
        for _ in range(nsets):
            if cur + 4 > end:
                raise WireError("membership body: vs-set count runs past the data", offset)
            if cur - 20 == local_off:
                local = len(sets)
            (count,) = u32.unpack_from(body, cur)
            if cur + 4 + GROUP_FIELD * count > end:
                raise WireError(
                    f"membership body: vs-set of {count} members runs past the data", offset
                )
            sets.append(_groups(body, cur + 4, count))
            cur += 4 + GROUP_FIELD * count
        if local < 0:
            if nsets or local_off:
                raise WireError(
                    f"membership body: local vs-set offset {local_off} is not a set's start",
                    offset,
                )
            local = 0
        cause = stype & CAUSE_MASK
        changed = None
        if cause & (CAUSED_BY_JOIN | CAUSED_BY_LEAVE | CAUSED_BY_DISCONNECT) and sets and sets[0]:
            changed = sets[0][0]
        return MembershipMessage(
            stype,
            group,
            cause,
            GroupId(d0, d1, d2),
            _groups(gbuf, goff, num_groups),
            tuple(sets),
            local,
            changed,
        )


class DaemonDecoder:
    """Decodes the client -> daemon stream of one connection, as the real daemon does.

    The handshake follows the real daemon's one-read rules (section 5.3): pass each
    socket read to :meth:`feed` as it came. The first read must hold the whole connect
    record (otherwise :class:`HandshakeError` with ``reject_code=None``: the daemon
    closes silently); the name is read with one read of up to 10 bytes, so bytes
    pipelined after a name shorter than 10 make it illegal; the 90-byte auth choice
    must come in one read and name only methods of ``auth_methods`` (None: any).
    Handshake refusals raise :class:`HandshakeError` with the code the daemon answers.

    After :meth:`accepted`, messages are validated by the daemon's header rules
    (section 5.6): any violation raises :class:`WireError`, and the daemon drops the
    session. With ``strict_size`` (the default) messages the real daemon would accept
    but then abort on (the upstream size bug, section 5.10) are refused too.
    """

    def __init__(
        self,
        *,
        strict_size: bool = True,
        auth_methods: Sequence[str] | None = DEFAULT_AUTH_METHODS,
        relay: bool = False,
    ) -> None:
        self._state = "connect"
        self._request: ConnectRequest | None = None
        self._pending = b""
        self._sender = b""
        self._sender_str = ""
        self._sender_field = b""
        self._offset = 0
        self._strict_size = strict_size
        self._auth_methods = None if auth_methods is None else frozenset(auth_methods)
        self._failed: WireError | None = None
        self._messages = _MessageStream(
            self._message,
            self._check_header,
            old_type_field=False,
            relay=self._relay if relay else None,
        )

    @property
    def request(self) -> ConnectRequest | None:
        """The connect record, once decoded."""
        return self._request

    @property
    def buffered(self) -> int:
        """Bytes held for a unit that is not complete yet (or not yet wanted)."""
        if self._state == "messages":
            return self._messages.buffered
        return len(self._pending)

    @property
    def staged_bytes(self) -> int:
        """Message bytes copied into staging buffers so far (see ClientDecoder's)."""
        return self._messages.staged

    def feed(self, data: bytes) -> list[DaemonFrame]:
        """Decode one read's worth of client bytes; return the frames it completed.

        Raises :class:`HandshakeError` or :class:`WireError` where the real daemon
        refuses the session; the exception's ``frames`` are those decoded from ``data``
        before the bad unit.
        """
        if self._state == "messages":
            return self._messages.feed(data)  # type: ignore[no-any-return]
        if self._failed is not None:
            raise WireError("the stream already failed to decode", self._failed.offset)
        try:
            if self._state == "connect":
                req, rest = self._connect(bytes(data))
                self._request = req
                self._state = "wait-accept"
                self._pending = rest
                return [req]
            if self._state == "auth":
                return self._auth(self._pending + data)
            # The daemon has not decided yet (expect_auth() / accepted()): the bytes stay
            # in its socket buffer, so keep them - within what one message may take.
            self._pending += data
            if len(self._pending) > HEADER_SIZE + LIBRARY_LIMIT:
                raise WireError(
                    "client sent too much before its session was accepted", self._offset
                )
            return []
        except WireError as err:
            self._failed = err
            raise

    def expect_auth(self) -> list[DaemonFrame]:
        """The daemon sent its auth list: the next read is the auth choice.

        Bytes already pipelined behind the connect record count as that read.
        """
        self._state = "auth"
        if self._pending:
            pending, self._pending = self._pending, b""
            try:
                return self._auth(pending)
            except WireError as err:
                self._failed = err
                raise
        return []

    def accepted(self, private_group: str | bytes) -> list[DaemonFrame]:
        """The session is accepted as ``private_group``; return frames already pipelined."""
        self._sender = to_bytes(private_group)
        self._sender_str = self._sender.decode("latin-1")
        self._sender_field = pad_name(self._sender)
        self._state = "messages"
        self._messages.offset = self._offset
        pending, self._pending = self._pending, b""
        return self._messages.feed(pending) if pending else []  # type: ignore[no-any-return]

    def _connect(self, data: bytes) -> tuple[ConnectRequest, bytes]:
        # Mirrors the daemon's one pass of non-blocking reads: a read that finds nothing
        # closes the connection silently; the version bytes are signed chars.
        if len(data) < 2:
            raise HandshakeError("connect record incomplete in its first read", None, 0)
        major, minor = _signed8(data[0]), _signed8(data[1])
        pos = 2
        patch = 0
        has_patch = major * 10000 + minor * 100 > 31400
        if has_patch:
            if len(data) < 3:
                raise HandshakeError("connect record incomplete in its first read", None, 2)
            patch = _signed8(data[2])
            pos = 3
        if major * 10000 + minor * 100 + patch < 30100:
            raise HandshakeError(
                f"client version {data[0]}.{data[1]} is older than 3.1",
                RejectCode.REJECT_VERSION,
                0,
            )
        if len(data) < pos + 2:
            raise HandshakeError("connect record incomplete in its first read", None, pos)
        flags = data[pos]
        name_len = _signed8(data[pos + 1])
        pos += 2
        if not 0 <= name_len <= MAX_PRIVATE_NAME:
            raise HandshakeError(
                f"private name length {name_len} outside 0..{MAX_PRIVATE_NAME}",
                RejectCode.REJECT_ILLEGAL_NAME,
                pos - 1,
            )
        if name_len:
            # One read of up to 10 bytes, which must return exactly name_len: nothing
            # there closes silently, too few or too many (pipelined bytes) is illegal.
            got = min(MAX_PRIVATE_NAME, len(data) - pos)
            if got == 0:
                raise HandshakeError("connect record incomplete in its first read", None, pos)
            if got != name_len:
                raise HandshakeError(
                    f"private name read returned {got} bytes, not {name_len}",
                    RejectCode.REJECT_ILLEGAL_NAME,
                    pos,
                )
        name = data[pos : pos + name_len]
        if not is_legal_name(name):
            raise HandshakeError(
                f"private name {name!r} has bytes outside 0x24..0x7E",
                RejectCode.REJECT_ILLEGAL_NAME,
                pos,
            )
        pos += name_len
        self._offset = pos
        version = (data[0], data[1], data[2]) if has_patch else (data[0], data[1])
        # The daemon tests `(int)flags % 2 == 1` and stores `(int)flags / 16` on a signed
        # char, with C's truncating division: 0x81 means membership off, priority -7.
        sflags = _signed8(flags)
        membership = sflags > 0 and sflags % 2 == 1
        request = ConnectRequest(
            version, membership, _c_div(sflags, 16), name.decode("latin-1"), flags
        )
        return request, data[pos:]

    def _auth(self, data: bytes) -> list[DaemonFrame]:
        if len(data) < AUTH_CHOICE_SIZE:
            raise HandshakeError(
                f"auth choice of {len(data)} bytes in one read; 90 are needed",
                RejectCode.REJECT_AUTH,
                self._offset,
            )
        # The daemon walks the slots until the first empty one, reading each as a C
        # string (which could run on into the next slot).
        methods: list[str] = []
        for i in range(AUTH_SLOTS):
            start = i * AUTH_SLOT
            if data[start] == 0:
                break
            end = data.find(b"\0", start, AUTH_CHOICE_SIZE)
            methods.append(data[start : AUTH_CHOICE_SIZE if end < 0 else end].decode("latin-1"))
        # No method at all is denied too: the daemon finds nothing to authenticate with.
        allowed = self._auth_methods
        if not methods or (allowed is not None and not allowed.issuperset(methods)):
            raise HandshakeError(
                f"auth methods {methods!r} not allowed", RejectCode.REJECT_AUTH, self._offset
            )
        self._offset += AUTH_CHOICE_SIZE
        self._pending = data[AUTH_CHOICE_SIZE:]
        self._state = "wait-accept"
        return [AuthChoice(tuple(methods))]

    def _check_header(
        self, stype: int, sender: bytes, num_groups: int, hint: int, data_len: int, total: int
    ) -> None:
        offset = self._messages.offset
        kinds = stype & (REGULAR_MESS | CONTROL_MESS)
        if kinds == 0 or kinds & (kinds - 1):
            raise WireError(
                f"type 0x{stype:08x} must have exactly one service or control bit", offset
            )
        # The daemon forces byte 31 to NUL and compares the name up to the first NUL.
        if sender != self._sender_field and _field_name(sender[:31]) != self._sender:
            raise WireError(
                f"sender {_field_name(sender[:31])!r} is not this session's private group "
                f"{self._sender!r}",
                offset,
            )
        if not 0 <= num_groups <= MAX_GROUPS:
            raise WireError(f"{num_groups} groups; 0..{MAX_GROUPS} allowed", offset)
        # 0x80ffff80 reads the same in both byte orders, so the hint's order is moot.
        if hint & ~_HINT_ALLOWED:
            raise WireError(f"hint 0x{hint:08x} has bits outside 0x80ffff80", offset)
        if not 0 <= data_len <= LIBRARY_LIMIT or data_len + GROUP_FIELD * num_groups > (
            DAEMON_CHECK_LIMIT
        ):
            raise WireError(
                f"message of {data_len} bytes to {num_groups} groups exceeds the daemon limit",
                offset,
            )
        if self._strict_size and total > MAX_MESSAGE_BYTES:
            raise WireError(
                f"message of {total} bytes is over {MAX_MESSAGE_BYTES}: a real 5.0.1 daemon "
                "would abort on it, so the session is dropped",
                offset,
            )

    def _message(
        self,
        hbuf: bytes,
        hpos: int,
        little: bool,
        stype: int,
        sender: bytes,
        num_groups: int,
        data_len: int,
        gbuf: bytes,
        goff: int,
        payload: bytes,
    ) -> DaemonFrame:
        stype &= ~ENDIAN_MARKER
        if stype & CONTROL_MESS:
            if stype & KILL_MESS:
                return _KILL
            # Only the first group of a join or leave is used (section 5.6).
            group = _name(gbuf[goff : goff + GROUP_FIELD]) if num_groups else ""
            return Join(group) if stype & JOIN_MESS else Leave(group)
        mess_type, _ = _hint_mess_type(hbuf, hpos + 40)
        return _new(  # type: ignore[no-any-return]
            Multicast,
            (
                stype,
                self._sender_str,
                _groups(gbuf, goff, num_groups),
                mess_type,
                payload,
                bytes(hbuf[hpos + 40 : hpos + 44]),
            ),
        )

    def _relay(
        self, buf: bytes, pos: int, total: int, stype: int, sender: bytes, num_groups: int
    ) -> Relay | None:
        """A :class:`Relay` for the message at ``buf[pos:pos + total]``, when it can be
        forwarded as it is (see Relay); None otherwise (it is then built as usual)."""
        if stype & _NOT_VERBATIM or sender != self._sender_field:
            return None
        goff = pos + HEADER_SIZE
        if num_groups == 1:
            blob = buf[goff : goff + GROUP_FIELD]
            if blob not in _canonical and canonical_field(blob) is None:
                return None
        else:
            blob = buf[goff : goff + GROUP_FIELD * num_groups]
            for i in range(0, GROUP_FIELD * num_groups, GROUP_FIELD):
                if canonical_field(blob[i : i + GROUP_FIELD]) is None:
                    return None
        wire = buf if pos == 0 and total == len(buf) else buf[pos : pos + total]
        return _new(Relay, (stype & ~ENDIAN_MARKER, blob, num_groups, wire))  # type: ignore[no-any-return]
