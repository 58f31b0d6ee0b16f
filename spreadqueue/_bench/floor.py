"""The floor under everything: the same wake-ups as an rpc, with no Spread and no queue.

A sequential rpc through the co-located manager wakes four processes in turn: the
daemon (the submit), the worker, the daemon (the result), the sender. This measures
that chain with nothing else in it: a bare Twisted relay passes each message from a
pinger to an echoer and back, all three on the default reactor, with TCP_NODELAY and
the same straight-to-the-socket writes (:class:`~spreadqueue._spread.output.Output`)
as the product. No framing, no parsing, no decisions: whatever an rpc costs beyond
this round trip is the price of Spread and of the queue.

    python -m spreadqueue._bench.floor relay         # ready event: {"port": PORT}
    python -m spreadqueue._bench.floor echo PORT
    python -m spreadqueue._bench.floor ping PORT     # command: ping {size, t0_ns, t1_ns}

Each speaks the agents' control channel (:mod:`spreadqueue._bench.channel`) on its
stdin and stdout: it reports ``{"event": "ready", ...}`` once listening or connected,
and exits when its stdin closes. The pinger's ``ping`` counts its round trips as the
Spread ping-pong does (:class:`~spreadqueue._bench.pingloop.PingLoop`) and answers
``{"latencies_ns": [...], "lost": 0 | 1}``. The relay pairs the echoer (the echoer
connects first, the pinger after it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure

from .._spread.output import Output
from .channel import ControlChannel
from .pingloop import PingLoop
from .procs import Child, python_module, stop_all

__all__ = ["FloorProcesses", "main"]


class _Direct(Protocol):
    """A connection that writes like the product does: TCP_NODELAY, straight writes."""

    out: Output

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.out = Output(self.transport)


class _Relay(_Direct):
    """The first connection is the echoer; the next one is the pinger, paired with it."""

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


class _Echo(_Direct):
    """Sends back whatever arrives."""

    def dataReceived(self, data: bytes) -> None:
        self.out.write(data)


class _Pinger(_Direct):
    """Sequential round trips of ``size`` bytes through the relay, one window a command."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._loop: PingLoop | None = None
        self._message = b""
        self._got = 0

    def ping(self, size: int, t0_ns: int, t1_ns: int) -> Deferred[dict[str, Any]]:
        """Ping until ``t1_ns``, counting round trips completed in ``[t0_ns, t1_ns)``."""
        self._message = b"p" * size
        self._loop = PingLoop(self._reactor, self._send, t0_ns, t1_ns)
        return self._loop.run()

    def _send(self) -> None:
        self._got = 0
        self.out.write(self._message)

    def dataReceived(self, data: bytes) -> None:
        self._got += len(data)
        # TCP may split a message: a round trip ends with its last byte.
        if self._got >= len(self._message) and self._loop is not None:
            self._loop.answered()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._loop is not None:
            self._loop.lost()


# --------------------------------------------------------------------------- parent side


class FloorProcesses:
    """The relay, the echoer and the pinger, started and ready; :attr:`pinger` takes
    ``ping`` commands (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self._children: list[Child] = []
        try:
            relay = self._start(workdir, "relay")
            port = str(relay.ready["port"])
            self._start(workdir, "echo", port)  # first: the relay pairs in that order
            self.pinger = self._start(workdir, "ping", port)
        except BaseException:
            self.stop()
            raise

    def _start(self, workdir: Path, role: str, *args: str) -> Child:
        """Start one floor process and wait until it is ready."""
        child = Child(
            f"floor-{role}", python_module("spreadqueue._bench.floor", role, *args), workdir
        )
        self._children.append(child)
        child.wait_ready()
        return child

    @property
    def pids(self) -> dict[str, list[int]]:
        """The relay's pid (in the daemon's place), the echoer's and the pinger's."""
        relay, *clients = self._children
        return {"daemon": [relay.pid], "clients": [c.pid for c in clients]}

    def stop(self) -> None:
        """Stop every floor process."""
        stop_all(self._children)


# --------------------------------------------------------------------------- child side


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spreadqueue._bench.floor")
    p.add_argument("role", choices=("relay", "echo", "ping"))
    p.add_argument("port", nargs="?", type=int, default=0)
    return p


def _start_role(
    reactor: Any, options: argparse.Namespace, channel: ControlChannel
) -> _Pinger | None:
    """Listen (relay) or connect (echo, ping); report ready; return the pinger, if any."""
    if options.role == "relay":
        port = reactor.listenTCP(0, Factory.forProtocol(_Relay), interface="127.0.0.1")
        channel.emit("ready", port=port.getHost().port)
        return None
    proto = _Echo() if options.role == "echo" else _Pinger(reactor)
    connected = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", options.port), proto)
    connected.addCallbacks(lambda _: channel.emit("ready"), lambda f: _give_up(reactor, f))
    return proto if isinstance(proto, _Pinger) else None


def _give_up(reactor: Any, failure: Failure) -> None:
    """Could not connect: say why on stderr (the log) and exit; the parent sees the end."""
    print(f"floor: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
    _stop(reactor)


def _stop(reactor: Any) -> None:
    """Stop the reactor, unless it is stopping already (EOF may come during shutdown)."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one role of the floor measurement (see the module docstring)."""
    from twisted.internet import reactor

    options = _parser().parse_args(argv)
    r: Any = reactor
    pinger: _Pinger | None = None

    def handle(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "ping" and pinger is not None:
            return pinger.ping(int(args["size"]), int(args["t0_ns"]), int(args["t1_ns"]))
        raise ValueError(f"floor {options.role} has no command {cmd!r}")

    channel = ControlChannel(handle, on_eof=lambda: _stop(r))
    StandardIO(channel, reactor=r)
    pinger = _start_role(r, options, channel)
    r.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
