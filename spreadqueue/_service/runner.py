"""Running one of our services in the foreground, as ``spreadqueue daemon|manager|worker``
and ``sqm`` do: what ``twist`` does for a plugin, through public Twisted APIs only.

Options are parsed and help is printed in the command's own terms (``sqm [options]
[QUEUE]``, not ``twist [options] plugin``), logs go to stderr as text, SIGINT and
SIGTERM stop the service gracefully, and the exit status is what the service asked
for (see :func:`~spreadqueue._service.common.fail_startup`).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import IService
from twisted.internet.error import ReactorAlreadyInstalledError
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import usage

from .reactors import DEFAULT as DEFAULT_REACTOR
from .reactors import REACTORS, install_reactor

EXIT_USAGE = 2

_REACTOR_HELP = (
    "      --reactor=     the Twisted reactor: "
    + ", ".join(REACTORS)
    + f" [default: {DEFAULT_REACTOR}]"
)

#: What a tap module gives: its Options class and makeService.
MakeService = Callable[[Any], IService]


def parse(options: usage.Options, args: Sequence[str], prog: str) -> int | None:
    """Parse ``args`` into ``options``; an exit status if the command is done already
    (``--help``: 0; a usage error: 2, with the one-line reason), else None."""
    options.synopsis = f"Usage: {prog} {getattr(options, 'synopsis', '[options]')}"  # type: ignore[attr-defined]
    if any(a in ("-h", "--help") for a in args):
        print(str(options).rstrip())
        print(_REACTOR_HELP)
        return 0
    try:
        options.parseOptions(list(args))
    except usage.UsageError as e:
        print(f"{prog}: {e}\n{prog} --help lists the options.", file=sys.stderr)
        return EXIT_USAGE
    return None


def run(
    options_class: type[usage.Options],
    make_service: MakeService,
    args: Sequence[str],
    prog: str,
) -> int:
    """Parse ``args``, build the service, run it until it is stopped; the exit status."""
    options = options_class()
    explicit = any(a == "--reactor" or a.startswith("--reactor=") for a in args)
    try:
        name, args = take_reactor(args)
    except ValueError as e:
        print(f"{prog}: {e}\n{prog} --help lists the options.", file=sys.stderr)
        return EXIT_USAGE
    if not any(a in ("-h", "--help") for a in args):
        # Before the options are parsed: parsing imports the handlers' modules, which
        # may import twisted.internet.reactor (installing the default one).
        try:
            install_reactor(name)
        except ImportError as e:
            print(f"{prog}: --reactor {name} needs {e.name or 'a module'}", file=sys.stderr)
            return EXIT_USAGE
        except ReactorAlreadyInstalledError:
            # Something imported twisted.internet.reactor first (e.g. sitecustomize):
            # keep that reactor, unless one was asked for by name.
            if explicit:
                print(f"{prog}: --reactor {name}: a reactor is installed already", file=sys.stderr)
                return EXIT_USAGE
    done = parse(options, args, prog)
    if done is not None:
        return done
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    service = make_service(options)
    # As twistd and twist do: start now, stop (and wait for it) before the reactor does.
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
    reactor.callWhenRunning(freeze_startup_objects)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


def take_reactor(args: Sequence[str]) -> tuple[str, list[str]]:
    """``--reactor NAME`` (or ``--reactor=NAME``) taken out of ``args``: ``(NAME, the
    other arguments)``, NAME the default when absent; ValueError for an unknown name."""
    name = DEFAULT_REACTOR
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--":
            rest.append(arg)
            rest.extend(it)
        elif arg == "--reactor":
            name = next(it, "")
        elif arg.startswith("--reactor="):
            name = arg.partition("=")[2]
        else:
            rest.append(arg)
    if name not in REACTORS:
        raise ValueError(f"--reactor must be one of {', '.join(REACTORS)}, not {name!r}")
    return name, rest


def freeze_startup_objects() -> None:
    """Keep what the process built to start (modules, classes, the services) out of
    the garbage collector's full collections from now on (``gc.freeze``).

    A long-running service's full collections otherwise walk every object of
    Twisted and of the program each time: measured with callgrind, 5 to 9% of each
    process's instructions per rpc. Garbage made so far is collected first; what is
    created later is collected as usual.
    """
    gc.collect()
    gc.freeze()
