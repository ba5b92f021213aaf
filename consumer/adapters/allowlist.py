"""SSRF allow-list entries (pure: ipaddress only, so the settings can validate them at start-up)."""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_network


@dataclass(frozen=True)
class AllowRule:
    """One SSRF allow-list entry: a host name or an IP network, on any port (``port=None``) or one."""

    host: str | None
    net: object | None  # IPv4Network | IPv6Network
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        """``"127.0.0.1"``, ``"10.0.0.0/8"``, ``"images.local"`` (any port) or with ``:port``
        (``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``"images.local:8080"``)."""
        text = entry.strip()
        try:
            return cls(None, ip_network(text, strict=False), None)
        except ValueError:
            pass
        port = None
        if text.startswith("[") and "]:" in text:
            text, port = text[1:].split("]:", 1)
        elif text.count(":") == 1:
            text, port = text.split(":")
        if port is not None:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bad port in image allow-list entry {entry!r}")
            port = int(port)
        try:
            return cls(None, ip_network(text.strip("[]"), strict=False), port)
        except ValueError:
            return cls(text.lower().rstrip("."), None, port)

    def matches(self, host: str, ip, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        return (self.host is not None and self.host == host) or (
            self.net is not None and ip is not None and ip in self.net
        )
