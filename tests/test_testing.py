"""spreadqueue.testing: the public in-memory Spread network."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from spreadqueue._spread import wire
from spreadqueue._spread.interfaces import ISpreadSession
from spreadqueue.testing import FakeSpreadNetwork


def test_sessions_provide_the_interface() -> None:
    network = FakeSpreadNetwork(Clock())
    assert verifyObject(ISpreadSession, network.session("alice"))


def test_join_multicast_and_crash_notices() -> None:
    network = FakeSpreadNetwork(Clock())
    alice, bob = network.session("alice"), network.session("bob")
    seen: list[object] = []
    alice.add_listener(seen.append, "grp")
    joined = [alice.join("grp"), bob.join("grp")]
    network.flush()
    assert all(d.called for d in joined)
    assert network.members("grp") == ("#alice#localhost", "#bob#localhost")

    bob.multicast("grp", b"hello", mess_type=7)
    network.flush()
    data = [f for f in seen if isinstance(f, wire.RegularMessage)]
    assert [(m.sender, m.data, m.mess_type) for m in data] == [("#bob#localhost", b"hello", 7)]

    lost = bob.whenDisconnected()
    network.crash(bob)
    network.flush()
    assert lost.called
    notice = seen[-1]
    assert isinstance(notice, wire.MembershipMessage)
    assert notice.cause == wire.CAUSED_BY_DISCONNECT
    assert notice.changed_member == "#bob#localhost"
    assert network.members("grp") == ("#alice#localhost",)


def test_connect_refuses_a_duplicate_name() -> None:
    network = FakeSpreadNetwork(Clock())
    network.session("alice")
    failure = network.connect("alice")
    errors: list[BaseException] = []
    failure.addErrback(lambda f: errors.append(f.value))
    assert type(errors[0]).__name__ == "NameNotUnique"


def readme_block(heading: str) -> str:
    """The first ```python block of the README section ``heading``."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split(f"\n## {heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs_a_queue_in_memory() -> None:
    """The README's spreadqueue.testing example, as it stands there: a whole queue
    (manager, worker, sender) on the fake network, driven by a Clock."""
    code = readme_block("Testing your code: spreadqueue.testing")
    assert "FakeSpreadNetwork" in code
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # its asserts are the test
    assert namespace["d"].result == 42  # type: ignore[attr-defined]
