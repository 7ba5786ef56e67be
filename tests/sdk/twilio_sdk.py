"""The official Twilio SDK through Bridle, configured as README.md says: Twilio has no
base-URL setting, so its HTTP client is routed to the proxy.

Environment (set by tests/e2e/sdk.rs):
  BRIDLE_URL           the Twilio listener, e.g. http://127.0.0.1:10002
  BRIDLE_TOKEN         a vault token of the test's Twilio policy (the Basic password)
  BRIDLE_TOKEN_LOOP    another token of that policy, for the loop breaker
  TWILIO_ACCOUNT_SID   the account the policy allows (the Basic user name)
  TWILIO_OTHER_SID     an account it does not
"""

from urllib.parse import urlsplit, urlunsplit

import twilio
from twilio.base import exceptions
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from _outcome import call, emit, env, until_refused


# README.md, "Pointing each official SDK at Bridle", verbatim.
class Via(TwilioHttpClient):
    def __init__(self, base):
        super().__init__()
        self.base = urlsplit(base)

    def request(self, method, url, *args, **kwargs):
        u = urlsplit(url)
        return super().request(
            method,
            urlunsplit((self.base.scheme, self.base.netloc, u.path, u.query, "")),
            *args,
            **kwargs,
        )


URL = env("BRIDLE_URL")
SID = env("TWILIO_ACCOUNT_SID")
TO, FROM = "+15551234567", "+15557654321"
MODULES = [exceptions, twilio]


def details(e):
    return {"uri": getattr(e, "uri", None), "msg": getattr(e, "msg", None)}


client = Client(SID, env("BRIDLE_TOKEN"), http_client=Via(URL))
out = {"sdk_version": twilio.__version__}

# (a) Allowed: an SMS of one segment.
out["allowed"] = call(
    lambda: client.messages.create(to=TO, from_=FROM, body="Your order has shipped."),
    MODULES,
    details=details,
    result=lambda m: {"sid": m.sid, "status": m.status, "type": type(m).__name__},
)

# (b) Outside the policy: an endpoint (a phone call), and another account.
out["endpoint_denied"] = call(
    lambda: client.calls.create(to=TO, from_=FROM, url="https://example.com/twiml"),
    MODULES,
    details=details,
)
out["merchant_denied"] = call(
    lambda: client.api.v2010.accounts(env("TWILIO_OTHER_SID")).messages.create(
        to=TO, from_=FROM, body="hello"
    ),
    MODULES,
    details=details,
)

# (c) Over the per-transaction cap: 400 GSM-7 characters are three segments.
out["cap"] = call(
    lambda: client.messages.create(to=TO, from_=FROM, body="a" * 400),
    MODULES,
    details=details,
)

# A looping agent: the same status read until the loop breaker answers 429.
looping = Client(SID, env("BRIDLE_TOKEN_LOOP"), http_client=Via(URL))
out["loop"] = until_refused(
    lambda: looping.messages("SM00000000000000000000000000000001").fetch(),
    MODULES,
    details=details,
)

emit(out)
