"""The queue's own messages: kinds, entry layouts, encoder and validating decoder.

Every queue message is one Spread message whose 16-bit ``mess_type`` is
``MESS_TYPE_BASE + kind`` and whose data is the msgpack array ``[version, entries]``;
``entries`` is an array of arrays, all of the message's kind. docs/protocol.md is the
normative description; this module is its Python implementation. Sans-IO: no Twisted.

:func:`decode` treats its input as hostile: whatever is wrong with it (not msgpack,
wrong types, unknown kind or version, oversized claims) it raises
:class:`~spreadqueue._queue.errors.MalformedMessage` and nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, overload

import msgpack

from .._spread import wire
from .._spread.wire.decode import pure_requested
from .errors import MalformedMessage, PayloadTooLarge

__all__ = [
    "MAX_PAYLOAD",
    "MESS_TYPE_BASE",
    "PROTOCOL_VERSION",
    "Ack",
    "Assign",
    "Cancel",
    "Control",
    "ControlReply",
    "Decide",
    "Done",
    "Failed",
    "Hello",
    "Kind",
    "Message",
    "Reason",
    "Register",
    "Release",
    "Result",
    "Retire",
    "Status",
    "StatusReport",
    "StatusRequest",
    "Submit",
    "Sync",
    "SyncRequest",
    "UnknownKind",
    "decode",
    "encode",
    "is_queue_message",
    "max_data",
    "mess_type",
    "new_entry",
    "pack_report",
    "unpack_report",
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
#: Bound on a count of workers in an ACK.
MAX_WORKERS: Final = 2**31 - 1
MAX_ATTEMPT: Final = 0xFFFF
MAX_TIMEOUT_MS: Final = 2**31 - 1
#: Bound on an absolute time in epoch milliseconds (a task's ``not_before``).
MAX_EPOCH_MS: Final = 2**53
#: Task priorities run from 0 (the default, the lowest) to 9.
MAX_PRIORITY: Final = 9
#: Bound on the functions a worker may declare it serves.
MAX_FUNCTIONS: Final = 1_000
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
    RELEASE = 11
    STATUS_REQUEST = 12
    STATUS = 13
    CONTROL = 14
    CONTROL_REPLY = 15
    SYNC_REQUEST = 16
    SYNC = 17
    DECIDE = 18


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
    CANCELLED = 4  #: an operator cancelled the task or purged the queue
    DEAD_LETTER = 5  #: a detached task failed for good: it is in the dead letters


class UnknownKind(MalformedMessage):
    """A message of a kind this peer does not know: a later revision's. Receivers
    ignore it (counted, not warned about): that is how new kinds stay compatible."""


class Submit(NamedTuple):
    """sender -> ``Q-mgr``: run ``func(args)`` once; reply to the message's sender.

    ``ack_ms`` (optional) is how long the sender waits for the ACK: a manager may then
    hold the ACK of a task it assigns at once back for a while, and leave it out
    when the task is done first (docs/protocol.md, "ACK").

    ``detached`` (optional): the task outlives its sender: the managers hold it (SAFE
    delivery, then the ACK), nobody waits for its answer, which goes to ``reply_to``
    (a group) if given, else nowhere; ``timeout_ms`` then bounds each run. ``ttl_ms``:
    a detached task not started within this long after it was accepted is
    dead-lettered as expired. ``not_before_ms``: it is not started before this
    epoch time (milliseconds). ``priority``: 0 (the default) .. 9, higher first.
    """

    task_id: str
    func: str
    args: bytes
    timeout_ms: int | None
    ack_ms: int | None = None
    detached: bool | None = None
    reply_to: str | None = None
    ttl_ms: int | None = None
    not_before_ms: int | None = None
    priority: int | None = None


class Ack(NamedTuple):
    """manager -> sender: the task is queued (or was already known).

    ``workers`` (optional) is how many registered workers took tasks when the manager
    acknowledged it: 0 tells the sender that the task waits for a worker that is not
    there (its timeout then says so). None: not said.
    """

    task_id: str
    workers: int | None = None


class Cancel(NamedTuple):
    """sender -> ``Q-mgr`` and manager -> worker session: drop / stop the task.

    ``timed_out`` (optional) is True when the sender cancels because its timeout ran
    out: the manager then counts the task as timed out rather than cancelled.
    """

    task_id: str
    timed_out: bool | None = None


class Register(NamedTuple):
    """worker session -> ``Q-mgr``: this worker exists, holds up to ``capacity`` tasks
    (0: draining) and still holds the tasks ``held``.

    ``slots`` (optional) is how many of them it starts at once; the rest of
    ``capacity`` is prefetch. None means all of them (no prefetch). ``burst``
    (optional) is how many tasks in a row the manager may hand it when it is chosen
    (its tasks are so short that one message of many beats many workers). None: 1.
    ``hello`` (optional) is the id of the last HELLO the worker answered: a REGISTER
    that carries the id of a manager's HELLO lists every task the worker held when it
    read that HELLO, which makes its ``held`` list exact for that manager.
    ``functions`` (optional) are the names of the functions it serves: the manager
    gives it tasks of these functions only. None: every function.
    """

    worker_id: str
    capacity: int
    held: tuple[str, ...]
    slots: int | None = None
    burst: int | None = None
    hello: str | None = None
    functions: tuple[str, ...] | None = None


class Hello(NamedTuple):
    """manager -> ``Q-wrk``: a manager became active; every worker answers REGISTER,
    echoing ``hello_id`` (an entry is optional: older managers send none)."""

    hello_id: str


class Assign(NamedTuple):
    """manager -> worker session (and ``Q-mgr`` while standbys replicate the queue):
    ``worker_id`` runs the task and answers ``reply_to``: the sender's private group,
    the group a detached task names, or ``Q-mgr`` when nobody waits for the answer."""

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


class Release(NamedTuple):
    """worker session -> ``Q-mgr``: the worker gives back a task it never started
    (a prefetched task, when it stops): queue it again, at the head.

    ``lost`` (optional) is True when the worker did start it and its run was lost (the
    handler process running it died): the manager then counts the run as an attempt,
    as for a lost worker, and fails the task once ``max_attempts`` runs were lost.
    """

    worker_id: str
    task_id: str
    lost: bool | None = None


class StatusRequest(NamedTuple):
    """anyone -> ``Q-mgr`` and ``Q-wrk``: every manager and worker of the queue answers
    the message's sender with a STATUS."""

    request_id: str


class StatusReport(NamedTuple):
    """manager or worker -> requester: ``report`` is a msgpack map, the status of the
    ``role`` ('manager' or 'worker') that sends it (docs/protocol.md, "Status")."""

    request_id: str
    role: str
    report: bytes


class Control(NamedTuple):
    """operator -> ``Q-mgr``: do ``action`` (pause, resume, purge, drain, undrain,
    cancel) to ``target`` (a worker for drain, a task id for cancel, else '')."""

    request_id: str
    action: str
    target: str


class ControlReply(NamedTuple):
    """active manager -> operator: whether ``action`` was done, and what happened."""

    request_id: str
    ok: bool
    message: str


class SyncRequest(NamedTuple):
    """manager -> ``Q-mgr``: a manager that has just joined (or lost its state in a
    merge) asks the active manager for the queue's state as of this message."""

    request_id: str


class Sync(NamedTuple):
    """active manager -> requester: part ``part`` of ``parts`` of the queue's state
    (a msgpack map split into ``chunk`` s) as of the SYNC_REQUEST ``request_id``."""

    request_id: str
    part: int
    parts: int
    chunk: bytes


class Decide(NamedTuple):
    """active manager -> ``Q-mgr``: a decision the standbys cannot derive from what
    they see (a timer ran out, an operator's request was allowed). Every manager
    applies it where it comes in the total order. ``op`` names it; ``a`` .. ``d``
    are its str arguments ('' when unused): docs/protocol.md, section 10."""

    op: str
    a: str
    b: str
    c: str
    d: str


class Message(NamedTuple):
    """A decoded queue message.

    (A NamedTuple, not a frozen dataclass: one is built per message received, and a
    frozen dataclass's ``__init__`` goes through ``object.__setattr__`` per field.)
    """

    kind: Kind
    entries: list[Any]


if TYPE_CHECKING:

    @overload
    def new_entry(
        cls: type[Submit],
        fields: tuple[str, str, bytes, int | None, int | None]
        | tuple[
            str,
            str,
            bytes,
            int | None,
            int | None,
            bool | None,
            str | None,
            int | None,
            int | None,
            int | None,
        ],
        /,
    ) -> Submit: ...

    @overload
    def new_entry(cls: type[Ack], fields: tuple[str, int | None], /) -> Ack: ...

    @overload
    def new_entry(cls: type[Cancel], fields: tuple[str, bool | None], /) -> Cancel: ...

    @overload
    def new_entry(
        cls: type[Assign], fields: tuple[str, str, str, bytes, str, int, int | None], /
    ) -> Assign: ...

    @overload
    def new_entry(cls: type[Result], fields: tuple[str, str, bool, int, Any], /) -> Result: ...

    @overload
    def new_entry(cls: type[Done], fields: tuple[str, str], /) -> Done: ...

    @overload
    def new_entry(
        cls: type[Release], fields: tuple[str, str] | tuple[str, str, bool], /
    ) -> Release: ...

    def new_entry(cls: Any, fields: Any, /) -> Any:
        """Build an entry of ``cls`` from ``fields`` (all of them, in order)."""

else:
    # tuple.__new__ itself: a NamedTuple's own __new__ is a Python function, and the
    # hot entries are built once per task on every hop.
    new_entry = tuple.__new__


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
    if len(entries) <= MAX_ENTRIES:
        # The usual case: everything fits one message, packed in one call.
        whole = _packer.pack([PROTOCOL_VERSION, entries])
        if len(whole) <= limit:
            return [whole]
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


# --------------------------------------------------------------------------- status reports


def pack_report(report: dict[str, Any]) -> bytes:
    """A STATUS report as msgpack, made to fit one message: when too large, the
    per-function table goes first, then workers past the first 100 (``truncated`` says
    so)."""
    data = _packer.pack(report)
    if len(data) <= MAX_PAYLOAD:
        return data
    smaller = dict(report, truncated=True)
    smaller.pop("functions", None)
    data = _packer.pack(smaller)
    if len(data) > MAX_PAYLOAD and isinstance(smaller.get("workers"), list):
        smaller["workers"] = smaller["workers"][:100]
        smaller.pop("current", None)
        data = _packer.pack(smaller)
    if len(data) > MAX_PAYLOAD:
        data = _packer.pack({k: v for k, v in smaller.items() if not isinstance(v, (list, dict))})
    return data


def unpack_report(data: bytes) -> dict[str, Any]:
    """A STATUS report's map; MalformedMessage for anything else (hostile input)."""
    try:
        report = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_str_len=MAX_PAYLOAD,
            max_bin_len=MAX_PAYLOAD,
            max_array_len=MAX_ENTRIES,
            max_map_len=MAX_ENTRIES,
            max_ext_len=0,
        )
    except Exception as e:
        raise MalformedMessage(f"a STATUS report that is not msgpack: {e}") from None
    if type(report) is not dict:
        raise MalformedMessage(f"a STATUS report is a map, not {_show(report)}")
    return report


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


def _opt_bool(v: Any) -> bool | None:
    return None if v is None else _boolean(v)


def _text(v: Any) -> str:
    if type(v) is not str or len(v) > MAX_TEXT:
        raise _Bad(f"expected a str of at most {MAX_TEXT} characters, got {_show(v)}")
    return v


def _private_group(v: Any) -> str:
    if type(v) is not str or not v.startswith("#"):
        raise _Bad(f"expected a private group name '#name#daemon', got {_show(v)}")
    return _group(v)


def _group(v: Any) -> str:
    """A Spread group name: a private group ``#name#daemon`` or a public group."""
    if type(v) is not str or not v:
        raise _Bad(f"expected a group name, got {_show(v)}")
    try:
        wire.check_group_name(v.encode("latin-1"))
    except (ValueError, UnicodeEncodeError) as e:
        raise _Bad(str(e)) from None
    return v


def _opt_group(v: Any) -> str | None:
    return None if v is None else _group(v)


def _functions(v: Any) -> tuple[str, ...] | None:
    """The functions a worker serves (None: all of them). A name that is no function
    name (no task can have it) is left out, not the worker's whole declaration."""
    if v is None:
        return None
    if type(v) is not list or len(v) > MAX_FUNCTIONS:
        raise _Bad(f"expected an array of at most {MAX_FUNCTIONS} function names, got {_show(v)}")
    return tuple(f for f in v if type(f) is str and 0 < len(f) <= MAX_FUNC)


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
    Kind.HELLO: (Hello, (_ident(MAX_TASK_ID),)),
    Kind.ASSIGN: (
        Assign,
        (
            _worker_id,
            _task_id,
            _ident(MAX_FUNC),
            _binary,
            _group,
            _uint(MAX_ATTEMPT),
            _opt_uint(MAX_TIMEOUT_MS),
        ),
    ),
    Kind.RESULT: (Result, (_task_id, _worker_id, _boolean, _enum(Status), lambda v: v)),
    Kind.DONE: (Done, (_worker_id, _task_id)),
    Kind.FAILED: (Failed, (_task_id, _enum(Reason), _text)),
    Kind.RETIRE: (Retire, (_worker_id,)),
    Kind.RELEASE: (Release, (_worker_id, _task_id)),
    Kind.STATUS_REQUEST: (StatusRequest, (_ident(MAX_TASK_ID),)),
    Kind.STATUS: (StatusReport, (_ident(MAX_TASK_ID), _ident(16), _binary)),
    Kind.CONTROL: (Control, (_ident(MAX_TASK_ID), _ident(32), _text)),
    Kind.CONTROL_REPLY: (ControlReply, (_ident(MAX_TASK_ID), _boolean, _text)),
    Kind.SYNC_REQUEST: (SyncRequest, (_ident(MAX_TASK_ID),)),
    Kind.SYNC: (
        Sync,
        (_ident(MAX_TASK_ID), _uint(MAX_ENTRIES), _uint(MAX_ENTRIES), _binary),
    ),
    Kind.DECIDE: (Decide, (_ident(32), _text, _text, _text, _text)),
}

#: Optional trailing fields (a later revision of an entry): kind -> checks of the
#: fields after the required ones. A value that does not pass is ignored (None), as
#: an unknown trailing field is.
_OPTIONAL: dict[Kind, tuple[Callable[[Any], Any], ...]] = {
    Kind.SUBMIT: (
        _opt_uint(MAX_TIMEOUT_MS),
        _opt_bool,
        _opt_group,
        _opt_uint(MAX_TIMEOUT_MS),
        _opt_uint(MAX_EPOCH_MS),
        _opt_uint(MAX_PRIORITY),
    ),
    Kind.ACK: (_opt_uint(MAX_WORKERS),),
    Kind.REGISTER: (
        _opt_uint(MAX_CAPACITY),
        _opt_uint(MAX_CAPACITY),
        lambda v: None if v is None else _ident(MAX_TASK_ID)(v),
        _functions,
    ),
    Kind.CANCEL: (_opt_bool,),
    Kind.RELEASE: (_opt_bool,),
}
_SUBMIT_MORE: Final = _OPTIONAL[Kind.SUBMIT][1:]


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
    optional = _OPTIONAL.get(kind)
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
        if optional is not None:
            values.extend(_optional_values(optional, nfields, entry))
        append(cls._make(values) if cls is not None else ())  # type: ignore[attr-defined]
    return out


def _optional_values(
    checks: tuple[Callable[[Any], Any], ...], first: int, entry: list[Any]
) -> list[Any]:
    out: list[Any] = []
    for index, check in enumerate(checks, first):
        value = None
        if index < len(entry):
            try:
                value = check(entry[index])
            except _Bad:
                pass
        out.append(value)
    return out


# Fast paths: the hot kinds checked inline, without a call per field. They accept
# exactly what the schema accepts; on anything unusual they give up (None) and the
# general parser above decides (and names the problem). Without them the bench's
# pipelined C=100 is 12% slower; test_queue_messages' agreement tests hold them to
# _parse_entries.

_STATUSES: Final = frozenset(int(s) for s in Status)
_OK: Final = int(Status.OK)
_CANCELLED: Final = int(Status.CANCELLED)
#: reply_to names already checked (an ASSIGN carries the same few names over and over)
_good_groups: dict[str, None] = {}
_GOOD_GROUPS_MAX: Final = 4096


def _fast_ack(entries: list[Any]) -> list[Any] | None:
    """ACK entries: a task id and, optionally, a count of workers."""
    out: list[Any] = []
    append = out.append
    for e in entries:
        if type(e) is not list or not e:
            return None
        tid = e[0]
        if type(tid) is not str or not 0 < len(tid) <= MAX_TASK_ID:
            return None
        workers = e[1] if len(e) > 1 else None
        if workers is not None and (type(workers) is not int or not 0 <= workers <= MAX_WORKERS):
            workers = None  # an unknown trailing field: ignored
        append(new_entry(Ack, (tid, workers)))
    return out


def _fast_cancel(entries: list[Any]) -> list[Any] | None:
    """CANCEL entries: a task id and, optionally, whether the sender timed out."""
    out: list[Any] = []
    append = out.append
    for e in entries:
        if type(e) is not list or not e:
            return None
        tid = e[0]
        if type(tid) is not str or not 0 < len(tid) <= MAX_TASK_ID:
            return None
        timed_out = e[1] if len(e) > 1 else None
        if type(timed_out) is not bool:
            timed_out = None  # absent, nil, or an unknown trailing field: ignored
        append(new_entry(Cancel, (tid, timed_out)))
    return out


def _fast_submit(entries: list[Any]) -> list[Any] | None:
    out: list[Any] = []
    append = out.append
    for e in entries:
        if type(e) is not list or len(e) < 4:
            return None
        tid, func, args, timeout = e[0], e[1], e[2], e[3]
        if (
            type(tid) is not str
            or not 0 < len(tid) <= MAX_TASK_ID
            or type(func) is not str
            or not 0 < len(func) <= MAX_FUNC
            or type(args) is not bytes
            or len(args) > MAX_PAYLOAD
            or (
                timeout is not None
                and (type(timeout) is not int or not 0 <= timeout <= MAX_TIMEOUT_MS)
            )
        ):
            return None
        n = len(e)
        ack = e[4] if n > 4 else None
        if ack is not None and (type(ack) is not int or not 0 <= ack <= MAX_TIMEOUT_MS):
            ack = None  # an unknown trailing field: ignored
        if n > 5:
            # A detached task (or one with a priority): rare enough for the general
            # checks of the optional fields.
            rest = _optional_values(_SUBMIT_MORE, 5, e)
            append(new_entry(Submit, (tid, func, args, timeout, ack, *rest)))
        else:
            append(new_entry(Submit, (tid, func, args, timeout, ack, None, None, None, None, None)))
    return out


def _fast_assign(entries: list[Any]) -> list[Any] | None:
    out: list[Any] = []
    append = out.append
    good = _good_groups
    for e in entries:
        if type(e) is not list or len(e) < 7:
            return None
        wid, tid, func, args, reply_to, attempt, timeout = e[0], e[1], e[2], e[3], e[4], e[5], e[6]
        if (
            type(wid) is not str
            or not 0 < len(wid) <= MAX_WORKER_ID
            or type(tid) is not str
            or not 0 < len(tid) <= MAX_TASK_ID
            or type(func) is not str
            or not 0 < len(func) <= MAX_FUNC
            or type(args) is not bytes
            or len(args) > MAX_PAYLOAD
            or type(attempt) is not int
            or not 0 <= attempt <= MAX_ATTEMPT
            or (
                timeout is not None
                and (type(timeout) is not int or not 0 <= timeout <= MAX_TIMEOUT_MS)
            )
        ):
            return None
        if reply_to not in good:
            try:
                _group(reply_to)
            except _Bad:
                return None
            if len(good) < _GOOD_GROUPS_MAX:
                good[reply_to] = None
        append(new_entry(Assign, (wid, tid, func, args, reply_to, attempt, timeout)))
    return out


def _fast_result(entries: list[Any]) -> list[Any] | None:
    out: list[Any] = []
    append = out.append
    for e in entries:
        if type(e) is not list or len(e) < 5:
            return None
        tid, wid, final, status, payload = e[0], e[1], e[2], e[3], e[4]
        if (
            type(tid) is not str
            or not 0 < len(tid) <= MAX_TASK_ID
            or type(wid) is not str
            or not 0 < len(wid) <= MAX_WORKER_ID
            or type(final) is not bool
        ):
            return None
        if status == _OK and type(status) is int:
            if type(payload) is not bytes or len(payload) > MAX_PAYLOAD:
                return None
        elif status == _CANCELLED and type(status) is int:
            if payload is not None:
                return None
        else:
            return None  # errors are rare: the general parser checks them
        append(new_entry(Result, (tid, wid, final, status, payload)))
    return out


def _fast_done(entries: list[Any]) -> list[Any] | None:
    out: list[Any] = []
    append = out.append
    for e in entries:
        if type(e) is not list or len(e) < 2:
            return None
        wid, tid = e[0], e[1]
        if (
            type(wid) is not str
            or not 0 < len(wid) <= MAX_WORKER_ID
            or type(tid) is not str
            or not 0 < len(tid) <= MAX_TASK_ID
        ):
            return None
        append(new_entry(Done, (wid, tid)))
    return out


_FAST: dict[Kind, Callable[[list[Any]], list[Any] | None]] = {
    Kind.SUBMIT: _fast_submit,
    Kind.ACK: _fast_ack,
    Kind.CANCEL: _fast_cancel,
    Kind.ASSIGN: _fast_assign,
    Kind.RESULT: _fast_result,
    Kind.DONE: _fast_done,
}
_KINDS: Final = {int(k): k for k in Kind}


def _load_entries() -> Any:
    """The compiled entry checks (``_entries.c``), or None: not built, or
    SPREADQUEUE_PURE set (as for the Spread decoders)."""
    if pure_requested():
        return None
    try:
        from . import _entries  # type: ignore[attr-defined]
    except ImportError:
        return None
    _entries.setup(
        Submit,
        Ack,
        Assign,
        Result,
        Done,
        _good_groups,
        (
            MAX_TASK_ID,
            MAX_WORKER_ID,
            MAX_FUNC,
            MAX_PAYLOAD,
            MAX_TIMEOUT_MS,
            MAX_ATTEMPT,
            MAX_WORKERS,
        ),
    )
    return _entries


_compiled = _load_entries()
#: The kinds the compiled checks take (the same as _fast_*, which are the reference).
_COMPILED_KINDS: Final = frozenset(
    int(k) for k in (Kind.SUBMIT, Kind.ACK, Kind.ASSIGN, Kind.RESULT, Kind.DONE)
)


def decode(mess_type: int, data: bytes) -> Message:
    """Decode one queue message; raise MalformedMessage for anything off-protocol."""
    raw = mess_type - MESS_TYPE_BASE
    kind = _KINDS.get(raw)
    if kind is None:
        raise UnknownKind(f"unknown queue message kind {raw} (mess_type {mess_type:#x})")
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
    if _compiled is not None and raw in _COMPILED_KINDS:
        # the same entries _fast_* build, or None: they decide (and name any problem)
        parsed = _compiled.parse(raw, entries)
        if parsed is not None:
            return tuple.__new__(Message, (kind, parsed))
    fast = _FAST.get(kind)
    if fast is not None:
        parsed = fast(entries)
        if parsed is not None:
            # tuple.__new__, as new_entry: no Python frame per message decoded
            return tuple.__new__(Message, (kind, parsed))
    return tuple.__new__(Message, (kind, _parse_entries(kind, entries)))
