"""The loop of a handler process (``python -m spreadqueue._queue.child``).

It reads length-prefixed pickles on fd 3 from its worker and answers on fd 4: first
the worker's ``sys.path``, working directory and handler modules (imported at once,
so that they import as they did in the worker and the first task does not wait),
answered ``("ready",)``; then ``("run", function, args)`` requests, one at a time,
each answered ``("ok", result)`` or ``("error", type name, message, traceback)``.
It ends when its input ends. It imports no reactor: a handler here is plain code.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import struct
import sys
from typing import Any

#: The child's fds: requests from its worker on CHILD_IN, answers on CHILD_OUT (its
#: stdout and stderr stay the worker's, for handlers' prints and logs).
CHILD_IN = 3
CHILD_OUT = 4
#: Each message is a pickle behind its length.
LENGTH = struct.Struct(">I")


def frame(obj: Any) -> bytes:
    """One length-prefixed pickle: what a worker and its children exchange."""
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(data)) + data


def _read(n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(CHILD_IN, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write(obj: Any) -> None:
    view = memoryview(frame(obj))
    while view:
        view = view[os.write(CHILD_OUT, view) :]


def _error(prefix: str = "") -> tuple[str, str, str, str]:
    from twisted.python.failure import Failure

    f = Failure()
    t = f.type if isinstance(f.type, type) else type(f.value)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return ("error", name, prefix + str(f.value), f.getTraceback())


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the worker decides when
    # its children stop (it drains first), not the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        head = _read(4)
        if head is None:
            return
        body = _read(LENGTH.unpack(head)[0])
        if body is None:
            return
        try:
            request = pickle.loads(body)
        except Exception:
            _write(_error("the task could not be unpickled in the handler process: "))
            continue
        if request[0] == "path":
            sys.path[:] = request[1]
            os.chdir(request[2])
            for module in request[3]:
                try:
                    importlib.import_module(module)
                except Exception:  # the first task that needs it reports the error
                    pass
            _write(("ready",))
            continue
        _, fn, args = request
        try:
            result = fn(*args)
        except BaseException:
            _write(_error())
            continue
        try:
            _write(("ok", result))
        except Exception:
            _write(_error("the result could not be pickled: "))


if __name__ == "__main__":
    main()
