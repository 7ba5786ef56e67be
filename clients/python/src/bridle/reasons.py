"""Bridle's reason codes: why the proxy refused a call.

The same table as the Rust core's `core/src/reason.rs` (the end-to-end suite checks that
the two agree). The codes are stable: they appear in the `x-bridle-reason` header, in the
vendor-shaped error body, in Envoy's stats and in the audit log.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """A reason code, with its HTTP status. A vendor's listener may answer another where that
    vendor's SDK would misread it: caps are 403 on Stripe, OpenAI and Anthropic, whose SDKs
    read 402 as a declined card or the account's billing."""

    status: int

    def __new__(cls, code: str, status: int) -> "Reason":
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        return member

    ALLOWED = ("allowed", 200)
    TOKEN_MISSING = ("token_missing", 401)
    TOKEN_MALFORMED = ("token_malformed", 401)
    TOKEN_UNKNOWN_KEY = ("token_unknown_key", 401)
    TOKEN_BAD_SIGNATURE = ("token_bad_signature", 401)
    TOKEN_EXPIRED = ("token_expired", 401)
    TOKEN_NOT_YET_VALID = ("token_not_yet_valid", 401)
    TOKEN_TTL_TOO_LONG = ("token_ttl_too_long", 401)
    TOKEN_POLICY_UNKNOWN = ("token_policy_unknown", 401)
    TOKEN_WRONG_VENDOR = ("token_wrong_vendor", 401)
    TOKEN_REVOKED = ("token_revoked", 401)
    CREDENTIAL_SCHEME = ("credential_scheme", 401)
    CREDENTIAL_AMBIGUOUS = ("credential_ambiguous", 400)
    PATH_REJECTED = ("path_rejected", 400)
    MERCHANT_AMBIGUOUS = ("merchant_ambiguous", 400)
    BODY_ENCODED = ("body_encoded", 400)
    TRAILERS_NOT_ALLOWED = ("trailers_not_allowed", 400)
    ENDPOINT_NOT_ALLOWED = ("endpoint_not_allowed", 403)
    MERCHANT_NOT_ALLOWED = ("merchant_not_allowed", 403)
    HEADER_NOT_ALLOWED = ("header_not_allowed", 403)
    MODEL_NOT_ALLOWED = ("model_not_allowed", 403)
    MODEL_UNPRICED = ("model_unpriced", 400)
    MAX_TOKENS_NOT_ALLOWED = ("max_tokens_not_allowed", 403)
    BODY_TOO_LARGE = ("body_too_large", 413)
    BODY_UNREADABLE = ("body_unreadable", 400)
    IDEMPOTENCY_KEY_REUSED = ("idempotency_key_reused", 400)
    IDEMPOTENCY_KEY_AMBIGUOUS = ("idempotency_key_ambiguous", 400)
    COST_UNDETERMINED = ("cost_undetermined", 400)
    CURRENCY_UNKNOWN = ("currency_unknown", 400)
    CAP_PER_TRANSACTION = ("cap_per_transaction", 402)
    CAP_WINDOW = ("cap_window", 402)
    CAP_LIFETIME = ("cap_lifetime", 402)
    CAP_POLICY = ("cap_policy", 402)
    RATE_LIMITED = ("rate_limited", 429)
    REPEAT_LIMITED = ("repeat_limited", 429)
    SPEND_RATE_LIMITED = ("spend_rate_limited", 429)
    LEDGER_UNAVAILABLE = ("ledger_unavailable", 503)
    REVOCATION_STALE = ("revocation_stale", 503)
    INTERNAL = ("internal", 500)
    PROXY_REJECTED = ("proxy_rejected", 400)
    UPSTREAM_UNAVAILABLE = ("upstream_unavailable", 502)
    UPSTREAM_FAILED = ("upstream_failed", 502)

    def __str__(self) -> str:
        return self.value

    @classmethod
    def from_code(cls, code: str) -> "Reason | None":
        try:
            return cls(code)
        except ValueError:
            return None

    @property
    def is_cap(self) -> bool:
        """Money: a spend cap stopped the call (402, or 403 on some vendors)."""
        return self.value.startswith("cap_")

    @property
    def is_loop(self) -> bool:
        """The loop breaker stopped the call: the agent is repeating itself."""
        return self.status == 429

    @property
    def is_credential(self) -> bool:
        """The vault token itself is not good (expired, revoked, ...)."""
        return self.status == 401
