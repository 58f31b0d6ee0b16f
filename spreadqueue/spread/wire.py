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
  real daemon's header validation (section 5.6) and raises :class:`WireError` for a
  frame the real daemon would refuse.

Both are fed arbitrary chunks and copy each frame's bytes at most once.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Union

from .errors import HandshakeError, IllegalGroupName, MessageTooLong, WireError

__all__ = [
    "ServiceType",
    "RejectCode",
    "GroupId",
    "AuthList",
    "Accepted",
    "HandshakeRejected",
    "RegularMessage",
    "MembershipMessage",
    "RejectMessage",
    "ConnectRequest",
    "AuthChoice",
    "Multicast",
    "Join",
    "Leave",
    "Kill",
    "ClientDecoder",
    "DaemonDecoder",
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

_HEADER_LE = struct.Struct("<I32siIi")
_HEADER_BE = struct.Struct(">I32siIi")
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct(">I")
_GROUP_ID_LE = struct.Struct("<III")
_GROUP_ID_BE = struct.Struct(">III")
_MEMB_HEAD_LE = struct.Struct("<IIIII")
_MEMB_HEAD_BE = struct.Struct(">IIIII")
_ZERO32: Final = bytes(GROUP_FIELD)
_HINT_ALLOWED: Final = 0x80FFFF80


# --------------------------------------------------------------------------- names


def _legal_name_byte(b: int) -> bool:
    return 0x24 <= b <= 0x7E


def is_legal_name(name: bytes) -> bool:
    """True when every byte of ``name`` is in 0x24..0x7E (``$`` to ``~``)."""
    return all(0x24 <= b <= 0x7E for b in name)


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
    """Validate a group name as libspread's join/leave do: 1..31 bytes in 0x24..0x7E.

    Private group names (``#name#daemon``) are accepted too, since they are legal
    multicast destinations.
    """
    raw = to_bytes(name)
    if not raw:
        raise IllegalGroupName("a group name cannot be empty")
    if len(raw) > MAX_GROUP_NAME:
        raise IllegalGroupName(
            f"group name {raw!r} is {len(raw)} bytes; Spread allows at most {MAX_GROUP_NAME}"
        )
    if raw[0] == 0x23:  # '#': a private group, '#name#daemon'
        parts = raw.split(b"#")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise IllegalGroupName(f"private group name {raw!r} is not '#name#daemon'")
        if not (is_legal_name(parts[1]) and is_legal_name(parts[2])):
            raise IllegalGroupName(f"private group name {raw!r} has illegal bytes")
        return raw
    if not is_legal_name(raw):
        raise IllegalGroupName(
            f"group name {raw!r} has bytes outside '$'..'~' (no spaces, no '#')"
        )
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


_padded_cache: dict[bytes, bytes] = {}


def pad_name(name: bytes) -> bytes:
    """A name NUL-padded to the 32-byte wire field (cached: names repeat a lot)."""
    padded = _padded_cache.get(name)
    if padded is None:
        if len(name) > MAX_GROUP_NAME:
            raise IllegalGroupName(f"name {name!r} is longer than {MAX_GROUP_NAME} bytes")
        padded = name + _ZERO32[len(name) :]
        if len(_padded_cache) < 65536:
            _padded_cache[name] = padded
    return padded


def _field_name(field: bytes) -> bytes:
    """The name in a 32-byte field: the bytes up to the first NUL (section 5.5)."""
    nul = field.find(b"\0")
    return field if nul < 0 else field[:nul]


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


@dataclass(frozen=True, slots=True)
class GroupId:
    """A group's view id: representative daemon, ring time stamp, per-group counter."""

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


@dataclass(frozen=True, slots=True)
class RegularMessage:
    """Daemon -> client: a data message."""

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


@dataclass(frozen=True, slots=True)
class MembershipMessage:
    """Daemon -> client: a membership notice for ``group``.

    ``cause`` is one CAUSED_BY_* bit (0 for a transitional notice). ``members`` is
    the group's current member list (empty for transitional and self-leave notices).
    ``vs_sets`` are the virtual-synchrony sets; ``local_vs_set`` indexes the
    receiver's own set. ``changed_member`` is the member that joined, left or
    disconnected (None for network changes).
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


@dataclass(frozen=True, slots=True)
class RejectMessage:
    """Daemon -> client: one of our messages, returned as rejected (section 5.7)."""

    service_type: int
    old_type: int
    sender: str
    groups: tuple[str, ...]
    mess_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """Client -> daemon: the connect record."""

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
    """Client -> daemon: the authentication methods chosen (up to three)."""

    methods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Multicast:
    """Client -> daemon: a data message to ``groups``.

    ``hint`` is the raw 32-bit hint as the client wrote it (the daemon relays it
    unconverted, so receivers can tell the sender's byte order).
    """

    service_type: int
    sender: str
    groups: tuple[str, ...]
    mess_type: int
    data: bytes
    hint: bytes = b"\x80\x00\x00\x80"


@dataclass(frozen=True, slots=True)
class Join:
    """Client -> daemon: join ``group``."""

    group: str


@dataclass(frozen=True, slots=True)
class Leave:
    """Client -> daemon: leave ``group``."""

    group: str


@dataclass(frozen=True, slots=True)
class Kill:
    """Client -> daemon: disconnect."""


ClientFrame = Union[AuthList, Accepted, HandshakeRejected, RegularMessage, MembershipMessage, RejectMessage]
DaemonFrame = Union[ConnectRequest, AuthChoice, Multicast, Join, Leave, Kill]


def _version_number(version: Sequence[int]) -> int:
    major = version[0] if len(version) > 0 else 0
    minor = version[1] if len(version) > 1 else 0
    patch = version[2] if len(version) > 2 else 0
    return major * 10000 + minor * 100 + patch


def _signed8(b: int) -> int:
    return b - 256 if b > 127 else b


def _signed16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


def _is_little_endian(b0: int, b3: int) -> bool:
    # Section 5.2: the marker 0x80000080 reads the same in both orders, so test the
    # raw bytes: little-endian iff byte 0 and byte 3 both have bit 7 set.
    return bool(b0 & 0x80 and b3 & 0x80)


def _latin1(raw: bytes) -> str:
    return raw.decode("latin-1")


# --------------------------------------------------------------------------- encoders


def encode_connect(
    name: str | bytes | None,
    *,
    membership: bool = True,
    priority: int = 0,
    version: Sequence[int] = LIBRARY_VERSION,
) -> bytes:
    """The connect record, as libspread 5.0.1 writes it (section 5.3, step 1)."""
    raw = b"" if name is None else check_private_name(name)
    flags = (0x01 if membership else 0x00) | (0x10 if priority > 0 else 0x00)
    head = bytes(version[:2])
    if _version_number(version) > 31400:
        head += bytes(version[2:3] or b"\0")
    return head + bytes((flags, len(raw))) + raw


def encode_auth_list(methods: Iterable[str] = ("NULL",)) -> bytes:
    """The daemon's auth list: length byte, then each method followed by a space."""
    body = b"".join(m.encode("ascii") + b" " for m in methods)
    if len(body) > MAX_AUTH_LIST:
        raise ValueError("auth method list longer than 90 bytes")
    return bytes((len(body),)) + body


def encode_auth_choice(methods: Sequence[str] = ("NULL",)) -> bytes:
    """The client's 90-byte auth choice: three NUL-padded 30-byte slots."""
    if len(methods) > AUTH_SLOTS:
        raise ValueError("at most three auth methods")
    out = bytearray(AUTH_CHOICE_SIZE)
    for i, method in enumerate(methods):
        raw = method.encode("ascii")
        if len(raw) >= AUTH_SLOT:
            raise ValueError(f"auth method name {method!r} too long")
        out[i * AUTH_SLOT : i * AUTH_SLOT + len(raw)] = raw
    return bytes(out)


def encode_accept(
    private_group: str | bytes,
    *,
    client_version: Sequence[int] = LIBRARY_VERSION,
    daemon_version: Sequence[int] = DAEMON_VERSION,
) -> bytes:
    """The daemon's accept record (section 5.3, step 4)."""
    raw = to_bytes(private_group)
    version = bytes(daemon_version[:2])
    if _version_number(client_version) >= 31500:
        version += bytes(daemon_version[2:3])
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
    service_type: int, sender: bytes, num_groups: int, hint: int, data_len: int
) -> bytes:
    """A 48-byte little-endian header with the marker set in ``type``."""
    return _HEADER_LE.pack(
        service_type | ENDIAN_MARKER, pad_name(sender), num_groups, hint, data_len
    )


def encode_message(
    service_type: int,
    sender: str | bytes,
    groups: Sequence[str | bytes],
    data: bytes = b"",
    mess_type: int = 0,
) -> bytes:
    """A whole client -> daemon multicast (header + groups + data), little-endian.

    Enforces the real daemon's limits: at most 100 groups and
    48 + 32 * groups + data <= 143200 (:data:`MAX_MESSAGE_BYTES`).
    """
    check_message_size(len(groups), len(data))
    names = b"".join(pad_name(to_bytes(g)) for g in groups)
    return (
        encode_header(service_type, to_bytes(sender), len(groups), encode_hint(mess_type), len(data))
        + names
        + data
    )


def _encode_control(kind: int, sender: str | bytes, group: str | bytes) -> bytes:
    return encode_header(kind, to_bytes(sender), 1, ENDIAN_MARKER, 0) + pad_name(to_bytes(group))


def encode_join(sender: str | bytes, group: str | bytes) -> bytes:
    """JOIN_MESS for ``group`` from the session whose private group is ``sender``."""
    return _encode_control(JOIN_MESS, sender, check_group_name(group))


def encode_leave(sender: str | bytes, group: str | bytes) -> bytes:
    """LEAVE_MESS for ``group``."""
    return _encode_control(LEAVE_MESS, sender, check_group_name(group))


def encode_kill(sender: str | bytes) -> bytes:
    """KILL_MESS: the disconnect message (its one group is the sender's private group)."""
    return _encode_control(KILL_MESS, sender, sender)


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
    head = _HEADER_LE.pack(service_type | ENDIAN_MARKER, pad_name(sender), num_groups, 0, len(data))
    return b"".join((head[:40], hint, head[44:], groups_blob, data))


def encode_membership(
    service_type: int,
    group: str | bytes,
    members: Sequence[str | bytes],
    group_id: GroupId,
    vs_sets: Sequence[Sequence[str | bytes]],
    local_vs_set: int = 0,
) -> bytes:
    """A daemon -> client regular membership notice (section 5.7)."""
    body = [_GROUP_ID_LE.pack(group_id.daemon_id, group_id.time, group_id.counter)]
    offsets = []
    offset = 0
    sets = []
    for vs in vs_sets:
        offsets.append(offset)
        chunk = _U32_LE.pack(len(vs)) + b"".join(pad_name(to_bytes(m)) for m in vs)
        sets.append(chunk)
        offset += len(chunk)
    body.append(_U32_LE.pack(len(vs_sets)))
    body.append(_U32_LE.pack(offsets[local_vs_set] if offsets else 0))
    body.extend(sets)
    data = b"".join(body)
    names = b"".join(pad_name(to_bytes(m)) for m in members)
    head = encode_header(service_type, to_bytes(group), len(members), ENDIAN_MARKER, len(data))
    return head + names + data


def encode_transition(group: str | bytes, group_id: GroupId) -> bytes:
    """A daemon -> client TRANSITION_MESS: the group's previous id as its body."""
    data = _GROUP_ID_LE.pack(group_id.daemon_id, group_id.time, group_id.counter)
    return encode_header(TRANSITION_MESS, to_bytes(group), 0, ENDIAN_MARKER, len(data)) + data


def encode_self_leave(group: str | bytes) -> bytes:
    """A daemon -> client self-leave notice: CAUSED_BY_LEAVE alone, no body."""
    return encode_header(CAUSED_BY_LEAVE, to_bytes(group), 0, ENDIAN_MARKER, 0)


# --------------------------------------------------------------------------- decoders


class _FrameBuffer:
    """Accumulates chunks until ``need`` bytes are there; copies each frame once."""

    __slots__ = ("_buf", "_need", "offset")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 0
        #: stream offset of the first byte not yet consumed
        self.offset = 0

    def take(self, data: bytes) -> bytes | None:
        """Append ``data``; return the pending bytes once ``need`` are there."""
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return None
            joined = bytes(self._buf)
            self._buf.clear()
            return joined
        if len(data) < self._need:
            self._buf += data
            return None
        return data

    def keep(self, rest: memoryview | bytes, need: int) -> None:
        """Keep the unconsumed ``rest`` and wait for ``need`` bytes in all."""
        self._buf += rest
        self._need = need

    @property
    def pending(self) -> int:
        return len(self._buf)


_HeaderCheck = Callable[[int, bytes, int, int, int, int, int], None]


class _MessageStream:
    """Shared header parsing of the message phase of both directions."""

    def __init__(self, max_frame: int, check: _HeaderCheck | None = None) -> None:
        self._frames = _FrameBuffer()
        self._max_frame = max_frame
        self._check = check or self._check_size

    def _messages(self, data: bytes, handle) -> list:  # type: ignore[no-untyped-def]
        """Split ``data`` into whole messages and hand each to ``handle``."""
        chunk = self._frames.take(data)
        if chunk is None:
            return []
        out: list = []
        view = memoryview(chunk)
        n = len(chunk)
        pos = 0
        base = self._frames.offset
        try:
            while n - pos >= HEADER_SIZE:
                little = _is_little_endian(chunk[pos], chunk[pos + 3])
                hdr = _HEADER_LE if little else _HEADER_BE
                stype, sender, num_groups, hint, data_len = hdr.unpack_from(chunk, pos)
                if num_groups < 0 or data_len < 0:
                    raise WireError(
                        f"negative count in header (groups={num_groups}, data_len={data_len})",
                        base + pos,
                    )
                extra = 4 if stype & REJECT_MESS else 0
                total = HEADER_SIZE + extra + GROUP_FIELD * num_groups + data_len
                self._check(stype, sender, num_groups, hint, data_len, total, base + pos)
                if n - pos < total:
                    break
                out.append(handle(chunk, view, pos, little, stype, sender, num_groups, hint, data_len, extra))
                pos += total
        except WireError:
            self._frames.offset = base + pos
            raise
        need = HEADER_SIZE if n - pos < HEADER_SIZE else total
        self._frames.offset = base + pos
        if pos < n:
            self._frames.keep(view[pos:], need)
        else:
            self._frames.keep(b"", HEADER_SIZE)
        return out

    def _check_size(
        self, stype: int, sender: bytes, num_groups: int, hint: int, data_len: int, total: int, offset: int
    ) -> None:
        if total > self._max_frame:
            raise WireError(
                f"frame of {total} bytes exceeds the limit of {self._max_frame}", offset
            )


def _groups(chunk: bytes, start: int, count: int) -> tuple[str, ...]:
    out = []
    for i in range(start, start + GROUP_FIELD * count, GROUP_FIELD):
        end = chunk.find(b"\0", i, i + GROUP_FIELD)
        out.append(chunk[i : (i + GROUP_FIELD if end < 0 else end)].decode("latin-1"))
    return tuple(out)


class ClientDecoder:
    """Decodes the daemon -> client stream of one connection.

    ``version`` is the library version the client announced: it decides whether an
    auth list comes and whether the accept record carries a patch version.
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
        self._messages = _MessageStream(max_frame)

    @property
    def established(self) -> bool:
        """True once the accept record has been decoded."""
        return self._state == "messages"

    def feed(self, data: bytes) -> list[ClientFrame]:
        """Decode ``data`` (any chunk of the stream); return the frames it completed."""
        if self._state == "messages":
            return self._messages._messages(data, self._message)
        if self._state == "closed":
            return []
        self._hs += data
        out: list[ClientFrame] = []
        while self._state in ("auth", "accept") and self._hs:
            frame, used = self._handshake_unit(bytes(self._hs))
            if frame is None:
                return out
            out.append(frame)
            self._offset += used
            del self._hs[:used]
        if self._state == "messages" and self._hs:
            rest = bytes(self._hs)
            self._hs.clear()
            self._messages._frames.offset = self._offset
            out.extend(self._messages._messages(rest, self._message))
        return out

    def _handshake_unit(self, buf: bytes) -> tuple[ClientFrame | None, int]:
        code = _signed8(buf[0])
        if code < 0:
            self._state = "closed"
            return HandshakeRejected(code), 1
        if self._state == "auth":
            if code > MAX_AUTH_LIST:
                raise WireError(f"auth list length {code} exceeds {MAX_AUTH_LIST}", self._offset)
            if len(buf) < 1 + code:
                return None, 0
            methods = tuple(buf[1 : 1 + code].decode("ascii", "replace").split())
            self._state = "accept"
            return AuthList(methods), 1 + code
        # accept record
        if code != RejectCode.ACCEPT_SESSION:
            raise WireError(f"unexpected accept code {code}", self._offset)
        nver = 3 if self._version >= 31500 else 2
        if len(buf) < 2 + nver:
            return None, 0
        glen = buf[1 + nver]
        if len(buf) < 2 + nver + glen:
            return None, 0
        version = tuple(buf[1 : 1 + nver])
        group = buf[2 + nver : 2 + nver + glen].decode("latin-1")
        self._state = "messages"
        return Accepted(version, group), 2 + nver + glen

    def _message(  # type: ignore[no-untyped-def]
        self, chunk, view, pos, little, stype, sender, num_groups, hint, data_len, extra
    ) -> ClientFrame:
        goff = pos + HEADER_SIZE + extra
        doff = goff + GROUP_FIELD * num_groups
        sender_name = _field_name(sender).decode("latin-1")
        if stype & REJECT_MESS:
            u32 = _U32_LE if little else _U32_BE
            (old_type,) = u32.unpack_from(chunk, pos + HEADER_SIZE)
            hint_le = _is_little_endian(chunk[pos + 40], chunk[pos + 43])
            mt = self._mess_type(chunk, pos, hint_le)
            return RejectMessage(
                stype & ~ENDIAN_MARKER,
                old_type & ~ENDIAN_MARKER,
                sender_name,
                _groups(chunk, goff, num_groups),
                mt,
                bytes(view[doff : doff + data_len]),
            )
        stype &= ~ENDIAN_MARKER
        if stype & REGULAR_MESS and not stype & MEMBERSHIP_MESS:
            hint_le = _is_little_endian(chunk[pos + 40], chunk[pos + 43])
            return RegularMessage(
                stype,
                sender_name,
                _groups(chunk, goff, num_groups),
                self._mess_type(chunk, pos, hint_le),
                bytes(view[doff : doff + data_len]),
                not hint_le,
            )
        if stype & MEMBERSHIP_MESS:
            return self._membership(chunk, pos, little, stype, sender_name, goff, num_groups, doff, data_len)
        raise WireError(f"daemon sent a message of unknown type 0x{stype:08x}", self._messages._frames.offset + pos)

    @staticmethod
    def _mess_type(chunk: bytes, pos: int, hint_le: bool) -> int:
        u32 = _U32_LE if hint_le else _U32_BE
        (hint,) = u32.unpack_from(chunk, pos + 40)
        return _signed16((hint >> 8) & 0xFFFF)

    def _membership(  # type: ignore[no-untyped-def]
        self, chunk, pos, little, stype, group, goff, num_groups, doff, data_len
    ) -> MembershipMessage:
        offset = self._messages._frames.offset + pos
        if stype & TRANSITION_MESS:
            gid = None
            if data_len >= 12:
                gid = GroupId(*(_GROUP_ID_LE if little else _GROUP_ID_BE).unpack_from(chunk, doff))
            return MembershipMessage(stype, group, 0, gid, is_transition=True)
        if not stype & REG_MEMB_MESS:
            # CAUSED_BY_LEAVE alone: the notice to the member that left (section 5.7).
            return MembershipMessage(stype, group, stype & CAUSE_MASK, None, is_self_leave=True)
        members = _groups(chunk, goff, num_groups)
        if data_len < 20:
            raise WireError(f"membership body of {data_len} bytes is shorter than 20", offset)
        head = _MEMB_HEAD_LE if little else _MEMB_HEAD_BE
        d0, d1, d2, nsets, local_off = head.unpack_from(chunk, doff)
        u32 = _U32_LE if little else _U32_BE
        sets: list[tuple[str, ...]] = []
        local = 0
        cur = doff + 20
        end = doff + data_len
        for _ in range(nsets):
            if cur + 4 > end:
                raise WireError("membership body: vs-set count runs past the data", offset)
            if cur - doff - 20 == local_off:
                local = len(sets)
            (count,) = u32.unpack_from(chunk, cur)
            if cur + 4 + GROUP_FIELD * count > end:
                raise WireError(
                    f"membership body: vs-set of {count} members runs past the data", offset
                )
            sets.append(_groups(chunk, cur + 4, count))
            cur += 4 + GROUP_FIELD * count
        cause = stype & CAUSE_MASK
        changed = None
        if cause & (CAUSED_BY_JOIN | CAUSED_BY_LEAVE | CAUSED_BY_DISCONNECT) and sets and sets[0]:
            changed = sets[0][0]
        return MembershipMessage(
            stype,
            group,
            cause,
            GroupId(d0, d1, d2),
            members,
            tuple(sets),
            local,
            changed,
        )


class DaemonDecoder:
    """Decodes the client -> daemon stream of one connection, as the real daemon does.

    The handshake follows the real daemon's one-read rules (section 5.3): pass each
    socket read to :meth:`feed` as it came. The connect record must be complete in the
    first read (else :class:`HandshakeError` with ``reject_code=None``: close silently);
    the name is read with one read of up to 10 bytes, so bytes pipelined after a name
    shorter than 10 make it illegal; the 90-byte auth choice must come in one read.
    After :meth:`accepted`, messages are validated by the daemon's header rules
    (section 5.6): any violation raises :class:`WireError`, and the daemon drops the
    session. Messages the real daemon would accept but then abort on (the upstream size
    bug) are refused here too.
    """

    def __init__(self, *, strict_size: bool = True) -> None:
        self._state = "connect"
        self._request: ConnectRequest | None = None
        self._pending = b""
        self._sender = b""
        self._offset = 0
        self._strict_size = strict_size
        self._messages = _MessageStream(HEADER_SIZE + LIBRARY_LIMIT, self._check_header)

    @property
    def request(self) -> ConnectRequest | None:
        """The connect record, once decoded."""
        return self._request

    def feed(self, data: bytes) -> list[DaemonFrame]:
        """Decode one read's worth of client bytes; return the frames it completed."""
        if self._state == "messages":
            return self._messages._messages(data, self._message)
        if self._state == "connect":
            req, rest = self._connect(data)
            self._request = req
            self._state = "wait-accept"
            self._pending = rest
            return [req]
        if self._state == "auth":
            return self._auth(self._pending + data)
        # waiting for the daemon to decide (accepted() / expect_auth()): keep bytes
        self._pending += data
        return []

    def expect_auth(self) -> list[DaemonFrame]:
        """The daemon sent its auth list: the next read is the auth choice.

        Bytes already pipelined behind the connect record count as that read.
        """
        self._state = "auth"
        if self._pending:
            pending, self._pending = self._pending, b""
            return self._auth(pending)
        return []

    def accepted(self, private_group: str | bytes) -> list[DaemonFrame]:
        """The session is accepted as ``private_group``; return frames already pipelined."""
        self._sender = to_bytes(private_group)
        self._state = "messages"
        self._messages._frames.offset = self._offset
        pending, self._pending = self._pending, b""
        return self._messages._messages(pending, self._message) if pending else []

    def _connect(self, data: bytes) -> tuple[ConnectRequest, bytes]:
        if len(data) < 2:
            raise HandshakeError("connect record incomplete in its first read", None, 0)
        major, minor = data[0], data[1]
        if major * 10000 + minor * 100 < 30100:
            raise HandshakeError(
                f"client version {major}.{minor} is older than 3.1", RejectCode.REJECT_VERSION, 0
            )
        pos = 2
        patch = 0
        if major * 10000 + minor * 100 > 31400:
            if len(data) < 3:
                raise HandshakeError("connect record incomplete in its first read", None, 2)
            patch = data[2]
            pos = 3
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
        got = min(MAX_PRIVATE_NAME, len(data) - pos) if name_len else 0
        if got < name_len:
            raise HandshakeError("connect record incomplete in its first read", None, pos)
        if got != name_len:
            # The daemon reads the name with one read of up to 10 bytes and demands
            # exactly name_len: pipelined bytes make the name illegal (trace c9).
            raise HandshakeError(
                "private name read returned more bytes than announced (pipelined auth?)",
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
        version = (major, minor, patch) if major * 10000 + minor * 100 > 31400 else (major, minor)
        membership = _signed8(flags) % 2 == 1
        return ConnectRequest(version, membership, flags >> 4, name.decode("latin-1"), flags), data[pos:]

    def _auth(self, data: bytes) -> list[DaemonFrame]:
        if len(data) < AUTH_CHOICE_SIZE:
            raise HandshakeError(
                f"auth choice of {len(data)} bytes in one read; 90 are needed",
                RejectCode.REJECT_AUTH,
                self._offset,
            )
        slots = [data[i : i + AUTH_SLOT] for i in range(0, AUTH_CHOICE_SIZE, AUTH_SLOT)]
        methods = tuple(_field_name(s).decode("latin-1") for s in slots)
        self._offset += AUTH_CHOICE_SIZE
        self._pending = data[AUTH_CHOICE_SIZE:]
        self._state = "wait-accept"
        return [AuthChoice(methods)]

    def _check_header(
        self, stype: int, sender: bytes, num_groups: int, hint: int, data_len: int, total: int, offset: int
    ) -> None:
        kinds = stype & (REGULAR_MESS | CONTROL_MESS)
        if kinds == 0 or kinds & (kinds - 1):
            raise WireError(
                f"type 0x{stype:08x} must have exactly one service or control bit", offset
            )
        name = _field_name(sender[:31])
        if name != self._sender:
            raise WireError(
                f"sender {name!r} is not this session's private group {self._sender!r}", offset
            )
        if num_groups > MAX_GROUPS:
            raise WireError(f"{num_groups} groups; at most {MAX_GROUPS}", offset)
        # hint is in the writer's order, like the rest of the header it came with.
        if hint & ~_HINT_ALLOWED:
            raise WireError(f"hint 0x{hint:08x} has bits outside 0x80ffff80", offset)
        if data_len > LIBRARY_LIMIT or data_len + GROUP_FIELD * num_groups > DAEMON_CHECK_LIMIT:
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

    def _message(  # type: ignore[no-untyped-def]
        self, chunk, view, pos, little, stype, sender, num_groups, hint, data_len, extra
    ) -> DaemonFrame:
        goff = pos + HEADER_SIZE
        stype &= ~ENDIAN_MARKER
        if stype & CONTROL_MESS:
            if stype & KILL_MESS:
                return Kill()
            first = _groups(chunk, goff, 1)[0] if num_groups else ""
            return Join(first) if stype & JOIN_MESS else Leave(first)
        doff = goff + GROUP_FIELD * num_groups
        return Multicast(
            stype,
            self._sender.decode("latin-1"),
            _groups(chunk, goff, num_groups),
            _signed16((hint >> 8) & 0xFFFF),
            bytes(view[doff : doff + data_len]),
            bytes(view[pos + 40 : pos + 44]),
        )
