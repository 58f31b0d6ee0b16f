"""Spread's constants as spreadqueue's codec uses them: type bits, reject codes, limits,
the byte layouts of headers, and the small numeric rules of the wire.

Numbers follow docs/spread-protocol.md (section numbers below refer to it).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Final

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
    """Accept and reject codes of the handshake (section 10)."""

    ACCEPT_SESSION = 1
    REJECT_QUOTA = -3
    REJECT_NO_NAME = -4
    REJECT_ILLEGAL_NAME = -5
    REJECT_NOT_UNIQUE = -6
    REJECT_VERSION = -7
    REJECT_AUTH = -9


# Limits (section 11).
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
#: and the daemon's check the real daemon aborts (section 11.2, the upstream bug).
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

HEADER_LE = struct.Struct("<I32siIi")
HEADER_BE = struct.Struct(">I32siIi")
#: A daemon -> client header with the sender's 4 hint bytes as they came.
RELAY_HEAD = struct.Struct("<I32si4si")
U32_LE = struct.Struct("<I")
U32_BE = struct.Struct(">I")
GROUP_ID_LE = struct.Struct("<III")
GROUP_ID_BE = struct.Struct(">III")
LE_MARK_BYTES: Final = U32_LE.pack(ENDIAN_MARKER)


# --------------------------------------------------------------------------- numbers


def signed8(b: int) -> int:
    return b - 256 if b > 127 else b


def signed16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


def version_number(version: Sequence[int]) -> int:
    """major*10000 + minor*100 + patch, each taken as a signed char like the daemon does."""
    parts = [signed8(v & 0xFF) for v in version[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


def hint_mess_type(buf: bytes, pos: int) -> tuple[int, bool]:
    """``(mess_type, little_endian)`` of the hint at ``buf[pos:pos + 4]``.

    The hint keeps its writer's byte order through the daemon, so it is read by its own
    marker, as libspread does (section 3).
    """
    b1 = buf[pos + 1]
    b2 = buf[pos + 2]
    # The marker 0x80000080 reads the same in both orders, so test the raw bytes:
    # little-endian iff byte 0 and byte 3 both have bit 7 set (section 3).
    if buf[pos] & 0x80 and buf[pos + 3] & 0x80:
        return signed16(b1 | b2 << 8), True
    return signed16(b1 << 8 | b2), False


def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q
