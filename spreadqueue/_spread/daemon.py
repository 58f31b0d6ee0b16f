"""The embedded Spread daemon: the Spread client protocol served over Twisted.

:class:`SpreadDaemonProtocol` answers one client connection exactly as a real Spread
5.0.1 daemon does (docs/spread-protocol.md; section numbers below refer to it):
the one-read handshake rules, the reject bytes, the header validation that drops a
session, and the 1000-message limit for a client that does not read. The state shared
by all connections (sessions, groups, routing) is the pure
:class:`~spreadqueue._spread.core.DaemonCore` held by :class:`SpreadDaemonFactory`.

Run it with :class:`SpreadDaemonService` (a ``twisted.application`` service) or
:func:`listen`. Nothing here imports the global reactor at module level.

Where this daemon knowingly differs from the real one:

- a message of 143201..144000 bytes (48 + 32 * groups + data) drops its session; the
  real 5.0.1 daemon accepts it and then aborts as a whole (section 11);
- handshakes in progress count against the session quota (the real daemon handles one
  handshake at a time, so it never has more than one pending);
- a client that gets the auth list but sends no auth choice within the handshake
  timeout gets REJECT_AUTH (the real daemon waits for ever);
- relayed data messages keep only their service level and SELF_DISCARD bits, so no
  client can make others decode a forged membership notice;
- a connection closed by the daemon whose client does not read is aborted after
  ``close_timeout`` seconds instead of holding its buffer for ever.

Writes are coalesced: every read is one :class:`~spreadqueue._spread.batch.DeliveryBatch`
(shared by all connections; on a reactor that offers ``add_poll_bracket``, every
wake-up with several readable connections is one), and what it produces for a
connection goes out in one write when it has been handled, straight to the socket
when Twisted has nothing buffered for it (:mod:`.output`: no extra reactor turn per
write); then in-process sessions (:mod:`.local`) get their frames. Deliveries
outside a read (an in-process session sending from a timer) are coalesced the same
way on the next reactor turn.
Data messages in libspread's own form (little-endian, canonical names) are routed by
their raw destination fields and forwarded as the very bytes received
(:class:`~spreadqueue._spread.wire.Relay`): no frame is built and nothing re-encoded.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._defaults import DEFAULT_LISTEN
from .batch import DeliveryBatch
from .core import DEFAULT_MAX_SESSIONS, Admission, DaemonCore, Envelope, Session
from .errors import (
    HandshakeError,
    IllegalName,
    NameNotUnique,
    QuotaExceeded,
    WireError,
)
from .interfaces import ISessionSink
from .local import LocalLink
from .output import Output
from .wire import (
    AuthChoice,
    ConnectRequest,
    DaemonDecoder,
    Join,
    Kill,
    Leave,
    Multicast,
    RejectCode,
    Relay,
    ToDaemon,
    encode_accept,
    encode_auth_list,
    encode_reject,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_SESSIONS",
    "SpreadDaemonFactory",
    "SpreadDaemonProtocol",
    "SpreadDaemonService",
    "listen",
]

#: The real daemon's MaxSessionMessages (section 11.3).
DEFAULT_MAX_QUEUED: Final = 1000

log = Logger(namespace="spreadqueue._spread.daemon")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------- output

#: The stage of the daemon's delivery batch that writes to sockets: the first, before
#: in-process sessions get their frames (:data:`~spreadqueue._spread.local.LOCAL_STAGE`).
_WRITE_STAGE: Final = 0


@implementer(ISessionSink, IPushProducer)
class _Outbox:
    """What the daemon writes to one client, and how far behind that client is.

    Its writes wait for the end of the daemon's delivery batch (or, outside one, the
    next reactor turn) and go out in stage :data:`_WRITE_STAGE`, one write per
    connection. It is the connection's streaming producer: the transport pauses it when
    its buffer is full (the client is not reading). While paused, deliveries wait here;
    more than ``max_queued`` of them and ``on_overflow`` is called (the session is
    dropped).
    """

    __slots__ = (
        "_backlog",
        "_max_queued",
        "_on_overflow",
        "_output",
        "_paused",
        "_transport",
        "closed",
    )

    def __init__(
        self,
        transport: Any,
        batch: DeliveryBatch | None,
        max_queued: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._transport = transport
        # Straight to the socket when Twisted has nothing buffered for it: no extra
        # reactor turn (and two epoll_ctl calls) per write.
        self._output = Output(transport, batch, stage=_WRITE_STAGE, later=True)
        self._max_queued = max_queued
        self._on_overflow = on_overflow
        self._backlog: deque[bytes] = deque()
        self._paused = False
        self.closed = False

    @property
    def queued(self) -> int:
        """Messages waiting because the transport is full."""
        return len(self._backlog)

    def deliver(self, envelope: Envelope) -> None:
        """Write ``envelope`` at the end of this batch, or when the client reads."""
        if self.closed:
            return
        if self._paused:
            self._backlog.append(envelope.wire)
            if len(self._backlog) > self._max_queued:
                self._on_overflow()
            return
        self._output.write(envelope.wire)

    def flush(self) -> None:
        """Hand what waits for the batch's end to the transport now."""
        if not self.closed:
            self._output.flush()

    def close(self) -> None:
        """Stop writing; drop what the client has not been sent yet."""
        self.closed = True
        self._output.discard()
        self._backlog.clear()

    def pauseProducing(self) -> None:
        """The transport's buffer is full: queue from now on."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport drained: write the backlog until it is full again."""
        self._paused = False
        backlog = self._backlog
        write = self._transport.write
        while backlog and not self._paused and not self.closed:
            write(backlog.popleft())

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.close()


# --------------------------------------------------------------------------- protocol

_CONNECT: Final = "connect"
_AUTH: Final = "auth"
_OPEN: Final = "open"
_CLOSED: Final = "closed"


class SpreadDaemonProtocol(Protocol):
    """One client connection to the embedded daemon (section 4 onwards)."""

    def __init__(self, daemon: SpreadDaemonFactory, peer: str = "?") -> None:
        self.daemon = daemon
        self.peer = peer
        self.core = daemon.core
        self.session: Session | None = None
        self._state = _CONNECT
        self._decoder = DaemonDecoder(auth_methods=daemon.auth_methods, relay=True)
        self._batch = daemon.batch
        self._admission: Admission | None = None
        self._request: ConnectRequest | None = None
        self._timer: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._outbox: _Outbox | None = None
        self._transport: Any = None

    # ----------------------------------------------------------------- Twisted

    def connectionMade(self) -> None:
        daemon = self.daemon
        self._transport = self.transport
        if ITCPTransport.providedBy(self.transport):
            # Like the real daemon: without TCP_NODELAY every small reply waits for
            # the client's delayed ACK (40 ms on Linux) behind the previous one.
            cast(ITCPTransport, self.transport).setTcpNoDelay(True)
        outbox = _Outbox(
            self._transport,
            daemon.batch if daemon.coalescing else None,
            daemon.max_queued,
            self._overflow,
        )
        self._outbox = outbox
        daemon.connection_made(self)
        try:
            self._admission = self.core.admit()
        except QuotaExceeded:
            # Sent at accept time, before reading anything (section 4).
            self._reject(RejectCode.REJECT_QUOTA, "too many sessions")
            return
        self._transport.registerProducer(outbox, True)
        # The real daemon reads the connect record once, when the socket first becomes
        # readable or 1 s after accept; a record incomplete then means a silent close.
        self._timer = daemon.reactor.callLater(daemon.handshake_timeout, self._stalled)

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state is _CLOSED:
            return
        # One read, one batch: the writes it causes go out when it has been handled,
        # one per connection, and then in-process sessions get their frames.
        batch = self._batch
        batch.begin()
        try:
            if state is not _OPEN:
                self._decode(self._decoder.feed, data)
                return
            try:
                frames = self._decoder.feed(data)
            except WireError as exc:
                self._handle(exc.frames)
                self._drop(f"bad message: {exc.reason}")
                return
            self._handle(frames)
        finally:
            batch.end()

    def _decode(self, step: Callable[..., list[ToDaemon]], *args: Any) -> None:
        """Run one decoder step and act on its frames, or on its error."""
        try:
            frames = step(*args)
        except HandshakeError as exc:
            self._reject(exc.reject_code, exc.reason)
            return
        except WireError as exc:
            # The real daemon acts on the messages before the bad one, then drops.
            self._handle(exc.frames)
            self._drop(f"bad message: {exc.reason}")
            return
        self._handle(frames)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        if self._outbox is not None:
            self._outbox.close()
        was = self._state
        self._state = _CLOSED
        if self._admission is not None:
            self.core.abandon(self._admission)
        session = self.session
        if session is not None and session.is_open:
            with self.daemon.batch:
                self.core.disconnect(session)
            log.info(
                "Spread session {private_group} from {peer} dropped: {reason}",
                spread_event="drop",
                private_group=session.private_group,
                peer=self.peer,
                reason="connection lost",
            )
        elif was is not _CLOSED:
            log.info(
                "Spread connection from {peer} closed during the handshake",
                spread_event="reject",
                peer=self.peer,
                reason="closed during the handshake",
            )
        self.daemon.connection_lost(self)

    # ----------------------------------------------------------------- frames

    def _handle(self, frames: list[ToDaemon]) -> None:
        core = self.core
        session = self.session
        for frame in frames:
            if type(frame) is Relay:
                core.relay(session, frame)  # type: ignore[arg-type]
            elif type(frame) is Multicast:
                core.multicast(
                    session,  # type: ignore[arg-type]
                    frame.service_type,
                    frame.groups,
                    frame.data,
                    hint=frame.hint,
                )
            elif type(frame) is Join:
                core.join(session, frame.group)  # type: ignore[arg-type]
            elif type(frame) is Leave:
                core.leave(session, frame.group)  # type: ignore[arg-type]
            elif type(frame) is Kill:
                self._drop("KILL_MESS", clean=True)
                return
            elif type(frame) is ConnectRequest:
                self._connect_request(frame)
                return
            elif type(frame) is AuthChoice:
                self._auth_choice(frame)
                return
            if self._state is not _OPEN:
                return
            session = self.session

    def _connect_request(self, request: ConnectRequest) -> None:
        self._cancel_timers()
        self._request = request
        assert self._admission is not None
        try:
            self.core.claim(self._admission, request.name)
        except IllegalName:
            self._reject(RejectCode.REJECT_ILLEGAL_NAME, f"illegal name {request.name!r}")
            return
        except NameNotUnique:
            self._reject(RejectCode.REJECT_NOT_UNIQUE, f"name {request.name!r} in use")
            return
        if not request.has_auth_phase:
            # Libraries before 3.16.0 have no auth phase (section 4, trace c6).
            self._accept()
            return
        self._state = _AUTH
        self._transport.write(self.daemon.auth_list)
        self._timer = self.daemon.reactor.callLater(self.daemon.handshake_timeout, self._stalled)
        self._decode(self._decoder.expect_auth)

    def _auth_choice(self, choice: AuthChoice) -> None:
        # DaemonDecoder has checked the methods against ours (REJECT_AUTH otherwise).
        self._cancel_timers()
        self._accept()

    def _accept(self) -> None:
        assert self._admission is not None and self._request is not None
        outbox = self._outbox
        assert outbox is not None
        session = self.core.open(self._admission, outbox, membership=self._request.membership)
        self._admission = None
        self.session = session
        self._state = _OPEN
        self._transport.write(
            encode_accept(session.private_group, client_version=self._request.version)
        )
        log.info(
            "Spread session {private_group} connected from {peer}",
            spread_event="connect",
            private_group=session.private_group,
            peer=self.peer,
            membership=session.membership,
            version=".".join(map(str, self._request.version)),
        )
        self._decode(self._decoder.accepted, session.private_group)

    # ----------------------------------------------------------------- endings

    def close(self, reason: str) -> None:
        """Close this connection from the daemon's side, for ``reason``."""
        if self._state is _OPEN:
            with self.daemon.batch:
                self._drop(reason, clean=True)
        elif self._state is not _CLOSED:
            self._reject(None, reason)

    def _stalled(self) -> None:
        self._timer = None
        if self._state is _CONNECT:
            self._reject(None, f"no connect record within {self.daemon.handshake_timeout} s")
        elif self._state is _AUTH:
            self._reject(
                RejectCode.REJECT_AUTH,
                f"no auth choice within {self.daemon.handshake_timeout} s",
            )

    def _reject(self, code: int | None, reason: str) -> None:
        """Refuse the session during the handshake: the reject byte (if the real daemon
        sends one), then close."""
        self._cancel_timers()
        self._state = _CLOSED
        if self._admission is not None:
            self.core.abandon(self._admission)
            self._admission = None
        if code is not None:
            self._transport.write(encode_reject(code))
        log.info(
            "Spread connection from {peer} rejected: {reason}",
            spread_event="reject",
            peer=self.peer,
            reason=reason,
            code=code,
        )
        self._close_transport()

    def _drop(self, reason: str, *, clean: bool = False) -> None:
        """End an open session: the other members get CAUSED_BY_DISCONNECT."""
        if self._state is _CLOSED:
            return
        self._state = _CLOSED
        session = self.session
        if session is not None:
            self.core.disconnect(session)
            # a client that said goodbye was not dropped
            emit, what, event = (
                (log.info, "disconnected ({reason})", "disconnect")
                if clean
                else (log.warn, "dropped: {reason}", "drop")
            )
            emit(
                "Spread session {private_group} from {peer} " + what,
                spread_event=event,
                private_group=session.private_group,
                peer=self.peer,
                reason=reason,
            )
        self._close_transport()

    def _overflow(self) -> None:
        # Called from inside a delivery: DaemonCore queues the disconnect behind it.
        outbox = self._outbox
        assert outbox is not None
        queued = outbox.queued
        outbox.close()
        self._drop(f"not reading: {queued} messages queued")

    def _close_transport(self) -> None:
        if self._outbox is not None:
            self._outbox.flush()
            self._outbox.close()
        self._transport.loseConnection()
        # A client that does not read would keep a lost connection's buffer forever.
        self._abort_call = self.daemon.reactor.callLater(self.daemon.close_timeout, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        abort = getattr(self._transport, "abortConnection", None)
        if abort is not None:
            abort()

    def _cancel_timers(self) -> None:
        for call in (self._timer, self._abort_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = None
        self._abort_call = None


# --------------------------------------------------------------------------- factory


def _as_networks(networks: Iterable[Network | str] | None) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n) if isinstance(n, str) else n for n in networks or ())


def _peer_host(addr: IAddress) -> str | None:
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) else None


def _describe(addr: IAddress) -> str:
    host = _peer_host(addr)
    if host is None:
        return str(getattr(addr, "name", None) or "local")
    return f"{host}:{getattr(addr, 'port', '?')}"


class SpreadDaemonFactory(Factory):
    """Builds a :class:`SpreadDaemonProtocol` per client connection of one daemon.

    ``core`` is the daemon's :class:`~spreadqueue._spread.core.DaemonCore`; in-process
    sessions can be opened on it directly (see :class:`~.groups.LocalLink`).

    Clients on loopback (and Unix sockets) are always served; clients from elsewhere
    only when their address is in one of ``allowed_networks``.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        name: str = "localhost",
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        allowed_networks: Iterable[Network | str] | None = None,
        time: int | None = None,
        randrange: Callable[[int], int] | None = None,
        handshake_timeout: float = 1.0,
        max_queued: int = DEFAULT_MAX_QUEUED,
        close_timeout: float = 10.0,
        coalesce_writes: bool = True,
        auth_methods: Iterable[str] = ("NULL",),
    ) -> None:
        self.noisy = False
        self.reactor = reactor
        self.core = DaemonCore(
            name,
            time=int(reactor.seconds()) if time is None else time,
            max_sessions=max_sessions,
            randrange=randrange,
        )
        self.allowed_networks = _as_networks(allowed_networks)
        self.handshake_timeout = handshake_timeout
        self.max_queued = max_queued
        self.close_timeout = close_timeout
        #: the batch every read of every connection runs in (see :class:`_Outbox`)
        self.batch = DeliveryBatch(stages=2, reactor=reactor)
        self._coalesce = coalesce_writes
        self.auth_methods = tuple(auth_methods)
        self.auth_list = encode_auth_list(self.auth_methods)
        self.connections: set[SpreadDaemonProtocol] = set()
        #: links of the in-process sessions (see :func:`local_session`)
        self.local_links: set[LocalLink] = set()

    @property
    def name(self) -> str:
        """The daemon's name (the part after the second ``#`` of private groups)."""
        return self.core.name

    def allows(self, addr: IAddress) -> bool:
        """True when a client at ``addr`` may connect."""
        host = _peer_host(addr)
        if host is None:
            return True  # a Unix socket or an in-memory transport: local
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return True
        return any(ip in net for net in self.allowed_networks)

    def buildProtocol(self, addr: IAddress) -> SpreadDaemonProtocol | None:  # type: ignore[override]
        peer = _describe(addr)
        if not self.allows(addr):
            log.warn(
                "Spread connection from {peer} refused: not in the allowed networks",
                spread_event="reject",
                peer=peer,
                reason="address not allowed",
            )
            return None
        protocol = SpreadDaemonProtocol(self, peer)
        protocol.factory = self
        return protocol

    def startFactory(self) -> None:
        """Ask the reactor, if it can, to run each wake-up's reads in one batch (the
        lean reactor of :mod:`spreadqueue._service.reactors`)."""
        add = getattr(self.reactor, "add_poll_bracket", None)
        if add is not None and self._coalesce:
            add(self.batch.begin, self.batch.end)

    def stopFactory(self) -> None:
        """Stop batching per wake-up (see :meth:`startFactory`)."""
        remove = getattr(self.reactor, "remove_poll_bracket", None)
        if remove is not None:
            remove(self.batch.begin, self.batch.end)

    @property
    def coalescing(self) -> bool:
        """True when the writes of one read are merged per connection."""
        return self._coalesce

    def connection_made(self, protocol: SpreadDaemonProtocol) -> None:
        """Track ``protocol`` (so :meth:`close_all` can reach it)."""
        self.connections.add(protocol)

    def connection_lost(self, protocol: SpreadDaemonProtocol) -> None:
        """Forget ``protocol``."""
        self.connections.discard(protocol)

    def close_all(self) -> None:
        """Close every client connection and in-process session (the daemon stops)."""
        for protocol in list(self.connections):
            protocol.close("the daemon is stopping")
        with self.batch:
            for link in list(self.local_links):
                link.send_kill()


# --------------------------------------------------------------------------- running


def listen(
    reactor: Any, endpoint: str = DEFAULT_LISTEN, **options: Any
) -> Deferred[IListeningPort]:
    """Listen for Spread clients on ``endpoint`` (a server endpoint string).

    ``options`` go to :class:`SpreadDaemonFactory`. The port's ``factory`` attribute
    (for TCP) is the daemon's factory; its ``core`` takes in-process sessions.
    """
    factory = SpreadDaemonFactory(reactor, **options)
    d: Deferred[IListeningPort] = serverFromString(reactor, endpoint).listen(factory)
    return d


class SpreadDaemonService(Service):
    """The embedded daemon as a ``twisted.application`` service.

    It binds ``endpoint`` (by default the Spread port on 127.0.0.1 only); clients from
    other hosts are served only from ``allowed_networks`` (``ipaddress`` networks or
    strings like ``"10.0.0.0/8"``). ``options`` go to :class:`SpreadDaemonFactory`.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_LISTEN,
        name: str = "localhost",
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        allowed_networks: Iterable[Network | str] = (),
        reactor: Any = None,
        **options: Any,
    ) -> None:
        self.endpoint = endpoint
        self.daemon_name = name
        self.max_sessions = max_sessions
        self.allowed_networks = _as_networks(allowed_networks)
        self._reactor = reactor
        self._options = options
        self._factory: SpreadDaemonFactory | None = None
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._outcome: IListeningPort | Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    @property
    def reactor(self) -> Any:
        """The reactor given, or the global one (imported only when needed)."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def factory(self) -> SpreadDaemonFactory:
        """The daemon's factory (made on first use); ``factory.core`` is its state."""
        if self._factory is None:
            self._factory = SpreadDaemonFactory(
                self.reactor,
                self.daemon_name,
                max_sessions=self.max_sessions,
                allowed_networks=self.allowed_networks,
                **self._options,
            )
        return self._factory

    def startService(self) -> None:
        super().startService()
        d = maybeDeferred(
            lambda: serverFromString(self.reactor, self.endpoint).listen(self.factory)
        )
        self._listening = d
        d.addCallbacks(self._listened, self._listen_failed)

    def _listened(self, port: IListeningPort) -> None:
        self._listening = None
        self.port = port
        self._outcome = port
        log.info(
            "Spread daemon {name} listening on {address} ({endpoint})",
            name=self.daemon_name,
            endpoint=self.endpoint,
            address=_describe(port.getHost()),
        )
        self._tell_waiters()

    def _listen_failed(self, failure: Failure) -> None:
        self._listening = None
        self._outcome = failure
        log.error(
            "Spread daemon cannot listen on {endpoint}: {why}",
            endpoint=self.endpoint,
            why=failure.getErrorMessage(),
        )
        self._tell_waiters()

    def _tell_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: Deferred[IListeningPort]) -> None:
        outcome = self._outcome
        if isinstance(outcome, Failure):
            waiter.errback(outcome)
        elif outcome is not None:
            waiter.callback(outcome)

    def whenListening(self) -> Deferred[IListeningPort]:
        """A Deferred that fires with the listening port, or fails if binding failed."""
        waiter: Deferred[IListeningPort] = Deferred()
        if self._outcome is None:
            self._waiters.append(waiter)
        else:
            self._fire(waiter)
        return waiter

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._factory is not None:
            self._factory.close_all()
        self._outcome = None
        port, self.port = self.port, None
        if port is not None:
            stopped = port.stopListening()
            return stopped if stopped is not None else succeed(None)
        if self._listening is not None:
            self._listening.cancel()
        return succeed(None)
