"""Parse the Spread wire traces of ``shared/spread-wire/traces/*.trace`` (format v1).

A trace (see docs/spread-protocol.md, section 16.1) is a header of ``#`` comments
(case, connections, the API calls made and their results) followed by one record per TCP
segment: ``<t> <conn> <dir> <hex payload | !SYN | !FIN | !RST>``. A ``#   ^`` line decodes
the protocol unit(s) completed by the record just above it.

:func:`load` turns one file into a :class:`Trace` with:

- ``records``: every data record in file order, each with the ``#   ^`` decodes that follow
  it, parsed into :class:`Decode` (kind + fields);
- ``stream(conn, dir)`` / ``segments(conn, dir)``: the byte stream of one connection and
  direction, whole or as the TCP segments it came in;
- ``connections`` (label -> who) and ``calls``, the header's call log, with
  :class:`Receive` parsed from every ``SP_receive -> n: ...`` result.

The decode comments are informative, not normative (section 16.1): the golden tests
use them as an independent reading of the bytes, next to the call log.

Section numbers in this module refer to docs/spread-protocol.md.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where the shared traces live, relative to the repository root.
TRACES_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "spread-wire" / "traces"

CLIENT = "C>"
DAEMON = "D>"


def traces_dir() -> Path:
    """The traces folder (``$SPREAD_WIRE_TRACES`` overrides the default location)."""
    return Path(os.environ.get("SPREAD_WIRE_TRACES", TRACES_DIR))


def trace_paths() -> list[Path]:
    """Every ``*.trace`` file, sorted by name; empty when the folder is absent."""
    folder = traces_dir()
    return sorted(folder.glob("*.trace")) if folder.is_dir() else []


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Decode:
    """One ``#   ^`` line: what a throwaway decoder saw in the record above."""

    conn: str
    direction: str
    kind: str  # CONNECT AUTH_LIST AUTH_CHOICE ACCEPT REJECT MESSAGE UNDECODABLE
    text: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Record:
    """One data record (one TCP segment payload, or a ``!SYN``/``!FIN``/``!RST`` marker)."""

    lineno: int
    time: float
    conn: str
    direction: str
    payload: bytes  # empty for markers
    marker: str | None  # "SYN", "FIN", "RST" or None
    decodes: list[Decode] = field(default_factory=list)


@dataclass(frozen=True)
class Receive:
    """An ``SP_receive -> n: ...`` result of the call log, as libspread reported it."""

    result: int
    service_type: int
    sender: str
    groups: tuple[str, ...]
    mess_type: int
    endian_mismatch: int
    data_prefix: bytes
    data_len: int


@dataclass(frozen=True)
class Call:
    """One line of the header's call log: ``<time> <who> <call> [-> <result>]``."""

    time: float
    who: str
    text: str
    receive: Receive | None = None


@dataclass
class Trace:
    """A parsed trace file."""

    path: Path
    case: str
    title: str
    connections: dict[str, str]  # label -> who ("alice", "raw", ... or "" if unnamed)
    connection_notes: dict[str, str]
    calls: list[Call]
    records: list[Record]
    notes: list[str]

    @property
    def name(self) -> str:
        """The case id, e.g. ``a1_connect_accept_membership_on``."""
        return self.case

    @property
    def short(self) -> str:
        """The case's short id, e.g. ``a1``."""
        return self.case.split("_", 1)[0]

    def conns(self) -> list[str]:
        """Connection labels in order of first packet."""
        seen: dict[str, None] = {}
        for rec in self.records:
            seen.setdefault(rec.conn, None)
        return list(seen)

    def data_records(self, conn: str, direction: str) -> list[Record]:
        """The payload-carrying records of one connection and direction, in order."""
        return [
            r
            for r in self.records
            if r.conn == conn and r.direction == direction and r.marker is None
        ]

    def segments(self, conn: str, direction: str) -> list[bytes]:
        """The TCP segment payloads of one connection and direction, in order."""
        return [r.payload for r in self.data_records(conn, direction)]

    def stream(self, conn: str, direction: str) -> bytes:
        """The whole byte stream of one connection and direction."""
        return b"".join(self.segments(conn, direction))

    def markers(self, conn: str, direction: str) -> list[str]:
        """``SYN`` / ``FIN`` / ``RST`` markers of one connection and direction."""
        return [
            r.marker
            for r in self.records
            if r.conn == conn and r.direction == direction and r.marker is not None
        ]

    def decodes(self, conn: str, direction: str) -> list[Decode]:
        """The decode comments for one connection and direction, in order."""
        return [
            d
            for r in self.records
            for d in r.decodes
            if d.conn == conn and d.direction == direction
        ]

    def receives(self, who: str) -> list[Receive]:
        """Everything ``who``'s SP_receive calls returned (successful ones), in order."""
        return [c.receive for c in self.calls if c.who == who and c.receive is not None]


# --------------------------------------------------------------------------- parsing

_RECORD = re.compile(r"^\s*(\d+\.\d+) (C\d+) (C>|D>) (\S+)\s*$")
_DECODE = re.compile(r"^#   \^ (C\d+) (C>|D>) (.*)$")
_CONN = re.compile(r"^#   (C\d+) = \S+ -> \S+\s+(.*)$")
_CALL = re.compile(r"^#\s+(\d+\.\d+)\s+(\S+)\s+(.*)$")

_PY_STR = r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
_PY_BYTES = r"(?:b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")"

_D_CONNECT = re.compile(
    r"^CONNECT lib_version=(\d+)\.(\d+)\.(\d+)(?P<nopatch> \(no patch byte: <=3\.14\))? "
    r"flags=0x([0-9a-f]{2}) \(group_membership=(\d), priority=(\d+)\) "
    rf"name_len=(\d+) name=({_PY_STR})$"
)
_D_AUTH_LIST = re.compile(rf"^AUTH LIST len=(\d+) methods=({_PY_STR})$")
_D_AUTH_CHOICE = re.compile(r"^AUTH CHOICE \(90 bytes = 3 slots x 30, NUL padded\): (\[.*\])$")
_D_ACCEPT = re.compile(
    rf"^ACCEPT_SESSION daemon_version=([\d.]+) private_group_len=(\d+) private_group=({_PY_STR})$"
)
_D_REJECT = re.compile(r"^REJECT (\(instead of auth list\) )?code (-\d+) = (\w+)$")
_D_UNDECODABLE = re.compile(r"^undecodable \((.*)\); decoding of this direction stopped$")
_D_MESSAGE = re.compile(
    r"^MESSAGE header: type=0x([0-9a-f]{8}) \[([^\]]*)\] byte_order=(LE|BE) "
    rf"sender=({_PY_STR}) num_groups=(-?\d+) hint=0x([0-9a-f]{{8}}) "
    r"\(mess_type=(-?\d+), hint_byte_order=(LE|BE)\) data_len=(-?\d+); "
    r"groups=(\[[^\]]*\])(?:; (.*))?$"
)
_D_DATA = re.compile(rf"^data=({_PY_BYTES})(?:\.\.\.\(\+(\d+) bytes\))?$")
_D_MEMB = re.compile(
    r"^MEMBERSHIP BODY: group_id=\((-?\d+), (-?\d+), (-?\d+)\) num_vs_sets=(\d+) "
    r"local_vs_set_offset=(\d+) vs_sets=(\[.*?\]\])"
    r"(?: \(vs-set offsets (\[[\d, ]*\]); local = set (\d+)\))?$"
)
_D_TRANS = re.compile(r"^TRANSITION BODY: group_id=\((-?\d+), (-?\d+), (-?\d+)\)$")
_RECEIVE = re.compile(
    r"^SP_receive -> (-?\d+): service_type=0x([0-9a-f]+) \[[^\]]*\] "
    rf"sender=({_PY_STR}) num_groups=(\d+) groups=(\[[^\]]*\]) "
    rf"mess_type=(-?\d+) endian_mismatch=(\d+) data=({_PY_BYTES})"
    r"(?:\.\.\.\((\d+) bytes\))?(?: \{.*\})?$"
)


def _literal(text: str) -> Any:
    return ast.literal_eval(text)


def parse_decode(conn: str, direction: str, text: str) -> Decode:
    """Parse the text of one ``#   ^`` line (after the connection and direction)."""
    m = _D_MESSAGE.match(text)
    if m:
        fields: dict[str, Any] = {
            "type": int(m.group(1), 16),
            "type_names": tuple(n for n in m.group(2).split("|") if n),
            "little_endian": m.group(3) == "LE",
            "sender": _literal(m.group(4)),
            "num_groups": int(m.group(5)),
            "hint": int(m.group(6), 16),
            "mess_type": int(m.group(7)),
            "hint_little_endian": m.group(8) == "LE",
            "data_len": int(m.group(9)),
            "groups": tuple(_literal(m.group(10))),
        }
        _message_body(m.group(11) or "", fields)
        return Decode(conn, direction, "MESSAGE", text, fields)
    m = _D_CONNECT.match(text)
    if m:
        return Decode(
            conn,
            direction,
            "CONNECT",
            text,
            {
                "version": (int(m.group(1)), int(m.group(2)), int(m.group(3))),
                "patch_byte": m.group("nopatch") is None,
                "flags": int(m.group(5), 16),
                "membership": m.group(6) == "1",
                "priority": int(m.group(7)),
                "name_len": int(m.group(8)),
                "name": _literal(m.group(9)),
            },
        )
    m = _D_AUTH_LIST.match(text)
    if m:
        fields = {"len": int(m.group(1)), "methods": _literal(m.group(2))}
        return Decode(conn, direction, "AUTH_LIST", text, fields)
    m = _D_AUTH_CHOICE.match(text)
    if m:
        fields = {"slots": tuple(_literal(m.group(1)))}
        return Decode(conn, direction, "AUTH_CHOICE", text, fields)
    m = _D_ACCEPT.match(text)
    if m:
        fields = {
            "daemon_version": tuple(int(v) for v in m.group(1).split(".")),
            "private_group_len": int(m.group(2)),
            "private_group": _literal(m.group(3)),
        }
        return Decode(conn, direction, "ACCEPT", text, fields)
    m = _D_REJECT.match(text)
    if m:
        fields = {
            "instead_of_auth_list": m.group(1) is not None,
            "code": int(m.group(2)),
            "code_name": m.group(3),
        }
        return Decode(conn, direction, "REJECT", text, fields)
    m = _D_UNDECODABLE.match(text)
    if m:
        return Decode(conn, direction, "UNDECODABLE", text, {"reason": m.group(1)})
    raise ValueError(f"unrecognised decode comment: {text!r}")


def _message_body(rest: str, fields: dict[str, Any]) -> None:
    fields["data_prefix"] = None
    fields["membership"] = None
    fields["transition_group_id"] = None
    if not rest:
        return
    m = _D_DATA.match(rest)
    if m:
        prefix = _literal(m.group(1))
        fields["data_prefix"] = prefix
        fields["data_truncated"] = m.group(2) is not None
        return
    m = _D_MEMB.match(rest)
    if m:
        sets = tuple(tuple(s) for s in _literal(m.group(6)))
        fields["membership"] = {
            "group_id": (int(m.group(1)), int(m.group(2)), int(m.group(3))),
            "num_vs_sets": int(m.group(4)),
            "local_vs_set_offset": int(m.group(5)),
            "vs_sets": sets,
            "offsets": tuple(_literal(m.group(7))) if m.group(7) else None,
            "local_index": int(m.group(8)) if m.group(8) else None,
        }
        return
    m = _D_TRANS.match(rest)
    if m:
        fields["transition_group_id"] = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return
    raise ValueError(f"unrecognised message body decode: {rest!r}")


def parse_receive(text: str) -> Receive | None:
    """Parse an ``SP_receive -> n: ...`` call-log entry (None for anything else)."""
    m = _RECEIVE.match(text)
    if not m:
        return None
    data = _literal(m.group(8))
    data_len = int(m.group(9)) if m.group(9) else len(data)
    return Receive(
        result=int(m.group(1)),
        service_type=int(m.group(2), 16),
        sender=_literal(m.group(3)),
        groups=tuple(_literal(m.group(5))),
        mess_type=int(m.group(6)),
        endian_mismatch=int(m.group(7)),
        data_prefix=data,
        data_len=data_len,
    )


def load(path: str | Path) -> Trace:
    """Parse one trace file."""
    path = Path(path)
    case = title = ""
    connections: dict[str, str] = {}
    connection_notes: dict[str, str] = {}
    calls: list[Call] = []
    records: list[Record] = []
    notes: list[str] = []
    section = ""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("#   ^ "):
                m = _DECODE.match(line)
                if not m or not records:
                    raise ValueError(f"{path.name}:{lineno}: stray decode line")
                records[-1].decodes.append(parse_decode(m.group(1), m.group(2), m.group(3)))
                continue
            if line.startswith("#"):
                body = line[1:].strip()
                if body.startswith("case:"):
                    case = body[5:].strip()
                elif body.startswith("title:"):
                    title = body[6:].strip()
                elif body.startswith("connections"):
                    section = "connections"
                elif body.startswith("calls made"):
                    section = "calls"
                elif body.startswith(("records:", "observed", "observations")):
                    section = ""
                elif body.startswith("note:"):
                    notes.append(body[5:].strip())
                elif section == "connections":
                    m = _CONN.match(line)
                    if m:
                        desc = m.group(2)
                        who = desc.split(":", 1)[0] if not desc.startswith("(") else ""
                        connections[m.group(1)] = who
                        connection_notes[m.group(1)] = desc
                elif section == "calls":
                    m = _CALL.match(line)
                    if m:
                        text = m.group(3)
                        calls.append(Call(float(m.group(1)), m.group(2), text, parse_receive(text)))
                continue
            m = _RECORD.match(line)
            if not m:
                raise ValueError(f"{path.name}:{lineno}: cannot parse record {line!r}")
            t, conn, direction, payload = m.groups()
            if payload.startswith("!"):
                records.append(Record(lineno, float(t), conn, direction, b"", payload[1:]))
            else:
                records.append(
                    Record(lineno, float(t), conn, direction, bytes.fromhex(payload), None)
                )
    if not case:
        raise ValueError(f"{path.name}: no 'case:' line")
    return Trace(path, case, title, connections, connection_notes, calls, records, notes)


_cache: dict[Path, Trace] = {}


def load_cached(path: str | Path) -> Trace:
    """:func:`load`, memoised per path (the big traces take a moment to parse)."""
    p = Path(path)
    trace = _cache.get(p)
    if trace is None:
        trace = _cache[p] = load(p)
    return trace


def by_short_name(short: str) -> Trace:
    """The trace whose case id starts with ``short`` + ``_`` (e.g. ``"f7"``)."""
    for p in trace_paths():
        if p.name.split("_", 1)[0] == short:
            return load_cached(p)
    raise KeyError(short)


# --------------------------------------------------------------------------- vectors


def to_vector(trace: Trace, conns: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON-able excerpt of ``trace``: the records of ``conns`` (default: all) with
    their decode lines, and the calls of those connections' owners.

    :func:`from_vector` turns it back into a :class:`Trace` that the golden checks treat
    exactly like the file it came from.
    """
    keep = set(conns if conns is not None else trace.conns())
    whos = {trace.connections.get(c, "") for c in keep}
    records = []
    for rec in trace.records:
        if rec.conn not in keep:
            continue
        payload = "!" + rec.marker if rec.marker else rec.payload.hex()
        decodes = [f"{d.conn} {d.direction} {d.text}" for d in rec.decodes if d.conn in keep]
        records.append([rec.time, rec.conn, rec.direction, payload, decodes])
    return {
        "format": "spreadqueue-wire-vector/1",
        "case": trace.case,
        "title": trace.title,
        "source": trace.path.name,
        "connections": {c: trace.connections.get(c, "") for c in sorted(keep)},
        "connection_notes": {c: trace.connection_notes.get(c, "") for c in sorted(keep)},
        "calls": [[c.time, c.who, c.text] for c in trace.calls if c.who in whos],
        "records": records,
        "notes": [n for n in trace.notes if n.split(" ", 1)[0] in keep],
    }


def from_vector(data: dict[str, Any], path: Path | None = None) -> Trace:
    """The :class:`Trace` stored by :func:`to_vector`."""
    if data.get("format") != "spreadqueue-wire-vector/1":
        raise ValueError(f"not a wire vector: format {data.get('format')!r}")
    records = []
    for i, (t, conn, direction, payload, decodes) in enumerate(data["records"]):
        parsed = []
        for text in decodes:
            d_conn, d_dir, d_text = text.split(" ", 2)
            parsed.append(parse_decode(d_conn, d_dir, d_text))
        if payload.startswith("!"):
            records.append(Record(i, float(t), conn, direction, b"", payload[1:], parsed))
        else:
            records.append(
                Record(i, float(t), conn, direction, bytes.fromhex(payload), None, parsed)
            )
    calls = [Call(float(t), who, text, parse_receive(text)) for t, who, text in data["calls"]]
    return Trace(
        path or Path(data["source"]),
        data["case"],
        data["title"],
        dict(data["connections"]),
        dict(data["connection_notes"]),
        calls,
        records,
        list(data["notes"]),
    )


def load_vector(path: str | Path) -> Trace:
    """Load one ``tests/vectors/*.json`` file as a :class:`Trace`."""
    p = Path(path)
    with p.open(encoding="utf-8") as fh:
        return from_vector(json.load(fh), p)
