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
usage: spreadqueue COMMAND [options]

commands:
  demo      run the queue demo on an embedded daemon (nothing to set up)
  daemon    run the embedded Spread daemon          (= twistd -n spread-daemon)
  manager   run a queue manager                     (= twistd -n spreadqueue-manager)
  worker    run a worker with your handlers         (= twistd -n spreadqueue-worker)
  rpc       call a function on a queue, print the result as JSON
  bench     measure latency and throughput of the queue

'spreadqueue COMMAND --help' explains each command's options.
Environment: SPREAD_DAEMON (default 4803@localhost), SPREAD_QUEUE_NAME (default queue).
"""

#: The commands that run a service, and the twistd plugin each one equals.
_SERVICES = {
    "daemon": ("daemon_tap", "spread-daemon"),
    "manager": ("manager_tap", "spreadqueue-manager"),
    "worker": ("worker_tap", "spreadqueue-worker"),
}


def run_service(module: str, args: Sequence[str], prog: str) -> int:
    """Run the service of tap module ``module`` (``Options``, ``makeService``) in the
    foreground, as the twistd plugin of the same options would."""
    import importlib

    from .runner import run

    tap = importlib.import_module(f"{__package__}.{module}")
    return run(tap.Options, tap.makeService, args, prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``spreadqueue``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in _SERVICES:
        return run_service(_SERVICES[command][0], rest, f"spreadqueue {command}")
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if command == "rpc":
        from .rpc import main as rpc_main

        return rpc_main(rest)
    if command == "bench":
        from .._bench.run import main as bench_main

        return bench_main(rest)
    print(f"spreadqueue: unknown command {command!r}\n", file=sys.stderr)
    print(USAGE, end="", file=sys.stderr)
    return 2


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
    from .manager_tap import Options

    args = list(sys.argv[1:] if argv is None else argv)
    params: list[Any] = list(Options.optParameters)
    takes_value = {f"--{p[0]}" for p in params} | {f"-{p[1]}" for p in params if p[1]}
    # sqm starts an embedded daemon when nothing answers, unless told not to.
    return run_service(
        "manager_tap", ["--embedded-daemon=auto", *options_last(args, takes_value)], "sqm"
    )


if __name__ == "__main__":
    sys.exit(main())
