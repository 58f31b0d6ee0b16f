"""Unit and property tests of :mod:`spreadqueue._spread.wire` (no traces needed).

Round trips for every encoder/decoder pair, chunking independence, garbage resistance,
the daemon's header and handshake rules (sections 4 and 7) and our extra size rule, the
client-side encoders' refusals, and linear decoding of a big message fed byte by byte.
Hypothesis runs are bounded so the module takes a few seconds.

Section numbers in this module refer to docs/spread-protocol.md.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spreadqueue._spread import wire
from spreadqueue._spread.errors import (
    HandshakeError,
    IllegalGroupName,
    IllegalService,
    MessageTooLong,
    WireError,
)
from spreadqueue._spread.wire.encode import encode_reject_message, encode_transition
from spreadqueue._spread.wire.names import canonical_field

ME = "#alice#localhost"
LEGAL = "".join(chr(c) for c in range(0x24, 0x7F))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

private_names = st.text(LEGAL, min_size=1, max_size=10)
daemon_names = st.text(LEGAL.replace("#", ""), min_size=1, max_size=19)
plain_groups = st.text(LEGAL.replace("#", ""), min_size=1, max_size=31)
private_groups = st.builds(lambda n, d: f"#{n.replace('#', '$')}#{d}", private_names, daemon_names)
groups = st.one_of(plain_groups, private_groups)
services = st.builds(
    lambda level, discard: level | (wire.SELF_DISCARD if discard else 0),
    st.sampled_from(wire.SERVICE_LEVELS),
    st.booleans(),
)
mess_types = st.integers(-0x8000, 0x7FFF)
u32 = st.integers(0, 0xFFFFFFFF)
group_ids = st.builds(wire.GroupId, u32, u32, u32)
payloads = st.binary(max_size=300)


def _hint(mess_type: int, big_endian: bool) -> bytes:
    if big_endian:
        return struct.pack(">I", (mess_type << 8) & 0xFFFF00)
    return struct.pack("<I", wire.encode_hint(mess_type))


@st.composite
def regular_messages(draw: Any) -> wire.RegularMessage:
    return wire.RegularMessage(
        draw(services),
        draw(private_groups),
        tuple(draw(st.lists(groups, max_size=4))),
        draw(mess_types),
        draw(payloads),
        draw(st.booleans()),
    )


@st.composite
def memberships(draw: Any) -> wire.MembershipMessage:
    kind = draw(st.sampled_from(["regular", "transition", "self-leave"]))
    group = draw(plain_groups)
    if kind == "transition":
        return wire.MembershipMessage(
            wire.TRANSITION_MESS, group, 0, draw(group_ids), is_transition=True
        )
    if kind == "self-leave":
        return wire.MembershipMessage(
            wire.CAUSED_BY_LEAVE, group, wire.CAUSED_BY_LEAVE, None, is_self_leave=True
        )
    members = draw(st.lists(private_groups, min_size=1, max_size=6, unique=True))
    cause = draw(
        st.sampled_from(
            [
                wire.CAUSED_BY_JOIN,
                wire.CAUSED_BY_LEAVE,
                wire.CAUSED_BY_DISCONNECT,
                wire.CAUSED_BY_NETWORK,
            ]
        )
    )
    if cause == wire.CAUSED_BY_NETWORK:
        cuts = []
        if len(members) > 1:
            cuts = sorted(draw(st.sets(st.integers(1, len(members) - 1), max_size=3)))
        bounds = [0, *cuts, len(members)]
        sets = tuple(tuple(members[a:b]) for a, b in pairwise(bounds))
        changed = None
    else:
        sets = ((draw(private_groups),),)
        changed = sets[0][0]
    return wire.MembershipMessage(
        wire.REG_MEMB_MESS | cause,
        group,
        cause,
        draw(group_ids),
        tuple(members),
        sets,
        draw(st.integers(0, len(sets) - 1)),
        changed,
    )


@st.composite
def reject_messages(draw: Any) -> wire.RejectMessage:
    old_type = draw(services)
    return wire.RejectMessage(
        wire.REJECT_MESS | (old_type & wire.SELF_DISCARD),
        old_type,
        draw(private_groups),
        tuple(draw(st.lists(groups, max_size=3))),
        draw(mess_types),
        draw(payloads),
    )


client_messages = st.one_of(regular_messages(), memberships(), reject_messages())


@st.composite
def multicasts(draw: Any) -> wire.Multicast:
    mess_type = draw(mess_types)
    return wire.Multicast(
        draw(services),
        ME,
        tuple(draw(st.lists(groups, max_size=4))),
        mess_type,
        draw(payloads),
        _hint(mess_type, draw(st.booleans())),
    )


daemon_messages = st.one_of(
    multicasts(),
    st.builds(wire.Join, plain_groups),
    st.builds(wire.Leave, plain_groups),
)


def chunked(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def feed_all(decoder: Any, chunks: Sequence[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def session(private_group: str = ME, **kwargs: Any) -> wire.DaemonDecoder:
    """A DaemonDecoder past the handshake of ``alice``."""
    decoder = wire.DaemonDecoder(**kwargs)
    decoder.feed(wire.encode_connect("alice"))
    assert decoder.expect_auth() == []
    decoder.feed(wire.encode_auth_choice())
    assert decoder.accepted(private_group) == []
    return decoder


def established(version: Sequence[int] = wire.LIBRARY_VERSION, **kw: Any) -> wire.ClientDecoder:
    """A ClientDecoder past the handshake."""
    decoder = wire.ClientDecoder(version, **kw)
    handshake = wire.encode_accept(ME, client_version=version)
    if wire.ConnectRequest(tuple(version), True, 0, "x").has_auth_phase:
        handshake = wire.encode_auth_list() + handshake
    decoder.feed(handshake)
    assert decoder.established
    return decoder


def header(
    stype: int,
    sender: bytes = ME.encode(),
    num_groups: int = 1,
    hint: int = wire.ENDIAN_MARKER,
    data_len: int = 0,
    order: str = "<",
) -> bytes:
    marker = wire.ENDIAN_MARKER if order == "<" else 0
    return struct.pack(
        order + "I32siIi", stype | marker, sender.ljust(32, b"\0"), num_groups, hint, data_len
    )


# --------------------------------------------------------------------------- round trips


@SETTINGS
@given(st.lists(client_messages, max_size=8), st.lists(st.integers(0, 10**6), max_size=12))
def test_client_stream_round_trip_any_chunking(frames: list[Any], cuts: list[int]) -> None:
    """Daemon-side encoders -> ClientDecoder, whole, by random chunks and byte by byte."""
    head = [wire.AuthList(("NULL",)), wire.Accepted((5, 0, 1), ME)]
    stream = b"".join(wire.encode_to_client(f) for f in [*head, *frames])
    assert feed_all(wire.ClientDecoder(), [stream]) == [*head, *frames]
    assert feed_all(wire.ClientDecoder(), chunked(stream, cuts)) == [*head, *frames]
    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    assert feed_all(wire.ClientDecoder(), one_by_one) == [*head, *frames]


@SETTINGS
@given(
    st.lists(daemon_messages, max_size=8),
    st.booleans(),
    st.lists(st.integers(0, 10**6), max_size=12),
)
def test_daemon_stream_round_trip_any_chunking(
    frames: list[Any], kill: bool, cuts: list[int]
) -> None:
    """Client-side encoders -> DaemonDecoder: the message phase in any chunks."""
    if kill:
        frames = [*frames, wire.Kill()]
    stream = b"".join(wire.encode_to_daemon(f, sender=ME) for f in frames)
    assert feed_all(session(), [stream]) == frames
    assert feed_all(session(), chunked(stream, cuts)) == frames
    assert feed_all(session(), [stream[i : i + 1] for i in range(len(stream))]) == frames


@SETTINGS
@given(services, st.lists(groups, max_size=6), payloads, mess_types)
def test_encode_message_round_trip(
    service: int, dests: list[str], data: bytes, mess_type: int
) -> None:
    encoded = wire.encode_message(service, ME, dests, data, mess_type)
    assert len(encoded) == wire.message_size(len(dests), len(data))
    (frame,) = session().feed(encoded)
    assert frame == wire.Multicast(
        service, ME, tuple(dests), mess_type, data, _hint(mess_type, False)
    )
    assert wire.encode_to_daemon(frame) == encoded


@SETTINGS
@given(plain_groups)
def test_join_leave_kill_round_trip(group: str) -> None:
    decoder = session()
    data = wire.encode_join(ME, group) + wire.encode_leave(ME, group) + wire.encode_kill(ME)
    assert decoder.feed(data) == [wire.Join(group), wire.Leave(group), wire.Kill()]
    assert len(data) == 3 * 80


@SETTINGS
@given(
    st.one_of(st.none(), st.text(LEGAL, max_size=10)),
    st.booleans(),
    st.integers(0, 5),
    st.sampled_from([(5, 0, 1), (4, 4, 0), (3, 16, 0), (3, 15, 2), (3, 14), (3, 1), (9, 9, 9)]),
)
def test_connect_round_trip(
    name: str | None, membership: bool, priority: int, version: tuple[int, ...]
) -> None:
    record = wire.encode_connect(name, membership=membership, priority=priority, version=version)
    decoder = wire.DaemonDecoder()
    (request,) = decoder.feed(record)
    assert request.version == version
    assert request.name == (name or "")
    assert request.membership is membership
    # libspread 5.0.1 only says "priority or not" (docs/spread-protocol.md, section 4).
    assert request.priority == (1 if priority >= 1 else 0)
    assert request.has_auth_phase == (version >= (3, 16))
    assert wire.encode_to_daemon(request) == record


@pytest.mark.parametrize(
    ("methods", "wire_methods"),
    [(("NULL",), ("NULL",)), (("NULL", "IP"), ("NULL", "IP")), ((), ())],
)
def test_auth_round_trips(methods: tuple[str, ...], wire_methods: tuple[str, ...]) -> None:
    choice = wire.encode_auth_choice(methods)
    assert len(choice) == 90
    decoder = wire.DaemonDecoder(auth_methods=None)
    decoder.feed(wire.encode_connect("bob"))
    decoder.expect_auth()
    if not methods:
        # An all-empty choice names no method: the daemon denies it.
        with pytest.raises(HandshakeError) as err:
            decoder.feed(choice)
        assert err.value.reject_code == wire.RejectCode.REJECT_AUTH
        return
    assert decoder.feed(choice) == [wire.AuthChoice(wire_methods)]
    listing = wire.encode_auth_list(methods)
    assert listing == bytes((len(listing) - 1,)) + "".join(m + " " for m in methods).encode()
    assert wire.ClientDecoder().feed(listing) == [wire.AuthList(methods)]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ((5, 0, 1), b"\x01\x05\x00\x01\x10#alice#localhost"),
        ((3, 15, 0), b"\x01\x05\x00\x01\x10#alice#localhost"),
        ((3, 14), b"\x01\x05\x00\x10#alice#localhost"),
    ],
)
def test_accept_round_trip(version: tuple[int, ...], expected: bytes) -> None:
    accept = wire.encode_accept(ME, client_version=version)
    assert accept == expected
    decoder = wire.ClientDecoder(version)
    if version >= (3, 16):
        assert decoder.feed(wire.encode_auth_list()) == [wire.AuthList(("NULL",))]
    (frame,) = decoder.feed(accept)
    assert frame == wire.Accepted((5, 0, 1) if len(expected) == 21 else (5, 0), ME)


@pytest.mark.parametrize("code", list(wire.RejectCode)[1:])
@pytest.mark.parametrize("after_auth_list", [False, True])
def test_reject_round_trip(code: int, after_auth_list: bool) -> None:
    decoder = wire.ClientDecoder()
    prefix = wire.encode_auth_list() if after_auth_list else b""
    frames = decoder.feed(prefix + wire.encode_reject(code) + b"ignored: the daemon closed")
    assert frames[-1] == wire.HandshakeRejected(code)
    assert decoder.feed(b"more") == []
    with pytest.raises(ValueError):
        wire.encode_reject(1)


@SETTINGS
@given(client_messages)
def test_client_frame_encoders_are_exact_inverses(frame: Any) -> None:
    encoded = wire.encode_to_client(frame)
    (decoded,) = established().feed(encoded)
    assert decoded == frame
    assert wire.encode_to_client(decoded) == encoded


def test_relay_keeps_the_senders_hint() -> None:
    be_hint = struct.pack(">I", 0x00010200)
    relay = wire.encode_relay(
        wire.AGREED_MESS, b"#bigend#localhost", wire.pad_name("g"), 1, be_hint, b"x"
    )
    assert relay[40:44] == be_hint and relay[:4] == bytes.fromhex("90000080")
    (msg,) = established().feed(relay)
    assert msg.mess_type == 258 and msg.endian_mismatch is True and msg.service == wire.AGREED_MESS


def test_membership_offsets_and_layout() -> None:
    gid = wire.GroupId(1552775919, 1795400538, 1)
    sets = [["#aaron#d3", "#carol#d3"], ["#bob#d2"], ["#alice#d1"]]
    members = ["#alice#d1", "#bob#d2", "#aaron#d3", "#carol#d3"]
    for local, offset in enumerate([0, 68, 104]):
        notice = wire.encode_membership(
            wire.REG_MEMB_MESS | wire.CAUSED_BY_NETWORK, "grpP6", members, gid, sets, local
        )
        body = notice[48 + 32 * 4 :]
        assert len(body) == 160 == struct.unpack_from("<i", notice, 44)[0]
        assert struct.unpack_from("<IIIII", body) == (1552775919, 1795400538, 1, 3, offset)
        (frame,) = established().feed(notice)
        assert frame.local_vs_set == local and frame.changed_member is None
    # Signed group-id words (as the daemon logs them) encode like their unsigned value.
    signed = encode_transition("g", wire.GroupId(-280616338, 1, 2))
    assert signed == encode_transition("g", wire.GroupId(4014350958, 1, 2))


def test_big_endian_daemon_membership_is_read_in_its_order() -> None:
    """A big-endian daemon's notice (no marker): body words in big-endian too."""
    members = [b"#a#d"]
    body = struct.pack(">IIIII", 7, 8, 9, 1, 0) + struct.pack(">I", 1) + wire.pad_name(b"#a#d")
    msg = (
        struct.pack(
            ">I32siIi",
            wire.REG_MEMB_MESS | wire.CAUSED_BY_JOIN,
            wire.pad_name("g"),
            1,
            0,
            len(body),
        )
        + b"".join(map(wire.pad_name, members))
        + body
    )
    (frame,) = established().feed(msg)
    assert frame.group_id == wire.GroupId(7, 8, 9)
    assert frame.vs_sets == (("#a#d",),) and frame.changed_member == "#a#d"


def test_reject_message_carries_old_type() -> None:
    raw = encode_reject_message(
        wire.AGREED_MESS | wire.SELF_DISCARD, ME, ["grp", ME], b"data", _hint(-5, False)
    )
    assert len(raw) == 48 + 4 + 64 + 4
    (frame,) = established().feed(raw + wire.encode_self_leave("grp"))[:1]
    assert frame == wire.RejectMessage(
        wire.REJECT_MESS | wire.SELF_DISCARD,
        wire.AGREED_MESS | wire.SELF_DISCARD,
        ME,
        ("grp", ME),
        -5,
        b"data",
    )


def test_client_reject_bit_reads_no_old_type() -> None:
    """A client header with REJECT_MESS set is just a header: the daemon reads no
    old_type after it (bug fixed: the decoder used to expect 4 more bytes)."""
    decoder = session()
    odd = bytearray(wire.encode_message(wire.SAFE_MESS, ME, ["g"], b"abc"))
    struct.pack_into("<I", odd, 0, wire.SAFE_MESS | wire.REJECT_MESS | wire.ENDIAN_MARKER)
    frames = decoder.feed(bytes(odd) + wire.encode_join(ME, "h"))
    assert frames == [
        wire.Multicast(wire.SAFE_MESS | wire.REJECT_MESS, ME, ("g",), 0, b"abc"),
        wire.Join("h"),
    ]


@pytest.mark.parametrize(
    ("mess_type", "hint"),
    [
        (0x1234, 0x80123480),
        (-2, 0x80FFFE80),
        (-32768, 0x80800080),
        (32767, 0x807FFF80),
        (0, 0x80000080),
    ],
)
def test_hint_encoding(mess_type: int, hint: int) -> None:
    assert wire.encode_hint(mess_type) == hint
    msg = wire.encode_message(wire.FIFO_MESS, ME, ["g"], b"", mess_type)
    assert struct.unpack_from("<I", msg, 40)[0] == hint
    (frame,) = session().feed(msg)
    assert frame.mess_type == mess_type


def test_unsigned_mess_type_wraps_like_int16() -> None:
    assert wire.encode_hint(0xFFFF) == wire.encode_hint(-1)
    with pytest.raises(ValueError):
        wire.encode_hint(0x10000)


# --------------------------------------------------------------------------- garbage


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from([(5, 0, 1), (3, 15, 0), (3, 14)]))
def test_garbage_to_client_decoder(data: bytes, version: tuple[int, ...]) -> None:
    for chunks in ([data], [data[i : i + 7] for i in range(0, len(data), 7)]):
        decoder = wire.ClientDecoder(version)
        fed = 0
        try:
            for chunk in chunks:
                fed += len(chunk)
                decoder.feed(chunk)
        except WireError as err:
            assert 0 <= err.offset <= fed
            with pytest.raises(WireError):
                decoder.feed(b"\0" * 64)  # a failed decoder stays failed
        assert decoder.buffered <= len(data)


@SETTINGS
@given(st.binary(max_size=400))
def test_garbage_to_daemon_decoder(data: bytes) -> None:
    # As a first read, and as the message phase of an accepted session.
    for decoder, pre in ((wire.DaemonDecoder(), 0), (session(), 100)):
        try:
            decoder.feed(data)
        except WireError as err:
            assert pre <= err.offset <= pre + len(data)
            assert err.frames == [] or all(
                isinstance(
                    f, (wire.Multicast, wire.Join, wire.Leave, wire.Kill, wire.ConnectRequest)
                )
                for f in err.frames
            )
            with pytest.raises(WireError):
                decoder.feed(b"")


@SETTINGS
@given(st.binary(min_size=48, max_size=48), st.binary(max_size=64))
def test_garbage_headers_in_a_live_stream(head: bytes, tail: bytes) -> None:
    """Random headers after a good message: either decoded, waited for, or WireError
    carrying the good message."""
    good = wire.encode_message(wire.AGREED_MESS, ME, ["g"], b"ok")
    for decoder in (session(), established()):
        try:
            frames = decoder.feed(
                wire.encode_to_client(wire.RegularMessage(wire.AGREED_MESS, ME, ("g",), 0, b"ok"))
                if isinstance(decoder, wire.ClientDecoder)
                else good
            )
            assert len(frames) == 1
            decoder.feed(head + tail)
        except WireError as err:
            assert err.offset >= 80
            assert len(err.frames) <= 1 + len(tail) // 48


def test_error_carries_the_frames_before_it() -> None:
    decoder = session()
    good = wire.encode_message(wire.SAFE_MESS, ME, ["g"], b"first")
    with pytest.raises(WireError) as err:
        decoder.feed(good + b"\xa5" * 48)
    assert err.value.frames == [wire.Multicast(wire.SAFE_MESS, ME, ("g",), 0, b"first")]
    assert err.value.offset == 100 + len(good)  # connect (10) + auth (90) + good


def test_huge_data_len_is_refused_or_waited_for_without_allocating() -> None:
    """A header claiming ~2 GB: the daemon side refuses it at once; a client side with
    a limit that large just waits, holding only what arrived."""
    claim = header(wire.SAFE_MESS, data_len=0x7FFFFFF0, num_groups=0)
    with pytest.raises(WireError):
        session().feed(claim)
    with pytest.raises(WireError):
        established().feed(claim)  # over the client's max_frame
    decoder = established(max_frame=1 << 32)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert decoder.feed(claim) == []
        for _ in range(64):
            assert decoder.feed(bytes(1024)) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered == 48 + 64 * 1024
    assert peak - base < 1_000_000


def test_negative_counts_raise() -> None:
    for field in ("num_groups", "data_len"):
        kwargs = {field: -1}
        with pytest.raises(WireError):
            established().feed(header(wire.SAFE_MESS, **kwargs))  # type: ignore[arg-type]
        with pytest.raises(WireError):
            session().feed(header(wire.SAFE_MESS, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        header(0, num_groups=0),  # neither service nor membership bits
        header(wire.CAUSED_BY_JOIN, num_groups=0),  # a cause without REG_MEMB_MESS
        header(wire.REG_MEMB_MESS | wire.CAUSED_BY_JOIN, num_groups=0, data_len=8) + bytes(8),
        header(wire.REG_MEMB_MESS | wire.CAUSED_BY_NETWORK, num_groups=0, data_len=24)
        + struct.pack("<IIIIII", 1, 2, 3, 5, 0, 0),  # five sets, one count
        header(wire.REG_MEMB_MESS | wire.CAUSED_BY_NETWORK, num_groups=0, data_len=24)
        + struct.pack("<IIIIII", 1, 2, 3, 1, 0, 9),  # a set of 9 in 0 bytes
        header(wire.REG_MEMB_MESS | wire.CAUSED_BY_NETWORK, num_groups=0, data_len=56)
        + struct.pack("<IIIIII", 1, 2, 3, 1, 12, 1)
        + bytes(32),  # local offset not a set
    ],
)
def test_client_decoder_refuses_malformed_messages(bad: bytes) -> None:
    with pytest.raises(WireError) as err:
        established().feed(bad)
    assert err.value.offset == 27  # after the auth list (6) and the accept (21)


def test_client_decoder_refuses_malformed_handshakes() -> None:
    with pytest.raises(WireError):
        wire.ClientDecoder().feed(bytes([91]))  # auth list longer than 90
    with pytest.raises(WireError):
        wire.ClientDecoder().feed(wire.encode_auth_list() + b"\x02")  # accept code 2
    with pytest.raises(WireError):  # libspread refuses a private group of 32+ bytes
        wire.ClientDecoder().feed(wire.encode_auth_list() + b"\x01\x05\x00\x01\x20")
    assert wire.ClientDecoder().feed(b"\x05NUL") == []  # incomplete: waits


# --------------------------------------------------------------------------- daemon header rules


@pytest.mark.parametrize(
    ("stype", "ok"),
    [
        *[(level, True) for level in wire.SERVICE_LEVELS],
        *[(level | wire.SELF_DISCARD, True) for level in wire.SERVICE_LEVELS],
        (wire.JOIN_MESS, True),
        (wire.LEAVE_MESS, True),
        (wire.KILL_MESS, True),
        (wire.AGREED_MESS | wire.GROUPS_MESS, True),  # bits outside the two ranges: ignored
        (0, False),
        (wire.SELF_DISCARD, False),
        (wire.AGREED_MESS | wire.SAFE_MESS, False),
        (wire.JOIN_MESS | wire.LEAVE_MESS, False),
        (wire.SAFE_MESS | wire.KILL_MESS, False),
        (wire.REG_MEMB_MESS | wire.CAUSED_BY_JOIN, False),
    ],
)
def test_rule_exactly_one_service_or_control_bit(stype: int, ok: bool) -> None:
    msg = header(stype) + wire.pad_name("g")
    if ok:
        assert len(session().feed(msg)) == 1
    else:
        with pytest.raises(WireError, match="exactly one"):
            session().feed(msg)


@pytest.mark.parametrize(
    ("sender", "ok"),
    [
        (b"#alice#localhost", True),
        (b"#alice#localhost\0garbage after the NUL", True),
        (b"#bob#localhost", False),
        (b"#alice#otherhost", False),
        (b"alice", False),
        (b"#alice#localhostX", False),
        (b"", False),
    ],
)
def test_rule_sender_is_this_session(sender: bytes, ok: bool) -> None:
    msg = struct.pack(
        "<I32siIi",
        wire.SAFE_MESS | wire.ENDIAN_MARKER,
        sender[:32].ljust(32, b"\0"),
        0,
        wire.ENDIAN_MARKER,
        0,
    )
    if ok:
        assert len(session().feed(msg)) == 1
    else:
        with pytest.raises(WireError, match="sender"):
            session().feed(msg)


def test_rule_sender_byte_31_is_forced_to_nul() -> None:
    """A 31-character private group: whatever is in byte 31 is ignored (section 6)."""
    me = "#abcdefghij#" + "d" * 19
    assert len(me) == 31
    msg = bytearray(header(wire.SAFE_MESS, sender=me.encode(), num_groups=0))
    msg[4 + 31] = ord("!")
    assert len(session(me).feed(bytes(msg))) == 1


@pytest.mark.parametrize(("groups", "ok"), [(0, True), (100, True), (101, False)])
def test_rule_at_most_100_groups(groups: int, ok: bool) -> None:
    msg = header(wire.SAFE_MESS, num_groups=groups) + wire.pad_name("g") * groups
    if ok:
        (frame,) = session().feed(msg)
        assert len(frame.groups) == groups
    else:
        with pytest.raises(WireError):
            session().feed(msg)
    if groups > 100:
        with pytest.raises(MessageTooLong):
            wire.encode_message(wire.SAFE_MESS, ME, ["g"] * groups)


@pytest.mark.parametrize(
    ("hint", "ok"),
    [
        (0x80000080, True),
        (0x80FFFF80, True),
        (0x00FFFF00, True),  # a big-endian writer's hint
        (0x80000081, False),
        (0x81000080, False),
        (0x00000001, False),
    ],
)
def test_rule_hint_bits(hint: int, ok: bool) -> None:
    msg = header(wire.SAFE_MESS, num_groups=0, hint=hint)
    if ok:
        assert len(session().feed(msg)) == 1
    else:
        with pytest.raises(WireError, match="hint"):
            session().feed(msg)


@pytest.mark.parametrize(
    ("groups", "data_len", "daemon_ok", "ours_ok"),
    [
        (1, 143120, True, True),  # 48 + 32 + 143120 = 143200: the largest that works
        (1, 143121, True, False),  # the real daemon accepts, then aborts (i4)
        (0, 143152, True, True),
        (0, 143153, True, False),
        (1, 143920, True, False),  # data + 32 * groups = 143952: the daemon's bound
        (1, 143921, False, False),
        (0, 143952, True, False),
        (0, 143953, False, False),
        (0, 144001, False, False),
        (100, 140752, True, False),
    ],
)
def test_rule_sizes(groups: int, data_len: int, daemon_ok: bool, ours_ok: bool) -> None:
    head = header(wire.SAFE_MESS, num_groups=groups, data_len=data_len)
    for strict, ok in ((False, daemon_ok), (True, ours_ok)):
        decoder = session(strict_size=strict)
        if ok:
            assert decoder.feed(head) == []
            assert decoder.buffered == 48
        else:
            with pytest.raises(WireError):
                decoder.feed(head)
    if ours_ok:
        msg = wire.encode_message(wire.SAFE_MESS, ME, ["g"] * groups, bytes(data_len))
        (frame,) = session().feed(msg)
        assert len(frame.data) == data_len
    else:
        with pytest.raises(MessageTooLong):
            wire.encode_message(wire.SAFE_MESS, ME, ["g"] * groups, bytes(data_len))


def test_join_without_groups_and_big_endian_messages() -> None:
    decoder = session()
    frames = decoder.feed(
        header(wire.JOIN_MESS, num_groups=0)
        + header(wire.AGREED_MESS, order=">", hint=0x00010200, data_len=2)
        + wire.pad_name("grpM")
        + b"BE"
    )
    assert frames == [
        wire.Join(""),
        wire.Multicast(wire.AGREED_MESS, ME, ("grpM",), 258, b"BE", bytes.fromhex("00010200")),
    ]


# --------------------------------------------------------------------------- client-side refusals


@pytest.mark.parametrize(
    "group",
    [
        "",
        "has space",
        "a#b",
        "x" * 32,
        "nul\0inside",
        "tab\t",
        "é",
        "#",
        "#a#",
        "#toolongname#d",
        "#a#b#c",
    ],
)
def test_encoders_refuse_illegal_group_names(group: str) -> None:
    with pytest.raises(IllegalGroupName):
        wire.encode_message(wire.SAFE_MESS, ME, [group], b"")
    with pytest.raises(IllegalGroupName):
        wire.encode_join(ME, group)
    with pytest.raises(IllegalGroupName):
        wire.encode_leave(ME, group)


def test_encoders_accept_edge_names() -> None:
    assert (
        len(wire.encode_message(wire.SAFE_MESS, ME, ["x" * 31, "$", "~", "#bob#localhost"]))
        == 48 + 128
    )
    with pytest.raises(IllegalGroupName):  # a private group cannot be joined
        wire.encode_join(ME, "#bob#localhost")
    with pytest.raises(IllegalGroupName):
        wire.encode_message(wire.SAFE_MESS, "#" + "s" * 31, ["g"])  # sender over 31 bytes
    # A single name is one destination, not a sequence of characters.
    assert wire.encode_message(wire.SAFE_MESS, ME, "grp") == wire.encode_message(
        wire.SAFE_MESS, ME, ["grp"]
    )


@pytest.mark.parametrize("name", ["elevenchars", "bad name", "x#y", "tab\t", "\x7f"])
def test_encode_connect_refuses_illegal_private_names(name: str) -> None:
    with pytest.raises(IllegalGroupName):
        wire.encode_connect(name)


@pytest.mark.parametrize(
    "service",
    [
        0,
        wire.SELF_DISCARD,
        wire.AGREED_MESS | wire.SAFE_MESS,
        wire.JOIN_MESS,
        wire.SAFE_MESS | wire.REJECT_MESS,
        0x80,
    ],
)
def test_encode_message_refuses_illegal_services(service: int) -> None:
    with pytest.raises(IllegalService):
        wire.encode_message(service, ME, ["g"])


def test_message_too_long_is_a_value_error_and_nothing_partial() -> None:
    with pytest.raises(ValueError):
        wire.encode_message(wire.SAFE_MESS, ME, ["g"], bytes(wire.MAX_DATA_ONE_GROUP + 1))
    assert (
        len(wire.encode_message(wire.SAFE_MESS, ME, ["g"], bytes(wire.MAX_DATA_ONE_GROUP)))
        == 143200
    )


# --------------------------------------------------------------------------- handshake edge cases


def _connect_error(*reads: bytes, auth: bool = False) -> HandshakeError:
    decoder = wire.DaemonDecoder()
    with pytest.raises(HandshakeError) as err:
        decoder.feed(reads[0])
        if auth:
            decoder.expect_auth()
        for data in reads[1:]:
            decoder.feed(data)
    return err.value


def test_name_length_zero_asks_the_daemon_to_invent_one() -> None:
    (request,) = wire.DaemonDecoder().feed(b"\x05\x00\x01\x01\x00")
    assert request.name == "" and request.membership


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (b"\x05\x00\x01\x01\x0belevenchars", wire.RejectCode.REJECT_ILLEGAL_NAME),
        (b"\x05\x00\x01\x01\x80", wire.RejectCode.REJECT_ILLEGAL_NAME),  # length -128
        (b"\x05\x00\x01\x01\x08bad name", wire.RejectCode.REJECT_ILLEGAL_NAME),
        (b"\x05\x00\x01\x01\x03x#y", wire.RejectCode.REJECT_ILLEGAL_NAME),
        (b"\x05\x00\x01\x01\x02a\xe9", wire.RejectCode.REJECT_ILLEGAL_NAME),
        (b"\x03\x00\x01\x05vtest", wire.RejectCode.REJECT_VERSION),
        (b"\x02\x14\x01\x05vtest", wire.RejectCode.REJECT_VERSION),
        (b"\x03\x00", wire.RejectCode.REJECT_VERSION),  # decided after 2 bytes
        (b"\x80\x05\x01\x01\x01a", wire.RejectCode.REJECT_VERSION),  # signed: -128.5
        (b"\x03\xc8\x00\x01\x01a", wire.RejectCode.REJECT_VERSION),  # 3.200 = 3.-56
        (b"GET / HTTP/1.0\r\n\r\n", wire.RejectCode.REJECT_ILLEGAL_NAME),  # m10
    ],
)
def test_connect_refusals(record: bytes, code: int) -> None:
    assert _connect_error(record).reject_code == code


@pytest.mark.parametrize("cut", range(0, 10))
def test_split_connect_record_closes_silently(cut: int) -> None:
    """The record must be whole in the first read (c8). A name cut inside is read
    short, which the daemon answers with REJECT_ILLEGAL_NAME (its source: recv returned
    fewer than name_len bytes)."""
    record = wire.encode_connect("alice")
    error = _connect_error(record[:cut])
    assert error.reject_code == (None if cut <= 5 else wire.RejectCode.REJECT_ILLEGAL_NAME)


def test_versions_without_patch_byte() -> None:
    (request,) = wire.DaemonDecoder().feed(b"\x03\x0e\x01\x05old14")
    assert request.version == (3, 14) and not request.wants_patch_version
    (request,) = wire.DaemonDecoder().feed(b"\x03\x0f\x00\x01\x05old15")
    assert request.version == (3, 15, 0) and request.wants_patch_version
    assert not request.has_auth_phase


@pytest.mark.parametrize(
    ("flags", "membership", "priority"),
    [
        (0x00, False, 0),
        (0x01, True, 0),
        (0x11, True, 1),
        (0x10, False, 1),
        (0x81, False, -7),
        (0xF0, False, -1),
    ],
)
def test_flags_byte_as_the_daemon_reads_it(flags: int, membership: bool, priority: int) -> None:
    (request,) = wire.DaemonDecoder().feed(bytes((5, 0, 1, flags, 1)) + b"a")
    assert (request.membership, request.priority, request.flags) == (membership, priority, flags)


@pytest.mark.parametrize(
    ("reads", "code"),
    [
        ((b"NULL" + bytes(6),), wire.RejectCode.REJECT_AUTH),  # short (c7)
        (
            (wire.encode_auth_choice()[:45], wire.encode_auth_choice()[45:]),
            wire.RejectCode.REJECT_AUTH,
        ),
        ((wire.encode_auth_choice(("PWORD",)),), wire.RejectCode.REJECT_AUTH),
        ((bytes(90),), wire.RejectCode.REJECT_AUTH),
        ((b"",), wire.RejectCode.REJECT_AUTH),
    ],
)
def test_auth_refusals(reads: tuple[bytes, ...], code: int) -> None:
    error = _connect_error(wire.encode_connect("authx"), *reads, auth=True)
    assert error.reject_code == code
    assert error.offset == 10


def test_auth_slots_are_read_until_the_first_empty_one() -> None:
    choice = bytearray(90)
    choice[0:4] = b"NULL"
    choice[60:65] = b"PWORD"  # after an empty slot: never looked at
    decoder = wire.DaemonDecoder()
    decoder.feed(wire.encode_connect("alice"))
    decoder.expect_auth()
    assert decoder.feed(bytes(choice)) == [wire.AuthChoice(("NULL",))]


@pytest.mark.parametrize("length", range(0, 11))
def test_pipelined_connect_and_auth(length: int) -> None:
    """Connect + auth in one write works only when the name read stops right at the
    auth choice: a 10-byte name (c9), or no name at all (the daemon then reads none)."""
    name = "n" * length
    decoder = wire.DaemonDecoder()
    data = wire.encode_connect(name) + wire.encode_auth_choice()
    if length in (0, 10):
        (request,) = decoder.feed(data)
        assert request.name == name
        assert decoder.expect_auth() == [wire.AuthChoice(("NULL",))]
        join = wire.encode_join(f"#{name or 'r1-9'}#h", "g")
        assert decoder.accepted(f"#{name or 'r1-9'}#h") == []
        assert decoder.feed(join) == [wire.Join("g")]
    else:
        with pytest.raises(HandshakeError) as err:
            decoder.feed(data)
        assert err.value.reject_code == wire.RejectCode.REJECT_ILLEGAL_NAME


def test_messages_pipelined_before_the_accept_are_kept() -> None:
    decoder = wire.DaemonDecoder()
    decoder.feed(wire.encode_connect("alice"))
    decoder.expect_auth()
    decoder.feed(wire.encode_auth_choice() + wire.encode_join(ME, "g"))
    decoder.feed(wire.encode_kill(ME))
    assert decoder.buffered == 160
    assert decoder.accepted(ME) == [wire.Join("g"), wire.Kill()]


def test_old_client_without_auth_goes_straight_to_messages() -> None:
    decoder = wire.DaemonDecoder()
    (request,) = decoder.feed(b"\x03\x0e\x01\x05old14")
    assert not request.has_auth_phase
    assert decoder.accepted("#old14#localhost") == []
    assert decoder.feed(wire.encode_kill("#old14#localhost")) == [wire.Kill()]


# --------------------------------------------------------------------------- linear decoding


def test_big_message_byte_by_byte_is_linear() -> None:
    """143 KB fed one byte at a time: nothing is re-copied per chunk.

    ``staged_bytes`` counts every byte copied into the decoders' staging buffers; a
    decoder that re-copied its buffer on each chunk would count ~10**10 here.
    """
    data = bytes(range(256)) * (wire.MAX_DATA_ONE_GROUP // 256) + b"tail"
    data = data[: wire.MAX_DATA_ONE_GROUP]
    message = wire.encode_message(wire.SAFE_MESS, ME, ["g"], data, 7)
    relay = wire.encode_to_client(wire.RegularMessage(wire.SAFE_MESS, ME, ("g",), 7, data))
    for decoder, stream in ((session(), message), (established(), relay)):
        frames = []
        for i in range(len(stream)):
            frames.extend(decoder.feed(stream[i : i + 1]))
            if i == len(stream) // 2:
                assert decoder.buffered == i + 1
        assert len(frames) == 1 and frames[0].data == data
        assert decoder.staged_bytes <= len(stream)
        assert decoder.buffered == 0


def test_big_chunks_are_not_staged() -> None:
    """Realistic 64 KB reads: a 100 KB message is joined once, nothing staged."""
    data = bytes(100_000)
    stream = wire.encode_to_client(wire.RegularMessage(wire.SAFE_MESS, ME, ("g",), 0, data)) * 5
    decoder = established()
    frames = feed_all(decoder, [stream[i : i + 65536] for i in range(0, len(stream), 65536)])
    assert [f.data for f in frames] == [data] * 5
    assert decoder.staged_bytes < 5 * 48  # only headers cut by a read boundary


# --------------------------------------------------------------------------- relay mode

_RELAY_BITS = wire.REGULAR_MESS | wire.SELF_DISCARD


def _daemon_would_send(m: wire.Multicast) -> bytes:
    """What the daemon writes for ``m`` when it encodes it (the slow path)."""
    blob = b"".join(wire.pad_name(g) for g in m.groups)
    return wire.encode_relay(
        m.service_type & _RELAY_BITS, ME.encode(), blob, len(m.groups), m.hint, m.data
    )


@SETTINGS
@given(st.lists(daemon_messages, max_size=8), st.lists(st.integers(0, 10**6), max_size=12))
def test_relay_mode_forwards_exactly_what_the_daemon_would_encode(
    frames: list[Any], cuts: list[int]
) -> None:
    """With relay=True, what libspread sends comes out as Relay frames whose bytes are
    the message as received, equal to what the daemon encodes for the Multicast."""
    stream = b"".join(wire.encode_to_daemon(f, sender=ME) for f in frames)
    plain = feed_all(session(), [stream])
    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    for chunks in ([stream], chunked(stream, cuts), one_by_one):
        relayed = feed_all(session(relay=True), chunks)
        assert len(relayed) == len(plain)
        for got, want in zip(relayed, plain, strict=True):
            if type(want) is not wire.Multicast:
                assert got == want
                continue
            assert type(got) is wire.Relay
            assert got.wire == _daemon_would_send(want)
            assert got.service_type == want.service_type
            assert got.num_groups == len(want.groups)
            assert got.groups_blob == b"".join(wire.pad_name(g) for g in want.groups)
            assert wire.decode_relay(got.wire) == wire.RegularMessage(
                want.service_type, ME, want.groups, want.mess_type, want.data, want.hint[0] == 0
            )


def test_relay_of_a_whole_read_is_the_read_itself() -> None:
    """One message per read (a ping-pong): forwarded without a copy."""
    data = wire.encode_message(wire.AGREED_MESS, ME, "grp", b"x" * 100, 7)
    (frame,) = session(relay=True).feed(data)
    assert type(frame) is wire.Relay and frame.wire is data


@pytest.mark.parametrize(
    "why",
    ["big-endian", "forged-bits", "group-garbage", "sender-garbage", "32-byte-group"],
)
def test_relay_mode_encodes_what_it_cannot_forward_as_is(why: str) -> None:
    """Anything but the canonical form is decoded to a Multicast (and re-encoded)."""
    group = wire.pad_name("grp")
    sender = ME.encode()
    stype = wire.AGREED_MESS
    order = "<"
    if why == "big-endian":
        order = ">"
    elif why == "forged-bits":
        stype |= wire.REG_MEMB_MESS
    elif why == "group-garbage":
        group = b"grp\0" + b"\x01" * 28
    elif why == "sender-garbage":
        sender = ME.encode() + b"\0" + b"\x07" * (31 - len(ME))
    elif why == "32-byte-group":
        group = b"g" * 32
    data = header(stype, sender, 1, wire.ENDIAN_MARKER, 2, order) + group + b"hi"
    (plain,) = session().feed(data)
    (frame,) = session(relay=True).feed(data)
    assert type(frame) is wire.Multicast and frame == plain


def test_canonical_field() -> None:
    assert canonical_field(wire.pad_name("grp")) == "grp"
    assert canonical_field(bytes(32)) == ""
    assert canonical_field(wire.pad_name("y" * 31)) == "y" * 31
    assert canonical_field(b"y" * 32) is None
    assert canonical_field(b"grp\0x" + bytes(27)) is None


def test_decode_relay_refuses_what_is_not_a_relayed_message() -> None:
    with pytest.raises(WireError):
        wire.decode_relay(wire.encode_self_leave("grp"))
    data = wire.encode_relay(
        wire.AGREED_MESS, ME.encode(), wire.pad_name("g"), 1, _hint(1, False), b""
    )
    with pytest.raises(WireError):
        wire.decode_relay(data + b"extra")


# --------------------------------------------------------------------------- frames


def test_frames_compare_like_dataclasses() -> None:
    """Equal only to the same kind of frame with the same fields; read-only."""
    m = wire.RegularMessage(wire.AGREED_MESS, ME, ("g",), 1, b"x")
    assert m == wire.RegularMessage(wire.AGREED_MESS, ME, ("g",), 1, b"x", False)
    assert m != wire.RegularMessage(wire.AGREED_MESS, ME, ("g",), 2, b"x")
    assert m != tuple(m) and tuple(m) != m and not (m == tuple(m))
    assert hash(m) == hash(wire.RegularMessage(*m))
    reject = wire.RejectMessage(wire.REJECT_MESS, wire.AGREED_MESS, ME, ("g",), 1, b"x")
    assert reject != wire.RejectMessage(*reject[:5], b"y") and reject == wire.RejectMessage(*reject)
    assert wire.Join("g") != wire.Leave("g")
    assert wire.GroupId(1, 2, 3) == wire.GroupId(1, 2, 3) != (1, 2, 3)
    with pytest.raises(AttributeError):
        m.data = b"y"  # type: ignore[misc]
    assert repr(wire.Join("g")) == "Join(group='g')"
