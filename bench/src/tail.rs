//! The tail: the one-connection latency of the ledger-backed scenarios with the ledger
//! sharing a core with the load, and with the ledger on a core of its own.
//!
//! The machine has two cores, so the layouts are:
//! - **shared** (every other measurement): Envoy alone on core 0; wrk, the upstream and the
//!   proxy's ledger on core 1. The ledger's ingestion (inserts, fsync) preempts the load
//!   generator and the upstream.
//! - **isolated**: the ledger alone on core 1; Envoy, wrk and the upstream on core 0. With one
//!   connection there is one request in flight, so these three take turns on core 0 rather
//!   than compete, and nothing the ledger does can delay them.
//!
//! Each round measures both, back to back, with their own baselines (Envoy without a filter
//! in the same layout). An added p99 that falls in the isolated layout was the machine; one
//! that stays is in the design (the filter's flush, the callout, the ledger's answer time).

use serde_json::{json, Value};

use crate::{cell, median_i, table_row, ScenarioResult, Wrk};

/// The scenarios measured in both layouts: the baselines and everything that talks to the
/// ledger (the leased rows too: a lease still reserves, once per lease), plus the build
/// without the audit report (`ablate_3_rewrite`).
pub const SCENARIOS: [&str; 10] = [
    "no_filter",
    "bridle_allowed",
    "bridle_denied",
    "bridle_costed",
    crate::lease::COSTED,
    crate::ledger_protocol::NAME,
    "ablate_3_rewrite",
    crate::openai_scenarios::NO_FILTER,
    crate::openai_scenarios::COSTED,
    crate::lease::OPENAI_COSTED,
];

pub fn measured(scenario: &str) -> bool {
    SCENARIOS.contains(&scenario)
}

/// Moves this process (wrk, which it starts, and the upstream, a thread of it) to core 0
/// beside Envoy, leaving core 1 to the ledger; or back to core 1.
pub fn isolate_ledger(on: bool) {
    crate::pin_to(std::process::id(), if on { 0 } else { 1 });
}

/// Medians over rounds of one layout, and the latency added over the baseline's rounds in
/// the same layout (null without a baseline measured in every round).
fn layout(rounds: &[Wrk], base_rounds: Option<&[Wrk]>) -> Value {
    let med = |f: fn(&Wrk) -> u64| median_i(rounds.iter().map(|w| f(w) as i64).collect());
    let added = |f: fn(&Wrk) -> u64| match base_rounds {
        Some(b) if b.len() == rounds.len() => json!(median_i(
            rounds
                .iter()
                .zip(b)
                .map(|(x, y)| f(x) as i64 - f(y) as i64)
                .collect()
        )),
        _ => Value::Null,
    };
    json!({
        "p50_us": med(|w| w.p50_us),
        "p99_us": med(|w| w.p99_us),
        "p999_us": med(|w| w.p999_us),
        "p50_added_us": added(|w| w.p50_us),
        "p99_added_us": added(|w| w.p99_us),
    })
}

/// Both layouts for each scenario measured in both, with latency added over the baseline
/// measured in the same layout and round.
pub fn summarize(proxy: &[ScenarioResult]) -> Value {
    let get = |s: &str| proxy.iter().find(|r| r.scenario == s);
    let rows: Vec<Value> = proxy
        .iter()
        .filter(|r| !r.isolated_latency_rounds.is_empty())
        .map(|r| {
            let base = get(&r.baseline);
            json!({
                "scenario": r.scenario,
                "baseline": r.baseline,
                "shared": layout(&r.latency_rounds, base.map(|b| b.latency_rounds.as_slice())),
                "isolated": layout(&r.isolated_latency_rounds, base.map(|b| b.isolated_latency_rounds.as_slice())),
            })
        })
        .collect();
    Value::Array(rows)
}

pub fn markdown(tail: &Value) -> String {
    let Some(rows) = tail.as_array().filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let mut s = String::from(
        "\n### The tail: the ledger sharing the load's core, or on its own\n\nOne connection. Shared: Envoy on core 0; wrk, upstream and ledger on core 1 (the layout of every other row). Isolated: the ledger alone on core 1; Envoy, wrk and upstream on core 0. Added: over Envoy without a filter in the same layout and round, median over rounds.\n\n| scenario | shared p50 µs | shared p99 µs | shared p99.9 µs | shared p99 added µs | isolated p50 µs | isolated p99 µs | isolated p99.9 µs | isolated p99 added µs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let mut cells = vec![cell(&r["scenario"])];
        for layout in ["shared", "isolated"] {
            for k in ["p50_us", "p99_us", "p999_us", "p99_added_us"] {
                cells.push(cell(&r[layout][k]));
            }
        }
        s.push_str(&table_row(&cells));
    }
    s
}
