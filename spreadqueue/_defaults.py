"""Defaults every entry point shares: the environment variables and what applies without them.

The command lines, the twistd plugins, :class:`~spreadqueue.BlockingSender` and the
examples all read them here, so a variable means the same everywhere. This module
imports nothing of spreadqueue: any layer may use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

#: The Spread daemon to use, in Spread's ``4803@host`` form or as a Twisted endpoint.
SPREAD_ENV: Final = "SPREAD_DAEMON"
#: The queue name Perl's Spread::Queue documents (sqm, worker and sender read it).
QUEUE_ENV: Final = "SPREAD_QUEUE_NAME"
#: The variable Spread::Queue's code actually read; honoured after QUEUE_ENV.
QUEUE_ENV_OLD: Final = "SPREAD_QUEUE"
#: The Spread daemon when $SPREAD_DAEMON is not set: Spread's port on this machine.
DEFAULT_SPREAD: Final = "4803@localhost"
#: Where an embedded daemon listens unless told otherwise: Spread's port, loopback only.
DEFAULT_LISTEN: Final = "tcp:4803:interface=127.0.0.1"


def default_spread(environ: Mapping[str, str] = os.environ) -> str:
    """``$SPREAD_DAEMON``, else ``4803@localhost``."""
    return environ.get(SPREAD_ENV) or DEFAULT_SPREAD


def default_queue(
    fallback: str | None = None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """``$SPREAD_QUEUE_NAME``, else ``$SPREAD_QUEUE``, else ``fallback`` (None: no queue).

    There is no built-in queue name: without a variable and a fallback the caller must
    be told to name one.
    """
    return environ.get(QUEUE_ENV) or environ.get(QUEUE_ENV_OLD) or fallback
