"""Sessions that survive a daemon restart: away and back (SpreadSession.relink),
keep_session's reconnection with back-off, and connect(..., reconnect=True) over TCP.

Deterministic: a recording link, the in-memory daemon of tests/restartable.py on a
task.Clock, MemoryReactorClock with StringTransport.
"""

from __future__ import annotations

from typing import Any

import pytest
from restartable import RestartableDaemon
from test_session import FakeLink, FakeProducer, failure_of, join_notice, result_of
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from spreadqueue._spread import errors, wire
from spreadqueue._spread.client import connect
from spreadqueue._spread.session import (
    SessionBack,
    SessionLost,
    SessionReconnecting,
    SpreadSession,
)

ALICE = "#alice#localhost"


def pending(d: defer.Deferred[Any]) -> bool:
    out: list[Any] = []
    d.addBoth(lambda r: out.append(r) or r)
    return not out


# --------------------------------------------------------------------------- relink


class Clock:
    now = 100.0

    def seconds(self) -> float:
        return self.now


def reconnecting(**kwargs: Any) -> tuple[SpreadSession, FakeLink, Clock, list[Any]]:
    link = FakeLink()
    session = SpreadSession(link, ALICE, **kwargs)
    clock = Clock()
    session.survive_reconnects(clock)  # type: ignore[arg-type]
    events: list[Any] = []
    session.add_reconnect_listener(events.append)
    return session, link, clock, events


def joined(session: SpreadSession, *groups: str) -> None:
    for group in groups:
        d = session.join(group)
        session.frame_received(join_notice(group, (session.private_group,), session.private_group))
        assert result_of(d) is None


def test_a_lost_link_leaves_the_session_away_not_closed() -> None:
    session, link, _, events = reconnecting()
    joined(session, "chat")
    ended = session.whenDisconnected()
    receiving = session.receive()
    session.connection_lost(Failure(ConnectionLost("daemon died")), link=link)
    assert events == [SessionLost(ALICE, Failure(ConnectionLost("daemon died")).getErrorMessage())]
    assert not session.connected and session.reconnects
    assert pending(ended) and pending(receiving)
    with pytest.raises(SessionReconnecting, match="reconnecting"):
        session.multicast("chat", b"x")
    assert isinstance(SessionReconnecting(), errors.SessionClosed)
    assert "away" in repr(session) and session.groups == frozenset()


def test_back_after_joining_again_in_the_order_first_joined() -> None:
    session, _, clock, events = reconnecting()
    joined(session, "b-grp", "a-grp")
    seen: list[Any] = []
    session.add_listener(seen.append, "a-grp")
    session.connection_lost(Failure(ConnectionLost()))
    clock.now += 1.5
    link = FakeLink()
    session.relink(link, ALICE)
    assert session.connected
    assert link.sent == [("join", b"b-grp"), ("join", b"a-grp")]
    assert events[1:] == []  # not back before the daemon confirms both
    session.frame_received(join_notice("b-grp", (ALICE,), ALICE))
    assert events[1:] == []
    session.frame_received(join_notice("a-grp", (ALICE,), ALICE))
    assert events[1:] == [SessionBack(ALICE, 1.5, ALICE)]
    assert [f.group for f in seen] == ["a-grp"]  # its listener kept, and saw the notice first
    assert session.groups == {"a-grp", "b-grp"}
    session.multicast("a-grp", b"hello")
    assert link.sent[-1] == ("multicast", wire.SAFE_MESS, (b"a-grp",), 0, b"hello")


def test_joins_leaves_and_shares_while_away_are_made_when_back() -> None:
    session, _, _, events = reconnecting()
    joined(session, "left", "kept")
    session.acquire("shared")
    session.frame_received(join_notice("shared", (ALICE,), ALICE))
    session.acquire("shared")
    session.connection_lost(Failure(ConnectionLost()))
    assert result_of(session.leave("left")) is None  # at once: we are in no group
    new = session.join("new")
    released = session.release("shared")  # one share of two
    assert result_of(released) is None and session.holders("shared") == 1
    later = session.acquire("later")
    link = FakeLink()
    session.relink(link, ALICE)
    assert link.sent == [("join", g) for g in (b"kept", b"shared", b"new", b"later")]
    for group in ("kept", "shared", "new"):
        session.frame_received(join_notice(group, (ALICE,), ALICE))
    assert result_of(new) is None and pending(later) and len(events) == 1
    session.frame_received(join_notice("later", (ALICE,), ALICE))
    assert result_of(later) is None and isinstance(events[-1], SessionBack)


def test_a_join_under_way_when_lost_is_made_again_and_its_waiter_fires_then() -> None:
    session, link, _, _ = reconnecting()
    d = session.join("grp")
    assert link.sent == [("join", b"grp")]
    session.connection_lost(Failure(ConnectionLost()))
    assert pending(d)
    again = FakeLink()
    session.relink(again, ALICE)
    assert again.sent == [("join", b"grp")] and pending(d)
    session.frame_received(join_notice("grp", (ALICE,), ALICE))
    assert result_of(d) is None


def test_lost_again_before_back_is_told_and_back_counts_from_the_first_loss() -> None:
    session, _, clock, events = reconnecting()
    joined(session, "grp")
    session.connection_lost(Failure(ConnectionLost()))
    first = FakeLink()
    session.relink(first, ALICE)
    clock.now += 2
    session.connection_lost(Failure(ConnectionLost()), link=first)
    assert [type(e) for e in events] == [SessionLost, SessionLost]
    second = FakeLink()
    session.relink(second, ALICE)
    assert second.sent == [("join", b"grp")]
    session.frame_received(join_notice("grp", (ALICE,), ALICE))
    assert events[2:] == [SessionBack(ALICE, 2.0, ALICE)]


def test_late_news_of_an_earlier_link_is_ignored() -> None:
    session, old, _, events = reconnecting(membership=False)
    session.connection_lost(Failure(ConnectionLost()), link=old)
    new = FakeLink()
    session.relink(new, ALICE)  # no groups, no notices: back at once
    assert isinstance(events[-1], SessionBack)
    session.connection_lost(Failure(ConnectionLost()), link=old)
    assert session.connected and len(events) == 2


def test_another_daemon_name_moves_the_private_group_listeners() -> None:
    session, _, _, events = reconnecting(membership=False)
    mine: list[Any] = []
    session.add_listener(mine.append, ALICE)
    session.connection_lost(Failure(ConnectionLost()))
    with capturedLogs() as logs:
        session.relink(FakeLink(), "#alice#spread2")
    assert "reaches nobody" in " ".join(str(e.get("log_format")) for e in logs)
    assert (session.private_group, session.name, session.daemon_name) == (
        "#alice#spread2",
        "alice",
        "spread2",
    )
    assert events[-1] == SessionBack("#alice#spread2", 0.0, ALICE)
    message = wire.RegularMessage(wire.AGREED_MESS, "#bob#spread2", ("#alice#spread2",), 0, b"x")
    session.frame_received(message)
    assert mine == [message]


def test_producers_and_writability_wait_while_away() -> None:
    session, _, _, _ = reconnecting(membership=False)
    producer = FakeProducer()
    session.register_producer(producer)
    session.connection_lost(Failure(ConnectionLost()))
    assert producer.events == ["pause"] and not session.writable
    writable = session.whenWritable()
    assert pending(writable)
    session.resume_writing()  # the dead link's late news changes nothing
    assert pending(writable)
    session.relink(FakeLink(), ALICE)
    assert producer.events == ["pause", "resume"] and result_of(writable) is None


def test_disconnect_while_away_ends_it_for_good() -> None:
    session, _, _, _ = reconnecting()
    joined(session, "grp")
    session.connection_lost(Failure(ConnectionLost()))
    join = session.join("more")
    receiving = session.receive()
    ended = session.whenDisconnected()
    result_of(session.disconnect())
    assert result_of(ended) is None
    assert failure_of(join).check(errors.SessionClosed)
    assert failure_of(receiving).check(errors.SessionClosed)
    with pytest.raises(errors.SessionClosed):
        session.relink(FakeLink(), ALICE)


def test_a_session_that_does_not_reconnect_ends_when_lost() -> None:
    link = FakeLink()
    session = SpreadSession(link, ALICE)
    events: list[Any] = []
    session.add_reconnect_listener(events.append)
    session.connection_lost(Failure(ConnectionLost()), link=link)
    assert result_of(session.whenDisconnected()) is None and events == []
    with pytest.raises(errors.SessionClosed):
        session.relink(FakeLink(), ALICE)


# --------------------------------------------------------------------------- keep_session


def test_a_kept_session_comes_back_with_its_name_groups_and_listeners() -> None:
    daemon = RestartableDaemon()
    alice, bob = daemon.session("alice"), daemon.session("bob")
    events: list[Any] = []
    alice.add_reconnect_listener(events.append)
    heard: list[Any] = []
    alice.add_listener(heard.append, "chat")
    alice.join("chat")
    bob.join("chat")
    daemon.flush()
    ended = alice.whenDisconnected()

    daemon.kill()
    assert [type(e) for e in events] == [SessionLost]
    assert not alice.connected and pending(ended)
    daemon.advance(3.0)  # refused meanwhile: 0.2 s, then doubling to 1 s
    tries = [round(t, 3) for t, name in daemon.attempts if name == "alice"]
    assert tries == [0.0, 0.2, 0.6, 1.4, 2.4]

    daemon.restart()
    daemon.advance(1.0)
    assert alice.connected and alice.private_group == "#alice#localhost"
    assert events[1] == SessionBack("#alice#localhost", pytest.approx(3.4), "#alice#localhost")
    assert daemon.members("chat") == ("#alice#localhost", "#bob#localhost")
    heard.clear()
    bob.multicast("chat", b"welcome back", wire.AGREED_MESS)
    daemon.flush()
    assert [f.data for f in heard if isinstance(f, wire.RegularMessage)] == [b"welcome back"]
    assert pending(ended)


def test_the_name_the_daemon_invented_is_asked_for_again() -> None:
    daemon = RestartableDaemon()
    session = daemon.session()
    invented = session.name
    assert invented.startswith("r")
    daemon.kill()
    daemon.restart()
    daemon.advance(1.0)
    assert [name for _, name in daemon.attempts] == [None, invented]
    assert session.connected and session.name == invented


def test_disconnect_stops_reconnecting() -> None:
    daemon = RestartableDaemon()
    session = daemon.session("alice")
    daemon.kill()
    result_of(session.disconnect())
    daemon.restart()
    daemon.advance(60)
    assert len(daemon.attempts) == 1 and not session.connected


def test_a_permanent_refusal_ends_a_reconnecting_session() -> None:
    daemon = RestartableDaemon()
    session = daemon.session("alice")
    ended = session.whenDisconnected()
    daemon.kill()
    daemon.restart()
    daemon.refusals = [errors.IllegalName()]
    with capturedLogs() as logs:
        daemon.advance(60)
    assert result_of(ended) is None
    assert session.disconnect_reason is not None
    assert session.disconnect_reason.check(errors.IllegalName)
    assert len(daemon.attempts) == 2  # no retry
    assert any("not retrying" in str(e.get("log_format")) for e in logs)


def test_a_name_still_held_is_tried_again_a_few_times() -> None:
    daemon = RestartableDaemon()
    session = daemon.session("alice")
    daemon.kill()
    daemon.restart()
    daemon.refusals = [errors.NameNotUnique() for _ in range(4)]
    daemon.advance(10)
    assert session.connected and len(daemon.attempts) == 6

    daemon.kill()
    daemon.restart()
    daemon.refusals = [errors.NameNotUnique() for _ in range(5)]
    daemon.advance(10)
    assert not session.connected
    assert session.disconnect_reason is not None
    assert session.disconnect_reason.check(errors.NameNotUnique)


# --------------------------------------------------------------------------- TCP


def client_connection(reactor: MemoryReactorClock, index: int) -> tuple[StringTransport, Any]:
    host, port, factory, _timeout, _bind = reactor.tcpClients[index]
    proto: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    proto.makeConnection(transport)
    return transport, proto


def accept(proto: Any, transport: StringTransport, private_group: bytes) -> None:
    proto.dataReceived(wire.encode_auth_list(("NULL",)))
    transport.clear()
    proto.dataReceived(wire.encode_accept(private_group))


def reconnecting_over_tcp() -> tuple[MemoryReactorClock, SpreadSession, Any]:
    """``connect(..., "alice", reconnect=True)`` over a memory reactor, accepted."""
    reactor = MemoryReactorClock()
    d = connect(reactor, "tcp:host=127.0.0.1:port=4803", "alice", reconnect=True)
    transport, proto = client_connection(reactor, 0)
    accept(proto, transport, ALICE.encode())
    return reactor, result_of(d), proto


def test_connect_with_reconnect_comes_back_under_the_same_name_over_tcp() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, "tcp:host=127.0.0.1:port=4803", None, reconnect=True)
    transport, proto = client_connection(reactor, 0)
    assert transport.value() == wire.encode_connect(None)
    accept(proto, transport, b"#r17-1#localhost")
    session: SpreadSession = result_of(d)
    assert session.reconnects and session.name == "r17-1"
    joined_d = session.join("chat")
    proto.dataReceived(
        wire.encode_to_client(join_notice("chat", (session.private_group,), session.private_group))
    )
    assert result_of(joined_d) is None
    events: list[Any] = []
    session.add_reconnect_listener(events.append)

    proto.connectionLost(Failure(ConnectionLost("the daemon died")))
    assert [type(e) for e in events] == [SessionLost] and not session.connected
    reactor.advance(0.29)  # 0.2 s for a daemon on this machine, up to half more (jitter)
    reactor.advance(0.02)
    assert len(reactor.tcpClients) == 2
    transport, proto = client_connection(reactor, 1)
    assert transport.value() == wire.encode_connect("r17-1")  # the same name, asked for
    accept(proto, transport, b"#r17-1#localhost")
    assert transport.value() == wire.encode_join(b"#r17-1#localhost", b"chat")
    assert session.connected and len(events) == 1
    proto.dataReceived(
        wire.encode_to_client(join_notice("chat", (session.private_group,), session.private_group))
    )
    assert isinstance(events[-1], SessionBack) and events[-1].private_group == "#r17-1#localhost"


def test_a_connection_lost_before_the_session_was_back_is_tried_again() -> None:
    reactor, session, proto = reconnecting_over_tcp()
    session.join("chat")
    proto.dataReceived(wire.encode_to_client(join_notice("chat", (ALICE,), ALICE)))
    for attempt in (1, 2):
        proto.connectionLost(Failure(ConnectionLost()))
        reactor.advance(1.6)  # (0.2 s, then 0.4 s; up to half more each)
        assert len(reactor.tcpClients) == attempt + 1
        transport, proto = client_connection(reactor, attempt)
        accept(proto, transport, b"#alice#localhost")
        assert transport.value() == wire.encode_join(b"#alice#localhost", b"chat")
    proto.dataReceived(wire.encode_to_client(join_notice("chat", (ALICE,), ALICE)))
    assert session.connected and session.groups == {"chat"}


def test_connect_with_reconnect_fails_at_once_when_the_first_attempt_fails() -> None:
    reactor = MemoryReactorClock()
    d = connect(reactor, "tcp:host=127.0.0.1:port=4803", "alice", reconnect=True)
    _, proto = client_connection(reactor, 0)
    proto.dataReceived(b"\xfa")  # REJECT_NOT_UNIQUE
    assert failure_of(d).check(errors.NameNotUnique)
    reactor.advance(60)
    assert len(reactor.tcpClients) == 1  # no retry: the caller decides


def test_a_refusal_for_good_when_reconnecting_over_tcp_ends_the_session() -> None:
    reactor, session, proto = reconnecting_over_tcp()
    proto.connectionLost(Failure(ConnectionLost()))
    reactor.advance(0.31)
    _, proto = client_connection(reactor, 1)
    proto.dataReceived(b"\xf9")  # REJECT_VERSION
    reactor.advance(0)
    assert result_of(session.whenDisconnected()) is None
    assert session.disconnect_reason is not None
    assert session.disconnect_reason.check(errors.VersionRejected)
    reactor.advance(60)
    assert len(reactor.tcpClients) == 2
