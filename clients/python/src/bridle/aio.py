"""The asynchronous client for the ledger's admin API: `Client`'s methods, awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Unpack

import httpx2

from . import _wire
from ._wire import Narrowing
from .errors import LedgerUnreachableError
from .models import AuditRecord, IssuedToken, PolicyView, Revocation, Token


class AsyncClient:
    """`bridle.Client` for asyncio: the same methods, as coroutines (`audit` is an async
    iterator). Use with `async with`, or `await aclose()`."""

    def __init__(
        self, url: str | None = None, admin_key: str | None = None, *, timeout: float = 10.0
    ) -> None:
        self.url = _wire.ledger_url(url)
        self._http = httpx2.AsyncClient(
            base_url=self.url,
            headers={"authorization": f"Bearer {_wire.admin_key(admin_key)}"},
            timeout=timeout,
            trust_env=False,
        )

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"bridle.AsyncClient({self.url!r})"

    async def _send(self, call: _wire.Call) -> Any:
        try:
            r = await self._http.request(
                call.method, call.path, params=call.params, json=call.json
            )
        except httpx2.HTTPError as e:
            raise LedgerUnreachableError(self.url, e) from e
        try:
            body = r.json()
        except ValueError:
            body = None
        return _wire.answer(r.status_code, body)

    async def issue(
        self, policy: str, label: str, expires_in: str = "15m", **narrowing: Unpack[Narrowing]
    ) -> IssuedToken:
        call = _wire.issue(policy, label, expires_in, narrowing)
        return IssuedToken.from_json(await self._send(call))

    async def get(self, token_id: str) -> Token:
        return Token.from_json(await self._send(_wire.Call("GET", f"/v1/tokens/{token_id}")))

    async def list(
        self,
        *,
        policy: str | None = None,
        label_prefix: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Token]:
        params = _wire.query(policy=policy, label_prefix=label_prefix, status=status, limit=limit)
        body = await self._send(_wire.Call("GET", "/v1/tokens", params=params))
        return [Token.from_json(t) for t in body["tokens"]]

    async def revoke(
        self,
        *,
        token_id: str | None = None,
        label_prefix: str | None = None,
        policy: str | None = None,
    ) -> Revocation:
        return Revocation.from_json(
            await self._send(_wire.revoke(token_id, label_prefix, policy))
        )

    async def audit(
        self,
        *,
        token_id: str | None = None,
        label_prefix: str | None = None,
        policy: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[AuditRecord]:
        after: str | None = None
        filters = dict(
            token_id=token_id,
            label_prefix=label_prefix,
            policy=policy,
            since_ms=since_ms,
            until_ms=until_ms,
        )
        while True:
            page = await self._send(_wire.audit(after, page_size, **filters))
            for r in page["records"]:
                yield AuditRecord.from_json(r)
            after = page.get("next")
            if not after:
                return

    async def policies(self) -> list[PolicyView]:
        body = await self._send(_wire.Call("GET", "/v1/policies"))
        return [PolicyView.from_json(p) for p in body["policies"]]
