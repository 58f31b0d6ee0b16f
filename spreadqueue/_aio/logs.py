"""spreadqueue's log events, for an asyncio application: into :mod:`logging`.

The queue's objects log with ``twisted.logger``; an asyncio application reads
:mod:`logging`. :func:`forward_to_logging` adds (once per process) an observer that
hands every event of spreadqueue's own namespaces to the standard logger of the same
name (children of ``"spreadqueue"``), formatted, at the matching level, with the
traceback of a logged failure.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

__all__ = ["forward_to_logging"]

_LEVELS: Final = {
    LogLevel.debug: logging.DEBUG,
    LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING,
    LogLevel.error: logging.ERROR,
    LogLevel.critical: logging.CRITICAL,
}
_lock = threading.Lock()
_installed = False


@provider(ILogObserver)
def _forward(event: dict[str, Any]) -> None:
    namespace = event.get("log_namespace") or ""
    if not namespace.startswith("spreadqueue"):
        return
    logger = logging.getLogger(namespace)
    level = _LEVELS.get(event.get("log_level"), logging.INFO)  # type: ignore[call-overload]
    if not logger.isEnabledFor(level):
        return
    failure = event.get("log_failure")
    exc_info = None
    if failure is not None:
        exc_info = (failure.type, failure.value, failure.getTracebackObject())
    logger.log(level, "%s", formatEvent(event), exc_info=exc_info)


def forward_to_logging() -> None:
    """From now on, spreadqueue's log events also go to :mod:`logging` (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            globalLogPublisher.addObserver(_forward)
            _installed = True
