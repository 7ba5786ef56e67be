//! The verified-token cache, defeated: what a signature check costs in the filter.
//!
//! `bridle_allowed` repeats one token, so after the first request its Ed25519 signature and
//! claims come from the filter's per-worker cache. `bridle_allowed_uncached` sends the same
//! call with a different token each time, cycling through more tokens than the cache holds
//! (a full cache is emptied), so that every request verifies a signature, decodes and
//! checks the claims, and fills the cache again. The difference in Envoy's CPU time per
//! request, within each round, is what one verification costs, and what the cache saves.

use serde_json::{json, Value};

use crate::{median_f, round3, token, Keys, Load, Scenario, ScenarioResult};

pub const NAME: &str = "bridle_allowed_uncached";
const CACHED: &str = "bridle_allowed";
/// Four times the filter's cache capacity (`TOKEN_CACHE_CAPACITY`, 1024 per worker): a
/// token comes round again only after the cache has been emptied several times.
const TOKENS: usize = 4096;

/// The uncached scenario against Bridle's listener at `port`, served by `envoy_pid`.
pub fn scenario(keys: &Keys, port: u16, envoy_pid: u32) -> Scenario {
    Scenario {
        name: NAME,
        description:
            "Bridle: allowed, uncosted, a new token each request (Ed25519 verified every time)",
        port,
        proxy_pid: Some(envoy_pid),
        baseline: "no_filter",
        load: load(keys),
    }
}

/// The allowed, uncosted call, with wrk cycling through `TOKENS` freshly minted tokens
/// (written to a file it reads one per line).
pub fn load(keys: &Keys) -> Load {
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| token(keys, "bench", format!("tok_churn_{i:05}")))
        .collect();
    let file = bridle_e2e::repo_root().join("target/bench/tokens-uncached.txt");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, tokens.join("\n") + "\n").unwrap();
    Load {
        method: "GET",
        path: "/v1/charges/ch_1",
        body: String::new(),
        headers: vec![format!(
            "Authorization: Bearer @each-line-of:{}",
            file.display()
        )],
    }
}

/// Envoy CPU per request, uncached minus cached, within each round (median), and the
/// throughput the cache keeps.
pub fn summary(proxy: &[ScenarioResult]) -> Value {
    let get = |s: &str| proxy.iter().find(|r| r.scenario == s);
    let (Some(uncached), Some(cached)) = (get(NAME), get(CACHED)) else {
        return Value::Null;
    };
    let within_rounds = |f: fn(f64, f64) -> f64, u: &[f64], c: &[f64]| {
        median_f(u.iter().zip(c).map(|(u, c)| f(*u, *c)).collect())
    };
    let cpu = within_rounds(
        |u, c| u - c,
        &uncached.proxy_cpu_rounds,
        &cached.proxy_cpu_rounds,
    );
    let rps = |r: &ScenarioResult| {
        r.throughput_rounds
            .iter()
            .map(|w| w.rps)
            .collect::<Vec<_>>()
    };
    let throughput = within_rounds(|u, c| u / c, &rps(uncached), &rps(cached));
    json!({
        "envoy_cpu_us_per_verification": round3(cpu),
        "uncached_throughput_vs_cached": round3(throughput),
    })
}

pub fn markdown(summary: &Value) -> String {
    if summary.is_null() {
        return String::new();
    }
    format!(
        "\n### Token verification: the cache, and without it\n\n`{NAME}` against `{CACHED}`, within each round, median over rounds: {} µs of Envoy CPU per Ed25519 verification and claims check; without the cache the uncosted call runs at {} of its cached throughput.\n",
        summary["envoy_cpu_us_per_verification"], summary["uncached_throughput_vs_cached"]
    )
}
