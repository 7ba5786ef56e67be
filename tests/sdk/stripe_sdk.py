"""The official Stripe SDK through Bridle, configured as README.md says.

Environment (set by tests/e2e/sdk.rs):
  BRIDLE_URL             the Stripe listener, e.g. http://127.0.0.1:10001
  BRIDLE_TOKEN           a vault token of the test's Stripe policy
  BRIDLE_TOKEN_LOOP      another token of that policy, for the loop breaker
  STRIPE_MERCHANT        a connected account the policy allows
  STRIPE_OTHER_MERCHANT  one it does not
  BRIDLE_PHASE           "main", or "ledger_down" (run after the test killed the ledger)

SDK options are the defaults: StripeClient makes no retries unless told to, the module-level
API (`stripe.api_key`) retries 409 and 5xx twice (`stripe.max_network_retries = 2`).
"""

import stripe

from _outcome import call, emit, env, until_refused

URL = env("BRIDLE_URL")
TOKEN = env("BRIDLE_TOKEN")
MERCHANT = env("STRIPE_MERCHANT")
PHASE = env("BRIDLE_PHASE")


def error_code(e):
    # PermissionError and RateLimitError leave `code` None; the error object has it.
    err = getattr(e, "error", None)
    return {
        "error_code": getattr(err, "code", None),
        "error_type": getattr(err, "type", None),
        "user_message": getattr(e, "user_message", None),
    }


def main():
    out = {"sdk_version": stripe.VERSION}
    client = stripe.StripeClient(TOKEN, base_addresses={"api": URL})
    scoped = {"stripe_account": MERCHANT}

    # (a) Allowed: a costed PaymentIntent, and a plain read.
    out["allowed"] = call(
        lambda: client.v1.payment_intents.create(
            params={"amount": 2000, "currency": "usd"}, options=scoped
        ),
        [stripe],
        details=error_code,
        result=lambda pi: {
            "id": pi.id,
            "amount": pi.amount,
            "type": type(pi).__name__,
        },
    )
    out["allowed_read"] = call(
        lambda: client.v1.charges.retrieve("ch_123", options=scoped),
        [stripe],
        details=error_code,
        result=lambda ch: {"id": ch.id},
    )

    # (b) Outside the policy: an endpoint, and a merchant.
    out["endpoint_denied"] = call(
        lambda: client.v1.refunds.create(params={"charge": "ch_123"}, options=scoped),
        [stripe],
        details=error_code,
    )
    out["merchant_denied"] = call(
        lambda: client.v1.payment_intents.create(
            params={"amount": 100, "currency": "usd"},
            options={"stripe_account": env("STRIPE_OTHER_MERCHANT")},
        ),
        [stripe],
        details=error_code,
    )

    # (c) Over the $50.00 per-transaction cap.
    out["cap"] = call(
        lambda: client.v1.payment_intents.create(
            params={"amount": 6000, "currency": "usd"}, options=scoped
        ),
        [stripe],
        details=error_code,
    )

    # A looping agent: the same read until the loop breaker answers 429.
    looping = stripe.StripeClient(env("BRIDLE_TOKEN_LOOP"), base_addresses={"api": URL})
    out["loop"] = until_refused(
        lambda: looping.v1.charges.retrieve("ch_same", options=scoped),
        [stripe],
        details=error_code,
    )

    # The module-level style the README also shows.
    stripe.api_key = TOKEN
    stripe.api_base = URL
    out["module_max_network_retries"] = stripe.max_network_retries
    out["module_allowed"] = call(
        lambda: stripe.PaymentIntent.create(amount=1500, currency="usd", stripe_account=MERCHANT),
        [stripe],
        details=error_code,
        result=lambda pi: {"id": pi.id, "amount": pi.amount},
    )
    return out


def ledger_down():
    # Module-level Stripe retries a 503 twice by default; Stripe-Should-Retry: false stops it.
    stripe.api_key = TOKEN
    stripe.api_base = URL
    return {
        "sdk_version": stripe.VERSION,
        "module_max_network_retries": stripe.max_network_retries,
        "unavailable": call(
            lambda: stripe.PaymentIntent.create(
                amount=1000, currency="usd", stripe_account=MERCHANT
            ),
            [stripe],
            details=error_code,
        ),
    }


emit(main() if PHASE == "main" else ledger_down())
