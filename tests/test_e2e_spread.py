"""End to end: our client against a real daemon process over loopback TCP.

The daemon is ``twist spread-daemon`` on a free port, or the external daemon named by
SPREADQUEUE_TEST_SPREAD (then this suite checks interoperability with it).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import pytest
from procs import skip_if_external, spread_daemon
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from spreadqueue._spread import wire
from spreadqueue._spread.client import connect
from spreadqueue._spread.errors import MessageTooLong, NameNotUnique
from spreadqueue._spread.session import SpreadSession


def unique_name(prefix: str = "t") -> str:
    """A private name no other test (or test run on a shared daemon) uses."""
    return (prefix + uuid.uuid4().hex)[:10]


def unique_group(prefix: str = "g") -> str:
    return prefix + uuid.uuid4().hex[:12]


@pytest.fixture(scope="class")
def daemon_endpoint(request: Any, tmp_path_factory: Any) -> Any:
    with spread_daemon(tmp_path_factory.mktemp("spread")) as endpoint:
        request.cls.endpoint = endpoint
        yield endpoint


class Frames(list):  # type: ignore[type-arg]
    """The frames a listener saw, with a way to wait until enough have come."""

    __hash__ = object.__hash__  # listeners are kept in a dict

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[Any, Deferred[None]]] = []

    def __call__(self, frame: Any) -> None:
        self.append(frame)
        for waiter in list(self._waiters):
            if waiter[0]():
                self._waiters.remove(waiter)
                waiter[1].callback(None)


def frames_into(session: SpreadSession, group: str | None = None) -> Frames:
    got = Frames()
    session.add_listener(got, group)
    return got


async def until(frames: Frames, condition: Any, what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds after some frame arrives, with a deadline."""
    from twisted.internet import reactor

    if condition():
        return
    d: Deferred[None] = Deferred()
    frames._waiters.append((condition, d))
    d.addTimeout(timeout, reactor)
    try:
        await d
    except Exception as e:
        raise AssertionError(f"timed out waiting for {what}: {list(frames)!r}") from e


@pytest.mark.usefixtures("daemon_endpoint")
class SpreadOverTCP(unittest.TestCase):
    endpoint: str

    async def _session(self, name: str | None = None, **kw: Any) -> SpreadSession:
        from twisted.internet import reactor

        session = await connect(reactor, self.endpoint, name or unique_name(), **kw)
        self.addCleanup(lambda: session.disconnect() if session.connected else None)
        return session

    async def test_join_multicast_every_service_and_disconnect_notice(self) -> None:
        alice = await self._session()
        bob = await self._session()
        group = unique_group()
        at_alice = frames_into(alice, group)
        await alice.join(group)
        await bob.join(group)
        await until(at_alice, lambda: len(at_alice) >= 2, "bob's join notice at alice")
        notice = at_alice[1]
        assert isinstance(notice, wire.MembershipMessage)
        assert notice.cause == wire.CAUSED_BY_JOIN
        assert notice.changed_member == bob.private_group
        assert set(notice.members) == {alice.private_group, bob.private_group}

        for i, service in enumerate(wire.SERVICE_LEVELS):
            bob.multicast(group, b"m%d" % i, service=service, mess_type=100 + i)
        await until(at_alice, lambda: len(at_alice) >= 2 + len(wire.SERVICE_LEVELS), "six messages")
        got = [f for f in at_alice if isinstance(f, wire.RegularMessage)]
        assert [(m.service, m.data, m.mess_type, m.sender) for m in got] == [
            (s, b"m%d" % i, 100 + i, bob.private_group) for i, s in enumerate(wire.SERVICE_LEVELS)
        ]

        await bob.disconnect()
        await until(
            at_alice, lambda: isinstance(at_alice[-1], wire.MembershipMessage), "the leave notice"
        )
        assert at_alice[-1].cause == wire.CAUSED_BY_DISCONNECT
        assert at_alice[-1].changed_member == bob.private_group

    async def test_unicast_self_discard_and_large_messages(self) -> None:
        alice = await self._session()
        bob = await self._session()
        at_bob = frames_into(bob)
        at_alice = frames_into(alice)
        big = os.urandom(wire.MAX_DATA_ONE_GROUP)  # 143120 bytes: the largest that works
        alice.multicast(bob.private_group, big, service=wire.RELIABLE_MESS)
        alice.multicast(bob.private_group, b"x" * 100_000, service=wire.FIFO_MESS)
        alice.multicast([bob.private_group, alice.private_group], b"discard", self_discard=True)
        await until(at_bob, lambda: len(at_bob) >= 3, "three unicasts")
        assert [len(m.data) for m in at_bob] == [len(big), 100_000, 7]
        assert at_bob[0].data == big
        assert at_alice == []  # SELF_DISCARD: no copy back
        with pytest.raises(MessageTooLong):
            alice.multicast(bob.private_group, bytes(wire.MAX_DATA_ONE_GROUP + 1))

    async def test_duplicate_name_is_refused(self) -> None:
        name = unique_name()
        await self._session(name)
        with pytest.raises(NameNotUnique):
            await self._session(name)

    async def test_invented_name_and_membership_off(self) -> None:
        from twisted.internet import reactor

        anonymous = await connect(reactor, self.endpoint, None, membership=False)
        self.addCleanup(anonymous.disconnect)
        assert anonymous.private_group.startswith("#r")
        member = await self._session()
        group = unique_group()
        quiet = frames_into(anonymous)
        await anonymous.join(group)
        await member.join(group)
        member.multicast(group, b"data")
        await until(quiet, lambda: len(quiet) > 0, "the data message")
        assert all(isinstance(f, wire.RegularMessage) for f in quiet)

    @skip_if_external("garbage would hit a shared daemon")
    async def test_garbage_drops_only_that_session(self) -> None:
        good = await self._session()
        victim = await self._session()
        group = unique_group()
        at_good = frames_into(good, group)
        await good.join(group)
        await victim.join(group)
        # A raw client that speaks garbage after a valid handshake is dropped alone.
        host, port = _host_port(self.endpoint)
        raw = socket.create_connection((host, port), timeout=5)
        self.addCleanup(raw.close)
        raw.sendall(wire.encode_connect(unique_name("raw")))
        assert raw.recv(6)[0] == 5
        raw.sendall(wire.encode_auth_choice())
        raw.sendall(b"\xff" * 48)
        raw.settimeout(5)
        while raw.recv(4096):
            pass  # the daemon closes the connection
        victim.multicast(group, b"still here")
        await until(
            at_good, lambda: any(isinstance(f, wire.RegularMessage) for f in at_good), "delivery"
        )


def _host_port(endpoint: str) -> tuple[str, int]:
    fields = dict(p.split("=", 1) for p in endpoint.split(":")[1:] if "=" in p)
    return fields.get("host", "127.0.0.1"), int(fields["port"])
