"""The official Anthropic SDK through Bridle, configured as README.md says.

Environment (set by tests/e2e/sdk.rs):
  BRIDLE_URL           the Anthropic listener, e.g. http://127.0.0.1:10005
  BRIDLE_TOKEN         a vault token of the test's Anthropic policy
  BRIDLE_TOKEN_CAPPED  a token narrowed to a lifetime cap of one call's estimate
  BRIDLE_TOKEN_LOOP    another token of that policy, for the loop breaker
  BRIDLE_PHASE         "main", or "ledger_down" (run after the test killed the ledger)

SDK options are the defaults: max_retries=2, and 408, 409, 429 and 5xx are retried (after
Retry-After, when it is at most a minute) unless the response says x-should-retry: false.
"""

import anthropic

from _outcome import call, emit, env, until_refused

URL = env("BRIDLE_URL")
MODULES = [anthropic]
MODEL = "claude-sonnet-4-5"


def details(e):
    body = getattr(e, "body", None)
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return {
        "type": getattr(e, "type", None),
        "error_code": (error.get("details") or {}).get("error_code"),
    }


def message(client, text="Say hello."):
    return client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": text}]
    )


def result(m):
    return {"id": m.id, "text": m.content[0].text, "type": type(m).__name__}


def main():
    client = anthropic.Anthropic(api_key=env("BRIDLE_TOKEN"), base_url=URL)
    out = {"sdk_version": anthropic.__version__, "max_retries": client.max_retries}

    # (a) Allowed: a message (costed at its policy estimate), and token counting (free).
    out["allowed"] = call(lambda: message(client), MODULES, details=details, result=result)
    out["allowed_count"] = call(
        lambda: client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}]
        ),
        MODULES,
        details=details,
        result=lambda r: {"type": type(r).__name__},
    )

    # (b) Outside the policy: the models API.
    out["endpoint_denied"] = call(lambda: client.models.list(), MODULES, details=details)

    # (c) A token whose lifetime cap holds one call: the second is refused with 403, a
    # permission error (402 would be PaymentRequiredError, the account's billing).
    capped = anthropic.Anthropic(api_key=env("BRIDLE_TOKEN_CAPPED"), base_url=URL)
    out["cap_first"] = call(lambda: message(capped), MODULES, details=details, result=result)
    out["cap"] = call(lambda: message(capped, "Again."), MODULES, details=details)

    # A looping agent: the same message until the loop breaker answers 429 (with a
    # Retry-After of up to a minute, which the SDK would otherwise wait out, twice).
    looping = anthropic.Anthropic(api_key=env("BRIDLE_TOKEN_LOOP"), base_url=URL)
    out["loop"] = until_refused(lambda: message(looping), MODULES, details=details)
    return out


def ledger_down():
    # A costed call with the ledger down: 503, which the SDK retries twice by default.
    client = anthropic.Anthropic(api_key=env("BRIDLE_TOKEN"), base_url=URL)
    return {
        "sdk_version": anthropic.__version__,
        "max_retries": client.max_retries,
        "unavailable": call(lambda: message(client), MODULES, details=details),
    }


emit(main() if env("BRIDLE_PHASE") == "main" else ledger_down())
