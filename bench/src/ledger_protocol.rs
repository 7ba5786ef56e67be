//! The costed path's callout over HTTP/1.1 and over HTTP/2, side by side.
//!
//! A costed call reserves with the ledger before it is forwarded: one HTTP callout from the
//! Envoy worker per request. Bridle renders the ledger cluster as HTTP/1.1 by default, where
//! Envoy keeps a pool of connections and each callout in flight holds one (`bridle_costed`);
//! `bridle_costed_http2` is the same filter, policy and ledger behind an Envoy rendered with
//! `--ledger-protocol http2`, where a worker's reservations share one multiplexed h2c
//! connection. Within each round, the ratio of the two is what the protocol changes:
//! requests per second, Envoy's CPU per request, and the one-connection latency.
//!
//! The run recorded at 72be704 measured the other way round (HTTP/2 was the default then,
//! and the variant was `bridle_costed_http1`); HTTP/2 lost, so the default changed.

use serde_json::{json, Value};

use crate::{median_f, median_i, round3, Load, Scenario, ScenarioResult};

pub const NAME: &str = "bridle_costed_http2";
const HTTP1: &str = "bridle_costed";

/// The costed scenario against an Envoy whose ledger cluster speaks HTTP/2.
pub fn scenario(port: u16, envoy_pid: u32, load: Load) -> Scenario {
    Scenario {
        name: NAME,
        description: "Bridle: costed, as bridle_costed, with the ledger callout over HTTP/2 (h2c)",
        port,
        proxy_pid: Some(envoy_pid),
        baseline: "no_filter",
        load,
    }
}

/// HTTP/2 over HTTP/1.1, within each round, median over rounds.
pub fn summary(proxy: &[ScenarioResult]) -> Value {
    let get = |s: &str| proxy.iter().find(|r| r.scenario == s);
    let (Some(h2), Some(h1)) = (get(NAME), get(HTTP1)) else {
        return Value::Null;
    };
    let ratio = |a: &[f64], b: &[f64]| {
        round3(median_f(
            a.iter()
                .zip(b)
                .filter(|(_, b)| **b > 0.0)
                .map(|(a, b)| a / b)
                .collect(),
        ))
    };
    let rps = |r: &ScenarioResult| {
        r.throughput_rounds
            .iter()
            .map(|w| w.rps)
            .collect::<Vec<_>>()
    };
    let latency = |r: &ScenarioResult, f: fn(&crate::Wrk) -> u64| {
        median_i(r.latency_rounds.iter().map(|w| f(w) as i64).collect())
    };
    json!({
        "throughput_http2_vs_http1": ratio(&rps(h2), &rps(h1)),
        "envoy_cpu_per_request_http2_vs_http1": ratio(&h2.proxy_cpu_rounds, &h1.proxy_cpu_rounds),
        "p50_us": { "http2": latency(h2, |w| w.p50_us), "http1": latency(h1, |w| w.p50_us) },
        "p99_us": { "http2": latency(h2, |w| w.p99_us), "http1": latency(h1, |w| w.p99_us) },
    })
}

pub fn markdown(summary: &Value) -> String {
    if summary.is_null() {
        return String::new();
    }
    format!(
        "\n### The ledger callout: HTTP/2 against HTTP/1.1\n\n`{NAME}` (`--ledger-protocol http2`) against `{HTTP1}` (HTTP/1.1, as rendered by default), within each round, median over rounds: throughput {}×, Envoy CPU per request {}×; one connection p50 {} µs against {} µs, p99 {} µs against {} µs.\n",
        summary["throughput_http2_vs_http1"],
        summary["envoy_cpu_per_request_http2_vs_http1"],
        summary["p50_us"]["http2"],
        summary["p50_us"]["http1"],
        summary["p99_us"]["http2"],
        summary["p99_us"]["http1"],
    )
}
