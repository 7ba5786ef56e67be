"""The official OpenAI SDK through Bridle on endpoints priced by tokens, streaming and not.

Environment (set by tests/e2e/llm.rs):
  BRIDLE_URL          the OpenAI listener with /v1
  BRIDLE_TOKEN        a vault token of the test's policy, for the calls that settle by usage
  BRIDLE_TOKEN_CUT    another, for a stream the agent abandons after its first chunk
  BRIDLE_TOKEN_LOOP   another, for a looping agent (omitted: no loop case)
  BRIDLE_MODEL        a model the policy allows and the price table prices
  BRIDLE_REASONING_MODEL  another, whose usage reports reasoning tokens
  BRIDLE_POLICY_MAX   the policy's max_output_tokens

Prints one JSON object: each case's outcome (see _outcome.call), with the usage the SDK
reported and, for streams, when the first chunk arrived (time.time()).
"""

import time

import openai

from _outcome import call, emit, env, until_refused

URL = env("BRIDLE_URL")
MODEL = env("BRIDLE_MODEL")
POLICY_MAX = int(env("BRIDLE_POLICY_MAX"))
MODULES = [openai]
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant. Answer in one short sentence, and never use more words than you need to."},
    {"role": "user", "content": "Say hello."},
]


def details(e):
    response = getattr(e, "response", None)
    return {
        "type": getattr(e, "type", None),
        "body": getattr(e, "body", None),
        "retry_after": response.headers.get("retry-after") if response is not None else None,
    }


def usage(u):
    return u.model_dump() if u is not None else None


def chat(client, **kw):
    c = client.chat.completions.create(model=kw.pop("model", MODEL), messages=MESSAGES, **kw)
    return {"content": c.choices[0].message.content, "usage": usage(c.usage)}


def chat_stream(client, **kw):
    first, text, last_usage = None, "", None
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **kw):
        if first is None:
            first = time.time()
        for choice in chunk.choices:
            text += choice.delta.content or ""
        if chunk.usage is not None:
            last_usage = usage(chunk.usage)
    return {"content": text, "usage": last_usage, "first_chunk_at": first}


def responses(client, **kw):
    r = client.responses.create(input="Say hello.", instructions="Be terse.", **kw)
    return {"content": r.output_text, "usage": usage(r.usage)}


def responses_stream(client, **kw):
    first, text, final = None, "", None
    for event in client.responses.create(model=MODEL, input="Say hello.", stream=True, **kw):
        if first is None:
            first = time.time()
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = usage(event.response.usage)
    return {"content": text, "usage": final, "first_chunk_at": first}


def abandoned_stream(client):
    # The agent reads one chunk and goes away: the SDK closes the connection.
    first = None
    with client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        max_completion_tokens=40,
        stream_options={"include_usage": True},
        service_tier="default",  # as Bridle would pin it: nothing to rewrite
    ) as stream:
        for _ in stream:
            first = time.time()
            break
    return {"first_chunk_at": first}


def main():
    client = openai.OpenAI(api_key=env("BRIDLE_TOKEN"), base_url=URL)
    out = {"sdk_version": openai.__version__, "max_retries": client.max_retries}
    ok = lambda r: r  # noqa: E731 - the result is already plain data

    # service_tier as Bridle would pin it: the vendor gets the bytes the reservation priced.
    fifty = {"max_completion_tokens": 50, "service_tier": "default"}
    out["chat"] = call(lambda: chat(client, **fifty), MODULES, details, ok)
    # No maximum, and a stream that did not ask for its usage: Bridle writes both in.
    out["chat_stream"] = call(lambda: chat_stream(client), MODULES, details, ok)
    out["responses"] = call(
        lambda: responses(client, model=env("BRIDLE_REASONING_MODEL"), max_output_tokens=120),
        MODULES,
        details,
        ok,
    )
    out["responses_stream"] = call(lambda: responses_stream(client), MODULES, details, ok)

    # Refusals, each one attempt.
    out["over_max"] = call(lambda: chat(client, max_completion_tokens=POLICY_MAX + 1), MODULES, details)
    out["not_allowed"] = call(lambda: chat(client, model="gpt-4o", max_completion_tokens=5), MODULES, details)
    out["unpriced"] = call(
        lambda: chat(client, model=MODEL + "-tts", max_completion_tokens=5), MODULES, details
    )

    cut = openai.OpenAI(api_key=env("BRIDLE_TOKEN_CUT"), base_url=URL)
    out["cut"] = call(lambda: abandoned_stream(cut), MODULES, details, ok)

    # A looping agent under a spend breaker: the same call until it is refused (429, with a
    # Retry-After the SDK would otherwise wait out and retry, twice).
    looping = openai.OpenAI(api_key=env("BRIDLE_TOKEN_LOOP"), base_url=URL)
    out["loop"] = until_refused(
        lambda: chat(looping, **fifty), MODULES, limit=80, details=details
    )
    return out


emit(main())
