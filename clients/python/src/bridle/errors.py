"""Typed errors.

- `LedgerError` and its subclasses: the ledger's admin API refused or failed. Each carries
  the ledger's error `code` (`invalid_request`, `not_found`, ...), the HTTP `status` and the
  ledger's message.
- `Refusal`: the proxy refused a vendor call, with Bridle's `reason` (a `Reason`). Vendor SDKs
  raise their own exception classes for these; `refusal(exc)` reads Bridle's reason out of
  any of them.
- `RevokeFailed`: a run could not revoke its tokens on exit. Never swallowed: credentials
  that outlive their run are what Bridle exists to prevent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .reasons import Reason


class BridleError(Exception):
    """Base class of every error this package raises."""


class LedgerError(BridleError):
    """The ledger answered with an error, or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.status = status
        self.code = code
        self.message = message


class InvalidRequestError(LedgerError):
    """400: the request was refused as asked (a cap above the policy's, a TTL too long...)."""


class AuthenticationError(LedgerError):
    """401: the admin key is missing or wrong."""


class NotFoundError(LedgerError):
    """404: no such token (or endpoint)."""


class StoreUnavailableError(LedgerError):
    """503: the ledger's store failed; the request may be retried."""


class LedgerUnreachableError(LedgerError):
    """No answer from the ledger at all (connection refused, timeout)."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(0, "ledger_unreachable", f"cannot reach the ledger at {url}: {cause}")


_BY_STATUS: dict[int, type[LedgerError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    503: StoreUnavailableError,
}


def ledger_error(status: int, body: Any) -> LedgerError:
    """The typed error for a non-2xx answer of the ledger."""
    error = body.get("error") if isinstance(body, dict) else None
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    cls = _BY_STATUS.get(status, LedgerError)
    return cls(status, code or f"http_{status}", message or f"the ledger answered {status}")


class Refusal(BridleError):
    """The proxy refused a vendor call."""

    def __init__(self, reason: Reason, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status if status is not None else reason.status
        self.message = message


class RevokeFailed(BridleError):
    """A run's tokens could not be revoked on exit; they stay valid until they expire."""

    def __init__(self, label_prefix: str, cause: Exception) -> None:
        super().__init__(
            f"could not revoke the tokens of run {label_prefix!r}: {cause}. "
            "They stay valid until they expire: revoke them by hand "
            f"(bridle revoke --label-prefix {label_prefix!r})."
        )
        self.label_prefix = label_prefix
        self.cause = cause


_CODE_AT_END = re.compile(r"\[([a-z_]+)\]\s*$")


def _headers_of(exc: BaseException) -> Mapping[str, Any] | None:
    """Response headers, where each SDK keeps them: stripe `e.headers`, openai and anthropic
    `e.response.headers`, resend and others `e.http_headers`."""
    for holder in (exc, getattr(exc, "response", None)):
        for attr in ("headers", "http_headers"):
            h = getattr(holder, attr, None) if holder is not None else None
            if h is not None and hasattr(h, "get"):
                return h
    return None


def _status_of(exc: BaseException) -> int | None:
    for attr in ("http_status", "status_code", "status"):
        v = getattr(exc, attr, None)
        if isinstance(v, int):
            return v
    return None


def refusal(exc: BaseException) -> Refusal | None:
    """Bridle's refusal behind a vendor SDK's exception, or `None` when the exception did not
    come from the proxy refusing (a vendor error, a network error...).

    Reads the `x-bridle-reason` response header when the SDK keeps headers, else the
    `[reason_code]` that ends every Bridle message.
    """
    if isinstance(exc, Refusal):
        return exc
    reason: Reason | None = None
    headers = _headers_of(exc)
    if headers is not None:
        code = headers.get("x-bridle-reason") or headers.get("X-Bridle-Reason")
        if isinstance(code, str):
            reason = Reason.from_code(code)
    text = str(exc)
    if reason is None and "Bridle: " in text:
        m = _CODE_AT_END.search(text)
        if m:
            reason = Reason.from_code(m.group(1))
    if reason is None or reason is Reason.ALLOWED:
        return None
    return Refusal(reason, text, _status_of(exc))
