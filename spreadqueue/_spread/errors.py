"""Exceptions of the Spread layer.

None of these import Twisted: the sans-IO codec raises :class:`WireError`, and the
client turns the daemon's handshake reject codes into the :class:`ConnectionRejected`
subclasses below (see :func:`rejection_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SpreadError(Exception):
    """Base class of every error raised by spreadqueue's Spread layer."""


class WireError(SpreadError, ValueError):
    """A byte stream broke the Spread client protocol.

    ``offset`` is the position in the stream (bytes since the connection began, in the
    direction being decoded) of the unit that was wrong. ``frames`` are the frames the
    same ``feed`` call decoded before that unit: the real peer acts on them before it
    notices the bad one, so callers should too.
    """

    def __init__(self, reason: str, offset: int = 0, frames: Sequence[Any] = ()) -> None:
        super().__init__(f"{reason} (at stream offset {offset})")
        self.reason = reason
        self.offset = offset
        self.frames: list[Any] = list(frames)


class HandshakeError(WireError):
    """The connect or auth record is unacceptable.

    ``reject_code`` is the code the real daemon answers with (a negative
    :class:`~spreadqueue._spread.wire.RejectCode`), or ``None`` when the real daemon
    closes the connection silently.
    """

    def __init__(self, reason: str, reject_code: int | None, offset: int = 0) -> None:
        super().__init__(reason, offset)
        self.reject_code = reject_code


class MessageTooLong(SpreadError, ValueError):
    """A message would exceed what a real Spread daemon can carry."""


class IllegalGroupName(SpreadError, ValueError):
    """A group name Spread cannot carry (empty, too long or with illegal bytes)."""


class IllegalService(SpreadError, ValueError):
    """A service type a Spread daemon refuses (it must name exactly one service level)."""


class ConnectionRejected(SpreadError):
    """The daemon refused the session during the handshake."""

    code: int = 0

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or self.__class__.__name__)


class QuotaExceeded(ConnectionRejected):
    """The daemon has too many sessions (REJECT_QUOTA)."""

    code = -3


class NoName(ConnectionRejected):
    """The daemon wants a private name (REJECT_NO_NAME)."""

    code = -4


class IllegalName(ConnectionRejected):
    """The private name is too long or has bytes outside 0x24..0x7E (REJECT_ILLEGAL_NAME)."""

    code = -5


class NameNotUnique(ConnectionRejected):
    """Another session on this daemon already uses the private name (REJECT_NOT_UNIQUE)."""

    code = -6


class VersionRejected(ConnectionRejected):
    """The daemon refused our protocol version, or is too old for us (REJECT_VERSION)."""

    code = -7


class AuthRejected(ConnectionRejected):
    """The daemon refused the authentication choice (REJECT_AUTH)."""

    code = -9


class UnknownRejection(ConnectionRejected):
    """The daemon refused the session with a code this library does not know."""


_REJECTIONS: dict[int, type[ConnectionRejected]] = {
    cls.code: cls
    for cls in (
        QuotaExceeded,
        NoName,
        IllegalName,
        NameNotUnique,
        VersionRejected,
        AuthRejected,
    )
}


def rejection_for(code: int) -> ConnectionRejected:
    """The exception that stands for the daemon's handshake reject ``code``."""
    cls = _REJECTIONS.get(code)
    if cls is None:
        err: ConnectionRejected = UnknownRejection(f"daemon rejected the session with code {code}")
        err.code = code
        return err
    return cls()


class SessionClosed(SpreadError):
    """The Spread session is closed: the daemon went away or we disconnected."""
