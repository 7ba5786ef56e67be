"""Runs a Python snippet from README.md exactly as written.

The README's snippets name the fixed `make run` addresses (127.0.0.1:10001 for Stripe, ...),
while a test's Envoy listens on ports of its own. So that the snippet's text runs unchanged,
connections to a README address are routed to the test's listener at the socket level; the
SDK still believes it talks to the address in the snippet.

Environment (set by tests/e2e/sdk.rs):
  BRIDLE_SNIPPET   the snippet's text
  BRIDLE_ROUTES    "10001=41234,10002=41235": README port = test listener port, on 127.0.0.1
  plus whatever the snippet reads (TOKEN).
"""

import os
import socket
import sys

snippet = os.environ["BRIDLE_SNIPPET"]
routes = {
    int(readme): int(actual)
    for readme, actual in (pair.split("=") for pair in os.environ["BRIDLE_ROUTES"].split(","))
}

_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, port, *args, **kwargs):
    if host in ("127.0.0.1", "localhost") and port is not None:
        try:
            port = routes.get(int(port), port)
        except (TypeError, ValueError):
            pass
    return _getaddrinfo(host, port, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
sys.argv = ["README.md"]
exec(compile(snippet, "README.md", "exec"), {"__name__": "__main__"})
