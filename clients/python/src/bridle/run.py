"""Per-run credentials in one statement: one vault token per vendor under one label prefix,
all revoked when the block ends, however it ends.

```python
async with bridle.run(f"billing/{run_id}",
                      stripe={"policy": "stripe-payments", "expires_in": "15m"},
                      openai={"policy": "openai-chat"}) as creds:
    stripe_client = creds.stripe()   # the official StripeClient, pointed at the proxy
```

Each token's label is `<prefix>/<vendor>`; on exit one revocation of the label prefix
`<prefix>/` covers them all (and any token issued under it in the meantime). If issuing
fails half-way, what was issued is revoked before the error propagates. If revoking fails,
`RevokeFailed` is raised: it is never swallowed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import ModuleType, TracebackType
from typing import Any

from . import sdk
from ._wire import CAPS, Narrowing
from .aio import AsyncClient
from .client import Client
from .errors import LedgerUnreachableError, RevokeFailed, StoreUnavailableError
from .models import IssuedToken, Revocation
from .proxy import VENDORS, Proxy


class Grant(Narrowing, total=False):
    """What one vendor's token may do: its policy, its TTL, and any narrowing."""

    policy: str
    expires_in: str
    #: Twilio only: the account SID the client authenticates as (default: the only merchant)
    account_sid: str


_LABEL_BYTES = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+=")


def check_label_prefix(prefix: str) -> None:
    """A run's prefix: what the ledger accepts in a label (`core/src/token.rs`), leaving room
    for `/<vendor>`, and not ending in `/` (the run adds it, so that revoking `run-4/` can
    never touch `run-42/`)."""
    if not prefix or len(prefix) > 180 or not set(prefix) <= _LABEL_BYTES:
        raise ValueError(
            f"label prefix {prefix!r} must be 1-180 of [A-Za-z0-9-_.:/@+=], e.g. 'billing/run-42'"
        )
    if prefix.endswith("/"):
        raise ValueError(f"label prefix {prefix!r}: leave out the trailing '/'")


_ISSUE_KEYS = ("endpoints", "merchants", *CAPS)
_KNOWN_KEYS = {"policy", "expires_in", "account_sid", *_ISSUE_KEYS}
#: Revocation is retried this many times, with these pauses, when the ledger is briefly out.
_REVOKE_PAUSES = (0.2, 0.5, 1.0)


class Credentials:
    """The tokens of one run, and the official SDK clients that use them."""

    def __init__(
        self,
        label_prefix: str,
        tokens: Mapping[str, IssuedToken],
        grants: Mapping[str, Grant],
        proxy: Proxy,
    ) -> None:
        self.label_prefix = label_prefix
        self.tokens = dict(tokens)
        self._grants = grants
        self.proxy = proxy
        #: set when the run has ended and its tokens are revoked
        self.revocation: Revocation | None = None

    def __getitem__(self, vendor: str) -> IssuedToken:
        try:
            return self.tokens[vendor]
        except KeyError:
            raise KeyError(
                f"this run has no {vendor} token; it was given {sorted(self.tokens)}"
            ) from None

    def token(self, vendor: str) -> str:
        """The vault token itself, for an SDK or tool this package does not configure."""
        return self[vendor].token

    def url(self, vendor: str) -> str:
        """The proxy's listener for `vendor`."""
        return self.proxy.url(vendor)

    def __repr__(self) -> str:
        return f"bridle.Credentials({self.label_prefix!r}, {sorted(self.tokens)})"

    def stripe(self, **options: Any) -> Any:
        return sdk.stripe_client(self.token("stripe"), self.url("stripe"), **options)

    def openai(self, **options: Any) -> Any:
        return sdk.openai_client(self.token("openai"), self.url("openai"), **options)

    def async_openai(self, **options: Any) -> Any:
        return sdk.async_openai_client(self.token("openai"), self.url("openai"), **options)

    def anthropic(self, **options: Any) -> Any:
        return sdk.anthropic_client(self.token("anthropic"), self.url("anthropic"), **options)

    def async_anthropic(self, **options: Any) -> Any:
        return sdk.async_anthropic_client(
            self.token("anthropic"), self.url("anthropic"), **options
        )

    def resend(self) -> ModuleType:
        return sdk.resend_module(self.token("resend"), self.url("resend"))

    def twilio(self, account_sid: str | None = None, **options: Any) -> Any:
        grant = self._grants.get("twilio", {})
        sid = account_sid or grant.get("account_sid")
        if sid is None and len(grant.get("merchants", [])) == 1:
            sid = grant["merchants"][0]
        if sid is None:
            raise ValueError(
                "Twilio needs the account SID: pass account_sid=, or give the grant one"
            )
        return sdk.twilio_client(self.token("twilio"), self.url("twilio"), sid, **options)


def _check_grants(grants: Mapping[str, Grant]) -> None:
    if not grants:
        raise ValueError("give at least one vendor's grant, e.g. stripe={'policy': '...'}")
    for vendor, g in grants.items():
        if vendor not in VENDORS:
            raise ValueError(f"unknown vendor {vendor!r}; one of {', '.join(VENDORS)}")
        if not isinstance(g, Mapping) or "policy" not in g:
            raise ValueError(f"{vendor}: a grant is a dict with at least a 'policy'")
        unknown = set(g) - _KNOWN_KEYS
        if unknown:
            raise ValueError(f"{vendor}: unknown grant key(s) {sorted(unknown)}")


def _issue_args(prefix: str, vendor: str, g: Grant, expires_in: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "policy": g["policy"],
        "label": f"{prefix}/{vendor}",
        "expires_in": g.get("expires_in", expires_in),
    }
    for k in _ISSUE_KEYS:
        if k in g:
            args[k] = g[k]  # type: ignore[literal-required]
    return args


def _retryable(e: Exception) -> bool:
    return isinstance(e, (LedgerUnreachableError, StoreUnavailableError))


class Run:
    """`bridle.run(...)`: a context manager for `with` and `async with` alike."""

    def __init__(
        self,
        label_prefix: str,
        grants: Mapping[str, Grant],
        *,
        client: Client | AsyncClient | None,
        proxy: Proxy | str | None,
        expires_in: str,
        ledger_url: str | None,
        admin_key: str | None,
    ) -> None:
        check_label_prefix(label_prefix)
        _check_grants(grants)
        self.label_prefix = label_prefix
        self._grants = dict(grants)
        self._client = client
        self._proxy = proxy if isinstance(proxy, Proxy) else Proxy(proxy)
        self._expires_in = expires_in
        self._ledger = (ledger_url, admin_key)
        self._owned: Client | AsyncClient | None = None
        self.credentials: Credentials | None = None

    @property
    def _revoke_prefix(self) -> str:
        return f"{self.label_prefix}/"

    # --- with ---------------------------------------------------------------------------

    def _sync_client(self) -> Client:
        if isinstance(self._client, Client):
            return self._client
        if self._client is not None:
            raise TypeError("`with bridle.run(...)` needs a bridle.Client, not an AsyncClient")
        if self._owned is None:
            self._owned = Client(*self._ledger)
        assert isinstance(self._owned, Client)
        return self._owned

    def __enter__(self) -> Credentials:
        client = self._sync_client()
        tokens: dict[str, IssuedToken] = {}
        try:
            for vendor, g in self._grants.items():
                tokens[vendor] = client.issue(
                    **_issue_args(self.label_prefix, vendor, g, self._expires_in)
                )
        except BaseException:
            self._revoke_sync(client)
            self._close_sync()
            raise
        self.credentials = Credentials(self.label_prefix, tokens, self._grants, self._proxy)
        return self.credentials

    def _revoke_sync(self, client: Client) -> Revocation:
        for pause in (*_REVOKE_PAUSES, None):
            try:
                return client.revoke(label_prefix=self._revoke_prefix)
            except Exception as e:  # noqa: BLE001 - any failure is reported as RevokeFailed
                if pause is None or not _retryable(e):
                    raise RevokeFailed(self.label_prefix, e) from e
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _close_sync(self) -> None:
        if isinstance(self._owned, Client):
            self._owned.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            revocation = self._revoke_sync(self._sync_client())
            if self.credentials is not None:
                self.credentials.revocation = revocation
        finally:
            self._close_sync()

    # --- async with ---------------------------------------------------------------------

    def _async_client(self) -> AsyncClient:
        if isinstance(self._client, AsyncClient):
            return self._client
        if self._client is not None:
            raise TypeError("`async with bridle.run(...)` needs a bridle.AsyncClient")
        if self._owned is None:
            self._owned = AsyncClient(*self._ledger)
        assert isinstance(self._owned, AsyncClient)
        return self._owned

    async def __aenter__(self) -> Credentials:
        client = self._async_client()
        tokens: dict[str, IssuedToken] = {}
        try:
            for vendor, g in self._grants.items():
                tokens[vendor] = await client.issue(
                    **_issue_args(self.label_prefix, vendor, g, self._expires_in)
                )
        except BaseException:
            await self._revoke_async(client)
            await self._close_async()
            raise
        self.credentials = Credentials(self.label_prefix, tokens, self._grants, self._proxy)
        return self.credentials

    async def _revoke_async(self, client: AsyncClient) -> Revocation:
        for pause in (*_REVOKE_PAUSES, None):
            try:
                # Revoke even when the task is being cancelled: shield the call.
                return await asyncio.shield(client.revoke(label_prefix=self._revoke_prefix))
            except Exception as e:  # noqa: BLE001 - any failure is reported as RevokeFailed
                if pause is None or not _retryable(e):
                    raise RevokeFailed(self.label_prefix, e) from e
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _close_async(self) -> None:
        if isinstance(self._owned, AsyncClient):
            await self._owned.aclose()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            revocation = await self._revoke_async(self._async_client())
            if self.credentials is not None:
                self.credentials.revocation = revocation
        finally:
            await self._close_async()


def run(
    label_prefix: str,
    *,
    client: Client | AsyncClient | None = None,
    proxy: Proxy | str | None = None,
    expires_in: str = "15m",
    ledger_url: str | None = None,
    admin_key: str | None = None,
    **grants: Grant,
) -> Run:
    """Issues one token per vendor grant (`stripe={...}`, `openai={...}`, ...) labelled
    `<label_prefix>/<vendor>`, and revokes them all when the block ends, even on an
    exception. Works with `with` (a `bridle.Client`) and `async with` (a
    `bridle.AsyncClient`); without `client=`, one is made from `ledger_url`/`admin_key` or
    the environment. `expires_in` is the default TTL of each grant."""
    return Run(
        label_prefix,
        grants,
        client=client,
        proxy=proxy,
        expires_in=expires_in,
        ledger_url=ledger_url,
        admin_key=admin_key,
    )
