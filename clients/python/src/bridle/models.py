"""What the ledger's admin API returns, as typed, immutable values.

Money is `decimal.Decimal` dollars, exactly as the ledger's decimal strings say: never a
float. Times are unix seconds (`int`) unless the field says milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


def _usd(v: Any) -> Decimal | None:
    return None if v is None else Decimal(str(v))


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued vault token. `token` is the credential itself: it is in this answer
    only (the ledger keeps its claims, never the token), and it is kept out of `repr`."""

    token: str = field(repr=False)
    id: str
    policy: str
    vendor: str
    label: str
    issued_at: int
    expires_at: int

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "IssuedToken":
        return cls(
            token=v["token"],
            id=v["id"],
            policy=v["policy"],
            vendor=v["vendor"],
            label=v["label"],
            issued_at=int(v["issued_at"]),
            expires_at=int(v["expires_at"]),
        )

    def __str__(self) -> str:
        return f"{self.id} ({self.policy}, {self.label})"


@dataclass(frozen=True)
class Caps:
    per_transaction: Decimal | None = None
    per_window: Decimal | None = None
    lifetime: Decimal | None = None
    policy_per_window: Decimal | None = None
    window: str | None = None

    @classmethod
    def from_json(cls, v: dict[str, Any] | None) -> "Caps":
        v = v or {}
        return cls(
            per_transaction=_usd(v.get("per_transaction")),
            per_window=_usd(v.get("per_window")),
            lifetime=_usd(v.get("lifetime")),
            policy_per_window=_usd(v.get("policy_per_window")),
            window=v.get("window"),
        )


@dataclass(frozen=True)
class Spend:
    window: Decimal
    lifetime: Decimal
    reserved: Decimal
    #: spend over cap per capped kind (`per_window`, `lifetime`), 0.42 = 42 %
    utilization: dict[str, float]

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "Spend":
        return cls(
            window=Decimal(str(v["window"])),
            lifetime=Decimal(str(v["lifetime"])),
            reserved=Decimal(str(v["reserved"])),
            utilization={k: float(x) for k, x in (v.get("utilization") or {}).items()},
        )


@dataclass(frozen=True)
class Token:
    """A token as the ledger knows it: its claims, status, caps in force and spend."""

    id: str
    policy: str
    vendor: str
    label: str
    iat: int
    exp: int
    #: active, revoked or expired
    status: str
    endpoints: list[str] | None
    merchants: list[str] | None
    #: the token's own narrowing
    caps: Caps
    #: the policy's caps lowered by the token's narrowing
    effective_caps: Caps
    spend: Spend
    revoked_at: int | None

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "Token":
        return cls(
            id=v["id"],
            policy=v["policy"],
            vendor=v["vendor"],
            label=v["label"],
            iat=int(v["iat"]),
            exp=int(v["exp"]),
            status=v["status"],
            endpoints=v.get("endpoints"),
            merchants=v.get("merchants"),
            caps=Caps.from_json(v.get("caps")),
            effective_caps=Caps.from_json(v.get("effective_caps")),
            spend=Spend.from_json(v["spend"]),
            revoked_at=v.get("revoked_at"),
        )


@dataclass(frozen=True)
class Revocation:
    """A revocation the ledger committed; the proxies enforce it within a poll."""

    seq: int
    #: token, label_prefix or policy
    kind: str
    value: str
    at: int
    until: int
    #: known tokens it covers (tokens minted offline are covered too, uncounted)
    tokens_revoked: int

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "Revocation":
        r = v["revocation"]
        return cls(
            seq=int(r["seq"]),
            kind=r["kind"],
            value=r["value"],
            at=int(r["at"]),
            until=int(r["until"]),
            tokens_revoked=int(v["tokens_revoked"]),
        )


@dataclass(frozen=True)
class AuditRecord:
    """One call through the proxy, allowed or refused."""

    id: str
    at_ms: int
    vendor: str
    method: str
    path: str
    #: what the agent got; 0 when the stream ended without a response
    status: int
    #: `allowed`, or the reason code of the refusal
    reason: str
    token_id: str | None = None
    label: str | None = None
    policy: str | None = None
    cost: Decimal | None = None
    merchant: str | None = None

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "AuditRecord":
        return cls(
            id=v["id"],
            at_ms=int(v["at_ms"]),
            vendor=v["vendor"],
            method=v["method"],
            path=v["path"],
            status=int(v["status"]),
            reason=v["reason"],
            token_id=v.get("token_id"),
            label=v.get("label"),
            policy=v.get("policy"),
            cost=_usd(v.get("cost")),
            merchant=v.get("merchant"),
        )


@dataclass(frozen=True)
class PolicyView:
    name: str
    vendor: str
    caps: Caps
    window_spend: Decimal
    #: the policy's window spend over its aggregate cap, when it has one
    utilization: float | None

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> "PolicyView":
        return cls(
            name=v["name"],
            vendor=v["vendor"],
            caps=Caps.from_json(v.get("caps")),
            window_spend=Decimal(str(v["window_spend"])),
            utilization=v.get("utilization"),
        )
