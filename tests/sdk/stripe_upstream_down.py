"""The official Stripe SDK when Bridle cannot reach Stripe securely (tests/e2e/upstream_tls.rs).

Environment:
  BRIDLE_URL    the Stripe listener, whose upstream presents a certificate Envoy refuses
  BRIDLE_TOKEN  a vault token of the test's Stripe policy

The module-level API retries 5xx twice by default (`stripe.max_network_retries = 2`); the
test counts the attempts that reached Envoy.
"""

import stripe

from _outcome import call, emit, env


def main():
    stripe.api_key = env("BRIDLE_TOKEN")
    stripe.api_base = env("BRIDLE_URL")
    out = {
        "sdk_version": stripe.VERSION,
        "module_max_network_retries": stripe.max_network_retries,
    }
    out["read"] = call(
        lambda: stripe.Charge.retrieve("ch_123"),
        [stripe],
        details=lambda e: {"error_code": getattr(getattr(e, "error", None), "code", None)},
    )
    emit(out)


main()
