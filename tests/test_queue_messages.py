"""The queue's messages: encoding, decoding of hostile input, names, serializers."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from spreadqueue._queue import messages
from spreadqueue._queue.errors import MalformedMessage, PayloadTooLarge, QueueNameError
from spreadqueue._queue.interfaces import IAssignmentPolicy, ISerializer
from spreadqueue._queue.messages import (
    _FAST,
    MAX_ENTRIES,
    MAX_PAYLOAD,
    MESS_TYPE_BASE,
    Ack,
    Assign,
    Cancel,
    Control,
    ControlReply,
    Decide,
    Done,
    Failed,
    Hello,
    Kind,
    Reason,
    Register,
    Release,
    Result,
    Retire,
    Status,
    StatusReport,
    StatusRequest,
    Submit,
    Sync,
    SyncRequest,
    UnknownKind,
    _parse_entries,
    decode,
    encode,
    is_queue_message,
    max_data,
    mess_type,
    new_entry,
    pack_report,
    unpack_report,
)
from spreadqueue._queue.names import queue_groups
from spreadqueue._queue.policy import LeastRecentlyUsed
from spreadqueue._queue.serializer import JsonSerializer, MsgpackSerializer
from spreadqueue._spread import wire

SAMPLES = {
    Kind.SUBMIT: [
        Submit("p.1", "add", b"\x92\x01\x02", None),
        Submit("p.2", "f", b"", 1500),
        Submit("p.3", "f", b"", None, 5000, True, "results", 60_000, 1_800_000_000_000, 7),
    ],
    Kind.ACK: [Ack("p.1"), Ack("p.2", 0), Ack("p.3", 7)],
    Kind.CANCEL: [Cancel("p.1"), Cancel("p.2", True)],
    Kind.REGISTER: [
        Register("w1", 4, ("p.1", "p.2")),
        Register("w2", 0, ()),
        Register("w3", 2, (), 1, None, "#m1#fake.3"),
        Register("w4", 2, (), None, None, None, ("resize", "thumbnail")),
        Register("w5", 2, (), None, None, None, ()),
    ],
    Kind.HELLO: [Hello("#m1#fake.3")],
    Kind.ASSIGN: [
        Assign("w1", "p.1", "add", b"\x90", "#alice#fake", 1, None),
        Assign("w1", "p.3", "f", b"", "results", 1, 100),
        Assign("w1", "p.4", "f", b"", "q-mgr", 2, None),
    ],
    Kind.RESULT: [
        Result("p.1", "w1", True, Status.OK, b"\x03"),
        Result("p.2", "w1", False, Status.ERROR, ("ValueError", "bad", "Traceback...")),
        Result("p.3", "w1", True, Status.UNKNOWN_FUNCTION, "no handler"),
        Result("p.4", "w1", True, Status.CANCELLED, None),
    ],
    Kind.DONE: [Done("w1", "p.1")],
    Kind.FAILED: [Failed("p.1", Reason.WORKER_LOST, "lost"), Failed("p.2", Reason.RESUBMIT, "")],
    Kind.RETIRE: [Retire("w1")],
    Kind.RELEASE: [Release("w1", "p.1"), Release("w1", "p.2", True)],
    Kind.STATUS_REQUEST: [StatusRequest("r.1")],
    Kind.STATUS: [StatusReport("r.1", "manager", pack_report({"depth": 3, "workers": []}))],
    Kind.CONTROL: [Control("r.2", "drain", "w1@#alice#fake"), Control("r.3", "pause", "")],
    Kind.CONTROL_REPLY: [ControlReply("r.2", True, "worker w1 drains")],
    Kind.SYNC_REQUEST: [SyncRequest("#m2#fake.1")],
    Kind.SYNC: [Sync("#m2#fake.1", 0, 2, b"\x81\xa1a\x01"), Sync("#m2#fake.1", 1, 2, b"")],
    Kind.DECIDE: [
        Decide("expire", "p.1", "ttl", "", ""),
        Decide("control", "r.2", "#o#d", "pause", ""),
    ],
}


def envelope(entries: object, version: object = 1) -> bytes:
    return msgpack.packb([version, entries], use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", list(Kind))
def test_round_trip_every_kind(kind: Kind) -> None:
    [data] = encode(kind, SAMPLES[kind])
    msg = decode(mess_type(kind), data)
    assert msg.kind is kind
    assert msg.entries == SAMPLES[kind] or (kind is Kind.HELLO and msg.entries == [])
    # the entries decode to the typed tuples, not raw lists
    for got, want in zip(msg.entries, SAMPLES[kind], strict=True):
        assert type(got) is type(want)


def test_mess_types_are_a_recognisable_range() -> None:
    assert [mess_type(k) for k in Kind] == [0x5100 + k for k in range(1, 19)]
    assert is_queue_message(0x5101) and is_queue_message(0x51FF)
    assert not is_queue_message(0) and not is_queue_message(0x5200)


def test_envelope_layout_is_version_then_entries() -> None:
    [data] = encode(Kind.ACK, [Ack("t.1", 2)])
    assert msgpack.unpackb(data) == [1, [["t.1", 2]]]


def test_encode_splits_batches_to_fit_one_spread_message() -> None:
    entries = [Submit(f"p.{i}", "f", bytes(1000), None) for i in range(500)]
    chunks = encode(Kind.SUBMIT, entries)
    assert len(chunks) >= 4
    assert all(len(c) <= max_data(1) for c in chunks)
    decoded = [e for c in chunks for e in decode(mess_type(Kind.SUBMIT), c).entries]
    assert decoded == entries
    # two destination groups leave 32 bytes less
    assert max_data(2) == wire.MAX_MESSAGE_BYTES - 48 - 64


def test_a_maximal_payload_fits_the_largest_entry() -> None:
    big = Assign("w" * 64, "t" * 64, "f" * 200, bytes(MAX_PAYLOAD), "#abcdefghij#" + "d" * 19, 9, 1)
    [data] = encode(Kind.ASSIGN, [big])
    assert len(data) <= max_data(1)
    assert decode(mess_type(Kind.ASSIGN), data).entries == [big]


def test_an_entry_too_large_for_any_message_is_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        encode(Kind.SUBMIT, [Submit("p.1", "f", bytes(max_data(1)), None)])


def test_extra_trailing_fields_are_ignored_for_forward_compatibility() -> None:
    data = envelope([["p.1", "f", b"", None, "a future field"]])
    assert decode(mess_type(Kind.SUBMIT), data).entries == [Submit("p.1", "f", b"", None)]


def test_optional_trailing_fields() -> None:
    """SUBMIT's ack_ms, REGISTER's slots, CANCEL's timed_out: absent or unusable
    means None."""
    submit = mess_type(Kind.SUBMIT)
    entries = [["a", "f", b"", None, 5000], ["b", "f", b"", 10], ["c", "f", b"", None, -1]]
    assert decode(submit, envelope(entries)).entries == [
        Submit("a", "f", b"", None, 5000),
        Submit("b", "f", b"", 10, None),
        Submit("c", "f", b"", None, None),
    ]
    register = mess_type(Kind.REGISTER)
    entries = [["w1", 9, ["t"], 1], ["w2", 4, []], ["w3", 4, [], "x", "more"]]
    assert decode(register, envelope(entries)).entries == [
        Register("w1", 9, ("t",), 1),
        Register("w2", 4, ()),
        Register("w3", 4, (), None),
    ]
    cancel = mess_type(Kind.CANCEL)
    entries = [["a"], ["b", True], ["c", 1], ["d", None, "more"]]
    assert decode(cancel, envelope(entries)).entries == [
        Cancel("a"),
        Cancel("b", timed_out=True),
        Cancel("c"),
        Cancel("d"),
    ]
    # what a peer of the first revision sends still decodes (nothing new is required),
    # and a sender that sets none of the later fields sends none of them
    [data] = encode(Kind.SUBMIT, [new_entry(Submit, ("a", "f", b"", None, 250))])
    assert msgpack.unpackb(data) == [1, [["a", "f", b"", None, 250]]]
    assert decode(submit, data).entries == [Submit("a", "f", b"", None, 250)]
    # the fields of detached tasks: one unusable value is ignored, the others kept
    entries = [["d", "f", b"", None, None, True, "res", 1000, 5, 3], ["e", "f", b"", 1, 2, 1, "#"]]
    assert decode(submit, envelope(entries)).entries == [
        Submit("d", "f", b"", None, None, True, "res", 1000, 5, 3),
        Submit("e", "f", b"", 1, 2, None, None),
    ]
    hello = mess_type(Kind.REGISTER)
    assert decode(hello, envelope([["w", 1, [], 1, 1, "#m#d.1"]])).entries == [
        Register("w", 1, (), 1, 1, "#m#d.1")
    ]


def test_register_says_which_functions_a_worker_serves() -> None:
    """REGISTER's seventh field: the functions (None: every function). Names no task
    can have are left out; anything but an array of at most MAX_FUNCTIONS is ignored,
    as an unknown trailing field is: the worker then serves everything, as one that
    predates the field does."""
    register = mess_type(Kind.REGISTER)
    entries = [
        ["w1", 1, [], None, None, None, ["f", "g"]],
        ["w2", 1, []],  # an older worker: no field
        ["w3", 1, [], 1, 1, "#m#d.1", None, "a later field"],
        ["w4", 1, [], None, None, None, ["f", "", "x" * 201, 7, "g"]],
        ["w5", 1, [], None, None, None, "f"],
        ["w6", 1, [], None, None, None, ["f"] * 1001],
        ["w7", 1, [], None, None, None, []],
    ]
    got = decode(register, envelope(entries)).entries
    assert [e.functions for e in got] == [("f", "g"), None, None, ("f", "g"), None, None, ()]
    # what the Python worker sends, as an old manager reads it: the first six fields
    [data] = encode(Kind.REGISTER, [Register("w", 2, ("t",), 1, None, None, ("f",))])
    assert msgpack.unpackb(data) == [1, [["w", 2, ["t"], 1, None, None, ["f"]]]]


def test_fast_and_general_decoders_agree() -> None:
    """The inline checks of the hot kinds accept and refuse exactly what the schema does:
    anything unusual goes to the general parser, which names the problem."""
    cases = [
        (Kind.RESULT, [["t", "w", True, 1, ["E", "m", "tb"]]], True),  # error: general path
        (Kind.RESULT, [["t", "w", True, 2, "why"]], True),
        (Kind.RESULT, [["t", "w", True, False, b""]], False),  # bool status
        (Kind.RESULT, [["t", "w", True, 0, None]], False),
        (Kind.ASSIGN, [["w", "t", "f", b"", "#a#b", 1, None, "extra"]], True),
        (Kind.ASSIGN, [["w", "t", "f", b"", "#a#b", True, None]], False),
        (Kind.ASSIGN, [["w", "t", "f", b"", "#a#" + "b" * 40, 1, None]], False),
        (Kind.SUBMIT, [["t", "f", b"", False]], False),
        (Kind.DONE, [["w", ""]], False),
        (Kind.CANCEL, [["t", 1]], True),
        (Kind.ACK, [[None]], False),
    ]
    for kind, entries, ok in cases:
        data = envelope(entries)
        if ok:
            assert len(decode(mess_type(kind), data).entries) == len(entries)
        else:
            with pytest.raises(MalformedMessage, match=f"{kind.name} entry 0"):
                decode(mess_type(kind), data)


BAD = [
    pytest.param(Kind.ACK, b"\xc1", id="not-msgpack"),
    pytest.param(Kind.ACK, b"\x92\x01", id="truncated"),
    pytest.param(Kind.ACK, envelope([["a"]]) + b"\x00", id="trailing-bytes"),
    pytest.param(Kind.ACK, msgpack.packb({"v": 1}), id="map-envelope"),
    pytest.param(Kind.ACK, msgpack.packb([1]), id="short-envelope"),
    pytest.param(Kind.ACK, envelope([["a"]], version=2), id="future-version"),
    pytest.param(Kind.ACK, envelope([["a"]], version=True), id="bool-version"),
    pytest.param(Kind.ACK, envelope({"a": 1}), id="entries-not-array"),
    pytest.param(Kind.ACK, envelope(["a"]), id="entry-not-array"),
    pytest.param(Kind.ACK, envelope([[]]), id="entry-too-short"),
    pytest.param(Kind.ACK, envelope([[1]]), id="int-task-id"),
    pytest.param(Kind.ACK, envelope([[""]]), id="empty-task-id"),
    pytest.param(Kind.ACK, envelope([["x" * 65]]), id="long-task-id"),
    pytest.param(Kind.ACK, envelope([[b"a"]]), id="bin-task-id"),
    pytest.param(Kind.SUBMIT, envelope([["a", "f", "args-as-str", None]]), id="str-args"),
    pytest.param(Kind.SUBMIT, envelope([["a", "f", b"", -1]]), id="negative-timeout"),
    pytest.param(Kind.SUBMIT, envelope([["a", "f", b"", 1.5]]), id="float-timeout"),
    pytest.param(Kind.REGISTER, envelope([["w", True, []]]), id="bool-capacity"),
    pytest.param(Kind.REGISTER, envelope([["w", 10**6, []]]), id="huge-capacity"),
    pytest.param(Kind.REGISTER, envelope([["w", 1, [3]]]), id="bad-held"),
    pytest.param(
        Kind.ASSIGN, envelope([["w", "t", "f", b"", "al ice", 1, None]]), id="illegal-reply"
    ),
    pytest.param(Kind.ASSIGN, envelope([["w", "t", "f", b"", "", 1, None]]), id="empty-reply"),
    pytest.param(Kind.HELLO, envelope([[]]), id="hello-without-id"),
    pytest.param(Kind.SYNC, envelope([["r", 0, 1, "text"]]), id="sync-str-chunk"),
    pytest.param(Kind.DECIDE, envelope([["expire", "t", "", ""]]), id="decide-short"),
    pytest.param(Kind.ASSIGN, envelope([["w", "t", "f", b"", "#é#x", 1, None]]), id="non-latin"),
    pytest.param(Kind.RESULT, envelope([["t", "w", 1, 0, b""]]), id="int-final"),
    pytest.param(Kind.RESULT, envelope([["t", "w", True, 9, b""]]), id="unknown-status"),
    pytest.param(Kind.RESULT, envelope([["t", "w", True, 0, "str"]]), id="ok-not-bin"),
    pytest.param(Kind.RESULT, envelope([["t", "w", True, 1, ["T"]]]), id="short-error"),
    pytest.param(Kind.RESULT, envelope([["t", "w", True, 3, b"x"]]), id="cancel-payload"),
    pytest.param(Kind.FAILED, envelope([["t", 99, ""]]), id="unknown-reason"),
    pytest.param(Kind.ACK, b"\x92\x01\xdd\xff\xff\xff\xff", id="huge-array-claim"),
    pytest.param(Kind.ACK, b"\x92\x01\x91\x91\xdb\xff\xff\xff\xff", id="huge-str-claim"),
    pytest.param(Kind.ACK, b"\x92\x01\x91\x91\xc6\x7f\xff\xff\xff", id="huge-bin-claim"),
    pytest.param(Kind.ACK, b"\x92\x01\x91\x91\xd6\xff\x00\x00\x00\x00", id="ext-type"),
    pytest.param(Kind.ACK, b"\x92\x01" + b"\x91" * 100_000, id="deep-nesting"),
    pytest.param(Kind.ACK, b"\x92\x01\x91\x91\xa2\xff\xfe", id="bad-utf8"),
]


@pytest.mark.parametrize(("kind", "data"), BAD)
def test_malformed_input_raises_only_malformed_message(kind: Kind, data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(mess_type(kind), data)


def test_unknown_kind_and_oversized_messages_are_malformed() -> None:
    with pytest.raises(MalformedMessage, match="unknown queue message kind"):
        decode(MESS_TYPE_BASE + 77, envelope([]))
    with pytest.raises(MalformedMessage, match="too large"):
        decode(mess_type(Kind.ACK), bytes(wire.MAX_MESSAGE_BYTES + 1))
    too_many = b"\x92\x01\xdd" + (MAX_ENTRIES + 1).to_bytes(4, "big")
    with pytest.raises(MalformedMessage):
        decode(mess_type(Kind.ACK), too_many + b"\x91\xa1a" * (MAX_ENTRIES + 1))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(kind=st.sampled_from(list(Kind)), data=st.binary(max_size=200))
def test_fuzz_random_bytes_never_escape_as_other_errors(kind: Kind, data: bytes) -> None:
    try:
        decode(mess_type(kind), data)
    except MalformedMessage:
        pass


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=70),
    st.binary(max_size=20),
)
_values = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=6), max_leaves=30)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(kind=st.sampled_from(list(Kind)), entries=st.lists(_values, max_size=5))
def test_fuzz_well_formed_msgpack_with_wrong_shapes(kind: Kind, entries: list[object]) -> None:
    try:
        msg = decode(mess_type(kind), envelope(entries))
    except MalformedMessage:
        return
    # whatever is accepted re-encodes to something that decodes the same
    assert decode(mess_type(kind), encode(kind, msg.entries)[0]).entries == msg.entries


# --------------------------------------------------------------------------- names


def test_queue_groups() -> None:
    g = queue_groups("jobs")
    assert (g.manager, g.workers, g.senders) == ("jobs-mgr", "jobs-wrk", "jobs-snd")
    longest = queue_groups("q" * 27)
    assert len(longest.manager) == wire.MAX_GROUP_NAME
    wire.check_group_name(longest.manager)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "empty"),
        ("q" * 28, "at most 27"),
        ("a b", "cannot carry"),
        ("a#b", "cannot carry"),
        ("café", "cannot carry"),
        ("tab\t", "cannot carry"),
    ],
)
def test_bad_queue_names_get_a_clear_error(name: str, match: str) -> None:
    with pytest.raises(QueueNameError, match=match):
        queue_groups(name)


def test_queue_name_must_be_str() -> None:
    with pytest.raises(QueueNameError):
        queue_groups(b"jobs")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- serializers


@pytest.mark.parametrize("serializer", [MsgpackSerializer(), JsonSerializer()])
def test_serializers(serializer: object) -> None:
    assert verifyObject(ISerializer, serializer)
    value = {"name": "value", "n": [1, 2.5, None, True], "é": "ü"}
    assert serializer.loads(serializer.dumps(value)) == value  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        serializer.loads(b"\xc1\xff{")  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        serializer.dumps(object())  # type: ignore[attr-defined]


def test_msgpack_serializer_keeps_bytes_and_str_apart() -> None:
    s = MsgpackSerializer()
    assert s.loads(s.dumps([b"raw", "text"])) == [b"raw", "text"]
    with pytest.raises(ValueError):
        s.loads(b"\xdd\xff\xff\xff\xff")  # a huge claim


def test_lru_policy() -> None:
    policy = LeastRecentlyUsed()
    assert verifyObject(IAssignmentPolicy, policy)
    assert policy.choose(["oldest", "newer"]) == "oldest"


# A field value of each shape the hot kinds meet: valid ones and near misses.
_field = st.one_of(
    st.sampled_from(["t", "w", "f", "#a#b", "#a#" + "b" * 40, "alice", "", "x" * 65, "x" * 201]),
    st.sampled_from([b"", b"args", b"x" * 10]),
    st.sampled_from([0, 1, 2, 3, 9, -1, 2**31 - 1, 2**31, 0xFFFF, 0x10000]),
    st.sampled_from([True, False, None, 1.5]),
    st.lists(st.sampled_from(["E", "m", "tb", 1]), max_size=4),
)
_hot_entries = st.lists(st.lists(_field, min_size=0, max_size=8), min_size=1, max_size=3)


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(kind=st.sampled_from(sorted(_FAST, key=int)), entries=_hot_entries)
def test_fast_paths_agree_with_the_general_parser_on_random_entries(
    kind: Kind, entries: list[list[object]]
) -> None:
    """Wherever a fast path answers, the general parser gives the same entries; wherever
    the general parser refuses, the fast path gives up (None) and leaves it the error."""
    fast = _FAST[kind](entries)
    try:
        general = _parse_entries(kind, entries)
    except MalformedMessage:
        assert fast is None
        return
    if fast is not None:
        assert fast == general
        assert [type(e) for e in fast] == [type(e) for e in general]


@pytest.mark.skipif(messages._compiled is None, reason="the compiled entry checks are not built")
@settings(max_examples=3000, deadline=None, derandomize=True)
@given(kind=st.sampled_from(sorted(_FAST, key=int)), entries=_hot_entries)
def test_the_compiled_checks_agree_with_the_fast_paths(
    kind: Kind, entries: list[list[object]]
) -> None:
    """_entries.c builds what the Python fast path builds (the same values, of the same
    types), and gives up wherever the Python fast path does (it may give up more
    often: then the Python code decides)."""
    python = _FAST[kind](entries)  # first: an ASSIGN's reply_to is checked and remembered
    compiled = messages._compiled.parse(int(kind), entries)
    if int(kind) not in messages._COMPILED_KINDS:
        assert compiled is None
        return
    if python is None:
        assert compiled is None
        return
    if compiled is not None:
        assert compiled == python
        assert [type(e) for e in compiled] == [type(e) for e in python]
        for c, p in zip(compiled, python, strict=True):
            assert [type(v) for v in c] == [type(v) for v in p]


def test_the_compiled_checks_take_the_usual_messages() -> None:
    """Not a test that passes with the Python path twice: the hot kinds' usual entries
    come back from the compiled checks, which decode then uses."""
    if messages._compiled is None:
        pytest.skip("the compiled entry checks are not built")
    usual = {
        Kind.SUBMIT: [["s.1", "f", b"a", 30000, 5000], ["s.2", "f", b"", None]],
        Kind.ACK: [["s.1", 2], ["s.2"]],
        Kind.RESULT: [["s.1", "w1", True, 0, b"r"], ["s.2", "w1", False, 3, None]],
        Kind.DONE: [["w1", "s.1"]],
    }
    for kind, entries in usual.items():
        built = messages._compiled.parse(int(kind), entries)
        assert built is not None and built == _FAST[kind](entries)
        assert decode(mess_type(kind), envelope(entries)).entries == built
    assign = [["w1", "s.1", "f", b"a", "#snd#host", 1, None]]
    _FAST[Kind.ASSIGN](assign)  # the reply_to is checked once, by the Python path
    assert messages._compiled.parse(int(Kind.ASSIGN), assign) == _FAST[Kind.ASSIGN](assign)


def test_an_ack_of_the_first_revision_says_nothing_of_workers() -> None:
    """ACK's optional second field: a peer that sends only the task id is understood,
    and a value this peer cannot use is ignored as an unknown field would be."""
    assert decode(mess_type(Kind.ACK), envelope([["t.1"]])).entries == [Ack("t.1", None)]
    assert decode(mess_type(Kind.ACK), envelope([["t.1", 0]])).entries == [Ack("t.1", 0)]
    assert decode(mess_type(Kind.ACK), envelope([["t.1", "x"]])).entries == [Ack("t.1", None)]


def test_status_reports_are_msgpack_maps_checked_like_any_input() -> None:
    assert unpack_report(pack_report({"a": [1, 2.5, None]})) == {"a": [1, 2.5, None]}
    for bad in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb("x")):
        with pytest.raises(MalformedMessage):
            unpack_report(bad)
    huge = {"functions": {f"f{i}": "x" * 1000 for i in range(200)}, "depth": 1}
    small = unpack_report(pack_report(huge))
    assert small == {"depth": 1, "truncated": True}  # fits one message, and says so


def test_kinds_of_a_later_revision_are_told_apart_from_garbage() -> None:
    with pytest.raises(UnknownKind):
        decode(MESS_TYPE_BASE + 0xFF, envelope([]))
