"""SessionKeeper: ClientService over Spread sessions, retries, and failures for good."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from spreadqueue._spread.errors import IllegalName, NameNotUnique
from spreadqueue._spread.keeper import SessionKeeper, is_permanent
from spreadqueue._spread.session import SpreadSession
from spreadqueue.testing import FakeSpreadNetwork


class Opener:
    """Opens sessions of ``network``, or fails with the errors queued in ``failures``."""

    def __init__(self, network: FakeSpreadNetwork) -> None:
        self.network = network
        self.failures: list[BaseException] = []
        self.attempts: list[float] = []

    def __call__(self) -> Deferred[Any]:
        self.attempts.append(self.network.clock.seconds())
        if self.failures:
            return fail(self.failures.pop(0))
        return self.network.connect()


def keeper(
    network: FakeSpreadNetwork, opener: Opener, **kw: Any
) -> tuple[SessionKeeper, list[Any]]:
    sessions: list[SpreadSession] = []
    k = SessionKeeper(network.clock, opener, sessions.append, randomness=lambda: 0.5, **kw)
    return k, sessions


def test_it_opens_a_session_and_a_new_one_after_a_loss() -> None:
    network = FakeSpreadNetwork()
    opener = Opener(network)
    k, sessions = keeper(network, opener, initial_delay=1.0, jitter=0.2)
    k.startService()
    assert len(sessions) == 1
    network.crash(sessions[0])
    network.flush()
    network.advance(1.09)
    assert len(sessions) == 1  # 1 s, stretched by a tenth (jitter 0.2 x 0.5)
    network.advance(0.02)
    assert len(sessions) == 2 and sessions[1].connected


def test_failures_back_off_doubling_up_to_the_maximum() -> None:
    network = FakeSpreadNetwork()
    opener = Opener(network)
    opener.failures = [ConnectionRefusedError() for _ in range(5)]
    k, sessions = keeper(network, opener, initial_delay=1.0, max_delay=4.0, jitter=0)
    k.startService()
    for _ in range(20):
        network.advance(1.0)
    gaps = [b - a for a, b in zip(opener.attempts, opener.attempts[1:], strict=False)]
    assert gaps == [1, 2, 4, 4, 4]
    assert len(sessions) == 1


def test_a_permanent_failure_stops_the_keeper_and_says_why() -> None:
    network = FakeSpreadNetwork()
    opener = Opener(network)
    opener.failures = [IllegalName()]
    given_up: list[Failure] = []
    k, sessions = keeper(network, opener, on_permanent=given_up.append)
    k.startService()
    network.advance(60)
    assert len(opener.attempts) == 1 and not k.running
    assert [f.type for f in given_up] == [IllegalName] and sessions == []


def test_a_name_in_use_is_tried_a_few_times_then_given_up() -> None:
    assert not is_permanent(Failure(NameNotUnique()), 4)
    assert is_permanent(Failure(NameNotUnique()), 5)
    assert not is_permanent(Failure(ConnectionRefusedError()), 1000)
    network = FakeSpreadNetwork()
    opener = Opener(network)
    opener.failures = [NameNotUnique() for _ in range(10)]
    given_up: list[Failure] = []
    k, _ = keeper(network, opener, initial_delay=0.1, jitter=0, on_permanent=given_up.append)
    k.startService()
    for _ in range(100):
        network.advance(0.5)
    assert len(opener.attempts) == 5 and len(given_up) == 1


def test_stopping_closes_the_session_and_fires_once_it_is_closed() -> None:
    network = FakeSpreadNetwork()
    k, sessions = keeper(network, Opener(network))
    k.startService()
    stopped = k.stopService()
    assert not stopped.called
    network.flush()
    assert stopped.called and not sessions[0].connected
    network.advance(60)
    assert len(sessions) == 1  # no reconnection after a stop
