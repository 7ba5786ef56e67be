//! `bridle-bench entry [rounds]`: what the filter pays before it does any work, callback by
//! callback, in enough rounds to tell a few microseconds from the host's noise.
//!
//! The steps, each an Envoy of its own serving the same uncosted call at saturation:
//! - `noop_wasm`: the no-op module (every callback returns `Continue`; its request context
//!   is a zero-sized value);
//! - `ablate_module`: Bridle's module, configured as in production (plugin, tick, revocation
//!   polls), each request given an empty context like the no-op's: the module's size and
//!   memory, its root context;
//! - `ablate_0_enter`: Bridle's stream context created, every callback entered and returning
//!   at once (request headers, response headers, log);
//! - `ablate_1_headers` … `ablate_3_rewrite`, then `bridle_allowed`: the work itself.
//!
//! Each step's Envoy CPU per request minus the previous step's, within each round, median
//! over rounds, with the spread: a step whose spread straddles zero costs nothing measurable.

use crate::{median_f, ScenarioResult};

/// In order: each row is compared with the one before.
const STEPS: [&str; 7] = [
    "noop_wasm",
    "ablate_module",
    "ablate_0_enter",
    "ablate_1_headers",
    "ablate_2_decide",
    "ablate_3_rewrite",
    "bridle_allowed",
];

pub fn measured(scenario: &str) -> bool {
    scenario == "no_filter" || STEPS.contains(&scenario)
}

/// The table of steps: Envoy CPU per request, and what each adds over the one before.
pub fn markdown(proxy: &[ScenarioResult]) -> String {
    let get = |s: &str| proxy.iter().find(|r| r.scenario == s);
    let mut s = String::from(
        "| step | Envoy CPU µs/req (median) | added over the step before: median | min | max | req/s (median) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut previous: Option<&ScenarioResult> = None;
    for name in STEPS {
        let Some(r) = get(name) else { continue };
        let (med, min, max) = match previous {
            Some(p) => {
                let d: Vec<f64> = r
                    .proxy_cpu_rounds
                    .iter()
                    .zip(&p.proxy_cpu_rounds)
                    .map(|(a, b)| a - b)
                    .collect();
                let min = d.iter().copied().fold(f64::INFINITY, f64::min);
                let max = d.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (
                    format!("{:+.1}", median_f(d)),
                    format!("{min:+.1}"),
                    format!("{max:+.1}"),
                )
            }
            None => ("".into(), "".into(), "".into()),
        };
        s.push_str(&format!(
            "| {name} | {:.1} | {med} | {min} | {max} | {:.0} |\n",
            median_f(r.proxy_cpu_rounds.clone()),
            r.rps
        ));
        previous = Some(r);
    }
    let rounds = get("noop_wasm").map_or(0, |r| r.proxy_cpu_rounds.len());
    s.push_str(&format!(
        "\n{rounds} interleaved rounds; 32 connections; one Envoy worker per step, pinned to core 0. Differences are taken within each round.\n"
    ));
    s
}
