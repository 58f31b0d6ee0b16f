"""Queue managers and workers as whole processes run them (``sqm``, the twistd plugins).

- :class:`ManagerProcessService` connects a :class:`ManagerService` to the Spread
  daemon; in ``embedded='auto'`` mode (what ``sqm`` does) it starts an embedded daemon
  in the same process when nothing answers at a local address, and then the manager
  is an in-process session of that daemon: same API, no socket, no encoding.
- :class:`WorkerProcessService` runs a :class:`Worker` on a session that survives the
  daemon going away (:func:`~spreadqueue._spread.keeper.keep_session`): it reconnects
  with back-off under the same private name, and the worker keeps its tasks meanwhile.
Both write a readiness file when ready, for scripts and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._queue.inspect import QueueInspector
from .._queue.manager import ManagerService
from .._queue.worker import Handler, Worker
from .._spread.client import connect, link_opener
from .._spread.daemon import SpreadDaemonService
from .._spread.endpoints import spread_address
from .._spread.interfaces import ISpreadSession
from .._spread.keeper import Backoff, keep_session, reconnect_delays
from .._spread.local import local_session
from .._spread.session import SpreadSession
from .dashboard import QueueMonitor, dashboard_resource
from .http import HTTPService
from .metrics import metrics_resource, registry_of

__all__ = ["Backoff", "ManagerProcessService", "WorkerProcessService", "reconnect_delays"]

log = Logger()

EMBEDDED_MODES = ("never", "auto", "always")


class ManagerProcessService(MultiService):
    """A queue manager process: a ManagerService, and an embedded daemon if needed.

    ``embedded`` is ``'never'`` (connect to ``spread``, retrying while it is down),
    ``'auto'`` or ``'always'`` (start an embedded daemon at ``spread``, which must be a
    local address, and use an in-process session of it). In ``'auto'`` mode, whenever
    nothing answers at a local ``spread`` (at start, or after the daemon went away),
    the manager starts the embedded daemon itself: of several such managers exactly one
    wins the port, and the others connect to it. ``on_ready`` is called once the
    manager is the active manager of the queue; ``on_failure(failure)`` if it cannot
    start at all.
    """

    def __init__(
        self,
        reactor: Any,
        queue: str,
        spread: str,
        *,
        embedded: str = "never",
        name: str | None = None,
        on_ready: Callable[[], object] | None = None,
        on_failure: Callable[[Failure], object] | None = None,
        metrics: str | None = None,
        web: str | None = None,
        **manager_options: Any,
    ) -> None:
        super().__init__()
        if embedded not in EMBEDDED_MODES:
            raise ValueError(f"embedded must be one of {EMBEDDED_MODES}")
        address = spread_address(spread)
        if embedded != "never" and (not address.is_local or address.port is None):
            embedded = "never"  # only a local address can be ours
        self.reactor = reactor
        self.queue = queue
        self.spread = spread
        self.embedded = embedded
        self.private_name = name
        self.daemon: SpreadDaemonService | None = None
        self._address = address
        self._on_ready = on_ready
        self._on_failure = on_failure
        backoff = reconnect_delays(spread)
        options: dict[str, Any] = {
            "reconnect_delay": backoff.initial,
            "max_reconnect_delay": backoff.maximum,
            "reconnect_jitter": backoff.jitter,
            **manager_options,
        }
        self.manager = ManagerService(
            reactor, lambda: Deferred.fromCoroutine(self._open_session()), queue, **options
        )
        #: the web faces (metrics, dashboard) asked for, started with the process
        self.http: list[HTTPService] = []
        if metrics:
            registry = registry_of("manager", lambda: [self.manager.status()])
            self._serve(
                HTTPService(reactor, metrics, metrics_resource(registry), "metrics", "/metrics")
            )
        self._inspector: QueueInspector | None = None
        self.monitor: QueueMonitor | None = None
        if web:
            self.monitor = QueueMonitor(reactor, self._inspect)
            self._serve(HTTPService(reactor, web, dashboard_resource(self.monitor), "dashboard"))

    def _serve(self, http: HTTPService) -> None:
        self.http.append(http)
        http.setServiceParent(self)
        http.whenListening().addErrback(self._failed)

    def _inspect(self) -> QueueInspector | None:
        """An inspector on the manager's current session (the dashboard asks through it)."""
        session = self.manager.session
        if session is None:
            return None
        if self._inspector is None or self._inspector.session is not session:
            if self._inspector is not None:
                self._inspector.close()
            self._inspector = QueueInspector(self.reactor, session, self.queue)
        return self._inspector

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._start()).addErrback(self._failed)

    async def _start(self) -> None:
        if self.embedded == "always":
            # Asked for: a daemon that cannot listen is a failure to start, not a retry.
            await self._start_daemon()
        self.manager.setServiceParent(self)
        if self.monitor is not None:
            self.monitor.start()
        await self.manager.whenActive()
        if self._on_ready is not None:
            self._on_ready()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop the manager first (its goodbye goes through the daemon, which may be
        ours and a later child), then the rest."""

        async def stop() -> None:
            if self.monitor is not None:
                self.monitor.stop()
            if self.manager.parent is self:
                await self.manager.disownServiceParent()
            await MultiService.stopService(self)

        return Deferred.fromCoroutine(stop())

    def _failed(self, failure: Failure) -> None:
        if self._on_failure is not None:
            self._on_failure(failure)
        else:
            log.failure("queue manager {queue} cannot start", failure, queue=self.queue)

    async def _open_session(self) -> ISpreadSession:
        """A session for the manager: in process when the daemon is ours, else over TCP;
        in auto mode, with nothing answering, the daemon becomes ours."""
        if self.daemon is not None:
            return self._local_session()
        try:
            return await connect(self.reactor, self.spread, self.private_name)
        except ConnectionRefusedError:
            if self.embedded != "auto":
                raise
        try:
            await self._start_daemon()
        except CannotListenError:
            # Another manager took the port between our attempts: connect to it next time.
            raise ConnectionRefusedError(
                f"no Spread daemon at {self.spread}, and another process is starting one"
            ) from None
        return self._local_session()

    def _local_session(self) -> ISpreadSession:
        assert self.daemon is not None
        session = local_session(self.daemon.factory, self.private_name or "")
        log.info(
            "queue manager {queue} uses {session}, an in-process session of the embedded "
            "daemon (Spread {spread})",
            queue=self.queue,
            session=session.private_group,
            spread=self.spread,
        )
        return session

    async def _start_daemon(self) -> None:
        daemon = SpreadDaemonService(self._address.listen_endpoint(), reactor=self.reactor)
        daemon.setServiceParent(self)  # (starts it: we are running)
        try:
            await daemon.whenListening()
        except BaseException:
            await daemon.disownServiceParent()
            raise
        self.daemon = daemon
        log.info(
            "no Spread daemon answered at {spread}: started an embedded Spread daemon on "
            "127.0.0.1:{port} in this process (use --no-embedded-daemon to forbid this)",
            spread=self.spread,
            port=self._address.port,
        )


class WorkerProcessService(MultiService):
    """A worker process: one Worker on one Spread session that survives daemon restarts.

    The session reconnects by itself (with back-off, under the same private name) and
    the worker keeps its tasks meanwhile; only a refusal for good ends it, and then the
    process (``on_failure``), as when it cannot start.
    """

    def __init__(
        self,
        reactor: Any,
        queue: str,
        spread: str,
        handlers: Mapping[str, Handler],
        *,
        concurrency: int = 1,
        name: str | None = None,
        on_ready: Callable[[], object] | None = None,
        on_failure: Callable[[Failure], object] | None = None,
        backoff: Backoff | None = None,
        metrics: str | None = None,
        **worker_options: Any,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.queue = queue
        self.spread = spread
        self.handlers = dict(handlers)
        self.concurrency = concurrency
        self.private_name = name
        self.worker: Worker | None = None
        self._on_ready = on_ready
        self._on_failure = on_failure
        self._worker_options = worker_options
        self._backoff = backoff or reconnect_delays(spread)
        self._opening: Deferred[SpreadSession] | None = None
        self._session: SpreadSession | None = None
        if metrics:
            registry = registry_of("worker", lambda: [self.worker.status()] if self.worker else [])
            http = HTTPService(reactor, metrics, metrics_resource(registry), "metrics", "/metrics")
            http.setServiceParent(self)
            http.whenListening().addErrback(self._cannot_open)

    @property
    def session(self) -> ISpreadSession | None:
        """The worker's session (None before it first connected, or once stopped)."""
        return self._session

    def startService(self) -> None:
        super().startService()
        self._opening = keep_session(
            self.reactor,
            link_opener(self.reactor, self.spread),
            self.private_name,
            who=f"worker of queue {self.queue}",
            backoff=self._backoff,
        )
        self._opening.addCallbacks(self._attach, self._cannot_open)

    def _attach(self, session: SpreadSession) -> None:
        self._opening = None
        self._session = session
        worker = Worker(
            self.reactor,
            session,
            self.queue,
            self.handlers,
            concurrency=self.concurrency,
            **self._worker_options,
        )
        self.worker = worker
        session.whenDisconnected().addCallback(lambda _: self._ended(session))
        worker.start().addCallback(lambda _: self._registered(worker))

    def _registered(self, worker: Worker) -> None:
        log.info(
            "worker {worker} of queue {queue} ready on {group} ({n} handlers, concurrency "
            "{c}, plain handlers in {pool})",
            worker=worker.worker_id,
            queue=self.queue,
            group=worker.session.private_group,
            n=len(self.handlers),
            c=self.concurrency,
            pool=worker.pool,
        )
        if self._on_ready is not None:
            ready, self._on_ready = self._on_ready, None
            ready()

    def _cannot_open(self, failure: Failure) -> None:
        if failure.check(CancelledError) and not self.running:
            return  # stopped before the first session
        if self._on_failure is not None:
            self._on_failure(failure)

    def _ended(self, session: SpreadSession) -> None:
        """The session ended for good: refused when reconnecting (or we stopped)."""
        if self.running and session.disconnect_reason is not None:
            log.error(
                "worker of queue {queue}: Spread session {group} ended for good: {why}",
                queue=self.queue,
                group=session.private_group,
                why=session.disconnect_reason.getErrorMessage(),
            )
            self._cannot_open(session.disconnect_reason)

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop taking work, finish what is in flight (bounded), then disconnect."""
        super().stopService()
        worker, session, opening = self.worker, self._session, self._opening
        self._opening = None

        async def drain() -> None:
            if opening is not None:
                opening.cancel()  # not connected yet: stop trying
            if worker is not None:
                await worker.stop()
            if session is not None:
                await session.disconnect()

        return Deferred.fromCoroutine(drain())
