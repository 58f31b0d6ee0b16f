"""The Spread client protocol over an asyncio transport, and opening a session with it.

:class:`~spreadqueue._spread.client.SpreadClientProtocol` (the handshake, framing, the
per-read batch of writes) is written against a Twisted transport. :class:`_Carrier`
is the asyncio Protocol that feeds it what the asyncio transport reads and tells it
when the connection ends or its buffer fills; :class:`_TransportFace` is the part of a
Twisted transport it writes through. So the one client protocol runs on both loops:
Twisted's reactor and asyncio (or uvloop), with no reactor in between.

asyncio transports already send at once when nothing is buffered and set
TCP_NODELAY, which is what :mod:`~spreadqueue._spread.output` does by hand on Twisted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from .._defaults import default_spread
from .._spread import wire
from .._spread.client import ConnectTimeout, SpreadClientProtocol
from .._spread.endpoints import spread_address
from .._spread.session import SpreadSession
from .clock import LoopClock

__all__ = ["daemon_address", "open_session"]


class _TransportFace:
    """What SpreadClientProtocol uses of a Twisted transport, over an asyncio one."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.write = transport.write
        self.writeSequence = transport.writelines

    @property
    def disconnecting(self) -> bool:
        """True once the transport is closing (nothing may be written then)."""
        return self._transport.is_closing()

    def loseConnection(self) -> None:
        """Close after what is buffered has been written."""
        self._transport.close()

    def abortConnection(self) -> None:
        """Close now, dropping what is buffered."""
        self._transport.abort()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """Nothing to do: the asyncio transport calls the carrier's pause_writing."""

    def unregisterProducer(self) -> None:
        """Nothing to do (see registerProducer)."""

    def getPeer(self) -> Any:
        """The daemon's address (for log lines)."""
        return self._transport.get_extra_info("peername")


class _Carrier(asyncio.Protocol):
    """Feeds one SpreadClientProtocol from an asyncio transport."""

    def __init__(self, protocol: SpreadClientProtocol) -> None:
        self.protocol = protocol
        # one call less per read: the protocol's own method is the asyncio callback
        self.data_received = protocol.dataReceived  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.protocol.makeConnection(_TransportFace(transport))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = ConnectionDone() if exc is None else ConnectionLost(str(exc) or repr(exc))
        self.protocol.connectionLost(Failure(reason))

    def pause_writing(self) -> None:
        self.protocol.pauseProducing()

    def resume_writing(self) -> None:
        self.protocol.resumeProducing()


def daemon_address(endpoint: str | None) -> tuple[str, int]:
    """``(host, port)`` of a Spread daemon address: ``4803``, ``4803@host`` or
    ``tcp:host=H:port=P`` (None: ``$SPREAD_DAEMON``, else ``4803@localhost``).

    Raises ValueError for any other form (asyncio sessions speak TCP only).
    """
    text = default_spread() if endpoint is None else endpoint
    address = spread_address(text)
    host = address.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if address.port is None or not host:
        raise ValueError(
            f"{text!r} is not a Spread daemon address an asyncio session can use: "
            "give 4803, 4803@host or tcp:host=HOST:port=PORT"
        )
    if not 0 < address.port < 65536:
        raise ValueError(f"port {address.port} in {text!r} is outside 1..65535")
    return host, address.port


async def open_session(
    clock: LoopClock,
    endpoint: str | None,
    name: str | None,
    *,
    membership: bool,
    priority: int,
    timeout: float | None,
) -> SpreadSession:
    """Connect to a Spread daemon on ``clock``'s loop and do the handshake.

    Raises what :func:`spreadqueue.connect` fails with (the typed rejections,
    IllegalGroupName, SessionClosed, ConnectTimeout), and OSError when nothing
    answers at the address.
    """
    host, port = daemon_address(endpoint)
    if name is not None:
        wire.check_private_name(name)
    protocol = SpreadClientProtocol(name, membership=membership, priority=priority, clock=clock)
    loop = clock.loop
    where = f"{host}:{port}"
    stage = "connecting"

    async def handshake() -> SpreadSession:
        nonlocal stage
        try:
            await loop.create_connection(lambda: _Carrier(protocol), host, port)
            stage = "waiting for the daemon's handshake"
            return await protocol.ready.asFuture(loop)
        except BaseException:
            # Cancelled (or timed out) after the connection was made: abort it, and
            # let nobody wait for the handshake's CancelledError.
            if protocol.transport is not None and not protocol.ready.called:
                protocol.ready.addErrback(lambda _: None)
                protocol.ready.cancel()
            raise

    try:
        return await asyncio.wait_for(handshake(), timeout)
    except asyncio.TimeoutError:
        raise ConnectTimeout(
            f"no Spread session with {where} after {timeout:g}s ({stage})"
        ) from None
