"""SpreadClientProtocol and connect(), driven with the bytes of real Spread 5.0.1 traces.

The handshake and every message we write must equal what libspread 5.0.1 wrote in the
recorded traces; what the real daemon sent must reach the right listeners. No sockets,
no sleeps: StringTransport, MemoryReactorClock and task.Clock only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint, ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from spreadqueue._spread import errors, wire
from spreadqueue._spread.batch import DeliveryBatch
from spreadqueue._spread.client import (
    ConnectTimeout,
    SpreadClientProtocol,
    connect,
)
from spreadqueue._spread.endpoints import parse_spread_endpoint
from spreadqueue._spread.interfaces import ISessionLink, ISpreadSession
from spreadqueue._spread.output import Output
from spreadqueue._spread.session import SpreadSession
from spreadqueue._spread.wire.encode import encode_header

# --------------------------------------------------------------------------- traces

TRACES = Path(
    os.environ.get(
        "SPREAD_WIRE_TRACES",
        Path(__file__).resolve().parents[2] / "shared" / "spread-wire" / "traces",
    )
)
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason=f"no Spread traces at {TRACES}")

#: a1's handshake, copied from the trace so the core check runs without the trace files.
A1_CONNECT = bytes.fromhex("0500010105616c696365")
A1_AUTH_LIST = [bytes.fromhex("05"), bytes.fromhex("4e554c4c20")]
NULL_AUTH_CHOICE = b"NULL" + bytes(86)
A1_ACCEPT = [bytes.fromhex(h) for h in ("01", "05", "00", "01", "10")] + [b"#alice#localhost"]


def trace_records(case: str) -> list[tuple[str, str, bytes]]:
    """(connection, direction, payload) of every data record of a trace, in order."""
    path = TRACES / f"{case}.trace"
    if not path.exists():
        (path,) = TRACES.glob(f"{case}_*.trace")
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        _t, conn, direction, payload = line.split()
        if not payload.startswith("!"):
            out.append((conn, direction, bytes.fromhex(payload)))
    return out


def segments(case: str, conn: str, direction: str) -> list[bytes]:
    return [p for c, d, p in trace_records(case) if c == conn and d == direction]


# --------------------------------------------------------------------------- helpers


class RecordingTransport(StringTransport):
    """A StringTransport that remembers each write call separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        joined = b"".join(data)
        self.writes.append(joined)
        super().write(joined)


@implementer(ITCPTransport)
class TCPRecordingTransport(RecordingTransport):  # type: ignore[misc]
    nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


def open_protocol(
    name: str | None = "alice", **kwargs: Any
) -> tuple[SpreadClientProtocol, RecordingTransport]:
    proto = SpreadClientProtocol(name, **kwargs)
    transport = RecordingTransport()
    proto.makeConnection(transport)
    return proto, transport


def result_of(d: defer.Deferred[Any]) -> Any:
    """The result of a fired Deferred (raises if it has not fired or failed)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure_of(d: defer.Deferred[Any]) -> Failure:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    assert isinstance(out[0], Failure), f"Deferred succeeded with {out[0]!r}"
    return out[0]


def replay_handshake(
    case: str, conn: str = "C1", name: str | None = "alice", **kwargs: Any
) -> tuple[SpreadClientProtocol, RecordingTransport, SpreadSession, list[tuple[str, bytes]]]:
    """Drive a protocol through a traced handshake, segment by segment.

    Every C> record must be exactly our next write, made at the same point (before the
    daemon's next segment); returns the records of ``conn`` after the accept.
    """
    records = [(d, p) for c, d, p in trace_records(case) if c == conn]
    proto, transport = open_protocol(name, **kwargs)
    written = 0
    i = 0
    while not proto.ready.called:
        direction, payload = records[i]
        i += 1
        if direction == "C>":
            assert transport.writes[written] == payload
            written += 1
        else:
            assert len(transport.writes) == written, "wrote before the daemon's turn"
            proto.dataReceived(payload)
    assert len(transport.writes) == written
    return proto, transport, result_of(proto.ready), records[i:]


def feed_daemon(proto: SpreadClientProtocol, records: list[tuple[str, bytes]], count: int) -> None:
    """Feed the next ``count`` D> records (dropping C> records on the way)."""
    while count:
        direction, payload = records.pop(0)
        if direction == "D>":
            proto.dataReceived(payload)
            count -= 1


def next_client_write(records: list[tuple[str, bytes]]) -> bytes:
    """The next message libspread wrote (its header+groups and data writes joined)."""
    while records[0][0] != "C>":
        records.pop(0)
    out = b""
    while records and records[0][0] == "C>":
        out += records.pop(0)[1]
        if len(out) >= 48:
            size = (
                48
                + 32 * int.from_bytes(out[36:40], "little")
                + int.from_bytes(out[44:48], "little")
            )
            if len(out) >= size:
                break
    return out


def assert_kill(written: bytes, traced: bytes) -> None:
    """KILL_MESS equals libspread's, except its stack garbage after the group's NUL."""
    assert len(written) == len(traced) == 80
    assert written[:48] == traced[:48]
    name = traced[48:80].split(b"\0", 1)[0]
    assert written[48:80] == name + bytes(32 - len(name))


# --------------------------------------------------------------------------- handshake


def test_interfaces() -> None:
    proto = SpreadClientProtocol("alice")
    verifyObject(ISessionLink, proto)
    verifyObject(IPushProducer, proto)


def test_handshake_bytes_a1_without_traces() -> None:
    proto, transport = open_protocol("alice")
    assert transport.writes == [A1_CONNECT]
    assert transport.producer is proto and transport.streaming
    proto.dataReceived(A1_AUTH_LIST[0])
    assert transport.writes == [A1_CONNECT], "auth choice sent before the whole auth list"
    proto.dataReceived(A1_AUTH_LIST[1])
    assert transport.writes == [A1_CONNECT, NULL_AUTH_CHOICE]
    for seg in A1_ACCEPT[:-1]:
        proto.dataReceived(seg)
        assert not proto.ready.called
    proto.dataReceived(A1_ACCEPT[-1])
    session = result_of(proto.ready)
    verifyObject(ISpreadSession, session)
    assert (session.private_group, session.name, session.daemon_name) == (
        "#alice#localhost",
        "alice",
        "localhost",
    )
    assert session.connected and proto.session is session


def test_handshake_whole_reply_in_one_chunk() -> None:
    proto, _transport = open_protocol("alice")
    proto.dataReceived(b"".join(A1_AUTH_LIST))
    proto.dataReceived(b"".join(A1_ACCEPT))
    assert result_of(proto.ready).private_group == "#alice#localhost"


def test_tcp_nodelay_set_on_tcp_transports() -> None:
    proto = SpreadClientProtocol("alice")
    transport = TCPRecordingTransport()
    proto.makeConnection(transport)
    assert transport.nodelay


@needs_traces
def test_handshake_a1() -> None:
    proto, transport, session, rest = replay_handshake("a1_connect_accept_membership_on")
    assert transport.writes[0] == A1_CONNECT
    d = session.disconnect()
    assert_kill(transport.writes[-1], next_client_write(rest))
    assert transport.disconnecting and transport.producer is None
    assert not d.called
    proto.connectionLost(Failure(errors.SessionClosed("closed")))
    assert result_of(d) is None


@needs_traces
def test_handshake_a2_priority() -> None:
    _, transport, session, _ = replay_handshake("a2_connect_priority_1", priority=1)
    assert transport.writes[0] == bytes.fromhex("0500011105616c696365")
    assert session.private_group == "#alice#localhost"


@needs_traces
def test_handshake_a3_daemon_invents_name() -> None:
    _, transport, session, _ = replay_handshake("a3_connect_no_private_name", name=None)
    assert transport.writes[0] == bytes.fromhex("0500010100")
    assert session.private_group == "#r9704-9#localhost"
    assert session.name == "r9704-9"


def test_empty_name_means_daemon_invents_one() -> None:
    _, transport = open_protocol("")
    assert transport.writes == [bytes.fromhex("0500010100")]


@pytest.mark.parametrize("name", ["elevenchars", "bad name", "x#y", "caf\xe9"])
def test_illegal_private_names_raise(name: str) -> None:
    with pytest.raises(errors.IllegalGroupName):
        SpreadClientProtocol(name)
    with pytest.raises(errors.IllegalGroupName):
        connect(MemoryReactorClock(), "4803", name)


def test_ten_character_name_is_fine() -> None:
    _, transport = open_protocol("tencharsok")
    assert transport.writes == [bytes.fromhex("050001010a") + b"tencharsok"]


# --------------------------------------------------------------------------- rejects

REJECTS = [
    (-3, errors.QuotaExceeded),
    (-4, errors.NoName),
    (-5, errors.IllegalName),
    (-6, errors.NameNotUnique),
    (-7, errors.VersionRejected),
    (-9, errors.AuthRejected),
]


@pytest.mark.parametrize(("code", "exc"), REJECTS)
@pytest.mark.parametrize("where", ["instead of the auth list", "instead of the accept"])
def test_every_reject_code_is_typed(code: int, exc: type[Exception], where: str) -> None:
    proto, transport = open_protocol("alice")
    if where == "instead of the accept":
        proto.dataReceived(b"".join(A1_AUTH_LIST))
    proto.dataReceived(bytes((code & 0xFF,)))
    err = failure_of(proto.ready)
    assert err.check(exc)
    assert err.value.code == code
    assert transport.disconnecting
    proto.connectionLost(Failure(errors.SessionClosed("closed")))  # no second errback


def test_unknown_reject_code() -> None:
    proto, _ = open_protocol("alice")
    proto.dataReceived(bytes((0x9C,)))  # -100
    err = failure_of(proto.ready)
    assert err.check(errors.UnknownRejection) and err.value.code == -100


@needs_traces
@pytest.mark.parametrize(
    ("case", "conn", "exc"),
    [
        ("c1_reject_duplicate_name", "C2", errors.NameNotUnique),
        ("c2_reject_illegal_name_chars", "C1", errors.IllegalName),
        ("c4_reject_name_too_long_raw", "C1", errors.IllegalName),
        ("c5_reject_old_version", "C1", errors.VersionRejected),
        ("c7_reject_auth", "C1", errors.AuthRejected),
    ],
)
def test_traced_rejects(case: str, conn: str, exc: type[Exception]) -> None:
    proto, _ = open_protocol("alice")
    for payload in segments(case, conn, "D>"):
        proto.dataReceived(payload)
    assert failure_of(proto.ready).check(exc)


def test_daemon_without_null_auth() -> None:
    proto, transport = open_protocol("alice")
    proto.dataReceived(b"\x09PASSWORD ")
    err = failure_of(proto.ready)
    assert err.check(errors.AuthRejected) and "PASSWORD" in str(err.value)
    assert transport.writes == [A1_CONNECT] and transport.disconnecting


def test_too_old_daemon() -> None:
    proto, _ = open_protocol("alice")
    proto.dataReceived(b"".join(A1_AUTH_LIST) + b"\x01\x02\x09\x01\x10#alice#localhost")
    assert failure_of(proto.ready).check(errors.VersionRejected)


def test_connection_closed_during_handshake() -> None:
    proto, _ = open_protocol("alice")
    proto.dataReceived(A1_AUTH_LIST[0])
    proto.connectionLost(Failure(errors.SessionClosed("peer went away")))
    err = failure_of(proto.ready)
    assert err.check(errors.SessionClosed) and "handshake" in str(err.value)


def test_garbage_during_handshake_is_a_wire_error() -> None:
    proto, transport = open_protocol("alice")
    proto.dataReceived(b"\x7f" + bytes(200))  # auth list length 127 > 90
    assert failure_of(proto.ready).check(errors.WireError)
    assert transport.disconnected  # aborted


def test_cancelling_ready_aborts() -> None:
    proto, transport = open_protocol("alice")
    proto.ready.cancel()
    assert failure_of(proto.ready).check(defer.CancelledError)
    assert transport.disconnected
    proto.dataReceived(b"".join(A1_AUTH_LIST))  # late bytes are ignored
    assert transport.writes == [A1_CONNECT]
    proto.connectionLost(Failure(errors.SessionClosed("aborted")))


# --------------------------------------------------------------------------- messages


def accepted(
    name: str = "alice", **kwargs: Any
) -> tuple[SpreadClientProtocol, RecordingTransport, SpreadSession]:
    proto, transport = open_protocol(name, **kwargs)
    proto.dataReceived(b"".join(A1_AUTH_LIST))
    group = f"#{name}#localhost".encode()
    proto.dataReceived(b"\x01\x05\x00\x01" + bytes((len(group),)) + group)
    transport.writes.clear()
    return proto, transport, result_of(proto.ready)


@needs_traces
def test_d1_join_fires_on_own_notice() -> None:
    proto, transport, session, rest = replay_handshake("d1_join_membership")
    seen: list[Any] = []
    session.add_listener(seen.append, "grpA")
    d = session.join("grpA")
    assert transport.writes[-1] == next_client_write(rest)
    assert not d.called
    feed_daemon(proto, rest, 1)  # the 48-byte header alone
    assert not d.called and not seen
    feed_daemon(proto, rest, 1)
    assert result_of(d) is None
    (notice,) = seen
    assert isinstance(notice, wire.MembershipMessage)
    assert notice.cause == wire.CAUSED_BY_JOIN
    assert notice.members == ("#alice#localhost",)
    assert notice.changed_member == "#alice#localhost"
    assert session.groups == {"grpA"}
    session.disconnect()
    assert_kill(transport.writes[-1], next_client_write(rest))


@needs_traces
def test_e1_second_member_and_disconnect_notice() -> None:
    proto, transport, session, rest = replay_handshake("e1_second_member_joins")
    seen: list[Any] = []
    session.add_listener(seen.append, "grpE")
    d = session.join("grpE")
    assert transport.writes[-1] == next_client_write(rest)
    for _ in range(6):
        feed_daemon(proto, rest, 1)
    assert result_of(d) is None
    assert [(m.cause, m.members, m.changed_member) for m in seen] == [
        (wire.CAUSED_BY_JOIN, ("#alice#localhost",), "#alice#localhost"),
        (wire.CAUSED_BY_JOIN, ("#alice#localhost", "#bob#localhost"), "#bob#localhost"),
        (wire.CAUSED_BY_DISCONNECT, ("#alice#localhost",), "#bob#localhost"),
    ]


@needs_traces
@pytest.mark.parametrize(
    ("case", "service", "mess_type", "data", "self_discard"),
    [
        ("f1_multicast_unreliable", wire.UNRELIABLE_MESS, None, None, False),
        ("f2_multicast_reliable", wire.RELIABLE_MESS, None, None, False),
        ("f3_multicast_fifo", wire.FIFO_MESS, None, None, False),
        ("f4_multicast_causal", wire.CAUSAL_MESS, None, None, False),
        ("f5_multicast_agreed", wire.AGREED_MESS, 0x1234, b"agreed payload", False),
        ("f6_multicast_safe", wire.SAFE_MESS, None, None, False),
        ("f7_multicast_self_discard", wire.AGREED_MESS, -2, b"not for me", True),
    ],
)
def test_f_multicast_bytes_and_delivery(
    case: str, service: int, mess_type: int | None, data: bytes | None, self_discard: bool
) -> None:
    proto, transport, session, rest = replay_handshake(case)
    session.join("grpF")
    next_client_write(rest)
    traced = next_client_write(rest)
    while traced[:4] == bytes.fromhex("80000180"):
        traced = next_client_write(rest)  # (not ours) skip to the multicast
    # the traced header says what libspread was asked to send
    hint = int.from_bytes(traced[40:44], "little")
    mt = (
        mess_type
        if mess_type is not None
        else ((hint >> 8) & 0xFFFF) - (0x10000 if hint & 0x800000 else 0)
    )
    payload = data if data is not None else traced[48 + 32 :]
    before = len(transport.writes)
    session.multicast("grpF", payload, service, mess_type=mt, self_discard=self_discard)
    assert transport.writes[before:] == [traced], "one write equal to libspread's bytes"
    seen: list[Any] = []
    session.add_listener(seen.append, "grpF")
    for direction, chunk in list(rest):
        if direction == "D>":
            proto.dataReceived(chunk)
    regular = [f for f in seen if isinstance(f, wire.RegularMessage)]
    if self_discard:
        assert regular == []
    else:
        (msg,) = regular
        assert (msg.service, msg.sender, msg.groups, msg.mess_type, msg.data) == (
            service,
            "#alice#localhost",
            ("grpF",),
            mt,
            payload,
        )
    assert isinstance(seen[-1], wire.MembershipMessage)
    assert seen[-1].cause == wire.CAUSED_BY_DISCONNECT


@needs_traces
def test_g1_multigroup_multicast_bytes() -> None:
    _, transport, session, rest = replay_handshake("g1_multigroup_multicast", "C4", "dave")
    session.multicast(["grpA", "grpB"], b"to two groups", wire.SAFE_MESS, mess_type=7)
    assert transport.writes[-1] == next_client_write(rest)


@needs_traces
def test_g1_one_copy_one_call_per_listener() -> None:
    proto, _, session, rest = replay_handshake("g1_multigroup_multicast", "C3", "carol")
    calls: dict[str, list[Any]] = {"a": [], "b": [], "both": [], "all": []}
    session.add_listener(calls["a"].append, "grpA")
    session.add_listener(calls["b"].append, "grpB")
    session.add_listener(calls["both"].append, "grpA")
    session.add_listener(calls["both"].append, "grpB")
    session.add_listener(calls["both"].append)
    session.add_listener(calls["all"].append)
    session.join("grpA")
    session.join("grpB")
    for direction, chunk in rest:
        if direction == "D>":
            proto.dataReceived(chunk)

    def data(frames: list[Any]) -> list[bytes]:
        return [f.data for f in frames if isinstance(f, wire.RegularMessage)]

    assert data(calls["a"]) == data(calls["b"]) == [b"to two groups"]
    assert data(calls["both"]) == data(calls["all"]) == [b"to two groups"]
    # every frame reached the catch-all once, and the multi-registered listener once too
    assert calls["both"] == calls["all"]


@needs_traces
def test_h1_unicast_to_private_groups() -> None:
    proto, transport, session, rest = replay_handshake("h1_unicast_private_group")
    session.multicast("#bob#localhost", b"psst bob", wire.AGREED_MESS, mess_type=9)
    assert transport.writes[-1] == next_client_write(rest)
    session.multicast(
        ["#bob#localhost", "#alice#localhost"],
        b"to both private groups",
        wire.RELIABLE_MESS,
        mess_type=10,
    )
    assert transport.writes[-1] == next_client_write(rest)
    mine: list[Any] = []
    session.add_listener(mine.append, session.private_group)
    for direction, chunk in rest:
        if direction == "D>":
            proto.dataReceived(chunk)
    (msg,) = mine
    assert msg.groups == ("#bob#localhost", "#alice#localhost")
    assert msg.data == b"to both private groups" and msg.mess_type == 10


@needs_traces
def test_j1_leave_fires_on_self_leave_notice() -> None:
    proto, transport, session, rest = replay_handshake("j1_leave")
    seen: list[Any] = []
    session.add_listener(seen.append, "grpJ")
    joined = session.join("grpJ")
    assert transport.writes[-1] == next_client_write(rest)
    feed_daemon(proto, rest, 4)  # own join notice, then bob's
    assert result_of(joined) is None
    left = session.leave("grpJ")
    assert transport.writes[-1] == next_client_write(rest)
    assert not left.called
    feed_daemon(proto, rest, 1)
    assert result_of(left) is None
    assert seen[-1].is_self_leave and seen[-1].group == "grpJ"
    assert session.groups == frozenset()
    # libspread sends a second LEAVE that the daemon ignores; we know we are out
    n = len(transport.writes)
    assert result_of(session.leave("grpJ")) is None
    assert len(transport.writes) == n


@needs_traces
def test_b1_membership_off() -> None:
    proto, transport, session, rest = replay_handshake(
        "b1_connect_membership_off", name="bob", membership=False
    )
    assert transport.writes[0] == bytes.fromhex("0500010003626f62")
    seen: list[Any] = []
    session.add_listener(seen.append)
    assert result_of(session.join("grpB")) is None
    assert transport.writes[-1] == next_client_write(rest)
    feed_daemon(proto, rest, 2)
    (msg,) = seen
    assert msg.data == b"hello from carol" and msg.mess_type == 7
    assert result_of(session.leave("grpB")) is None
    assert transport.writes[-1] == next_client_write(rest)
    session.disconnect()
    assert_kill(transport.writes[-1], next_client_write(rest))


@needs_traces
@pytest.mark.parametrize(
    ("case", "sender", "mess_type", "data"),
    [
        ("m9_big_endian_client", "#bigend#localhost", 0x0102, b"BEdata"),
        ("o1_java_client", "#jclient#localhost", 42, b"hello alice, from java"),
    ],
)
def test_big_endian_senders(case: str, sender: str, mess_type: int, data: bytes) -> None:
    proto, _, session, rest = replay_handshake(case)
    seen: list[Any] = []
    session.add_listener(seen.append)
    for direction, chunk in rest:
        if direction == "D>":
            proto.dataReceived(chunk)
    (msg,) = [f for f in seen if isinstance(f, wire.RegularMessage) and f.sender == sender]
    assert (msg.mess_type, msg.data, msg.endian_mismatch) == (mess_type, data, True)


@needs_traces
def test_p3_transition_then_network_notice() -> None:
    proto, _, session, rest = replay_handshake("p3_partition_cut")
    seen: list[Any] = []
    session.add_listener(seen.append, "grpP3")
    for direction, chunk in rest:
        if direction == "D>":
            proto.dataReceived(chunk)
    kinds = [
        "T" if f.is_transition else f.cause for f in seen if isinstance(f, wire.MembershipMessage)
    ]
    i = kinds.index("T")
    assert kinds[i + 1] == wire.CAUSED_BY_NETWORK


def test_one_write_per_message_also_when_large() -> None:
    _, transport, session = accepted()
    big = bytes(100_000)
    session.multicast(["g1", "g2"], big)
    session.multicast("g1", b"small")
    assert len(transport.writes) == 2
    assert transport.writes[0] == wire.encode_message(
        wire.SAFE_MESS, "#alice#localhost", ["g1", "g2"], big
    )
    assert transport.writes[1] == wire.encode_message(
        wire.SAFE_MESS, "#alice#localhost", ["g1"], b"small"
    )


def test_too_long_message_writes_nothing() -> None:
    _, transport, session = accepted()
    session.multicast("g", bytes(wire.MAX_DATA_ONE_GROUP))
    with pytest.raises(errors.MessageTooLong):
        session.multicast("g", bytes(wire.MAX_DATA_ONE_GROUP + 1))
    assert len(transport.writes) == 1


def test_frames_in_the_accept_chunk_reach_the_session() -> None:
    proto, _ = open_protocol("alice")
    got: list[Any] = []
    proto.ready.addCallback(lambda s: s.add_listener(got.append))
    msg = wire.encode_relay(
        wire.AGREED_MESS,
        b"#bob#localhost",
        wire.pad_name(b"#alice#localhost"),
        1,
        b"\x80\x00\x00\x80",
        b"hi",
    )
    proto.dataReceived(b"".join(A1_AUTH_LIST) + b"".join(A1_ACCEPT) + msg)
    assert [f.data for f in got] == [b"hi"]


def test_wire_error_drops_the_connection() -> None:
    proto, transport, session = accepted()
    pending = session.join("grp")
    ended = session.whenDisconnected()
    bad = encode_header(0, b"grp", 0, wire.ENDIAN_MARKER, 0)  # no service, no cause
    proto.dataReceived(bad)
    assert transport.disconnected  # aborted
    proto.dataReceived(b"\x00" * 100)  # ignored after the error
    proto.connectionLost(Failure(errors.SessionClosed("aborted")))
    assert failure_of(pending).check(errors.SessionClosed)
    assert result_of(ended) is None
    assert session.disconnect_reason is not None
    assert session.disconnect_reason.check(errors.WireError)
    with pytest.raises(errors.SessionClosed):
        session.multicast("grp", b"x")


def test_frames_before_a_wire_error_are_delivered() -> None:
    proto, transport, session = accepted()
    seen: list[Any] = []
    session.add_listener(seen.append)
    good = wire.encode_relay(
        wire.AGREED_MESS,
        b"#bob#localhost",
        wire.pad_name(b"g"),
        1,
        b"\x80\x00\x00\x80",
        b"before the garbage",
    )
    bad = encode_header(0, b"g", 0, wire.ENDIAN_MARKER, 0)
    proto.dataReceived(good + bad)
    assert [f.data for f in seen] == [b"before the garbage"]
    assert transport.disconnected


def test_connection_lost_fails_pending() -> None:
    proto, _, session = accepted()
    join = session.join("grp")
    rx = session.receive()
    ended = session.whenDisconnected()
    proto.connectionLost(Failure(errors.SessionClosed("daemon died")))
    assert failure_of(join).check(errors.SessionClosed)
    assert failure_of(rx).check(errors.SessionClosed)
    assert result_of(ended) is None
    assert not session.connected


def test_disconnect_kill_then_close_and_abort_after_timeout() -> None:
    clock = Clock()
    proto, transport, session = accepted(clock=clock, disconnect_timeout=5)
    d = session.disconnect()
    assert transport.writes == [wire.encode_kill(b"#alice#localhost")]
    assert transport.disconnecting and not transport.disconnected
    assert transport.producer is None
    with pytest.raises(errors.SessionClosed):
        session.multicast("g", b"late")
    clock.advance(5)
    assert transport.disconnected  # aborted: the daemon never closed
    proto.connectionLost(Failure(errors.SessionClosed("aborted")))
    assert result_of(d) is None
    assert not clock.getDelayedCalls()


def test_disconnect_timer_cancelled_on_close() -> None:
    clock = Clock()
    proto, _transport, session = accepted(clock=clock)
    session.disconnect()
    proto.connectionLost(Failure(errors.SessionClosed("closed")))
    assert not clock.getDelayedCalls()
    assert result_of(session.disconnect()) is None


def test_link_refuses_after_close() -> None:
    proto, transport, _ = accepted()
    transport.loseConnection()
    with pytest.raises(errors.SessionClosed):
        proto.send_join(b"g")


# --------------------------------------------------------------------------- back-pressure


@implementer(IPushProducer)
class FakeProducer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def test_back_pressure_from_the_transport() -> None:
    proto, transport, session = accepted()
    producer = FakeProducer()
    session.register_producer(producer)
    assert session.writable and result_of(session.whenWritable()) is None
    assert transport.producer is proto and transport.streaming
    proto.pauseProducing()  # what a full TCP buffer makes the transport do
    assert not session.writable
    waiting = session.whenWritable()
    assert not waiting.called and producer.events == ["pause"]
    session.multicast("g", b"still buffered")  # sending stays possible
    proto.resumeProducing()
    assert session.writable and result_of(waiting) is None
    assert producer.events == ["pause", "resume"]
    proto.connectionLost(Failure(errors.SessionClosed("gone")))
    assert producer.events == ["pause", "resume", "stop"]


def test_paused_before_accept() -> None:
    proto, _ = open_protocol("alice")
    proto.pauseProducing()
    proto.dataReceived(b"".join(A1_AUTH_LIST) + b"".join(A1_ACCEPT))
    session = result_of(proto.ready)
    assert not session.writable
    proto.resumeProducing()
    assert session.writable


# --------------------------------------------------------------------------- endpoints


def test_parse_spread_forms() -> None:
    reactor = MemoryReactorClock()
    bare = parse_spread_endpoint(reactor, "4803")
    assert isinstance(bare, TCP4ClientEndpoint)
    assert (bare._host, bare._port) == ("127.0.0.1", 4803)
    at = parse_spread_endpoint(reactor, "4804@10.77.0.1")
    assert isinstance(at, TCP4ClientEndpoint) and (at._host, at._port) == ("10.77.0.1", 4804)
    v6 = parse_spread_endpoint(reactor, "4803@[::1]")
    assert isinstance(v6, TCP6ClientEndpoint) and v6._port == 4803
    named = parse_spread_endpoint(reactor, "4803@spread1")
    assert isinstance(named, HostnameEndpoint)
    tw = parse_spread_endpoint(reactor, "tcp:host=127.0.0.1:port=4803")
    assert isinstance(tw, TCP4ClientEndpoint) and (tw._host, tw._port) == ("127.0.0.1", 4803)
    for bad in ("0", "70000@host", "4803@", "nonsense:x=1"):
        with pytest.raises(ValueError):
            parse_spread_endpoint(reactor, bad)


def handshake_over_memory_reactor(
    reactor: MemoryReactorClock, index: int = 0
) -> tuple[RecordingTransport, Any]:
    host, port, factory, _timeout, _bind = reactor.tcpClients[index]
    proto: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = RecordingTransport()
    proto.makeConnection(transport)
    return transport, proto


def test_connect_with_a_spread_address() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, "4803@127.0.0.1", "alice")
    host, port = reactor.tcpClients[0][:2]
    assert (host, port) == ("127.0.0.1", 4803)
    transport, proto = handshake_over_memory_reactor(reactor)
    assert transport.writes == [A1_CONNECT]
    proto.dataReceived(b"".join(A1_AUTH_LIST))
    proto.dataReceived(b"".join(A1_ACCEPT))
    session = result_of(d)
    assert session.private_group == "#alice#localhost"
    assert not reactor.getDelayedCalls()  # timeout cleared


def test_connect_with_an_endpoint_object_and_membership_off() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, TCP4ClientEndpoint(reactor, "10.0.0.2", 4803), None, membership=False)
    transport, proto = handshake_over_memory_reactor(reactor)
    assert transport.writes == [bytes.fromhex("0500010000")]
    proto.dataReceived(b"".join(A1_AUTH_LIST) + b"\x01\x05\x00\x01\x07#r1-2#x")
    session = result_of(d)
    assert session.name == "r1-2" and not session.membership


def test_connect_rejected() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, "4803", "dave")
    _, proto = handshake_over_memory_reactor(reactor)
    proto.dataReceived(b"\xfa")
    assert failure_of(d).check(errors.NameNotUnique)


def test_connect_timeout_while_connecting() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, "4803", "alice", timeout=10)
    reactor.advance(9.9)
    assert not d.called
    reactor.advance(0.1)
    err = failure_of(d)
    assert err.check(ConnectTimeout) and "connecting" in str(err.value)
    assert isinstance(err.value, TimeoutError)


def test_connect_timeout_during_handshake() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, "4803", "alice", timeout=3)
    transport, proto = handshake_over_memory_reactor(reactor)
    proto.dataReceived(b"".join(A1_AUTH_LIST))
    reactor.advance(3)
    err = failure_of(d)
    assert err.check(ConnectTimeout) and "handshake" in str(err.value)
    assert transport.disconnected  # aborted


def test_connect_cancel_while_connecting() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, "4803", "alice")
    d.cancel()
    assert failure_of(d).check(defer.CancelledError)
    assert not reactor.getDelayedCalls()


def test_connect_cancel_during_handshake() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, "4803", "alice")
    transport, _ = handshake_over_memory_reactor(reactor)
    d.cancel()
    assert failure_of(d).check(defer.CancelledError)
    assert transport.disconnected


@implementer(IStreamClientEndpoint)
class FailingEndpoint:
    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.fail(ConnectionRefusedError("nobody home"))


def test_connect_unreachable() -> None:
    d = connect(MemoryReactorClock(), FailingEndpoint(), "alice")
    assert failure_of(d).check(ConnectionRefusedError)


# --------------------------------------------------------------------------- writes


def test_replies_made_while_handling_a_read_go_out_in_one_write() -> None:
    proto, transport, session = accepted()
    me = session.private_group

    def answer(frame: Any) -> None:
        session.multicast(frame.sender, b"re:" + frame.data, mess_type=2)
        session.multicast(frame.sender, b"and again", mess_type=3)

    session.add_listener(answer, me)
    ping = wire.RegularMessage(wire.AGREED_MESS, "#bob#localhost", (me,), 1, b"ping")
    proto.dataReceived(wire.encode_to_client(ping) * 2)
    (written,) = transport.writes
    assert written == b"".join(
        wire.encode_message(wire.SAFE_MESS, me, "#bob#localhost", data, mess_type)
        for data, mess_type in [(b"re:ping", 2), (b"and again", 3)] * 2
    )
    session.multicast("grp", b"outside a read")  # written at once
    assert transport.writes[1] == wire.encode_message(wire.SAFE_MESS, me, "grp", b"outside a read")


def test_a_read_is_one_delivery_batch_and_its_deferred_sends_share_its_write() -> None:
    proto, transport, session = accepted()
    me = session.private_group
    seen: list[bytes] = []

    def batched_reply() -> None:
        session.multicast("#bob#localhost", b"+".join(seen), mess_type=2)

    def collect(frame: Any) -> None:
        if not seen:
            assert session.after_delivery(batched_reply)
        seen.append(frame.data)

    session.add_listener(collect, me)
    pings = [
        wire.RegularMessage(wire.AGREED_MESS, "#bob#localhost", (me,), 1, data)
        for data in (b"a", b"b")
    ]
    proto.dataReceived(b"".join(wire.encode_to_client(p) for p in pings))
    reply = wire.encode_message(wire.SAFE_MESS, me, "#bob#localhost", b"a+b", 2)
    assert transport.writes == [reply]
    assert not session.after_delivery(batched_reply)  # the batch is over


def test_disconnect_from_a_listener_sends_its_replies_first() -> None:
    proto, transport, session = accepted()
    me = session.private_group

    def answer_and_go(frame: Any) -> None:
        session.multicast(frame.sender, b"bye")
        session.disconnect()

    session.add_listener(answer_and_go, me)
    ping = wire.RegularMessage(wire.AGREED_MESS, "#bob#localhost", (me,), 1, b"ping")
    proto.dataReceived(wire.encode_to_client(ping))
    assert b"".join(transport.writes) == wire.encode_message(
        wire.SAFE_MESS, me, "#bob#localhost", b"bye"
    ) + wire.encode_kill(me)
    assert transport.disconnecting


def test_a_listener_writing_a_lot_is_written_every_64_kb() -> None:
    """A batch goes to the transport once it holds 64 KB, so the transport's own
    back-pressure (pausing the session) still applies to a listener writing in a loop."""
    proto, transport, session = accepted()
    me = session.private_group

    def flood(frame: Any) -> None:
        for _ in range(100):
            session.multicast("grp", bytes(1000))

    session.add_listener(flood, me)
    ping = wire.RegularMessage(wire.AGREED_MESS, "#bob#localhost", (me,), 1, b"go")
    proto.dataReceived(wire.encode_to_client(ping))
    assert len(transport.writes) == 2  # 64 KB, then the rest at the end of the read
    assert len(transport.writes[0]) >= 65536
    assert sum(map(len, transport.writes)) == 100 * (48 + 32 + 1000)


# --------------------------------------------------------------------------- Output


def socket_connection(sndbuf: int | None = None) -> tuple[Any, Any, Any]:
    """A Twisted TCP-style connection over one end of a socketpair, and the other end."""
    import socket

    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactor

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    reactor = MemoryReactor()
    connection = tcp.Connection(ours, Protocol(), reactor)
    connection.connected = 1
    return connection, theirs, reactor


def read_all(sock: Any) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_output_finds_the_twisted_internals_its_direct_writes_rely_on() -> None:
    """Output writes to the socket of a Twisted TCP connection itself when Twisted has
    nothing buffered for it (the bench's ping-pong is 25% slower, the relay 38%, seq
    rpc 18%, without that). It reads these attributes of twisted.internet.tcp.Connection;
    if a Twisted release renames one, this fails here, by name, instead of sending out
    of order somewhere else."""
    connection, peer, _ = socket_connection()
    try:
        assert isinstance(connection, tcp.Connection)
        missing = [
            name
            for name in (
                "socket",
                "dataBuffer",
                "_tempDataLen",
                "connected",
                "disconnecting",
                "_writeDisconnecting",
                "_writeDisconnected",
                "TLS",
            )
            if not hasattr(connection, name)
        ]
        assert not missing, f"Twisted changed tcp.Connection: no {missing}; see output.py"
        assert connection.dataBuffer == b"" and connection._tempDataLen == 0
        assert Output(connection)._send is not None  # the direct path is in use
    finally:
        connection.socket.close()
        peer.close()


def test_output_sends_straight_to_the_socket() -> None:
    connection, peer, reactor = socket_connection()
    try:
        out = Output(connection)
        out.write(b"hello")
        assert read_all(peer) == b"hello"
        assert connection not in reactor.writers and not connection._tempDataLen
        out.write_many([b"a" * 20000, b"b" * 20000])
        assert read_all(peer) == b"a" * 20000 + b"b" * 20000
    finally:
        connection.socket.close()
        peer.close()


def test_output_keeps_order_behind_twisteds_buffer() -> None:
    connection, peer, reactor = socket_connection()
    try:
        out = Output(connection)
        connection.write(b"first ")
        out.write(b"second")
        assert read_all(peer) == b""  # both wait for Twisted's doWrite
        assert connection in reactor.writers
        connection.doWrite()
        assert read_all(peer) == b"first second"
    finally:
        connection.socket.close()
        peer.close()


def test_output_hands_what_the_socket_does_not_take_to_twisted() -> None:
    connection, peer, _ = socket_connection(sndbuf=4096)
    try:
        out = Output(connection)
        big = bytes(range(256)) * 4096  # 1 MB: more than the socket takes at once
        out.write(big)
        assert 0 < connection._tempDataLen < len(big)
        got = read_all(peer)
        while connection._tempDataLen or connection.dataBuffer:
            connection.doWrite()
            got += read_all(peer)
        assert got == big
        out.write_many([b"x" * 30000, b"y" * 30000])
        parts_sent = read_all(peer)
        while connection._tempDataLen or connection.dataBuffer:
            connection.doWrite()
            parts_sent += read_all(peer)
        assert parts_sent == b"x" * 30000 + b"y" * 30000
    finally:
        connection.socket.close()
        peer.close()


def test_output_batches() -> None:
    connection, peer, _ = socket_connection()
    try:
        batch = DeliveryBatch()
        out = Output(connection, batch, flush_at=100)
        batch.begin()
        batch.begin()
        out.write(b"a")
        out.write_many([b"b", b"c"])
        batch.end()
        assert read_all(peer) == b"" and out.pending == 3
        batch.end()
        assert read_all(peer) == b"abc" and out.pending == 0
        batch.begin()
        out.write(b"x" * 60)
        out.write(b"y" * 60)  # over flush_at: written now
        assert read_all(peer) == b"x" * 60 + b"y" * 60
        out.write(b"dropped")
        out.discard()
        batch.end()
        assert read_all(peer) == b""
    finally:
        connection.socket.close()
        peer.close()


def test_output_with_later_waits_for_the_next_turn_outside_a_batch() -> None:
    transport = RecordingTransport()
    clock = Clock()
    batch = DeliveryBatch(reactor=clock)
    out = Output(transport, batch, later=True)
    out.write(b"a")
    out.write(b"b")
    assert transport.writes == []
    clock.advance(0)
    assert transport.writes == [b"ab"]
    with batch:
        out.write(b"c")
    assert transport.writes == [b"ab", b"c"] and not clock.getDelayedCalls()


def test_output_on_other_transports_is_write_and_write_sequence() -> None:
    transport = RecordingTransport()
    out = Output(transport)
    out.write(b"a")
    out.write_many([b"b", b"c"])
    batch = DeliveryBatch()
    out = Output(transport, batch)
    with batch:
        out.write(b"d")
        out.write(b"e")
    assert transport.writes == [b"a", b"bc", b"de"]
