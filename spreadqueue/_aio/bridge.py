"""Between Deferreds and asyncio: awaiting a Deferred, running a coroutine as one.

The queue's objects answer with Deferreds; asyncio code awaits futures. Both ways keep
cancellation: cancelling the asyncio task that awaits cancels the Deferred (an rpc
then tells the manager to drop its task), and cancelling the Deferred of a coroutine
cancels its asyncio task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

__all__ = ["as_deferred", "wait"]

T = TypeVar("T")


async def wait(d: Deferred[T], loop: asyncio.AbstractEventLoop) -> T:
    """``d``'s result (its exception raised as is); cancelling the awaiting task
    cancels ``d``.

    Unlike ``Deferred.asFuture`` this puts no done-callback on the future, which would
    cost every call one more turn of the loop: the cancellation is caught here.
    """
    future: asyncio.Future[T] = loop.create_future()

    def succeeded(result: T) -> None:
        if not future.done():
            future.set_result(result)

    def failed(failure: Failure) -> None:
        if not future.done():
            future.set_exception(failure.value)

    d.addCallbacks(succeeded, failed)
    try:
        return await future
    except asyncio.CancelledError:
        d.cancel()
        raise


def as_deferred(
    coro: Coroutine[Any, Any, T],
    loop: asyncio.AbstractEventLoop,
    *,
    tasks: set[asyncio.Task[T]] | None = None,
) -> Deferred[T]:
    """Run ``coro`` as an asyncio task on ``loop``; a Deferred of its outcome.

    Cancelling the Deferred cancels the task and fails the Deferred at once with
    Twisted's CancelledError (what a worker counts as a cancelled task); a task that
    ends in asyncio's CancelledError on its own fails it the same way. The task is in
    ``tasks`` (when given) until it has ended, cancelled or not: the Deferred may fire
    before a cancelled task has finished cleaning up.
    """
    task = loop.create_task(coro)
    if tasks is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def cancel(_: Deferred[T]) -> None:
        task.cancel()

    d: Deferred[T] = Deferred(cancel)

    def done(t: asyncio.Task[T]) -> None:
        if t.cancelled():
            if not d.called:
                d.errback(CancelledError())
            return
        error = t.exception()  # (retrieved even when nobody waits any more)
        if d.called:
            return
        if error is None:
            d.callback(t.result())
        else:
            d.errback(Failure(error, type(error), error.__traceback__))

    task.add_done_callback(done)
    return d
