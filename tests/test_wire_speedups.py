"""The compiled decoder path (``wire/_speedups.c``) agrees with the pure-Python one.

Both paths are fed the same random streams (hypothesis: well-formed messages mixed with
every kind of odd header the Python code handles itself, cut into random reads) and the
golden traces of a real Spread 5.0.1 daemon; every read must give equal frames, and a
bad stream the same error (class, text, offset, frames decoded before it) at the same
read. Skipped when the extension is not built, unless ``SPREADQUEUE_REQUIRE_SPEEDUPS``
is set (CI sets it: there it must be built).
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

import pytest
import spread_traces as st
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from test_wire_golden import replay_client_side, replay_daemon_side

from spreadqueue._spread import wire
from spreadqueue._spread.errors import WireError
from spreadqueue._spread.wire import decode

if decode._speedups is None:
    if os.environ.get("SPREADQUEUE_REQUIRE_SPEEDUPS"):
        raise RuntimeError(
            "SPREADQUEUE_REQUIRE_SPEEDUPS is set but the compiled decoder is not built "
            "(or SPREADQUEUE_PURE is set)"
        )
    pytest.skip("the compiled decoder is not built", allow_module_level=True)

ME = "#alice#localhost"
HEAD_LE = struct.Struct("<I32siIi")
HEAD_BE = struct.Struct(">I32siIi")
NAMES = [b"Q-mgr", b"#alice#localhost", b"#bob#localhost", b"grp", b"", b"x" * 31]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _field(draw: Any) -> bytes:
    """A 32-byte name field: mostly canonical, sometimes with bytes after the NUL or full."""
    name = draw(hs.sampled_from(NAMES))
    field = name + bytes(32 - len(name))
    kind = draw(hs.integers(0, 9))
    if kind == 0 and len(name) < 31:
        field = field[:-1] + b"z"  # junk after the NUL: not canonical
    elif kind == 1:
        field = b"y" * 32  # no NUL at all
    return field


@hs.composite
def messages(draw: Any, *, sender: bytes | None) -> bytes:
    """One unit of a stream: usually a well-formed message, sometimes an odd one."""
    service = draw(hs.sampled_from([0x01, 0x02, 0x04, 0x08, 0x10, 0x20]))
    stype = service | (0x40 if draw(hs.booleans()) else 0) | wire.ENDIAN_MARKER
    odd = draw(hs.integers(0, 15))
    if odd == 1:
        stype |= draw(hs.sampled_from([0x1100, 0x2000, 0x400000, 0x10000, 0x20000, 0x40000]))
    elif odd == 2:
        stype = (stype & ~0x3F) | draw(hs.sampled_from([0, 0x03, 0x3F]))
    groups = draw(hs.lists(hs.builds(lambda: None), min_size=0, max_size=3))
    blob = b"".join(_field(draw) for _ in groups)
    num_groups = len(groups)
    data = draw(hs.binary(max_size=300))
    if odd == 10:
        # whole messages around the size limits (143200 strict, 143952 the daemon's)
        limit = draw(hs.sampled_from([wire.MAX_MESSAGE_BYTES, 143_952 + 48]))
        data = bytes(max(0, limit - 48 - 32 * len(groups) + draw(hs.integers(-1, 1))))
    data_len = len(data)
    if odd == 3:
        num_groups = draw(hs.sampled_from([-1, 101, 5000]))
    elif odd == 4:
        data_len = draw(hs.sampled_from([-7, 200_000, 143_200]))
    mess_type = draw(hs.integers(-0x8000, 0x7FFF))
    hint = ((mess_type << 8) & 0x00FFFF00) | wire.ENDIAN_MARKER
    if odd == 5:
        hint |= 0x01000000  # bits outside 0x80ffff80
    snd = sender if sender is not None else draw(hs.sampled_from(NAMES))
    sfield = snd + bytes(32 - len(snd))
    if odd == 6 and sender is not None:
        sfield = b"#mallory#localhost".ljust(32, b"\0")
    big = odd == 7
    if big:
        head = HEAD_BE.pack(stype & ~wire.ENDIAN_MARKER, sfield, num_groups, hint, data_len)
    else:
        head = HEAD_LE.pack(stype, sfield, num_groups, hint, data_len)
        if odd == 8:
            head = head[:40] + struct.pack(">I", (mess_type << 8) & 0x00FFFF00) + head[44:]
    if stype & 0x400000 and sender is None:
        blob = struct.pack("<I", stype) + blob  # a reject's old_type field
    unit = head + blob + data
    if odd == 9:
        unit = unit[: draw(hs.integers(0, len(unit)))] + draw(hs.binary(max_size=60))
    return unit


def _cut(draw: Any, stream: bytes) -> list[bytes]:
    """``stream`` as random reads (mostly big ones, sometimes byte by byte)."""
    points = sorted(set(draw(hs.lists(hs.integers(0, len(stream)), max_size=8))))
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _run(decoder: Any, reads: list[bytes]) -> list[Any]:
    """What each read gave: its frames, or the error (everything about it)."""
    got: list[Any] = []
    for data in reads:
        try:
            got.append(("frames", decoder.feed(data), decoder.buffered))
        except WireError as err:
            got.append(("error", type(err), str(err), err.offset, err.frames))
            break
    return got


def _client_decoder(accelerated: bool, max_frame: int) -> wire.ClientDecoder:
    decoder = wire.ClientDecoder(max_frame=max_frame, accelerated=accelerated)
    decoder.feed(wire.encode_auth_list() + wire.encode_accept(ME))
    return decoder


def _daemon_decoder(accelerated: bool, strict: bool) -> wire.DaemonDecoder:
    decoder = wire.DaemonDecoder(relay=True, strict_size=strict, accelerated=accelerated)
    decoder.feed(wire.encode_connect("alice"))
    decoder.expect_auth()
    decoder.feed(wire.encode_auth_choice())
    decoder.accepted(ME)
    return decoder


@SETTINGS
@given(hs.data(), hs.sampled_from([wire.constants.DEFAULT_MAX_INCOMING, 200, 48]))
def test_client_paths_agree(data: Any, max_frame: int) -> None:
    units = data.draw(hs.lists(messages(sender=None), max_size=12))
    reads = _cut(data.draw, b"".join(units))
    pure = _run(_client_decoder(False, max_frame), reads)
    fast = _run(_client_decoder(True, max_frame), reads)
    assert fast == pure


@SETTINGS
@given(hs.data(), hs.booleans())
def test_daemon_paths_agree(data: Any, strict: bool) -> None:
    units = data.draw(hs.lists(messages(sender=b"#alice#localhost"), max_size=12))
    reads = _cut(data.draw, b"".join(units))
    pure = _run(_daemon_decoder(False, strict), reads)
    fast = _run(_daemon_decoder(True, strict), reads)
    assert fast == pure


def test_the_fast_path_is_taken() -> None:
    """Whole common messages are decoded by the compiled scanner (not a test that
    passes with the pure path twice): its frames come from a C call, so a Python
    trace of the decode sees no ClientDecoder._message / DaemonDecoder._relay call."""
    calls: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)

    stream = wire.encode_to_client(wire.RegularMessage(0x10, ME, ("grp",), 1, b"x")) * 3
    client = _client_decoder(True, 10_000)
    client.feed(stream)  # the first one fills the name caches through Python
    import sys

    sys.setprofile(tracer)
    try:
        frames = client.feed(stream)
    finally:
        sys.setprofile(None)
    assert len(frames) == 3 and "_message" not in calls

    msg = wire.encode_message(wire.AGREED_MESS, ME, ["grp"], b"y", 2)
    daemon = _daemon_decoder(True, True)
    daemon.feed(msg)
    calls.clear()
    sys.setprofile(tracer)
    try:
        frames = daemon.feed(msg * 3)
    finally:
        sys.setprofile(None)
    assert [type(f) for f in frames] == [wire.Relay] * 3 and "_relay" not in calls


@SETTINGS
@given(hs.data())
def test_decode_relay_paths_agree(data: Any) -> None:
    """decode_relay takes the compiled scanner's frame when it takes the message whole,
    else the reference path decides: the same frame, or the same error."""
    units = data.draw(hs.lists(messages(sender=None), min_size=1, max_size=2))
    buf = b"".join(units)
    try:
        expected: Any = decode._decode_relay(buf)
    except Exception as e:  # WireError, or struct.error for less than a header
        expected = (type(e), str(e))
    try:
        got: Any = wire.decode_relay(buf)
    except Exception as e:
        got = (type(e), str(e))
    assert got == expected


def test_several_groups_come_from_the_cache_and_stay_right() -> None:
    """Destination lists of several groups are remembered by their bytes (the last
    one, and a dict): the same tuple object again, and different fields never get the
    remembered tuple of others."""
    client = _client_decoder(True, 10_000)
    a = wire.encode_to_client(wire.RegularMessage(0x10, ME, (ME, "Q-mgr"), 1, b"x"))
    b = wire.encode_to_client(wire.RegularMessage(0x10, ME, ("grp", "Q-mgr"), 1, b"y"))
    c = wire.encode_to_client(wire.RegularMessage(0x10, ME, ("grp", "Q-mgr", ME), 1, b"z"))
    frames = client.feed(a + a + b + a + c + c + b)
    assert [f.groups for f in frames] == [
        (ME, "Q-mgr"),
        (ME, "Q-mgr"),
        ("grp", "Q-mgr"),
        (ME, "Q-mgr"),
        ("grp", "Q-mgr", ME),
        ("grp", "Q-mgr", ME),
        ("grp", "Q-mgr"),
    ]
    assert frames[0].groups is frames[1].groups is frames[3].groups
    assert frames[2].groups is frames[6].groups
    pure = _client_decoder(False, 10_000).feed(a + a + b + a + c + c + b)
    assert frames == pure


def test_pure_can_be_forced() -> None:
    """accelerated=False never calls the compiled scanner."""
    assert wire.ClientDecoder(accelerated=False)._messages.scan is None
    assert wire.DaemonDecoder(relay=True, accelerated=False)._scan is None
    assert wire.DaemonDecoder(relay=False)._scan is None


@pytest.mark.parametrize("path", st.trace_paths(), ids=lambda p: p.stem)
def test_golden_traces_agree(path: Any) -> None:
    """Every trace, both directions: the compiled path decodes what the real daemon and
    libspread sent as the decode lines say (replay_daemon_side checks that), and
    exactly as the pure path does."""
    trace = st.load(path)
    for conn in trace.conns():
        fast = replay_daemon_side(trace, conn, accelerated=True)
        pure = replay_daemon_side(trace, conn, accelerated=False)
        assert fast.frames == pure.frames
        sides = [
            replay_client_side(trace, conn, wire.DaemonDecoder(relay=True, accelerated=accelerated))
            for accelerated in (True, False)
        ]
        fast_c, pure_c = sides
        assert fast_c.all_frames() == pure_c.all_frames()
        assert (type(fast_c.error), str(fast_c.error)) == (type(pure_c.error), str(pure_c.error))
