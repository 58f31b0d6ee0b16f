"""Golden tests: :mod:`spreadqueue._spread.wire` against traces of a real Spread 5.0.1 daemon.

Every trace of ``../shared/spread-wire/traces`` (skipped with a reason when that folder is
absent) and every compact vector of ``tests/vectors`` (always) is replayed connection by
connection, both directions:

- daemon -> client: the D> stream is fed to :class:`~wire.ClientDecoder` (set up with the
  version the connection's client announced) one TCP segment at a time. The frames each
  segment completes must be the units the trace's ``#   ^`` lines decode after that
  segment, field by field; re-encoding every frame with the daemon-side encoders must give
  back the exact bytes; libspread receivers' ``SP_receive`` results in the call log must
  match too (service type, sender, groups, mess_type, endian_mismatch, data).
- client -> daemon: the C> stream is fed to :class:`~wire.DaemonDecoder` one read (= one
  segment) at a time, driving the handshake by what the real daemon answered (auth list,
  accept, reject). The decoder must react as the daemon did: accept, the same reject code
  at the same step, a silent close, or - for a session the daemon dropped - a
  :class:`WireError`. Every frame must match the decode lines and re-encode with the
  client-side encoders to the bytes libspread wrote; and every libspread API call of the
  call log must encode (or be refused) the way libspread sent it.

The byte streams are split into protocol units by a small independent splitter written
here from the README, not by the codec under test.

Section numbers in this module refer to docs/spread-protocol.md.
"""

from __future__ import annotations

import ast
import functools
import random
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import spread_traces as st
from spread_traces import CLIENT, DAEMON, Decode, Record, Trace

from spreadqueue._spread import wire
from spreadqueue._spread.errors import HandshakeError, IllegalGroupName, MessageTooLong, WireError
from spreadqueue._spread.wire.encode import encode_transition

MARK = wire.ENDIAN_MARKER
TRACE_PATHS = st.trace_paths()
VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
VECTOR_PATHS = sorted(VECTOR_DIR.glob("*.json"))

needs_traces = pytest.mark.skipif(
    not TRACE_PATHS,
    reason=f"the Spread wire traces are not at {st.traces_dir()} (../shared/spread-wire); "
    "the golden checks still run from tests/vectors",
)


# --------------------------------------------------------------------------- independent split


def _sc(b: int) -> int:
    return b - 256 if b > 127 else b


def version_number(version: Sequence[int]) -> int:
    """The daemon's version arithmetic: signed chars, major*10000 + minor*100 + patch."""
    v = [_sc(x) for x in version] + [0, 0, 0]
    return v[0] * 10000 + v[1] * 100 + v[2]


def announced_version(cstream: bytes) -> tuple[int, ...]:
    """The library version a client announced in the first bytes of its C> stream."""
    if len(cstream) < 2:
        return wire.LIBRARY_VERSION
    if version_number(cstream[:2]) > 31400 and len(cstream) > 2:
        return tuple(cstream[:3])
    return tuple(cstream[:2])


def _is_le(unit: bytes) -> bool:
    return bool(unit[0] & 0x80 and unit[3] & 0x80)


def _counts(buf: bytes, pos: int) -> tuple[int, int, int]:
    fmt = "<I32xiIi" if _is_le(buf[pos : pos + 4]) else ">I32xiIi"
    stype, ngroups, _hint, dlen = struct.unpack_from(fmt, buf, pos)
    return stype, ngroups, dlen


def split_daemon_stream(stream: bytes, version: Sequence[int]) -> tuple[list[bytes], int]:
    """Cut a D> stream into its units (sections 4 and 6); return them and the bytes used."""
    units: list[bytes] = []
    pos = 0
    vn = version_number(version)
    if vn >= 31600 and stream:
        n = 1 if _sc(stream[0]) < 0 else 1 + stream[0]
        units.append(stream[:n])
        pos = n
        if _sc(stream[0]) < 0:
            return units, pos
    if pos < len(stream):
        if _sc(stream[pos]) < 0:
            units.append(stream[pos : pos + 1])
            return units, pos + 1
        nver = 3 if vn >= 31500 else 2
        n = 2 + nver + stream[pos + 1 + nver]
        units.append(stream[pos : pos + n])
        pos += n
    while len(stream) - pos >= 48:
        stype, ngroups, dlen = _counts(stream, pos)
        total = 48 + (4 if stype & wire.REJECT_MESS else 0) + 32 * ngroups + dlen
        if len(stream) - pos < total:
            break
        units.append(stream[pos : pos + total])
        pos += total
    return units, pos


def split_client_stream(stream: bytes, auth: bool) -> list[bytes]:
    """Cut the C> stream of an accepted session into its units (sections 4 and 6)."""
    pos = 3 if version_number(stream[:2]) > 31400 else 2
    pos += 2 + stream[pos + 1]
    units = [stream[:pos]]
    if auth:
        units.append(stream[pos : pos + 90])
        pos += 90
    while len(stream) - pos >= 48:
        _stype, ngroups, dlen = _counts(stream, pos)
        total = 48 + 32 * ngroups + dlen
        if ngroups < 0 or dlen < 0 or len(stream) - pos < total:
            break
        units.append(stream[pos : pos + total])
        pos += total
    return units


# --------------------------------------------------------------------------- what the daemon did


@dataclass
class Outcome:
    """How the real daemon treated one connection, read from its D> stream."""

    handshake: str  # "accepted", "rejected" or "silent"
    stage: str | None  # where a rejection came: "connect" or "auth"
    code: int | None
    auth: bool  # the daemon sent its auth list
    private_group: str | None
    dropped: bool  # the daemon dropped the session for a bad message


def _message_decodes(trace: Trace, conn: str, direction: str) -> list[Decode]:
    return [d for d in trace.decodes(conn, direction) if d.kind == "MESSAGE"]


def daemon_closed_first(trace: Trace, conn: str) -> bool:
    for rec in trace.records:
        if rec.conn == conn and rec.marker in ("FIN", "RST"):
            return rec.direction == DAEMON
    return False


def outcome_of(trace: Trace, conn: str) -> Outcome:
    """Read the daemon's reaction to ``conn`` from what it sent back."""
    kinds = [d for d in trace.decodes(conn, DAEMON) if d.kind != "MESSAGE"]
    auth = any(d.kind == "AUTH_LIST" for d in kinds)
    accept = next((d for d in kinds if d.kind == "ACCEPT"), None)
    reject = next((d for d in kinds if d.kind == "REJECT"), None)
    if accept is not None:
        group = accept.fields["private_group"]
        kill_sent = any(
            "KILL_MESS" in d.fields["type_names"] for d in _message_decodes(trace, conn, CLIENT)
        )
        # Dropped: the daemon hung up on a session that never said goodbye, and told the
        # others it disconnected (docs/spread-protocol.md, section 7).
        notified = any(
            "CAUSED_BY_DISCONNECT" in d.fields["type_names"]
            and d.fields["membership"]["vs_sets"] == ((group,),)
            for other in trace.conns()
            if other != conn
            for d in _message_decodes(trace, other, DAEMON)
        )
        dropped = daemon_closed_first(trace, conn) and not kill_sent and notified
        return Outcome("accepted", None, None, auth, group, dropped)
    if reject is not None:
        stage = "auth" if auth else "connect"
        return Outcome("rejected", stage, reject.fields["code"], auth, None, False)
    return Outcome("silent", "connect", None, auth, None, False)


def oversize_by_our_rule(trace: Trace, conn: str) -> bool:
    """A message the real daemon let through but our 143200-byte rule refuses (i4)."""
    return any(
        48 + 32 * d.fields["num_groups"] + d.fields["data_len"] > wire.MAX_MESSAGE_BYTES
        for d in _message_decodes(trace, conn, CLIENT)
    )


#: Refusals that depend on the daemon's state (names in use, sessions), not on the bytes.
STATEFUL_REJECTS = (wire.RejectCode.REJECT_NOT_UNIQUE, wire.RejectCode.REJECT_QUOTA)


# --------------------------------------------------------------------------- frame vs decode


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


def _check_data(frame_data: bytes, f: dict[str, Any]) -> None:
    assert len(frame_data) == f["data_len"]
    prefix = f["data_prefix"]
    if prefix is None:
        assert f["data_len"] == 0
    else:
        assert frame_data.startswith(prefix)
        if not f.get("data_truncated"):
            assert frame_data == prefix


def vs_offsets(vs_sets: Sequence[Sequence[str]]) -> list[int]:
    """Byte offsets of each vs-set, counted from the first one (section 8)."""
    out, off = [], 0
    for vs in vs_sets:
        out.append(off)
        off += 4 + 32 * len(vs)
    return out


def check_daemon_decode(frame: Any, d: Decode) -> None:
    """``frame`` (from ClientDecoder) is what the decode line ``d`` describes."""
    f = d.fields
    if d.kind == "AUTH_LIST":
        assert frame == wire.AuthList(tuple(f["methods"].split()))
        assert len(f["methods"]) == f["len"]
    elif d.kind == "ACCEPT":
        assert frame == wire.Accepted(f["daemon_version"], f["private_group"])
    elif d.kind == "REJECT":
        assert frame == wire.HandshakeRejected(f["code"])
    elif d.kind == "MESSAGE":
        stype = f["type"] & ~MARK
        assert f["little_endian"], "the x86 daemon writes little-endian"
        if stype & wire.REGULAR_MESS:
            assert isinstance(frame, wire.RegularMessage)
            assert frame.service_type == stype
            assert frame.sender == f["sender"]
            assert frame.groups == f["groups"]
            assert frame.mess_type == f["mess_type"]
            assert frame.endian_mismatch == (not f["hint_little_endian"])
            _check_data(frame.data, f)
            return
        assert isinstance(frame, wire.MembershipMessage)
        assert frame.service_type == stype
        assert frame.group == f["sender"]
        if f["membership"] is not None:
            m = f["membership"]
            assert stype & wire.REG_MEMB_MESS
            assert frame.cause == stype & wire.CAUSE_MASK
            assert frame.members == f["groups"]
            assert frame.group_id == wire.GroupId(*map(_u32, m["group_id"]))
            assert frame.vs_sets == m["vs_sets"]
            assert len(frame.vs_sets) == m["num_vs_sets"]
            offsets = vs_offsets(m["vs_sets"])
            if m["offsets"] is not None:
                assert list(m["offsets"]) == offsets
                assert frame.local_vs_set == m["local_index"]
            assert offsets[frame.local_vs_set] == m["local_vs_set_offset"]
            assert not frame.is_transition and not frame.is_self_leave
            caused_by_one = wire.CAUSED_BY_JOIN | wire.CAUSED_BY_LEAVE | wire.CAUSED_BY_DISCONNECT
            if stype & caused_by_one:
                assert frame.changed_member == m["vs_sets"][0][0]
            else:
                assert frame.changed_member is None
        elif f["transition_group_id"] is not None:
            assert stype == wire.TRANSITION_MESS
            assert frame.is_transition and frame.cause == 0
            assert frame.group_id == wire.GroupId(*map(_u32, f["transition_group_id"]))
            assert f["groups"] == () and f["data_len"] == 12
        else:
            assert stype == wire.CAUSED_BY_LEAVE, "self-leave: CAUSED_BY_LEAVE alone"
            assert frame.is_self_leave and frame.group_id is None
            assert frame.members == () and f["data_len"] == 0
    else:
        raise AssertionError(f"unexpected D> decode {d.text}")


def check_client_decode(frame: Any, d: Decode) -> None:
    """``frame`` (from DaemonDecoder) is what the decode line ``d`` describes."""
    f = d.fields
    if d.kind == "CONNECT":
        assert isinstance(frame, wire.ConnectRequest)
        version = f["version"] if f["patch_byte"] else f["version"][:2]
        assert frame.version == version
        assert frame.flags == f["flags"]
        assert frame.membership == f["membership"]
        assert frame.priority == f["priority"]
        assert frame.name == f["name"] and len(frame.name) == f["name_len"]
    elif d.kind == "AUTH_CHOICE":
        assert isinstance(frame, wire.AuthChoice)
        slots = list(f["slots"])
        chosen = slots[: slots.index("")] if "" in slots else slots
        assert frame.methods == tuple(chosen)
    elif d.kind == "MESSAGE":
        names = f["type_names"]
        group = f["groups"][0] if f["groups"] else ""
        if "JOIN_MESS" in names:
            assert frame == wire.Join(group)
        elif "LEAVE_MESS" in names:
            assert frame == wire.Leave(group)
        elif "KILL_MESS" in names:
            assert frame == wire.Kill()
        else:
            assert isinstance(frame, wire.Multicast)
            assert frame.service_type == f["type"] & ~MARK
            assert frame.sender == f["sender"]
            assert frame.groups == f["groups"]
            assert frame.mess_type == f["mess_type"]
            order = "<I" if f["hint_little_endian"] else ">I"
            assert frame.hint == struct.pack(order, f["hint"])
            _check_data(frame.data, f)
    else:
        raise AssertionError(f"unexpected C> decode {d.text}")


# --------------------------------------------------------------------------- encoders


def daemon_encode(frame: Any, version: Sequence[int]) -> bytes:
    """Re-encode a ClientDecoder frame with the daemon-side encoders."""
    if isinstance(frame, wire.AuthList):
        return wire.encode_auth_list(frame.methods)
    if isinstance(frame, wire.Accepted):
        return wire.encode_accept(
            frame.private_group, client_version=version, daemon_version=frame.daemon_version
        )
    if isinstance(frame, wire.HandshakeRejected):
        return wire.encode_reject(frame.code)
    if isinstance(frame, wire.RegularMessage):
        if frame.endian_mismatch:  # a big-endian sender's hint, relayed untouched
            hint = struct.pack(">I", (frame.mess_type << 8) & 0xFFFF00)
        else:
            hint = struct.pack("<I", wire.encode_hint(frame.mess_type))
        blob = b"".join(wire.pad_name(g) for g in frame.groups)
        return wire.encode_relay(
            frame.service_type, frame.sender.encode(), blob, len(frame.groups), hint, frame.data
        )
    if isinstance(frame, wire.MembershipMessage):
        if frame.is_transition:
            assert frame.group_id is not None
            return encode_transition(frame.group, frame.group_id)
        if frame.is_self_leave:
            return wire.encode_self_leave(frame.group)
        assert frame.group_id is not None
        return wire.encode_membership(
            frame.service_type,
            frame.group,
            frame.members,
            frame.group_id,
            frame.vs_sets,
            frame.local_vs_set,
        )
    raise AssertionError(f"no daemon-side encoder for {frame!r}")


def client_encode(frame: Any, private_group: str) -> bytes:
    """Re-encode a DaemonDecoder frame with the client-side encoders (libspread's bytes)."""
    if isinstance(frame, wire.ConnectRequest):
        return wire.encode_connect(
            frame.name,
            membership=frame.membership,
            priority=frame.priority,
            version=frame.version,
        )
    if isinstance(frame, wire.AuthChoice):
        return wire.encode_auth_choice(frame.methods)
    if isinstance(frame, wire.Multicast):
        return wire.encode_message(
            frame.service_type, frame.sender, frame.groups, frame.data, frame.mess_type
        )
    if isinstance(frame, wire.Join):
        return wire.encode_join(private_group, frame.group)
    if isinstance(frame, wire.Leave):
        return wire.encode_leave(private_group, frame.group)
    if isinstance(frame, wire.Kill):
        return wire.encode_kill(private_group)
    raise AssertionError(f"no client-side encoder for {frame!r}")


def same_up_to_nul(ours: bytes, theirs: bytes) -> bool:
    """Compare two messages whose group fields only matter up to their NUL (KILL_MESS)."""
    if len(ours) != len(theirs) or ours[:48] != theirs[:48]:
        return False
    for i in range(48, len(ours), 32):
        a, b = ours[i : i + 32], theirs[i : i + 32]
        if a.split(b"\0", 1)[0] != b.split(b"\0", 1)[0]:
            return False
    return True


def assert_client_bytes(frame: Any, unit: bytes, private_group: str) -> None:
    ours = client_encode(frame, private_group)
    if isinstance(frame, wire.Kill):
        # libspread leaves stack bytes after the NUL of KILL_MESS's group (section 6).
        assert same_up_to_nul(ours, unit), (ours.hex(), unit.hex())
    else:
        assert ours == unit, (frame, ours.hex(), unit.hex())


# --------------------------------------------------------------------------- replays


@dataclass
class DaemonSide:
    """The D> stream of one connection, replayed through ClientDecoder."""

    version: tuple[int, ...]
    frames: list[Any]
    units: list[bytes]
    consumed: int


def replay_daemon_side(trace: Trace, conn: str, *, accelerated: bool | None = None) -> DaemonSide:
    """Feed the D> segments one by one; check each segment's frames against its decodes.

    ``accelerated`` picks the decoder's path (see ClientDecoder; None: the default)."""
    version = announced_version(trace.stream(conn, CLIENT))
    decoder = wire.ClientDecoder(version, accelerated=accelerated)
    frames: list[Any] = []
    for rec in trace.data_records(conn, DAEMON):
        got = decoder.feed(rec.payload)
        expected = [d for d in rec.decodes if d.conn == conn and d.direction == DAEMON]
        assert len(got) == len(expected), (trace.case, conn, rec.lineno, got, expected)
        for frame, d in zip(got, expected, strict=True):
            try:
                check_daemon_decode(frame, d)
            except AssertionError as err:
                raise AssertionError(f"{trace.case} {conn} line {rec.lineno}: {d.text}") from err
        frames.extend(got)
    stream = trace.stream(conn, DAEMON)
    units, consumed = split_daemon_stream(stream, version)
    assert len(units) == len(frames), (trace.case, conn)
    if not any(isinstance(f, wire.HandshakeRejected) for f in frames):
        assert decoder.buffered == len(stream) - consumed
    return DaemonSide(version, frames, units, consumed)


@dataclass
class ClientSide:
    """The C> stream of one connection, replayed through DaemonDecoder read by read."""

    outcome: Outcome
    frames: list[tuple[Record | None, list[Any]]]
    error: WireError | None
    error_record: Record | None
    decoder: wire.DaemonDecoder

    def all_frames(self) -> list[Any]:
        return [f for _, fs in self.frames for f in fs]


def replay_client_side(
    trace: Trace, conn: str, decoder: wire.DaemonDecoder | None = None
) -> ClientSide:
    """Drive DaemonDecoder (a new default one, or ``decoder``) through the C> reads,
    answering as the real daemon did."""
    outcome = outcome_of(trace, conn)
    if decoder is None:
        decoder = wire.DaemonDecoder()
    recs = trace.data_records(conn, CLIENT)
    done: list[tuple[Record | None, list[Any]]] = []
    current: Record | None = None
    try:
        if not recs:
            # Nothing ever came: the daemon's 1 s timer reads an empty socket (c8).
            decoder.feed(b"")
            return ClientSide(outcome, done, None, None, decoder)
        it: Iterator[Record] = iter(recs)
        current = next(it)
        frames = decoder.feed(current.payload)
        done.append((current, frames))
        if outcome.auth:
            frames.extend(decoder.expect_auth())
            if not any(isinstance(f, wire.AuthChoice) for f in frames):
                current = next(it)
                done.append((current, decoder.feed(current.payload)))
        if outcome.handshake == "accepted":
            assert outcome.private_group is not None
            done[-1][1].extend(decoder.accepted(outcome.private_group))
        elif outcome.handshake == "rejected":
            if outcome.code in STATEFUL_REJECTS:
                return ClientSide(outcome, done, None, None, decoder)
            raise AssertionError(f"{trace.case} {conn}: decoder accepted what the daemon refused")
        for current in it:
            done.append((current, decoder.feed(current.payload)))
    except WireError as err:
        if err.frames:
            done.append((current, list(err.frames)))
        return ClientSide(outcome, done, err, current, decoder)
    return ClientSide(outcome, done, None, None, decoder)


def check_client_side(trace: Trace, conn: str, side: ClientSide) -> None:
    """The decoder reacted like the daemon, and its frames are the decode lines."""
    out = side.outcome
    where = f"{trace.case} {conn}"
    if out.code in STATEFUL_REJECTS:
        # A duplicate name or a full daemon is the daemon's state, not the record's:
        # the codec decodes the record and the daemon refuses it (c1).
        assert side.error is None and isinstance(side.all_frames()[0], wire.ConnectRequest)
    elif out.handshake in ("rejected", "silent"):
        assert isinstance(side.error, HandshakeError), (where, side.error)
        assert side.error.reject_code == out.code, where
        recs = trace.data_records(conn, CLIENT)
        expected_record = None
        if recs:
            expected_record = recs[0] if out.stage == "connect" else recs[1]
        assert side.error_record is expected_record, where
    elif out.dropped or oversize_by_our_rule(trace, conn):
        assert side.error is not None and not isinstance(side.error, HandshakeError), where
        assert side.error_record is not None
        close = next(
            r.time
            for r in trace.records
            if r.conn == conn and r.direction == DAEMON and r.marker in ("FIN", "RST")
        )
        assert side.error_record.time <= close, where
    else:
        assert side.error is None, (where, side.error)
    # Frame by frame, against the decode lines of the record that completed them.
    for rec, frames in side.frames:
        if rec is None or rec is side.error_record:
            continue
        expected = [d for d in rec.decodes if d.conn == conn and d.direction == CLIENT]
        assert len(frames) == len(expected), (where, rec.lineno, frames, expected)
        for frame, d in zip(frames, expected, strict=True):
            try:
                check_client_decode(frame, d)
            except AssertionError as err:
                raise AssertionError(f"{where} line {rec.lineno}: {d.text}") from err
    if out.handshake != "accepted":
        return
    # Re-encode: libspread's (little-endian) units come back byte for byte.
    assert out.private_group is not None
    frames = side.all_frames()
    units = split_client_stream(trace.stream(conn, CLIENT), out.auth)
    assert len(frames) <= len(units), where
    if side.error is None:
        assert len(frames) == len(units), where
        assert side.decoder.buffered == len(trace.stream(conn, CLIENT)) - sum(map(len, units))
    for i, (frame, unit) in enumerate(zip(frames, units, strict=False)):
        if i >= (2 if out.auth else 1) and not _is_le(unit):
            # A big-endian client (Java, m9): we only write little-endian; compare values.
            assert len(wire.encode_to_daemon(frame, sender=out.private_group)) == len(unit)
            continue
        if isinstance(frame, wire.ConnectRequest) and not _libspread_name(frame.name):
            continue
        assert_client_bytes(frame, unit, out.private_group)


def _libspread_name(name: str) -> bool:
    try:
        wire.check_private_name(name)
    except IllegalGroupName:
        return False
    return True


# --------------------------------------------------------------------------- call log


def _conn_of_calls(trace: Trace) -> dict[str, list[tuple[Any, str]]]:
    """Assign each libspread ``SP_*`` call to the connection it wrote on."""
    conns = trace.conns()
    first_seen = {c: next(r.time for r in trace.records if r.conn == c) for c in conns}
    assigned: dict[str, str] = {}
    used: set[str] = set()
    per_conn: dict[str, list[tuple[Any, str]]] = {}
    for call in trace.calls:
        if not call.text.startswith("SP_"):
            continue
        if call.text.startswith("SP_connect("):
            candidates = [c for c in conns if trace.connections.get(c) == call.who]
            candidates += [
                c for c in conns if not trace.connections.get(c) and first_seen[c] <= call.time
            ]
            free = [c for c in candidates if c not in used]
            if not free:
                continue
            assigned[call.who] = free[0]
            used.add(free[0])
        conn = assigned.get(call.who)
        if conn is not None:
            per_conn.setdefault(conn, []).append((call, call.who))
    return per_conn


_SP_CONNECT = re.compile(
    r'^SP_connect\("[^"]*", (NULL|"(?:[^"\\]|\\.)*"), priority=(\d+), '
    r"group_membership=(\d+), &mbox, private_group\) -> (-?\d+)"
)
_SP_GROUP_CALL = re.compile(r'^SP_(join|leave)\(mbox, ("(?:[^"\\]|\\.)*")\) -> (-?\d+)')
_SP_MULTICAST = re.compile(
    r'^SP_multicast\(mbox, ([A-Z_|]+), ("(?:[^"\\]|\\.)*"), mess_type=(-?\d+), len=(\d+), '
    r"(.*)\) -> (-?\d+)"
)
_SP_MULTIGROUP = re.compile(
    r"^SP_multigroup_multicast\(mbox, ([A-Z_|]+), (\d+), (\[[^\]]*\]), mess_type=(-?\d+), "
    r"len=(\d+), (.*)\) -> (-?\d+)"
)
_DATA_REPEAT = re.compile(r"^b'(.)'\*(\d+)$")
_DATA_FORMULA = re.compile(r"^bytes\(\(i\*(\d+)\+(\d+)\)&0xff for i in range\((\d+)\)\)$")


def call_data(text: str) -> bytes | None:
    """The payload an SP_multicast call passed, when the log spells it out."""
    m = _DATA_REPEAT.match(text)
    if m:
        return m.group(1).encode() * int(m.group(2))
    m = _DATA_FORMULA.match(text)
    if m:
        mul, add, n = map(int, m.groups())
        return bytes((i * mul + add) & 0xFF for i in range(n))
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, bytes) else None


def _service(names: str) -> int:
    value = 0
    for name in names.split("|"):
        value |= getattr(wire, name)
    return value


def check_calls(trace: Trace, conn: str, calls: list[tuple[Any, str]], side: ClientSide) -> int:
    """Encode every libspread call of ``conn`` and compare with what libspread sent.

    Returns how many calls were compared byte for byte.
    """
    out = side.outcome
    units = (
        iter(split_client_stream(trace.stream(conn, CLIENT), out.auth))
        if (out.handshake == "accepted")
        else iter([trace.stream(conn, CLIENT)])
    )
    group = out.private_group or ""
    checked = 0
    for call, _who in calls:
        text = call.text
        m = _SP_CONNECT.match(text)
        if m:
            name = None if m.group(1) == "NULL" else ast.literal_eval(m.group(1))
            unit = next(units)
            kwargs = {"membership": m.group(3) != "0", "priority": int(m.group(2))}
            if name is None or _libspread_name(name):
                assert wire.encode_connect(name, **kwargs) == unit, text
            else:
                with pytest.raises(IllegalGroupName):
                    wire.encode_connect(name, **kwargs)
                if len(name) > wire.MAX_PRIVATE_NAME and _libspread_name(name[:10]):
                    # libspread cuts long names to 10 bytes (c3); so do we, if asked to.
                    assert wire.encode_connect(name[:10], **kwargs) == unit, text
            if out.auth:
                assert wire.encode_auth_choice(("NULL",)) == next(units)
            checked += 1
            continue
        m = _SP_GROUP_CALL.match(text)
        if m:
            target = ast.literal_eval(m.group(2))
            encode = wire.encode_join if m.group(1) == "join" else wire.encode_leave
            if int(m.group(3)) < 0:  # ILLEGAL_GROUP: nothing left the library (d2)
                with pytest.raises(IllegalGroupName):
                    encode(group, target)
            else:
                assert encode(group, target) == next(units), text
                checked += 1
            continue
        m = _SP_MULTICAST.match(text) or _SP_MULTIGROUP.match(text)
        if m:
            if m.re is _SP_MULTICAST:
                service, groups = _service(m.group(1)), [ast.literal_eval(m.group(2))]
                mess_type, length, data_text, result = m.group(3, 4, 5, 6)
            else:
                service, groups = _service(m.group(1)), ast.literal_eval(m.group(3))
                mess_type, length, data_text, result = m.group(4, 5, 6, 7)
            data = call_data(data_text)
            if data is None:
                return checked  # a summarised loop (p7): the frames were checked above
            assert len(data) == int(length)
            if 48 + 32 * len(groups) + len(data) > wire.MAX_MESSAGE_BYTES:
                with pytest.raises(MessageTooLong):
                    wire.encode_message(service, group, groups, data, int(mess_type))
                if int(result) >= 0:  # libspread sent it anyway (i3 143960, i4 143121)
                    next(units, None)
                continue
            assert int(result) == len(data)
            unit = next(units, None)
            if unit is None:  # the daemon dropped us before the unit was complete
                return checked
            assert wire.encode_message(service, group, groups, data, int(mess_type)) == unit
            checked += 1
            continue
        if text.startswith(("SP_multicast(", "SP_multigroup_multicast(")):
            return checked  # a summarised loop (p7): the frames were checked above
        if text.startswith("SP_disconnect("):
            unit = next(units, None)
            if unit is not None:  # after CONNECTION_CLOSED libspread sends nothing (p5)
                assert same_up_to_nul(wire.encode_kill(group), unit), text
                checked += 1
    return checked


def check_receives(trace: Trace, who: str, group: str, frames: list[Any]) -> int:
    """``who``'s SP_receive results are what our frames say libspread returned."""
    receives = trace.receives(who)
    messages = [
        f
        for f in frames
        if isinstance(f, (wire.RegularMessage, wire.MembershipMessage, wire.RejectMessage))
    ]
    summarised = any(c.who == who and c.text.startswith("SP_receive x ") for c in trace.calls)
    conn = next(c for c, w in trace.connections.items() if w == who)
    # p6's capture stops at 74.74 s, before the last notice alice's call log shows: what
    # was never recorded cannot be compared.
    recorded_to_the_end = any(r.conn == conn and r.marker in ("FIN", "RST") for r in trace.records)
    i = 0
    for n, r in enumerate(receives):
        while True:
            if i == len(messages) and not recorded_to_the_end:
                return n
            assert i < len(messages), (trace.case, who, r)
            frame = messages[i]
            i += 1
            if _receive_matches(frame, r, group):
                break
            assert summarised, (trace.case, who, frame, r)
    return len(receives)


def _receive_matches(frame: Any, r: st.Receive, group: str) -> bool:
    if isinstance(frame, wire.RegularMessage):
        return (
            r.service_type == frame.service_type
            and r.sender == frame.sender
            and r.groups == frame.groups
            and r.mess_type == frame.mess_type
            and r.endian_mismatch == int(frame.endian_mismatch)
            and r.data_len == len(frame.data)
            and frame.data.startswith(r.data_prefix)
        )
    if isinstance(frame, wire.MembershipMessage):
        # libspread reports the receiver's index in the member list as mess_type, or -1
        # for notices without members (section 13); data is the membership body.
        if frame.is_transition or frame.is_self_leave:
            mess_type = -1
        else:
            mess_type = frame.members.index(group) if group in frame.members else -1
        body = wire.encode_to_client(frame)[48 + 32 * len(frame.members) :]
        return (
            r.service_type == frame.service_type
            and r.sender == frame.group
            and r.groups == frame.members
            and r.mess_type == mess_type
            and r.endian_mismatch == 0
            and r.data_len == len(body)
            and body.startswith(r.data_prefix)
        )
    return False  # pragma: no cover - no REJECT_MESS in the traces


# --------------------------------------------------------------------------- whole-trace check


@dataclass
class Summary:
    connections: int = 0
    daemon_frames: int = 0
    client_frames: int = 0
    reencoded: int = 0
    calls: int = 0
    receives: int = 0


def check_trace(trace: Trace) -> Summary:
    """All generic checks on every connection of ``trace``."""
    summary = Summary()
    calls = _conn_of_calls(trace)
    for conn in trace.conns():
        dside = replay_daemon_side(trace, conn)
        for frame, unit in zip(dside.frames, dside.units, strict=True):
            assert daemon_encode(frame, dside.version) == unit, (trace.case, conn, frame)
        summary.daemon_frames += len(dside.frames)
        summary.reencoded += len(dside.frames)
        cside = replay_client_side(trace, conn)
        check_client_side(trace, conn, cside)
        summary.connections += 1
        summary.client_frames += len(cside.all_frames())
        who = trace.connections.get(conn, "")
        if conn in calls:
            summary.calls += check_calls(trace, conn, calls[conn], cside)
        if who and cside.outcome.private_group and conn in calls:
            summary.receives += check_receives(
                trace, who, cside.outcome.private_group, dside.frames
            )
    return summary


def check_chunking(trace: Trace, seed: int = 0) -> None:
    """Whole streams, 1-byte feeds (small streams) and random chunks give the same frames."""
    rnd = random.Random(seed)
    for conn in trace.conns():
        stream = trace.stream(conn, DAEMON)
        version = announced_version(trace.stream(conn, CLIENT))
        per_segment = _decode_all(version, trace.segments(conn, DAEMON))
        assert _decode_all(version, [stream]) == per_segment
        if len(stream) <= 16384:
            assert _decode_all(version, [stream[i : i + 1] for i in range(len(stream))]) == (
                per_segment
            )
        cuts = sorted(rnd.sample(range(1, max(2, len(stream))), min(50, max(0, len(stream) - 1))))
        pieces = [stream[a:b] for a, b in pairwise([0, *cuts, len(stream)])]
        assert _decode_all(version, pieces) == per_segment


def _decode_all(version: Sequence[int], chunks: Sequence[bytes]) -> list[Any]:
    decoder = wire.ClientDecoder(version)
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


# --------------------------------------------------------------------------- tests: every trace


def _trace_id(path: Path) -> str:
    return path.name.split("_", 1)[0]


@functools.cache
def _trace_summary(path: Path) -> Summary:
    return check_trace(st.load_cached(path))


@needs_traces
@pytest.mark.parametrize("path", TRACE_PATHS, ids=_trace_id)
def test_trace_replays_exactly(path: Path) -> None:
    """Every trace: both directions decode as the daemon/library did, and re-encode."""
    summary = _trace_summary(path)
    assert summary.connections == len(st.load_cached(path).conns()) > 0


@needs_traces
@pytest.mark.parametrize("path", TRACE_PATHS, ids=_trace_id)
def test_trace_chunking_does_not_matter(path: Path) -> None:
    """Every trace's D> streams decode the same whatever the chunking."""
    check_chunking(st.load_cached(path))


@needs_traces
def test_every_trace_is_covered() -> None:
    """The generic checks really ran over the corpus (guards against vacuous passes)."""
    total = Summary()
    for path in TRACE_PATHS:
        s = _trace_summary(path)
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(s, name))
    decode_lines = sum(len(r.decodes) for p in TRACE_PATHS for r in st.load_cached(p).records)
    assert len(TRACE_PATHS) >= 53 and total.connections >= 107
    assert total.daemon_frames >= 885 and total.client_frames >= 635
    assert total.calls >= 262 and total.receives >= 273
    assert decode_lines >= 1538


# --------------------------------------------------------------------------- tests: vectors


@pytest.mark.parametrize("path", VECTOR_PATHS, ids=lambda p: p.stem)
def test_vector_replays_exactly(path: Path) -> None:
    """The compact vectors (always available) pass the same generic checks."""
    trace = st.load_vector(path)
    summary = check_trace(trace)
    assert summary.connections == len(trace.conns()) > 0
    check_chunking(trace)


def test_vectors_exist_and_are_small() -> None:
    assert len(VECTOR_PATHS) >= 25
    sizes = [p.stat().st_size for p in VECTOR_PATHS]
    assert max(sizes) < 25_000 and sum(sizes) < 250_000


@needs_traces
def test_vectors_match_the_traces() -> None:
    """Each vector is an exact excerpt of its trace (regenerate with tests/vectors/make.py)."""
    by_case = {st.load_cached(p).case: st.load_cached(p) for p in TRACE_PATHS}
    for path in VECTOR_PATHS:
        vec = st.load_vector(path)
        trace = by_case[vec.case]
        for conn in vec.conns():
            for direction in (CLIENT, DAEMON):
                assert vec.stream(conn, direction) == trace.stream(conn, direction)
                assert [d.text for d in vec.decodes(conn, direction)] == [
                    d.text for d in trace.decodes(conn, direction)
                ]


# --------------------------------------------------------------------------- targeted cases


def _case(short: str) -> Trace:
    """A trace by short id: the shared file if present, else the vector."""
    if TRACE_PATHS:
        return st.by_short_name(short)
    for path in VECTOR_PATHS:
        if path.stem.split("_", 1)[0] == short:
            return st.load_vector(path)
    pytest.skip(f"neither the trace nor a vector of {short} is available")


def _daemon_frames(trace: Trace, conn: str) -> list[Any]:
    return replay_daemon_side(trace, conn).frames


def _regular(frames: list[Any]) -> list[wire.RegularMessage]:
    return [f for f in frames if isinstance(f, wire.RegularMessage)]


def test_a3_daemon_invents_a_private_name() -> None:
    trace = _case("a3")
    side = replay_client_side(trace, "C1")
    assert side.error is None
    request = side.all_frames()[0]
    assert request == wire.ConnectRequest((5, 0, 1), True, 0, "", 0x01)
    accepted = [f for f in _daemon_frames(trace, "C1") if isinstance(f, wire.Accepted)]
    assert len(accepted) == 1
    assert re.fullmatch(r"#r\d{1,4}-\d+#localhost", accepted[0].private_group)
    assert wire.encode_connect(None) == trace.segments("C1", CLIENT)[0]
    assert wire.encode_connect("") == trace.segments("C1", CLIENT)[0]


@pytest.mark.parametrize(
    ("short", "conn", "code", "stage"),
    [
        ("c1", "C2", wire.RejectCode.REJECT_NOT_UNIQUE, "accepted-by-codec"),
        ("c2", "C1", wire.RejectCode.REJECT_ILLEGAL_NAME, "connect"),
        ("c2", "C2", wire.RejectCode.REJECT_ILLEGAL_NAME, "connect"),
        ("c4", "C1", wire.RejectCode.REJECT_ILLEGAL_NAME, "connect"),
        ("c5", "C1", wire.RejectCode.REJECT_VERSION, "connect"),
        ("c5", "C2", wire.RejectCode.REJECT_VERSION, "connect"),
        ("c7", "C1", wire.RejectCode.REJECT_AUTH, "auth"),
        ("c7", "C2", wire.RejectCode.REJECT_AUTH, "auth"),
        ("c7", "C3", wire.RejectCode.REJECT_AUTH, "auth"),
        ("c8", "C1", None, "connect"),
        ("c8", "C2", None, "connect"),
        ("c9", "C1", wire.RejectCode.REJECT_ILLEGAL_NAME, "connect"),
        ("m10", "C1", wire.RejectCode.REJECT_ILLEGAL_NAME, "connect"),
    ],
)
def test_handshake_refusals(short: str, conn: str, code: int | None, stage: str) -> None:
    """c1..c9, m10: the decoder refuses where and how the daemon did."""
    trace = _case(short)
    outcome = outcome_of(trace, conn)
    side = replay_client_side(trace, conn)
    daemon = _daemon_frames(trace, conn)
    if stage == "accepted-by-codec":
        # Uniqueness is the daemon's business, not the codec's: it decodes the record.
        assert outcome.code == code and side.error is None
        assert side.all_frames()[0].name == "dave"
        assert daemon == [wire.HandshakeRejected(code)]
        return
    assert outcome.code == code
    assert isinstance(side.error, HandshakeError)
    assert side.error.reject_code == code
    if code is None:
        assert daemon == []
    else:
        assert daemon[-1] == wire.HandshakeRejected(code)
        assert wire.encode_reject(code) == trace.stream(conn, DAEMON)[-1:]
    if stage == "auth":
        assert isinstance(daemon[0], wire.AuthList)


def test_c6_old_clients_have_no_auth_phase() -> None:
    trace = _case("c6")
    d15, d14, d99 = (_daemon_frames(trace, c) for c in ("C1", "C2", "C3"))
    assert d15[0] == wire.Accepted((5, 0, 1), "#old15#localhost")
    assert d14[0] == wire.Accepted((5, 0), "#old14#localhost")
    assert d99[:2] == [wire.AuthList(("NULL",)), wire.Accepted((5, 0, 1), "#fut99#localhost")]
    assert wire.encode_accept("#old14#localhost", client_version=(3, 14)) == (
        trace.stream("C2", DAEMON)
    )
    assert wire.encode_accept("#old15#localhost", client_version=(3, 15, 0)) == (
        trace.stream("C1", DAEMON)
    )
    req14 = replay_client_side(trace, "C2").all_frames()[0]
    assert req14.version == (3, 14) and not req14.has_auth_phase
    req15 = replay_client_side(trace, "C1").all_frames()[0]
    assert req15.version == (3, 15, 0) and req15.wants_patch_version
    assert not req15.has_auth_phase


def test_c9_pipelined_auth_only_with_ten_byte_name() -> None:
    trace = _case("c9")
    ok = replay_client_side(trace, "C2")
    assert ok.error is None
    assert [type(f) for f in ok.all_frames()[:2]] == [wire.ConnectRequest, wire.AuthChoice]
    assert ok.all_frames()[0].name == "pipelined0"


def test_f7_self_discard_keeps_the_bit_and_skips_the_sender() -> None:
    trace = _case("f7")
    bob = _regular(_daemon_frames(trace, "C2"))
    assert len(bob) == 1
    assert bob[0].service_type == wire.AGREED_MESS | wire.SELF_DISCARD
    assert bob[0].mess_type == -2 and bob[0].data == b"not for me"
    assert _regular(_daemon_frames(trace, "C1")) == []  # no copy back to alice
    sent = [
        f for f in replay_client_side(trace, "C1").all_frames() if isinstance(f, wire.Multicast)
    ]
    assert sent[0].mess_type == -2 and sent[0].hint == bytes.fromhex("80feff80")


def test_f8_extreme_mess_type_and_empty_data() -> None:
    trace = _case("f8")
    alice = _regular(_daemon_frames(trace, "C1"))
    empty = [m for m in alice if m.mess_type == -32768]
    assert len(empty) == 1 and empty[0].data == b"" and empty[0].service == wire.FIFO_MESS
    assert wire.encode_hint(-32768) == 0x80800080
    # bob is not a member and still multicasts to grpF8; alice gets it (section 8).
    assert any(m.sender == "#bob#localhost" and m.data == b"from outside" for m in alice)


def test_g1_one_copy_per_receiver() -> None:
    """carol is in both destination groups and still gets one copy; dave (sender) none."""
    trace = _case("g1")
    expected = {"alice": 1, "bob": 1, "carol": 1, "dave": 0}
    copies = {}
    for conn in trace.conns():
        msgs = [m for m in _regular(_daemon_frames(trace, conn)) if m.groups == ("grpA", "grpB")]
        copies[trace.connections[conn]] = len(msgs)
    assert "carol" in copies
    assert copies == {who: expected[who] for who in copies}


def test_h1_private_groups_as_destinations() -> None:
    trace = _case("h1")
    bob = _regular(_daemon_frames(trace, "C2"))
    assert [m.groups for m in bob] == [
        ("#bob#localhost",),
        ("#bob#localhost", "#alice#localhost"),
    ]
    alice = _regular(_daemon_frames(trace, "C1"))
    assert [m.data for m in alice] == [b"to both private groups"]


@needs_traces
def test_i2_largest_message_is_accepted() -> None:
    trace = st.by_short_name("i2")
    sent = [
        f for f in replay_client_side(trace, "C1").all_frames() if isinstance(f, wire.Multicast)
    ]
    assert len(sent) == 1 and len(sent[0].data) == 143120
    assert wire.message_size(1, 143120) == wire.MAX_MESSAGE_BYTES
    got = _regular(_daemon_frames(trace, "C2"))
    assert got[0].data == bytes((i * 13 + 1) & 0xFF for i in range(143120))


@pytest.mark.parametrize("short", ["i3", "i4"])
def test_i3_i4_oversize_refused_by_our_limits(short: str) -> None:
    trace = _case(short)
    side = replay_client_side(trace, "C1")
    assert isinstance(side.error, WireError) and not isinstance(side.error, HandshakeError)
    assert side.error.offset == 180  # connect (10) + auth (90) + one JOIN (80)
    # The size the library let through (143960 / 143121 bytes to one group) is refused
    # before anything is sent.
    size = 143960 if short == "i3" else 143121
    with pytest.raises(MessageTooLong):
        wire.encode_message(wire.AGREED_MESS, "#alice#localhost", ["grpI"], bytes(size))
    lenient = wire.DaemonDecoder(strict_size=False)
    for frame_bytes in (wire.encode_connect("alice"), wire.encode_auth_choice()):
        lenient.feed(frame_bytes)
        lenient.expect_auth()
    lenient.accepted("#alice#localhost")
    header = trace.stream("C1", CLIENT)[180:228]
    if short == "i3":  # the real daemon drops the session at the header
        with pytest.raises(WireError):
            lenient.feed(header)
    else:  # the real daemon took it (and then aborted): only our strict rule refuses
        assert lenient.feed(header) == []


@pytest.mark.parametrize("short", ["m1", "m3", "m4", "m5", "m6", "m7", "m8"])
def test_m_bad_headers_drop_the_session(short: str) -> None:
    trace = _case(short)
    assert outcome_of(trace, "C2").dropped
    side = replay_client_side(trace, "C2")
    assert type(side.error) is WireError
    assert side.error.offset == 179  # connect (9) + auth (90) + JOIN (80)


def test_m2_truncated_header_is_waited_for() -> None:
    side = replay_client_side(_case("m2"), "C2")
    assert side.error is None and side.decoder.buffered == 20


@pytest.mark.parametrize(("short", "conn"), [("m9", "C2"), ("o1", "C2")])
def test_big_endian_clients(short: str, conn: str) -> None:
    trace = _case(short)
    sent = [
        f for f in replay_client_side(trace, conn).all_frames() if isinstance(f, wire.Multicast)
    ]
    assert len(sent) == 1
    assert sent[0].hint[0] == 0 and sent[0].hint[3] == 0  # big-endian, no marker
    received = [m for m in _regular(_daemon_frames(trace, "C1")) if m.data == sent[0].data]
    assert len(received) == 1
    assert received[0].endian_mismatch is True
    assert received[0].mess_type == sent[0].mess_type == (258 if short == "m9" else 42)
    # The relay keeps the sender's hint bytes (docs/spread-protocol.md, section 3).
    relayed = wire.encode_relay(
        sent[0].service_type,
        sent[0].sender.encode(),
        wire.pad_name("grpM" if short == "m9" else "grpO"),
        1,
        sent[0].hint,
        sent[0].data,
    )
    assert relayed in trace.stream("C1", DAEMON)
    if short == "o1":
        assert replay_client_side(trace, conn).all_frames()[0].version == (4, 4, 0)


@pytest.mark.parametrize("short", ["p3", "p5", "p6", "p7"])
def test_transition_then_network_membership(short: str) -> None:
    trace = _case(short)
    seen = 0
    for conn in trace.conns():
        frames = [f for f in _daemon_frames(trace, conn) if isinstance(f, wire.MembershipMessage)]
        for i, f in enumerate(frames):
            if not f.is_transition:
                continue
            seen += 1
            # The previous view's id, and the next notice is the network change.
            before = [g for g in frames[:i] if g.group == f.group and not g.is_transition]
            assert before and before[-1].group_id == f.group_id
            after = next(g for g in frames[i + 1 :] if g.group == f.group)
            assert after.cause == wire.CAUSED_BY_NETWORK and after.group_id is not None
            assert after.group_id.counter == 1
    assert seen >= 1


def test_p4_merge_has_no_transition() -> None:
    trace = _case("p4")
    for conn in trace.conns():
        memb = [f for f in _daemon_frames(trace, conn) if isinstance(f, wire.MembershipMessage)]
        merges = [f for f in memb if len(f.vs_sets) == 2]
        for f in merges:
            i = memb.index(f)
            assert not memb[i - 1].is_transition


def test_p6_three_vs_sets_with_offsets() -> None:
    trace = _case("p6")
    locals_seen = set()
    for conn in trace.conns():
        frames = _daemon_frames(trace, conn)
        me = next(f.private_group for f in frames if isinstance(f, wire.Accepted))
        three = [f for f in frames if isinstance(f, wire.MembershipMessage) and len(f.vs_sets) == 3]
        assert len(three) == 1
        f = three[0]
        assert f.vs_sets == (("#aaron#d3", "#carol#d3"), ("#bob#d2",), ("#alice#d1",))
        assert me in f.vs_sets[f.local_vs_set]  # the offset points at the receiver's set
        body = wire.encode_to_client(f)[48 + 32 * len(f.members) :]
        assert struct.unpack_from("<I", body, 16)[0] == [0, 68, 104][f.local_vs_set]
        locals_seen.add(f.local_vs_set)
    if len(trace.conns()) == 4:  # the full trace: each of the three sets is someone's
        assert locals_seen == {0, 1, 2}


def test_j1_self_leave_notice() -> None:
    trace = _case("j1")
    alice = _daemon_frames(trace, "C1")
    leave = [f for f in alice if isinstance(f, wire.MembershipMessage) and f.is_self_leave]
    assert len(leave) == 1 and leave[0].cause == wire.CAUSED_BY_LEAVE
    assert wire.encode_self_leave(leave[0].group) in trace.stream("C1", DAEMON)
