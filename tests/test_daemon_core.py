"""DaemonCore: sessions, groups, membership notices and routing, without I/O."""

from __future__ import annotations

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from spreadqueue._spread import wire
from spreadqueue._spread.core import (
    DaemonCore,
    Envelope,
    MembershipEnvelope,
    RelayEnvelope,
    SelfLeaveEnvelope,
    Session,
    daemon_id,
)
from spreadqueue._spread.errors import IllegalName, NameNotUnique, QuotaExceeded, SessionClosed
from spreadqueue._spread.interfaces import ISessionLink, ISessionSink
from spreadqueue._spread.local import CallbackSink, LocalLink

TIME = 1795397590


@implementer(ISessionSink)
class Sink:
    """Records every envelope delivered to one session."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def deliver(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def take(self) -> list[Envelope]:
        out, self.envelopes = self.envelopes, []
        return out

    def frames(self) -> list[wire.ToClient]:
        return [e.frame for e in self.take()]


def make_core(**options: object) -> DaemonCore:
    return DaemonCore("localhost", time=TIME, **options)  # type: ignore[arg-type]


def connect(core: DaemonCore, name: str, *, membership: bool = True) -> tuple[Session, Sink]:
    sink = Sink()
    return core.connect(sink, name, membership=membership), sink


def decode(envelope: Envelope) -> wire.ToClient:
    """What a libspread-compatible client decodes from the envelope's wire bytes."""
    decoder = wire.ClientDecoder()
    decoder.feed(wire.encode_auth_list() + wire.encode_accept("#x#localhost"))
    (frame,) = decoder.feed(envelope.wire)
    return frame


# --------------------------------------------------------------------------- ids, names


@pytest.mark.parametrize(
    ("name", "expected"),
    [("localhost", 482711334), ("d1", 1552775919), ("d2", 348480928), ("d3", 4014350958)],
)
def test_daemon_id_is_the_real_daemons_hash(name: str, expected: int) -> None:
    assert daemon_id(name) == expected


def test_daemon_name_is_checked() -> None:
    for bad in ("", "x" * 20, "a#b"):
        with pytest.raises(ValueError):
            DaemonCore(bad)


def test_group_id_uses_the_injected_time() -> None:
    core = make_core()
    alice, _ = connect(core, "alice")
    core.join(alice, "grp")
    assert core.group_id("grp") == wire.GroupId(482711334, TIME, 1)
    assert core.group_id("nope") is None


def test_invented_names_are_r_random_dash_slot() -> None:
    numbers = iter([42, 42, 7])
    core = make_core(randrange=lambda n: next(numbers))
    first = core.connect(Sink())
    assert first.name == "r42-1" and first.private_group == "#r42-1#localhost"
    core.connect(Sink(), "r42-3")  # slot 2
    # r42-3 is taken, so the invention for slot 3 draws again.
    second = core.connect(Sink())
    assert (second.name, second.slot) == ("r7-3", 3)


def test_invented_name_uses_randrange_9999() -> None:
    seen: list[int] = []

    def randrange(n: int) -> int:
        seen.append(n)
        return 9998

    core = make_core(randrange=randrange)
    assert core.connect(Sink()).name == "r9998-1"
    assert seen == [9999]


def test_slots_are_reused_lowest_first() -> None:
    core = make_core()
    sessions = [core.connect(Sink(), f"s{i}") for i in range(4)]
    assert [s.slot for s in sessions] == [1, 2, 3, 4]
    core.disconnect(sessions[2])
    core.disconnect(sessions[0])
    assert core.connect(Sink(), "t").slot == 1
    assert core.connect(Sink(), "u").slot == 3


@pytest.mark.parametrize("name", ["bad name", "x#y", "elevenchars", "a\x7f", "caf\xe9"])
def test_illegal_names(name: str) -> None:
    core = make_core()
    with pytest.raises(IllegalName):
        core.connect(Sink(), name)
    assert core.snapshot() == (frozenset(), {}, 0)


def test_names_are_unique_also_while_being_admitted() -> None:
    core = make_core()
    admission = core.admit()
    assert core.claim(admission, b"dave") == "dave"
    with pytest.raises(NameNotUnique):
        core.connect(Sink(), "dave")
    core.abandon(admission)
    core.abandon(admission)  # idempotent
    assert core.connect(Sink(), "dave").private_group == "#dave#localhost"


def test_quota_counts_sessions_and_admissions() -> None:
    core = make_core(max_sessions=2)
    core.connect(Sink(), "a")
    pending = core.admit()
    with pytest.raises(QuotaExceeded):
        core.admit()
    assert (core.session_count, core.admissions) == (1, 1)
    core.abandon(pending)
    core.connect(Sink(), "b")
    with pytest.raises(QuotaExceeded):
        core.connect(Sink(), "c")


def test_default_quota_is_997() -> None:
    core = make_core()
    for i in range(997):
        core.connect(Sink(), f"s{i}")
    with pytest.raises(QuotaExceeded):
        core.admit()


# --------------------------------------------------------------------------- membership


def test_join_notice_is_the_d1_trace_message() -> None:
    core = make_core()
    alice, sink = connect(core, "alice")
    core.join(alice, "grpA")
    (envelope,) = sink.take()
    # d1: the REG_MEMB_MESS | CAUSED_BY_JOIN alice got from the real daemon.
    assert envelope.wire == bytes.fromhex(
        "801100806772704100000000000000000000000000000000000000000000000000000000"
        "010000008000008038000000"
        "23616c696365236c6f63616c686f737400000000000000000000000000000000"
        "2697c51cd697036b0100000001000000000000000100000023616c696365236c6f63616c"
        "686f737400000000000000000000000000000000"
    )


def test_members_are_in_byte_order_and_counter_counts_changes() -> None:
    core = make_core()
    bob, bob_sink = connect(core, "bob")
    alice, alice_sink = connect(core, "alice")
    carol, _ = connect(core, "Carol")
    core.join(bob, "g")
    core.join(alice, "g")
    core.join(carol, "g")
    assert core.members("g") == ("#Carol#localhost", "#alice#localhost", "#bob#localhost")
    frames = bob_sink.frames()
    assert [f.group_id.counter for f in frames] == [1, 2, 3]  # type: ignore[union-attr]
    assert [f.changed_member for f in frames] == [  # type: ignore[union-attr]
        "#bob#localhost",
        "#alice#localhost",
        "#Carol#localhost",
    ]
    assert [f.vs_sets for f in frames][-1] == (("#Carol#localhost",),)  # type: ignore[union-attr]
    assert alice_sink.frames()[0].members == ("#alice#localhost", "#bob#localhost")  # type: ignore[union-attr]
    core.leave(alice, "g")
    assert core.group_id("g").counter == 4  # type: ignore[union-attr]


def test_leave_sends_self_leave_to_the_leaver_and_leave_to_the_others() -> None:
    core = make_core()
    alice, alice_sink = connect(core, "alice")
    bob, bob_sink = connect(core, "bob")
    core.join(alice, "grpJ")
    core.join(bob, "grpJ")
    alice_sink.take()
    bob_sink.take()
    core.leave(alice, "grpJ")
    (self_leave,) = alice_sink.take()
    assert isinstance(self_leave, SelfLeaveEnvelope)
    # j1: the self-leave notice alice got.
    assert self_leave.wire == bytes.fromhex(
        "800200806772704a00000000000000000000000000000000000000000000000000000000"
        "000000008000008000000000"
    )
    (notice,) = bob_sink.frames()
    assert notice == wire.MembershipMessage(
        wire.REG_MEMB_MESS | wire.CAUSED_BY_LEAVE,
        "grpJ",
        wire.CAUSED_BY_LEAVE,
        wire.GroupId(482711334, TIME, 3),
        ("#bob#localhost",),
        (("#alice#localhost",),),
        0,
        "#alice#localhost",
    )


def test_join_twice_and_leave_unknown_do_nothing() -> None:
    core = make_core()
    alice, sink = connect(core, "alice")
    core.join(alice, "g")
    sink.take()
    core.join(alice, "g")
    core.leave(alice, "other")
    assert sink.take() == []
    assert core.group_id("g").counter == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["", "#bob#localhost", "x" * 32])
def test_names_that_cannot_be_groups_are_not_joined(name: str) -> None:
    core = make_core()
    alice, sink = connect(core, "alice")
    core.join(alice, name)
    assert sink.take() == [] and core.groups() == ()


def test_last_leave_deletes_the_group_and_a_new_one_starts_at_1() -> None:
    core = make_core()
    alice, _ = connect(core, "alice")
    core.join(alice, "g")
    core.leave(alice, "g")
    assert core.groups() == ()
    core.join(alice, "g")
    assert core.group_id("g").counter == 1  # type: ignore[union-attr]


def test_disconnect_notifies_every_group_in_name_order() -> None:
    core = make_core()
    alice, alice_sink = connect(core, "alice")
    carol, carol_sink = connect(core, "carol")
    for g in ("grpB", "grpA", "solo"):
        core.join(carol, g)
    core.join(alice, "grpB")
    core.join(alice, "grpA")
    alice_sink.take()
    core.disconnect(carol)
    frames = alice_sink.frames()
    assert [(f.group, f.cause) for f in frames] == [  # type: ignore[union-attr]
        ("grpA", wire.CAUSED_BY_DISCONNECT),
        ("grpB", wire.CAUSED_BY_DISCONNECT),
    ]
    assert carol_sink.take()[-1].frame.cause == wire.CAUSED_BY_JOIN  # type: ignore[union-attr]
    assert core.groups() == ("grpA", "grpB")
    assert core.session("#carol#localhost") is None
    core.disconnect(carol)  # idempotent
    core.join(carol, "x")  # a closed session does nothing
    assert core.groups() == ("grpA", "grpB")


def test_membership_off_gets_data_but_no_notices() -> None:
    core = make_core()
    bob, bob_sink = connect(core, "bob", membership=False)
    carol, carol_sink = connect(core, "carol")
    core.join(bob, "grpB")
    core.join(carol, "grpB")
    core.multicast(carol, wire.AGREED_MESS, ("grpB",), b"hello")
    core.leave(bob, "grpB")
    assert [type(f) for f in bob_sink.frames()] == [wire.RegularMessage]
    assert [f.cause for f in carol_sink.frames() if isinstance(f, wire.MembershipMessage)] == [
        wire.CAUSED_BY_JOIN,
        wire.CAUSED_BY_LEAVE,
    ]


# --------------------------------------------------------------------------- routing


def three(core: DaemonCore) -> tuple[list[Session], list[Sink]]:
    pairs = [connect(core, n) for n in ("alice", "bob", "carol")]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_one_copy_per_receiver_for_several_groups() -> None:
    core = make_core()
    (alice, bob, carol), sinks = three(core)
    dave, dave_sink = connect(core, "dave")
    core.join(alice, "grpA")
    core.join(bob, "grpB")
    core.join(carol, "grpA")
    core.join(carol, "grpB")
    for s in sinks:
        s.take()
    core.multicast(dave, wire.SAFE_MESS, ("grpA", "grpB", "#carol#localhost"), b"x", 7)
    got = [s.take() for s in sinks]
    assert [len(g) for g in got] == [1, 1, 1]
    assert dave_sink.take() == []
    # One envelope, encoded once, shared by everyone.
    assert got[0][0] is got[1][0] is got[2][0]
    assert got[0][0].wire is got[1][0].wire
    assert got[0][0].frame == wire.RegularMessage(
        wire.SAFE_MESS, "#dave#localhost", ("grpA", "grpB", "#carol#localhost"), 7, b"x"
    )


def test_self_discard_keeps_the_bit_and_skips_the_sender() -> None:
    core = make_core()
    (alice, bob, _), (alice_sink, bob_sink, _) = three(core)
    core.join(alice, "g")
    core.join(bob, "g")
    alice_sink.take()
    bob_sink.take()
    core.multicast(alice, wire.AGREED_MESS | wire.SELF_DISCARD, ("g",), b"not for me", -2)
    assert alice_sink.take() == []
    (frame,) = bob_sink.frames()
    assert frame.service_type == 0x50 and frame.mess_type == -2  # type: ignore[union-attr]


def test_private_groups_and_dropped_targets() -> None:
    core = make_core()
    (alice, _, _), (alice_sink, bob_sink, carol_sink) = three(core)
    core.multicast(alice, wire.AGREED_MESS, ("#bob#localhost",), b"psst", 9)
    core.multicast(alice, wire.AGREED_MESS, ("#nobody#localhost",), b"lost")
    core.multicast(alice, wire.AGREED_MESS, ("#bob#otherdaemon",), b"lost")
    core.multicast(alice, wire.AGREED_MESS, ("nobodyhere",), b"lost")
    core.multicast(alice, wire.AGREED_MESS, (), b"lost")
    core.multicast(alice, wire.RELIABLE_MESS, ("#bob#localhost", "#alice#localhost"), b"both")
    assert [f.data for f in bob_sink.frames()] == [b"psst", b"both"]  # type: ignore[union-attr]
    assert [f.data for f in alice_sink.frames()] == [b"both"]  # type: ignore[union-attr]
    assert carol_sink.take() == []


def test_non_member_may_send_and_members_get_it() -> None:
    core = make_core()
    (alice, bob, _), (alice_sink, bob_sink, _) = three(core)
    core.join(alice, "grpF8")
    alice_sink.take()
    core.multicast(bob, wire.RELIABLE_MESS, ("grpF8",), b"from outside", 5)
    assert [f.data for f in alice_sink.frames()] == [b"from outside"]  # type: ignore[union-attr]
    assert bob_sink.take() == []


def test_relay_wire_and_frame_agree_with_the_client_decoder() -> None:
    core = make_core()
    (alice, bob, _), (_, bob_sink, _) = three(core)
    core.join(bob, "g")
    bob_sink.take()
    core.multicast(alice, wire.FIFO_MESS, ("g",), b"", -32768)
    big_endian_hint = (0x0102 << 8).to_bytes(4, "big")
    core.multicast(alice, wire.SAFE_MESS, ("g",), b"BE", hint=big_endian_hint)
    for envelope in bob_sink.take():
        assert decode(envelope) == envelope.frame
    assert envelope.frame.endian_mismatch and envelope.frame.mess_type == 0x0102  # type: ignore[union-attr]
    assert envelope.wire[40:44] == big_endian_hint  # the hint goes through untouched


def test_membership_frames_agree_with_the_client_decoder() -> None:
    core = make_core()
    (alice, bob, _), (alice_sink, bob_sink, _) = three(core)
    core.join(alice, "g")
    core.join(bob, "g")
    core.leave(bob, "g")
    core.join(bob, "g")
    core.disconnect(bob)
    envelopes = alice_sink.take() + bob_sink.take()
    assert {type(e) for e in envelopes} == {MembershipEnvelope, SelfLeaveEnvelope}
    for envelope in envelopes:
        assert decode(envelope) == envelope.frame


def test_relay_keeps_only_service_bits_and_self_discard() -> None:
    core = make_core()
    (alice, _, _), (_, bob_sink, _) = three(core)
    forged = wire.AGREED_MESS | wire.REG_MEMB_MESS | wire.CAUSED_BY_JOIN | 0x00100000
    core.multicast(alice, forged, ("#bob#localhost",), b"x")
    (envelope,) = bob_sink.take()
    assert envelope.frame.service_type == wire.AGREED_MESS  # type: ignore[union-attr]
    assert isinstance(decode(envelope), wire.RegularMessage)


def test_group_name_of_32_bytes_is_cut_to_31_on_the_wire() -> None:
    core = make_core()
    (alice, bob, _), (_, bob_sink, _) = three(core)
    core.join(bob, "g")
    bob_sink.take()
    core.multicast(alice, wire.AGREED_MESS, ("g", "y" * 32), b"x")
    (envelope,) = bob_sink.take()
    assert decode(envelope) == envelope.frame
    assert envelope.frame.groups == ("g", "y" * 31)  # type: ignore[union-attr]


def test_envelopes_encode_once() -> None:
    calls = []

    class Counting(RelayEnvelope):
        __slots__ = ()

        def _encode(self) -> bytes:
            calls.append(1)
            return super()._encode()

    envelope = Counting(wire.AGREED_MESS, "#a#localhost", ("g",), b"\x80\x00\x00\x80", b"d")
    assert envelope.wire is envelope.wire
    assert envelope.frame is envelope.frame
    assert calls == [1]


# --------------------------------------------------------------------------- ordering


def test_calls_made_during_delivery_keep_one_total_order() -> None:
    """A receiver answering from inside deliver must not overtake the message being
    delivered: every member sees the same order."""
    core = make_core()
    seen: dict[str, list[bytes]] = {"a": [], "b": [], "c": []}
    sessions: dict[str, Session] = {}

    def receiver(name: str) -> CallbackSink:
        def receive(frame: wire.ToClient) -> None:
            if isinstance(frame, wire.RegularMessage):
                seen[name].append(frame.data)
                if name == "a" and frame.data == b"first":
                    core.multicast(sessions["a"], wire.AGREED_MESS, ("g",), b"reply")

        return CallbackSink(receive)

    for name in "abc":
        sessions[name] = core.connect(receiver(name), name)
        core.join(sessions[name], "g")
    core.multicast(sessions["c"], wire.AGREED_MESS, ("g",), b"first")
    assert seen == {n: [b"first", b"reply"] for n in "abc"}


def test_disconnect_from_inside_a_delivery_runs_after_it() -> None:
    core = make_core()
    log: list[tuple[str, object]] = []
    sessions: dict[str, Session] = {}

    def receive_a(frame: wire.ToClient) -> None:
        log.append(("a", getattr(frame, "data", None) or frame.cause))  # type: ignore[union-attr]
        if getattr(frame, "data", None) == b"m":
            core.disconnect(sessions["a"])

    def receive_b(frame: wire.ToClient) -> None:
        log.append(("b", getattr(frame, "data", None) or frame.cause))  # type: ignore[union-attr]

    sessions["a"] = core.connect(CallbackSink(receive_a), "a")
    sessions["b"] = core.connect(CallbackSink(receive_b), "b")
    core.join(sessions["a"], "g")
    core.join(sessions["b"], "g")
    log.clear()
    core.multicast(sessions["b"], wire.AGREED_MESS, ("g",), b"m")
    assert log == [("a", b"m"), ("b", b"m"), ("b", wire.CAUSED_BY_DISCONNECT)]


def test_callback_sink_reports_errors_instead_of_breaking_delivery() -> None:
    core = make_core()
    errors: list[BaseException] = []

    def boom(frame: wire.ToClient) -> None:
        raise RuntimeError("listener bug")

    bad = core.connect(CallbackSink(boom, errors.append), "bad")
    good, good_sink = connect(core, "good")
    core.join(bad, "g")
    core.join(good, "g")
    good_sink.take()
    core.multicast(good, wire.AGREED_MESS, ("g",), b"x")
    assert len(good_sink.take()) == 1
    assert len(errors) == 3 and isinstance(errors[0], RuntimeError)


# --------------------------------------------------------------------------- in-process


def test_local_link_is_an_isessionlink() -> None:
    core = make_core()
    session = core.connect(CallbackSink(lambda f: None), "mgr")
    link = LocalLink(core, session)
    assert verifyObject(ISessionLink, link)
    assert verifyObject(ISessionSink, CallbackSink(lambda f: None))


def test_local_link_round_trip() -> None:
    core = make_core()
    got: list[wire.ToClient] = []
    mgr = core.connect(CallbackSink(got.append), "mgr")
    link = LocalLink(core, mgr)
    worker, worker_sink = connect(core, "worker")
    link.send_join(b"q")
    core.join(worker, "q")
    link.send_multicast(wire.SAFE_MESS, [b"q"], 12, b"task")
    assert [f.data for f in worker_sink.frames() if isinstance(f, wire.RegularMessage)] == [b"task"]
    link.send_leave("q")
    assert got[-1].is_self_leave  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        link.send_multicast(wire.SAFE_MESS | wire.AGREED_MESS, [b"q"], 0, b"")
    with pytest.raises(ValueError):
        link.send_multicast(wire.JOIN_MESS, [b"q"], 0, b"")
    link.send_kill()
    link.send_kill()
    with pytest.raises(SessionClosed):
        link.send_join("q")
    assert core.session("#mgr#localhost") is None


# --------------------------------------------------------------------------- relay


def _relay_frame(sender: Session, service: int, dests: tuple[str, ...], data: bytes) -> wire.Relay:
    """What a DaemonDecoder in relay mode yields for a libspread multicast."""
    decoder = wire.DaemonDecoder(relay=True)
    decoder.feed(wire.encode_connect(sender.name))
    decoder.expect_auth()
    decoder.feed(wire.encode_auth_choice())
    decoder.accepted(sender.private_group)
    (frame,) = decoder.feed(wire.encode_message(service, sender.private_group, dests, data, 5))
    assert type(frame) is wire.Relay
    return frame


@pytest.mark.parametrize(
    ("service", "dests"),
    [
        (wire.AGREED_MESS, ("grpA",)),
        (wire.AGREED_MESS, ("#carol#localhost",)),
        (wire.SAFE_MESS | wire.SELF_DISCARD, ("grpA",)),
        (wire.FIFO_MESS, ("grpA", "grpB", "#carol#localhost", "nobody", "#x#otherdaemon")),
        (wire.FIFO_MESS | wire.SELF_DISCARD, ("grpB", "#alice#localhost")),
        (wire.RELIABLE_MESS, ("nobody",)),
        (wire.RELIABLE_MESS, ()),
    ],
)
def test_relay_routes_like_multicast(service: int, dests: tuple[str, ...]) -> None:
    """Routed by raw fields, a Relay reaches the same receivers, once each, as the same
    message given to multicast(), and they get the same bytes and frame."""
    cores = [make_core(), make_core()]
    delivered = []
    for i, core in enumerate(cores):
        (alice, bob, carol), sinks = three(core)
        core.join(alice, "grpA")
        core.join(bob, "grpA")
        core.join(carol, "grpB")
        core.join(alice, "grpB")
        for s in sinks:
            s.take()
        if i == 0:
            core.multicast(alice, service, dests, b"data", 5)
        else:
            core.relay(alice, _relay_frame(alice, service, dests, b"data"))
        delivered.append([s.take() for s in sinks])
    via_multicast, via_relay = delivered
    assert [len(got) for got in via_relay] == [len(got) for got in via_multicast]
    for got, want in zip(via_relay, via_multicast, strict=True):
        for envelope, expected in zip(got, want, strict=True):
            assert envelope.wire == expected.wire
            assert envelope.frame == expected.frame == decode(envelope)


def test_relay_keeps_the_total_order_of_calls_made_while_delivering() -> None:
    core = make_core()
    seen: list[tuple[str, bytes]] = []
    sessions: dict[str, Session] = {}

    def receive(name: str) -> CallbackSink:
        def got(frame: wire.ToClient) -> None:
            if type(frame) is not wire.RegularMessage:
                return
            seen.append((name, frame.data))
            if name == "b" and frame.data == b"first":
                core.multicast(sessions["b"], wire.AGREED_MESS, ("g",), b"answer")

        return CallbackSink(got)

    for name in ("a", "b", "c"):
        sessions[name] = core.connect(receive(name), name)
        core.join(sessions[name], "g")
    core.relay(sessions["a"], _relay_frame(sessions["a"], wire.AGREED_MESS, ("g",), b"first"))
    assert seen == [(n, b"first") for n in "abc"] + [(n, b"answer") for n in "abc"]


def test_relay_targets_follow_groups_and_sessions() -> None:
    core = make_core()
    (alice, bob, _), (_, bob_sink, _) = three(core)
    frame = _relay_frame(alice, wire.AGREED_MESS, ("g",), b"x")
    core.relay(alice, frame)
    assert bob_sink.take() == []
    core.join(bob, "g")
    bob_sink.take()
    core.relay(alice, frame)
    assert [f.data for f in bob_sink.frames()] == [b"x"]  # type: ignore[union-attr]
    core.leave(bob, "g")
    bob_sink.take()
    core.relay(alice, frame)
    assert bob_sink.take() == []
    unicast = _relay_frame(alice, wire.AGREED_MESS, ("#bob#localhost",), b"u")
    core.disconnect(bob)
    core.relay(alice, unicast)
    assert bob_sink.take() == []
    core.disconnect(alice)
    bob2, bob2_sink = connect(core, "bob")
    core.relay(alice, unicast)  # a closed sender sends nothing
    assert bob2_sink.take() == []
    assert core.snapshot() == (frozenset({bob2.private_group, "#carol#localhost"}), {}, 0)
