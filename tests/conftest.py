"""Fixtures shared by the end-to-end test modules."""

from __future__ import annotations

from typing import Any

import pytest
from procs import spread_daemon
from queue_net import Net, checked_net


@pytest.fixture(scope="module")
def spread_endpoint(tmp_path_factory: Any) -> Any:
    """One daemon for the whole module (or the external one)."""
    with spread_daemon(tmp_path_factory.mktemp("spread")) as endpoint:
        yield endpoint


@pytest.fixture(scope="class")
def e2e(request: Any, spread_endpoint: str, tmp_path_factory: Any) -> None:
    request.cls.endpoint = spread_endpoint
    request.cls.tmp_factory = tmp_path_factory


@pytest.fixture
def net() -> Any:
    """A fresh fake network for the queue's unit tests (tests/queue_net.py)."""
    yield from checked_net()


__all__ = ["Net"]
