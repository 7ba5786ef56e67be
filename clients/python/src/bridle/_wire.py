"""The admin API's requests and answers, without any I/O: the sync and async clients send
the same `Call`s and read answers with the same functions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import ledger_error

DEFAULT_LEDGER_URL = "http://127.0.0.1:8181"


def ledger_url(url: str | None) -> str:
    return (url or os.environ.get("BRIDLE_LEDGER_URL") or DEFAULT_LEDGER_URL).rstrip("/")


def admin_key(key: str | None) -> str:
    key = key or os.environ.get("BRIDLE_ADMIN_KEY")
    if not key:
        raise ValueError("no admin key: pass admin_key= or set BRIDLE_ADMIN_KEY")
    return key


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str] | None = None
    json: dict[str, Any] | None = None


def _money(v: str | int | Decimal) -> str:
    """A cap as the ledger wants it: a decimal dollar string, never a float."""
    if isinstance(v, float):
        raise TypeError("caps are exact: pass a str or Decimal such as '25.00', not a float")
    return str(v)


def issue(
    policy: str,
    label: str,
    expires_in: str = "15m",
    *,
    endpoints: list[str] | None = None,
    merchants: list[str] | None = None,
    per_transaction: str | Decimal | None = None,
    per_window: str | Decimal | None = None,
    lifetime: str | Decimal | None = None,
) -> Call:
    body: dict[str, Any] = {"policy": policy, "label": label, "expires_in": expires_in}
    if endpoints is not None:
        body["endpoints"] = list(endpoints)
    if merchants is not None:
        body["merchants"] = list(merchants)
    caps = {
        k: _money(v)
        for k, v in (
            ("per_transaction", per_transaction),
            ("per_window", per_window),
            ("lifetime", lifetime),
        )
        if v is not None
    }
    if caps:
        body["caps"] = caps
    return Call("POST", "/v1/tokens", json=body)


def revoke(
    token_id: str | None = None, label_prefix: str | None = None, policy: str | None = None
) -> Call:
    given = {
        k: v
        for k, v in (("token_id", token_id), ("label_prefix", label_prefix), ("policy", policy))
        if v is not None
    }
    if len(given) != 1:
        raise ValueError("revoke exactly one of token_id, label_prefix and policy")
    return Call("POST", "/v1/revocations", json=given)


def query(**kw: Any) -> dict[str, str]:
    return {k: str(v) for k, v in kw.items() if v is not None}


def answer(status: int, body: Any) -> Any:
    """The JSON of a 2xx answer; a typed `LedgerError` for anything else."""
    if 200 <= status < 300:
        return body
    raise ledger_error(status, body)
