"""Decoders: incremental, fed arbitrary chunks of one direction of a connection.

- :class:`ClientDecoder` (the client's): what a daemon sends, as :data:`ToClient` frames.
- :class:`DaemonDecoder` (the daemon's): what a client sends, as :data:`ToDaemon`
  frames, with the real daemon's handshake and header rules.
- :func:`decode_relay`: one whole relayed data message, without a decoder.

A frame that arrives in one chunk costs one copy (its data); a frame spread over
several chunks keeps references to them and is joined once when complete. A decoder
that raised stays failed; the exception's ``frames`` holds what the same ``feed`` call
decoded before the bad unit.

Section numbers in this module refer to docs/spread-protocol.md.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any, Final, Protocol

from ..errors import HandshakeError, WireError
from .constants import (
    AUTH_CHOICE_SIZE,
    AUTH_SLOT,
    AUTH_SLOTS,
    CAUSE_MASK,
    CAUSED_BY_DISCONNECT,
    CAUSED_BY_JOIN,
    CAUSED_BY_LEAVE,
    CONTROL_MESS,
    DAEMON_CHECK_LIMIT,
    DEFAULT_AUTH_METHODS,
    DEFAULT_MAX_INCOMING,
    ENDIAN_MARKER,
    GROUP_FIELD,
    GROUP_ID_BE,
    GROUP_ID_LE,
    HEADER_BE,
    HEADER_LE,
    HEADER_SIZE,
    JOIN_MESS,
    KILL_MESS,
    LIBRARY_LIMIT,
    LIBRARY_VERSION,
    MAX_AUTH_LIST,
    MAX_GROUP_NAME,
    MAX_GROUPS,
    MAX_MESSAGE_BYTES,
    MAX_PRIVATE_NAME,
    MEMBERSHIP_MESS,
    REG_MEMB_MESS,
    REGULAR_MESS,
    REJECT_MESS,
    TRANSITION_MESS,
    U32_BE,
    U32_LE,
    RejectCode,
    c_div,
    hint_mess_type,
    signed8,
    version_number,
)
from .frames import (
    Accepted,
    AuthChoice,
    AuthList,
    ConnectRequest,
    GroupId,
    HandshakeRejected,
    Join,
    Kill,
    Leave,
    MembershipMessage,
    Multicast,
    RegularMessage,
    RejectMessage,
    Relay,
    ToClient,
    ToDaemon,
    new_frame,
)
from .names import (
    canonical_cache,
    canonical_field,
    field_name,
    group_names,
    is_legal_name,
    name_cache,
    name_of,
    one_group_cache,
    one_group_of,
    pad_name,
    to_bytes,
)


def pure_requested() -> bool:
    """True when SPREADQUEUE_PURE is set to anything but ``""`` or ``0``: compiled fast
    paths (this module's, the queue messages') stay unused."""
    return os.environ.get("SPREADQUEUE_PURE", "") not in ("", "0")


def _load_speedups() -> Any:
    """The compiled scanners (``_speedups.c``), or None: not built, or
    :func:`pure_requested`."""
    if pure_requested():
        return None
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    _speedups.setup(
        name_cache,
        name_of,
        one_group_cache,
        one_group_of,
        group_names,
        canonical_cache,
        RegularMessage,
        Relay,
    )
    return _speedups


_speedups = _load_speedups()
#: True when the decoders use the compiled fast path by default.
ACCELERATED: Final = _speedups is not None


def _use_speedups(accelerated: bool | None) -> Any:
    if accelerated is None or accelerated:
        if accelerated and _speedups is None:
            raise RuntimeError("the compiled decoder is not available (see ACCELERATED)")
        return _speedups
    return None


_MEMB_HEAD_LE = struct.Struct("<IIIII")
_MEMB_HEAD_BE = struct.Struct(">IIIII")
_HINT_ALLOWED: Final = 0x80FFFF80
#: Type bits that keep a message from being relayed byte for byte (see Relay): all but
#: the endian marker, the service levels and SELF_DISCARD.
_NOT_VERBATIM: Final = 0xFFFFFFFF & ~(0x80000080 | 0x3F | 0x40)
#: Pieces smaller than this are staged into a buffer instead of being kept by reference,
#: so that a stream dribbled in tiny chunks does not pin one object per chunk.
_SMALL_PIECE: Final = 512
_KILL: Final = Kill()


def decode_relay(buf: bytes) -> RegularMessage:
    """The frame a client decodes from ``buf``, one whole daemon -> client data message
    with a little-endian header (what :func:`encode_relay` makes, or a :class:`Relay`'s
    ``wire``): the decoding of :class:`ClientDecoder`, without a decoder."""
    if _speedups is not None:
        # The compiled scanner of ClientDecoder: the same frame, when it takes the
        # message whole (else the code below decides, and raises what it raises).
        out: list[Any] = []
        if _speedups.scan_client(buf, 0, out, len(buf)) == len(buf) and len(out) == 1:
            frame = out[0]
            if len(frame.groups) <= MAX_GROUPS:
                return frame  # type: ignore[no-any-return]
    return _decode_relay(buf)


def _decode_relay(buf: bytes) -> RegularMessage:
    """:func:`decode_relay`, the reference (pure Python) path."""
    stype, sender, num_groups, _hint, data_len = HEADER_LE.unpack_from(buf)
    if not stype & REGULAR_MESS or stype & REJECT_MESS or not 0 <= num_groups <= MAX_GROUPS:
        raise WireError(f"not a relayed data message (type 0x{stype:08x})", 0)
    doff = HEADER_SIZE + GROUP_FIELD * num_groups
    if len(buf) != doff + data_len:
        raise WireError(f"relayed message of {len(buf)} bytes; its header says {doff + data_len}")
    if num_groups == 1:
        field = buf[HEADER_SIZE:doff]
        dests = one_group_cache.get(field) or one_group_of(field)
    else:
        dests = group_names(buf, HEADER_SIZE, num_groups)
    mess_type, little = hint_mess_type(buf, 40)
    return new_frame(  # type: ignore[no-any-return]
        RegularMessage,
        (
            stype & ~ENDIAN_MARKER,
            name_cache.get(sender) or name_of(sender),
            dests,
            mess_type,
            buf[doff:],
            not little,
        ),
    )


class _Build(Protocol):
    def __call__(
        self,
        hbuf: bytes,
        hpos: int,
        little: bool,
        stype: int,
        sender: bytes,
        num_groups: int,
        data_len: int,
        gbuf: bytes,
        goff: int,
        payload: bytes,
    ) -> Any: ...


class _Check(Protocol):
    def __call__(
        self, stype: int, sender: bytes, num_groups: int, hint: int, data_len: int, total: int
    ) -> None: ...


class _Relay(Protocol):
    def __call__(
        self, buf: bytes, pos: int, total: int, stype: int, sender: bytes, num_groups: int
    ) -> Any: ...


def _join(parts: list[Any]) -> bytes:
    if not parts:
        return b""
    if len(parts) == 1 and type(parts[0]) is bytes:
        return parts[0]  # type: ignore[no-any-return]
    return b"".join(parts)


class _MessageStream:
    """Splits the message phase of a stream into messages and builds their frames.

    A message is a 48-byte header, then ``prefix`` (the 4-byte old_type of a REJECT_MESS
    in the daemon -> client direction, then 32 bytes per group), then ``data``. Whole
    messages inside one chunk are built straight from it. A message cut by a chunk
    boundary is collected as references to the chunks' bytes (tiny pieces are staged in
    a buffer instead) and joined once complete, so each byte is copied once into its
    frame and at most once more into a staging buffer: linear in the stream's length
    whatever the chunk sizes.
    """

    __slots__ = (
        "_build",
        "_check",
        "_data",
        "_dneed",
        "_failed",
        "_hdr",
        "_head",
        "_old_type_field",
        "_pneed",
        "_prefix",
        "_relay",
        "offset",
        "scan",
        "scan_args",
        "staged",
    )

    def __init__(
        self,
        build: _Build,
        check: _Check,
        *,
        old_type_field: bool,
        relay: _Relay | None = None,
    ) -> None:
        self._build = build
        self._check = check
        # Tried first on every whole little-endian message (``buf[pos:pos + total]``);
        # when it returns a frame, ``build`` is not called.
        self._relay = relay
        # Only the daemon writes the REJECT_MESS old_type field; a client's header with
        # that bit is just a header (the daemon reads no extra bytes for it).
        self._old_type_field = old_type_field
        self._head = bytearray()
        self._hdr: tuple[Any, ...] | None = None
        self._prefix: list[Any] = []
        self._data: list[Any] = []
        self._pneed = 0
        self._dneed = 0
        self._failed: WireError | None = None
        #: Stream offset of the first byte of the message being decoded.
        self.offset = 0
        #: Bytes copied into staging buffers so far (not counting the frames' own copy).
        self.staged = 0
        #: The compiled scanner of whole messages (``scan(data, pos, out, *scan_args)``
        #: -> new pos), or None: the pure-Python path.
        self.scan: Any = None
        self.scan_args: tuple[Any, ...] = ()

    @property
    def buffered(self) -> int:
        """Bytes received that belong to a message not yet complete."""
        if self._hdr is None:
            return len(self._head)
        return self._hdr[-1] - self._pneed - self._dneed  # type: ignore[no-any-return]

    def feed(self, data: bytes) -> list[Any]:
        """Decode ``data``; return the frames it completed."""
        if self._failed is not None:
            raise WireError("the stream already failed to decode", self._failed.offset)
        out: list[Any] = []
        try:
            self._feed(data, out)
        except WireError as err:
            err.frames = out
            self._failed = err
            raise
        return out

    def _parse(self, hbuf: bytes, hpos: int) -> tuple[Any, ...]:
        """Parse and check the header at ``hbuf[hpos:]``; return its fields."""
        little = bool(hbuf[hpos] & 0x80 and hbuf[hpos + 3] & 0x80)
        stype, sender, num_groups, hint, data_len = (
            HEADER_LE if little else HEADER_BE
        ).unpack_from(hbuf, hpos)
        extra = 4 if self._old_type_field and stype & REJECT_MESS else 0
        total = HEADER_SIZE + extra + GROUP_FIELD * num_groups + data_len
        self._check(stype, sender, num_groups, hint, data_len, total)
        if num_groups < 0 or data_len < 0:
            raise WireError(
                f"negative count in header (groups={num_groups}, data_len={data_len})",
                self.offset,
            )
        return (little, stype, sender, num_groups, data_len, extra, total)

    def _feed(self, data: bytes, out: list[Any]) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # we keep references: never to a buffer the caller may reuse
        n = len(data)
        pos = 0
        if self._hdr is not None:
            pos = self._fill(data, 0, out)
            if self._hdr is not None:
                return
        elif self._head:
            need = HEADER_SIZE - len(self._head)
            if n < need:
                self._head += data
                self.staged += n
                return
            self._head += memoryview(data)[:need]
            self.staged += need
            pos = need
            hbuf = bytes(self._head)
            self._head.clear()
            self._start(hbuf, self._parse(hbuf, 0), out)
            if self._hdr is not None:
                pos = self._fill(data, pos, out)
                if self._hdr is not None:
                    return
        # The hot loop: whole messages inside this chunk. It repeats _parse inline, as
        # a call per message is a measurable share of the cost of a small message
        # (pipelined C=100 6.6% slower, relay 4.6%, without it). test_wire's
        # any-chunking round trips hold it to the _parse path: fed whole, a stream goes
        # through this loop; fed byte by byte, through _start/_fill/_parse.
        build = self._build
        check = self._check
        relay = self._relay
        old_type_field = self._old_type_field
        unpack_le = HEADER_LE.unpack_from
        unpack_be = HEADER_BE.unpack_from
        scan = self.scan
        while n - pos >= HEADER_SIZE:
            if scan is not None:
                # The compiled fast path takes the run of common messages from here
                # and stops at the first one it leaves to the code below (see
                # _speedups.c): the same frames, and no error of its own.
                end = scan(data, pos, out, *self.scan_args)
                if end != pos:
                    self.offset += end - pos
                    pos = end
                    if n - pos < HEADER_SIZE:
                        break
            little = bool(data[pos] & 0x80 and data[pos + 3] & 0x80)
            stype, sender, num_groups, hint, data_len = (unpack_le if little else unpack_be)(
                data, pos
            )
            extra = 4 if old_type_field and stype & REJECT_MESS else 0
            total = HEADER_SIZE + extra + GROUP_FIELD * num_groups + data_len
            check(stype, sender, num_groups, hint, data_len, total)
            if num_groups < 0 or data_len < 0:
                self._parse(data, pos)  # raises the error
            if n - pos < total:
                fields = (little, stype, sender, num_groups, data_len, extra, total)
                self._start(data[pos : pos + HEADER_SIZE], fields, out)
                self._fill(data, pos + HEADER_SIZE, out)
                return
            if relay is not None and little:
                frame = relay(data, pos, total, stype, sender, num_groups)
                if frame is not None:
                    out.append(frame)
                    pos += total
                    self.offset += total
                    continue
            goff = pos + HEADER_SIZE
            doff = goff + extra + GROUP_FIELD * num_groups
            out.append(
                build(
                    data,
                    pos,
                    little,
                    stype,
                    sender,
                    num_groups,
                    data_len,
                    data,
                    goff,
                    data[doff : doff + data_len],
                )
            )
            pos += total
            self.offset += total
        if pos < n:
            self._head += memoryview(data)[pos:]
            self.staged += n - pos

    def _start(self, hbuf: bytes, fields: tuple[Any, ...], out: list[Any]) -> None:
        """Begin collecting the body of the message whose header is ``hbuf``."""
        _little, _stype, _sender, num_groups, data_len, extra, total = fields
        self._hdr = (hbuf, *fields)
        self._pneed = extra + GROUP_FIELD * num_groups
        self._dneed = data_len
        if total == HEADER_SIZE:
            self._finish(out)

    def _add(self, parts: list[Any], data: bytes, pos: int, take: int) -> None:
        if take >= _SMALL_PIECE:
            parts.append(data if take == len(data) else memoryview(data)[pos : pos + take])
            return
        piece = memoryview(data)[pos : pos + take]
        if parts and type(parts[-1]) is bytearray:
            parts[-1] += piece
        else:
            parts.append(bytearray(piece))
        self.staged += take

    def _fill(self, data: bytes, pos: int, out: list[Any]) -> int:
        """Add ``data[pos:]`` to the message being collected; return the new position."""
        n = len(data)
        if self._pneed:
            take = min(self._pneed, n - pos)
            if take:
                self._add(self._prefix, data, pos, take)
                self._pneed -= take
                pos += take
            if self._pneed:
                return pos
        if self._dneed:
            take = min(self._dneed, n - pos)
            if take:
                self._add(self._data, data, pos, take)
                self._dneed -= take
                pos += take
            if self._dneed:
                return pos
        self._finish(out)
        return pos

    def _finish(self, out: list[Any]) -> None:
        assert self._hdr is not None
        hbuf, little, stype, sender, num_groups, data_len, extra, total = self._hdr
        relay = self._relay
        if relay is not None and little:
            # One join of the whole message: forwarded as is, it is copied only once.
            whole = b"".join([hbuf, *self._prefix, *self._data])
            self._prefix = []
            self._data = []
            self._hdr = None
            frame = relay(whole, 0, total, stype, sender, num_groups)
            if frame is None:
                doff = HEADER_SIZE + extra + GROUP_FIELD * num_groups
                frame = self._build(
                    whole,
                    0,
                    little,
                    stype,
                    sender,
                    num_groups,
                    data_len,
                    whole,
                    HEADER_SIZE,
                    whole[doff:],
                )
            out.append(frame)
            self.offset += total
            return
        prefix = _join(self._prefix)
        payload = _join(self._data)
        self._prefix = []
        self._data = []
        self._hdr = None
        out.append(
            self._build(hbuf, 0, little, stype, sender, num_groups, data_len, prefix, 0, payload)
        )
        self.offset += total


class ClientDecoder:
    """Decodes the daemon -> client stream of one connection.

    ``version`` is the library version the client announced: it decides whether an
    auth list comes and whether the accept record carries a patch version. Frames
    larger than ``max_frame`` bytes raise :class:`WireError` as soon as their header is
    seen, before anything is buffered for them.

    ``accelerated`` picks the decoding path: None (the default) the compiled one when
    it is built (:data:`ACCELERATED`), False the pure-Python one, True the compiled one
    or RuntimeError. Both yield the same frames and raise the same errors.
    """

    def __init__(
        self,
        version: Sequence[int] = LIBRARY_VERSION,
        *,
        max_frame: int = DEFAULT_MAX_INCOMING,
        accelerated: bool | None = None,
    ) -> None:
        self._version = version_number(version)
        self._state = "auth" if self._version >= 31600 else "accept"
        self._hs = bytearray()
        self._offset = 0
        self._max_frame = max_frame
        self._failed: WireError | None = None
        self._messages = _MessageStream(self._message, self._check, old_type_field=True)
        speedups = _use_speedups(accelerated)
        if speedups is not None:
            self._messages.scan = speedups.scan_client
            self._messages.scan_args = (max_frame,)

    @property
    def established(self) -> bool:
        """True once the accept record has been decoded."""
        return self._state == "messages"

    @property
    def buffered(self) -> int:
        """Bytes held for a unit that is not complete yet."""
        if self._state == "messages":
            return self._messages.buffered
        return len(self._hs)

    @property
    def staged_bytes(self) -> int:
        """Message bytes copied into staging buffers so far (a diagnostic).

        Frames cut by chunk boundaries stage their tiny pieces; big pieces are kept by
        reference. Whatever the chunking, this never exceeds the bytes fed: no buffer
        is ever re-copied as it grows.
        """
        return self._messages.staged

    def feed(self, data: bytes) -> list[ToClient]:
        """Decode ``data`` (any chunk of the stream); return the frames it completed.

        Raises :class:`WireError` when the stream breaks the protocol; its ``frames``
        are the frames decoded from ``data`` before the bad unit. After a
        :class:`HandshakeRejected` the daemon closes: later bytes are ignored.
        """
        if self._state == "messages":
            return self._messages.feed(data)  # type: ignore[no-any-return]
        if self._failed is not None:
            raise WireError("the stream already failed to decode", self._failed.offset)
        if self._state == "closed":
            return []
        out: list[ToClient] = []
        try:
            self._hs += data
            while self._state in ("auth", "accept") and self._hs:
                frame, used = self._handshake_unit(self._hs)
                if frame is None:
                    return out
                out.append(frame)
                self._offset += used
                del self._hs[:used]
            if self._state == "messages" and self._hs:
                rest = bytes(self._hs)
                self._hs.clear()
                out.extend(self._messages.feed(rest))
        except WireError as err:
            err.frames = out + err.frames
            self._failed = err
            raise
        return out

    def _handshake_unit(self, buf: bytearray) -> tuple[ToClient | None, int]:
        code = signed8(buf[0])
        if code < 0:
            # libspread reads the auth-list length and the accept code as signed chars:
            # negative is a reject code, and the daemon closes after it (section 4).
            self._state = "closed"
            return HandshakeRejected(code), 1
        if self._state == "auth":
            if code > MAX_AUTH_LIST:
                raise WireError(f"auth list length {code} exceeds {MAX_AUTH_LIST}", self._offset)
            if len(buf) < 1 + code:
                return None, 0
            methods = tuple(bytes(buf[1 : 1 + code]).decode("ascii", "replace").split())
            self._state = "accept"
            return AuthList(methods), 1 + code
        if code != RejectCode.ACCEPT_SESSION:
            raise WireError(f"unexpected accept code {code}", self._offset)
        nver = 3 if self._version >= 31500 else 2
        if len(buf) < 2 + nver:
            return None, 0
        glen = buf[1 + nver]
        version = tuple(buf[1 : 1 + nver])
        if glen > MAX_GROUP_NAME or any(v > 127 for v in version):
            # libspread refuses these (CONNECTION_CLOSED): not a daemon's accept record.
            raise WireError(
                f"accept record with version {version} and a {glen}-byte private group",
                self._offset,
            )
        if len(buf) < 2 + nver + glen:
            return None, 0
        group = bytes(buf[2 + nver : 2 + nver + glen]).decode("latin-1")
        self._state = "messages"
        # From now on feed() only hands each read to the message stream: let it be
        # that stream's feed (one call less per read; the state never changes again).
        self.feed = self._messages.feed  # type: ignore[method-assign]
        self._messages.offset = self._offset + 2 + nver + glen
        return Accepted(version, group), 2 + nver + glen

    def _check(
        self, stype: int, sender: bytes, num_groups: int, hint: int, data_len: int, total: int
    ) -> None:
        if total > self._max_frame:
            raise WireError(
                f"frame of {total} bytes exceeds the limit of {self._max_frame}",
                self._messages.offset,
            )

    def _message(
        self,
        hbuf: bytes,
        hpos: int,
        little: bool,
        stype: int,
        sender: bytes,
        num_groups: int,
        data_len: int,
        gbuf: bytes,
        goff: int,
        payload: bytes,
    ) -> ToClient:
        # The order of the tests is libspread's: REJECT_MESS first, then any service
        # bit makes a regular message, then the membership bits.
        sender_name = name_cache.get(sender) or name_of(sender)
        if stype & REJECT_MESS:
            (old_type,) = (U32_LE if little else U32_BE).unpack_from(gbuf, goff)
            mess_type, _ = hint_mess_type(hbuf, hpos + 40)
            return RejectMessage(
                stype & ~ENDIAN_MARKER,
                old_type & ~ENDIAN_MARKER,
                sender_name,
                group_names(gbuf, goff + 4, num_groups),
                mess_type,
                payload,
            )
        stype &= ~ENDIAN_MARKER
        if stype & REGULAR_MESS:
            # hint_mess_type, inlined: this runs once per message received.
            if hbuf[hpos + 40] & 0x80 and hbuf[hpos + 43] & 0x80:
                mess_type = hbuf[hpos + 41] | hbuf[hpos + 42] << 8
                big_endian = False
            else:
                mess_type = hbuf[hpos + 41] << 8 | hbuf[hpos + 42]
                big_endian = True
            if mess_type & 0x8000:
                mess_type -= 0x10000
            if num_groups == 1:  # the common case, without a call
                field = gbuf[goff : goff + GROUP_FIELD]
                dests = one_group_cache.get(field) or one_group_of(field)
            else:
                dests = group_names(gbuf, goff, num_groups)
            return new_frame(  # type: ignore[no-any-return]
                RegularMessage, (stype, sender_name, dests, mess_type, payload, big_endian)
            )
        if stype & MEMBERSHIP_MESS:
            return self._membership(little, stype, sender_name, gbuf, goff, num_groups, payload)
        raise WireError(
            f"daemon sent a message of unknown type 0x{stype:08x}", self._messages.offset
        )

    def _membership(
        self,
        little: bool,
        stype: int,
        group: str,
        gbuf: bytes,
        goff: int,
        num_groups: int,
        body: bytes,
    ) -> MembershipMessage:
        offset = self._messages.offset
        if stype & REG_MEMB_MESS:
            return self._regular_membership(little, stype, group, gbuf, goff, num_groups, body)
        if stype & TRANSITION_MESS:
            gid = None
            if len(body) >= 12:
                gid = GroupId(*(GROUP_ID_LE if little else GROUP_ID_BE).unpack_from(body))
            return MembershipMessage(stype, group, 0, gid, is_transition=True)
        if stype & MEMBERSHIP_MESS == CAUSED_BY_LEAVE:
            # CAUSED_BY_LEAVE alone: the notice to the member that left (section 8).
            return MembershipMessage(stype, group, CAUSED_BY_LEAVE, None, is_self_leave=True)
        raise WireError(f"membership notice of unknown type 0x{stype:08x}", offset)

    def _regular_membership(
        self,
        little: bool,
        stype: int,
        group: str,
        gbuf: bytes,
        goff: int,
        num_groups: int,
        body: bytes,
    ) -> MembershipMessage:
        offset = self._messages.offset
        if len(body) < 20:
            raise WireError(f"membership body of {len(body)} bytes is shorter than 20", offset)
        d0, d1, d2, nsets, local_off = (_MEMB_HEAD_LE if little else _MEMB_HEAD_BE).unpack_from(
            body
        )
        u32 = U32_LE if little else U32_BE
        sets: list[tuple[str, ...]] = []
        local = -1
        cur = 20
        end = len(body)
        # Each set takes at least 4 bytes, so a forged count cannot loop past the body.
        for _ in range(nsets):
            if cur + 4 > end:
                raise WireError("membership body: vs-set count runs past the data", offset)
            if cur - 20 == local_off:
                local = len(sets)
            (count,) = u32.unpack_from(body, cur)
            if cur + 4 + GROUP_FIELD * count > end:
                raise WireError(
                    f"membership body: vs-set of {count} members runs past the data", offset
                )
            sets.append(group_names(body, cur + 4, count))
            cur += 4 + GROUP_FIELD * count
        if local < 0:
            if nsets or local_off:
                raise WireError(
                    f"membership body: local vs-set offset {local_off} is not a set's start",
                    offset,
                )
            local = 0
        cause = stype & CAUSE_MASK
        changed = None
        if cause & (CAUSED_BY_JOIN | CAUSED_BY_LEAVE | CAUSED_BY_DISCONNECT) and sets and sets[0]:
            changed = sets[0][0]
        return MembershipMessage(
            stype,
            group,
            cause,
            GroupId(d0, d1, d2),
            group_names(gbuf, goff, num_groups),
            tuple(sets),
            local,
            changed,
        )


class DaemonDecoder:
    """Decodes the client -> daemon stream of one connection, as the real daemon does.

    The handshake follows the real daemon's one-read rules (section 4): pass each
    socket read to :meth:`feed` as it came. The first read must hold the whole connect
    record (otherwise :class:`HandshakeError` with ``reject_code=None``: the daemon
    closes silently); the name is read with one read of up to 10 bytes, so bytes
    pipelined after a name shorter than 10 make it illegal; the 90-byte auth choice
    must come in one read and name only methods of ``auth_methods`` (None: any).
    Handshake refusals raise :class:`HandshakeError` with the code the daemon answers.

    After :meth:`accepted`, messages are validated by the daemon's header rules
    (section 7): any violation raises :class:`WireError`, and the daemon drops the
    session. With ``strict_size`` (the default) messages the real daemon would accept
    but then abort on (the upstream size bug, section 11.2) are refused too.
    ``accelerated`` is as for :class:`ClientDecoder` (the compiled path decodes the
    messages a ``relay=True`` decoder forwards as they are).
    """

    def __init__(
        self,
        *,
        strict_size: bool = True,
        auth_methods: Sequence[str] | None = DEFAULT_AUTH_METHODS,
        relay: bool = False,
        accelerated: bool | None = None,
    ) -> None:
        self._state = "connect"
        self._request: ConnectRequest | None = None
        self._pending = b""
        self._sender = b""
        self._sender_str = ""
        self._sender_field = b""
        self._offset = 0
        self._strict_size = strict_size
        self._auth_methods = None if auth_methods is None else frozenset(auth_methods)
        self._failed: WireError | None = None
        self._messages = _MessageStream(
            self._message,
            self._check_header,
            old_type_field=False,
            relay=self._relay if relay else None,
        )
        # The compiled path only relays: without relay=True every frame is built here.
        speedups = _use_speedups(accelerated)
        self._scan = speedups.scan_daemon if relay and speedups is not None else None

    @property
    def request(self) -> ConnectRequest | None:
        """The connect record, once decoded."""
        return self._request

    @property
    def buffered(self) -> int:
        """Bytes held for a unit that is not complete yet (or not yet wanted)."""
        if self._state == "messages":
            return self._messages.buffered
        return len(self._pending)

    @property
    def staged_bytes(self) -> int:
        """Message bytes copied into staging buffers so far (see ClientDecoder's)."""
        return self._messages.staged

    def feed(self, data: bytes) -> list[ToDaemon]:
        """Decode one read's worth of client bytes; return the frames it completed.

        Raises :class:`HandshakeError` or :class:`WireError` where the real daemon
        refuses the session; the exception's ``frames`` are those decoded from ``data``
        before the bad unit.
        """
        if self._state == "messages":
            return self._messages.feed(data)  # type: ignore[no-any-return]
        if self._failed is not None:
            raise WireError("the stream already failed to decode", self._failed.offset)
        try:
            if self._state == "connect":
                req, rest = self._connect(bytes(data))
                self._request = req
                self._state = "wait-accept"
                self._pending = rest
                return [req]
            if self._state == "auth":
                return self._auth(self._pending + data)
            # The daemon has not decided yet (expect_auth() / accepted()): the bytes stay
            # in its socket buffer, so keep them - within what one message may take.
            self._pending += data
            if len(self._pending) > HEADER_SIZE + LIBRARY_LIMIT:
                raise WireError(
                    "client sent too much before its session was accepted", self._offset
                )
            return []
        except WireError as err:
            self._failed = err
            raise

    def expect_auth(self) -> list[ToDaemon]:
        """The daemon sent its auth list: the next read is the auth choice.

        Bytes already pipelined behind the connect record count as that read.
        """
        self._state = "auth"
        if self._pending:
            pending, self._pending = self._pending, b""
            try:
                return self._auth(pending)
            except WireError as err:
                self._failed = err
                raise
        return []

    def accepted(self, private_group: str | bytes) -> list[ToDaemon]:
        """The session is accepted as ``private_group``; return frames already pipelined."""
        self._sender = to_bytes(private_group)
        self._sender_str = self._sender.decode("latin-1")
        self._sender_field = pad_name(self._sender)
        self._state = "messages"
        # (as in ClientDecoder: feed() is the message stream's from now on)
        self.feed = self._messages.feed  # type: ignore[method-assign]
        if self._scan is not None:
            self._messages.scan = self._scan
            self._messages.scan_args = (self._sender_field, self._strict_size)
        self._messages.offset = self._offset
        pending, self._pending = self._pending, b""
        return self._messages.feed(pending) if pending else []  # type: ignore[no-any-return]

    def _connect(self, data: bytes) -> tuple[ConnectRequest, bytes]:
        # Mirrors the daemon's one pass of non-blocking reads: a read that finds nothing
        # closes the connection silently; the version bytes are signed chars.
        if len(data) < 2:
            raise HandshakeError("connect record incomplete in its first read", None, 0)
        major, minor = signed8(data[0]), signed8(data[1])
        pos = 2
        patch = 0
        has_patch = major * 10000 + minor * 100 > 31400
        if has_patch:
            if len(data) < 3:
                raise HandshakeError("connect record incomplete in its first read", None, 2)
            patch = signed8(data[2])
            pos = 3
        if major * 10000 + minor * 100 + patch < 30100:
            raise HandshakeError(
                f"client version {data[0]}.{data[1]} is older than 3.1",
                RejectCode.REJECT_VERSION,
                0,
            )
        if len(data) < pos + 2:
            raise HandshakeError("connect record incomplete in its first read", None, pos)
        flags = data[pos]
        name_len = signed8(data[pos + 1])
        pos += 2
        if not 0 <= name_len <= MAX_PRIVATE_NAME:
            raise HandshakeError(
                f"private name length {name_len} outside 0..{MAX_PRIVATE_NAME}",
                RejectCode.REJECT_ILLEGAL_NAME,
                pos - 1,
            )
        if name_len:
            # One read of up to 10 bytes, which must return exactly name_len: nothing
            # there closes silently, too few or too many (pipelined bytes) is illegal.
            got = min(MAX_PRIVATE_NAME, len(data) - pos)
            if got == 0:
                raise HandshakeError("connect record incomplete in its first read", None, pos)
            if got != name_len:
                raise HandshakeError(
                    f"private name read returned {got} bytes, not {name_len}",
                    RejectCode.REJECT_ILLEGAL_NAME,
                    pos,
                )
        name = data[pos : pos + name_len]
        if not is_legal_name(name):
            raise HandshakeError(
                f"private name {name!r} has bytes outside 0x24..0x7E",
                RejectCode.REJECT_ILLEGAL_NAME,
                pos,
            )
        pos += name_len
        self._offset = pos
        version = (data[0], data[1], data[2]) if has_patch else (data[0], data[1])
        # The daemon tests `(int)flags % 2 == 1` and stores `(int)flags / 16` on a signed
        # char, with C's truncating division: 0x81 means membership off, priority -7.
        sflags = signed8(flags)
        membership = sflags > 0 and sflags % 2 == 1
        request = ConnectRequest(
            version, membership, c_div(sflags, 16), name.decode("latin-1"), flags
        )
        return request, data[pos:]

    def _auth(self, data: bytes) -> list[ToDaemon]:
        if len(data) < AUTH_CHOICE_SIZE:
            raise HandshakeError(
                f"auth choice of {len(data)} bytes in one read; 90 are needed",
                RejectCode.REJECT_AUTH,
                self._offset,
            )
        # The daemon walks the slots until the first empty one, reading each as a C
        # string (which could run on into the next slot).
        methods: list[str] = []
        for i in range(AUTH_SLOTS):
            start = i * AUTH_SLOT
            if data[start] == 0:
                break
            end = data.find(b"\0", start, AUTH_CHOICE_SIZE)
            methods.append(data[start : AUTH_CHOICE_SIZE if end < 0 else end].decode("latin-1"))
        # No method at all is denied too: the daemon finds nothing to authenticate with.
        allowed = self._auth_methods
        if not methods or (allowed is not None and not allowed.issuperset(methods)):
            raise HandshakeError(
                f"auth methods {methods!r} not allowed", RejectCode.REJECT_AUTH, self._offset
            )
        self._offset += AUTH_CHOICE_SIZE
        self._pending = data[AUTH_CHOICE_SIZE:]
        self._state = "wait-accept"
        return [AuthChoice(tuple(methods))]

    def _check_header(
        self, stype: int, sender: bytes, num_groups: int, hint: int, data_len: int, total: int
    ) -> None:
        offset = self._messages.offset
        kinds = stype & (REGULAR_MESS | CONTROL_MESS)
        if kinds == 0 or kinds & (kinds - 1):
            raise WireError(
                f"type 0x{stype:08x} must have exactly one service or control bit", offset
            )
        # The daemon forces byte 31 to NUL and compares the name up to the first NUL.
        if sender != self._sender_field and field_name(sender[:31]) != self._sender:
            raise WireError(
                f"sender {field_name(sender[:31])!r} is not this session's private group "
                f"{self._sender!r}",
                offset,
            )
        if not 0 <= num_groups <= MAX_GROUPS:
            raise WireError(f"{num_groups} groups; 0..{MAX_GROUPS} allowed", offset)
        # 0x80ffff80 reads the same in both byte orders, so the hint's order is moot.
        if hint & ~_HINT_ALLOWED:
            raise WireError(f"hint 0x{hint:08x} has bits outside 0x80ffff80", offset)
        if not 0 <= data_len <= LIBRARY_LIMIT or data_len + GROUP_FIELD * num_groups > (
            DAEMON_CHECK_LIMIT
        ):
            raise WireError(
                f"message of {data_len} bytes to {num_groups} groups exceeds the daemon limit",
                offset,
            )
        if self._strict_size and total > MAX_MESSAGE_BYTES:
            raise WireError(
                f"message of {total} bytes is over {MAX_MESSAGE_BYTES}: a real 5.0.1 daemon "
                "would abort on it, so the session is dropped",
                offset,
            )

    def _message(
        self,
        hbuf: bytes,
        hpos: int,
        little: bool,
        stype: int,
        sender: bytes,
        num_groups: int,
        data_len: int,
        gbuf: bytes,
        goff: int,
        payload: bytes,
    ) -> ToDaemon:
        stype &= ~ENDIAN_MARKER
        if stype & CONTROL_MESS:
            if stype & KILL_MESS:
                return _KILL
            # Only the first group of a join or leave is used (section 7).
            group = name_of(gbuf[goff : goff + GROUP_FIELD]) if num_groups else ""
            return Join(group) if stype & JOIN_MESS else Leave(group)
        mess_type, _ = hint_mess_type(hbuf, hpos + 40)
        return new_frame(  # type: ignore[no-any-return]
            Multicast,
            (
                stype,
                self._sender_str,
                group_names(gbuf, goff, num_groups),
                mess_type,
                payload,
                bytes(hbuf[hpos + 40 : hpos + 44]),
            ),
        )

    def _relay(
        self, buf: bytes, pos: int, total: int, stype: int, sender: bytes, num_groups: int
    ) -> Relay | None:
        """A :class:`Relay` for the message at ``buf[pos:pos + total]``, when it can be
        forwarded as it is (see Relay); None otherwise (it is then built as usual)."""
        if stype & _NOT_VERBATIM or sender != self._sender_field:
            return None
        goff = pos + HEADER_SIZE
        if num_groups == 1:
            blob = buf[goff : goff + GROUP_FIELD]
            if blob not in canonical_cache and canonical_field(blob) is None:
                return None
        else:
            blob = buf[goff : goff + GROUP_FIELD * num_groups]
            for i in range(0, GROUP_FIELD * num_groups, GROUP_FIELD):
                if canonical_field(blob[i : i + GROUP_FIELD]) is None:
                    return None
        wire = buf if pos == 0 and total == len(buf) else buf[pos : pos + total]
        return new_frame(Relay, (stype & ~ENDIAN_MARKER, blob, num_groups, wire))  # type: ignore[no-any-return]
