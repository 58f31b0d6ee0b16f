"""The ``spreadqueue`` and ``sqm`` command lines.

``spreadqueue daemon|manager|worker`` run the services of the twistd plugins in the
foreground (as ``twist spread-daemon ...`` would, see :mod:`.runner`); ``demo``,
``rpc`` and ``bench`` are programs of their own. ``sqm QUEUE`` is the command of Perl's
Spread::Queue: a queue manager.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

USAGE = """\
usage: spreadqueue COMMAND [options]      (spreadqueue --version: the version)

commands:
  demo      run the queue demo on an embedded daemon (nothing to set up)
  daemon    run the embedded Spread daemon          (= twistd -n spread-daemon)
  manager   run a queue manager                     (= twistd -n spreadqueue-manager)
  worker    run a worker with your handlers         (= twistd -n spreadqueue-worker)
  rpc       call a function on a queue, print the result as JSON
  submit    queue a detached task (it runs after the command ends), print its id
  replies   print the answers detached tasks send to a group, one JSON line each
  status    show the managers, workers, depth and numbers of queues (--watch, --json)
  control   pause, resume, purge a queue; drain a worker; cancel a task; dead letters
  bench     measure latency and throughput of the queue
'sqm QUEUE' runs a queue manager that starts an embedded daemon when none answers.

'spreadqueue COMMAND --help' explains each command's options.
Environment (read by every command, the twistd plugins and BlockingSender):
  SPREAD_DAEMON      the Spread daemon, 4803@host or a Twisted endpoint
                     (not set: 4803@localhost)
  SPREAD_QUEUE_NAME  the queue when none is given (SPREAD_QUEUE is read too; not
                     set: manager, worker and rpc need --queue)
"""

#: The commands that run a service, and the twistd plugin each one equals.
_SERVICES = {
    "daemon": ("daemon_tap", "spread-daemon"),
    "manager": ("manager_tap", "spreadqueue-manager"),
    "worker": ("worker_tap", "spreadqueue-worker"),
}

#: Every command of ``spreadqueue``; each answers ``--version``.
_COMMANDS = (*_SERVICES, "demo", "rpc", "submit", "replies", "status", "control", "bench")


def run_service(module: str, args: Sequence[str], prog: str, options: str = "Options") -> int:
    """Run the service of tap module ``module`` (its ``options`` class, ``makeService``)
    in the foreground, as the twistd plugin of the same options would. Options may
    come after the positional arguments (``sqm myqueue --spread X``)."""
    import importlib

    from .runner import run

    tap = importlib.import_module(f"{__package__}.{module}")
    options_class = getattr(tap, options)
    params: list[Any] = list(getattr(options_class, "optParameters", []))
    takes_value = {f"--{p[0]}" for p in params} | {f"-{p[1]}" for p in params if p[1]}
    return run(options_class, tap.makeService, options_last(args, takes_value), prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``spreadqueue``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] == "--version":
        return print_version()
    command, rest = args[0], args[1:]
    if rest == ["--version"] and command in _COMMANDS:  # the argparse commands too
        return print_version()
    if command in _SERVICES:
        return run_service(_SERVICES[command][0], rest, f"spreadqueue {command}")
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if command == "rpc":
        from .rpc import main as rpc_main

        return rpc_main(rest)
    if command == "submit":
        from .rpc import submit_main

        return submit_main(rest)
    if command == "replies":
        from .replies_cmd import main as replies_main

        return replies_main(rest)
    if command == "status":
        from .status_cmd import status_main

        return status_main(rest)
    if command == "control":
        from .status_cmd import control_main

        return control_main(rest)
    if command == "bench":
        from .._bench.run import main as bench_main

        return bench_main(rest)
    print(f"spreadqueue: unknown command {command!r}\n", file=sys.stderr)
    print(USAGE, end="", file=sys.stderr)
    return 2


def print_version() -> int:
    """Print the package version (``spreadqueue --version``, ``sqm --version``)."""
    from .._version import __version__

    print(f"spreadqueue {__version__}")
    return 0


def options_last(args: Sequence[str], takes_value: set[str]) -> list[str]:
    """``args`` with positional arguments moved after the options.

    Twisted's option parser stops at the first positional argument, but ``sqm myqueue
    --spread X`` should work as users of Spread::Queue's ``sqm myqueue`` expect.
    """
    options: list[str] = []
    positional: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--":
            positional.extend(it)
        elif arg.startswith("-") and arg != "-":
            options.append(arg)
            if arg in takes_value:
                value = next(it, None)
                if value is not None:
                    options.append(value)
        else:
            positional.append(arg)
    return options + positional


def sqm_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sqm [options] QUEUE``: Perl's Spread::Queue queue manager command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        return print_version()
    return run_service("manager_tap", args, "sqm", "SqmOptions")


if __name__ == "__main__":
    sys.exit(main())
