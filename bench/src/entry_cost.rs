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
//!
//! Beside the steps, `ablate_hostcalls`: a context that makes the hostcalls an allowed call
//! makes and does nothing else. Its throughput against the no-op filter's is the floor any
//! filter that swaps a credential stands on in this Envoy; the full filter's against it is
//! what Bridle's own work costs.

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

/// Makes the allowed call's hostcalls and nothing else (`src/ablation.rs`).
const HOSTCALLS: &str = "ablate_hostcalls";

pub fn measured(scenario: &str) -> bool {
    scenario == "no_filter" || scenario == HOSTCALLS || STEPS.contains(&scenario)
}

/// What `bridle-bench floor` measures: the no-op filter, the hostcalls alone, the full filter.
pub fn floor_measured(scenario: &str) -> bool {
    ["noop_wasm", HOSTCALLS, "bridle_allowed"].contains(&scenario)
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
                let (med, min, max) = spread(
                    r.proxy_cpu_rounds
                        .iter()
                        .zip(&p.proxy_cpu_rounds)
                        .map(|(a, b)| a - b)
                        .collect(),
                );
                (
                    format!("{med:+.1}"),
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
    s.push_str(&floor_markdown(proxy));
    s
}

/// The hostcalls alone and the full filter against the no-op filter and each other, within
/// each round.
pub fn floor_markdown(proxy: &[ScenarioResult]) -> String {
    let get = |s: &str| proxy.iter().find(|r| r.scenario == s);
    let mut s = String::new();
    if let (Some(noop), Some(floor), Some(full)) =
        (get("noop_wasm"), get(HOSTCALLS), get("bridle_allowed"))
    {
        let rounds = noop.throughput_rounds.len();
        s.push_str(&format!("\n{rounds} interleaved rounds, 32 connections.\n"));
        s.push_str(
            "\n| throughput, within each round | median | min | max |\n|---|---:|---:|---:|\n",
        );
        for (label, a, b) in [
            ("the hostcalls alone / no-op filter", floor, noop),
            ("full filter / no-op filter", full, noop),
            ("full filter / the hostcalls alone", full, floor),
        ] {
            let (med, min, max) = spread(rps_ratios(a, b));
            s.push_str(&format!("| {label} | {med:.3} | {min:.3} | {max:.3} |\n"));
        }
        let (med, min, max) = spread(
            floor
                .proxy_cpu_rounds
                .iter()
                .zip(&noop.proxy_cpu_rounds)
                .map(|(a, b)| a - b)
                .collect(),
        );
        s.push_str(&format!(
            "\nThe hostcalls alone add {med:+.1} µs of Envoy CPU per request over the no-op filter (min {min:+.1}, max {max:+.1}).\n"
        ));
    }
    s
}

/// `a`'s requests per second over `b`'s, round by round.
fn rps_ratios(a: &ScenarioResult, b: &ScenarioResult) -> Vec<f64> {
    a.throughput_rounds
        .iter()
        .zip(&b.throughput_rounds)
        .filter(|(_, b)| b.rps > 0.0)
        .map(|(a, b)| a.rps / b.rps)
        .collect()
}

/// Median, min and max.
fn spread(v: Vec<f64>) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median_f(v), min, max)
}
