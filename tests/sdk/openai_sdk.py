"""The official OpenAI SDK through Bridle, configured as README.md says (the base URL
includes /v1).

Environment (set by tests/e2e/sdk.rs):
  BRIDLE_URL           the OpenAI listener with /v1, e.g. http://127.0.0.1:10004/v1
  BRIDLE_TOKEN         a vault token of the test's OpenAI policy
  BRIDLE_TOKEN_CAPPED  a token narrowed to a lifetime cap of one call's estimate
  BRIDLE_TOKEN_LOOP    another token of that policy, for the loop breaker
  BRIDLE_PHASE         "main", or "ledger_down" (run after the test killed the ledger)

SDK options are the defaults: max_retries=2, and 408, 409, 429 and 5xx are retried (after
Retry-After, when it is at most a minute) unless the response says x-should-retry: false.
"""

import openai

from _outcome import call, emit, env, until_refused

URL = env("BRIDLE_URL")
MODULES = [openai]
MESSAGES = [{"role": "user", "content": "Say hello."}]


def details(e):
    return {"type": getattr(e, "type", None), "body": getattr(e, "body", None)}


def chat(client):
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def completion(c):
    return {"id": c.id, "content": c.choices[0].message.content, "type": type(c).__name__}


def main():
    client = openai.OpenAI(api_key=env("BRIDLE_TOKEN"), base_url=URL)
    out = {"sdk_version": openai.__version__, "max_retries": client.max_retries}

    # (a) Allowed: a chat completion (costed at its policy estimate).
    out["allowed"] = call(lambda: chat(client), MODULES, details=details, result=completion)

    # (b) Outside the policy: the files API.
    out["endpoint_denied"] = call(lambda: client.files.list(), MODULES, details=details)

    # (c) A token whose lifetime cap holds one call: the second is refused with 403, a
    # permission error (402 would be a bare APIStatusError of type billing_error).
    capped = openai.OpenAI(api_key=env("BRIDLE_TOKEN_CAPPED"), base_url=URL)
    out["cap_first"] = call(lambda: chat(capped), MODULES, details=details, result=completion)
    out["cap"] = call(
        lambda: capped.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Again."}]
        ),
        MODULES,
        details=details,
    )

    # A looping agent: the same request until the loop breaker answers 429 (with a
    # Retry-After of up to a minute, which the SDK would otherwise wait out, twice).
    looping = openai.OpenAI(api_key=env("BRIDLE_TOKEN_LOOP"), base_url=URL)
    out["loop"] = until_refused(lambda: looping.models.list(), MODULES, details=details)
    return out


def ledger_down():
    # A costed call with the ledger down: 503, which the SDK retries twice by default.
    client = openai.OpenAI(api_key=env("BRIDLE_TOKEN"), base_url=URL)
    return {
        "sdk_version": openai.__version__,
        "max_retries": client.max_retries,
        "unavailable": call(lambda: chat(client), MODULES, details=details),
    }


emit(main() if env("BRIDLE_PHASE") == "main" else ledger_down())
