"""The official Resend SDK through Bridle, configured as README.md says.

Environment (set by tests/e2e/sdk.rs):
  BRIDLE_URL          the Resend listener, e.g. http://127.0.0.1:10003
  BRIDLE_TOKEN        a vault token of the test's Resend policy
  BRIDLE_TOKEN_LOOP   another token of that policy, for the loop breaker
"""

import resend
from resend import exceptions

from _outcome import call, emit, env, until_refused

MODULES = [resend, exceptions]


def details(e):
    # ResendError carries the HTTP status as `code`; its `error_type` is the body's `name`.
    return {"status": getattr(e, "code", None), "error_type": getattr(e, "error_type", None)}


def email(*to):
    return {
        "from": "Shop <orders@example.com>",
        "to": list(to),
        "subject": "Your order",
        "html": "<p>It has shipped.</p>",
    }


resend.api_key = env("BRIDLE_TOKEN")
resend.api_url = env("BRIDLE_URL")
out = {"sdk_version": resend.__version__}

# (a) Allowed: one email to one recipient.
out["allowed"] = call(
    lambda: resend.Emails.send(email("ada@example.com")),
    MODULES,
    details=details,
    result=lambda r: {"id": r["id"]},
)

# (b) Outside the policy: the domains API.
out["endpoint_denied"] = call(lambda: resend.Domains.list(), MODULES, details=details)

# (c) Over the per-transaction cap: four recipients at $0.001 each.
out["cap"] = call(
    lambda: resend.Emails.send(
        email("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    ),
    MODULES,
    details=details,
)

# A looping agent: the same status read until the loop breaker answers 429. The SDK sends
# every GET with a `{}` JSON body, which Bridle reads whole to fingerprint the repeat.
resend.api_key = env("BRIDLE_TOKEN_LOOP")
out["loop"] = until_refused(
    lambda: resend.Emails.get("4ef9a417-02e9-4d39-ad75-9611e0fcc33c"),
    MODULES,
    details=details,
)

emit(out)
