"""Bad input against the embedded daemon: nothing breaks, nothing leaks.

Every case runs next to two well-behaved "witness" sessions sharing a group. After each
case the offending connection is closed, every timer is allowed to fire, and then:
the daemon's session and group tables are back to what they were, the witnesses were
not disturbed, and a message between them still gets through.

The malformed cases come from the traces of a real Spread 5.0.1 daemon, from a seeded
generator of garbage and mutated messages, and from hypothesis (derandomized, so every
run is the same).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from spreadqueue._spread import wire
from spreadqueue._spread.daemon import SpreadDaemonFactory, SpreadDaemonProtocol
from spreadqueue._spread.wire.constants import HEADER_LE

TRACES = Path(
    os.environ.get(
        "SPREADQUEUE_TRACES",
        Path(__file__).resolve().parents[2] / "shared" / "spread-wire" / "traces",
    )
)
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason="spread-wire traces not found")

#: Long enough for every daemon timer (handshake 1 s, close deadline 10 s) to fire.
SETTLE = 30.0


class Conn:
    """One client connection on a StringTransport."""

    def __init__(self, factory: SpreadDaemonFactory, port: int) -> None:
        addr = IPv4Address("TCP", "127.0.0.1", port)
        proto = factory.buildProtocol(addr)
        assert proto is not None
        self.proto: SpreadDaemonProtocol = proto
        self.transport = StringTransport(peerAddress=addr)
        self.lost = False
        proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        if not self.lost:
            self.proto.dataReceived(data)

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


class Witness(Conn):
    """A well-behaved session that decodes what it gets."""

    def __init__(self, factory: SpreadDaemonFactory, name: str, port: int) -> None:
        super().__init__(factory, port)
        self.group = f"#{name}#localhost"
        self.decoder = wire.ClientDecoder()
        self.send(wire.encode_connect(name))
        self.send(wire.encode_auth_choice())
        assert isinstance(self.frames()[-1], wire.Accepted)

    def frames(self) -> list[wire.ToClient]:
        data = self.transport.value()
        self.transport.clear()
        return self.decoder.feed(data)


class Daemon:
    """A daemon with two witnesses in group 'w'."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.factory = SpreadDaemonFactory(self.clock, "localhost", time=1795397590)
        self.core = self.factory.core
        self.ports = 41000
        self.a = Witness(self.factory, "wit1", 1)
        self.b = Witness(self.factory, "wit2", 2)
        for w in (self.a, self.b):
            w.send(wire.encode_join(w.group, "w"))
        self.a.frames()
        self.b.frames()
        self.before = self.core.snapshot()
        self.messages = 0

    def conn(self) -> Conn:
        self.ports += 1
        return Conn(self.factory, self.ports)

    def session(self, name: str, *, membership: bool = True) -> Conn:
        c = self.conn()
        c.send(wire.encode_connect(name, membership=membership))
        c.send(wire.encode_auth_choice())
        assert c.transport.value().endswith(f"#{name}#localhost".encode())
        return c

    def check(self, *conns: Conn) -> None:
        """Close ``conns``, let timers fire, and require a clean, working daemon."""
        for c in conns:
            c.lose()
        self.clock.advance(SETTLE)
        assert self.core.snapshot() == self.before
        assert self.factory.connections == {self.a.proto, self.b.proto}
        for w in (self.a, self.b):
            assert not w.transport.disconnecting
            w.frames()  # notices about the offender's groups, if it joined 'w'
        self.messages += 1
        data = b"still alive %d" % self.messages
        self.a.send(wire.encode_message(wire.AGREED_MESS, self.a.group, ["w"], data))
        for w in (self.a, self.b):
            (frame,) = w.frames()
            assert isinstance(frame, wire.RegularMessage)
            assert (frame.sender, frame.data) == (self.a.group, data)


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


# --------------------------------------------------------------------------- traces


def client_records(name: str) -> list[tuple[float, str, bytes | None]]:
    """(time, connection, bytes or None for a close) of the client side of a trace."""
    (path,) = [p for p in TRACES.glob(f"{name}_*.trace")]
    out: list[tuple[float, str, bytes | None]] = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        t, conn, direction, payload = line.split()
        if direction != "C>":
            continue
        if payload == "!SYN":
            out.append((float(t), conn, b""))
        elif payload.startswith("!"):
            out.append((float(t), conn, None))
        else:
            out.append((float(t), conn, bytes.fromhex(payload)))
    return out


MALFORMED_TRACES = [
    "c1", "c2", "c4", "c5", "c7", "c8", "c9", "m10",  # handshake refusals
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "i3", "i4",  # bad headers, sizes
]  # fmt: skip


@needs_traces
@pytest.mark.parametrize("name", MALFORMED_TRACES)
def test_malformed_trace_case(daemon: Daemon, name: str) -> None:
    start = daemon.clock.seconds()
    conns: dict[str, Conn] = {}
    for t, label, payload in client_records(name):
        if start + t > daemon.clock.seconds():
            daemon.clock.advance(start + t - daemon.clock.seconds())
        if label not in conns:
            conns[label] = daemon.conn()
        elif payload is None:
            conns[label].lose()
        else:
            conns[label].send(payload)
    daemon.check(*conns.values())


# --------------------------------------------------------------------------- generated


def mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` with a few random bytes overwritten, dropped or inserted."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(buf) + 1)
        if op < 0.6 and buf:
            buf[min(i, len(buf) - 1)] = rng.randrange(256)
        elif op < 0.8 and buf:
            del buf[min(i, len(buf) - 1)]
        else:
            buf[i:i] = bytes([rng.randrange(256)])
    return bytes(buf)


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut at random points (TCP segmentation)."""
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 3)))
    out, last = [], 0
    for c in [*cuts, len(data)]:
        out.append(data[last:c])
        last = c
    return [c for c in out if c]


def random_name(rng: random.Random) -> bytes:
    """Group names a client could put on the wire, legal or not."""
    kind = rng.random()
    if kind < 0.4:
        return rng.choice([b"w", b"g1", b"g2", b"#wit1#localhost", b"#nobody#localhost"])
    if kind < 0.7:
        return bytes(rng.randrange(0x24, 0x7F) for _ in range(rng.randint(1, 31)))
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 32)))


def random_message(rng: random.Random, sender: str) -> bytes:
    """A message with a valid header (or nearly), odd content."""
    kind = rng.random()
    field = wire.pad_name(sender.encode())
    if kind < 0.5:
        service = rng.choice(wire.SERVICE_LEVELS) | rng.choice([0, wire.SELF_DISCARD])
        groups = [random_name(rng) for _ in range(rng.randint(0, 5))]
    else:
        service = rng.choice([wire.JOIN_MESS, wire.LEAVE_MESS, wire.KILL_MESS])
        groups = [random_name(rng) for _ in range(rng.randint(0, 2))]
    blob = b"".join((g + bytes(32))[:32] for g in groups)
    data = rng.randbytes(rng.randint(0, 64)) if service & wire.REGULAR_MESS else b""
    header = HEADER_LE.pack(
        service | wire.ENDIAN_MARKER, field, len(groups), wire.encode_hint(0), len(data)
    )
    return header + blob + data


def test_seeded_garbage_before_the_handshake(daemon: Daemon) -> None:
    rng = random.Random(20261123)
    for _ in range(150):
        c = daemon.conn()
        prefix = rng.choice([b"", b"\x05\x00\x01", wire.encode_connect("g0")])
        for piece in chunks(rng, prefix + rng.randbytes(rng.randint(0, 120))):
            c.send(piece)
        daemon.check(c)


def test_seeded_garbage_and_mutations_after_the_handshake(daemon: Daemon) -> None:
    rng = random.Random(5)
    for i in range(250):
        name = f"s{i % 7}"
        c = daemon.session(name, membership=rng.random() < 0.7)
        stream = b""
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            message = random_message(rng, f"#{name}#localhost")
            if roll < 0.45:
                stream += message
            elif roll < 0.8:
                stream += mutate(rng, message)
            else:
                stream += rng.randbytes(rng.randint(1, 100))
        for piece in chunks(rng, stream):
            c.send(piece)
        daemon.check(c)


def test_seeded_pipelined_handshakes(daemon: Daemon) -> None:
    """Connect record, auth choice and messages in any grouping of reads."""
    rng = random.Random(99)
    for i in range(100):
        name = f"p{i % 5}"
        c = daemon.conn()
        stream = wire.encode_connect(name) + wire.encode_auth_choice()
        stream += random_message(rng, f"#{name}#localhost")
        for piece in chunks(rng, stream):
            c.send(piece)
        daemon.check(c)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    reads=st.lists(st.binary(max_size=200), max_size=4),
    handshake=st.booleans(),
)
def test_hypothesis_reads(daemon: Daemon, reads: list[bytes], handshake: bool) -> None:
    c = daemon.session("hyp") if handshake else daemon.conn()
    for data in reads:
        c.send(data)
    daemon.check(c)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    service=st.integers(0, 2**32 - 1),
    num_groups=st.integers(-3, 105),
    hint=st.integers(0, 2**32 - 1),
    data_len=st.integers(-3, 145000),
    sender=st.sampled_from(["#hyp#localhost", "#wit1#localhost", "#hyp#other", ""]),
)
def test_hypothesis_headers(
    daemon: Daemon, service: int, num_groups: int, hint: int, data_len: int, sender: str
) -> None:
    """Any header: the session is kept (a valid one, or one still waiting for its
    body) or dropped, never anything else."""
    c = daemon.session("hyp")
    header = HEADER_LE.pack(
        service, wire.pad_name(sender.encode()) if sender else bytes(32), num_groups, hint, data_len
    )
    c.send(header + bytes(32 * max(0, min(num_groups, 3))))
    daemon.check(c)


def test_many_sessions_in_and_out(daemon: Daemon) -> None:
    """Sessions leaving in every way release their names, slots and groups."""
    rng = random.Random(7)
    for round_ in range(20):
        conns = [daemon.session(f"m{j}") for j in range(10)]
        for c in conns:
            for g in rng.sample(["w", "g1", "g2", "g3"], 2):
                c.send(wire.encode_join(f"#{c.proto.session.name}#localhost", g))  # type: ignore[union-attr]
        for j, c in enumerate(conns):
            how = (round_ + j) % 3
            if how == 0:
                c.send(wire.encode_kill(f"#{c.proto.session.name}#localhost"))  # type: ignore[union-attr]
            elif how == 1:
                c.send(b"\xa5" * 48)
        daemon.check(*conns)
