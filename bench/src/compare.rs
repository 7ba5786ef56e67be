//! `bridle-bench compare <before.wasm> [rounds]`: the filter as built now beside another build
//! of it (say, the commit before a refactor), in one run, against one upstream and one ledger.
//!
//! A change to the request path should show no regression; two separate `make bench` runs on a
//! shared machine cannot show that, because the noise between runs is larger than the change.
//! Here both builds serve the same requests in interleaved rounds, and each ratio (now over
//! before) is taken within a round, so slow and fast moments of the machine cancel out.
//!
//! Both builds get the same environment and configuration, so `before` must read them as
//! today's filter does: a build from before Ed25519 tokens (commit 2f6a019) verified HMAC
//! tokens with `BRIDLE_KEYRING` and refuses today's configuration, so it cannot be compared.

use std::collections::BTreeMap;
use std::path::Path;

use bridle_core::vendor::Vendor;
use bridle_e2e::envoy::{Envoy, Setup};
use bridle_e2e::keys::Keys;
use bridle_e2e::ledger::Ledger;

use super::{bench_policies, median_f, pin_to, process_cpu_us, token, upstream, wrk, Load, Plan};

/// One measured load through one build.
struct Measured {
    rps: f64,
    cpu_us: f64,
    p50_us: u64,
    p99_us: u64,
}

/// Runs the comparison and returns it as Markdown.
pub async fn run(before: &Path, plan: Plan, keys: &Keys) -> String {
    assert!(before.exists(), "{} is missing", before.display());
    let upstream = upstream::spawn().port();
    let policies = bench_policies();
    let ledger = Ledger::start(&policies, keys).await;
    pin_to(ledger.pid().unwrap(), 1);
    let mut setup =
        Setup::new(policies, keys).upstream_all(&format!("http://127.0.0.1:{upstream}"));
    setup.ledger = Some(ledger.url());
    setup.concurrency = 1;
    let now = Envoy::start(&setup).await.unwrap();
    let mut old = setup.clone();
    old.wasm = Some(before.to_path_buf());
    let before_envoy = Envoy::start(&old).await.unwrap_or_else(|e| {
        panic!("the before build did not start ({e}): builds from before Ed25519 tokens (2f6a019) cannot read today's configuration and keys")
    });
    for e in [&now, &before_envoy] {
        pin_to(e.pid(), 0);
    }
    let auth = format!(
        "Authorization: Bearer {}",
        token(keys, "bench", "tok_bench_compare".into())
    );
    let loads = [
        (
            "uncosted",
            Load {
                method: "GET",
                path: "/v1/charges/ch_1",
                body: String::new(),
                headers: vec![auth.clone()],
            },
        ),
        (
            "costed",
            Load {
                method: "POST",
                path: "/v1/payment_intents",
                body: "amount=100&currency=usd".into(),
                headers: vec![
                    auth,
                    "Content-Type: application/x-www-form-urlencoded".into(),
                ],
            },
        ),
    ];
    let builds = [("now", &now), ("before", &before_envoy)];
    for (_, load) in &loads {
        for (_, envoy) in builds {
            wrk(envoy.port(Vendor::Stripe), 32, plan.warmup_s, load);
        }
    }
    let mut results: BTreeMap<(&str, &str), Vec<Measured>> = BTreeMap::new();
    for round in 1..=plan.rounds {
        for (path, load) in &loads {
            // Alternate which build goes first, so neither always follows the other.
            let order: Vec<_> = if round % 2 == 0 {
                builds.iter().rev().collect()
            } else {
                builds.iter().collect()
            };
            for (build, envoy) in order {
                let port = envoy.port(Vendor::Stripe);
                let cpu_before = process_cpu_us(envoy.pid());
                let t = wrk(port, 32, plan.throughput_s, load);
                let cpu_us =
                    (process_cpu_us(envoy.pid()) - cpu_before) as f64 / t.requests.max(1) as f64;
                let l = wrk(port, 1, plan.latency_s, load);
                assert!(
                    t.non_2xx == 0 && l.non_2xx == 0,
                    "{build} {path}: {} and {} non-2xx answers",
                    t.non_2xx,
                    l.non_2xx
                );
                eprintln!(
                    "compare: round {round} {build:<6} {path:<8} {:>7.0} req/s {cpu_us:>6.1} µs CPU p50 {:>5} µs p99 {:>6} µs",
                    t.rps, l.p50_us, l.p99_us
                );
                results.entry((path, build)).or_default().push(Measured {
                    rps: t.rps,
                    cpu_us,
                    p50_us: l.p50_us,
                    p99_us: l.p99_us,
                });
            }
        }
    }
    markdown(&results, plan.rounds)
}

fn markdown(results: &BTreeMap<(&str, &str), Vec<Measured>>, rounds: usize) -> String {
    let mut s = "| path | build | req/s (32 conn) | Envoy CPU µs/req | p50 µs | p99 µs | now / before, req/s | now / before, CPU |\n|---|---|---:|---:|---:|---:|---:|---:|\n".to_string();
    for path in ["uncosted", "costed"] {
        let (Some(now), Some(before)) =
            (results.get(&(path, "now")), results.get(&(path, "before")))
        else {
            continue;
        };
        let ratio = |f: fn(&Measured) -> f64| {
            median_f(
                now.iter()
                    .zip(before)
                    .map(|(n, b)| f(n) / f(b).max(f64::MIN_POSITIVE))
                    .collect(),
            )
        };
        let rps = ratio(|m| m.rps);
        let cpu = ratio(|m| m.cpu_us);
        for (build, runs) in [("now", now), ("before", before)] {
            let med = |f: fn(&Measured) -> f64| median_f(runs.iter().map(f).collect());
            let (r, c) = if build == "now" {
                (format!("{rps:.3}"), format!("{cpu:.3}"))
            } else {
                (String::new(), String::new())
            };
            s.push_str(&format!(
                "| {path} | {build} | {:.0} | {:.1} | {:.0} | {:.0} | {r} | {c} |\n",
                med(|m| m.rps),
                med(|m| m.cpu_us),
                med(|m| m.p50_us as f64),
                med(|m| m.p99_us as f64),
            ));
        }
    }
    s.push_str(&format!(
        "\n{rounds} interleaved rounds; medians; ratios taken within each round.\n"
    ));
    s
}
