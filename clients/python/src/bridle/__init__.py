"""Bridle for Python: per-run vault tokens for AI agents, the ledger's admin API, and the
official vendor SDKs pointed at the proxy.

```python
import bridle

with bridle.run("billing/run-42", stripe={"policy": "stripe-payments"}) as creds:
    client = creds.stripe()
```
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    AuthenticationError,
    BridleError,
    InvalidRequestError,
    LedgerError,
    LedgerUnreachableError,
    NotFoundError,
    Refusal,
    RevokeFailed,
    StoreUnavailableError,
    refusal,
)
from .models import AuditRecord, Caps, IssuedToken, PolicyView, Revocation, Spend, Token
from .proxy import Proxy
from .reasons import Reason
from .run import Credentials, Grant, Run, run

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AuditRecord",
    "AuthenticationError",
    "BridleError",
    "Caps",
    "Client",
    "Credentials",
    "Grant",
    "InvalidRequestError",
    "IssuedToken",
    "LedgerError",
    "LedgerUnreachableError",
    "NotFoundError",
    "PolicyView",
    "Proxy",
    "Reason",
    "Refusal",
    "Revocation",
    "RevokeFailed",
    "Run",
    "Spend",
    "StoreUnavailableError",
    "Token",
    "refusal",
    "run",
]
