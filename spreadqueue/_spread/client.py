"""The Twisted Spread client: a Protocol around the sans-IO codec, and :func:`connect`.

:class:`SpreadClientProtocol` performs the handshake exactly as libspread 5.0.1 does
(section 4): the connect record in one write, then - only once the daemon's auth
list has arrived - the 90-byte NULL auth choice in one write (the real daemon reads each
with a single non-blocking read and refuses pipelined or split records). On acceptance it
creates a :class:`~spreadqueue._spread.session.SpreadSession` and becomes that session's
:class:`~spreadqueue.interfaces.ISessionLink`. Each message is header + groups + data in
one piece. Each read is one :class:`~spreadqueue._spread.batch.DeliveryBatch`, shared by
the session and the writes: what the listeners put off runs when the read's frames are
dispatched (stage 0), then what they sent goes out in one write (stage 1); sends made
outside a read go out at once. Either way straight to the socket when Twisted has
nothing buffered (:mod:`.output`).

Back-pressure: the protocol registers itself with its transport as a streaming
(push) producer. When the transport's buffer fills, Twisted calls
:meth:`SpreadClientProtocol.pauseProducing`, which marks the session not writable
(``session.writable`` is False, ``session.whenWritable()`` waits, producers registered
with ``session.register_producer`` are paused); when it drains, the reverse. Reading is
never paused: the real daemon drops a session that falls 1000 messages behind.

:func:`connect` opens a session over any ``IStreamClientEndpoint`` or an endpoint string
(Twisted's ``tcp:host=...:port=...`` or Spread's own ``4803@host`` / ``4803``). With
``reconnect=True`` the session survives the loss of its connection: a new connection
(:func:`~spreadqueue._spread.keeper.keep_session`, with back-off) asks for the same
private name and carries the same :class:`SpreadSession` on (``resume``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._defaults import default_spread
from . import wire
from .batch import DeliveryBatch
from .endpoints import parse_spread_endpoint
from .errors import (
    AuthRejected,
    SessionClosed,
    SpreadError,
    VersionRejected,
    WireError,
    rejection_for,
)
from .interfaces import ISessionLink
from .keeper import REMOTE_BACKOFF, LinkOpener, keep_session, reconnect_delays
from .output import Output
from .session import SpreadSession

__all__ = [
    "DEFAULT_PORT",
    "ConnectTimeout",
    "SpreadClientProtocol",
    "connect",
    "link_opener",
]

#: Spread's default daemon port.
DEFAULT_PORT = 4803
#: Messages with at most this much data go out as one bytes object (one copy, and one
#: buffer entry for the transport); bigger ones as writeSequence([header+groups, data])
#: so the payload is not copied once more.
_SINGLE_WRITE_LIMIT = 16384
_HEADER_LE = struct.Struct("<I32siIi")
#: Destination lists whose padded group fields a connection keeps (see send_multicast).
_GROUP_FIELDS_CACHE = 1024
_ENDIAN_MARKER = wire.ENDIAN_MARKER
# The stages of a read's batch: listeners' work first, then the one write.
_WORK = 0
_WRITE = 1


class ConnectTimeout(SpreadError, TimeoutError):
    """No Spread session within the time given to :func:`connect`."""


@implementer(ISessionLink, IPushProducer)
class SpreadClientProtocol(Protocol):
    """One client connection to a Spread daemon.

    ``name`` is the private name (None or ``""``: the daemon invents one); it must be at
    most 10 bytes in ``$``..``~``: unlike libspread, which silently cuts longer names to
    10, this raises IllegalGroupName. ``membership`` asks for membership notices;
    ``priority`` is sent as libspread 5.0.1 does (the daemon ignores it). ``clock``,
    when given, bounds :meth:`send_kill`: the connection is aborted if it has not
    closed ``disconnect_timeout`` seconds after KILL_MESS (a daemon that stopped
    reading would otherwise keep it open forever). ``resume`` is a reconnecting session
    that is away: once accepted, this connection becomes its new link
    (:meth:`SpreadSession.relink`) instead of a new session.

    :attr:`ready` fires with the :class:`SpreadSession` once the daemon accepts us, or
    fails with the typed rejection (:func:`~spreadqueue._spread.errors.rejection_for`),
    a :class:`WireError`, or SessionClosed if the connection ends during the handshake.
    Cancelling it aborts the connection.
    """

    _log = Logger()

    def __init__(
        self,
        name: str | None = None,
        *,
        membership: bool = True,
        priority: int = 0,
        clock: IReactorTime | None = None,
        disconnect_timeout: float = 5.0,
        resume: SpreadSession | None = None,
    ) -> None:
        if priority < 0:
            raise ValueError(f"priority must be >= 0, not {priority}")
        self._connect_record = wire.encode_connect(
            name or None, membership=membership, priority=priority
        )
        self._membership = membership
        self._clock = clock
        self._disconnect_timeout = disconnect_timeout
        self._decoder = wire.ClientDecoder()
        self._private_group = b""
        self._paused = False
        self._broken: BaseException | None = None
        self._kill_timer: IDelayedCall | None = None
        self._batch = DeliveryBatch(stages=2)
        self._out: Output | None = None
        self._sender_field = b""
        self._group_fields: dict[tuple[bytes, ...], bytes] = {}
        self._resume = resume
        #: The session, once accepted.
        self.session: SpreadSession | None = None
        #: Fires with the session once the daemon accepts it (see the class docstring).
        self.ready: Deferred[SpreadSession] = Deferred(self._cancel_handshake)

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        """Send the connect record (one write) and register for back-pressure."""
        transport = self.transport
        assert transport is not None
        if ITCPTransport.providedBy(transport):
            # Spread is latency-bound small messages; both libspread and the daemon
            # set TCP_NODELAY too.
            cast(ITCPTransport, transport).setTcpNoDelay(True)
        cast(IConsumer, transport).registerProducer(self, True)
        self._out = Output(transport, self._batch, stage=_WRITE)
        transport.write(self._connect_record)

    def dataReceived(self, data: bytes) -> None:
        """Decode what the daemon sent and hand the frames on.

        What the listeners send meanwhile goes out in one write when this returns.
        """
        if self._broken is not None:
            return
        batch = self._batch
        batch.begin()
        try:
            self._received(data)
        finally:
            batch.end()

    def _received(self, data: bytes) -> None:
        error: WireError | None = None
        try:
            frames = self._decoder.feed(data)
        except WireError as e:
            # Frames decoded before the bad unit still count: the real daemon acted on
            # them before it sent the garbage, so we deliver them, then drop.
            frames, error = getattr(e, "frames", []), e
        if self.session is None:
            for i, frame in enumerate(frames):
                self._handshake_frame(frame)
                if self._broken is not None:
                    return
                if self.session is not None:
                    # accepted: the rest of this read is the session's first batch
                    frames = frames[i + 1 :]
                    break
            else:
                frames = []
        if frames:
            assert self.session is not None
            self.session.deliver(frames)  # type: ignore[arg-type]
        if error is not None:
            self._protocol_error(error)

    def _handshake_frame(self, frame: wire.ToClient) -> None:
        transport = self.transport
        assert transport is not None
        if isinstance(frame, wire.AuthList):
            if "NULL" not in frame.methods:
                self._fail_handshake(
                    AuthRejected(
                        f"the daemon allows only {' '.join(frame.methods) or 'no'} "
                        "authentication; spreadqueue speaks NULL only"
                    )
                )
                return
            # One write: the daemon takes the auth choice from a single read (trace c7).
            transport.write(wire.encode_auth_choice(("NULL",)))
        elif isinstance(frame, wire.Accepted):
            if frame.daemon_version[:1] < (3,):
                self._fail_handshake(
                    VersionRejected(f"daemon version {frame.daemon_version} is older than 3")
                )
                return
            self._private_group = wire.to_bytes(frame.private_group)
            self._sender_field = wire.pad_name(self._private_group)
            self._log.info(
                "Spread session {private_group} accepted by daemon version {version}",
                private_group=frame.private_group,
                version=".".join(map(str, frame.daemon_version)),
            )
            session = self._resume
            if session is None:
                session = SpreadSession(
                    self, frame.private_group, membership=self._membership, batch=self._batch
                )
                self.session = session
            else:
                self.session = session
                try:
                    # it joins its groups again (written once this read is handled)
                    session.relink(self, frame.private_group, batch=self._batch)
                except SessionClosed as e:
                    # closed for good while we were connecting: drop this connection
                    self.session = None
                    self._broken = e
                    self.ready.errback(Failure(e))
                    transport.loseConnection()
                    return
            if self._paused:
                session.pause_writing()
            if not self.ready.called:
                self.ready.callback(session)
        elif isinstance(frame, wire.HandshakeRejected):
            self._fail_handshake(rejection_for(frame.code))
        else:
            self._protocol_error(WireError(f"message {frame!r} before the session was accepted"))

    def _fail_handshake(self, error: BaseException) -> None:
        self._log.warn("Spread daemon refused the session: {error}", error=error)
        self._broken = error
        if not self.ready.called:
            self.ready.errback(Failure(error))
        if self.transport is not None:
            self.transport.loseConnection()

    def _protocol_error(self, error: WireError) -> None:
        self._log.error(
            "Spread daemon at {peer} broke the protocol ({error}); dropping the connection",
            peer=self.transport.getPeer() if self.transport is not None else None,
            error=error,
        )
        self._broken = error
        if not self.ready.called:
            self.ready.errback(Failure(error))
        if self.transport is not None:
            self._abort()

    def _abort(self) -> None:
        if self._out is not None:
            self._out.discard()
        transport = self.transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif transport is not None:
            transport.loseConnection()

    def _cancel_handshake(self, d: Deferred[SpreadSession]) -> None:
        self._broken = CancelledError("Spread connect cancelled")
        if self.transport is not None:
            self._abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell the session (or the handshake's waiter) that the connection is gone."""
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self._kill_timer = None
        if self._broken is not None and not isinstance(self._broken, CancelledError):
            # the real cause beats the transport's generic "connection lost"
            reason = Failure(self._broken)
        if self.session is not None:
            self.session.connection_lost(reason, link=self)
        elif not self.ready.called:
            self.ready.errback(
                Failure(
                    SessionClosed(
                        "the daemon closed the connection during the handshake "
                        f"({reason.getErrorMessage()})"
                    )
                )
            )

    # ------------------------------------------------------------------ ISessionLink

    def _output(self) -> Output:
        transport = self.transport
        out = self._out
        if out is None or transport is None or getattr(transport, "disconnecting", False):
            raise SessionClosed("the connection to the Spread daemon is closed")
        return out

    def send_multicast(
        self, service_type: int, groups: Sequence[bytes], mess_type: int, data: bytes
    ) -> None:
        """Write one data message (header + groups + data) in one write."""
        out = self._output()
        if not -0x8000 <= mess_type <= 0xFFFF:
            raise ValueError(f"mess_type {mess_type} does not fit 16 bits")
        head = _HEADER_LE.pack(
            (service_type | _ENDIAN_MARKER) & 0xFFFFFFFF,
            self._sender_field,
            len(groups),
            ((mess_type << 8) & 0x00FFFF00) | _ENDIAN_MARKER,
            len(data),
        )
        if len(groups) == 1:
            names = wire.pad_name(groups[0])
        else:
            # (a session passes the same tuples again and again: see its multicast)
            key = groups if type(groups) is tuple else tuple(groups)
            fields = self._group_fields.get(key)
            if fields is None:
                fields = b"".join(map(wire.pad_name, groups))
                if len(self._group_fields) < _GROUP_FIELDS_CACHE:
                    self._group_fields[key] = fields
            names = fields
        if len(data) <= _SINGLE_WRITE_LIMIT:
            out.write(b"".join((head, names, data)))
        else:
            out.write_many([head + names, data])

    def send_join(self, group: bytes) -> None:
        """Write JOIN_MESS for ``group``."""
        self._output().write(wire.encode_join(self._private_group, group))

    def send_leave(self, group: bytes) -> None:
        """Write LEAVE_MESS for ``group``."""
        self._output().write(wire.encode_leave(self._private_group, group))

    def send_kill(self) -> None:
        """Write KILL_MESS and close, as SP_disconnect does (trace l1)."""
        out = self._output()
        out.write(wire.encode_kill(self._private_group))
        out.flush()  # what a listener sent before disconnecting goes out first
        transport = out.transport
        # A registered producer would keep loseConnection from ever completing.
        transport.unregisterProducer()
        transport.loseConnection()
        if self._clock is not None and self._disconnect_timeout is not None:
            self._kill_timer = self._clock.callLater(self._disconnect_timeout, self._abort)

    # ------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:
        """The transport's buffer is full: the session stops being writable."""
        self._paused = True
        if self.session is not None:
            self.session.pause_writing()

    def resumeProducing(self) -> None:
        """The transport's buffer drained: the session is writable again."""
        self._paused = False
        if self.session is not None:
            self.session.resume_writing()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost does the cleaning up."""


class _SpreadClientFactory(Factory):
    """Builds the one SpreadClientProtocol of a :func:`connect` call."""

    def __init__(
        self,
        name: str | None,
        membership: bool,
        priority: int,
        clock: IReactorTime,
        resume: SpreadSession | None = None,
    ) -> None:
        self._kwargs: dict[str, Any] = {
            "membership": membership,
            "priority": priority,
            "clock": clock,
            "resume": resume,
        }
        self._name = name
        self.protocol_instance: SpreadClientProtocol | None = None
        self.noisy = False  # the session logs what matters; not "Starting factory"

    def buildProtocol(self, addr: Any) -> SpreadClientProtocol:
        proto = SpreadClientProtocol(self._name, **self._kwargs)
        proto.factory = self
        self.protocol_instance = proto
        return proto


async def _open(endpoint: IStreamClientEndpoint, factory: _SpreadClientFactory) -> SpreadSession:
    try:
        proto = cast(SpreadClientProtocol, await endpoint.connect(factory))
    except ConnectingCancelledError as e:
        # what a cancelled TCP endpoint reports: make it the usual CancelledError
        raise CancelledError(f"connecting to {e.address} cancelled") from e
    return await proto.ready


def connect(
    reactor: Any,
    endpoint: IStreamClientEndpoint | str | None = None,
    name: str | None = None,
    *,
    membership: bool = True,
    priority: int = 0,
    timeout: float | None = 10.0,
    reconnect: bool = False,
) -> Deferred[SpreadSession]:
    """Open a Spread session; the Deferred fires with a connected :class:`SpreadSession`.

    ``endpoint`` is an IStreamClientEndpoint or a string: Spread's ``"4803@host"``
    (a host name, an IPv4 or ``[IPv6]`` literal), a bare ``"4803"`` (127.0.0.1), or any
    Twisted client endpoint description such as ``"tcp:host=10.0.0.5:port=4803"``;
    None means ``$SPREAD_DAEMON``, else ``4803@localhost``. ``name`` is the private
    name (None: the daemon invents one); a name longer than 10 bytes or with bytes
    outside 0x24..0x7E (``$`` to ``~``) raises IllegalGroupName here, at once
    (libspread would silently cut it to 10).
    ``reactor`` provides IReactorTCP and IReactorTime.

    The Deferred fails with the typed rejection (NameNotUnique, IllegalName,
    VersionRejected, AuthRejected, QuotaExceeded ...), with :class:`ConnectTimeout` when
    the TCP connection plus handshake take longer than ``timeout`` seconds (None: no
    limit), with the endpoint's error when the daemon cannot be reached, and with
    SessionClosed when the daemon closes the connection during the handshake.
    Cancelling it stops the attempt (CancelledError).

    ``reconnect=True`` opens the session the same way, and then it survives its
    daemon going away: it reconnects (at once, then with a jittered back-off: 0.2 s
    doubling to 1 s for a daemon on this machine, 1 s to 30 s for another), asks for
    the same private name (the one the daemon invented, if none was given), joins its
    groups again and keeps its listeners; reconnect listeners
    (:meth:`SpreadSession.add_reconnect_listener`) hear when it is lost and back,
    and while it is away sends raise SessionReconnecting. It ends for good on
    :meth:`SpreadSession.disconnect`, or when the daemon refuses it for good (an
    illegal name, a version or authentication it refuses, the name still in use
    after 5 attempts): then ``whenDisconnected()`` fires with that reason.
    """
    if endpoint is None:
        endpoint = default_spread()
    if name is not None:
        wire.check_private_name(name)
    if priority < 0:
        raise ValueError(f"priority must be >= 0, not {priority}")
    open_link = link_opener(
        reactor, endpoint, membership=membership, priority=priority, timeout=timeout
    )
    if not reconnect:
        return open_link(name, None)
    backoff = reconnect_delays(endpoint) if isinstance(endpoint, str) else REMOTE_BACKOFF
    return keep_session(
        reactor,
        open_link,
        name,
        who=f"Spread client of {endpoint}",
        backoff=backoff,
        retry_first=False,
    )


def link_opener(
    reactor: Any,
    endpoint: IStreamClientEndpoint | str,
    *,
    membership: bool = True,
    priority: int = 0,
    timeout: float | None = 10.0,
) -> LinkOpener:
    """How :func:`connect` opens each connection to the daemon at ``endpoint``, for
    :func:`~spreadqueue._spread.keeper.keep_session`: ``open_link(name, resume)``
    fires with a new session, or with ``resume`` carried on over the new connection
    (errors as for :func:`connect`)."""
    where = endpoint if isinstance(endpoint, str) else repr(endpoint)
    target = parse_spread_endpoint(reactor, endpoint) if isinstance(endpoint, str) else endpoint

    def open_link(name: str | None, resume: SpreadSession | None) -> Deferred[SpreadSession]:
        return _connect_once(reactor, target, where, name, membership, priority, timeout, resume)

    return open_link


def _connect_once(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    where: str,
    name: str | None,
    membership: bool,
    priority: int,
    timeout: float | None,
    resume: SpreadSession | None = None,
) -> Deferred[SpreadSession]:
    """One connection attempt of :func:`connect` (``resume``: for that session)."""
    factory = _SpreadClientFactory(name, membership, priority, reactor, resume)
    d = Deferred.fromCoroutine(_open(endpoint, factory))
    if timeout is not None:

        def timed_out(result: SpreadSession | Failure, after: float) -> SpreadSession | Failure:
            if isinstance(result, Failure) and result.check(CancelledError):
                stage = (
                    "connecting"
                    if factory.protocol_instance is None
                    else "waiting for the daemon's handshake"
                )
                return Failure(
                    ConnectTimeout(f"no Spread session with {where} after {after:g}s ({stage})")
                )
            return result

        return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    return d
