"""Which reactor a spreadqueue process runs on (``--reactor``), installed before anything
imports ``twisted.internet.reactor``.

- ``lean``: :class:`LeanEPollReactor`, Twisted's epoll reactor with a shorter path for
  the commonest event, "this descriptor is readable" (Linux only; elsewhere it is
  Twisted's default reactor).
- ``default``: whatever Twisted installs by default (epoll on Linux).
- ``asyncio``: Twisted's ``AsyncioSelectorReactor`` on a standard asyncio loop.
- ``uvloop``: the same on a uvloop loop (``pip install uvloop``).

Why ``lean``: for every readable descriptor, Twisted's epoll reactor goes through
``log.callWithLogger`` (the descriptor's ``logPrefix()``, a copy of the legacy logging
context, two context-tracker calls, each with ``*args`` / ``**kw``) before its
``doRead``. Measured with callgrind, that is half of a bare Twisted echo's instructions
per wake-up (38,100 -> 18,500) and about a tenth of each spreadqueue process's
instructions per sequential rpc. The context only gives legacy ``twisted.python.log.msg``
calls made during the read their ``system`` prefix; :class:`twisted.logger.Logger`
events (all of spreadqueue's) never read it. So ``lean`` calls ``doRead`` directly, with
the same checks (a descriptor whose ``fileno()`` is -1 is dropped, an exception is
logged and disconnects it, a true result disconnects it), and leaves every other event
(writable, hang-up, error) to Twisted's own code, unchanged. It also lets the embedded
daemon bracket the events of one wake-up (:meth:`add_poll_bracket`): with many clients
readable at once, each connection then gets one write for all of them.

:func:`install_reactor` is what the commands call. For twistd and twist, two reactor
plugins: ``twistd --reactor spreadqueue-lean ...`` (this module's :func:`install`) and
``twistd --reactor spreadqueue-uvloop ...`` (:data:`uvloop_installer`); ``asyncio`` is
Twisted's own ``--reactor asyncio``.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "DEFAULT",
    "REACTORS",
    "TWIST_REACTOR_ARGS",
    "install",
    "install_reactor",
    "lean_available",
    "uvloop_installer",
]

#: The names ``--reactor`` takes, with what each is.
REACTORS: Final = {
    "lean": "Twisted's epoll reactor with a shorter path for readable descriptors (Linux)",
    "default": "Twisted's default reactor",
    "asyncio": "Twisted's asyncio reactor on a standard asyncio loop",
    "uvloop": "Twisted's asyncio reactor on uvloop (pip install uvloop)",
}
#: What spreadqueue's own commands run on unless told.
DEFAULT: Final = "lean"
#: ``--reactor`` name -> the arguments that ask twist / twistd for the same reactor.
TWIST_REACTOR_ARGS: Final = {
    "lean": ("--reactor", "spreadqueue-lean"),
    "default": (),
    "asyncio": ("--reactor", "asyncio"),
    "uvloop": ("--reactor", "spreadqueue-uvloop"),
}


def lean_available() -> bool:
    """True where :class:`LeanEPollReactor` can run (Linux, Twisted's epoll reactor
    with the members it relies on)."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        return False
    return all(
        hasattr(EPollReactor, name)
        for name in ("doPoll", "_doReadOrWrite", "_disconnectSelectable")
    )


def _lean_class() -> type[Any]:
    from twisted.internet.epollreactor import EPOLLIN, EPollReactor
    from twisted.internet.error import ConnectionFdescWentAway
    from twisted.python import log

    fd_lost = ConnectionFdescWentAway("File descriptor lost")  # as Twisted's own

    class LeanEPollReactor(EPollReactor):  # type: ignore[misc]
        """Twisted's epoll reactor; a plain read event calls ``doRead`` directly
        (see the module doc)."""

        def __init__(self) -> None:
            self._brackets: list[tuple[Callable[[], object], Callable[[], object]]] = []
            super().__init__()

        def add_poll_bracket(self, begin: Callable[[], object], end: Callable[[], object]) -> None:
            """Call ``begin()`` before and ``end()`` after the events of each wake-up
            that has several (the embedded daemon holds its writes until all the reads
            of one wake-up are handled: one write per connection per wake-up)."""
            self._brackets.append((begin, end))

        def remove_poll_bracket(
            self, begin: Callable[[], object], end: Callable[[], object]
        ) -> None:
            """Stop calling what :meth:`add_poll_bracket` added."""
            if (begin, end) in self._brackets:
                self._brackets.remove((begin, end))

        def doPoll(self, timeout: float | None) -> None:
            if timeout is None:
                timeout = -1
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            if len(events) > 1 and self._brackets:
                brackets = list(self._brackets)
                for begin, _ in brackets:
                    begin()
                try:
                    self._handle(events)
                finally:
                    for _, end in reversed(brackets):
                        end()
            else:
                self._handle(events)

        def _handle(self, events: list[tuple[int, int]]) -> None:
            selectables = self._selectables
            general = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                if event != EPOLLIN:
                    # writable, hang-up, error: Twisted's own path
                    log.callWithLogger(selectable, general, selectable, fd, event)
                    continue
                # What _doReadOrWrite does for a read event, without the log context.
                in_read = False
                try:
                    if selectable.fileno() == -1:
                        why: Any = fd_lost
                    else:
                        why = selectable.doRead()
                        in_read = True
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    try:
                        self._disconnectSelectable(selectable, why, in_read)
                    except KeyboardInterrupt:
                        raise
                    except BaseException:
                        log.err()  # as callWithLogger does around the general path

        doIteration = doPoll

    return LeanEPollReactor


def install() -> None:
    """Install the lean epoll reactor (Twisted's default reactor where it cannot run)."""
    install_reactor("lean")


class _Installer:
    """What a twistd reactor plugin names: an object whose ``install()`` installs one."""

    def __init__(self, name: str) -> None:
        self.name = name

    def install(self) -> None:
        install_reactor(self.name)


#: The ``spreadqueue-uvloop`` plugin's installer.
uvloop_installer = _Installer("uvloop")


def install_reactor(name: str) -> None:
    """Install reactor ``name`` (one of :data:`REACTORS`); raise ValueError for an
    unknown name, ImportError when uvloop is asked for and not installed, and
    ReactorAlreadyInstalledError when a reactor is installed already."""
    if name not in REACTORS:
        raise ValueError(f"--reactor must be one of {', '.join(REACTORS)}, not {name!r}")
    if name == "default" or (name == "lean" and not lean_available()):
        from twisted.internet import default

        default.install()
        return
    if name == "lean":
        from twisted.internet.main import installReactor

        installReactor(_lean_class()())
        return
    import asyncio

    from twisted.internet import asyncioreactor

    if name == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
