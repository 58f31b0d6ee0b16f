"""``--reactor``: the names, the parsing, and the lean reactor agreeing with Twisted's
epoll reactor over real loopback TCP (each reactor in a process of its own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spreadqueue._service import reactors
from spreadqueue._service.runner import take_reactor
from spreadqueue._spread.daemon import SpreadDaemonFactory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LINUX = sys.platform.startswith("linux")


def test_take_reactor_finds_the_option_anywhere_and_keeps_the_rest() -> None:
    assert take_reactor(["myqueue", "--spread", "4803"]) == (
        reactors.DEFAULT,
        ["myqueue", "--spread", "4803"],
    )
    assert take_reactor(["--reactor", "uvloop", "q"]) == ("uvloop", ["q"])
    assert take_reactor(["q", "--reactor=default"]) == ("default", ["q"])
    # after "--" everything is an argument
    assert take_reactor(["--", "--reactor", "x"]) == (reactors.DEFAULT, ["--", "--reactor", "x"])
    with pytest.raises(ValueError, match="lean, default, asyncio, uvloop"):
        take_reactor(["--reactor", "select"])
    with pytest.raises(ValueError):
        take_reactor(["--reactor"])


def test_install_reactor_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="not 'kqueue'"):
        reactors.install_reactor("kqueue")


def test_every_name_has_twist_arguments() -> None:
    assert set(reactors.TWIST_REACTOR_ARGS) == set(reactors.REACTORS)


class _BracketReactor:
    """Just what the daemon factory asks of a reactor that brackets wake-ups."""

    def __init__(self) -> None:
        self.brackets: list[Any] = []

    def seconds(self) -> float:
        return 0.0

    def add_poll_bracket(self, begin: Any, end: Any) -> None:
        self.brackets.append((begin, end))

    def remove_poll_bracket(self, begin: Any, end: Any) -> None:
        self.brackets.remove((begin, end))


def test_the_daemon_brackets_each_wakeup_when_the_reactor_can() -> None:
    """Its batch opens before a wake-up's reads and closes after them: what the reads
    send to a connection goes out in one write."""
    reactor = _BracketReactor()
    factory = SpreadDaemonFactory(reactor)  # type: ignore[arg-type]
    factory.startFactory()
    ((begin, end),) = reactor.brackets
    begin()
    assert factory.batch.depth == 1
    end()
    assert factory.batch.depth == 0
    factory.stopFactory()
    assert reactor.brackets == []
    # without coalescing, nothing to bracket
    plain = SpreadDaemonFactory(reactor, coalesce_writes=False)  # type: ignore[arg-type]
    plain.startFactory()
    assert reactor.brackets == []


def _check(name: str) -> dict[str, Any]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, str(HERE / "reactor_check.py"), name],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    seen: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "failure" not in seen, seen["failure"]
    return seen


@pytest.mark.skipif(not LINUX, reason="the lean reactor is Linux's epoll reactor")
def test_the_lean_reactor_behaves_as_twisteds_epoll_reactor() -> None:
    """Echo, a message split over two reads, an exception in dataReceived (logged, the
    connection dropped), closes seen from both ends: the same as on EPollReactor; and
    a wake-up with two readable connections was bracketed."""
    lean = _check("lean")
    plain = _check("default")
    assert lean.pop("reactor") == "LeanEPollReactor"
    assert plain.pop("reactor") == "EPollReactor"
    assert lean.pop("bracketed") is True
    assert plain.pop("bracketed") is False
    assert lean == plain
    assert lean["echo"] == ["hello", "world"] and lean["split"] == "parted"
    assert lean["errors"] == ["boom in dataReceived"]
    assert lean["brackets_balanced"] is True


def test_twistd_can_install_our_reactors_by_name() -> None:
    """``twistd --reactor spreadqueue-lean`` / ``spreadqueue-uvloop``: the plugins are
    found, and what each names has the ``install`` twistd calls."""
    from twisted.application.reactors import getReactorTypes
    from twisted.python.reflect import namedAny

    ours = {r.shortName: r for r in getReactorTypes() if r.shortName.startswith("spreadqueue")}
    assert set(ours) == {"spreadqueue-lean", "spreadqueue-uvloop"}
    for installer in ours.values():
        assert callable(namedAny(installer.moduleName).install)  # type: ignore[attr-defined]
    assert namedAny(ours["spreadqueue-uvloop"].moduleName).name == "uvloop"  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (callgrind)")
def test_percall_counts_a_roles_instructions_per_rpc() -> None:
    """``python -m spreadqueue._bench.percall sender``: the three processes run, the
    sender under callgrind twice, and the difference is printed per rpc."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-m", "spreadqueue._bench.percall", "sender", "--small=5", "--large=15"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[0] == "sender:" and words[2:5] == ["instructions", "per", "rpc"]
    assert 10_000 < int(words[1].replace(",", "")) < 10_000_000
