//! Faults against real processes: a filter VM that traps, a ledger frozen mid-traffic.
//! (`kill -9` of the ledger under costed load is in `ledger.rs`.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridle_core::ledger_api::{DEADLINE_HEADER, RESERVE_PATH};
use bridle_core::money::Usd;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::{Request, Response};
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::{Keys, ENFORCER_KEY};
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::MockVendor;
use bridle_e2e::repo_root;
use serde_json::{json, Value};

fn stripe_policy() -> Value {
    json!({
        "name": "pay", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [
            { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
            { "method": "GET", "path": "/v1/charges/*" },
        ],
        "caps": { "per_transaction": "50", "per_window": "1000", "lifetime": "1000", "window": "1h" },
    })
}

fn openai_policy() -> Value {
    json!({
        "name": "chat", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "4h",
        "endpoints": [{ "method": "GET", "path": "/v1/models" }],
        "on_ledger_unavailable": "allow",
    })
}

/// The filter built with the `test-trap` feature: `x-test-trap` makes its VM trap.
fn trapping_wasm() -> std::path::PathBuf {
    let path = repo_root().join("target/test-trap/wasm32-wasip1/release/bridle_filter.wasm");
    assert!(
        path.exists(),
        "{} is missing: run `make wasm` (or `make test`)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_vm_that_traps_fails_closed_and_stays_closed() {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let uncosted = json!({
        "name": "pay", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [{ "method": "GET", "path": "/v1/charges/*" }],
    });
    let mut setup = Setup::new(policies(&[uncosted]), &keys).upstream_all(&mock.url());
    setup.wasm = Some(trapping_wasm());
    // One worker, so that the trapped VM is the one every later request meets.
    setup.concurrency = 1;
    let envoy = Envoy::start(&setup).await.unwrap();
    let port = envoy.port(Vendor::Stripe);
    let token = keys.token("pay", Vendor::Stripe);
    let charge = || Request::new("GET", "/v1/charges/ch_1").bearer(&token);

    assert_eq!(charge().send(port).await.status, 200, "the VM works before");
    assert_eq!(mock.count(), 1);

    let r = charge().header("x-test-trap", "1").send(port).await;
    assert!(
        r.status >= 500,
        "a trap must refuse the request: {} {}",
        r.status,
        r.text()
    );
    // Fail closed is not just for the trapping request: the dead VM passes nothing after it.
    for _ in 0..20 {
        let r: Response = charge().send(port).await;
        assert!(
            r.status >= 500,
            "after the trap a request got {}: {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(mock.count(), 1, "nothing reached the vendor after the trap");
    // Envoy flushes its log file every few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = envoy.log();
        if let Some(line) = log.lines().find(|l| l.contains("unreachable")) {
            println!("{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy logged no VM failure:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every Wasm filter Bridle ships, for plain Envoy and for Istio, is configured to fail closed
/// (the behaviour the test above proves): a regression in any manifest fails here.
#[test]
fn every_shipped_wasm_filter_is_configured_to_fail_closed() {
    let mut files = vec![repo_root().join("envoy/bridle.yaml")];
    let mut dirs = vec![repo_root().join("deploy")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    let (mut envoy_filters, mut wasm_plugins) = (0, 0);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for doc in text.split("\n---") {
            let Ok(v) = serde_yaml_ng::from_str::<Value>(doc) else {
                continue;
            };
            // A ConfigMap carries the bootstrap as a string: look inside it too.
            let mut stack = vec![v];
            while let Some(v) = stack.pop() {
                match &v {
                    Value::Object(m) => {
                        if m.get("name") == Some(&json!("envoy.filters.http.wasm")) {
                            envoy_filters += 1;
                            assert_eq!(
                                v["typed_config"]["config"]["failure_policy"],
                                "FAIL_CLOSED",
                                "{}: a Wasm filter without failure_policy FAIL_CLOSED",
                                f.display()
                            );
                        }
                        if m.get("kind") == Some(&json!("WasmPlugin")) {
                            wasm_plugins += 1;
                            assert_eq!(
                                v["spec"]["failStrategy"],
                                "FAIL_CLOSE",
                                "{}: a WasmPlugin without failStrategy FAIL_CLOSE",
                                f.display()
                            );
                        }
                        stack.extend(m.values().cloned());
                    }
                    Value::Array(a) => stack.extend(a.iter().cloned()),
                    Value::String(s)
                        if s.contains('\n') && s.contains("envoy.filters.http.wasm") =>
                    {
                        if let Ok(inner) = serde_yaml_ng::from_str::<Value>(s) {
                            stack.push(inner);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(
        envoy_filters >= 10 && wasm_plugins >= 5,
        "found only {envoy_filters} Envoy Wasm filters and {wasm_plugins} WasmPlugins"
    );
}

fn intent(token: &str) -> Request {
    Request::new("POST", "/v1/payment_intents")
        .bearer(token)
        .form("amount=100&currency=usd")
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[derive(Default, Debug)]
struct Tally {
    granted: u64,
    refused: u64,
    other: Vec<String>,
}

/// The ledger stops answering for 10 s (SIGSTOP: it holds its sockets but reads nothing), with
/// costed and uncosted traffic running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_frozen_for_ten_seconds_fails_costed_calls_promptly_and_loses_nothing() {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let ps = policies(&[stripe_policy(), openai_policy()]);
    let ledger = Ledger::start(&ps, &keys).await;
    let mut setup = Setup::new(ps, &keys).upstream_all(&mock.url());
    setup.ledger = Some(ledger.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    let (stripe, openai) = (envoy.port(Vendor::Stripe), envoy.port(Vendor::Openai));
    let (token, id) = ledger
        .issue(json!({ "policy": "pay", "label": "acme/freeze", "expires_in": "1h" }))
        .await;
    let (chat, _) = ledger
        .issue(json!({ "policy": "chat", "label": "acme/chat", "expires_in": "1h" }))
        .await;
    for _ in 0..3 {
        assert_eq!(intent(&token).send(stripe).await.status, 200);
    }

    let pid = ledger.pid().unwrap();
    signal(pid, libc::SIGSTOP);
    let frozen_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut costed = Vec::new();
    for _ in 0..3 {
        let (token, stop) = (token.clone(), stop.clone());
        costed.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while !stop.load(Ordering::SeqCst) {
                // Liveness, not speed: a hung request is the failure (the callout's deadline
                // is 500 ms).
                let r = intent(&token)
                    .try_send(stripe, Duration::from_secs(5))
                    .await
                    .expect("a costed request hung while the ledger was frozen");
                match (r.status, r.reason()) {
                    (200, _) => t.granted += 1,
                    (503, "ledger_unavailable") => t.refused += 1,
                    (s, reason) => t.other.push(format!("{s} {reason}")),
                }
            }
            t
        }));
    }
    // Uncosted calls follow each policy's failure mode: `pay` denies once its revocation set
    // is stale, `chat` says `on_ledger_unavailable: allow`.
    let (mut pay_ok, mut pay_stale, mut chat_ok) = (0, 0, 0);
    while frozen_at.elapsed() < Duration::from_secs(10) {
        let r = Request::new("GET", "/v1/charges/ch_1")
            .bearer(&token)
            .try_send(stripe, Duration::from_secs(5))
            .await
            .expect("an uncosted request hung");
        match (r.status, r.reason()) {
            (200, _) => {
                assert_eq!(pay_stale, 0, "allowed again after going stale");
                pay_ok += 1
            }
            (503, "revocation_stale") => pay_stale += 1,
            (s, reason) => panic!("uncosted: {s} {reason}"),
        }
        let r = Request::new("GET", "/v1/models")
            .bearer(&chat)
            .try_send(openai, Duration::from_secs(5))
            .await
            .expect("an uncosted request hung");
        assert_eq!(r.status, 200, "{}", r.text());
        chat_ok += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut during = Tally::default();
    for w in costed {
        let t = w.await.unwrap();
        during.granted += t.granted;
        during.refused += t.refused;
        during.other.extend(t.other);
    }
    signal(pid, libc::SIGCONT);
    assert!(
        during.other.is_empty(),
        "unexpected answers: {:?}",
        during.other
    );
    assert_eq!(
        during.granted, 0,
        "a costed call was granted by a frozen ledger"
    );
    assert!(during.refused >= 10, "{during:?}");
    assert!(pay_stale > 0, "the revocation set never went stale");
    assert!(chat_ok > 0 && pay_ok + pay_stale > 0);

    // Service resumes, and the calls refused during the freeze hold no spend: the ledger
    // refuses the reservations it reads after the proxy's deadline.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = 0;
    while after < 3 {
        let r = intent(&token).send(stripe).await;
        if r.status == 200 {
            after += 1;
        } else {
            assert!(
                Instant::now() < deadline,
                "no recovery: {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let granted = 3 + after;
    let settle_deadline = Instant::now() + Duration::from_secs(15);
    let t = loop {
        let t = ledger.token(&id).await;
        if t["spend"]["reserved"] == "0.00" || Instant::now() > settle_deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spent = Usd::parse(t["spend"]["lifetime"].as_str().unwrap())
        .unwrap()
        .micros();
    assert_eq!(
        (spent, t["spend"]["reserved"].as_str()),
        (granted as i64 * 1_000_000, Some("0.00")),
        "spend must be exactly the {granted} granted calls at $1: {t}"
    );
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count() as u64,
        granted
    );
}

/// A reservation the ledger reads after the proxy's deadline (a stalled ledger, a queued
/// request) was already refused to the agent: the ledger must not hold spend for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_refuses_reservations_read_after_the_proxys_deadline() {
    let keys = Keys::generate();
    let ledger = Ledger::start(&policies(&[stripe_policy()]), &keys).await;
    let (token, id) = ledger
        .issue(json!({ "policy": "pay", "label": "acme/late", "expires_in": "1h" }))
        .await;
    let now_ms = bridle_e2e::keys::now() * 1000;
    let reserve = |n: u32, deadline_ms: u64| {
        Request::new("POST", RESERVE_PATH)
            .bearer(ENFORCER_KEY)
            .header(DEADLINE_HEADER, deadline_ms.to_string())
            .json(&json!({
                "token": token, "request_id": format!("{n:032x}"), "method": "POST",
                "path": "/v1/payment_intents", "amount": "2.00", "detail": "test",
            }))
    };
    let late = reserve(1, now_ms - 5_000).send(ledger.port).await;
    assert_eq!(
        (
            late.status,
            late.json()["decision"].as_str(),
            late.json()["reason"].as_str()
        ),
        (200, Some("denied"), Some("ledger_unavailable")),
        "{}",
        late.text()
    );
    let on_time = reserve(2, now_ms + 5_000).send(ledger.port).await;
    assert_eq!(on_time.json()["decision"], "granted", "{}", on_time.text());
    let t = ledger.token(&id).await;
    assert_eq!(
        t["spend"]["reserved"], "2.00",
        "only the timely one holds spend: {t}"
    );
    let metrics = ledger.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "bridle_ledger_late_reserves_total 1"),
        "{metrics}"
    );
}
