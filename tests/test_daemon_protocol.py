"""SpreadDaemonProtocol driven with StringTransport and task.Clock.

The golden tests replay the client side of the traces recorded from a real Spread
5.0.1 daemon (``shared/spread-wire/traces``) into the embedded daemon and require the
daemon's output stream on every connection to equal the real daemon's, byte for byte,
including when it closes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from spreadqueue._spread import wire
from spreadqueue._spread.daemon import (
    SpreadDaemonFactory,
    SpreadDaemonProtocol,
    SpreadDaemonService,
    listen,
)
from spreadqueue._spread.errors import QuotaExceeded
from spreadqueue._spread.interfaces import ISessionSink
from spreadqueue._spread.local import CallbackSink, LocalLink, local_session
from spreadqueue._spread.wire.encode import encode_header

TRACES = Path(
    os.environ.get(
        "SPREADQUEUE_TRACES",
        Path(__file__).resolve().parents[2] / "shared" / "spread-wire" / "traces",
    )
)
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason="spread-wire traces not found")

LOCALHOST_ID = struct.pack("<I", 482711334)


# --------------------------------------------------------------------------- traces


@dataclass
class Record:
    t: float
    conn: str
    direction: str  # "C>" or "D>"
    payload: bytes | None  # None for a marker
    marker: str | None  # "!SYN", "!FIN", "!RST"


def read_trace(name: str) -> list[Record]:
    """The data records of trace ``name`` (file name without .trace, or its prefix)."""
    (path,) = [p for p in TRACES.glob(f"{name}*.trace") if p.stem.split("_")[0] == name]
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        t, conn, direction, payload = line.split()
        if payload.startswith("!"):
            out.append(Record(float(t), conn, direction, None, payload))
        else:
            out.append(Record(float(t), conn, direction, bytes.fromhex(payload), None))
    return out


def daemon_streams(records: list[Record]) -> dict[str, bytes]:
    """What the real daemon wrote on each connection."""
    out: dict[str, bytes] = {}
    for r in records:
        if r.direction == "D>" and r.payload is not None:
            out[r.conn] = out.get(r.conn, b"") + r.payload
        else:
            out.setdefault(r.conn, b"")
    return out


def trace_time_word(records: list[Record]) -> int:
    """Word [1] of the group ids in the trace (the real daemon's membership time)."""
    for stream in daemon_streams(records).values():
        i = stream.find(LOCALHOST_ID)
        if i >= 0:
            return int(struct.unpack_from("<I", stream, i + 4)[0])
    return 0


class Replay:
    """Plays the client side of a trace into a daemon, one TCP segment per read."""

    def __init__(self, factory: SpreadDaemonFactory, clock: Clock) -> None:
        self.factory = factory
        self.clock = clock
        self.protocols: dict[str, SpreadDaemonProtocol] = {}
        self.transports: dict[str, StringTransport] = {}
        self.lost: set[str] = set()
        self.expected: dict[str, bytes] = {}

    def open(self, conn: str) -> None:
        addr = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.protocols))
        proto = self.factory.buildProtocol(addr)
        assert proto is not None
        transport = StringTransport(peerAddress=addr)
        self.protocols[conn] = proto
        self.transports[conn] = transport
        proto.makeConnection(transport)

    def lose(self, conn: str) -> None:
        if conn not in self.lost:
            self.lost.add(conn)
            self.protocols[conn].connectionLost(Failure(ConnectionDone()))

    def run(self, records: list[Record]) -> None:
        for r in records:
            if r.t > self.clock.seconds():
                self.clock.advance(r.t - self.clock.seconds())
            if r.direction == "C>":
                if r.marker == "!SYN":
                    self.open(r.conn)
                elif r.marker is not None:
                    self.lose(r.conn)
                elif r.conn not in self.lost:
                    self.protocols[r.conn].dataReceived(r.payload or b"")
            else:
                written = self.transports[r.conn].value()
                if r.marker is not None:
                    # The real daemon closed here: so must we (unless the client closed
                    # first), having written it all.
                    closed = r.conn in self.lost or self.transports[r.conn].disconnecting
                    assert closed, (r.t, r.conn)
                    assert written == self.expected.get(r.conn, b""), (r.t, r.conn)
                    self.lose(r.conn)
                else:
                    # By the time the real daemon had sent this, we have sent it too.
                    self.expected[r.conn] = self.expected.get(r.conn, b"") + (r.payload or b"")
                    assert written[: len(self.expected[r.conn])] == self.expected[r.conn], (
                        r.t,
                        r.conn,
                    )


def replay(name: str, **options: object) -> tuple[Replay, list[Record]]:
    records = read_trace(name)
    clock = Clock()
    factory = SpreadDaemonFactory(clock, "localhost", time=trace_time_word(records), **options)  # type: ignore[arg-type]
    run = Replay(factory, clock)
    return run, records


GOLDEN = ["d1", "e1", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "g1", "h1", "j1", "l1"]
HANDSHAKE = ["a1", "a2", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "m10"]
BAD_HEADERS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "i3"]
OTHERS = ["b1", "d2", "i1", "i2", "k1", "m9", "n1", "o1"]


@needs_traces
@pytest.mark.parametrize("name", GOLDEN + HANDSHAKE + BAD_HEADERS + OTHERS)
def test_replay_trace_gives_the_real_daemons_bytes(name: str) -> None:
    run, records = replay(name)
    run.run(records)
    expected = daemon_streams(records)
    for conn, transport in run.transports.items():
        assert transport.value() == expected[conn], conn
    # Every connection was closed, so nothing may be left behind.
    assert run.factory.core.snapshot() == (frozenset(), {}, 0)
    assert run.factory.connections == set()


@needs_traces
def test_replay_a3_invented_name() -> None:
    """a3: the daemon invents r<random>-<socket number>; the trace's was r9704-9."""
    run, records = replay("a3", randrange=lambda n: 9704)
    # The real daemon's socket was number 9: take slots 1..8 with in-process sessions.
    for i in range(8):
        run.factory.core.connect(CallbackSink(lambda f: None), f"pad{i}")
    run.run(records)
    assert run.transports["C1"].value() == daemon_streams(records)["C1"]


@needs_traces
@pytest.mark.parametrize("name", BAD_HEADERS)
def test_bad_header_drops_only_that_session(name: str) -> None:
    """m1..m8, i3: the offender is dropped; the other member stays, and its
    CAUSED_BY_DISCONNECT came byte for byte (checked by the replay)."""
    run, records = replay(name)
    offender = "C1" if name == "i3" else "C2"
    # Play until the daemon closes the offender (m2: until the offender closes).
    end = next(
        i
        for i, r in enumerate(records)
        if r.conn == offender and r.marker in ("!FIN", "!RST") and r.t > 0.1
    )
    run.run(records[:end])
    core = run.factory.core
    if name == "m2":
        # A truncated header is simply waited for, with no timeout.
        run.clock.advance(100)
        assert core.session_count == 2
        assert not run.transports[offender].disconnecting
        run.lose(offender)
    else:
        assert run.transports[offender].disconnecting
    (group,) = core.groups()
    (alice,) = [s.private_group for s in core.sessions()]
    assert core.members(group) == (alice,)
    other = "C2" if offender == "C1" else "C1"
    assert not run.transports[other].disconnecting
    tail = run.transports[other].value()[-136:]
    assert tail[:4] == b"\x80\x14\x00\x80"  # REG_MEMB_MESS | CAUSED_BY_DISCONNECT


# --------------------------------------------------------------------------- helpers


class Client:
    """A well-behaved libspread-like client on a StringTransport."""

    def __init__(
        self,
        factory: SpreadDaemonFactory,
        name: str,
        *,
        membership: bool = True,
        host: str = "127.0.0.1",
        transport: StringTransport | None = None,
    ) -> None:
        self.addr = IPv4Address("TCP", host, 50000)
        proto = factory.buildProtocol(self.addr)
        assert proto is not None
        self.proto = proto
        self.transport = transport or StringTransport(peerAddress=self.addr)
        proto.makeConnection(self.transport)
        self.name = name
        self.group = f"#{name}#{factory.name}"
        self.decoder = wire.ClientDecoder()
        self.membership = membership

    def handshake(self) -> Client:
        self.proto.dataReceived(wire.encode_connect(self.name, membership=self.membership))
        self.proto.dataReceived(wire.encode_auth_choice())
        frames = self.frames()
        assert isinstance(frames[-1], wire.Accepted), frames
        return self

    def frames(self) -> list[wire.ToClient]:
        data = self.transport.value()
        self.transport.clear()
        return self.decoder.feed(data)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def join(self, group: str) -> None:
        self.send(wire.encode_join(self.group, group))

    def leave(self, group: str) -> None:
        self.send(wire.encode_leave(self.group, group))

    def multicast(self, groups: list[str], data: bytes, service: int = wire.AGREED_MESS) -> None:
        self.send(wire.encode_message(service, self.group, groups, data))

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


def make_factory(**options: object) -> tuple[SpreadDaemonFactory, Clock]:
    clock = Clock()
    return SpreadDaemonFactory(clock, "localhost", time=1795397590, **options), clock  # type: ignore[arg-type]


# --------------------------------------------------------------------------- handshake


def test_quota_rejects_at_accept_and_frees_on_close() -> None:
    factory, _ = make_factory(max_sessions=2)
    a = Client(factory, "a").handshake()
    pending = Client(factory, "b")  # still in its handshake: holds a slot
    c = Client(factory, "c")
    assert c.transport.value() == b"\xfd"  # REJECT_QUOTA, before reading anything
    assert c.transport.disconnecting
    c.lose()
    pending.lose()
    a.lose()
    d = Client(factory, "d").handshake()
    assert factory.core.session_count == 1
    d.lose()


def test_stalled_connect_record_closes_silently_after_one_second() -> None:
    factory, clock = make_factory()
    c = Client(factory, "x")
    clock.advance(0.999)
    assert not c.transport.disconnecting
    clock.advance(0.001)
    assert c.transport.disconnecting
    assert c.transport.value() == b""
    c.lose()
    assert factory.core.snapshot() == (frozenset(), {}, 0)


def test_stalled_auth_choice_is_rejected_after_one_second() -> None:
    factory, clock = make_factory()
    c = Client(factory, "x")
    c.send(wire.encode_connect("x"))
    assert c.transport.value() == b"\x05NULL "
    clock.advance(1.0)
    assert c.transport.value() == b"\x05NULL \xf7"
    assert c.transport.disconnecting
    c.lose()
    assert factory.core.snapshot() == (frozenset(), {}, 0)


def test_name_is_reserved_during_the_handshake() -> None:
    factory, _ = make_factory()
    first = Client(factory, "dave")
    first.send(wire.encode_connect("dave"))
    second = Client(factory, "dave")
    second.send(wire.encode_connect("dave"))
    assert second.transport.value() == b"\xfa"  # REJECT_NOT_UNIQUE
    first.send(wire.encode_auth_choice())
    assert first.transport.value().endswith(b"#dave#localhost")


@pytest.mark.parametrize(
    "choice",
    [
        bytes(90),  # no method at all
        wire.encode_auth_choice(["PWORD"]),
        wire.encode_auth_choice(["NULL", "PWORD"]),
    ],
)
def test_auth_choices_that_are_refused(choice: bytes) -> None:
    factory, _ = make_factory()
    c = Client(factory, "x")
    c.send(wire.encode_connect("x"))
    c.send(choice)
    assert c.transport.value() == b"\x05NULL \xf7"
    assert c.transport.disconnecting


def test_auth_slots_after_an_empty_one_are_not_read() -> None:
    factory, _ = make_factory()
    c = Client(factory, "x")
    c.send(wire.encode_connect("x"))
    c.send(wire.encode_auth_choice(["NULL"])[:60] + b"PWORD".ljust(30, b"\0"))
    assert c.transport.value().startswith(b"\x05NULL \x01")


# --------------------------------------------------------------------------- messages


def test_two_sessions_exchange_messages() -> None:
    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    bob = Client(factory, "bob").handshake()
    alice.join("grp")
    bob.join("grp")
    alice.frames()
    bob.frames()
    alice.multicast(["grp"], b"hello")
    (msg,) = bob.frames()
    assert isinstance(msg, wire.RegularMessage)
    assert (msg.sender, msg.groups, msg.data) == ("#alice#localhost", ("grp",), b"hello")
    assert [f.data for f in alice.frames()] == [b"hello"]  # type: ignore[union-attr]


def test_kill_drops_the_session_and_notifies_the_others() -> None:
    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    bob = Client(factory, "bob").handshake()
    alice.join("grp")
    bob.join("grp")
    alice.frames()
    bob.send(wire.encode_kill(bob.group) + wire.encode_join(bob.group, "other"))
    assert bob.transport.disconnecting
    (notice,) = alice.frames()
    assert isinstance(notice, wire.MembershipMessage)
    assert notice.cause == wire.CAUSED_BY_DISCONNECT
    assert notice.changed_member == bob.group
    assert factory.core.groups() == ("grp",)  # the join after KILL_MESS was not read


@pytest.mark.parametrize("total", [143201, 143952 + 48, 144000])
def test_the_size_window_of_the_upstream_bug_drops_the_session(total: int) -> None:
    """48 + 32 + data in 143201..144000 aborts a real 5.0.1 daemon; ours drops the
    session (docs/spread-protocol.md, section 11)."""
    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    bob = Client(factory, "bob").handshake()
    alice.join("grp")
    bob.join("grp")
    alice.frames()
    data_len = total - 48 - 32
    header = encode_header(wire.AGREED_MESS, bob.group.encode(), 1, wire.encode_hint(0), data_len)
    bob.send(header + wire.pad_name(b"grp"))
    assert bob.transport.disconnecting
    (notice,) = alice.frames()
    assert notice.cause == wire.CAUSED_BY_DISCONNECT  # type: ignore[union-attr]


def test_the_largest_message_that_works_is_relayed() -> None:
    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    bob = Client(factory, "bob").handshake()
    alice.join("grp")
    alice.frames()
    data = b"x" * wire.MAX_DATA_ONE_GROUP
    message = wire.encode_message(wire.SAFE_MESS, bob.group, ["grp"], data)
    for i in range(0, len(message), 1432):
        bob.send(message[i : i + 1432])
    assert alice.transport.value() == message
    assert not bob.transport.disconnecting


def test_membership_off_gets_data_but_no_notices() -> None:
    factory, _ = make_factory()
    quiet = Client(factory, "quiet", membership=False).handshake()
    loud = Client(factory, "loud").handshake()
    quiet.join("grp")
    loud.join("grp")
    loud.multicast(["grp"], b"x")
    loud.leave("grp")
    assert [type(f) for f in quiet.frames()] == [wire.RegularMessage]


# --------------------------------------------------------------------------- slow reader


def test_slow_reader_is_dropped_past_1000_queued_messages() -> None:
    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    bob = Client(factory, "bob").handshake()
    alice.join("grp")
    bob.join("grp")
    alice.frames()
    bob.frames()
    assert bob.transport.producer is not None
    bob.transport.producer.pauseProducing()  # the transport's buffer is full
    one = wire.encode_message(wire.AGREED_MESS, alice.group, ["grp"], b"m")
    alice.send(one * 1000)
    assert not bob.transport.disconnecting
    assert bob.proto._outbox is not None and bob.proto._outbox.queued == 1000
    alice.send(one)
    assert bob.transport.disconnecting
    assert bob.transport.value() == b""  # nothing more was handed to the transport
    frames = alice.frames()
    assert len(frames) == 1002
    assert isinstance(frames[-1], wire.MembershipMessage)
    assert frames[-1].cause == wire.CAUSED_BY_DISCONNECT
    assert frames[-1].changed_member == bob.group
    assert factory.core.members("grp") == (alice.group,)


def test_a_paused_reader_gets_its_backlog_in_order_on_resume() -> None:
    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    bob = Client(factory, "bob").handshake()
    bob.join("grp")
    bob.frames()
    producer = bob.transport.producer
    assert producer is not None
    producer.pauseProducing()
    for i in range(5):
        alice.multicast(["grp"], b"%d" % i)
    assert bob.transport.value() == b""
    producer.resumeProducing()
    assert [f.data for f in bob.frames()] == [b"0", b"1", b"2", b"3", b"4"]  # type: ignore[union-attr]


def test_a_lost_connection_that_does_not_drain_is_aborted() -> None:
    factory, clock = make_factory()
    bob = Client(factory, "bob").handshake()
    bob.send(b"\xa5" * 48)
    assert bob.transport.disconnecting and not bob.transport.disconnected
    clock.advance(factory.close_timeout)
    assert bob.transport.disconnected  # abortConnection


# --------------------------------------------------------------------------- writes


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, seq: list[bytes]) -> None:  # type: ignore[override]
        self.writes += 1
        super().write(b"".join(seq))


def test_one_read_gives_one_write_per_receiver() -> None:
    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    counting = CountingTransport()
    bob = Client(factory, "bob", transport=counting).handshake()
    bob.join("grp")
    bob.frames()
    counting.writes = 0
    one = wire.encode_message(wire.AGREED_MESS, alice.group, ["grp"], b"m")
    alice.send(one * 10)
    assert counting.writes == 1
    assert len(bob.frames()) == 10


def test_in_process_sends_are_flushed_at_the_end_of_the_turn() -> None:
    factory, clock = make_factory()
    bob = Client(factory, "bob").handshake()
    bob.join("grp")
    bob.frames()
    core = factory.core
    manager = core.connect(CallbackSink(lambda f: None), "manager")
    link = LocalLink(core, manager)
    link.send_multicast(wire.AGREED_MESS, [b"grp"], 3, b"a")
    link.send_multicast(wire.AGREED_MESS, [b"grp"], 4, b"b")
    assert bob.transport.value() == b""
    clock.advance(0)
    assert [(f.mess_type, f.data) for f in bob.frames()] == [(3, b"a"), (4, b"b")]  # type: ignore[union-attr]


def test_in_process_session_sees_the_frames_a_client_decodes() -> None:
    factory, clock = make_factory()
    bob = Client(factory, "bob").handshake()
    got: list[wire.ToClient] = []
    core = factory.core
    manager = core.connect(CallbackSink(got.append), "manager")
    LocalLink(core, manager).send_join("grp")
    bob.join("grp")
    bob.multicast(["grp", "#manager#localhost"], b"task")
    bob.leave("grp")
    clock.advance(0)
    seen = bob.frames()
    assert got[0] == wire.MembershipMessage(
        wire.REG_MEMB_MESS | wire.CAUSED_BY_JOIN,
        "grp",
        wire.CAUSED_BY_JOIN,
        wire.GroupId(482711334, 1795397590, 1),
        ("#manager#localhost",),
        (("#manager#localhost",),),
        0,
        "#manager#localhost",
    )
    # From the second notice on, bob saw the same messages the manager did.
    assert got[1:3] == seen[0:2]
    assert got[3].cause == wire.CAUSED_BY_LEAVE  # type: ignore[union-attr]


# --------------------------------------------------------------------------- logs, access


def test_one_log_event_per_connect_reject_and_drop() -> None:
    factory, _ = make_factory()
    with capturedLogs() as events:
        alice = Client(factory, "alice").handshake()
        Client(factory, "alice").send(wire.encode_connect("alice"))
        alice.send(b"\xa5" * 48)
        alice.lose()
        bob = Client(factory, "bob").handshake()
        bob.send(wire.encode_kill(bob.group))
    kinds = [(e["spread_event"], e.get("reason")) for e in events if "spread_event" in e]
    assert kinds[0] == ("connect", None)
    assert kinds[1] == ("reject", "name 'alice' in use")
    assert kinds[2][0] == "drop" and "bad message" in str(kinds[2][1])
    # a client that says goodbye was not dropped
    assert kinds[3:] == [("connect", None), ("disconnect", "KILL_MESS")]
    levels = {e["spread_event"]: e["log_level"] for e in events if "spread_event" in e}
    assert (levels["drop"], levels["disconnect"]) == (LogLevel.warn, LogLevel.info)


@pytest.mark.parametrize(
    ("host", "networks", "allowed"),
    [
        ("127.0.0.1", (), True),
        ("127.9.9.9", (), True),
        ("10.1.2.3", (), False),
        ("10.1.2.3", ("10.0.0.0/8",), True),
        ("192.168.1.1", ("10.0.0.0/8",), False),
        ("::1", (), True),
        ("::ffff:127.0.0.1", (), True),
        ("fd00::5", ("fd00::/8",), True),
    ],
)
def test_allowed_networks(host: str, networks: tuple[str, ...], allowed: bool) -> None:
    factory, _ = make_factory(allowed_networks=networks)
    proto = factory.buildProtocol(IPv4Address("TCP", host, 1234))
    assert (proto is not None) is allowed


def test_outbox_is_a_sink_and_a_producer() -> None:
    from twisted.internet.interfaces import IPushProducer

    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    outbox = alice.proto._outbox
    assert verifyObject(ISessionSink, outbox)
    assert verifyObject(IPushProducer, outbox)


# --------------------------------------------------------------------------- service


def test_service_listens_on_loopback_4803_by_default() -> None:
    reactor = MemoryReactorClock()
    service = SpreadDaemonService(reactor=reactor)
    service.startService()
    ((port, factory, _backlog, interface),) = reactor.tcpServers
    assert (port, interface) == (4803, "127.0.0.1")
    assert factory is service.factory
    assert service.factory.name == "localhost"
    assert service.factory.core.max_sessions == 997
    fired: list[object] = []
    service.whenListening().addCallback(fired.append)
    assert len(fired) == 1
    d = service.stopService()
    assert d.called


def test_service_options_reach_the_factory() -> None:
    reactor = MemoryReactorClock()
    service = SpreadDaemonService(
        "tcp:0:interface=0.0.0.0", "d1", 5, ["10.0.0.0/8"], reactor=reactor
    )
    service.startService()
    factory = service.factory
    assert (factory.name, factory.core.max_sessions) == ("d1", 5)
    assert factory.core.daemon_id == 1552775919
    assert factory.allows(IPv4Address("TCP", "10.0.0.7", 1))
    assert reactor.tcpServers[0][3] == "0.0.0.0"
    service.stopService()


def test_listen_returns_the_port() -> None:
    reactor = MemoryReactorClock()
    ports: list[object] = []
    listen(reactor, "tcp:4900:interface=127.0.0.1", name="d2").addCallback(ports.append)
    assert len(ports) == 1
    factory = reactor.tcpServers[0][1]
    assert isinstance(factory, SpreadDaemonFactory) and factory.name == "d2"


def test_stopping_the_service_closes_every_connection() -> None:
    reactor = MemoryReactorClock()
    service = SpreadDaemonService(reactor=reactor)
    service.startService()
    alice = Client(service.factory, "alice").handshake()
    bob = Client(service.factory, "bob")  # still in its handshake
    with capturedLogs() as events:
        service.stopService()
    assert alice.transport.disconnecting and bob.transport.disconnecting
    assert bob.transport.value() == b""
    reasons = {e.get("reason") for e in events if "spread_event" in e}
    assert reasons == {"the daemon is stopping"}
    alice.lose()
    bob.lose()
    assert service.factory.core.snapshot() == (frozenset(), {}, 0)


# --------------------------------------------------------------------------- in-process


def test_local_session_talks_with_tcp_clients() -> None:
    factory, clock = make_factory()
    bob = Client(factory, "bob").handshake()
    manager = local_session(factory, "manager")
    assert manager.private_group == "#manager#localhost"
    got: list[wire.ToClient] = []
    manager.add_listener(got.append, "q")
    joined: list[object] = []
    manager.join("q").addCallback(joined.append)
    assert joined == []  # like a socket: the notice comes on the next turn
    clock.advance(0)
    assert joined == [None]
    bob.join("q")
    bob.multicast(["q"], b"task")
    manager.multicast("q", b"done", mess_type=7)
    clock.advance(0)
    assert [f.data for f in got if isinstance(f, wire.RegularMessage)] == [b"task", b"done"]
    frames = bob.frames()
    assert [f.data for f in frames if isinstance(f, wire.RegularMessage)] == [b"task", b"done"]
    ended: list[object] = []
    manager.whenDisconnected().addCallback(ended.append)
    manager.disconnect()
    clock.advance(0)
    assert ended == [None]
    (notice,) = bob.frames()
    assert notice.cause == wire.CAUSED_BY_DISCONNECT  # type: ignore[union-attr]
    assert factory.local_links == set()
    assert factory.core.members("q") == (bob.group,)


def test_local_session_invented_name_and_quota() -> None:
    factory, _ = make_factory(max_sessions=1, randrange=lambda n: 5)
    session = local_session(factory)
    assert session.private_group == "#r5-1#localhost"
    with pytest.raises(QuotaExceeded):
        local_session(factory, "other")


def test_stopping_the_service_ends_local_sessions() -> None:
    reactor = MemoryReactorClock()
    service = SpreadDaemonService(reactor=reactor)
    service.startService()
    session = local_session(service.factory, "manager")
    ended: list[object] = []
    session.whenDisconnected().addCallback(ended.append)
    service.stopService()
    reactor.advance(0)
    assert ended == [None]
    assert service.factory.core.snapshot() == (frozenset(), {}, 0)


def test_local_session_replies_go_out_in_the_same_turn_in_one_write() -> None:
    """An in-process session gets what a read delivered to it when the daemon is done
    with that read, and what it sends meanwhile is written then: no reactor turn
    between the read and the replies, one write per connection."""
    factory, clock = make_factory()
    counting = CountingTransport()
    bob = Client(factory, "bob", transport=counting).handshake()
    manager = local_session(factory, "manager")

    def echo(frame: object) -> None:
        if isinstance(frame, wire.RegularMessage):
            for i in range(3):
                manager.multicast(frame.sender, frame.data + bytes([i]), mess_type=1)

    manager.add_listener(echo, manager.private_group)
    counting.writes = 0
    bob.multicast([manager.private_group], b"ping")
    assert clock.getDelayedCalls() == []  # nothing left for a later turn
    assert counting.writes == 1
    got = [f.data for f in bob.frames() if isinstance(f, wire.RegularMessage)]
    assert got == [b"ping\x00", b"ping\x01", b"ping\x02"]


def test_remote_readers_are_written_before_in_process_sessions_run() -> None:
    """A read that reaches sockets and an in-process session writes to the sockets
    first: local work never delays a remote reader."""
    factory, _ = make_factory()
    carol_transport = CountingTransport()
    carol = Client(factory, "carol", transport=carol_transport).handshake()
    bob = Client(factory, "bob").handshake()
    manager = local_session(factory, "manager")
    writes_seen: list[int] = []
    manager.add_listener(
        lambda frame: writes_seen.append(carol_transport.writes), manager.private_group
    )
    carol_transport.writes = 0
    bob.multicast([carol.group, manager.private_group], b"to both")
    assert writes_seen == [1]


def test_relayed_bytes_are_the_senders_own() -> None:
    """A libspread multicast goes to its receivers as the very bytes that came in."""
    factory, _ = make_factory()
    alice = Client(factory, "alice").handshake()
    bob = Client(factory, "bob").handshake()
    message = wire.encode_message(wire.AGREED_MESS, alice.group, [bob.group], b"x" * 100, 9)
    alice.send(message)
    assert bob.transport.value() == message
