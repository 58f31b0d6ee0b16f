"""SpreadSession on its own: a fake ISessionLink, frames decoded from real daemon traces.

No transport at all: this is how the embedded daemon's in-process sessions will drive
the very same class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from spreadqueue._spread import errors, wire
from spreadqueue._spread.interfaces import ISessionLink, ISpreadSession
from spreadqueue._spread.session import ReceiveOverflow, SpreadSession

TRACES = Path(
    os.environ.get(
        "SPREAD_WIRE_TRACES",
        Path(__file__).resolve().parents[2] / "shared" / "spread-wire" / "traces",
    )
)
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason=f"no Spread traces at {TRACES}")

ALICE = "#alice#localhost"
GID = wire.GroupId(482711334, 1795397590, 1)


def daemon_frames(case: str, conn: str = "C1") -> list[Any]:
    """Every message frame the daemon sent on ``conn`` in a trace, decoded."""
    path = TRACES / f"{case}.trace"
    if not path.exists():
        (path,) = TRACES.glob(f"{case}_*.trace")
    stream = b""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        _t, c, direction, payload = line.split()
        if c == conn and direction == "D>" and not payload.startswith("!"):
            stream += bytes.fromhex(payload)
    frames = wire.ClientDecoder().feed(stream)
    return [f for f in frames if not isinstance(f, (wire.AuthList, wire.Accepted))]


@implementer(ISessionLink)
class FakeLink:
    """Records what the session sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.session: SpreadSession | None = None
        self.close_on_kill = False

    def send_multicast(
        self, service_type: int, groups: list[bytes], mess_type: int, data: bytes
    ) -> None:
        self.sent.append(("multicast", service_type, tuple(groups), mess_type, data))

    def send_join(self, group: bytes) -> None:
        self.sent.append(("join", group))

    def send_leave(self, group: bytes) -> None:
        self.sent.append(("leave", group))

    def send_kill(self) -> None:
        self.sent.append(("kill",))
        if self.close_on_kill and self.session is not None:
            self.session.connection_lost(Failure(errors.SessionClosed("closed after kill")))


def make(private_group: str = ALICE, **kwargs: Any) -> tuple[SpreadSession, FakeLink]:
    link = FakeLink()
    session = SpreadSession(link, private_group, **kwargs)
    link.session = session
    return session, link


def join_notice(group: str, members: tuple[str, ...], joiner: str) -> wire.MembershipMessage:
    return wire.MembershipMessage(
        wire.REG_MEMB_MESS | wire.CAUSED_BY_JOIN,
        group,
        wire.CAUSED_BY_JOIN,
        GID,
        members,
        ((joiner,),),
        0,
        joiner,
    )


def self_leave(group: str) -> wire.MembershipMessage:
    return wire.MembershipMessage(
        wire.CAUSED_BY_LEAVE, group, wire.CAUSED_BY_LEAVE, None, is_self_leave=True
    )


def regular(
    groups: tuple[str, ...], data: bytes = b"x", sender: str = "#bob#localhost"
) -> wire.RegularMessage:
    return wire.RegularMessage(wire.AGREED_MESS, sender, groups, 0, data)


def result_of(d: defer.Deferred[Any]) -> Any:
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


# --------------------------------------------------------------------------- basics


def test_interface_and_names() -> None:
    session, _ = make()
    verifyObject(ISpreadSession, session)
    verifyObject(ISessionLink, FakeLink())
    assert (session.private_group, session.name, session.daemon_name) == (
        ALICE,
        "alice",
        "localhost",
    )
    assert session.connected and session.writable
    assert "alice" in repr(session)


def test_private_group_must_be_one() -> None:
    with pytest.raises(ValueError):
        SpreadSession(FakeLink(), "alice")


# --------------------------------------------------------------------------- join / leave


@needs_traces
def test_join_fires_on_own_notice_from_d1() -> None:
    session, link = make()
    (notice,) = daemon_frames("d1_join_membership")
    order: list[str] = []
    session.add_listener(lambda f: order.append("listener"), "grpA")
    d = session.join("grpA")
    d.addCallback(lambda _: order.append("join fired"))
    assert link.sent == [("join", b"grpA")]
    assert not d.called
    session.frame_received(notice)
    assert order == ["listener", "join fired"]
    assert session.groups == {"grpA"}


@needs_traces
def test_someone_elses_join_does_not_complete_ours() -> None:
    session, _ = make()
    _mine, bobs, _disc = daemon_frames("e1_second_member_joins")
    assert bobs.changed_member == "#bob#localhost"
    d = session.join("grpE")
    session.frame_received(bobs)
    assert not d.called
    session.frame_received(_mine)
    assert d.called


def test_join_twice_sends_once() -> None:
    session, link = make()
    first, second = session.join("g"), session.join("g")
    assert link.sent == [("join", b"g")]
    session.frame_received(join_notice("g", (ALICE,), ALICE))
    assert result_of(first) is None and result_of(second) is None
    third = session.join("g")  # already in: nothing sent, fires at once
    assert result_of(third) is None and link.sent == [("join", b"g")]


def test_join_leave_join_in_flight() -> None:
    session, link = make()
    j1, lv, j2 = session.join("g"), session.leave("g"), session.join("g")
    assert link.sent == [("join", b"g"), ("leave", b"g"), ("join", b"g")]
    session.frame_received(join_notice("g", (ALICE,), ALICE))
    assert j1.called and not lv.called and not j2.called
    session.frame_received(self_leave("g"))
    assert lv.called and not j2.called
    assert session.groups == frozenset()
    session.frame_received(join_notice("g", (ALICE,), ALICE))
    assert j2.called and session.groups == {"g"}


@needs_traces
def test_leave_fires_on_self_leave_from_j1() -> None:
    session, link = make()
    frames = daemon_frames("j1_leave")
    mine, bobs, self_leave_notice = frames
    d = session.join("grpJ")
    session.frame_received(mine)
    session.frame_received(bobs)
    assert result_of(d) is None
    lv = session.leave("grpJ")
    assert link.sent[-1] == ("leave", b"grpJ") and not lv.called
    session.frame_received(self_leave_notice)
    assert result_of(lv) is None


def test_leave_of_a_group_we_are_not_in() -> None:
    session, link = make()
    assert result_of(session.leave("never")) is None
    assert link.sent == []


def test_membership_off_fires_at_once() -> None:
    session, link = make(membership=False)
    assert result_of(session.join("g")) is None
    assert result_of(session.leave("g")) is None
    assert link.sent == [("join", b"g"), ("leave", b"g")]


def test_join_completed_by_a_network_notice() -> None:
    session, _ = make()
    d = session.join("g")
    network = wire.MembershipMessage(
        wire.REG_MEMB_MESS | wire.CAUSED_BY_NETWORK,
        "g",
        wire.CAUSED_BY_NETWORK,
        GID,
        ("#bob#d2", ALICE),
        (("#bob#d2",), (ALICE,)),
        1,
    )
    session.frame_received(network)
    assert d.called and session.groups == {"g"}


def test_cancelled_join_keeps_the_order() -> None:
    session, _ = make()
    first = session.join("g")
    first.cancel()
    assert failure_of(first).check(defer.CancelledError)
    lv = session.leave("g")
    session.frame_received(join_notice("g", (ALICE,), ALICE))
    assert not lv.called  # the join notice matched the cancelled join, not the leave
    session.frame_received(self_leave("g"))
    assert lv.called


@pytest.mark.parametrize("name", ["", "has space", "x" * 32, "a#b", "#alice#localhost", "\x01"])
def test_join_and_leave_refuse_bad_names_synchronously(name: str) -> None:
    session, link = make()
    with pytest.raises(errors.IllegalGroupName):
        session.join(name)
    with pytest.raises(errors.IllegalGroupName):
        session.leave(name)
    assert link.sent == []


def test_join_on_a_closed_session_raises() -> None:
    session, _ = make()
    session.connection_lost(Failure(errors.SessionClosed("gone")))
    with pytest.raises(errors.SessionClosed):
        session.join("g")
    with pytest.raises(errors.SessionClosed):
        session.leave("g")


def test_31_byte_group_name_is_fine() -> None:
    session, link = make()
    session.join("g" * 31)
    assert link.sent == [("join", b"g" * 31)]


# --------------------------------------------------------------------------- multicast


def test_multicast_defaults_and_forms() -> None:
    session, link = make()
    session.multicast("g", b"a")
    session.multicast(["g", "#bob#localhost"], bytearray(b"b"), wire.FIFO_MESS, 7)
    session.multicast(("g",), memoryview(b"c"), None, -32768, self_discard=True)
    session.multicast(b"g", b"d", wire.UNRELIABLE_MESS, 32767)
    assert link.sent == [
        ("multicast", wire.SAFE_MESS, (b"g",), 0, b"a"),
        ("multicast", wire.FIFO_MESS, (b"g", b"#bob#localhost"), 7, b"b"),
        ("multicast", wire.SAFE_MESS | wire.SELF_DISCARD, (b"g",), -32768, b"c"),
        ("multicast", wire.UNRELIABLE_MESS, (b"g",), 32767, b"d"),
    ]
    assert all(type(s[4]) is bytes for s in link.sent)


def test_multicast_size_limit_boundaries() -> None:
    session, link = make()
    session.multicast("g", bytes(143120))  # 48 + 32 + 143120 = 143200: trace i2
    with pytest.raises(errors.MessageTooLong):
        session.multicast("g", bytes(143121))  # trace i4 crashes a real daemon
    session.multicast(["g", "h"], bytes(143088))
    with pytest.raises(errors.MessageTooLong):
        session.multicast(["g", "h"], bytes(143089))
    session.multicast([f"g{i}" for i in range(100)], b"")
    with pytest.raises(errors.MessageTooLong):
        session.multicast([f"g{i}" for i in range(101)], b"")
    assert len(link.sent) == 3


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (("", b"x"), errors.IllegalGroupName),
        (([], b"x"), errors.IllegalGroupName),
        ((["ok", "not ok"], b"x"), errors.IllegalGroupName),
        (("#notprivate", b"x"), errors.IllegalGroupName),
        (("g", b"x", 0x03), errors.IllegalService),
        (("g", b"x", wire.SAFE_MESS | wire.SELF_DISCARD), errors.IllegalService),
        (("g", b"x", wire.SAFE_MESS, 32768), ValueError),
        (("g", b"x", wire.SAFE_MESS, -32769), ValueError),
    ],
)
def test_multicast_refuses_before_sending(args: tuple[Any, ...], exc: type[Exception]) -> None:
    session, link = make()
    with pytest.raises(exc):
        session.multicast(*args)
    assert link.sent == []


def test_multicast_on_a_closed_session() -> None:
    session, link = make()
    session.disconnect()
    with pytest.raises(errors.SessionClosed):
        session.multicast("g", b"x")
    assert link.sent == [("kill",)]


# --------------------------------------------------------------------------- listeners


@needs_traces
def test_g1_listeners_per_group_and_catch_all() -> None:
    session, _ = make("#carol#localhost")
    frames = daemon_frames("g1_multigroup_multicast", "C3")
    a: list[Any] = []
    b: list[Any] = []
    both: list[Any] = []
    everything: list[Any] = []
    session.add_listener(a.append, "grpA")
    session.add_listener(b.append, "grpB")
    session.add_listener(both.append, "grpA")
    session.add_listener(both.append, "grpB")
    session.add_listener(both.append)
    session.add_listener(everything.append)
    session.add_listener(everything.append)  # twice: no effect
    for f in frames:
        session.frame_received(f)
    assert everything == both == frames
    msg = next(f for f in frames if isinstance(f, wire.RegularMessage))
    assert msg.groups == ("grpA", "grpB")
    assert a.count(msg) == b.count(msg) == 1
    assert all(f.group == "grpA" for f in a if isinstance(f, wire.MembershipMessage))
    assert all(f.group == "grpB" for f in b if isinstance(f, wire.MembershipMessage))


def test_unrelated_groups_are_not_called() -> None:
    session, _ = make()
    calls: list[str] = []

    def listener_for(name: str) -> Any:
        return lambda frame: calls.append(name)

    for i in range(1000):
        session.add_listener(listener_for(f"g{i}"), f"g{i}")
    session.frame_received(regular(("g7", "nobody")))
    assert calls == ["g7"]


def test_unicast_reaches_private_group_listeners() -> None:
    session, _ = make()
    mine: list[Any] = []
    session.add_listener(mine.append, ALICE)
    session.frame_received(regular((ALICE,)))
    assert len(mine) == 1


def test_reject_message_dispatched_by_its_groups() -> None:
    session, _ = make()
    seen: list[Any] = []
    session.add_listener(seen.append, "g")
    reject = wire.RejectMessage(
        wire.REJECT_MESS | wire.AGREED_MESS, wire.AGREED_MESS, ALICE, ("g", ALICE), 3, b"no"
    )
    session.frame_received(reject)
    assert seen == [reject]


def test_a_raising_listener_is_logged_and_others_still_run() -> None:
    session, _ = make()
    seen: list[Any] = []

    def boom(frame: Any) -> None:
        raise RuntimeError("listener bug")

    session.add_listener(boom, "g")
    session.add_listener(seen.append, "g")
    session.add_listener(seen.append)
    with capturedLogs() as events:
        session.frame_received(regular(("g",)))
    assert len(seen) == 1
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)


def test_listeners_changed_while_dispatching() -> None:
    session, _ = make()
    calls: list[str] = []

    def late(frame: Any) -> None:
        calls.append("late")

    def victim(frame: Any) -> None:
        calls.append("victim")

    def first(frame: Any) -> None:
        calls.append("first")
        session.remove_listener(victim, "g")
        session.remove_listener(first, "g")
        session.add_listener(late, "g")

    session.add_listener(first, "g")
    session.add_listener(victim, "g")
    session.frame_received(regular(("g",)))
    assert calls == ["first"]  # victim removed before its turn; late only from next frame
    session.frame_received(regular(("g",)))
    assert calls == ["first", "late"]


def test_remove_unknown_listener_is_harmless() -> None:
    session, _ = make()
    session.remove_listener(print, "g")
    session.remove_listener(print)
    session.add_listener(print, "g")
    session.remove_listener(print, "h")
    assert session.listeners("g") == (print,)
    session.remove_listener(print, "g")
    assert session.listeners("g") == ()


def test_reentrant_delivery_keeps_one_order() -> None:
    session, _ = make()
    seen: list[tuple[str, bytes]] = []
    second = regular(("g",), b"2")

    def a(frame: Any) -> None:
        seen.append(("a", frame.data))
        if frame.data == b"1":
            session.frame_received(second)  # e.g. an in-process daemon looping back

    session.add_listener(a, "g")

    def b(frame: Any) -> None:
        seen.append(("b", frame.data))

    session.add_listener(b, "g")
    session.frame_received(regular(("g",), b"1"))
    assert seen == [("a", b"1"), ("b", b"1"), ("a", b"2"), ("b", b"2")]


def test_after_delivery_runs_once_when_the_batch_ends() -> None:
    session, _ = make()
    log: list[str] = []

    def flush() -> None:
        log.append("flush")

    def listener(frame: Any) -> None:
        log.append(frame.data.decode())
        assert session.after_delivery(flush)

    session.add_listener(listener, "g")
    assert not session.after_delivery(flush)  # no delivery under way: nothing scheduled
    session.deliver([regular(("g",), b"1"), regular(("g",), b"2")])
    # not after each frame: after the batch; each request runs (Turn de-duplicates)
    assert log == ["1", "2", "flush", "flush"]
    session.frame_received(regular(("g",), b"3"))  # unbracketed: a batch of its own
    assert log == ["1", "2", "flush", "flush", "3", "flush"]


def test_work_deferred_by_deferred_work_runs_in_the_same_loop() -> None:
    session, _ = make()
    log: list[str] = []

    def second() -> None:
        log.append("second")

    def first() -> None:
        log.append("first")
        assert session.after_delivery(second)

    session.add_listener(lambda frame: session.after_delivery(first), "g")
    session.frame_received(regular(("g",)))
    assert log == ["first", "second"]
    assert not session.after_delivery(first)


def test_failing_deferred_work_is_logged_and_the_rest_still_runs() -> None:
    session, _ = make()
    log: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    def listener(frame: Any) -> None:
        session.after_delivery(broken)
        session.after_delivery(lambda: log.append("ran"))

    session.add_listener(listener, "g")
    with capturedLogs() as events:
        session.deliver([regular(("g",))])
    assert log == ["ran"]
    assert [e["log_failure"].value.args for e in events if "log_failure" in e] == [("boom",)]
    assert not session.after_delivery(broken)  # the bracket closed despite the failure


@needs_traces
def test_transition_and_network_notices_reach_group_listeners() -> None:
    session, _ = make("#alice#d1")
    seen: list[Any] = []
    session.add_listener(seen.append, "grpP3")
    for f in daemon_frames("p3_partition_cut"):
        session.frame_received(f)
    notices = [f for f in seen if isinstance(f, wire.MembershipMessage)]
    kinds = ["T" if f.is_transition else f.cause for f in notices]
    i = kinds.index("T")
    assert notices[i].group_id is not None
    assert kinds[i + 1] == wire.CAUSED_BY_NETWORK
    assert "#alice#d1" in notices[i + 1].members


# --------------------------------------------------------------------------- receive()


def test_receive_queues_only_after_first_call() -> None:
    session, _ = make()
    session.frame_received(regular(("g",), b"before"))
    d = session.receive()
    assert not d.called  # the frame before the first call was not kept
    session.frame_received(regular(("g",), b"1"))
    assert result_of(d).data == b"1"
    session.frame_received(regular(("g",), b"2"))
    session.frame_received(self_leave("g"))
    assert result_of(session.receive()).data == b"2"
    assert result_of(session.receive()).is_self_leave


def test_receive_overflow_marks_the_gap() -> None:
    session, _ = make(receive_queue_size=3)
    session.receive().cancel()  # start queueing
    with capturedLogs() as events:
        for i in range(6):
            session.frame_received(regular(("g",), b"%d" % i))
    assert sum(1 for e in events if "queue full" in e.get("log_format", "")) == 1
    got = [result_of(session.receive()).data for _ in range(3)]
    assert got == [b"0", b"1", b"2"]
    err = failure_of(session.receive())
    assert err.check(ReceiveOverflow) and err.value.dropped == 3
    session.frame_received(regular(("g",), b"6"))
    assert result_of(session.receive()).data == b"6"


def test_receive_cancel_and_close() -> None:
    session, _ = make()
    cancelled = session.receive()
    cancelled.cancel()
    assert failure_of(cancelled).check(defer.CancelledError)
    session.frame_received(regular(("g",), b"kept"))
    session.connection_lost(Failure(errors.SessionClosed("daemon gone")))
    assert result_of(session.receive()).data == b"kept"  # queued frames first
    waiting_after = session.receive()
    err = failure_of(waiting_after)
    assert err.check(errors.SessionClosed) and "daemon gone" in str(err.value)


# --------------------------------------------------------------------------- end of session


def test_disconnect_sends_kill_and_waits_for_close() -> None:
    session, link = make()
    seen: list[Any] = []
    session.add_listener(seen.append)
    d = session.disconnect()
    assert link.sent == [("kill",)] and not session.connected and not d.called
    again = session.disconnect()
    assert link.sent == [("kill",)]
    session.frame_received(regular(("g",)))  # nothing is dispatched any more
    assert seen == []
    session.connection_lost(None)
    assert result_of(d) is None and result_of(again) is None
    assert session.disconnect_reason is not None
    assert result_of(session.disconnect()) is None


def test_disconnect_through_a_link_that_closes_at_once() -> None:
    session, link = make()
    link.close_on_kill = True
    assert result_of(session.disconnect()) is None


def test_connection_lost_fails_everything_pending() -> None:
    session, _ = make()
    join = session.join("g")
    session.join("h")
    session.frame_received(join_notice("h", (ALICE,), ALICE))
    leave = session.leave("h")
    rx = session.receive()
    session.pause_writing()
    writable = session.whenWritable()
    ended1, ended2 = session.whenDisconnected(), session.whenDisconnected()
    assert ended1 is not ended2
    producer = FakeProducer()
    session.register_producer(producer)
    session.connection_lost(Failure(ConnectionResetError("reset by peer")))
    for d in (join, leave, rx, writable):
        err = failure_of(d)
        assert err.check(errors.SessionClosed) and "reset by peer" in str(err.value)
    assert result_of(ended1) is None and result_of(ended2) is None
    assert result_of(session.whenDisconnected()) is None
    assert producer.events == ["pause", "stop"]
    assert session.disconnect_reason is not None
    assert session.disconnect_reason.check(ConnectionResetError)
    session.connection_lost(None)  # second call ignored
    assert failure_of(session.whenWritable()).check(errors.SessionClosed)


# --------------------------------------------------------------------------- back-pressure


@implementer(IPushProducer)
class FakeProducer:
    def __init__(self, on_resume: Any = None) -> None:
        self.events: list[str] = []
        self.on_resume = on_resume

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")
        if self.on_resume:
            self.on_resume()

    def stopProducing(self) -> None:
        self.events.append("stop")


def test_back_pressure_api() -> None:
    session, _ = make()
    p1, p2 = FakeProducer(), FakeProducer()
    session.register_producer(p1)
    session.pause_writing()
    session.pause_writing()  # idempotent
    session.register_producer(p2)  # paused at once
    assert not session.writable
    w = session.whenWritable()
    assert not w.called
    session.resume_writing()
    assert w.called and session.writable
    assert p1.events == ["pause", "resume"] and p2.events == ["pause", "resume"]
    session.unregister_producer(p1)
    session.pause_writing()
    assert p1.events == ["pause", "resume"] and p2.events[-1] == "pause"


def test_resume_stops_when_the_buffer_fills_again() -> None:
    session, _ = make()
    hog = FakeProducer(on_resume=session.pause_writing)  # writes a lot when resumed
    polite = FakeProducer()
    session.register_producer(hog)
    session.register_producer(polite)
    session.pause_writing()
    session.resume_writing()
    assert hog.events == ["pause", "resume", "pause"]
    assert polite.events == ["pause", "pause"]  # never resumed: still not writable
    assert not session.writable


def test_whenwritable_cancel() -> None:
    session, _ = make()
    session.pause_writing()
    d = session.whenWritable()
    d.cancel()
    assert failure_of(d).check(defer.CancelledError)
    session.resume_writing()


def _listeners_called(
    registrations: list[tuple[str, int]],
    frames: list[tuple[str, ...]],
    deliver: Callable[[SpreadSession, Any], None],
) -> list[tuple[int, bytes]]:
    """The calls of listeners registered as ``registrations`` say, each frame (to the
    groups of ``frames``) given to ``deliver(session, frame)``.

    Listener ``i`` records its calls; with action 1 it raises, with action 2 it removes
    listener ``i + 1`` from its own group.
    """
    session, _ = make()
    calls: list[tuple[int, bytes]] = []
    listeners: list[Any] = []

    def listener_of(i: int, group: str, action: int) -> Any:
        def listener(frame: Any) -> None:
            calls.append((i, frame.data))
            if action == 1:
                raise RuntimeError("boom")
            if action == 2:
                session.remove_listener(listeners[(i + 1) % len(listeners)], group)

        return listener

    for i, (group, action) in enumerate(registrations):
        listeners.append(listener_of(i, group, action))
        session.add_listener(listeners[-1], group)
    with capturedLogs():
        for i, groups in enumerate(frames):
            deliver(session, regular(groups, str(i).encode()))
    return calls


def _received(session: SpreadSession, frame: Any) -> None:
    session.frame_received(frame)


def _general(session: SpreadSession, frame: Any) -> None:
    session._dispatch_many(frame, frame.groups)


_REGISTRATIONS = st.lists(
    st.tuples(st.sampled_from(["g1", "g2", "g3"]), st.integers(0, 2)), max_size=8
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    registrations=_REGISTRATIONS,
    frames=st.lists(st.sampled_from(["g1", "g2", "g3", "g4"]), max_size=6),
)
def test_one_group_dispatch_agrees_with_the_general_dispatch(
    registrations: list[tuple[str, int]], frames: list[str]
) -> None:
    """The one-group fast path calls the same listeners in the same order, with the
    same removals taking effect, as the general path does for the same frames."""
    one = [(group,) for group in frames]
    assert _listeners_called(registrations, one, _received) == _listeners_called(
        registrations, one, _general
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    registrations=_REGISTRATIONS,
    frames=st.lists(
        st.lists(st.sampled_from(["g1", "g2", "g3", "g4"]), min_size=1, max_size=3),
        max_size=6,
    ),
)
def test_several_group_frames_dispatch_as_the_general_dispatch(
    registrations: list[tuple[str, int]], frames: list[list[str]]
) -> None:
    """A frame to several groups of which only one has listeners takes the one-group
    path: the same listeners in the same order, with the same removals taking effect,
    as the general path (which every other frame takes anyway)."""
    several = [tuple(groups) for groups in frames]
    assert _listeners_called(registrations, several, _received) == _listeners_called(
        registrations, several, _general
    )
