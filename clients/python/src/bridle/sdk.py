"""The official vendor SDKs, pointed at the proxy and holding a vault token, configured as
README.md's "Pointing each official SDK at Bridle" says. Each SDK is an optional extra: a
missing one raises an `ImportError` that names the extra to install.

Bridle's refusals carry `x-should-retry: false` and `Stripe-Should-Retry: false`, so these
clients do not retry a refusal; `bridle.refusal(e)` reads the reason from their exceptions.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def _need(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"the {extra} SDK is not installed: pip install 'bridle-client[{extra}]'"
        ) from e


def stripe_client(token: str, base_url: str, **options: Any) -> Any:
    """`stripe.StripeClient` sending `token` to the proxy."""
    stripe = _need("stripe", "stripe")
    return stripe.StripeClient(token, base_addresses={"api": base_url}, **options)


def openai_client(token: str, base_url: str, **options: Any) -> Any:
    """`openai.OpenAI`; the proxy's base URL gets OpenAI's `/v1`."""
    openai = _need("openai", "openai")
    return openai.OpenAI(api_key=token, base_url=f"{base_url}/v1", **options)


def async_openai_client(token: str, base_url: str, **options: Any) -> Any:
    openai = _need("openai", "openai")
    return openai.AsyncOpenAI(api_key=token, base_url=f"{base_url}/v1", **options)


def anthropic_client(token: str, base_url: str, **options: Any) -> Any:
    """`anthropic.Anthropic`, sending the token as `x-api-key`."""
    anthropic = _need("anthropic", "anthropic")
    return anthropic.Anthropic(api_key=token, base_url=base_url, **options)


def async_anthropic_client(token: str, base_url: str, **options: Any) -> Any:
    anthropic = _need("anthropic", "anthropic")
    return anthropic.AsyncAnthropic(api_key=token, base_url=base_url, **options)


def resend_module(token: str, base_url: str) -> ModuleType:
    """The `resend` module, configured. Resend's SDK keeps its key and URL in module
    globals, so one process talks to Resend with one token at a time."""
    resend = _need("resend", "resend")
    resend.api_key = token
    resend.api_url = base_url
    return resend


def twilio_client(token: str, base_url: str, account_sid: str, **options: Any) -> Any:
    """`twilio.rest.Client` for `account_sid` with the token as its password. Twilio's SDK
    has no base-URL setting, so its HTTP client is routed to the proxy instead."""
    _need("twilio", "twilio")
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    class Via(TwilioHttpClient):  # type: ignore[misc]
        def __init__(self, base: str) -> None:
            super().__init__()
            self.base = urlsplit(base)

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            u = urlsplit(url)
            routed = urlunsplit((self.base.scheme, self.base.netloc, u.path, u.query, ""))
            return super().request(method, routed, *args, **kwargs)

    return Client(account_sid, token, http_client=Via(base_url), **options)
