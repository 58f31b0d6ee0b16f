"""The floor under everything: the same wake-ups as an rpc, with no Spread and no queue.

A sequential rpc through the co-located manager wakes four processes in turn: the
daemon (the submit), the worker, the daemon (the result), the sender. This measures
that chain with nothing else in it: a bare Twisted relay passes each message from a
pinger to an echoer and back, all three on the default reactor, with TCP_NODELAY and
the same straight-to-the-socket writes (:class:`~spreadqueue._spread.output.Output`)
as the product. No framing, no parsing, no decisions: whatever an rpc costs beyond
this round trip is the price of Spread and of the queue.

    python -m spreadqueue._bench.floor relay         # prints its port, then serves
    python -m spreadqueue._bench.floor echo PORT     # prints "ready" once connected
    python -m spreadqueue._bench.floor ping PORT --size N --t0-ns T0 --t1-ns T1

``ping`` prints one JSON line, ``{"latencies_ns": [...], "lost": 0|1}``: the round
trips completed in ``[T0, T1)`` (CLOCK_MONOTONIC, shared by every process), and 1 in
``lost`` if the last one never came back, counted as the Spread ping-pong counts them
(:class:`~spreadqueue._bench.pingloop.PingLoop`). The relay pairs the echoer
(the echoer connects first; each pinger after it) and exits when the echoer goes.
"""

from __future__ import annotations

import argparse
import json
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

from .._spread.output import Output
from .pingloop import PingLoop
from .procs import ChildError, child_env

__all__ = ["FloorProcesses", "main"]

#: Seconds a floor process may take to start (print its port or "ready").
START_DEADLINE = 30.0


class _Direct(Protocol):
    """A connection that writes like the product does: TCP_NODELAY, straight writes."""

    out: Output

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.out = Output(self.transport)


class _Relay(_Direct):
    """The first connection is the echoer; each later one is a pinger, paired with it."""

    echo: _Relay | None = None
    pinger: _Relay | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if _Relay.echo is None:
            _Relay.echo = self
        else:
            _Relay.pinger = self

    def dataReceived(self, data: bytes) -> None:
        other = _Relay.pinger if self is _Relay.echo else _Relay.echo
        if other is not None:
            other.out.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self is _Relay.pinger:
            _Relay.pinger = None
            return
        from twisted.internet import reactor

        if self is _Relay.echo and reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]


class _Echo(_Direct):
    def connectionMade(self) -> None:
        super().connectionMade()
        print("ready", flush=True)

    def dataReceived(self, data: bytes) -> None:
        self.out.write(data)


class _Ping(_Direct):
    """Sequential round trips of ``size`` bytes, counted by :class:`PingLoop`."""

    def __init__(self, size: int, t0_ns: int, t1_ns: int, done: Deferred[dict[str, Any]]):
        from twisted.internet import reactor

        self.message = b"p" * size
        self.loop = PingLoop(reactor, self._send, t0_ns, t1_ns)  # type: ignore[arg-type]
        self.done = done
        self.got = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.loop.run().chainDeferred(self.done)

    def _send(self) -> None:
        self.got = 0
        self.out.write(self.message)

    def dataReceived(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= len(self.message):  # TCP may split a message: it ends with its last byte
            self.loop.answered()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.loop.lost()


# --------------------------------------------------------------------------- parent side


class FloorProcesses:
    """The relay and the echoer, running; :meth:`ping` measures one window."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        try:
            relay = self._spawn("relay")
            self.port = int(self._line(relay, time.monotonic() + START_DEADLINE))
            echo = self._spawn("echo", str(self.port))
            self._line(echo, time.monotonic() + START_DEADLINE)
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> dict[str, list[int]]:
        """The relay's pid (in the daemon's place) and the echoer's."""
        return {"daemon": [self._procs[0].pid], "clients": [self._procs[1].pid]}

    def _spawn(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"floor-{role}.log", "wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "spreadqueue._bench.floor", role, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=child_env(),
            cwd=str(self.workdir),
        )
        self._procs.append(proc)
        return proc

    @staticmethod
    def _line(proc: subprocess.Popen[bytes], deadline: float) -> str:
        """The next line ``proc`` prints, waiting until ``deadline``."""
        assert proc.stdout is not None
        what = f"floor process {proc.pid}"
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                raise ChildError(f"{what} did not answer in time")
        line = proc.stdout.readline().decode(errors="replace").strip()
        if not line:
            raise ChildError(f"{what} exited with status {proc.wait(10)}")
        return line

    def ping(self, size: int, t0_ns: int, t1_ns: int) -> tuple[subprocess.Popen[bytes], Any]:
        """Start a pinger for the window; returns it and a function giving its result."""
        pinger = self._spawn(
            "ping",
            str(self.port),
            "--size",
            str(size),
            "--t0-ns",
            str(t0_ns),
            "--t1-ns",
            str(t1_ns),
        )

        def result(timeout: float) -> dict[str, Any]:
            try:
                out = json.loads(self._line(pinger, time.monotonic() + timeout))
                pinger.wait(10)
                return dict(out)
            finally:
                if pinger.poll() is None:
                    pinger.kill()
                    pinger.wait(10)

        return pinger, result

    def stop(self) -> None:
        """Stop every floor process."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self._logs:
            log.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spreadqueue._bench.floor")
    p.add_argument("role", choices=("relay", "echo", "ping"))
    p.add_argument("port", nargs="?", type=int, default=0)
    p.add_argument("--size", type=int, default=150)
    p.add_argument("--t0-ns", type=int, default=0)
    p.add_argument("--t1-ns", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one role of the floor measurement (see the module docstring)."""
    from twisted.internet import reactor

    options = _parser().parse_args(argv)
    r: Any = reactor
    if options.role == "relay":
        factory = Factory.forProtocol(_Relay)
        port = r.listenTCP(0, factory, interface="127.0.0.1")
        print(port.getHost().port, flush=True)
        r.run()
        return 0
    client = ClientFactory()
    if options.role == "echo":
        client.protocol = _Echo
    else:
        done: Deferred[dict[str, Any]] = Deferred()
        client.buildProtocol = lambda addr: _Ping(  # type: ignore[method-assign]
            options.size, options.t0_ns, options.t1_ns, done
        )

        def report(result: dict[str, Any]) -> None:
            print(json.dumps(result), flush=True)
            r.stop()

        done.addCallback(report)
    r.connectTCP("127.0.0.1", options.port, client)
    r.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
