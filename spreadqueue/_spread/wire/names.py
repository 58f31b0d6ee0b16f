"""Private names, group names and their 32-byte wire fields (validation and caches).

The caches are bounded memoisations of pure functions: names repeat on every message.

Section numbers in this module refer to docs/spread-protocol.md.
"""

from __future__ import annotations

from typing import Final

from ..errors import IllegalGroupName, MessageTooLong
from .constants import (
    GROUP_FIELD,
    HEADER_SIZE,
    MAX_DAEMON_NAME,
    MAX_GROUP_NAME,
    MAX_GROUPS,
    MAX_MESSAGE_BYTES,
    MAX_PRIVATE_NAME,
)

#: Bytes a private or group name may hold: '$' (0x24) .. '~' (0x7E) (section 4).
_LEGAL_NAME_BYTES: Final = bytes(range(0x24, 0x7F))
_CACHE_LIMIT: Final = 16384
#: A whole empty name field (and the padding of shorter names).
ZERO32: Final = bytes(GROUP_FIELD)


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


def check_joinable(name: str | bytes) -> bytes:
    """SP_join / SP_leave's rule: 1..31 bytes in 0x24..0x7E, so never a private group."""
    raw = check_group_name(name)
    if raw[0] == 0x23:
        raise IllegalGroupName(f"cannot join or leave the private group {raw!r}")
    return raw


def private_group_name(name: str | bytes, daemon: str | bytes) -> bytes:
    """``#name#daemon``, the private group of a session (section 5)."""
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


def pad_name(name: str | bytes, *, cut: bool = False) -> bytes:
    """A name NUL-padded to the 32-byte wire field (cached: names repeat a lot).

    A name longer than 31 bytes raises IllegalGroupName, or with ``cut`` is cut to 31,
    as the daemon forces byte 31 of a field to NUL: what a daemon writes for a name it
    read from a full 32-byte field.
    """
    padded = _padded_cache.get(name)
    if padded is None:
        raw = to_bytes(name)
        if len(raw) > MAX_GROUP_NAME:
            if cut:
                return raw[:MAX_GROUP_NAME] + b"\0"
            raise IllegalGroupName(f"name {raw!r} is longer than {MAX_GROUP_NAME} bytes")
        if b"\0" in raw:
            # The receiver would stop at the NUL: a different name than the one meant.
            raise IllegalGroupName(f"name {raw!r} contains a NUL byte")
        padded = raw + ZERO32[len(raw) :]
        if len(_padded_cache) < _CACHE_LIMIT:
            _padded_cache[name] = padded
    return padded


_group_field_cache: dict[str | bytes, bytes] = {}


def group_field(name: str | bytes) -> bytes:
    """A validated multicast destination, padded to its 32-byte field (cached)."""
    field = _group_field_cache.get(name)
    if field is None:
        field = pad_name(check_group_name(name))
        if len(_group_field_cache) < _CACHE_LIMIT:
            _group_field_cache[name] = field
    return field


def field_name(field: bytes) -> bytes:
    """The name in a 32-byte field: the bytes up to the first NUL (section 6)."""
    nul = field.find(b"\0")
    return field if nul < 0 else field[:nul]


name_cache: dict[bytes, str] = {}


def name_of(field: bytes) -> str:
    """The name in a 32-byte field as a str (cached: the same fields recur)."""
    name = name_cache.get(field)
    if name is None:
        nul = field.find(b"\0")
        name = (field if nul < 0 else field[:nul]).decode("latin-1")
        if len(name_cache) < _CACHE_LIMIT:
            name_cache[field] = name
    return name


canonical_cache: dict[bytes, str] = {}


def canonical_field(field: bytes) -> str | None:
    """The name in a 32-byte field that is exactly that name NUL-padded (what this
    daemon would write for it), or None for any other field (cached)."""
    name = canonical_cache.get(field)
    if name is None:
        nul = field.find(b"\0")
        if nul < 0 or field[nul:] != ZERO32[nul:]:
            return None
        name = field[:nul].decode("latin-1")
        if len(canonical_cache) < _CACHE_LIMIT:
            canonical_cache[field] = name
    return name


one_group_cache: dict[bytes, tuple[str, ...]] = {}


def one_group_of(field: bytes) -> tuple[str, ...]:
    """The destination list of a one-group message (cached: the tuple is reused)."""
    dests = (name_of(field),)
    if len(one_group_cache) < _CACHE_LIMIT:
        one_group_cache[field] = dests
    return dests


def group_names(buf: bytes, start: int, count: int) -> tuple[str, ...]:
    if count == 1:
        return (name_of(buf[start : start + GROUP_FIELD]),)
    return tuple(
        [name_of(buf[i : i + GROUP_FIELD]) for i in range(start, start + GROUP_FIELD * count, 32)]
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
