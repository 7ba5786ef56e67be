"""The synchronous client for the ledger's admin API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Unpack

import httpx2

from . import _wire
from ._wire import Narrowing
from .errors import LedgerUnreachableError
from .models import AuditRecord, IssuedToken, PolicyView, Revocation, Token


class Client:
    """The ledger's admin API: issue, read, list and revoke tokens, read the audit log.

    `url` and `admin_key` default to `BRIDLE_LEDGER_URL` (else `http://127.0.0.1:8181`) and
    `BRIDLE_ADMIN_KEY`. Use as a context manager, or call `close()`.
    """

    def __init__(
        self, url: str | None = None, admin_key: str | None = None, *, timeout: float = 10.0
    ) -> None:
        self.url = _wire.ledger_url(url)
        self._http = httpx2.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {_wire.admin_key(admin_key)}"},
            timeout=timeout,
            # The ledger is reached directly; a proxy from the environment is never wanted.
            trust_env=False,
        )

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"bridle.Client({self.url!r})"

    def _send(self, call: _wire.Call) -> Any:
        try:
            r = self._http.request(call.method, call.path, params=call.params, json=call.json)
        except httpx2.HTTPError as e:
            raise LedgerUnreachableError(self.url, e) from e
        try:
            body = r.json()
        except ValueError:
            body = None
        return _wire.answer(r.status_code, body)

    def issue(
        self, policy: str, label: str, expires_in: str = "15m", **narrowing: Unpack[Narrowing]
    ) -> IssuedToken:
        """Issues a vault token of `policy` for `label`, optionally narrowed. The ledger
        refuses anything wider than the policy (`InvalidRequestError`, every reason at once)."""
        call = _wire.issue(policy, label, expires_in, narrowing)
        return IssuedToken.from_json(self._send(call))

    def get(self, token_id: str) -> Token:
        """One token with its status, caps in force and spend (`NotFoundError` if unknown)."""
        return Token.from_json(self._send(_wire.Call("GET", f"/v1/tokens/{token_id}")))

    def list(
        self,
        *,
        policy: str | None = None,
        label_prefix: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Token]:
        """Tokens, newest first, filtered by policy, label prefix and status."""
        params = _wire.query(policy=policy, label_prefix=label_prefix, status=status, limit=limit)
        body = self._send(_wire.Call("GET", "/v1/tokens", params=params))
        return [Token.from_json(t) for t in body["tokens"]]

    def revoke(
        self,
        *,
        token_id: str | None = None,
        label_prefix: str | None = None,
        policy: str | None = None,
    ) -> Revocation:
        """Revokes one token, every token whose label starts with a prefix, or a whole
        policy. The proxies refuse them within one revocation poll."""
        return Revocation.from_json(self._send(_wire.revoke(token_id, label_prefix, policy)))

    def audit(
        self,
        *,
        token_id: str | None = None,
        label_prefix: str | None = None,
        policy: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        page_size: int = 1000,
    ) -> Iterator[AuditRecord]:
        """Every matching audit record, oldest first, following pages as it goes."""
        after: str | None = None
        filters = dict(
            token_id=token_id,
            label_prefix=label_prefix,
            policy=policy,
            since_ms=since_ms,
            until_ms=until_ms,
        )
        while True:
            page = self._send(_wire.audit(after, page_size, **filters))
            for r in page["records"]:
                yield AuditRecord.from_json(r)
            after = page.get("next")
            if not after:
                return

    def policies(self) -> list[PolicyView]:
        """Every policy the ledger serves, with its window spend and utilization."""
        body = self._send(_wire.Call("GET", "/v1/policies"))
        return [PolicyView.from_json(p) for p in body["policies"]]
