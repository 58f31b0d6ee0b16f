"""Spread daemon addresses: what a client endpoint string means for an embedded daemon."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Spread's own address forms: ``4803`` and ``4803@host``.
SPREAD_FORM = re.compile(r"^(\d+)(?:@(.+))?$")

#: Hosts that mean "this machine" in a client endpoint.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", ""})


@dataclass(frozen=True)
class SpreadAddress:
    """Where a client endpoint string points: host and TCP port (None when unknown)."""

    host: str
    port: int | None

    @property
    def is_local(self) -> bool:
        """True when the address is this machine's loopback."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    def listen_endpoint(self) -> str:
        """A server endpoint for an embedded daemon at this address (loopback only)."""
        if self.port is None or not self.is_local:
            raise ValueError(f"cannot run an embedded daemon for {self.host}:{self.port}")
        return f"tcp:{self.port}:interface=127.0.0.1"


def spread_address(description: str) -> SpreadAddress:
    """Parse ``4803``, ``4803@host`` or ``tcp:host=H:port=P`` into a SpreadAddress."""
    text = description.strip()
    m = SPREAD_FORM.match(text)
    if m is not None:
        return SpreadAddress(m.group(2) or "127.0.0.1", int(m.group(1)))
    parts = text.split(":")
    if parts[0] in ("tcp", "tcp6") and len(parts) > 1:
        fields: dict[str, str] = {}
        positional: list[str] = []
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            if sep:
                fields[key] = value
            else:
                positional.append(part)
        host = fields.get("host", positional[0] if positional else "")
        port_text = fields.get("port", positional[1] if len(positional) > 1 else "")
        return SpreadAddress(host, int(port_text) if port_text.isdigit() else None)
    return SpreadAddress(text, None)
