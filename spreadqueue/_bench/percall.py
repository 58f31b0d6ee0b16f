"""Instructions per sequential rpc of each role, counted by callgrind: where
:mod:`.oneloop` gives one figure for the whole product in one process, this gives one
per process of ``spreadqueue bench --colocate``'s seq phase.

Three processes as the bench runs them: the embedded daemon with the manager on an
in-process session (``sqm``), a worker and a sender making ``N`` sequential rpc calls of
a no-op with 100-byte arguments, each on the reactor the commands use. ROLE (one of
them) runs under ``valgrind --tool=callgrind``, once with ``N = --small`` and once with
``N = --large``; the difference of the two counts over the difference of the calls is
what one rpc costs that process, start-up and shut-down cancelling out::

    python -m spreadqueue._bench.percall sender      # or worker, sqm; --reactor NAME
    sender: 152,005 instructions per rpc (lean reactor)

The counts repeat to about 1% (the garbage collector runs when it runs).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from .._service.reactors import DEFAULT as DEFAULT_REACTOR
from .._service.reactors import REACTORS

__all__ = ["main"]

QUEUE = "percall"
ROLES = ("sqm", "worker", "sender")
#: How long a process may take to be ready (a role under valgrind starts slowly).
READY_S = 300.0


def _run_role(role: str, where: Path, calls: int, reactor_name: str) -> int:
    """Play ``role`` until done (sender) or until SIGTERM (sqm, worker)."""
    from .._service.reactors import install_reactor

    install_reactor(reactor_name)
    from twisted.internet import task
    from twisted.internet.address import IPv4Address
    from twisted.internet.defer import Deferred

    from .._queue.manager import ManagerService
    from .._queue.sender import Sender
    from .._queue.worker import Worker
    from .._service.runner import freeze_startup_objects
    from .._spread.client import connect
    from .._spread.daemon import SpreadDaemonService
    from .._spread.local import local_session
    from .agent import payload_of

    async def run(reactor: Any) -> None:
        stopped: Deferred[None] = Deferred()
        signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stopped.callback, None))
        if role == "sqm":
            daemon = SpreadDaemonService("tcp:0:interface=127.0.0.1", reactor=reactor)
            daemon.startService()
            port = await daemon.whenListening()
            manager = ManagerService(reactor, local_session(daemon.factory), QUEUE)
            manager.startService()
            await manager.whenActive()
            _ready(where / "port", str(cast(IPv4Address, port.getHost()).port))
            freeze_startup_objects()
            await stopped
            return
        endpoint = f"tcp:host=127.0.0.1:port={(where / 'port').read_text()}"
        session = await connect(reactor, endpoint)
        if role == "worker":
            worker = Worker(reactor, session, QUEUE)
            worker.add_handler("noop", lambda _args: None, pool="reactor")
            await worker.start()
            freeze_startup_objects()
            _ready(where / "worker", "")
            await stopped
            return
        sender = Sender(reactor, session, QUEUE)
        await sender.start()
        freeze_startup_objects()
        args = payload_of(100)
        for _ in range(calls):
            await sender.rpc("noop", args)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    return 0


def _ready(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_S
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} ended with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} not ready after {READY_S:g}s")
        time.sleep(0.05)


def _instructions(out: Path) -> int:
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction count in {out}")


def count(role: str, calls: int, reactor_name: str, workdir: Path) -> int:
    """Instructions of ``role``'s process over a run of ``calls`` rpc calls."""
    me = [sys.executable, "-m", "spreadqueue._bench.percall"]
    where = workdir / f"{role}-{calls}"
    where.mkdir()
    out = where / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]

    def start(name: str, *extra: str) -> subprocess.Popen[bytes]:
        argv = [*me, name, "--play", str(where), "--reactor", reactor_name, *extra]
        return subprocess.Popen(
            (valgrind if name == role else []) + argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    sqm = start("sqm")
    worker: subprocess.Popen[bytes] | None = None
    try:
        _wait_for(where / "port", sqm)
        worker = start("worker")
        _wait_for(where / "worker", worker)
        sender = start("sender", "--calls", str(calls))
        if sender.wait(timeout=READY_S + 30 * calls) != 0:
            raise RuntimeError(f"the sender ended with {sender.returncode}")
    finally:
        for proc in (worker, sqm):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=READY_S)
    return _instructions(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Print ROLE's instructions per rpc (or play a role: ``--play``)."""
    p = argparse.ArgumentParser(prog="python -m spreadqueue._bench.percall", description=__doc__)
    p.add_argument("role", choices=ROLES)
    p.add_argument("--reactor", choices=list(REACTORS), default=DEFAULT_REACTOR)
    p.add_argument("--small", type=int, default=300, metavar="N")
    p.add_argument("--large", type=int, default=1300, metavar="N")
    p.add_argument("--play", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    o = p.parse_args(argv)
    if o.play:
        return _run_role(o.role, Path(o.play), o.calls, o.reactor)
    if not 0 < o.small < o.large:
        p.error("--small must be positive and below --large")
    with tempfile.TemporaryDirectory(prefix="spreadqueue-percall-") as tmp:
        small = count(o.role, o.small, o.reactor, Path(tmp))
        large = count(o.role, o.large, o.reactor, Path(tmp))
    per = (large - small) / (o.large - o.small)
    print(f"{o.role}: {per:,.0f} instructions per rpc ({o.reactor} reactor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
