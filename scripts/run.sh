#!/usr/bin/env bash
# `make run`: the ledger, a mock vendor, then Envoy with the example policies.
# Ctrl-C stops everything. Set BRIDLE_UPSTREAM_<VENDOR> (e.g. BRIDLE_UPSTREAM_STRIPE=
# https://api.stripe.com) and the vendor's secret variable to front a real API instead.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=target/run
BRIDLE=target/debug/bridle
MOCK_ADDR=${BRIDLE_MOCK_ADDR:-127.0.0.1:12111}
mkdir -p "$RUN"

# Development credentials, created once so that tokens minted earlier keep working (and
# again when an older dev.env still holds a symmetric BRIDLE_KEYRING).
if [[ ! -f $RUN/dev.env ]] || ! grep -q BRIDLE_SIGNING_KEY "$RUN/dev.env"; then
  signing_key=$($BRIDLE keygen --kid dev1)
  {
    echo "# Development credentials for make run. Not for production."
    echo "# The ledger and \`bridle mint\` sign with BRIDLE_SIGNING_KEY; Envoy gets only BRIDLE_PUBLIC_KEYS."
    echo "export BRIDLE_SIGNING_KEY=$signing_key"
    echo "export BRIDLE_PUBLIC_KEYS=$($BRIDLE pubkey <<<"$signing_key")"
    echo "export BRIDLE_ADMIN_KEY=adm_$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')"
    echo "export BRIDLE_ENFORCER_KEY=enf_$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')"
  } > "$RUN/dev.env"
  chmod 600 "$RUN/dev.env"
fi
# shellcheck disable=SC1091
source "$RUN/dev.env"

# Placeholder vendor secrets: the mock vendor accepts anything.
export STRIPE_SECRET_KEY=${STRIPE_SECRET_KEY:-sk_test_bridle_dev_placeholder}
export TWILIO_API_KEY=${TWILIO_API_KEY:-SKbridledevplaceholder:devsecret}
export RESEND_API_KEY=${RESEND_API_KEY:-re_bridle_dev_placeholder}
export OPENAI_API_KEY=${OPENAI_API_KEY:-sk-bridle-dev-placeholder}
export ANTHROPIC_API_KEY=${ANTHROPIC_API_KEY:-sk-ant-bridle-dev-placeholder}
for vendor in STRIPE TWILIO RESEND OPENAI ANTHROPIC; do
  var=BRIDLE_UPSTREAM_$vendor
  export "$var=${!var:-http://$MOCK_ADDR}"
done

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

LEDGER_ADDR=${BRIDLE_LEDGER_ADDR:-127.0.0.1:8181}
target/debug/bridle-ledger --listen "$LEDGER_ADDR" --db "$RUN/ledger.db" --policies policies &
pids+=($!)
target/debug/bridle-mock-vendor "$MOCK_ADDR" &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/${LEDGER_ADDR%:*}/${LEDGER_ADDR##*:}") 2>/dev/null && break
  sleep 0.1
done

$BRIDLE render envoy --ledger "http://$LEDGER_ADDR" -o "$RUN/envoy.yaml"
cat <<MSG

Bridle is starting. Listeners (one per vendor, point the vendor's SDK here):
  stripe     http://127.0.0.1:10001      openai     http://127.0.0.1:10004/v1
  twilio     http://127.0.0.1:10002      anthropic  http://127.0.0.1:10005
  resend     http://127.0.0.1:10003      Envoy admin http://127.0.0.1:9901
  ledger     http://$LEDGER_ADDR         (admin API: bridle issue / revoke / tokens / audit)
Upstreams: ${BRIDLE_UPSTREAM_STRIPE} (stripe) ... mock vendor on http://$MOCK_ADDR
Credentials for the walkthrough: source $RUN/dev.env

MSG
# Envoy is a proxy: it gets the public keys, never the signing key or the admin key.
env -u BRIDLE_SIGNING_KEY -u BRIDLE_ADMIN_KEY \
  .venv/bin/envoy -c "$RUN/envoy.yaml" --disable-hot-restart --concurrency 2 --log-level warn \
  --component-log-level wasm:info &
pids+=($!)
wait -n "${pids[@]}"
