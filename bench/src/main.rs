//! `make bench`: what Bridle costs in the request path, measured side by side in one run.
//!
//! Proxy scenarios, each against the same fast local upstream (a minimal hyper server):
//! 1. baselines: Envoy without a Wasm filter, and with a no-op proxy-wasm filter;
//! 2. an allowed, uncosted call through Bridle (token, allowlist, secret injection), with and
//!    without a loop breaker, and with a new token each request, so that every request
//!    verifies a signature (`token_churn.rs`);
//! 3. a call Bridle denies;
//! 4. a costed call (body priced, reserve with the ledger, settle in batches), with the
//!    ledger callout over HTTP/1.1 (as rendered) and over HTTP/2 (`ledger_protocol.rs`), and
//!    under the same policy with a spend lease, one reservation for several calls
//!    (`lease.rs`, for the costed OpenAI call too);
//! 5. the OpenAI path, uncosted and costed, side by side with a peer, LiteLLM's proxy, on the
//!    same OpenAI-shaped request and upstream (`openai_scenarios.rs`, `litellm.rs`);
//! 6. a streamed completion priced by tokens beside no filter: time to the first event and
//!    to the end of the stream (`streaming.rs`).
//!
//! Each scenario is measured for throughput at saturation (32 connections) and for latency
//! without queueing (one connection), so that added latency is the filter's, not a queue's.
//! The one-connection latency of the ledger-backed scenarios is also taken with the ledger on
//! a core of its own (`tail.rs`). Then the ledger alone: durable reserve+settle pairs per
//! second at several client concurrencies, and as the store grows, in enough interleaved
//! rounds that the growth's effect stands out from the host's noise (`flatness.rs`).
//!
//! The machines are shared and noisy, so every Envoy (and every ledger) is started first and
//! the scenarios are run in interleaved rounds: each ratio is taken within one round, and the
//! report gives the median over rounds.
//!
//! `bridle-bench compare <before.wasm>` measures the filter as built now beside another build
//! of it, in one run (`compare.rs`): a change to the request path shows its cost there.
//!
//! CPU: this process (and so wrk, the upstream and the proxy's ledger) is pinned to core 1,
//! every Envoy (one worker each) and LiteLLM (one worker) to core 0, so the proxy under test
//! is never contending with its load. For the ledger alone, the ledger (one HTTP thread plus
//! its writer) gets core 0 and the load client core 1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod compare;
mod entry_cost;
mod flatness;
mod lease;
mod ledger_load;
mod ledger_protocol;
mod ledger_replicas;
mod litellm;
mod openai_scenarios;
mod sse_upstream;
mod store_fill;
mod streaming;
mod tail;
mod tail_where;
mod token_churn;
mod upstream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use bridle_core::policy::{CompiledPolicy, Policy};
use bridle_core::token::Claims;
use bridle_core::vendor::Vendor;
use bridle_e2e::envoy::{envoy_binary, wasm_path, Envoy, Setup};
use bridle_e2e::keys::{now, Keys, ENFORCER_KEY};
use bridle_e2e::ledger::Ledger;
use bridle_e2e::repo_root;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Clone, Copy, Serialize)]
struct Plan {
    rounds: usize,
    warmup_s: u64,
    throughput_s: u64,
    latency_s: u64,
    ledger_s: u64,
    /// Rounds of the ledger-alone runs: more than the proxy's, as they are short and the store
    /// growth they measure is smaller than the host's noise.
    ledger_rounds: usize,
    /// Unmeasured load on a ledger just resumed, before each ledger run.
    ledger_warmup_ms: u64,
}

const FULL: Plan = Plan {
    rounds: 3,
    warmup_s: 2,
    throughput_s: 5,
    latency_s: 3,
    ledger_s: 2,
    ledger_rounds: 9,
    ledger_warmup_ms: 500,
};
const QUICK: Plan = Plan {
    rounds: 1,
    warmup_s: 1,
    throughput_s: 2,
    latency_s: 2,
    ledger_s: 1,
    ledger_rounds: 3,
    ledger_warmup_ms: 200,
};

#[derive(Clone, Debug, Serialize)]
struct Wrk {
    rps: f64,
    requests: u64,
    non_2xx: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

/// One fixed request for wrk to repeat.
#[derive(Clone)]
struct Load {
    method: &'static str,
    path: &'static str,
    body: String,
    headers: Vec<String>,
}

struct Scenario {
    name: &'static str,
    description: &'static str,
    port: u16,
    /// The proxy serving it (an Envoy, or LiteLLM), whose CPU time is read around each run;
    /// none for the upstream alone.
    proxy_pid: Option<u32>,
    /// The scenario its throughput ratio and added latency are taken against: Envoy without a
    /// filter, sending the same request.
    baseline: &'static str,
    load: Load,
}

#[derive(Clone, Debug, Serialize)]
struct ScenarioResult {
    scenario: String,
    description: String,
    baseline: String,
    /// Medians over rounds.
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    /// The proxy's CPU time per request during the throughput runs (median over rounds): its
    /// own cost, whatever else the shared machine is doing.
    proxy_cpu_us_per_request: Option<f64>,
    /// Every round, as measured.
    throughput_rounds: Vec<Wrk>,
    proxy_cpu_rounds: Vec<f64>,
    latency_rounds: Vec<Wrk>,
    /// One-connection rounds with the ledger on a core of its own (`tail.rs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    isolated_latency_rounds: Vec<Wrk>,
    /// For a leased row, how many requests of each measured run were spent from a lease
    /// (`lease.rs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lease_use: Vec<lease::LeaseUse>,
}

/// Online CPUs of the machine, not of this process's affinity mask (which pinning narrows).
fn cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

fn pin_to(pid: u32, cpu: usize) {
    if cpus() < 2 {
        return;
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output();
    if !status.is_ok_and(|s| s.status.success()) {
        eprintln!("bench: could not pin pid {pid} to cpu {cpu}");
    }
}

fn pin_self(cpu: usize) {
    if cpus() < 2 {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time a process has used, user and system, in microseconds.
fn process_cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / hz
}

/// Cumulative CPU time stolen by the hypervisor, and total, in ticks.
fn steal_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields.get(7).copied().unwrap_or(0), fields.iter().sum())
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median_i(mut v: Vec<i64>) -> i64 {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn wrk(port: u16, connections: u32, seconds: u64, load: &Load) -> Wrk {
    let script = repo_root().join("bench/wrk/request.lua");
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--", load.method, load.path, &load.body])
        .args(&load.headers)
        .output()
        .expect("wrk: run `make bench`, which installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no summary:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Value = serde_json::from_str(line).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Wrk {
        rps: n("requests") as f64 / (n("duration_us") as f64 / 1e6),
        requests: n("requests"),
        non_2xx: n("non_2xx"),
        errors: n("connect_errors") + n("read_errors") + n("write_errors") + n("timeouts"),
        p50_us: n("p50_us"),
        p99_us: n("p99_us"),
        p999_us: n("p999_us"),
    }
}

/// Envoy without Bridle: a listener, a router and the upstream; optionally a no-op filter.
fn baseline_config(upstream: u16, noop_wasm: Option<&Path>) -> String {
    let mut filters: Vec<Value> = Vec::new();
    if let Some(path) = noop_wasm {
        filters.push(json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "noop", "root_id": "noop", "failure_policy": "FAIL_CLOSED",
                    "vm_config": { "vm_id": "noop", "runtime": "envoy.wasm.runtime.v8", "code": { "local": { "filename": path.display().to_string() } } },
                },
            },
        }));
    }
    filters.push(json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "suppress_envoy_headers": true } }));
    // The same connection manager settings Bridle's rendered listeners use.
    let config = json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [{
                "name": "baseline",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "baseline",
                        "normalize_path": true, "merge_slashes": true, "path_with_escaped_slashes_action": "REJECT_REQUEST",
                        "common_http_protocol_options": { "headers_with_underscores_action": "REJECT_REQUEST" },
                        "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream", "timeout": "600s" } }] }] },
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": [{
                "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": "upstream", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": upstream } } } }] }] },
            }],
        },
    });
    // Envoy reads JSON as YAML.
    serde_json::to_string_pretty(&config).unwrap()
}

fn bench_policies() -> Vec<CompiledPolicy> {
    let p = |v: Value| -> CompiledPolicy {
        serde_json::from_value::<Policy>(v)
            .unwrap()
            .compile()
            .unwrap()
    };
    let endpoints = json!([
        { "method": "GET", "path": "/v1/charges/*" },
        { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
    ]);
    vec![
        p(
            json!({ "name": "bench", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
                  "merchants": { "allow_unscoped": true }, "endpoints": endpoints }),
        ),
        p(
            json!({ "name": "bench-lb", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
                  "merchants": { "allow_unscoped": true }, "endpoints": endpoints,
                  "loop_breaker": { "max_requests_per_minute": 100_000_000u64, "max_identical_per_minute": 100_000_000u64 } }),
        ),
    ]
}

fn token(keys: &Keys, policy: &str, id: String) -> String {
    token_for(keys, policy, id, Vendor::Stripe)
}

fn token_for(keys: &Keys, policy: &str, id: String, vendor: Vendor) -> String {
    let t = now();
    keys.mint(&Claims {
        v: 1,
        id,
        policy: policy.into(),
        vendor,
        iat: t - 60,
        exp: t + 3 * 3600,
        label: format!("bench/{policy}"),
        endpoints: None,
        merchants: None,
        caps: Default::default(),
    })
}

struct AblationStep {
    /// `BRIDLE_ABLATE` for the build.
    step: &'static str,
    name: &'static str,
    description: &'static str,
}

/// The uncosted allowed call again, through filter builds that stop early (see
/// `src/ablation.rs`); the full filter is `bridle_allowed`.
const ABLATION_STEPS: [AblationStep; 6] = [
    AblationStep {
        step: "hostcalls",
        name: "ablate_hostcalls",
        description: "an allowed call's hostcalls alone (clock, header map, one header replaced, a counter, :status): no decision, no audit",
    },
    AblationStep {
        step: "module",
        name: "ablate_module",
        description:
            "Bridle's module configured, each request an empty context (as the no-op filter's)",
    },
    AblationStep {
        step: "0",
        name: "ablate_0_enter",
        description: "Bridle stopped at once: the filter's module and SDK dispatch",
    },
    AblationStep {
        step: "1",
        name: "ablate_1_headers",
        description: "Bridle stopped after reading the clock and the request headers",
    },
    AblationStep {
        step: "2",
        name: "ablate_2_decide",
        description: "Bridle stopped after the decision (token, policy, path, merchant)",
    },
    AblationStep {
        step: "3",
        name: "ablate_3_rewrite",
        description: "Bridle without the audit record (credentials rewritten, counted)",
    },
];

/// Every process a proxy scenario needs, started before any is measured.
struct ProxyStack {
    _baselines: Vec<Envoy>,
    _ledger: Ledger,
    _bridle: Envoy,
    /// The admin port of `_bridle`, whose lease counter the leased rows read.
    bridle_admin: u16,
    _bridle_http2: Envoy,
    _ablations: Vec<Envoy>,
    _peer: Option<litellm::LiteLlm>,
    /// What the peer was seen to do on a sanity request before it was measured.
    peer_checked: Option<litellm::Checked>,
    scenarios: Vec<Scenario>,
}

async fn proxy_stack(keys: &Keys, with_peer: bool) -> ProxyStack {
    let upstream = upstream::spawn().port();
    let noop = repo_root().join("target/wasm32-wasip1/release/bridle_noop_filter.wasm");
    assert!(
        noop.exists(),
        "{} is missing: run `make bench`",
        noop.display()
    );
    let env = vec![(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_default(),
    )];
    let mut baselines = Vec::new();
    let mut scenarios = Vec::new();
    let plain = || Load {
        method: "GET",
        path: "/v1/charges/ch_1",
        body: String::new(),
        headers: vec![],
    };
    for (name, description, wasm) in [
        ("no_filter", "Envoy, no Wasm filter", None),
        (
            "noop_wasm",
            "Envoy, a no-op proxy-wasm filter (the V8 floor)",
            Some(noop.as_path()),
        ),
    ] {
        let envoy = Envoy::start_config(&baseline_config(upstream, wasm), &env, 1)
            .await
            .unwrap();
        pin_to(envoy.pid(), 0);
        scenarios.push(Scenario {
            name,
            description,
            port: envoy.listener_port("baseline"),
            proxy_pid: Some(envoy.pid()),
            baseline: "no_filter",
            load: plain(),
        });
        baselines.push(envoy);
    }

    let mut policies = bench_policies();
    policies.extend(openai_scenarios::policies());
    let leased = lease::policies(&policies);
    policies.extend(leased);
    let ledger = Ledger::start(&policies, keys).await;
    pin_to(ledger.pid().unwrap(), 1);
    let mut setup =
        Setup::new(policies, keys).upstream_all(&format!("http://127.0.0.1:{upstream}"));
    setup.ledger = Some(ledger.url());
    setup.concurrency = 1;
    let bridle = Envoy::start(&setup).await.unwrap();
    pin_to(bridle.pid(), 0);
    let port = bridle.port(Vendor::Stripe);
    let mut http2 = setup.clone();
    http2.ledger_protocol = bridle_cli::render::LedgerProtocol::Http2;
    let bridle_http2 = Envoy::start(&http2).await.unwrap();
    pin_to(bridle_http2.pid(), 0);
    // The same filter, built to stop its request path after a given step: where the time goes.
    let ablation_wasm =
        repo_root().join("target/ablation/wasm32-wasip1/release/bridle_filter.wasm");
    assert!(
        ablation_wasm.exists(),
        "{} is missing: run `make bench`",
        ablation_wasm.display()
    );
    let mut ablations = Vec::new();
    for step in ABLATION_STEPS {
        let mut s = setup.clone();
        s.wasm = Some(ablation_wasm.clone());
        s.env.push(("BRIDLE_ABLATE".into(), step.step.to_string()));
        s.vm_env.push("BRIDLE_ABLATE".into());
        let envoy = Envoy::start(&s).await.unwrap();
        pin_to(envoy.pid(), 0);
        ablations.push(envoy);
    }
    let auth = |policy: &str| {
        format!(
            "Authorization: Bearer {}",
            token(
                keys,
                policy,
                format!("tok_bench_{}", policy.replace('-', "_"))
            )
        )
    };
    let form = "Content-Type: application/x-www-form-urlencoded".to_string();
    scenarios.push(Scenario {
        name: "bridle_allowed",
        description: "Bridle: allowed, uncosted (token, allowlist, secret injection, audit)",
        port,
        proxy_pid: Some(bridle.pid()),
        baseline: "no_filter",
        load: Load {
            method: "GET",
            path: "/v1/charges/ch_1",
            body: String::new(),
            headers: vec![auth("bench")],
        },
    });
    scenarios.push(token_churn::scenario(keys, port, bridle.pid()));
    scenarios.push(Scenario {
        name: "bridle_allowed_loop_breaker",
        description: "Bridle: the same with a loop breaker (shared-data compare-and-swap per call)",
        port,
        proxy_pid: Some(bridle.pid()),
        baseline: "no_filter",
        load: Load {
            method: "GET",
            path: "/v1/charges/ch_1",
            body: String::new(),
            headers: vec![auth("bench-lb")],
        },
    });
    scenarios.push(Scenario {
        name: "bridle_denied",
        description: "Bridle: denied in the filter (endpoint outside the policy)",
        port,
        proxy_pid: Some(bridle.pid()),
        baseline: "no_filter",
        load: Load {
            method: "POST",
            path: "/v1/refunds",
            body: "charge=ch_1".into(),
            headers: vec![auth("bench"), form.clone()],
        },
    });
    let costed = Load {
        method: "POST",
        path: "/v1/payment_intents",
        body: "amount=100&currency=usd".into(),
        headers: vec![auth("bench"), form],
    };
    scenarios.push(Scenario {
        name: "bridle_costed",
        description: "Bridle: costed (body priced, reserve with the ledger, batched settle)",
        port,
        proxy_pid: Some(bridle.pid()),
        baseline: "no_filter",
        load: costed.clone(),
    });
    scenarios.push(ledger_protocol::scenario(
        bridle_http2.port(Vendor::Stripe),
        bridle_http2.pid(),
        costed,
    ));
    for (step, envoy) in ABLATION_STEPS.iter().zip(&ablations) {
        scenarios.push(Scenario {
            name: step.name,
            description: step.description,
            port: envoy.port(Vendor::Stripe),
            proxy_pid: Some(envoy.pid()),
            baseline: "no_filter",
            load: Load {
                method: "GET",
                path: "/v1/charges/ch_1",
                body: String::new(),
                headers: vec![auth("bench")],
            },
        });
    }
    let peer = if with_peer {
        eprintln!("bench: starting LiteLLM from {}", litellm::venv().display());
        let peer = litellm::LiteLlm::start(upstream)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let checked = peer
            .check(&openai_scenarios::body())
            .await
            .unwrap_or_else(|e| panic!("the peer does not do what the benchmark says: {e}"));
        pin_to(peer.pid(), 0);
        Some((peer, checked))
    } else {
        None
    };
    scenarios.extend(openai_scenarios::scenarios(
        keys,
        upstream,
        &baselines[0],
        &bridle,
        peer.as_ref().map(|(p, _)| p),
    ));
    lease::add_scenarios(keys, &mut scenarios);
    let (peer, peer_checked) = peer.unzip();
    ProxyStack {
        _baselines: baselines,
        _ledger: ledger,
        bridle_admin: bridle.admin,
        _bridle: bridle,
        _bridle_http2: bridle_http2,
        _ablations: ablations,
        _peer: peer,
        peer_checked,
        scenarios,
    }
}

/// Which proxy scenarios a run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Selection {
    /// Every scenario, the peer included: `make bench`.
    All,
    /// Only the throughput of the no-op floor, the ablation builds and the uncosted call
    /// (`bridle-bench entry`).
    Entry,
    /// Only the no-op filter, the hostcalls alone and the uncosted call (`bridle-bench floor`).
    Floor,
    /// Only the one-connection latency of the tail scenarios, in both layouts
    /// (`bridle-bench tail`).
    Tail,
}

/// The proxy scenarios in interleaved rounds, and what the peer was seen to do.
async fn proxy_benchmarks(
    plan: Plan,
    keys: &Keys,
    selection: Selection,
) -> (Vec<ScenarioResult>, Option<litellm::Checked>) {
    let mut stack = proxy_stack(keys, selection == Selection::All).await;
    match selection {
        Selection::Tail => stack.scenarios.retain(|s| tail::measured(s.name)),
        Selection::Entry => stack.scenarios.retain(|s| entry_cost::measured(s.name)),
        Selection::Floor => stack
            .scenarios
            .retain(|s| entry_cost::floor_measured(s.name)),
        Selection::All => {}
    }
    for s in &stack.scenarios {
        eprintln!("bench: warm up {}", s.name);
        wrk(s.port, 32, plan.warmup_s, &s.load);
    }
    let mut throughput: BTreeMap<&str, Vec<Wrk>> = BTreeMap::new();
    let mut proxy_cpu: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut latency: BTreeMap<&str, Vec<Wrk>> = BTreeMap::new();
    let mut isolated: BTreeMap<&str, Vec<Wrk>> = BTreeMap::new();
    let mut leases = lease::Uses::new();
    let admin = stack.bridle_admin;
    for round in 1..=plan.rounds {
        for s in stack
            .scenarios
            .iter()
            .filter(|_| selection != Selection::Tail)
        {
            let leased = lease::before(s.name, admin).await;
            let cpu_before = s.proxy_pid.map(process_cpu_us);
            let w = wrk(s.port, 32, plan.throughput_s, &s.load);
            if let (Some(pid), Some(before)) = (s.proxy_pid, cpu_before) {
                let cpu = (process_cpu_us(pid) - before) as f64 / w.requests.max(1) as f64;
                proxy_cpu.entry(s.name).or_default().push(cpu);
            }
            eprintln!(
                "bench: round {round} {:<28} {:>8.0} req/s ({} non-2xx, {} errors)",
                s.name, w.rps, w.non_2xx, w.errors
            );
            if let Some(before) = leased {
                let run = format!("round {round}, 32 connections");
                let used = lease::record(s.name, run, 32, admin, before, &w).await;
                leases.entry(s.name).or_default().push(used);
            }
            throughput.entry(s.name).or_default().push(w);
        }
        if matches!(selection, Selection::Entry | Selection::Floor) {
            continue;
        }
        // One connection: every row in the shared layout, then the tail rows again with the
        // ledger on a core of its own.
        for (layout, rows) in [
            ("", &mut latency),
            (", ledger on its own core", &mut isolated),
        ] {
            let isolating = !layout.is_empty();
            tail::isolate_ledger(isolating);
            for s in stack
                .scenarios
                .iter()
                .filter(|s| !isolating || tail::measured(s.name))
            {
                let leased = lease::before(s.name, admin).await;
                let w = wrk(s.port, 1, plan.latency_s, &s.load);
                eprintln!(
                    "bench: round {round} {:<28} p50 {:>5} µs p99 {:>6} µs (1 connection{layout})",
                    s.name, w.p50_us, w.p99_us
                );
                if let Some(before) = leased {
                    let run = format!("round {round}, 1 connection{layout}");
                    let used = lease::record(s.name, run, 1, admin, before, &w).await;
                    leases.entry(s.name).or_default().push(used);
                }
                rows.entry(s.name).or_default().push(w);
            }
        }
        tail::isolate_ledger(false);
    }
    let mut results = Vec::new();
    for s in &stack.scenarios {
        let t = throughput.remove(s.name).unwrap_or_default();
        let l = latency.remove(s.name).unwrap_or_default();
        let i = isolated.remove(s.name).unwrap_or_default();
        if s.name == "bridle_denied" {
            assert!(
                t.iter()
                    .chain(&l)
                    .chain(&i)
                    .all(|w| w.non_2xx == w.requests),
                "the denied scenario was not denied: {t:?}"
            );
        } else {
            assert!(
                t.iter()
                    .chain(&l)
                    .chain(&i)
                    .all(|w| w.non_2xx + w.errors == 0),
                "{} had failures: {t:?} {l:?} {i:?}",
                s.name
            );
        }
        let cpu = proxy_cpu.remove(s.name).unwrap_or_default();
        results.push(ScenarioResult {
            scenario: s.name.into(),
            description: s.description.into(),
            baseline: s.baseline.into(),
            rps: median_f(t.iter().map(|w| w.rps).collect()),
            p50_us: median_i(l.iter().map(|w| w.p50_us as i64).collect()) as u64,
            p99_us: median_i(l.iter().map(|w| w.p99_us as i64).collect()) as u64,
            p999_us: median_i(l.iter().map(|w| w.p999_us as i64).collect()) as u64,
            proxy_cpu_us_per_request: (!cpu.is_empty()).then(|| median_f(cpu.clone())),
            proxy_cpu_rounds: cpu,
            throughput_rounds: t,
            latency_rounds: l,
            isolated_latency_rounds: i,
            lease_use: leases.remove(s.name).unwrap_or_default(),
        });
    }
    (results, stack.peer_checked.clone())
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct LedgerResult {
    recorded_calls: usize,
    live_tokens: usize,
    /// How many of the live tokens the load spreads over.
    load_tokens: usize,
    clients: usize,
    /// Medians over rounds.
    pairs_per_sec: f64,
    reserve_p50_us: u64,
    reserve_p99_us: u64,
    reserve_p999_us: u64,
    rounds: Vec<ledger_load::LoadResult>,
}

/// One ledger store the bench grows and loads: its recorded calls and live tokens, over how
/// many of those tokens the load spreads, and at which client counts it is measured.
#[derive(Clone, Copy)]
pub(crate) struct LedgerStore {
    pub(crate) calls: usize,
    pub(crate) tokens: usize,
    pub(crate) load_tokens: usize,
    pub(crate) clients: &'static [usize],
}

async fn ledger_benchmarks(plan: Plan, keys: &Keys, stores: &[LedgerStore]) -> Vec<LedgerResult> {
    let policies = vec![bench_policies().remove(0)];
    let mut ledgers = Vec::new();
    for &LedgerStore {
        calls,
        tokens,
        load_tokens,
        clients,
    } in stores
    {
        let t = Instant::now();
        let now_ms = now() * 1000;
        // One HTTP thread: the ledger has one core here, and its writer thread besides.
        let ledger = Ledger::start_prefilled(&policies, keys, &["--threads", "1"], |db| {
            store_fill::fill(db, "bench", tokens, calls, now_ms).unwrap()
        })
        .await;
        pin_to(ledger.pid().unwrap(), 0);
        eprintln!(
            "bench: ledger with {calls} recorded calls and {tokens} live tokens ready in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let minted: Vec<String> = (0..load_tokens.min(tokens))
            .map(|i| token(keys, "bench", store_fill::token_id(i)))
            .collect();
        ledgers.push((calls, tokens, clients, ledger, minted));
    }
    let mut runs: BTreeMap<(usize, usize, usize, usize), Vec<ledger_load::LoadResult>> =
        BTreeMap::new();
    // Only the ledger being measured runs: the others are stopped (SIGSTOP), so that their
    // timers and maintenance do not share its core.
    let pids: Vec<u32> = ledgers.iter().filter_map(|l| l.3.pid()).collect();
    let only = |pid: Option<u32>| {
        for p in &pids {
            let sig = if Some(*p) == pid {
                libc::SIGCONT
            } else {
                libc::SIGSTOP
            };
            // SAFETY: kill(2) on a child this process started.
            unsafe { libc::kill(*p as i32, sig) };
        }
    };
    for round in 1..=plan.ledger_rounds {
        // Each round starts one store later, so that no store always follows the same one.
        let n = ledgers.len();
        for (calls, tokens, clients, ledger, minted) in
            ledgers.iter().cycle().skip(round % n).take(n)
        {
            only(ledger.pid());
            for &c in clients.iter() {
                // A ledger just resumed first serves unmeasured load: its timers catch up and
                // its caches warm before anything is counted.
                ledger_load::run(
                    &[ledger.port],
                    ENFORCER_KEY,
                    minted,
                    c,
                    Duration::from_millis(plan.ledger_warmup_ms),
                )
                .await;
                let r = ledger_load::run(
                    &[ledger.port],
                    ENFORCER_KEY,
                    minted,
                    c,
                    Duration::from_secs(plan.ledger_s),
                )
                .await;
                eprintln!("bench: round {round} ledger {calls} calls {tokens} tokens (load over {}) {c} clients: {:.0} pairs/s", minted.len(), r.pairs_per_sec);
                assert_eq!(r.errors + r.denied, 0, "ledger load had failures: {r:?}");
                runs.entry((*calls, *tokens, minted.len(), c))
                    .or_default()
                    .push(r);
            }
        }
    }
    for p in &pids {
        // SAFETY: as above; every ledger runs again before it is dropped.
        unsafe { libc::kill(*p as i32, libc::SIGCONT) };
    }
    let mut out = Vec::new();
    for (calls, tokens, clients, _, minted) in &ledgers {
        for &c in clients.iter() {
            let rounds = runs
                .remove(&(*calls, *tokens, minted.len(), c))
                .unwrap_or_default();
            out.push(LedgerResult {
                recorded_calls: *calls,
                live_tokens: *tokens,
                load_tokens: minted.len(),
                clients: c,
                pairs_per_sec: median_f(rounds.iter().map(|r| r.pairs_per_sec).collect()),
                reserve_p50_us: median_i(rounds.iter().map(|r| r.reserve_p50_us as i64).collect())
                    as u64,
                reserve_p99_us: median_i(rounds.iter().map(|r| r.reserve_p99_us as i64).collect())
                    as u64,
                reserve_p999_us: median_i(rounds.iter().map(|r| r.reserve_p999_us as i64).collect())
                    as u64,
                rounds,
            });
        }
    }
    out
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let root = repo_root().display().to_string();
    json!({
        "cpus": cpus(),
        "cpu_model": model,
        "memory_gib": mem_kb / (1024 * 1024),
        "kernel": command_output("uname", &["-r"]),
        "envoy": command_output(&envoy_binary().display().to_string(), &["--version"]).split("version: ").nth(1).and_then(|v| v.split('/').nth(1)).unwrap_or("?"),
        "wrk": command_output("wrk", &["--version"]).split_whitespace().nth(1).unwrap_or("?"),
        "commit": command_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]),
        "dirty": !command_output("git", &["-C", &root, "status", "--porcelain", "--untracked-files=no"]).is_empty(),
    })
}

/// A markdown table cell: the value, or a dash where there is none.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// A markdown table row of cells.
fn table_row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Ratios within each round, then the median over rounds.
fn summarize(proxy: &[ScenarioResult], ledger: &[LedgerResult]) -> Value {
    let get = |s: &str| proxy.iter().find(|r| r.scenario == s);
    let noop = get("noop_wasm");
    let ratio_to = |r: &ScenarioResult, base: Option<&ScenarioResult>| -> f64 {
        let Some(b) = base else { return 0.0 };
        round3(median_f(
            r.throughput_rounds
                .iter()
                .zip(&b.throughput_rounds)
                .map(|(x, y)| x.rps / y.rps)
                .collect(),
        ))
    };
    // Requests per Envoy CPU-second relative to the baseline, within each round: what the
    // throughput ratio would be with Envoy's core saturated and nothing else on the machine.
    let capacity_to = |r: &ScenarioResult, base: Option<&ScenarioResult>| -> f64 {
        let Some(b) = base else { return 0.0 };
        round3(median_f(
            r.proxy_cpu_rounds
                .iter()
                .zip(&b.proxy_cpu_rounds)
                .filter(|(x, _)| **x > 0.0)
                .map(|(x, y)| y / x)
                .collect(),
        ))
    };
    // Over Envoy without a filter, sending the same request.
    let added = |r: &ScenarioResult, f: fn(&Wrk) -> u64| -> i64 {
        let Some(b) = get(&r.baseline) else { return 0 };
        median_i(
            r.latency_rounds
                .iter()
                .zip(&b.latency_rounds)
                .map(|(x, y)| f(x) as i64 - f(y) as i64)
                .collect(),
        )
    };
    let mut rows = BTreeMap::new();
    for r in proxy {
        // The no-op filter was measured on the Stripe-shaped request only.
        let same_request = r.baseline == "no_filter";
        rows.insert(
            r.scenario.clone(),
            json!({
                "throughput_vs_no_filter": ratio_to(r, get(&r.baseline)),
                "throughput_vs_noop_wasm": same_request.then(|| ratio_to(r, noop)),
                "envoy_cpu_capacity_vs_noop_wasm": same_request.then(|| capacity_to(r, noop)),
                "p50_added_us_vs_no_filter": added(r, |w| w.p50_us),
                "p99_added_us_vs_no_filter": added(r, |w| w.p99_us),
            }),
        );
    }
    let best = ledger.iter().map(|r| r.pairs_per_sec).fold(0.0, f64::max);
    let flatness = flatness::summarize(ledger);
    let flat = |what: &str| flatness["worst_median_ratio"][what].as_f64().unwrap_or(0.0);
    let tail = tail::summarize(proxy);
    let isolated_p99 = |scenario: &str| {
        tail.as_array()
            .and_then(|rows| rows.iter().find(|r| r["scenario"] == scenario))
            .map_or(Value::Null, |r| r["isolated"]["p99_us"].clone())
    };
    let isolated_costed_p99 = isolated_p99("bridle_costed");
    let isolated_leased_p99 = isolated_p99(lease::COSTED);
    let costed_p99 = get("bridle_costed").map_or(u64::MAX, |r| r.p99_us);
    let leased_p99 = get(lease::COSTED).map_or(u64::MAX, |r| r.p99_us);
    let l = rows.get(lease::COSTED).cloned().unwrap_or_default();
    let a = rows.get("bridle_allowed").cloned().unwrap_or_default();
    let c = rows.get("bridle_costed").cloned().unwrap_or_default();
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    json!({
        "ratios": rows,
        "token_verification": token_churn::summary(proxy),
        "ledger_protocol": ledger_protocol::summary(proxy),
        "lease": lease::summary(proxy),
        "peer": openai_scenarios::summarize(proxy),
        "tail": tail,
        "flatness": flatness,
        "targets": {
            "uncosted throughput / no-op Wasm": { "target": ">= 0.90", "measured": a["throughput_vs_noop_wasm"], "met": f(&a["throughput_vs_noop_wasm"]) >= 0.90 },
            "uncosted Envoy CPU capacity / no-op Wasm (not a target: a second view)": { "target": ">= 0.90", "measured": a["envoy_cpu_capacity_vs_noop_wasm"], "met": f(&a["envoy_cpu_capacity_vs_noop_wasm"]) >= 0.90 },
            "costed Envoy CPU capacity / no-op Wasm (not a target: a second view)": { "target": ">= 0.50", "measured": c["envoy_cpu_capacity_vs_noop_wasm"], "met": f(&c["envoy_cpu_capacity_vs_noop_wasm"]) >= 0.50 },
            "uncosted p99 added over no filter (µs)": { "target": "<= 300", "measured": a["p99_added_us_vs_no_filter"], "met": a["p99_added_us_vs_no_filter"].as_i64().unwrap_or(i64::MAX) <= 300 },
            "costed throughput / no-op Wasm": { "target": ">= 0.50", "measured": c["throughput_vs_noop_wasm"], "met": f(&c["throughput_vs_noop_wasm"]) >= 0.50 },
            "ledger durable pairs/s": { "target": ">= 20000", "measured": best.round(), "met": best >= 20_000.0 },
            "costed p99 at one connection (µs)": { "target": "<= 1500", "measured": costed_p99, "met": costed_p99 <= 1500 },
            "costed p99 at one connection, ledger on its own core (µs; not a target: a second view)": { "target": "<= 1500", "measured": isolated_costed_p99, "met": isolated_costed_p99.as_u64().is_some_and(|p| p <= 1500) },
            "costed throughput / no-op Wasm, leased (a policy with lease)": { "target": ">= 0.50", "measured": l["throughput_vs_noop_wasm"], "met": f(&l["throughput_vs_noop_wasm"]) >= 0.50 },
            "costed p99 at one connection, leased (µs)": { "target": "<= 1500", "measured": leased_p99, "met": leased_p99 <= 1500 },
            "costed p99 at one connection, leased, ledger on its own core (µs; not a target: a second view)": { "target": "<= 1500", "measured": isolated_leased_p99, "met": isolated_leased_p99.as_u64().is_some_and(|p| p <= 1500) },
            "ledger 10 to 100k live tokens (worst within-round median ratio)": { "target": ">= 0.80", "measured": flat("live tokens"), "met": flat("live tokens") >= 0.80 },
            "ledger 1 to 1M recorded calls (worst within-round median ratio)": { "target": ">= 0.80", "measured": flat("recorded calls"), "met": flat("recorded calls") >= 0.80 },
        },
    })
}

fn markdown(doc: &Value, proxy: &[ScenarioResult], ledger: &[LedgerResult]) -> String {
    let m = &doc["machine"];
    let summary = &doc["summary"];
    let mut s = format!(
        "Machine: {} CPUs ({}), {} GiB, kernel {}; Envoy {}; wrk {}; commit {}{}. {} round(s), {} for the ledger alone; CPU stolen by the hypervisor during the run: {:.1}%.\n\n",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["envoy"].as_str().unwrap_or("?"),
        m["wrk"].as_str().unwrap_or("?"),
        m["commit"].as_str().unwrap_or("?"),
        if m["dirty"].as_bool().unwrap_or(false) { " with uncommitted changes" } else { "" },
        doc["plan"]["rounds"],
        doc["plan"]["ledger_rounds"],
        doc["steal_percent"].as_f64().unwrap_or(0.0),
    );
    s.push_str("| scenario | req/s (32 conn) | vs no filter | vs no-op Wasm | proxy CPU µs/req | CPU capacity vs no-op | p50 µs | p99 µs | p99.9 µs | p50 added µs | p99 added µs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in proxy {
        let q = &summary["ratios"][&r.scenario];
        s.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.rps,
            q["throughput_vs_no_filter"],
            cell(&q["throughput_vs_noop_wasm"]),
            r.proxy_cpu_us_per_request
                .map_or("–".to_string(), |c| format!("{c:.1}")),
            cell(&q["envoy_cpu_capacity_vs_noop_wasm"]),
            r.p50_us,
            r.p99_us,
            r.p999_us,
            q["p50_added_us_vs_no_filter"],
            q["p99_added_us_vs_no_filter"]
        ));
    }
    s.push_str(&token_churn::markdown(&summary["token_verification"]));
    s.push_str(&ledger_protocol::markdown(&summary["ledger_protocol"]));
    s.push_str(&lease::markdown(&summary["lease"]));
    s.push('\n');
    s.push_str("\nreq/s: 32 connections, median over rounds; ratios are taken within each round, then the median. Latency: one connection (no queueing), median over rounds. \"vs no filter\" and \"added\" are against Envoy without a filter sending the same request (`no_filter`, or `openai_no_filter` for the OpenAI rows); the no-op filter was measured on the Stripe-shaped request only. Proxy CPU: Envoy's, or LiteLLM's for `litellm_proxy`.\n");
    s.push_str(&openai_scenarios::markdown(
        &summary["peer"],
        &doc["peer_checked"],
    ));
    s.push_str(&streaming::markdown(&doc["streamed"]));
    s.push_str(&tail::markdown(&summary["tail"]));
    s.push_str("\n### The ledger alone\n\n| recorded calls | live tokens | load over tokens | clients | durable pairs/s | reserve p50 µs | p99 µs | p99.9 µs |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in ledger {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} |\n",
            r.recorded_calls,
            r.live_tokens,
            r.load_tokens,
            r.clients,
            r.pairs_per_sec,
            r.reserve_p50_us,
            r.reserve_p99_us,
            r.reserve_p999_us
        ));
    }
    s.push_str(&flatness::markdown(&summary["flatness"]));
    s.push_str("\n| target | goal | measured | met |\n|---|---|---:|:---:|\n");
    if let Some(targets) = summary["targets"].as_object() {
        for (name, t) in targets {
            s.push_str(&format!(
                "| {name} | {} | {} | {} |\n",
                t["target"].as_str().unwrap_or(""),
                t["measured"],
                if t["met"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                }
            ));
        }
    }
    s
}

/// The upstream and a ledger with `policies` (on core 1), and the Envoy setup of one Bridle
/// worker in front of them.
async fn ledger_and_setup(keys: &Keys, policies: Vec<CompiledPolicy>) -> (Ledger, Setup) {
    let upstream = upstream::spawn().port();
    let ledger = Ledger::start(&policies, keys).await;
    pin_to(ledger.pid().unwrap(), 1);
    let mut setup =
        Setup::new(policies, keys).upstream_all(&format!("http://127.0.0.1:{upstream}"));
    setup.ledger = Some(ledger.url());
    setup.concurrency = 1;
    (ledger, setup)
}

/// `bridle-bench profile <allowed|uncached|costed|standalone> [seconds]`: drives one Bridle scenario
/// with wrk while `perf` samples Envoy.
async fn profile(scenario: &str, seconds: u64) {
    let keys = Keys::generate();
    // The ledger runs until the profile ends.
    let (_ledger, mut setup) = ledger_and_setup(&keys, bench_policies()).await;
    if scenario == "standalone" {
        setup.ledger = None;
        setup
            .policies
            .iter_mut()
            .for_each(|p| p.policy.endpoints.retain(|e| e.cost.is_none()));
    }
    let envoy = Envoy::start(&setup).await.unwrap();
    pin_to(envoy.pid(), 0);
    let auth = format!(
        "Authorization: Bearer {}",
        token(&keys, "bench", "tok_bench_profile".into())
    );
    let load = match scenario {
        "uncached" => token_churn::load(&keys),
        "costed" => Load {
            method: "POST",
            path: "/v1/payment_intents",
            body: "amount=100&currency=usd".into(),
            headers: vec![
                auth,
                "Content-Type: application/x-www-form-urlencoded".into(),
            ],
        },
        _ => Load {
            method: "GET",
            path: "/v1/charges/ch_1",
            body: String::new(),
            headers: vec![auth],
        },
    };
    let data = repo_root().join("target/bench/perf.data");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    let mut perf = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "2000", "-g", "-o"])
        .arg(&data)
        .args(["-p", &envoy.pid().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("perf (Debian's linux-perf)");
    let w = wrk(envoy.port(Vendor::Stripe), 32, seconds, &load);
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let _ = perf.wait();
    eprintln!(
        "profile: {scenario}: {:.0} req/s ({} non-2xx, {} errors); perf report -i {} --no-children --sort dso,sym",
        w.rps,
        w.non_2xx,
        w.errors,
        data.display()
    );
}

/// `bridle-bench profile-ledger <calls> <tokens> [seconds]`: the ledger alone under load
/// while `perf` samples it.
async fn profile_ledger(calls: usize, tokens: usize, seconds: u64) {
    let keys = Keys::generate();
    let policies = vec![bench_policies().remove(0)];
    let now_ms = now() * 1000;
    let ledger = Ledger::start_prefilled(&policies, &keys, &["--threads", "1"], |db| {
        store_fill::fill(db, "bench", tokens, calls, now_ms).unwrap()
    })
    .await;
    pin_to(ledger.pid().unwrap(), 0);
    let minted: Vec<String> = (0..tokens.min(64))
        .map(|i| token(&keys, "bench", store_fill::token_id(i)))
        .collect();
    let data = repo_root().join("target/bench/perf-ledger.data");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    let mut perf = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "2000", "-g", "-o"])
        .arg(&data)
        .args(["-p", &ledger.pid().unwrap().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("perf (Debian's linux-perf)");
    let r = ledger_load::run(
        &[ledger.port],
        ENFORCER_KEY,
        &minted,
        64,
        Duration::from_secs(seconds),
    )
    .await;
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let _ = perf.wait();
    eprintln!(
        "profile-ledger: {calls} calls, {tokens} tokens: {:.0} pairs/s; perf report -i {}",
        r.pairs_per_sec,
        data.display()
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let n = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    // wrk, the upstream and the ledger inherit core 1; every Envoy is moved to core 0.
    pin_self(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("profile") => {
            rt.block_on(profile(
                args.get(2).map_or("allowed", String::as_str),
                n(3, 8),
            ));
            return ExitCode::SUCCESS;
        }
        Some("tail") => {
            let plan = Plan {
                rounds: n(2, 5) as usize,
                ..FULL
            };
            rt.block_on(async move {
                let keys = Keys::generate();
                let (proxy, _) = proxy_benchmarks(plan, &keys, Selection::Tail).await;
                println!("{}", tail::markdown(&tail::summarize(&proxy)));
            });
            return ExitCode::SUCCESS;
        }
        Some("tail-where") => {
            let isolated = args.iter().any(|a| a == "--isolated");
            // The costed call under the same policy with a spend lease (`lease.rs`).
            let leased = args.iter().any(|a| a == "--lease");
            // Another build of the filter, to set its tail beside this one's.
            let wasm = args
                .iter()
                .position(|a| a == "--wasm")
                .and_then(|i| args.get(i + 1))
                .map(PathBuf::from);
            println!(
                "{}",
                rt.block_on(tail_where::run(n(2, 20), isolated, leased, wasm))
            );
            return ExitCode::SUCCESS;
        }
        // `bridle-bench live-tokens [rounds]`: whether live tokens cost the ledger, or the
        // load spread over more of them does.
        Some("live-tokens") => {
            let plan = Plan {
                ledger_rounds: n(2, 9) as usize,
                ..FULL
            };
            rt.block_on(async move {
                let keys = Keys::generate();
                let ledger = ledger_benchmarks(plan, &keys, &flatness::LIVE_TOKEN_STORES).await;
                println!("{}", flatness::live_tokens_markdown(&ledger));
            });
            return ExitCode::SUCCESS;
        }
        Some("entry") => {
            let plan = Plan {
                rounds: n(2, 9) as usize,
                ..FULL
            };
            rt.block_on(async move {
                let keys = Keys::generate();
                let (proxy, _) = proxy_benchmarks(plan, &keys, Selection::Entry).await;
                println!("{}", entry_cost::markdown(&proxy));
            });
            return ExitCode::SUCCESS;
        }
        Some("floor") => {
            let plan = Plan {
                rounds: n(2, 25) as usize,
                ..FULL
            };
            rt.block_on(async move {
                let keys = Keys::generate();
                let (proxy, _) = proxy_benchmarks(plan, &keys, Selection::Floor).await;
                println!("{}", entry_cost::floor_markdown(&proxy));
            });
            return ExitCode::SUCCESS;
        }
        Some("compare") => {
            let Some(before) = args.get(2) else {
                eprintln!("usage: bridle-bench compare <before.wasm> [rounds]");
                return ExitCode::FAILURE;
            };
            let plan = Plan {
                rounds: n(3, 5) as usize,
                ..FULL
            };
            rt.block_on(async move {
                let keys = Keys::generate();
                println!("{}", compare::run(Path::new(before), plan, &keys).await);
            });
            return ExitCode::SUCCESS;
        }
        Some("streamed") => {
            let plan = Plan {
                rounds: n(2, 3) as usize,
                ..FULL
            };
            rt.block_on(async move {
                let keys = Keys::generate();
                println!(
                    "{}",
                    streaming::markdown(&streaming::run(plan, &keys).await)
                );
            });
            return ExitCode::SUCCESS;
        }
        // `bridle-bench ledger-replicas [--quick]`: only the PostgreSQL replica figures.
        Some("ledger-replicas") => {
            let plan = if args.iter().any(|a| a == "--quick") {
                QUICK
            } else {
                FULL
            };
            let results = rt.block_on(ledger_replicas::run(
                plan.rounds,
                plan.ledger_s,
                &Keys::generate(),
            ));
            println!("{}", ledger_replicas::markdown(&results));
            return ExitCode::SUCCESS;
        }
        Some("profile-ledger") => {
            rt.block_on(profile_ledger(
                n(2, 10_000) as usize,
                n(3, 10) as usize,
                n(4, 8),
            ));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let plan = if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    rt.block_on(async move {
        let _ = wasm_path();
        let started = Instant::now();
        let keys = Keys::generate();
        let machine = machine();
        let steal_before = steal_ticks();
        let (proxy, peer) = proxy_benchmarks(plan, &keys, Selection::All).await;
        let ledger = ledger_benchmarks(plan, &keys, &flatness::STORES).await;
        let streamed = streaming::run(plan, &keys).await;
        let replicas = ledger_replicas::run(plan.rounds, plan.ledger_s, &keys).await;
        let steal_after = steal_ticks();
        let steal_percent = 100.0 * (steal_after.0 - steal_before.0) as f64 / (steal_after.1 - steal_before.1).max(1) as f64;
        let summary = summarize(&proxy, &ledger);
        let out: PathBuf = repo_root().join("target/bench");
        std::fs::create_dir_all(&out).unwrap();
        let doc = json!({
            "machine": machine,
            "plan": plan,
            "method": "wrk -t1: 32 connections for throughput, 1 for latency; interleaved rounds, medians; every Envoy --concurrency 1 and LiteLLM (one worker) pinned to core 0; wrk, upstream and the proxy's ledger on core 1; the tail scenarios' latency again with the ledger alone on core 1 and Envoy, wrk and upstream on core 0; ledger alone on core 0 with one HTTP thread (the other prefilled ledgers stopped meanwhile), its load client on core 1, in more and shorter rounds, each run after an unmeasured warm-up",
            "peer_checked": peer,
            "steal_percent": round3(steal_percent),
            "proxy": proxy,
            "ledger": ledger,
            "ledger_replicas": replicas,
            "summary": summary,
            "streamed": streamed,
            "seconds": started.elapsed().as_secs(),
        });
        let md = markdown(&doc, &proxy, &ledger) + &ledger_replicas::markdown(&replicas);
        std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        std::fs::write(out.join("results.md"), &md).unwrap();
        println!("{md}");
        eprintln!("bench: done in {}s; target/bench/summary.json and target/bench/results.md", started.elapsed().as_secs());
    });
    ExitCode::SUCCESS
}
