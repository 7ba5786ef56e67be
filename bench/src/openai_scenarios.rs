//! Bridle's OpenAI paths side by side with LiteLLM's proxy, on one OpenAI-shaped request.
//!
//! Every row sends the same `POST /v1/chat/completions` (a short conversation with
//! `gpt-4o-mini`) and gets the same canned completion from the upstream:
//! - `openai_direct`: straight to the upstream, no proxy: what a client sees without one;
//! - `openai_no_filter`: through Envoy without a Wasm filter (the baseline Bridle's added
//!   latency is taken against);
//! - `bridle_openai_uncosted`: through Bridle under a policy that allows the endpoint with no
//!   cost rule: token, allowlist, vendor key swapped in, audit record;
//! - `bridle_openai_costed`: the same endpoint priced with a `max` estimate under a windowed
//!   cap: the body is read, the estimate reserved with the ledger (durable) before the call is
//!   forwarded, and committed in a batch after it;
//! - `bridle_openai_costed_leased` (`lease.rs`): the same under the same policy with a spend
//!   lease: one reservation for up to 64 calls, the others forwarded without a callout;
//! - `litellm_proxy`: LiteLLM's proxy with its master key (see `litellm.rs`).
//!
//! The peer table puts their throughput, latency and the proxy's own CPU per request side by
//! side, with latency added over the upstream alone (the whole proxy hop, for either product)
//! and over Envoy without a filter.

use bridle_core::policy::{CompiledPolicy, Policy};
use bridle_core::vendor::Vendor;
use bridle_e2e::envoy::Envoy;
use bridle_e2e::keys::Keys;
use serde_json::{json, Value};

use crate::litellm::{LiteLlm, MASTER_KEY, MODEL};
use crate::{cell, median_f, median_i, round3, table_row, Load, Scenario, ScenarioResult, Wrk};

pub const DIRECT: &str = "openai_direct";
pub const NO_FILTER: &str = "openai_no_filter";
pub const UNCOSTED: &str = "bridle_openai_uncosted";
pub const COSTED: &str = "bridle_openai_costed";
pub const LITELLM: &str = "litellm_proxy";

pub(crate) const COSTED_POLICY: &str = "bench-openai";
const UNCOSTED_POLICY: &str = "bench-openai-free";

/// The estimate reserved per call: the shipped `openai-chat` policy's.
const ESTIMATE_USD: &str = "0.05";

/// The request every row sends.
pub fn body() -> String {
    json!({
        "model": MODEL,
        "messages": [
            { "role": "system", "content": "You are a helpful assistant. Answer in one sentence." },
            { "role": "user", "content": "Say hello to the benchmark." },
        ],
        "max_tokens": 32,
    })
    .to_string()
}

/// Two OpenAI policies for the Bridle under test: the chat endpoint priced, and free.
pub fn policies() -> Vec<CompiledPolicy> {
    let p = |v: Value| -> CompiledPolicy {
        serde_json::from_value::<Policy>(v)
            .expect("an OpenAI bench policy")
            .compile()
            .expect("an OpenAI bench policy compiles")
    };
    vec![
        // A cap is checked on every reservation; this one is high enough that no run
        // reaches it.
        p(
            json!({ "name": COSTED_POLICY, "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "4h",
                  "endpoints": [{ "method": "POST", "path": "/v1/chat/completions", "cost": { "max": ESTIMATE_USD } }],
                  "caps": { "per_window": "1000000", "window": "24h" } }),
        ),
        p(
            json!({ "name": UNCOSTED_POLICY, "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "4h",
                  "endpoints": [{ "method": "POST", "path": "/v1/chat/completions" }] }),
        ),
    ]
}

fn load(bearer: &str) -> Load {
    Load {
        method: "POST",
        path: "/v1/chat/completions",
        body: body(),
        headers: vec![
            format!("Authorization: Bearer {bearer}"),
            "Content-Type: application/json".into(),
        ],
    }
}

/// The OpenAI rows: the upstream alone, Envoy without a filter, Bridle uncosted and costed,
/// and LiteLLM.
pub fn scenarios(
    keys: &Keys,
    upstream: u16,
    no_filter: &Envoy,
    bridle: &Envoy,
    litellm: Option<&LiteLlm>,
) -> Vec<Scenario> {
    let token = |policy: &str| {
        crate::token_for(
            keys,
            policy,
            format!("tok_bench_{}", policy.replace('-', "_")),
            Vendor::Openai,
        )
    };
    let bridle_port = bridle.port(Vendor::Openai);
    let mut rows = vec![
        Scenario {
            name: DIRECT,
            description: "OpenAI request straight to the upstream, no proxy",
            port: upstream,
            proxy_pid: None,
            baseline: NO_FILTER,
            load: load("sk-bench-direct"),
        },
        Scenario {
            name: NO_FILTER,
            description: "OpenAI request through Envoy, no Wasm filter",
            port: no_filter.listener_port("baseline"),
            proxy_pid: Some(no_filter.pid()),
            baseline: NO_FILTER,
            load: load("sk-bench-direct"),
        },
        Scenario {
            name: UNCOSTED,
            description: "Bridle, OpenAI chat completion allowed, uncosted (token, allowlist, key swap, audit)",
            port: bridle_port,
            proxy_pid: Some(bridle.pid()),
            baseline: NO_FILTER,
            load: load(&token(UNCOSTED_POLICY)),
        },
        Scenario {
            name: COSTED,
            description: "Bridle, OpenAI chat completion costed: max $0.05 reserved durably before forwarding, windowed cap, batched commit",
            port: bridle_port,
            proxy_pid: Some(bridle.pid()),
            baseline: NO_FILTER,
            load: load(&token(COSTED_POLICY)),
        },
    ];
    if let Some(l) = litellm {
        rows.push(Scenario {
            name: LITELLM,
            description: "LiteLLM proxy, no database: master key, model routing, provider key swap, cost from usage",
            port: l.port,
            proxy_pid: Some(l.pid()),
            baseline: NO_FILTER,
            load: load(MASTER_KEY),
        });
    }
    rows
}

/// Per round `f(x, y)` of two scenarios' rounds, then the median.
fn within_rounds<T>(a: &[T], b: &[T], f: impl Fn(&T, &T) -> f64) -> f64 {
    median_f(a.iter().zip(b).map(|(x, y)| f(x, y)).collect())
}

fn added(r: &ScenarioResult, base: Option<&ScenarioResult>, pick: fn(&Wrk) -> u64) -> Value {
    match base {
        Some(b) => json!(median_i(
            r.latency_rounds
                .iter()
                .zip(&b.latency_rounds)
                .map(|(x, y)| pick(x) as i64 - pick(y) as i64)
                .collect()
        )),
        None => Value::Null,
    }
}

/// The peer table: each OpenAI row against LiteLLM, the upstream alone and Envoy.
pub fn summarize(proxy: &[ScenarioResult]) -> Value {
    let get = |s: &str| proxy.iter().find(|r| r.scenario == s);
    let (direct, envoy, litellm) = (get(DIRECT), get(NO_FILTER), get(LITELLM));
    let mut rows = Vec::new();
    for name in [
        DIRECT,
        NO_FILTER,
        UNCOSTED,
        COSTED,
        crate::lease::OPENAI_COSTED,
        LITELLM,
    ] {
        let Some(r) = get(name) else { continue };
        // The upstream alone is no proxy: its ratio to one would say nothing.
        let vs_litellm = litellm.filter(|_| name != DIRECT).map(|l| {
            round3(within_rounds(
                &r.throughput_rounds,
                &l.throughput_rounds,
                |x, y| x.rps / y.rps.max(f64::MIN_POSITIVE),
            ))
        });
        rows.push(json!({
                "path": name,
                "rps": r.rps.round() as u64,
                "throughput_vs_litellm": vs_litellm,
                "proxy_cpu_us_per_request": r.proxy_cpu_us_per_request.map(|c| (c * 10.0).round() / 10.0),
                "p50_us": r.p50_us,
                "p99_us": r.p99_us,
                "p50_added_us_vs_upstream_alone": added(r, direct, |w| w.p50_us),
                "p99_added_us_vs_upstream_alone": added(r, direct, |w| w.p99_us),
                "p50_added_us_vs_envoy_no_filter": added(r, envoy, |w| w.p50_us),
                "p99_added_us_vs_envoy_no_filter": added(r, envoy, |w| w.p99_us),
        }));
    }
    Value::Array(rows)
}

pub fn markdown(peer: &Value, litellm: &Value) -> String {
    let Some(rows) = peer.as_array().filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let mut s = String::from(
        "\n### The OpenAI path, side by side with LiteLLM\n\nSame request (`POST /v1/chat/completions`, gpt-4o-mini), same upstream, same one core for the proxy. Added latency: over the upstream alone (the whole proxy hop) and over Envoy without a filter; medians of within-round differences.\n\n",
    );
    if let Some(v) = litellm["version"].as_str() {
        s.push_str(&format!(
            "LiteLLM {v}, one worker, no database: its sanity request was priced at ${} from the upstream's usage block; a wrong key got {}, an unrouted model {}.\n\n",
            litellm["response_cost_usd"], litellm["wrong_key_status"], litellm["unknown_model_status"]
        ));
    }
    s.push_str("| path | req/s (32 conn) | vs LiteLLM | proxy CPU µs/req | p50 µs | p99 µs | p50 added over upstream µs | p99 added over upstream µs | p50 added over Envoy µs | p99 added over Envoy µs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let cells: Vec<String> = [
            "path",
            "rps",
            "throughput_vs_litellm",
            "proxy_cpu_us_per_request",
            "p50_us",
            "p99_us",
            "p50_added_us_vs_upstream_alone",
            "p99_added_us_vs_upstream_alone",
            "p50_added_us_vs_envoy_no_filter",
            "p99_added_us_vs_envoy_no_filter",
        ]
        .iter()
        .map(|k| cell(&r[*k]))
        .collect();
        s.push_str(&table_row(&cells));
    }
    s
}
