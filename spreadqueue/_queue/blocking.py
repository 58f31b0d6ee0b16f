"""``BlockingSender``: the queue's sender for plain, non-Twisted scripts.

A Twisted reactor runs in a background (daemon) thread; every call hands its work to
that thread with :func:`twisted.internet.threads.blockingCallFromThread` and waits.
Perl's Spread::Queue synopsis works as written::

    sender = BlockingSender("myqueue")
    sender.submit("myfunc", {"name": "value"})
    response = sender.receive().value
    response = sender.rpc("myfunc", {"name": "value"})
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.threads import blockingCallFromThread
from twisted.python import threadable

from .._defaults import default_queue, default_spread
from .._spread.interfaces import ISpreadSession
from .interfaces import ISerializer
from .sender import Reply, Sender

__all__ = ["BlockingSender"]

T = TypeVar("T")

_lock = threading.Lock()
_threads: dict[int, threading.Thread] = {}


def _ensure_running(reactor: Any) -> None:
    """Run ``reactor`` in a daemon thread unless it is running (or starting) already."""
    with _lock:
        if reactor.running or id(reactor) in _threads:
            return
        thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="spreadqueue-reactor",
            daemon=True,
        )
        _threads[id(reactor)] = thread
        thread.start()


class BlockingSender:
    """Submit tasks to queue ``queue`` from ordinary (blocking) code.

    ``queue`` defaults to ``$SPREAD_QUEUE_NAME`` (as in Perl's Spread::Queue; then
    ``$SPREAD_QUEUE``). ``spread`` is the daemon's address, by default ``$SPREAD_DAEMON``
    or ``"4803@localhost"`` (``"4803@host"``, ``"4803"`` or a
    Twisted endpoint string); ``name`` the private name (None: the daemon invents a
    unique one). ``reactor`` defaults to Twisted's global reactor, started in a
    background thread if it is not running. ``session_factory`` (called in the
    reactor thread) replaces connecting to ``spread``, e.g. for tests. The session is
    the BlockingSender's own: :meth:`close` disconnects it. With ``reconnect`` (the
    default) it survives the daemon's restart: calls in flight wait for it (each
    within its own timeout) instead of failing.

    Do not use it from inside the reactor thread (use :class:`Sender` there).
    """

    def __init__(
        self,
        queue: str | None = None,
        spread: str | None = None,
        *,
        name: str | None = None,
        serializer: ISerializer | None = None,
        ack_timeout: float = 5.0,
        window: int = 256,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
        reactor: Any = None,
        session_factory: Callable[[], Deferred[ISpreadSession]] | None = None,
    ) -> None:
        if queue is None:
            queue = default_queue()
            if not queue:
                raise ValueError("no queue name given and $SPREAD_QUEUE_NAME is not set")
        if spread is None:
            spread = default_spread()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
            if reactor.running and threadable.isInIOThread():
                raise RuntimeError("BlockingSender would block the reactor; use Sender here")
        self._reactor = reactor
        _ensure_running(reactor)
        if session_factory is None:
            from .._spread.client import connect

            def session_factory() -> Deferred[ISpreadSession]:
                return connect(  # type: ignore[return-value]
                    reactor, spread, name, timeout=connect_timeout, reconnect=reconnect
                )

        self.session: ISpreadSession = self._call(session_factory)

        def make() -> Deferred[Sender]:
            sender = Sender(
                reactor,
                self.session,
                queue,
                serializer=serializer,
                ack_timeout=ack_timeout,
                window=window,
            )
            return sender.start().addCallback(lambda _: sender)

        self._sender: Sender = self._call(make)
        self._closed = False

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return blockingCallFromThread(self._reactor, fn, *args, **kwargs)

    # ------------------------------------------------------------------ API

    def submit(
        self, func: str, args: Any = None, *, timeout: float | None = None, priority: int = 0
    ) -> str:
        """Queue ``func(args)``; return its task id (see :meth:`Sender.submit`).
        ``priority``: 0 (the default) to 9, higher first."""
        return self._call(  # type: ignore[no-any-return]
            self._sender.submit, func, args, timeout=timeout, priority=priority
        )

    def enqueue(
        self,
        func: str,
        args: Any = None,
        *,
        reply_to: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
        run_at: float | None = None,
        timeout: float | None = None,
        priority: int = 0,
    ) -> str:
        """Queue a detached task; return its id once the queue's managers hold it (see
        :meth:`Sender.enqueue <spreadqueue.Sender.enqueue>`): it runs even after this
        process has exited."""
        return self._call(  # type: ignore[no-any-return]
            self._sender.enqueue,
            func,
            args,
            reply_to=reply_to,
            ttl=ttl,
            delay=delay,
            run_at=run_at,
            timeout=timeout,
            priority=priority,
        )

    def receive(self, timeout: float | None = None) -> Reply:
        """Wait for the next answer to a submitted task (completion order).

        Raises the task's TaskError (RemoteError, TaskTimeout, NoManager ...), or
        TimeoutError if nothing came within ``timeout`` seconds.
        """

        def receive() -> Deferred[Reply]:
            d = self._sender.receive()
            if timeout is not None:
                d.addTimeout(timeout, self._reactor)
            return d

        try:
            return self._call(receive)  # type: ignore[no-any-return]
        except DeferredTimeout:
            raise TimeoutError(f"no answer within {timeout:g}s") from None

    def rpc(
        self, func: str, args: Any = None, *, timeout: float | None = 30.0, priority: int = 0
    ) -> Any:
        """Call ``func(args)`` on a worker and return its final answer (or raise).
        ``priority``: 0 (the default) to 9, higher first."""
        return self._call(self._sender.rpc, func, args, timeout=timeout, priority=priority)

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished."""
        return self._call(lambda: self._sender.pending)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Cancel pending tasks, leave the queue and close the session.

        The reactor thread keeps running (a reactor cannot be restarted), so other
        BlockingSenders can still be made.
        """
        if self._closed:
            return
        self._closed = True

        def close() -> Deferred[None]:
            d = maybeDeferred(self._sender.stop)
            d.addBoth(lambda _: self.session.disconnect())
            return d

        self._call(close)

    def __enter__(self) -> BlockingSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
