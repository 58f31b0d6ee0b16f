"""Asking a running queue how it is, and telling its manager what to do, over Spread.

:class:`QueueInspector` sends STATUS_REQUEST to the queue's manager and worker groups
and gathers the STATUS reports that every manager and worker sends back to it, and
sends CONTROL to the active manager. ``spreadqueue status``, ``spreadqueue control``
and the dashboard all use it: the numbers come from the same reports everywhere. It
works on any session (a dedicated one, or one shared with the application) and on any
daemon: operations ride on Spread like the queue itself.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .._spread.interfaces import ISpreadSession
from .._spread.wire import RegularMessage
from .errors import MalformedMessage, NoManager
from .messages import (
    MESS_TYPE_BASE,
    Control,
    Kind,
    StatusRequest,
    decode,
    unpack_report,
)
from .names import queue_groups
from .outbox import send

__all__ = ["QueueInspector"]

_STATUS = MESS_TYPE_BASE + Kind.STATUS
_CONTROL_REPLY = MESS_TYPE_BASE + Kind.CONTROL_REPLY
#: The actions a manager knows (docs/protocol.md, "Control").
ACTIONS = (
    "pause",
    "resume",
    "purge",
    "drain",
    "undrain",
    "cancel",
    "tasks",
    "dead-letters",
    "dead-requeue",
    "dead-purge",
)


class _Gathering:
    """The reports coming back for one status request."""

    def __init__(self, done: Deferred[dict[str, Any]], timer: IDelayedCall) -> None:
        self.done = done
        self.timer = timer
        self.managers: dict[str, dict[str, Any]] = {}
        self.workers: dict[str, dict[str, Any]] = {}

    def complete(self) -> bool:
        """True once the active manager and everyone it knows of have answered."""
        active = [r for r in self.managers.values() if r.get("active")]
        if not active:
            return False
        report = active[0]
        managers = {m["manager"] for m in report.get("managers", [])}
        workers = {w["worker"] for w in report.get("workers", [])}
        return managers <= set(self.managers) and workers <= set(self.workers)


class QueueInspector:
    """Status and control of queue ``queue`` over ``session``."""

    log = Logger()

    def __init__(self, reactor: IReactorTime, session: ISpreadSession, queue: str) -> None:
        self.groups = queue_groups(queue)
        self.session = session
        self._reactor = reactor
        self._status: dict[str, _Gathering] = {}
        self._control: dict[str, tuple[Deferred[tuple[bool, str]], IDelayedCall]] = {}
        self._listening = False

    def _listen(self) -> None:
        if not self._listening:
            self._listening = True
            self.session.add_listener(self._on_private, self.session.private_group)

    def close(self) -> None:
        """Stop listening (what is pending fails with its timeout)."""
        if self._listening:
            self._listening = False
            self.session.remove_listener(self._on_private, self.session.private_group)

    # ------------------------------------------------------------------ status

    def status(self, timeout: float = 1.0) -> Deferred[dict[str, Any]]:
        """The queue's status (the ``spreadqueue status --json`` schema, README):

        ``queue``; ``time`` (epoch seconds); ``active``: the active manager's report
        (None when no manager answered as active); ``managers``: every manager's report;
        ``workers``: every worker, as the active manager sees it (capacity, held,
        drained, idle_for, ...) with the worker's own report under ``report`` (None if
        it did not answer), then workers that answered but are not registered.

        It fires as soon as the active manager and everyone it knows of answered, or
        after ``timeout`` seconds with what came.
        """
        self._listen()
        request_id = secrets.token_hex(8)
        d: Deferred[dict[str, Any]] = Deferred()
        timer = self._reactor.callLater(timeout, self._finish_status, request_id)
        self._status[request_id] = _Gathering(d, timer)
        groups = (self.groups.manager, self.groups.workers)
        send(self.session, groups, Kind.STATUS_REQUEST, [StatusRequest(request_id)])
        return d

    def _finish_status(self, request_id: str) -> None:
        gathering = self._status.pop(request_id, None)
        if gathering is None:
            return
        if gathering.timer.active():
            gathering.timer.cancel()
        gathering.done.callback(self._merge(gathering))

    def _merge(self, g: _Gathering) -> dict[str, Any]:
        managers = sorted(g.managers.values(), key=lambda r: (not r.get("active"), r["manager"]))
        active = managers[0] if managers and managers[0].get("active") else None
        workers: list[dict[str, Any]] = []
        seen: set[str] = set()
        for view in (active or {}).get("workers", []):
            name = view["worker"]
            seen.add(name)
            workers.append({**view, "registered": True, "report": g.workers.get(name)})
        for name, report in sorted(g.workers.items()):
            if name not in seen:
                workers.append({"worker": name, "registered": False, "report": report})
        return {
            "queue": self.groups.queue,
            "time": time.time(),
            "active": active,
            "managers": managers,
            "workers": workers,
        }

    # ------------------------------------------------------------------ control

    def control(
        self, action: str, target: str = "", timeout: float = 5.0
    ) -> Deferred[tuple[bool, str]]:
        """Ask the active manager to do ``action`` (pause, resume, purge, drain WORKER,
        undrain WORKER, cancel TASK); fires with ``(done, what the manager says)``, or
        fails with NoManager when no active manager answers within ``timeout``."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        self._listen()
        request_id = secrets.token_hex(8)
        d: Deferred[tuple[bool, str]] = Deferred()
        timer = self._reactor.callLater(timeout, self._control_timeout, request_id, timeout)
        self._control[request_id] = (d, timer)
        send(
            self.session,
            (self.groups.manager,),
            Kind.CONTROL,
            [Control(request_id, action, target)],
        )
        return d

    def _control_timeout(self, request_id: str, timeout: float) -> None:
        waiting = self._control.pop(request_id, None)
        if waiting is not None:
            waiting[0].errback(
                NoManager(
                    request_id,
                    f"no active manager of queue {self.groups.queue!r} answered "
                    f"within {timeout:g}s",
                )
            )

    # ------------------------------------------------------------------ replies

    def _on_private(self, frame: object) -> None:
        if type(frame) is not RegularMessage:
            return
        mt = frame.mess_type
        if mt != _STATUS and mt != _CONTROL_REPLY:
            return
        try:
            msg = decode(mt, frame.data)
        except MalformedMessage as e:
            self.log.warn(
                "queue inspector: dropped {error} from {sender}", error=e, sender=frame.sender
            )
            return
        if mt == _CONTROL_REPLY:
            for reply in msg.entries:
                waiting = self._control.pop(reply.request_id, None)
                if waiting is not None:
                    d, timer = waiting
                    if timer.active():
                        timer.cancel()
                    d.callback((reply.ok, reply.message))
            return
        for entry in msg.entries:
            gathering = self._status.get(entry.request_id)
            if gathering is None:
                continue
            try:
                report = unpack_report(entry.report)
            except MalformedMessage:
                continue
            if entry.role == "manager" and isinstance(report.get("manager"), str):
                gathering.managers[report["manager"]] = report
            elif entry.role == "worker" and isinstance(report.get("worker"), str):
                gathering.workers[report["worker"]] = report
            if gathering.complete():
                self._finish_status(entry.request_id)
