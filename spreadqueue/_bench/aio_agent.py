"""The benchmark's asyncio sender: :mod:`spreadqueue.aio` under ``asyncio.run`` or uvloop.

Started by :mod:`spreadqueue._bench.agent` as role ``aio-sender`` (``--loop asyncio``
or ``--loop uvloop``). It speaks the same control channel as the other agents (JSON
lines on stdin and stdout, :mod:`spreadqueue._bench.channel`), here read and written
by asyncio, and answers ``load`` with the same report as the Twisted sender's
:class:`~spreadqueue._bench.load.RpcLoad`, so the parent measures both alike. It uses
only the public asyncio API, as an application would: each of the ``inflight`` calls
is a coroutine awaiting ``sender.rpc``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from collections import Counter
from typing import Any

from .. import aio
from .agent import load_arguments
from .channel import parse_command

__all__ = ["LOOPS", "rpc_load", "run"]

#: The loops this agent can run on.
LOOPS = ("asyncio", "uvloop")


async def rpc_load(
    sender: aio.Sender,
    func: str,
    args: Any,
    inflight: int,
    t0_ns: int,
    t1_ns: int,
    *,
    timeout: float = 30.0,
    drain_timeout: float = 35.0,
) -> dict[str, Any]:
    """``inflight`` coroutines calling ``func(args)`` until ``t1_ns``; the report of
    :class:`~spreadqueue._bench.load.RpcLoad` (latencies of calls completing in
    ``[t0_ns, t1_ns)``, counts, errors by type, calls still unanswered as ``lost``)."""
    if inflight < 1:
        raise ValueError("inflight must be at least 1")
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    counts = {"submitted": 0, "completed": 0}
    clock = time.monotonic_ns

    async def caller() -> None:
        while clock() < t1_ns:
            counts["submitted"] += 1
            start = clock()
            try:
                await sender.rpc(func, args, timeout=timeout)
            except Exception as e:
                errors[type(e).__name__] += 1
                continue
            now = clock()
            counts["completed"] += 1
            if t0_ns <= now < t1_ns:
                latencies.append(now - start)

    started = clock()
    callers = [asyncio.ensure_future(caller()) for _ in range(inflight)]
    wait_s = max(0.0, (t1_ns - started) / 1e9) + drain_timeout
    _, unfinished = await asyncio.wait(callers, timeout=wait_s)
    for c in unfinished:
        c.cancel()
    return {
        **counts,
        "errors": dict(errors),
        "lost": len(unfinished),
        "latencies_ns": latencies,
        "started_ns": started,
        "finished_ns": clock(),
    }


class _Channel:
    """The control channel over asyncio: commands from stdin, answers to stdout."""

    def __init__(self, sender: aio.Sender) -> None:
        self.sender = sender

    def emit(self, event: str, **fields: Any) -> None:
        self._write({"event": event, **fields})

    def _write(self, obj: dict[str, Any]) -> None:
        # Small lines between measurements only: a blocking write is fine here.
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def _answer(self, ident: Any, cmd: str, args: dict[str, Any]) -> None:
        try:
            result = await self._command(cmd, args)
        except Exception:
            self._write({"id": ident, "ok": False, "error": traceback.format_exc()})
        else:
            self._write({"id": ident, "ok": True, "result": result})

    async def _command(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "load":
            return await rpc_load(self.sender, *load_arguments(args))
        if cmd == "stats":
            return {**self.sender.stats, "pending": self.sender.pending}
        raise ValueError(f"the asyncio sender has no command {cmd!r}")

    async def serve(self) -> None:
        """Run commands until stdin closes (each in a task of its own)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        running: set[asyncio.Task[None]] = set()
        try:
            while line := await reader.readline():
                command = parse_command(line)
                if command is None:
                    self.emit("bad-command", line=line.decode("utf-8", "replace"))
                    continue
                task = asyncio.ensure_future(self._answer(*command))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            transport.close()
            for task in running:
                task.cancel()


async def _main(options: argparse.Namespace) -> None:
    async with aio.connect(options.spread) as session:
        sender = session.sender(options.queue)
        await sender.start()
        channel = _Channel(sender)
        channel.emit("ready", pid=os.getpid(), private_group=session.private_group)
        await channel.serve()


def run(options: argparse.Namespace) -> int:
    """Run the asyncio sender on ``options.loop`` until the parent closes our stdin."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if options.loop == "uvloop":
        import uvloop

        uvloop.run(_main(options))
    else:
        asyncio.run(_main(options))
    return 0
