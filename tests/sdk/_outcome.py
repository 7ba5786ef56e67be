"""Shared by the SDK scripts: run one SDK call, record what happened, print one JSON object.

The scripts are run by tests/e2e/sdk.rs with a clean environment; everything they need
comes in environment variables, and everything they learn goes out as one JSON object on
stdout, which the Rust test asserts on.
"""

import json
import os
import sys
import time


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set (this script is run by tests/e2e/sdk.rs)")
    return value


def public_name(exc, *modules):
    """The name a user would catch the exception by (`stripe.PermissionError`), when one of
    `modules` exports its exact class; otherwise its defining module and name."""
    cls = type(exc)
    for module in modules:
        # Some SDKs export lazily (module __getattr__), so ask for the class's own name first.
        if getattr(module, cls.__name__, None) is cls:
            return f"{module.__name__}.{cls.__name__}"
        for attr in dir(module):
            if getattr(module, attr, None) is cls:
                return f"{module.__name__}.{attr}"
    return f"{cls.__module__}.{cls.__qualname__}"


def call(fn, modules, details=None, result=None):
    """Runs `fn`. Returns {"ok": True, ...result(value)} or {"ok": False, "class", "str",
    "code", "status", ...details(exc)}, with how long it took."""
    start = time.monotonic()
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - the point is to report whatever was raised
        out = {
            "ok": False,
            "class": public_name(e, *modules),
            "str": str(e),
            "code": _plain(getattr(e, "code", None)),
            "status": _plain(
                next(
                    (
                        getattr(e, a)
                        for a in ("http_status", "status_code", "status")
                        if getattr(e, a, None) is not None
                    ),
                    None,
                )
            ),
        }
        if details is not None:
            out.update({k: _plain(v) for k, v in details(e).items()})
    else:
        out = {"ok": True}
        if result is not None:
            out.update({k: _plain(v) for k, v in result(value).items()})
    out["elapsed_s"] = round(time.monotonic() - start, 3)
    return out


def until_refused(fn, modules, limit=20, details=None):
    """Calls `fn` until it raises (at most `limit` times). Returns the refusal, how many calls
    succeeded first, and the wall-clock seconds of the first and last call (the loop breaker
    counts per calendar minute)."""
    first = time.time()
    for allowed in range(limit):
        out = call(fn, modules, details=details)
        if not out["ok"]:
            out["allowed_before"] = allowed
            out["first_call_at"] = first
            out["last_call_at"] = time.time()
            return out
    return {"ok": True, "allowed_before": limit, "first_call_at": first, "last_call_at": time.time()}


def _plain(v):
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return repr(v)


def emit(outcomes):
    print(json.dumps(outcomes), flush=True)
