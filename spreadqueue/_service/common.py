"""What the service layer's entry points share: readiness files, startup failures.

The environment defaults are in :mod:`spreadqueue._defaults`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


def write_ready_file(path: str, content: str) -> None:
    """Write ``content`` to ``path`` atomically, so a watcher never reads half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ready-")
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.replace(tmp, path)


class ReadyFileService(Service):
    """Removes a readiness file when the process stops, so a stale one never lies."""

    def __init__(self, path: str) -> None:
        self.path = path

    def stopService(self) -> None:
        super().stopService()
        if not self.path:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def fail_startup(failure: Failure, reactor: Any) -> None:
    """A service could not start (e.g. the port is taken): say why, then exit with 1."""
    import os

    log.critical("cannot start: {why}", why=failure.getErrorMessage())
    # twist would otherwise keep an idle process running with exit status 0 later.
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    reactor.stop()
