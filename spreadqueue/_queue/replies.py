"""What a task's answer means to whoever reads it, and a reader of a reply group.

- :class:`Reply`, :func:`answer` and :func:`failure`: a RESULT entry or a FAILED
  entry as the :class:`Reply` or :class:`TaskError` an application gets. The one
  mapping of the queue's answers, for :class:`~spreadqueue._queue.sender.Sender` and
  :class:`ReplyReader` alike.
- :class:`Answers`: answers kept in completion order for ``receive()`` and the
  Deferreds of those waiting for one (``Sender.receive``, ``ReplyReader.receive``).
- :class:`ReplyReader`: joins the Spread group that detached tasks answer
  (``Sender.enqueue(..., reply_to=GROUP)``) and hands out their answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spread.interfaces import ISpreadSession
from .._spread.wire import RegularMessage, check_group_name
from .errors import (
    DeadLettered,
    MalformedMessage,
    QueueFull,
    ReaderStopped,
    RemoteError,
    TaskCancelled,
    TaskError,
    UnknownFunction,
    WorkerLost,
)
from .interfaces import ISerializer
from .messages import MESS_TYPE_BASE, Kind, Reason, Status, decode
from .serializer import default_serializer
from .throttle import WarningThrottle

__all__ = ["Answers", "Reply", "ReplyReader", "answer", "check_reply_group", "failure"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer to a task, as :meth:`Sender.receive` and :meth:`ReplyReader.receive`
    return it.

    ``final`` is False for the earlier answers of a task that answered several
    times (Spread::Queue's repeated ``respond``); the last answer is final.
    """

    task_id: str
    value: Any
    final: bool = True


#: What a FAILED says, as the error its task fails with (RESUBMIT is not a failure).
_FAILURES: Final[dict[int, Callable[[str, str], TaskError]]] = {
    Reason.WORKER_LOST: WorkerLost,
    Reason.QUEUE_FULL: QueueFull,
    Reason.CANCELLED: TaskCancelled,
    Reason.DEAD_LETTER: DeadLettered,
}


def answer(task_id: str, func: str, entry: Any, loads: Callable[[bytes], Any]) -> Reply | TaskError:
    """A RESULT entry as what its reader gets: a :class:`Reply` (a value that
    ``loads`` cannot read is a RemoteError ``spreadqueue.BadResult``), or the handler's
    error, an unknown ``func``, or the worker's cancellation as a TaskError."""
    status = entry.status
    if status == Status.OK:
        try:
            return Reply(task_id, loads(entry.payload), entry.final)
        except ValueError as err:
            return RemoteError(task_id, "spreadqueue.BadResult", str(err))
    if status == Status.ERROR:
        return RemoteError(task_id, *entry.payload)
    if status == Status.UNKNOWN_FUNCTION:
        return UnknownFunction(task_id, func, entry.payload)
    return TaskError(task_id, "the worker cancelled the task")


def failure(task_id: str, reason: int, message: str) -> TaskError:
    """A FAILED entry's ``reason`` as the error its task ends with (not RESUBMIT:
    that one asks its sender to submit again)."""
    return _FAILURES.get(reason, WorkerLost)(task_id, message)


class Answers:
    """Answers in completion order, each for the first ``get()`` that wants it."""

    def __init__(self) -> None:
        self._ready: deque[Reply | TaskError] = deque()
        self._waiters: deque[Deferred[Reply]] = deque()
        self._closed: Exception | None = None

    def __len__(self) -> int:
        """Answers no one has taken yet."""
        return len(self._ready)

    def put(self, outcome: Reply | TaskError) -> None:
        """Fire the first waiter with ``outcome`` (errback for a TaskError), or keep it."""
        if self._waiters:
            waiter = self._waiters.popleft()
            if isinstance(outcome, TaskError):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)
        else:
            self._ready.append(outcome)

    def get(self) -> Deferred[Reply]:
        """The oldest answer kept, else the next one to come (cancellable); once
        closed and empty, a failure with the closing error."""
        if self._ready:
            item = self._ready.popleft()
            return fail(item) if isinstance(item, TaskError) else succeed(item)
        if self._closed is not None:
            return fail(self._closed)
        d: Deferred[Reply] = Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    def drop_oldest(self) -> None:
        """Forget the oldest answer kept (a reader that does not keep up)."""
        self._ready.popleft()

    def close(self, error: Exception) -> None:
        """No more answers come: fail the waiters (and later ``get()`` calls, once
        the answers kept are taken) with ``error``."""
        self._closed = error
        waiters, self._waiters = self._waiters, deque()
        for w in waiters:
            w.errback(error)


def check_reply_group(group: str) -> str:
    """``group`` if a reader can join it (a public Spread group name), else ValueError."""
    if not isinstance(group, str) or group.startswith("#"):
        raise ValueError(
            f"a reply group must be a public Spread group name, not {group!r} "
            "(a private group's answers are its Sender's)"
        )
    check_group_name(group)
    return group


_ANSWERS: Final = frozenset(MESS_TYPE_BASE + k for k in (Kind.RESULT, Kind.FAILED))


class ReplyReader:
    """Reads the answers that detached tasks send to Spread group ``group``
    (``Sender.enqueue(func, args, reply_to=group)``, ``spreadqueue submit --reply-to``).

    :meth:`receive` gives them in the order they come, as :meth:`Sender.receive` gives
    a sender's: a :class:`Reply` (several for a task that answers several times, the
    last ``final``), or the task's error raised: :class:`RemoteError` (its handler
    raised), :class:`UnknownFunction` (its ``func`` is empty: the answer does not say
    it), :class:`DeadLettered` (its workers were lost ``max_attempts`` times, or its
    time to live ran out). Each error's ``task_id`` says which task. A handler's error
    or an unknown function makes a dead letter too; it comes as that error.

    Spread gives every member of a group every message: several readers of one group,
    in one process or many, each get every answer (use one reader per group, or one
    group per consumer). Only answers sent while the reader is in the group reach it;
    a reconnecting session misses those sent while it is away.

    ``serializer`` must be the enqueueing senders' (msgpack by default). At most
    ``max_buffered`` answers wait for :meth:`receive`; beyond that the oldest is
    dropped, counted (``stats["dropped"]``) and logged. Other traffic on the group
    (the application's own message types) is ignored; a malformed queue message is
    counted (``stats["malformed"]``) and logged, never raised. Any number of readers,
    senders and workers may share one session.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        session: ISpreadSession,
        group: str,
        *,
        serializer: ISerializer | None = None,
        max_buffered: int = 10_000,
    ) -> None:
        check_reply_group(group)
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.group = group
        self.session = session
        self.max_buffered = max_buffered
        self._loads = (serializer or default_serializer()).loads
        self._answers = Answers()
        self._warnings = WarningThrottle(reactor, self.log)
        self._state = "new"  # new -> started -> stopped
        self._start_d: Deferred[None] | None = None
        self._stopped = ReaderStopped(f"reply reader of {group!r} stopped")  # (set by _end)
        # what start() took of the session, given back once (stop, or a failed join): its
        # watch on the session's end, and whether it holds a share of the group
        self._session_end: Deferred[None] | None = None
        self._holds = False
        self.stats: dict[str, int] = {"answers": 0, "malformed": 0, "dropped": 0}

    @property
    def buffered(self) -> int:
        """Answers that came and wait for :meth:`receive`."""
        return len(self._answers)

    def start(self) -> Deferred[None]:
        """Join the group; answers sent after the Deferred fired reach this reader.

        Called by the first :meth:`receive` if not called before. A reader that was
        stopped (or whose start failed) does not start again: :class:`ReaderStopped`.
        """
        if self._state == "stopped":
            return fail(self._stopped)
        if self._start_d is not None:
            return self._start_d
        self._state = "started"
        session = self.session
        session.add_listener(self._on_frame, self.group)
        end = self._session_end = session.whenDisconnected()

        def unwatched(f: Failure) -> None:
            f.trap(CancelledError)  # stop() stopped watching

        end.addCallbacks(lambda _: self._end("the Spread session was lost"), unwatched)
        try:
            d = session.acquire(self.group)
            self._holds = True
        except Exception:  # (a closed session): the Deferred says so
            d = fail()

        def joined(_: object) -> None:
            if self._state == "started":  # (not stopped while it joined)
                self.log.info(
                    "reply reader: reading the answers sent to group {group}", group=self.group
                )

        def failed(f: Failure) -> Failure:
            self._end(f"it could not join group {self.group!r}: {f.getErrorMessage()}")
            self._let_go()
            return f

        d.addCallbacks(joined, failed)
        self._start_d = d
        return d

    def stop(self) -> Deferred[None]:
        """Leave the group; answers kept are still given, then :meth:`receive` fails
        with :class:`ReaderStopped`."""
        self._end("it was stopped")
        return self._let_go()

    def _let_go(self) -> Deferred[None]:
        """Give back what :meth:`start` took of the session, once: the listener, the
        watch on its end (a Deferred in the session's list otherwise, for as long as
        the session lives), the share of the group (the Deferred of the leave)."""
        end, self._session_end = self._session_end, None
        if end is None:
            return succeed(None)
        end.cancel()  # (nothing, if the session has ended)
        session = self.session
        session.remove_listener(self._on_frame, self.group)
        if not self._holds:
            return succeed(None)
        self._holds = False
        return session.release(self.group)

    def receive(self) -> Deferred[Reply]:
        """The next answer: fires with a :class:`Reply`, or fails with the task's
        :class:`TaskError` (its ``task_id`` says which task); cancellable. Once the
        reader is stopped (or its session lost) and no answer is left, it fails with
        :class:`ReaderStopped`."""
        if self._state == "new":
            # a join that fails stops the reader: this receive() fails with why
            self.start().addErrback(lambda _: None)
        return self._answers.get()

    def _end(self, why: str) -> None:
        if self._state != "stopped":
            self._state = "stopped"
            self._warnings.stop()
            self._stopped = ReaderStopped(f"reply reader of {self.group!r} stopped: {why}")
            self._answers.close(self._stopped)

    def _on_frame(self, frame: object) -> None:
        if type(frame) is not RegularMessage or frame.mess_type not in _ANSWERS:
            return  # membership notices, the application's own messages
        if self._state == "stopped":
            return
        try:
            msg = decode(frame.mess_type, frame.data)
        except MalformedMessage as exc:
            self._warnings.dropped(
                frame.sender, exc, self.stats, "reply reader {group}", group=self.group
            )
            return
        if msg.kind is Kind.RESULT:
            for e in msg.entries:
                self._put(answer(e.task_id, "", e, self._loads))
        else:
            for e in msg.entries:
                if e.reason != Reason.RESUBMIT:  # (a call's; never sent to a public group)
                    self._put(failure(e.task_id, e.reason, e.message))

    def _put(self, outcome: Reply | TaskError) -> None:
        self.stats["answers"] += 1
        answers = self._answers
        if len(answers) >= self.max_buffered:
            answers.drop_oldest()
            self.stats["dropped"] += 1
            self._warnings.warn(
                self.group,
                "reply reader {group}: {limit} answers wait unread; dropped the oldest",
                group=self.group,
                limit=self.max_buffered,
            )
        answers.put(outcome)
