//! Spend leases, measured beside the costed calls they change.
//!
//! A policy with `lease` lets a worker reserve up to `calls` calls of a fixed-price call in
//! one durable reservation and forward the token's next calls from it with no ledger
//! callout (`core/src/lease.rs`). `bridle_costed_leased` and `bridle_openai_costed_leased`
//! send the very request of `bridle_costed` and `bridle_openai_costed`, through the same Envoy
//! and the same ledger, with a token of a policy identical to theirs but for the lease: same
//! endpoints, same cost rule, same caps. They run in the same interleaved rounds, so within
//! each round the ratio of a leased row to its row is what the lease changes.
//!
//! Whether a call spends from a lease is the filter's decision (a fixed price, no
//! Idempotency-Key, a fresh revocation set, a lease with room left), so a leased row could
//! quietly measure per-call reservations instead. Every measured run of one therefore reads
//! Envoy's `bridle.ledger.lease_spends` before and after, and reports the share of its
//! requests spent from a lease; a run with none stops the bench.

use std::collections::BTreeMap;

use bridle_core::policy::{CompiledPolicy, Lease};
use bridle_core::vendor::Vendor;
use bridle_e2e::keys::Keys;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{cell, median_f, median_i, round3, table_row, Scenario, ScenarioResult, Wrk};

/// The lease every leased row's policy carries.
///
/// - `calls: 64`, the ceiling: the worker's tick (every 20 ms) asks for a token's next lease
///   once its live one has served a second call, and that lease must still have calls left
///   when the answer arrives, about a tick and a callout later. One connection here makes
///   about 2,000 calls a second: 32 calls last 16 ms, less than a tick, and 1.1% of calls
///   still waited for a reservation (p99 1.6 ms); 64 last 32 ms. What a worker holds at a
///   time: two leases of 64 × $1.00 on the Stripe call, 64 × $0.05 on the OpenAI one.
/// - `max_age_ms: 250`, the default a policy gets when it gives none, a quarter of the 1 s
///   ceiling (both policies have 24 h windows, so the tenth-of-the-shortest-window bound
///   allows the ceiling). At these rates 64 calls are spent well within it, so the call
///   count closes leases, not their age.
pub const LEASE: Lease = Lease {
    calls: 64,
    max_age_ms: 250,
};

pub const COSTED: &str = "bridle_costed_leased";
pub const OPENAI_COSTED: &str = "bridle_openai_costed_leased";

/// The Envoy counter of costed calls forwarded on a lease, without a reservation callout.
const COUNTER: &str = "bridle.ledger.lease_spends";

/// One leased row, beside the row it leases.
struct Pair {
    leased: &'static str,
    unleased: &'static str,
    /// The unleased row's policy, of which the leased one is a copy with [`LEASE`].
    policy: &'static str,
    vendor: Vendor,
    description: &'static str,
}

const PAIRS: [Pair; 2] = [
    Pair {
        leased: COSTED,
        unleased: "bridle_costed",
        policy: "bench",
        vendor: Vendor::Stripe,
        description: "Bridle: costed as bridle_costed, under the same policy with a lease of 64 calls (one reservation callout per lease)",
    },
    Pair {
        leased: OPENAI_COSTED,
        unleased: crate::openai_scenarios::COSTED,
        policy: crate::openai_scenarios::COSTED_POLICY,
        vendor: Vendor::Openai,
        description: "Bridle, OpenAI chat completion costed as bridle_openai_costed, under the same policy and cap with a lease of 64 calls",
    },
];

/// The leased rows.
const ROWS: [&str; 2] = [COSTED, OPENAI_COSTED];

/// The name of a policy's leased copy.
fn leased_name(policy: &str) -> String {
    format!("{policy}-leased")
}

/// `base` under the name `<base>-leased`, carrying [`LEASE`]; nothing else differs.
pub fn leased_policy(base: &CompiledPolicy) -> CompiledPolicy {
    let mut p = base.policy.clone();
    p.name = leased_name(&p.name);
    p.lease = Some(LEASE);
    p.compile().unwrap_or_else(|e| {
        panic!(
            "the leased copy of {} does not compile: {e:?}",
            base.policy.name
        )
    })
}

/// The leased copies of the policies the leased rows' own rows run under.
pub fn policies(policies: &[CompiledPolicy]) -> Vec<CompiledPolicy> {
    PAIRS
        .iter()
        .map(|pair| {
            let base = policies
                .iter()
                .find(|p| p.policy.name == pair.policy)
                .unwrap_or_else(|| panic!("no policy {} to lease", pair.policy));
            assert!(
                base.policy.lease.is_none(),
                "{} already leases: its row would not be the unleased one",
                pair.policy
            );
            leased_policy(base)
        })
        .collect()
}

/// Inserts each leased row just after its row: the same request, the same Envoy, with a
/// token of the leased policy in place of the row's own.
pub fn add_scenarios(keys: &Keys, scenarios: &mut Vec<Scenario>) {
    for pair in &PAIRS {
        let at = scenarios
            .iter()
            .position(|s| s.name == pair.unleased)
            .unwrap_or_else(|| panic!("no row {} to lease", pair.unleased));
        let row = &scenarios[at];
        let policy = leased_name(pair.policy);
        let bearer = format!(
            "Authorization: Bearer {}",
            crate::token_for(
                keys,
                &policy,
                format!("tok_bench_{}", policy.replace('-', "_")),
                pair.vendor
            )
        );
        let mut load = row.load.clone();
        let auth = load
            .headers
            .iter_mut()
            .find(|h| h.starts_with("Authorization: Bearer "))
            .unwrap_or_else(|| panic!("{} sends no token", pair.unleased));
        *auth = bearer;
        let leased = Scenario {
            name: pair.leased,
            description: pair.description,
            port: row.port,
            proxy_pid: row.proxy_pid,
            baseline: row.baseline,
            load,
        };
        scenarios.insert(at + 1, leased);
    }
}

/// A leased row's lease counter before one of its runs; none for the other rows.
pub async fn before(scenario: &str, admin: u16) -> Option<u64> {
    if ROWS.contains(&scenario) {
        Some(spends(admin).await)
    } else {
        None
    }
}

/// Envoy's lease counter, summed over the plugins that define it.
pub async fn spends(admin: u16) -> u64 {
    let page = bridle_e2e::client::Request::new("GET", "/stats?format=json&filter=lease_spends")
        .send(admin)
        .await
        .json();
    page["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.ends_with(COUNTER)))
        .filter_map(|s| s["value"].as_u64())
        .sum()
}

/// How many of one run's requests were spent from a lease.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseUse {
    pub run: String,
    /// wrk's connections: at 32, calls that find the token's lease used up while its next
    /// one is being asked for ask for a lease too, so fewer spend from one than at 1.
    pub connections: u32,
    pub requests: u64,
    pub lease_spends: u64,
}

impl LeaseUse {
    /// Counted at forwarding, against wrk's completed requests: a run's last calls in flight
    /// may push it a little over 1.
    pub fn share(&self) -> f64 {
        self.lease_spends as f64 / self.requests.max(1) as f64
    }
}

/// Records one run of a leased row, given the counter read before it; stops the bench if no
/// request of the run was spent from a lease.
pub async fn record(
    scenario: &str,
    run: String,
    connections: u32,
    admin: u16,
    before: u64,
    w: &Wrk,
) -> LeaseUse {
    let used = LeaseUse {
        run,
        connections,
        requests: w.requests,
        lease_spends: spends(admin).await.saturating_sub(before),
    };
    eprintln!(
        "bench: {scenario} {}: {} of {} requests spent from a lease ({:.1}%)",
        used.run,
        used.lease_spends,
        used.requests,
        100.0 * used.share()
    );
    assert!(
        used.lease_spends > 0,
        "{scenario}: no request of {} was spent from a lease (Envoy's {COUNTER} did not move): \
         the row measured a reservation per call, not the lease",
        used.run
    );
    used
}

/// Each leased row against its row, within each round, median over rounds.
pub fn summary(proxy: &[ScenarioResult]) -> Value {
    let get = |s: &str| proxy.iter().find(|r| r.scenario == s);
    let ratio = |a: Vec<f64>, b: Vec<f64>| {
        round3(median_f(
            a.iter()
                .zip(&b)
                .filter(|(_, b)| **b > 0.0)
                .map(|(a, b)| a / b)
                .collect(),
        ))
    };
    let rps = |r: &ScenarioResult| r.throughput_rounds.iter().map(|w| w.rps).collect();
    let med = |rounds: &[Wrk], f: fn(&Wrk) -> u64| {
        (!rounds.is_empty()).then(|| median_i(rounds.iter().map(|w| f(w) as i64).collect()))
    };
    let rows: Vec<Value> = PAIRS
        .iter()
        .filter_map(|pair| {
            let (l, u) = (get(pair.leased)?, get(pair.unleased)?);
            // Over the runs at `connections`: every run's requests together, and the lowest
            // run's share.
            let share = |connections: u32| {
                let runs = || l.lease_use.iter().filter(move |x| x.connections == connections);
                let requests: u64 = runs().map(|x| x.requests).sum();
                let spent: u64 = runs().map(|x| x.lease_spends).sum();
                json!({
                    "all_runs": (requests > 0).then(|| round3(spent as f64 / requests as f64)),
                    "lowest_run": runs().map(LeaseUse::share).reduce(f64::min).map(round3),
                })
            };
            let both = |rounds: fn(&ScenarioResult) -> &[Wrk], f: fn(&Wrk) -> u64| {
                json!({ "leased": med(rounds(l), f), "unleased": med(rounds(u), f) })
            };
            Some(json!({
                "scenario": pair.leased,
                "against": pair.unleased,
                "throughput_leased_vs_unleased": ratio(rps(l), rps(u)),
                "envoy_cpu_per_request_leased_vs_unleased": ratio(l.proxy_cpu_rounds.clone(), u.proxy_cpu_rounds.clone()),
                "p50_us": both(|r| &r.latency_rounds, |w| w.p50_us),
                "p99_us": both(|r| &r.latency_rounds, |w| w.p99_us),
                "p999_us": both(|r| &r.latency_rounds, |w| w.p999_us),
                "isolated_p99_us": both(|r| &r.isolated_latency_rounds, |w| w.p99_us),
                "share_from_lease_32_connections": share(32),
                "share_from_lease_1_connection": share(1),
            }))
        })
        .collect();
    Value::Array(rows)
}

pub fn markdown(summary: &Value) -> String {
    let Some(rows) = summary.as_array().filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let mut s = format!(
        "\n### Spend leases\n\nEach leased row against its own row (same request, same Envoy and ledger, the policy with `lease: {{ calls: {}, max_age_ms: {} }}`), within each round, median over rounds. Latency at one connection, leased / unleased; isolated: the ledger on its own core. From a lease: Envoy's `{COUNTER}` over wrk's requests, the runs at that many connections together (the lowest run in brackets).\n\n| leased row | against | req/s × | Envoy CPU/req × | p50 µs | p99 µs | p99.9 µs | isolated p99 µs | from a lease, 32 conn | from a lease, 1 conn |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        LEASE.calls, LEASE.max_age_ms
    );
    for r in rows {
        let pair = |k: &str| format!("{} / {}", cell(&r[k]["leased"]), cell(&r[k]["unleased"]));
        let share = |k: &str| {
            format!(
                "{} ({})",
                cell(&r[k]["all_runs"]),
                cell(&r[k]["lowest_run"])
            )
        };
        s.push_str(&table_row(&[
            cell(&r["scenario"]),
            cell(&r["against"]),
            cell(&r["throughput_leased_vs_unleased"]),
            cell(&r["envoy_cpu_per_request_leased_vs_unleased"]),
            pair("p50_us"),
            pair("p99_us"),
            pair("p999_us"),
            pair("isolated_p99_us"),
            share("share_from_lease_32_connections"),
            share("share_from_lease_1_connection"),
        ]));
    }
    s
}

/// Leased rows' runs, by row, as recorded.
pub type Uses = BTreeMap<&'static str, Vec<LeaseUse>>;
