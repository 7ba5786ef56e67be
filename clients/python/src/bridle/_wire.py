"""The admin API's requests and answers, without any I/O: the sync and async clients send
the same `Call`s and read answers with the same functions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypedDict

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


class Narrowing(TypedDict, total=False):
    """How a token narrows its policy: endpoints (`"GET /v1/charges/*"`), merchants, and
    lower caps in dollars (`"25.00"` or a `Decimal`, never a float)."""

    endpoints: list[str]
    merchants: list[str]
    per_transaction: str | Decimal
    per_window: str | Decimal
    lifetime: str | Decimal


CAPS = ("per_transaction", "per_window", "lifetime")


def _money(v: str | int | Decimal) -> str:
    """A cap as the ledger wants it: a decimal dollar string, never a float."""
    if isinstance(v, float):
        raise TypeError("caps are exact: pass a str or Decimal such as '25.00', not a float")
    return str(v)


def issue(policy: str, label: str, expires_in: str, narrowing: Narrowing) -> Call:
    body: dict[str, Any] = {"policy": policy, "label": label, "expires_in": expires_in}
    for k in ("endpoints", "merchants"):
        if narrowing.get(k) is not None:
            body[k] = list(narrowing[k])  # type: ignore[literal-required]
    caps = {k: _money(narrowing[k]) for k in CAPS if narrowing.get(k) is not None}  # type: ignore[literal-required]
    if caps:
        body["caps"] = caps
    unknown = set(narrowing) - {"endpoints", "merchants", *CAPS}
    if unknown:
        raise TypeError(f"unknown narrowing {sorted(unknown)}")
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


def audit(after: str | None, page_size: int, **filters: str | int | None) -> Call:
    """One page of the audit log: `filters` are token_id, label_prefix, policy, since_ms
    and until_ms."""
    return Call("GET", "/v1/audit", params=query(limit=page_size, after=after, **filters))


def query(**kw: Any) -> dict[str, str]:
    return {k: str(v) for k, v in kw.items() if v is not None}


def answer(status: int, body: Any) -> Any:
    """The JSON of a 2xx answer; a typed `LedgerError` for anything else."""
    if 200 <= status < 300:
        return body
    raise ledger_error(status, body)
