"""Where the proxy listens for each vendor.

Bridle gives each vendor its own listener, so that every refusal is in that vendor's error
format. By default the proxy is `http://127.0.0.1` with `make run`'s ports; `BRIDLE_PROXY`
moves the host (`http://bridle-egress.bridle.svc:80`'s host with the same ports), and
`BRIDLE_PROXY_<VENDOR>` (or `Proxy(urls={...})`) names one vendor's listener outright.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

#: The listener ports `bridle render` gives each vendor by default (README, "Set up").
DEFAULT_PORTS: Mapping[str, int] = {
    "stripe": 10001,
    "twilio": 10002,
    "resend": 10003,
    "openai": 10004,
    "anthropic": 10005,
}

VENDORS = tuple(DEFAULT_PORTS)


class Proxy:
    """The proxy's base URL per vendor (without a vendor's own path prefix such as `/v1`)."""

    def __init__(self, base: str | None = None, urls: Mapping[str, str] | None = None) -> None:
        self.base = (base or os.environ.get("BRIDLE_PROXY") or "http://127.0.0.1").rstrip("/")
        self.urls = {k: v.rstrip("/") for k, v in (urls or {}).items()}
        unknown = set(self.urls) - set(VENDORS)
        if unknown:
            raise ValueError(f"unknown vendor(s) {sorted(unknown)}; one of {', '.join(VENDORS)}")

    def url(self, vendor: str) -> str:
        if vendor not in DEFAULT_PORTS:
            raise ValueError(f"unknown vendor {vendor!r}; one of {', '.join(VENDORS)}")
        if vendor in self.urls:
            return self.urls[vendor]
        env = os.environ.get(f"BRIDLE_PROXY_{vendor.upper()}")
        if env:
            return env.rstrip("/")
        parts = urlsplit(self.base)
        host = parts.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{parts.scheme or 'http'}://{host}:{DEFAULT_PORTS[vendor]}"

    def __repr__(self) -> str:
        return f"bridle.Proxy({self.base!r}, urls={self.urls!r})"
