"""BlockingSender from a plain thread, against a reactor running in another thread.

The reactor is a private SelectReactor (not the global one) serving the in-memory
daemon of :mod:`spreadqueue.testing`: no sockets, no sleeps; every call blocks until
the reactor thread has answered.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.threads import blockingCallFromThread

from spreadqueue._queue.blocking import BlockingSender
from spreadqueue._queue.errors import NoManager, RemoteError
from spreadqueue._queue.manager import ManagerService
from spreadqueue._queue.sender import Reply
from spreadqueue._queue.worker import Worker
from spreadqueue._spread.errors import SessionClosed
from spreadqueue.testing import FakeSpreadNetwork


@pytest.fixture
def reactor() -> Iterator[Any]:
    r = SelectReactor()
    r._registerAsIOThread = False  # leave the global reactor's IO-thread record alone
    thread = threading.Thread(target=r.run, kwargs={"installSignalHandlers": False})
    thread.start()
    yield r
    r.callFromThread(r.stop)
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def network(reactor: Any) -> FakeSpreadNetwork:
    def setup() -> FakeSpreadNetwork:
        network = FakeSpreadNetwork(reactor)
        ManagerService(reactor, network.session("mgr"), "jobs").startService()
        worker = Worker(reactor, network.session("wrk"), "jobs", concurrency=2)

        @worker.handler("myfunc")
        def myfunc(args: dict[str, Any]) -> dict[str, Any]:
            return {"response": "I heard you!", **args}

        @worker.handler("boom")
        def boom(args: Any) -> None:
            raise RuntimeError("kaput")

        worker.start()
        return network

    return blockingCallFromThread(reactor, setup)  # type: ignore[no-any-return]


def test_seed_synopsis_from_a_plain_thread(reactor: Any, network: FakeSpreadNetwork) -> None:
    with BlockingSender("jobs", reactor=reactor, session_factory=network.connect) as sender:
        task_id = sender.submit("myfunc", {"name": "value"})
        reply = sender.receive(timeout=10)
        assert reply == Reply(task_id, {"response": "I heard you!", "name": "value"})
        assert sender.rpc("myfunc", {"n": 1}) == {"response": "I heard you!", "n": 1}
        with pytest.raises(RemoteError, match="kaput"):
            sender.rpc("boom")
        with pytest.raises(TimeoutError):
            sender.receive(timeout=0.05)
        assert sender.pending == 0
    assert not sender.session.connected


def test_no_manager_is_reported(reactor: Any, network: FakeSpreadNetwork) -> None:
    with BlockingSender(
        "nobody", reactor=reactor, session_factory=network.connect, ack_timeout=0.2
    ) as sender:
        with pytest.raises(NoManager):
            sender.rpc("myfunc", {})


def test_queue_name_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPREAD_QUEUE_NAME", raising=False)
    with pytest.raises(ValueError, match="SPREAD_QUEUE_NAME"):
        BlockingSender()


def test_the_queue_and_daemon_come_from_the_environment(
    reactor: Any, network: FakeSpreadNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As every command: $SPREAD_QUEUE_NAME, else $SPREAD_QUEUE, names the queue, and
    $SPREAD_DAEMON the daemon to connect to."""
    monkeypatch.delenv("SPREAD_QUEUE_NAME", raising=False)
    monkeypatch.setenv("SPREAD_QUEUE", "jobs")
    with BlockingSender(reactor=reactor, session_factory=network.connect) as sender:
        assert sender.rpc("myfunc", {"n": 1}, timeout=5) == {"response": "I heard you!", "n": 1}
    with socket.socket() as listener:  # a "daemon" that hangs up: we see who came
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        monkeypatch.setenv("SPREAD_DAEMON", f"{listener.getsockname()[1]}@127.0.0.1")
        failed: list[BaseException] = []

        def open_sender() -> None:
            try:
                BlockingSender(reactor=reactor, connect_timeout=5)
            except Exception as e:
                failed.append(e)

        thread = threading.Thread(target=open_sender)
        thread.start()
        connection, _ = listener.accept()  # it came to $SPREAD_DAEMON
        connection.close()
        thread.join(10)
    assert len(failed) == 1 and isinstance(failed[0], SessionClosed), failed
