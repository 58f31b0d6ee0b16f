"""Encoders: the bytes of every unit of the Spread client protocol, in both directions.

- What a client sends: :func:`encode_connect`, :func:`encode_auth_choice`,
  :func:`encode_message`, :func:`encode_join`, :func:`encode_leave`,
  :func:`encode_kill`, and :func:`encode_to_daemon` for any :data:`ToDaemon` frame.
- What a daemon sends: :func:`encode_auth_list`, :func:`encode_accept`,
  :func:`encode_reject`, :func:`encode_relay`, :func:`encode_membership`,
  :func:`encode_transition`, :func:`encode_self_leave`, :func:`encode_reject_message`,
  and :func:`encode_to_client` for any :data:`ToClient` frame.

Section numbers in this module refer to docs/spread-protocol.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import IllegalGroupName, IllegalService
from .constants import (
    AUTH_CHOICE_SIZE,
    AUTH_SLOT,
    AUTH_SLOTS,
    CAUSED_BY_LEAVE,
    DAEMON_VERSION,
    DEFAULT_AUTH_METHODS,
    ENDIAN_MARKER,
    GROUP_ID_LE,
    HEADER_LE,
    JOIN_MESS,
    KILL_MESS,
    LE_MARK_BYTES,
    LEAVE_MESS,
    LIBRARY_VERSION,
    MAX_AUTH_LIST,
    MAX_GROUP_NAME,
    REGULAR_MESS,
    REJECT_MESS,
    RELAY_HEAD,
    SELF_DISCARD,
    TRANSITION_MESS,
    U32_BE,
    U32_LE,
    version_number,
)
from .frames import (
    Accepted,
    AuthChoice,
    AuthList,
    ConnectRequest,
    GroupId,
    HandshakeRejected,
    Join,
    Kill,
    Leave,
    MembershipMessage,
    Multicast,
    RegularMessage,
    RejectMessage,
    ToClient,
    ToDaemon,
)
from .names import (
    check_joinable,
    check_message_size,
    check_private_name,
    group_field,
    pad_name,
    to_bytes,
)


def encode_connect(
    name: str | bytes | None,
    *,
    membership: bool = True,
    priority: int = 0,
    version: Sequence[int] = LIBRARY_VERSION,
) -> bytes:
    """The connect record, as libspread 5.0.1 writes it (section 4.1).

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
    if version_number((*version[:2], 0)) > 31400:
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
    """The daemon's accept record (section 4.4).

    The daemon's patch version is only sent to libraries from 3.15.0 on (trace c6).
    """
    raw = to_bytes(private_group)
    if len(raw) > MAX_GROUP_NAME:
        raise IllegalGroupName(f"private group {raw!r} is longer than {MAX_GROUP_NAME} bytes")
    version = bytes(daemon_version[:2])
    if version_number(client_version) >= 31500:
        version += bytes(daemon_version[2:3]) or b"\0"
    return b"\x01" + version + bytes((len(raw),)) + raw


def encode_reject(code: int) -> bytes:
    """A handshake reject: one negative byte (section 4)."""
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
    return HEADER_LE.pack(
        (service_type | ENDIAN_MARKER) & 0xFFFFFFFF, pad_name(sender), num_groups, hint, data_len
    )


def _check_service(service_type: int) -> None:
    # The daemon drops a session whose message has not exactly one service bit (rule 1
    # of section 7); SELF_DISCARD is the only other bit a multicast may carry.
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
    head = HEADER_LE.pack(
        service_type | ENDIAN_MARKER,
        pad_name(sender),
        len(groups),
        encode_hint(mess_type),
        len(data),
    )
    if len(groups) == 1:
        return b"".join((head, group_field(groups[0]), data))
    return b"".join((head, *map(group_field, groups), data))


def _encode_control(kind: int, sender: str | bytes, group: bytes) -> bytes:
    return encode_header(kind, sender, 1, ENDIAN_MARKER, 0) + pad_name(group)


def encode_join(sender: str | bytes, group: str | bytes) -> bytes:
    """JOIN_MESS for ``group`` from the session whose private group is ``sender``."""
    return _encode_control(JOIN_MESS, sender, check_joinable(group))


def encode_leave(sender: str | bytes, group: str | bytes) -> bytes:
    """LEAVE_MESS for ``group``."""
    return _encode_control(LEAVE_MESS, sender, check_joinable(group))


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
    sender's ``hint`` bytes untouched (section 3)."""
    head = RELAY_HEAD.pack(
        service_type | ENDIAN_MARKER, pad_name(sender), num_groups, hint, len(data)
    )
    return b"".join((head, groups_blob, data))


def _gid_bytes(group_id: GroupId) -> bytes:
    # Accept signed words too (as libspread and the daemon's log print them).
    return GROUP_ID_LE.pack(
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
    """A daemon -> client regular membership notice (section 8).

    ``service_type`` is REG_MEMB_MESS with one CAUSED_BY_* bit; the body's
    local-set offset is computed from ``local_vs_set`` (an index into ``vs_sets``).
    """
    sets = [U32_LE.pack(len(vs)) + b"".join(map(pad_name, vs)) for vs in vs_sets]
    offset = 0
    local_offset = 0
    for i, chunk in enumerate(sets):
        if i == local_vs_set:
            local_offset = offset
        offset += len(chunk)
    if sets and not 0 <= local_vs_set < len(sets):
        raise ValueError(f"local_vs_set {local_vs_set} is not one of {len(sets)} vs-sets")
    data = b"".join(
        (_gid_bytes(group_id), U32_LE.pack(len(sets)), U32_LE.pack(local_offset), *sets)
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
    hint: bytes = LE_MARK_BYTES,
) -> bytes:
    """A daemon -> client REJECT_MESS returning a message to its sender (section 8).

    The type is REJECT_MESS (plus SELF_DISCARD if the original had it); ``old_type``
    follows the header; ``hint`` is the original's raw hint bytes.
    """
    stype = REJECT_MESS | (old_type & SELF_DISCARD)
    head = HEADER_LE.pack(stype | ENDIAN_MARKER, pad_name(sender), len(groups), 0, len(data))
    return b"".join(
        (
            head[:40],
            hint,
            head[44:],
            U32_LE.pack((old_type | ENDIAN_MARKER) & 0xFFFFFFFF),
            *map(pad_name, groups),
            data,
        )
    )


def _hint_bytes(mess_type: int, big_endian: bool) -> bytes:
    if big_endian:
        return U32_BE.pack((mess_type << 8) & 0x00FFFF00)
    return U32_LE.pack(encode_hint(mess_type))


def encode_to_client(frame: ToClient, *, client_version: Sequence[int] = LIBRARY_VERSION) -> bytes:
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


def encode_to_daemon(frame: ToDaemon, *, sender: str | bytes = b"") -> bytes:
    """The bytes a client sends for ``frame`` (the inverse of :class:`DaemonDecoder`).

    ``sender`` is the session's private group, which message frames do not all carry.
    """
    if isinstance(frame, Multicast):
        head = HEADER_LE.pack(
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
