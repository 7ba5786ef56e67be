"""The official Anthropic SDK through Bridle on an endpoint priced by tokens, streaming and not,
with prompt-cache writes of both lifetimes.

Environment (set by tests/e2e/llm.rs):
  BRIDLE_URL          the Anthropic listener
  BRIDLE_TOKEN        a vault token of the test's policy, for the calls that settle by usage
  BRIDLE_TOKEN_CUT    another, for a stream the agent abandons after its first event
  BRIDLE_TOKEN_LOOP   another, for a looping agent (omitted: no loop case)
  BRIDLE_MODEL        a model the policy allows and the price table prices
  BRIDLE_POLICY_MAX   the policy's max_output_tokens

Prints one JSON object: each case's outcome (see _outcome.call), with the usage the SDK
reported and, for streams, when the first event arrived (time.time()).
"""

import time

import anthropic

from _outcome import call, emit, env

URL = env("BRIDLE_URL")
MODEL = env("BRIDLE_MODEL")
POLICY_MAX = int(env("BRIDLE_POLICY_MAX"))
MODULES = [anthropic]
LONG_SYSTEM = (
    "You are a coding agent working in a large repository. Read the task, plan the change, "
    "make it, and report what you did in one short paragraph. Keep answers terse."
)
MESSAGES = [{"role": "user", "content": "Say hello."}]


def details(e):
    body = getattr(e, "body", None)
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return {"type": getattr(e, "type", None), "error_code": (error.get("details") or {}).get("error_code")}


def system(ttl=None):
    cache = {"type": "ephemeral"}
    if ttl:
        cache["ttl"] = ttl
    return [{"type": "text", "text": LONG_SYSTEM, "cache_control": cache}]


def message(client, **kw):
    m = client.messages.create(model=kw.pop("model", MODEL), messages=MESSAGES, **kw)
    return {"content": m.content[0].text, "usage": m.usage.model_dump()}


def message_stream(client, **kw):
    first = None
    with client.messages.stream(model=MODEL, messages=MESSAGES, **kw) as stream:
        for _ in stream:
            if first is None:
                first = time.time()
        final = stream.get_final_message()
    return {"content": final.content[0].text, "usage": final.usage.model_dump(), "first_chunk_at": first}


def abandoned_stream(client):
    first = None
    with client.messages.stream(model=MODEL, messages=MESSAGES, max_tokens=40) as stream:
        for _ in stream:
            first = time.time()
            break
    return {"first_chunk_at": first}


def main():
    client = anthropic.Anthropic(api_key=env("BRIDLE_TOKEN"), base_url=URL)
    out = {"sdk_version": anthropic.__version__, "max_retries": client.max_retries}
    ok = lambda r: r  # noqa: E731 - the result is already plain data

    out["message"] = call(lambda: message(client, max_tokens=50, system=system()), MODULES, details, ok)
    out["message_stream"] = call(
        lambda: message_stream(client, max_tokens=60, system=system("1h")), MODULES, details, ok
    )
    out["plain_stream"] = call(lambda: message_stream(client, max_tokens=30), MODULES, details, ok)

    out["over_max"] = call(lambda: message(client, max_tokens=POLICY_MAX + 1), MODULES, details)
    out["not_allowed"] = call(lambda: message(client, model="claude-opus-4-1", max_tokens=5), MODULES, details)
    out["unpriced"] = call(lambda: message(client, model=MODEL + "-preview", max_tokens=5), MODULES, details)

    cut = anthropic.Anthropic(api_key=env("BRIDLE_TOKEN_CUT"), base_url=URL)
    out["cut"] = call(lambda: abandoned_stream(cut), MODULES, details, ok)
    return out


emit(main())
