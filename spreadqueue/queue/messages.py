"""The queue's own messages: kinds, entry layouts, encoder and validating decoder.

Every queue message is one Spread message whose 16-bit ``mess_type`` is
``MESS_TYPE_BASE + kind`` and whose data is the msgpack array ``[version, entries]``;
``entries`` is an array of arrays, all of the message's kind. docs/protocol.md is the
normative description; this module is its Python implementation. Sans-IO: no Twisted.

:func:`decode` treats its input as hostile: whatever is wrong with it (not msgpack,
wrong types, unknown kind or version, oversized claims) it raises
:class:`~spreadqueue.queue.errors.MalformedMessage` and nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgpack

from ..spread import wire
from .errors import MalformedMessage, PayloadTooLarge

__all__ = [
    "MAX_PAYLOAD",
    "MESS_TYPE_BASE",
    "PROTOCOL_VERSION",
    "Ack",
    "Assign",
    "Cancel",
    "Done",
    "Failed",
    "Kind",
    "Message",
    "Reason",
    "Register",
    "Result",
    "Retire",
    "Status",
    "Submit",
    "decode",
    "encode",
    "is_queue_message",
    "max_data",
    "mess_type",
]

#: The version every message carries; decoders refuse any other.
PROTOCOL_VERSION: Final = 1
#: Queue traffic uses mess_type 0x5101..0x51FF so it stands out next to application
#: traffic on the same session.
MESS_TYPE_BASE: Final = 0x5100

#: Largest serialized ``args`` of a task, or ``payload`` of a result. It leaves room
#: for the other fields of the largest entry (ASSIGN) and the envelope within one
#: Spread message to one group (143200 - 48 - 32 bytes).
MAX_PAYLOAD: Final = 140_000
MAX_TASK_ID: Final = 64
MAX_WORKER_ID: Final = 64
MAX_FUNC: Final = 200
MAX_TEXT: Final = 32_768
MAX_CAPACITY: Final = 10_000
MAX_ATTEMPT: Final = 0xFFFF
MAX_TIMEOUT_MS: Final = 2**31 - 1
#: Bound on every array in a message (entries, a REGISTER's held list). The smallest
#: entry takes 4 bytes, so a real message can never need more.
MAX_ENTRIES: Final = 40_000


class Kind(enum.IntEnum):
    """What a message carries; ``mess_type = MESS_TYPE_BASE + kind``."""

    SUBMIT = 1
    ACK = 2
    CANCEL = 3
    REGISTER = 4
    HELLO = 5
    ASSIGN = 6
    RESULT = 7
    DONE = 8
    FAILED = 9
    RETIRE = 10


class Status(enum.IntEnum):
    """How a RESULT entry ended (it decides the type of ``payload``)."""

    OK = 0  #: payload: the serialized return value (bin)
    ERROR = 1  #: payload: [exception type name, message, traceback text]
    UNKNOWN_FUNCTION = 2  #: payload: an explanation (str)
    CANCELLED = 3  #: payload: nil


class Reason(enum.IntEnum):
    """Why a manager reports a task FAILED."""

    WORKER_LOST = 1  #: the task's worker was lost max_attempts times
    RESUBMIT = 2  #: the manager stopped being the active one: submit again
    QUEUE_FULL = 3  #: the manager's queue is at its limit


class Submit(NamedTuple):
    """sender -> ``Q-mgr``: run ``func(args)`` once; reply to the message's sender."""

    task_id: str
    func: str
    args: bytes
    timeout_ms: int | None


class Ack(NamedTuple):
    """manager -> sender: the task is queued (or was already known)."""

    task_id: str


class Cancel(NamedTuple):
    """sender -> ``Q-mgr`` and manager -> worker session: drop / stop the task."""

    task_id: str


class Register(NamedTuple):
    """worker session -> ``Q-mgr``: this worker exists, takes ``capacity`` tasks at
    once (0: draining) and still holds the tasks ``held``."""

    worker_id: str
    capacity: int
    held: tuple[str, ...]


class Assign(NamedTuple):
    """manager -> worker session: ``worker_id`` runs the task, answers ``reply_to``."""

    worker_id: str
    task_id: str
    func: str
    args: bytes
    reply_to: str
    attempt: int
    timeout_ms: int | None


class Result(NamedTuple):
    """worker -> sender (and ``Q-mgr`` when final, to free the worker's credit)."""

    task_id: str
    worker_id: str
    final: bool
    status: int
    payload: Any


class Done(NamedTuple):
    """worker -> ``Q-mgr``: the worker finished the task (frees one credit)."""

    worker_id: str
    task_id: str


class Failed(NamedTuple):
    """manager -> sender: the task will not produce a result, or must be resubmitted."""

    task_id: str
    reason: int
    message: str


class Retire(NamedTuple):
    """worker session -> ``Q-mgr``: the worker is gone; requeue what it still held."""

    worker_id: str


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded queue message."""

    kind: Kind
    entries: list[Any]


def mess_type(kind: Kind) -> int:
    """The Spread mess_type of ``kind``."""
    return MESS_TYPE_BASE + int(kind)


def is_queue_message(mess_type: int) -> bool:
    """True when ``mess_type`` is in the queue's range (possibly of an unknown kind)."""
    return MESS_TYPE_BASE <= mess_type <= MESS_TYPE_BASE + 0xFF


def max_data(num_groups: int) -> int:
    """The most data one message to ``num_groups`` groups may carry (real daemon limit)."""
    return wire.MAX_MESSAGE_BYTES - wire.HEADER_SIZE - wire.GROUP_FIELD * num_groups


# --------------------------------------------------------------------------- encoding

_packer = msgpack.Packer(use_bin_type=True)
_HEAD: Final = b"\x92" + bytes([PROTOCOL_VERSION])  # fixarray(2), version
_MAX_ARRAY_HEADER: Final = 5


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode(kind: Kind, entries: Sequence[Sequence[Any]], *, max_bytes: int = 0) -> list[bytes]:
    """The data of the message(s) carrying ``entries`` of ``kind``.

    Entries are packed in order and split over as few messages as fit ``max_bytes``
    each (default: one Spread message to one group). No entries gives one message
    with an empty entry list (what HELLO sends). Raises PayloadTooLarge if a single
    entry cannot fit.
    """
    del kind  # the kind travels in mess_type; kept in the signature for symmetry
    limit = max_bytes or max_data(1)
    if not entries:
        return [_HEAD + b"\x90"]
    budget = limit - len(_HEAD) - _MAX_ARRAY_HEADER
    out: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    pack = _packer.pack
    for entry in entries:
        packed = pack(entry)
        n = len(packed)
        if n > budget:
            raise PayloadTooLarge(
                f"one queue message entry is {n} bytes; at most {budget} fit a Spread message"
            )
        if batch and (size + n > budget or len(batch) >= MAX_ENTRIES):
            out.append(b"".join((_HEAD, _array_header(len(batch)), *batch)))
            batch = []
            size = 0
        batch.append(packed)
        size += n
    out.append(b"".join((_HEAD, _array_header(len(batch)), *batch)))
    return out


# --------------------------------------------------------------------------- decoding


class _Bad(Exception):
    """Internal: a field is wrong (turned into MalformedMessage with context)."""


def _ident(limit: int) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if type(v) is not str or not 0 < len(v) <= limit:
            raise _Bad(f"expected a str of 1..{limit} characters, got {_show(v)}")
        return v

    return check


def _uint(limit: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if type(v) is not int or not 0 <= v <= limit:
            raise _Bad(f"expected an int in 0..{limit}, got {_show(v)}")
        return v

    return check


def _opt_uint(limit: int) -> Callable[[Any], int | None]:
    inner = _uint(limit)

    def check(v: Any) -> int | None:
        return None if v is None else inner(v)

    return check


def _binary(v: Any) -> bytes:
    if type(v) is not bytes or len(v) > MAX_PAYLOAD:
        raise _Bad(f"expected bin of at most {MAX_PAYLOAD} bytes, got {_show(v)}")
    return v


def _boolean(v: Any) -> bool:
    if type(v) is not bool:
        raise _Bad(f"expected a bool, got {_show(v)}")
    return v


def _text(v: Any) -> str:
    if type(v) is not str or len(v) > MAX_TEXT:
        raise _Bad(f"expected a str of at most {MAX_TEXT} characters, got {_show(v)}")
    return v


def _private_group(v: Any) -> str:
    if type(v) is not str or not v.startswith("#"):
        raise _Bad(f"expected a private group name '#name#daemon', got {_show(v)}")
    try:
        wire.check_group_name(v.encode("latin-1"))
    except (ValueError, UnicodeEncodeError) as e:
        raise _Bad(str(e)) from None
    return v


_task_id = _ident(MAX_TASK_ID)
_worker_id = _ident(MAX_WORKER_ID)


def _task_ids(v: Any) -> tuple[str, ...]:
    if type(v) is not list:
        raise _Bad(f"expected an array of task ids, got {_show(v)}")
    return tuple(_task_id(x) for x in v)


def _enum(cls: type[enum.IntEnum]) -> Callable[[Any], int]:
    values = frozenset(int(m) for m in cls)

    def check(v: Any) -> int:
        if type(v) is not int or v not in values:
            raise _Bad(f"expected one of {sorted(values)} ({cls.__name__}), got {_show(v)}")
        return v

    return check


def _show(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


_Fields = tuple[Callable[[Any], Any], ...]

_SCHEMAS: dict[Kind, tuple[type[tuple[Any, ...]] | None, _Fields]] = {
    Kind.SUBMIT: (Submit, (_task_id, _ident(MAX_FUNC), _binary, _opt_uint(MAX_TIMEOUT_MS))),
    Kind.ACK: (Ack, (_task_id,)),
    Kind.CANCEL: (Cancel, (_task_id,)),
    Kind.REGISTER: (Register, (_worker_id, _uint(MAX_CAPACITY), _task_ids)),
    Kind.HELLO: (None, ()),
    Kind.ASSIGN: (
        Assign,
        (
            _worker_id,
            _task_id,
            _ident(MAX_FUNC),
            _binary,
            _private_group,
            _uint(MAX_ATTEMPT),
            _opt_uint(MAX_TIMEOUT_MS),
        ),
    ),
    Kind.RESULT: (Result, (_task_id, _worker_id, _boolean, _enum(Status), lambda v: v)),
    Kind.DONE: (Done, (_worker_id, _task_id)),
    Kind.FAILED: (Failed, (_task_id, _enum(Reason), _text)),
    Kind.RETIRE: (Retire, (_worker_id,)),
}


def _result_payload(status: int, payload: Any) -> Any:
    if status == Status.OK:
        return _binary(payload)
    if status == Status.ERROR:
        if type(payload) is not list or len(payload) < 3:
            raise _Bad(f"an ERROR payload is [type, message, traceback], got {_show(payload)}")
        return (_ident(MAX_FUNC)(payload[0]), _text(payload[1]), _text(payload[2]))
    if status == Status.UNKNOWN_FUNCTION:
        return _text(payload)
    if payload is not None:
        raise _Bad(f"a CANCELLED payload is nil, got {_show(payload)}")
    return None


def _parse_entries(kind: Kind, entries: list[Any]) -> list[Any]:
    cls, fields = _SCHEMAS[kind]
    nfields = len(fields)
    out: list[Any] = []
    append = out.append
    for i, entry in enumerate(entries):
        # Extra trailing fields are allowed (and ignored) so that a later minor
        # revision can add fields without a version bump.
        if type(entry) is not list or len(entry) < nfields:
            raise MalformedMessage(
                f"{kind.name} entry {i}: expected an array of at least {nfields} fields, "
                f"got {_show(entry)}"
            )
        try:
            values = [check(v) for check, v in zip(fields, entry, strict=False)]
            if kind is Kind.RESULT:
                values[4] = _result_payload(values[3], values[4])
        except _Bad as e:
            raise MalformedMessage(f"{kind.name} entry {i}: {e}") from None
        append(cls._make(values) if cls is not None else ())  # type: ignore[attr-defined]
    return out


def decode(mess_type: int, data: bytes) -> Message:
    """Decode one queue message; raise MalformedMessage for anything off-protocol."""
    raw = mess_type - MESS_TYPE_BASE
    try:
        kind = Kind(raw)
    except ValueError:
        raise MalformedMessage(
            f"unknown queue message kind {raw} (mess_type {mess_type:#x})"
        ) from None
    if len(data) > wire.MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"{kind.name} message of {len(data)} bytes is too large")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            max_str_len=wire.MAX_MESSAGE_BYTES,
            max_bin_len=wire.MAX_MESSAGE_BYTES,
            max_array_len=MAX_ENTRIES,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises several types; all mean malformed here
        raise MalformedMessage(f"{kind.name} message is not valid msgpack: {e}") from None
    if type(obj) is not list or len(obj) < 2:
        raise MalformedMessage(f"{kind.name} message is not [version, entries]: {_show(obj)}")
    version, entries = obj[0], obj[1]
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise MalformedMessage(
            f"{kind.name} message has version {_show(version)}; this peer speaks {PROTOCOL_VERSION}"
        )
    if type(entries) is not list:
        raise MalformedMessage(f"{kind.name} entries are not an array: {_show(entries)}")
    return Message(kind, _parse_entries(kind, entries))
