"""spreadqueue.aio: the queue on an asyncio loop (plain asyncio and uvloop).

The queue's objects run on a real loop here, over FakeSpreadNetwork (the daemon's own
core with in-process sessions, driven by the loop's timers): no sockets, and no timer
longer than a call's own timeout. Connecting over TCP is checked against asyncio
servers on free loopback ports, and reconnecting (``reconnect=True``) against a
scripted daemon's handshake there, stopped and started again on its port; the examples,
a whole program and a daemon restart under load against a real daemon are in
tests/test_e2e_aio.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from spreadqueue import (
    ConnectTimeout,
    ManagerService,
    NoManager,
    QueueError,
    ReaderStopped,
    RemoteError,
    Reply,
    SessionBack,
    SessionLost,
    SessionReconnecting,
    Task,
    TaskTimeout,
    aio,
)
from spreadqueue._aio.bridge import as_deferred, wait
from spreadqueue._aio.clock import LoopClock
from spreadqueue._aio.link import daemon_address
from spreadqueue._aio.logs import forward_to_logging
from spreadqueue._queue.messages import Kind, mess_type
from spreadqueue._spread import wire
from spreadqueue._spread.errors import VersionRejected
from spreadqueue.testing import FakeSpreadNetwork

T = TypeVar("T")

LOOPS = ["asyncio", "uvloop"]
#: No test may take longer than this on a loaded machine.
DEADLINE = 30.0


@pytest.fixture(params=LOOPS)
def run(request: Any) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a coroutine to its end on a fresh loop of the parametrized kind."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        runner: Callable[[Any], Any] = uvloop.run
    else:
        runner = asyncio.run

    def run(coro: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, DEADLINE)

        return runner(bounded())  # type: ignore[no-any-return]

    return run


def clock_here() -> LoopClock:
    return LoopClock(asyncio.get_running_loop(), threading.get_ident())


@asynccontextmanager
async def fake_queue(queue: str = "q", manager: bool = True) -> AsyncIterator[aio.Session]:
    """An aio.Session on an in-memory Spread network with a manager of ``queue``."""
    clock = clock_here()
    network = FakeSpreadNetwork(clock)  # type: ignore[arg-type]
    service = ManagerService(clock, network.session(), queue)
    if manager:
        service.startService()
    session = aio.Session(network.session(), clock)
    try:
        yield session
    finally:
        await session.close()
        if manager:
            await wait(service.stopService(), clock.loop)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- clock


def test_the_loop_clock_is_a_reactor_for_time_and_threads(run: Any) -> None:
    async def main() -> list[str]:
        clock = clock_here()
        verifyObject(IReactorTime, clock)
        verifyObject(IReactorFromThreads, clock)
        assert clock.seconds() == pytest.approx(asyncio.get_running_loop().time(), abs=0.1)
        ran: list[str] = []
        done = asyncio.Event()
        # (far enough ahead that it cannot be due already when the loop next turns on a
        # loaded machine: uvloop runs due timers before call_soon callbacks)
        later = clock.callLater(0.25, ran.append, "later")
        first = clock.callLater(0, ran.append, "first")
        dropped = clock.callLater(0, ran.append, "dropped")
        assert later.getTime() > first.getTime() and dropped.active()
        dropped.cancel()
        assert not dropped.active()
        with pytest.raises(AlreadyCancelled):
            dropped.cancel()
        clock.callLater(0.3, done.set)
        await done.wait()
        assert not first.active()
        with pytest.raises(AlreadyCalled):
            first.cancel()
        thread = threading.Thread(target=clock.callFromThread, args=(ran.append, "thread"))
        thread.start()
        thread.join()
        while "thread" not in ran:
            await asyncio.sleep(0)
        return ran

    assert run(main()) == ["first", "later", "thread"]


# ----------------------------------------------------------------------------- bridge


def test_waiting_for_a_deferred_gives_its_result_or_raises_its_exception(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await wait(succeed(7), loop) == 7
        with pytest.raises(KeyError):
            await wait(fail(KeyError("k")), loop)
        d: Deferred[int] = Deferred()
        loop.call_soon(d.callback, 8)
        assert await wait(d, loop) == 8

    run(main())


def test_cancelling_the_waiting_task_cancels_the_deferred(run: Any) -> None:
    async def main() -> list[object]:
        cancelled: list[object] = []
        d: Deferred[int] = Deferred(cancelled.append)
        waiting = asyncio.ensure_future(wait(d, asyncio.get_running_loop()))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert d.called  # failed with Twisted's CancelledError, consumed
        return cancelled

    assert len(run(main())) == 1


def test_a_coroutine_as_a_deferred(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def value() -> int:
            await asyncio.sleep(0)
            return 5

        async def boom() -> None:
            await asyncio.sleep(0)
            raise ValueError("boom")

        assert await wait(as_deferred(value(), loop), loop) == 5
        d = as_deferred(boom(), loop)
        failures: list[Any] = []
        d.addErrback(failures.append)
        while not failures:
            await asyncio.sleep(0)
        assert failures[0].check(ValueError)
        assert "in boom" in failures[0].getTraceback()  # the handler's traceback travels

        started, finished = asyncio.Event(), []

        async def forever() -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            finally:
                finished.append("cleaned up")

        d = as_deferred(forever(), loop)
        await started.wait()
        d.cancel()
        with pytest.raises(CancelledError):  # Twisted's: what a worker counts as cancelled
            await wait(d, loop)
        while not finished:
            await asyncio.sleep(0)

    run(main())


# ----------------------------------------------------------------------------- queue


def test_rpc_submit_and_receive_with_coroutine_and_thread_handlers(run: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:
            loop_thread = threading.get_ident()
            threads: list[int] = []

            async def double(n: int) -> int:
                await asyncio.sleep(0.001)  # real asyncio awaits work in handlers
                return 2 * n

            def blocking(n: int) -> int:
                threads.append(threading.get_ident())
                return n + 1

            worker = session.worker("q", {"double": double, "blocking": blocking})
            await worker.start()
            sender = session.sender("q")
            assert await sender.rpc("double", 21) == 42
            assert await sender.rpc("blocking", 1) == 2
            assert threads and threads[0] != loop_thread  # plain functions: a thread
            task_id = sender.submit("double", 4)
            assert await sender.receive() == Reply(task_id, 8, True)
            assert sender.queue == worker.queue == "q"
            assert worker.stats["completed"] == 3 and sender.pending == 0

    run(main())


def test_enqueue_holds_a_detached_task_that_runs_later(run: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:
            ran = asyncio.Event()

            async def job(n: int) -> None:
                assert n == 7
                ran.set()

            sender = session.sender("q")
            task_id = await sender.enqueue("job", 7, ttl=60)  # held: no worker yet
            assert isinstance(task_id, str) and sender.pending == 0
            await session.worker("q", {"job": job}).start()
            await asyncio.wait_for(ran.wait(), 5)

    run(main())


def test_a_reply_reader_gets_the_answers_of_detached_tasks(run: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:

            async def double(n: int) -> int:
                if n < 0:
                    raise ValueError("negative")
                return 2 * n

            await session.worker("q", {"double": double}).start()
            replies = session.replies("answers")
            await replies.start()
            sender = session.sender("q")
            first = await sender.enqueue("double", 21, reply_to="answers")
            assert await replies.receive() == Reply(first, 42, True)
            failed = await sender.enqueue("double", -1, reply_to="answers")
            with pytest.raises(RemoteError) as raised:
                await replies.receive()
            assert raised.value.task_id == failed and raised.value.type_name == "ValueError"
            # async for: failures come as values, and the loop ends once stopped
            last = await sender.enqueue("double", -2, reply_to="answers")
            again = await sender.enqueue("double", 5, reply_to="answers")
            await _until(lambda: replies.buffered >= 2)
            await replies.stop()
            got = [answer async for answer in replies]
            assert isinstance(got[0], RemoteError) and got[0].task_id == last
            assert got[1:] == [Reply(again, 10, True)]
            with pytest.raises(ReaderStopped):
                await replies.receive()
            assert replies.group == "answers" and replies.stats["answers"] == 4

    run(main())


def test_members_stopped_before_the_session_closes_leave_it(run: Any) -> None:
    """A reader per consumer, made and stopped on a long-lived session: the session
    does not keep them (nor their answers) until it closes."""

    async def main() -> None:
        async with fake_queue() as session:
            for i in range(3):
                async with session.replies(f"answers-{i}"):
                    pass
                await session.sender("q").stop()
                await session.worker("q", {"f": lambda _: 1}, pool="loop").stop()
            kept = session.sender("q")
            assert list(session._members) == [kept]

    run(main())


def test_failures_are_the_queue_s_own_exceptions(run: Any, caplog: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:

            async def boom(_: object) -> None:
                raise KeyError("nope")

            async def hang(_: object) -> None:
                await asyncio.sleep(3600)

            await session.worker("q", {"boom": boom, "hang": hang}, concurrency=2).start()
            sender = session.sender("q")
            with pytest.raises(RemoteError) as raised:
                await sender.rpc("boom", None)
            assert raised.value.type_name == "KeyError"
            assert "in boom" in raised.value.traceback
            with pytest.raises(TaskTimeout, match="no worker serving function 'missing'"):
                await sender.rpc("missing", None, timeout=0.2)  # waits for a worker that has it
            with pytest.raises(TaskTimeout):
                await sender.rpc("hang", None, timeout=0.05)
            sender.submit("boom", 1)
            with pytest.raises(RemoteError):
                await sender.receive()

    forward_to_logging()  # (aio.connect does it; the fake queue does not connect)
    with caplog.at_level(logging.INFO, logger="spreadqueue"):
        run(main())
    # the worker's log says what failed, under the public class's name
    failed = [
        r for r in caplog.records if r.levelno == logging.WARNING and "boom" in r.getMessage()
    ]
    assert failed and {r.name for r in failed} == {"spreadqueue.aio.Worker"}


def test_a_worker_s_malformed_message_warning_is_the_public_class_s_too(
    run: Any, caplog: Any
) -> None:
    async def main() -> None:
        async with fake_queue() as session:
            worker = session.worker("q", {"f": lambda _: 1}, pool="loop")
            await worker.start()
            private = session.spread.private_group
            session.spread.multicast(private, b"\xc1", mess_type=mess_type(Kind.ASSIGN))
            await _until(lambda: worker.stats["malformed"])

    forward_to_logging()
    with caplog.at_level(logging.INFO, logger="spreadqueue"):
        run(main())
    dropped = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert dropped and {r.name for r in dropped} == {"spreadqueue.aio.Worker"}


def test_no_manager_is_told_by_the_ack_timeout(run: Any) -> None:
    async def main() -> None:
        async with fake_queue(manager=False) as session:
            sender = session.sender("q", ack_timeout=0.05)
            with pytest.raises(NoManager):
                await sender.rpc("f", None)

    run(main())


def test_cancelling_an_rpc_cancels_the_running_handler(run: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:
            started, cancelled = asyncio.Event(), asyncio.Event()

            async def slow(_: object) -> None:
                started.set()
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

            worker = session.worker("q", {"slow": slow})
            await worker.start()
            sender = session.sender("q")
            call = asyncio.ensure_future(sender.rpc("slow", None))
            await started.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert sender.pending == 0
            await cancelled.wait()  # the manager told the worker, which cancelled it
            while worker.stats["cancelled"] != 1:
                await asyncio.sleep(0.001)

    run(main())


def test_respond_from_a_handler_thread_and_from_the_loop(run: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:
            worker = session.worker("q")

            @worker.handler("twice", with_task=True)
            def twice(task: Task, n: int) -> int:  # in a pool thread
                worker.respond(task, n)
                return n + 1

            @worker.handler("early", with_task=True)
            async def early(task: Task, n: int) -> None:  # on the loop
                worker.respond(task, n * 10)

            await worker.start()
            sender = session.sender("q")
            sender.submit("twice", 1)
            first, last = await sender.receive(), await sender.receive()
            assert (first.value, first.final, last.value, last.final) == (1, False, 2, True)
            assert await sender.rpc("early", 3) == 30

    run(main())


def test_worker_options_are_checked(run: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:
            with pytest.raises(ValueError, match="'threads' or 'loop'"):
                session.worker("q", pool="processes")
            worker = session.worker("q", pool="loop")
            with pytest.raises(ValueError, match="'threads' or 'loop'"):
                worker.add_handler("f", print, pool="processes")
            inline: list[int] = []
            worker.add_handler("inline", lambda n: inline.append(threading.get_ident()))
            await worker.start()
            await session.sender("q").rpc("inline", None)
            assert inline == [threading.get_ident()]  # pool="loop": on the loop itself

    run(main())


def test_the_queue_defaults_to_spread_queue_name(run: Any, monkeypatch: Any) -> None:
    async def main() -> None:
        async with fake_queue("fromenv") as session:
            monkeypatch.setenv("SPREAD_QUEUE_NAME", "fromenv")
            await session.worker(handlers={"one": lambda _: 1}, pool="loop").start()
            assert await session.sender().rpc("one") == 1
            monkeypatch.delenv("SPREAD_QUEUE_NAME")
            monkeypatch.delenv("SPREAD_QUEUE", raising=False)
            with pytest.raises(ValueError, match="SPREAD_QUEUE_NAME"):
                session.sender()

    run(main())


def test_closing_the_session_stops_its_senders_and_workers(run: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:
            worker = session.worker("q", {"one": lambda _: 1}, pool="loop")
            await worker.start()
            sender = session.sender("q")
            assert await sender.rpc("one") == 1
            await session.close()
            assert not session.connected
            with pytest.raises(QueueError):
                sender.submit("one")
            await session.close()  # again: nothing happens

    run(main())


def test_senders_and_workers_as_context_managers(run: Any) -> None:
    async def main() -> None:
        async with fake_queue() as session:
            async with aio.Worker(session, "q", {"one": lambda _: 1}, pool="loop") as worker:
                async with aio.Sender(session, "q") as sender:
                    assert await sender.rpc("one") == 1
                assert worker.status()["state"] == "ready"
            assert worker.status()["state"] == "stopped"

    run(main())


# ----------------------------------------------------------------------------- connect


def test_daemon_addresses() -> None:
    assert daemon_address("4803") == ("127.0.0.1", 4803)
    assert daemon_address("4803@spread1") == ("spread1", 4803)
    assert daemon_address("4803@[::1]") == ("::1", 4803)
    assert daemon_address("tcp:host=10.0.0.5:port=4804") == ("10.0.0.5", 4804)
    for bad in ("unix:path=/tmp/4803", "tcp:host=h", "70000@h", "spread1"):
        with pytest.raises(ValueError):
            daemon_address(bad)


def test_the_daemon_defaults_to_spread_daemon(monkeypatch: Any) -> None:
    monkeypatch.setenv("SPREAD_DAEMON", "4805@elsewhere")
    assert daemon_address(None) == ("elsewhere", 4805)
    monkeypatch.delenv("SPREAD_DAEMON")
    assert daemon_address(None) == ("localhost", 4803)


async def _silent_server() -> tuple[asyncio.AbstractServer, int, list[asyncio.Future[None]]]:
    """A TCP server that accepts and never answers; each connection's end is a future."""
    loop = asyncio.get_running_loop()
    ends: list[asyncio.Future[None]] = []

    class Silent(asyncio.Protocol):
        def __init__(self) -> None:
            self.end = loop.create_future()
            ends.append(self.end)

        def connection_lost(self, exc: Exception | None) -> None:
            self.end.set_result(None)

    server = await loop.create_server(Silent, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], ends


def test_connect_times_out_waiting_for_the_handshake_and_closes(run: Any) -> None:
    async def main() -> str:
        server, port, ends = await _silent_server()
        async with server:
            with pytest.raises(ConnectTimeout) as raised:
                await aio.connect(f"{port}@127.0.0.1", timeout=0.1)
            await asyncio.gather(*ends)  # our end closed the connection
        return str(raised.value)

    assert "waiting for the daemon's handshake" in run(main())


@pytest.mark.parametrize("reconnect", [False, True])
def test_cancelling_connect_closes_the_connection(run: Any, reconnect: bool) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        server, port, ends = await _silent_server()
        async with server:
            connecting = asyncio.ensure_future(
                aio.connect(f"tcp:host=127.0.0.1:port={port}", reconnect=reconnect)
            )
            while not ends:
                await asyncio.sleep(0.001)
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            assert not asyncio.all_tasks() - before  # the attempt has ended too
            await asyncio.gather(*ends)

    run(main())


def test_connect_where_nothing_listens_raises_oserror(run: Any) -> None:
    async def main() -> None:
        server, port, _ = await _silent_server()
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            await aio.connect(f"{port}@127.0.0.1")

    run(main())


def test_a_bad_private_name_is_refused_before_connecting(run: Any) -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            await aio.connect("1@127.0.0.1", name="far-too-long-a-name")

    run(main())


# ----------------------------------------------------------------------------- reconnect


class _ScriptedDaemon:
    """A Spread daemon's handshake and join notices, on a loopback asyncio server
    (enough for a session that reconnects; no messages are routed).

    ``names`` is the private name each connection asked for; ``silent`` makes new
    connections get no answer; ``refuse`` (a reject code) refuses the next one.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.connections: list[asyncio.Transport] = []
        self.ended: list[asyncio.Future[None]] = []
        self.silent = False
        self.refuse: int | None = None
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ScriptedConnection(self, loop), "127.0.0.1", self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """kill -9: stop listening and drop every connection at once."""
        assert self._server is not None
        self._server.close()
        for transport in self.connections:
            transport.abort()
        await self._server.wait_closed()
        await asyncio.gather(*self.ended)

    @property
    def endpoint(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}"


class _ScriptedConnection(asyncio.Protocol):
    def __init__(self, daemon: _ScriptedDaemon, loop: asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.decoder = wire.DaemonDecoder()
        self.private_group = ""
        self.end = loop.create_future()
        daemon.ended.append(self.end)

    def connection_made(self, transport: Any) -> None:  # (uvloop's is no asyncio.Transport)
        self.transport: asyncio.Transport = transport
        self.daemon.connections.append(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.end.set_result(None)

    def data_received(self, data: bytes) -> None:
        daemon, write = self.daemon, self.transport.write
        for frame in self.decoder.feed(data):
            if isinstance(frame, wire.ConnectRequest):
                daemon.names.append(frame.name)
                if daemon.silent:
                    return
                if daemon.refuse is not None:
                    write(wire.encode_reject(daemon.refuse))
                    daemon.refuse = None
                    self.transport.close()
                    return
                self.private_group = f"#{frame.name or 'r1'}#scripted"
                write(wire.encode_auth_list(("NULL",)))
                self.decoder.expect_auth()
            elif isinstance(frame, wire.AuthChoice):
                self.decoder.accepted(self.private_group)
                write(wire.encode_accept(self.private_group))
            elif isinstance(frame, wire.Join):
                me = self.private_group
                notice = wire.MembershipMessage(
                    wire.REG_MEMB_MESS | wire.CAUSED_BY_JOIN,
                    frame.group,
                    wire.CAUSED_BY_JOIN,
                    wire.GroupId(1, 1, 1),
                    (me,),
                    ((me,),),
                    0,
                    me,
                )
                write(wire.encode_to_client(notice))
            elif isinstance(frame, wire.Kill):
                self.transport.close()


async def _until(condition: Callable[[], object]) -> None:
    """Let the loop run until ``condition()`` (the test's DEADLINE bounds the wait)."""
    while not condition():
        await asyncio.sleep(0.005)


async def _restart_into_silence(daemon: _ScriptedDaemon, lost: asyncio.Event) -> None:
    """Kill ``daemon`` under its one session; once ``lost`` is set, start a new one whose
    handshake never answers, and return when the session's attempt hangs in it."""
    await daemon.stop()
    await lost.wait()
    daemon.silent = True
    await daemon.start()
    await _until(lambda: len(daemon.names) == 2)


def _tasks_beside(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """The tasks running now that did not run ``before`` (taken at the test's start)."""
    return asyncio.all_tasks() - before


def test_a_reconnecting_session_comes_back_under_its_name_in_its_groups(run: Any) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        daemon = _ScriptedDaemon()
        await daemon.start()
        events: list[Any] = []
        async with aio.connect(daemon.endpoint, reconnect=True) as session:
            assert session.reconnects and session.connected
            session.add_reconnect_listener(events.append)
            await session.join("chat")
            invented = session.private_group  # the daemon picked the name: asked again
            await daemon.stop()
            await _until(lambda: events)
            assert events == [SessionLost(invented, events[0].reason)]
            assert not session.connected
            with pytest.raises(SessionReconnecting):
                session.spread.multicast("chat", b"away", wire.AGREED_MESS)
            await daemon.start()  # a new daemon on the same port
            await _until(lambda: len(events) == 2)
            assert isinstance(events[1], SessionBack) and events[1].private_group == invented
            assert session.connected and session.spread.groups == {"chat"}
            assert daemon.names == ["", "r1"]
        await daemon.stop()
        assert not _tasks_beside(before)

    run(main())


def test_closing_a_session_while_it_reconnects_stops_trying(run: Any) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        daemon = _ScriptedDaemon()
        await daemon.start()
        session = await aio.connect(daemon.endpoint, "alice", reconnect=True)
        lost = asyncio.Event()
        session.add_reconnect_listener(lambda e: lost.set())
        await _restart_into_silence(daemon, lost)
        await session.close()
        assert not session.connected and not _tasks_beside(before)
        await asyncio.gather(*daemon.ended)  # the attempt's connection was closed
        await daemon.stop()
        assert daemon.names == ["alice", "alice"]  # (and no attempt after the close)

    run(main())


def test_cancelling_async_with_while_reconnecting_ends_cleanly(run: Any) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        daemon = _ScriptedDaemon()
        await daemon.start()
        lost, stopped = asyncio.Event(), asyncio.Event()
        sessions: list[aio.Session] = []

        async def app() -> None:
            async with aio.connect(daemon.endpoint, "bob", reconnect=True) as session:
                sessions.append(session)
                session.add_reconnect_listener(lambda e: lost.set())
                async with session.worker("q", {"f": lambda _: 1}, pool="loop"):
                    async with session.sender("q"):
                        try:
                            await asyncio.sleep(3600)
                        finally:
                            stopped.set()

        running = asyncio.ensure_future(app())
        await _until(lambda: sessions and sessions[0].spread.groups)
        await _restart_into_silence(daemon, lost)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert stopped.is_set() and not sessions[0].connected
        assert sessions[0].spread.disconnect_reason is not None
        assert not _tasks_beside(before)
        await asyncio.gather(*daemon.ended)  # the attempt's connection was closed
        await daemon.stop()

    run(main())


def test_a_refusal_for_good_ends_a_reconnecting_session(run: Any) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        daemon = _ScriptedDaemon()
        await daemon.start()
        session = await aio.connect(daemon.endpoint, "carol", reconnect=True)
        await daemon.stop()
        daemon.refuse = wire.RejectCode.REJECT_VERSION
        await daemon.start()
        await asyncio.wait_for(session.wait_closed(), DEADLINE)
        reason = session.spread.disconnect_reason
        assert reason is not None and reason.check(VersionRejected)
        await session.close()
        await daemon.stop()
        assert daemon.names == ["carol", "carol"] and not _tasks_beside(before)

    run(main())


def test_a_reconnecting_connect_raises_the_first_failure(run: Any) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        daemon = _ScriptedDaemon()
        await daemon.start()
        await daemon.stop()  # nothing listens at its port now
        with pytest.raises(OSError):
            await aio.connect(daemon.endpoint, reconnect=True)
        assert not _tasks_beside(before)

    run(main())


# ----------------------------------------------------------------------------- logs


def test_log_events_reach_the_logging_module(caplog: Any) -> None:
    forward_to_logging()
    forward_to_logging()  # once is enough: no duplicates
    with caplog.at_level(logging.INFO, logger="spreadqueue"):
        Logger(namespace="spreadqueue._queue.worker.Worker").warn("task {t} failed", t="x.1")
        Logger(namespace="someone.else").warn("not ours")
    ours = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ours == [("spreadqueue._queue.worker.Worker", logging.WARNING, "task x.1 failed")]
