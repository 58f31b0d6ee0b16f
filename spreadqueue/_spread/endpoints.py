"""Spread daemon addresses: Spread's ``4803@host`` forms and Twisted endpoint strings, as
client endpoints and as the address an embedded daemon would listen on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
)
from twisted.internet.interfaces import IStreamClientEndpoint

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


def parse_spread_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """An endpoint for a Spread daemon address.

    Accepts Spread's own forms - ``"4803@host"`` (TCP to host:4803; IPv4 or IPv6
    literals, ``[::1]`` too, or a host name) and a bare ``"4803"`` (127.0.0.1:4803:
    libspread would use the daemon's Unix socket ``/tmp/4803``, but the embedded
    daemon has none, and the TCP port reaches the same daemon) - and any Twisted
    client endpoint description such as ``"tcp:host=127.0.0.1:port=4803"``.
    ``reactor`` must provide IReactorTCP (and IReactorTime for host names).
    Raises ValueError for a malformed description.
    """
    text = description.strip()
    m = SPREAD_FORM.match(text)
    if m is None:
        return cast(IStreamClientEndpoint, clientFromString(reactor, text))
    port = int(m.group(1))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} in {description!r} is outside 1..65535")
    host = m.group(2)
    if host is None:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"no host in {description!r}")
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port)
    return HostnameEndpoint(reactor, host, port)
