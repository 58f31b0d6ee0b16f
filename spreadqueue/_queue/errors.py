"""Exceptions of the queue layer.

Errors about one task (:class:`TaskError` and its subclasses) carry the ``task_id``
they concern, so a caller collecting results with :meth:`Sender.receive
<spreadqueue._queue.sender.Sender.receive>` can tell which submission failed.
"""

from __future__ import annotations

__all__ = [
    "DeadLettered",
    "MalformedMessage",
    "NoManager",
    "PayloadTooLarge",
    "QueueError",
    "QueueFull",
    "QueueNameError",
    "ReaderStopped",
    "RemoteError",
    "SenderStopped",
    "TaskCancelled",
    "TaskError",
    "TaskTimeout",
    "UnknownFunction",
    "WorkerLost",
]


class QueueError(Exception):
    """Base class of every error the queue raises (its senders, workers and managers)."""


class QueueNameError(QueueError, ValueError):
    """A queue name that cannot be turned into legal Spread group names."""


class MalformedMessage(QueueError, ValueError):
    """A queue message that does not follow docs/protocol.md (never raised to callers:
    receivers log, count and drop such messages)."""


class PayloadTooLarge(QueueError, ValueError):
    """Serialized arguments or a result too large for one Spread message."""


class TaskError(QueueError):
    """A task did not produce a result; ``task_id`` says which one."""

    def __init__(self, task_id: str, message: str = "") -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)
        self.task_id = task_id
        self.message = message or self.__doc__ or type(self).__name__

    def __str__(self) -> str:
        if not self.task_id:  # no task got an id (a call on a stopped sender)
            return self.message
        return f"{self.message} (task {self.task_id})"


class RemoteError(TaskError):
    """The worker's handler raised ``type_name``: ``remote_message``.

    ``remote_traceback`` is the worker's traceback text (may be empty).
    """

    def __init__(
        self, task_id: str, type_name: str, remote_message: str, remote_traceback: str = ""
    ) -> None:
        super().__init__(task_id, f"{type_name}: {remote_message}")
        self.type_name = type_name
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    @property
    def traceback(self) -> str:
        """Alias of ``remote_traceback``."""
        return self.remote_traceback


class UnknownFunction(TaskError):
    """The worker that got the task has no handler for its function name."""

    def __init__(self, task_id: str, func: str, message: str = "") -> None:
        super().__init__(task_id, message or f"no worker handler for function {func!r}")
        self.func = func


class TaskTimeout(TaskError):
    """No result came within the task's timeout; the manager was told to drop it."""


class WorkerLost(TaskError):
    """The workers running the task were lost too many times (max_attempts)."""


class NoManager(TaskError):
    """No queue manager acknowledged the submission within the acknowledgement timeout."""


class QueueFull(TaskError):
    """The queue manager refused the task: its queue is at its configured limit."""


class TaskCancelled(TaskError):
    """An operator cancelled the task, or purged the queue it waited in."""


class SenderStopped(TaskError):
    """The sender was stopped (or its session closed) before the task completed."""


class DeadLettered(TaskError):
    """The detached task failed for good and is now one of the queue's dead letters:
    its workers were lost ``max_attempts`` times, or its time to live ran out (the
    message says which). ``spreadqueue control QUEUE dead-requeue ID`` runs it again."""

    def __init__(self, task_id: str, message: str = "") -> None:
        super().__init__(task_id, f"dead letter: {message}" if message else "")


class ReaderStopped(QueueError):
    """The reply reader was stopped, or its session ended: no more answers come."""
