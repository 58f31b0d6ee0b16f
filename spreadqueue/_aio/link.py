"""The Spread client protocol over an asyncio transport, and opening a session with it.

:class:`~spreadqueue._spread.client.SpreadClientProtocol` (the handshake, framing, the
per-read batch of writes) is written against a Twisted transport. :class:`_Carrier`
is the asyncio Protocol that feeds it what the asyncio transport reads and tells it
when the connection ends or its buffer fills; :class:`_TransportFace` is the part of a
Twisted transport it writes through. So the one client protocol runs on both loops:
Twisted's reactor and asyncio (or uvloop), with no reactor in between.

asyncio transports already send at once when nothing is buffered and set
TCP_NODELAY, which is what :mod:`~spreadqueue._spread.output` does by hand on Twisted.

:class:`LinkOpener` opens each connection of a session that reconnects: it is the
``open_link`` that :func:`~spreadqueue._spread.keeper.keep_session` (the one
reconnection mechanism, with the loop as its clock) is given, as the Twisted client's
:func:`~spreadqueue._spread.client.link_opener` is on a reactor.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from .._defaults import default_spread
from .._spread import wire
from .._spread.client import ConnectTimeout, SpreadClientProtocol
from .._spread.endpoints import spread_address
from .._spread.session import SpreadSession
from .bridge import as_deferred
from .clock import LoopClock

__all__ = ["LinkOpener", "daemon_address", "open_session"]


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
    resume: SpreadSession | None = None,
) -> SpreadSession:
    """Connect to a Spread daemon on ``clock``'s loop and do the handshake.

    Raises what :func:`spreadqueue.connect` fails with (the typed rejections,
    IllegalGroupName, SessionClosed, ConnectTimeout), and OSError when nothing
    answers at the address. ``resume`` is a reconnecting session that is away: this
    connection becomes its new link (:meth:`SpreadSession.relink`), and it is returned.
    """
    host, port = daemon_address(endpoint)
    if name is not None:
        wire.check_private_name(name)
    protocol = SpreadClientProtocol(
        name, membership=membership, priority=priority, clock=clock, resume=resume
    )
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


class LinkOpener:
    """Opens one connection of a session to the daemon at ``endpoint`` on ``clock``'s
    loop: ``opener(name, resume)`` is a Deferred of :func:`open_session`, for
    :func:`~spreadqueue._spread.keeper.keep_session` (a
    :data:`~spreadqueue._spread.keeper.LinkOpener`).

    Cancelling that Deferred (the keeper stopping) cancels the attempt's asyncio task;
    :meth:`settled` waits until no attempt is left running, so that a closed session
    leaves no task (nor connection) behind.
    """

    def __init__(
        self,
        clock: LoopClock,
        endpoint: str | None,
        *,
        membership: bool,
        priority: int,
        timeout: float | None,
    ) -> None:
        daemon_address(endpoint)  # a bad address fails here, not at every attempt
        self._clock = clock
        self._endpoint = endpoint
        self._options: dict[str, Any] = {
            "membership": membership,
            "priority": priority,
            "timeout": timeout,
        }
        self._attempts: set[asyncio.Task[SpreadSession]] = set()

    def __call__(self, name: str | None, resume: SpreadSession | None) -> Deferred[SpreadSession]:
        coro = open_session(self._clock, self._endpoint, name, resume=resume, **self._options)
        return as_deferred(coro, self._clock.loop, tasks=self._attempts)

    async def settled(self) -> None:
        """Return once no connection attempt is running (cancelled ones included)."""
        while self._attempts:
            await asyncio.wait(list(self._attempts))
