"""Keeping a Spread session open: a new one, with back-off, whenever it is lost.

:class:`SessionKeeper` is Twisted's :class:`~twisted.application.internet.ClientService`
(its state machine, its retries, its orderly stop) over any way of opening a session:
a TCP connection to a daemon, an in-process session of the embedded daemon, or a
function that decides between them. ClientService keeps one connection of an
endpoint; :class:`_SessionEndpoint` makes "open a session" such an endpoint, and a
session's end the connection's loss.

Some failures do not go away by trying again: a private name the daemon calls
illegal, a version or authentication it refuses. Those end the keeper (the caller
decides what that means for the process) instead of being retried forever.

:func:`keep_session` uses a keeper to keep *one* :class:`SpreadSession` alive across
the loss of its daemon connection: each new connection asks for the session's private
name again and becomes its new link (:meth:`SpreadSession.relink`), so its users keep
their listeners, groups and address (``#name#daemon``, the reply-to of tasks in
flight) and hear only "lost" and "back". The keeper sees such a session's connection
end when it is lost, not only when it closes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .endpoints import spread_address
from .errors import AuthRejected, IllegalGroupName, IllegalName, NameNotUnique, VersionRejected
from .interfaces import ISpreadSession
from .session import SessionBack, SessionLost, SpreadSession

__all__ = [
    "LOCAL_BACKOFF",
    "REMOTE_BACKOFF",
    "Backoff",
    "LinkOpener",
    "SessionKeeper",
    "is_permanent",
    "keep_session",
    "reconnect_delays",
]

_log = Logger()

#: Rejects that trying again cannot change.
_PERMANENT = (IllegalName, IllegalGroupName, VersionRejected, AuthRejected)
#: A duplicate name may belong to a process that is still going away: tried this often.
_NAME_IN_USE_ATTEMPTS = 5


class Backoff(NamedTuple):
    """Seconds before the first reconnection attempt, the most between two, and the
    random part of each delay (a fraction of it)."""

    initial: float
    maximum: float
    jitter: float


#: A daemon on this machine restarts in well under a second, and the clients of a queue
#: must come back quickly.
LOCAL_BACKOFF = Backoff(0.2, 1.0, 0.5)
#: Another machine's daemon: do not hammer it (nor the network) while it is away.
REMOTE_BACKOFF = Backoff(1.0, 30.0, 0.2)


def reconnect_delays(spread: str) -> Backoff:
    """The back-off for a session with the daemon at ``spread``: short for one on this
    machine, longer for a remote one; jittered either way."""
    return LOCAL_BACKOFF if spread_address(spread).is_local else REMOTE_BACKOFF


def is_permanent(failure: Failure, attempt: int) -> bool:
    """True when opening a session failed for good (the ``attempt``-th failure in a row):
    a configuration error rather than a daemon that is away."""
    if failure.check(*_PERMANENT):
        return True
    return bool(failure.check(NameNotUnique)) and attempt >= _NAME_IN_USE_ATTEMPTS


class _Transport:
    """What ClientService sees of a session: a transport it can close."""

    def __init__(self, session: ISpreadSession) -> None:
        self.session = session

    def loseConnection(self) -> None:
        if self.session.connected:
            self.session.disconnect()


class _SessionProtocol(Protocol):
    """Carries the session (ClientService hands the protocol to whenConnected)."""

    session: ISpreadSession | None = None

    def makeConnection(self, transport: Any) -> None:
        self.session = transport.session
        super().makeConnection(transport)


@implementer(IStreamClientEndpoint)
class _SessionEndpoint:
    """An endpoint whose connections are sessions from ``open_session``."""

    def __init__(self, keeper: SessionKeeper) -> None:
        self._keeper = keeper

    def __repr__(self) -> str:
        return f"<Spread session of {self._keeper.who}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        keeper = self._keeper
        d = maybeDeferred(keeper.open_session)

        def opened(session: ISpreadSession) -> Any:
            proto = protocolFactory.buildProtocol(None)  # type: ignore[arg-type]
            assert proto is not None
            proto.makeConnection(_Transport(session))  # type: ignore[arg-type]
            _at_end_of_connection(session, proto.connectionLost)
            return proto

        return d.addCallbacks(opened, keeper._failed)


def _at_end_of_connection(session: ISpreadSession, then: Callable[[Failure], object]) -> None:
    """Call ``then(reason)`` once, when this connection of ``session`` ends: the
    session closes, or (one that reconnects) it is lost."""
    closed = session.whenDisconnected()
    ended: list[bool] = []

    def finish(reason: Failure) -> None:
        session.remove_reconnect_listener(lost)
        if not closed.called:
            closed.cancel()  # (its waiter would pile up, one per connection)
        if not ended:
            ended.append(True)
            then(reason)

    def lost(event: SessionLost | SessionBack) -> None:
        if isinstance(event, SessionLost):
            finish(Failure(ConnectionLost(event.reason)))

    def gone(_: object) -> None:
        reason = getattr(session, "disconnect_reason", None)
        finish(reason or Failure(ConnectionLost("session ended")))

    session.add_reconnect_listener(lost)
    closed.addCallbacks(gone, lambda _: None)


class SessionKeeper(Service):
    """Keeps a session from ``open_session()`` open as long as the service runs.

    ``on_session(session)`` is called with every session opened, the first and each
    one after a loss. A failed attempt, and the first attempt after a loss, come
    ``initial_delay`` seconds after, each further one twice as long after up to
    ``max_delay``, each delay stretched by a random part of up to
    ``jitter`` of it (so that many clients of a restarted daemon do not come back in
    step). A failure :func:`is_permanent` calls ``on_permanent(failure)`` and stops the
    keeper. ``who`` names the keeper's owner in logs.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        open_session: Callable[[], Deferred[Any]],
        on_session: Callable[[ISpreadSession], object],
        *,
        who: str = "Spread client",
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
        jitter: float = 0.1,
        randomness: Callable[[], float] = random.random,
        on_permanent: Callable[[Failure], object] | None = None,
    ) -> None:
        if initial_delay <= 0 or max_delay < initial_delay or jitter < 0:
            raise ValueError("delays must be positive, max_delay >= initial_delay, jitter >= 0")
        self.open_session = open_session
        self.who = who
        self._reactor = reactor
        self._on_session = on_session
        self._on_permanent = on_permanent
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._jitter = jitter
        self._random = randomness
        self._failures = 0
        self._waits = 0  # waits since the last session opened (ClientService's count)
        self._next_delay: float | None = None  # worked out (and logged) at a failure
        self._client = ClientService(
            _SessionEndpoint(self),
            Factory.forProtocol(_SessionProtocol),
            retryPolicy=self._delay,
            clock=reactor,
            prepareConnection=self._prepared,
        )

    def _delay(self, attempt: int) -> float:
        """ClientService's retry policy: the delay before attempt ``attempt + 1``."""
        self._waits = attempt
        delay, self._next_delay = self._next_delay, None
        if delay is None:
            delay = self._delay_for(attempt)
        return delay

    def _delay_for(self, attempt: int) -> float:
        delay = min(self._initial_delay * 2 ** max(0, attempt - 1), self._max_delay)
        return delay * (1 + self._jitter * self._random())

    def _prepared(self, proto: Any) -> None:
        self._failures = self._waits = 0
        self._on_session(proto.session)

    def _failed(self, failure: Failure) -> Failure:
        self._failures += 1
        if self.running and is_permanent(failure, self._failures):
            _log.error(
                "{who}: cannot open a Spread session ({error}); not retrying",
                who=self.who,
                error=failure.getErrorMessage(),
            )
            # After ClientService has taken this failure (it then waits to retry).
            self._reactor.callLater(0, self._give_up, failure)
        elif self.running:
            delay = self._next_delay = self._delay_for(self._waits + 1)
            _log.warn(
                "{who}: cannot open a Spread session ({error}); retrying in {delay:.1f}s",
                who=self.who,
                error=failure.getErrorMessage(),
                delay=delay,
            )
        return failure

    def _give_up(self, failure: Failure) -> None:
        if not self.running:
            return
        self.stopService()
        if self._on_permanent is not None:
            self._on_permanent(failure)

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop retrying and close the current session; fires once it is closed."""
        super().stopService()
        return self._client.stopService()


#: Opens one connection of a session: ``open_link(name, resume)`` asks the daemon for
#: the private ``name`` (None: the daemon invents one) and fires with ``resume``
#: relinked (:meth:`SpreadSession.relink`), or with a new session when ``resume`` is
#: None.
LinkOpener = Callable[[str | None, SpreadSession | None], "Deferred[SpreadSession]"]


def keep_session(
    reactor: IReactorTime,
    open_link: LinkOpener,
    name: str | None = None,
    *,
    who: str = "Spread client",
    backoff: Backoff = REMOTE_BACKOFF,
    retry_first: bool = True,
    randomness: Callable[[], float] = random.random,
) -> Deferred[SpreadSession]:
    """A session that survives the loss of its daemon connection.

    The Deferred fires with the session once ``open_link`` has opened it. From then on
    a :class:`SessionKeeper` reconnects it whenever it is lost, with ``backoff``,
    asking for its private name again (the one the daemon gave the first time), until
    :meth:`SpreadSession.disconnect` ends it, or a failure that trying again cannot
    mend (:func:`is_permanent`) does: the session then ends with that failure as its
    ``disconnect_reason``. With ``retry_first`` the first connection is retried too
    (services that may start before their daemon), and only a permanent failure fails
    the Deferred; without it, the Deferred fails with the first attempt's error.
    Cancelling it stops trying.
    """
    kept = _KeptSession(reactor, open_link, name, who, backoff, randomness)
    if retry_first:
        kept.keeper.startService()
        return kept.ready

    def opened(session: SpreadSession) -> Deferred[SpreadSession]:
        kept.first = kept.adopt(session)
        kept.keeper.startService()  # its first "connection" is this session
        return kept.ready

    return open_link(name, None).addCallback(opened)


class _KeptSession:
    """What :func:`keep_session` keeps: the session, its name, its keeper."""

    def __init__(
        self,
        reactor: IReactorTime,
        open_link: LinkOpener,
        name: str | None,
        who: str,
        backoff: Backoff,
        randomness: Callable[[], float],
    ) -> None:
        self._reactor = reactor
        self._open_link = open_link
        self._name = name
        self.session: SpreadSession | None = None
        #: a session opened before the keeper started (handed to it as its first)
        self.first: SpreadSession | None = None
        self.ready: Deferred[SpreadSession] = Deferred(lambda _: self._stop())
        self.keeper = SessionKeeper(
            reactor,
            self._open,
            self._opened,
            who=who,
            initial_delay=backoff.initial,
            max_delay=backoff.maximum,
            jitter=backoff.jitter,
            randomness=randomness,
            on_permanent=self._gave_up,
        )

    def _open(self) -> Deferred[SpreadSession]:
        first, self.first = self.first, None
        if first is not None:
            return succeed(first)
        return self._open_link(self._name, self.session).addCallback(self.adopt)

    def adopt(self, session: SpreadSession) -> SpreadSession:
        """The first time: make ``session`` one that reconnects, remember its name."""
        if self.session is None:
            self.session = session
            self._name = session.name
            session.survive_reconnects(self._reactor)
            session.whenDisconnected().addCallback(lambda _: self._stop())
            self.keeper.who = session.private_group  # "<who>: cannot open a Spread session ..."
        return session

    def _opened(self, session: ISpreadSession) -> None:
        if not self.ready.called and self.session is not None:
            self.ready.callback(self.session)

    def _stop(self) -> None:
        if self.keeper.running:
            self.keeper.stopService()

    def _gave_up(self, failure: Failure) -> None:
        session = self.session
        if session is None:
            if not self.ready.called:
                self.ready.errback(failure)
            return
        # Reconnecting cannot succeed: the session ends, with this as the reason.
        session.reconnects = False
        session.connection_lost(failure)
