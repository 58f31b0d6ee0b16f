"""The control channel of a benchmark child (an agent, a floor process): JSON lines over
its stdin and stdout.

The parent (``spreadqueue bench``) writes one command per line::

    {"id": 7, "cmd": "load", ...arguments}

and the child answers each with ``{"id": 7, "ok": true, "result": ...}`` or
``{"id": 7, "ok": false, "error": "..."}``, in any order (commands may take time).
Lines without an ``id`` are events the child reports on its own
(``{"event": "ready", ...}``, ``{"event": "held", ...}``). Logs go to stderr, never to
stdout. The channel is used between measurements and for rare events only, never per
task, so it does not disturb what is measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

__all__ = ["Command", "ControlChannel", "parse_command"]

#: Handles one command: ``(name, arguments) -> result`` (a value, Deferred or coroutine).
Command = Callable[[str, dict[str, Any]], Any]


def parse_command(line: bytes) -> tuple[Any, str, dict[str, Any]] | None:
    """``(id, command, arguments)`` of one command line; None if it is not one."""
    try:
        msg = json.loads(line)
        return msg.pop("id"), msg.pop("cmd"), msg
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class ControlChannel(LineReceiver):
    """Runs the commands read from stdin, writes answers and events to stdout."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, handler: Command, on_eof: Callable[[], object]) -> None:
        self._handler = handler
        self._on_eof = on_eof

    def lineReceived(self, line: bytes) -> None:
        """Run one command and answer it when it is done."""
        command = parse_command(line)
        if command is None:
            self.emit("bad-command", line=line.decode("utf-8", "replace"))
            return
        ident, cmd, msg = command
        d = maybeDeferred(self._handler, cmd, msg)
        d.addCallbacks(self._answer, self._fail, callbackArgs=(ident,), errbackArgs=(ident,))

    def _answer(self, result: Any, ident: int) -> None:
        self._write({"id": ident, "ok": True, "result": result})

    def _fail(self, failure: Failure, ident: int) -> None:
        self._write({"id": ident, "ok": False, "error": failure.getTraceback()})

    def emit(self, event: str, **fields: Any) -> None:
        """Report an event to the parent."""
        self._write({"event": event, **fields})

    def _write(self, obj: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(json.dumps(obj).encode("utf-8") + b"\n")

    def connectionLost(self, reason: Failure | None = None) -> None:
        """The parent closed our stdin (or died): nothing more to do here."""
        self._on_eof()
