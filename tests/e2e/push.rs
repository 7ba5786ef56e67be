//! A configuration push through the real Envoy and the real ledger: Envoy replaces the
//! plugin, and the one it lets go of settles its spend leases and sends what it still holds
//! before it is deleted, rather than leave the leases to count in full until the ledger
//! expires them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use bridle_core::vendor::Vendor;
use bridle_e2e::client::Request;
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::Keys;
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::MockVendor;
use serde_json::{json, Value};

/// A Stripe policy whose payment intents lease four calls for a second; `extra` endpoints
/// are what a push changes.
fn policy(extra: &[Value]) -> Value {
    let mut endpoints = vec![
        json!({ "method": "POST", "path": "/v1/payment_intents",
            "cost": { "amount": { "field": "amount", "currency": "usd" } } }),
        json!({ "method": "GET", "path": "/v1/customers/*" }),
    ];
    endpoints.extend(extra.iter().cloned());
    json!({
        "name": "pushed", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow_unscoped": true },
        "endpoints": endpoints,
        "caps": { "per_transaction": "5", "per_window": "100", "window": "1h" },
        "lease": { "calls": 4, "max_age_ms": 1000 },
    })
}

fn intent(token: &str) -> Request {
    Request::new("POST", "/v1/payment_intents")
        .bearer(token)
        .form("amount=100&currency=usd")
}

/// The token's spend once `reserved` is `want`, or a failure after `within`.
async fn spend_once_reserved(ledger: &Ledger, id: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let spend = ledger.token(id).await["spend"].clone();
        if spend["reserved"] == want {
            return spend;
        }
        assert!(
            Instant::now() < deadline,
            "reserved was not {want} within {within:?}: {spend}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_plugin_settles_its_leases_before_it_goes() {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let before = policies(&[policy(&[])]);
    let ledger = Ledger::start(&before, &keys).await;
    let setup = |ps| {
        let mut s = Setup::new(ps, &keys).upstream_all(&mock.url());
        s.ledger = Some(ledger.url());
        s.concurrency = 1;
        s
    };
    let envoy = Envoy::start_pushable(&setup(before)).await.unwrap();
    let port = envoy.port(Vendor::Stripe);
    let (token, id) = ledger
        .issue(json!({ "policy": "pushed", "label": "acme/push", "expires_in": "1h" }))
        .await;

    // A call opens a lease of four ($4 reserved, $1 of it spent); a push then replaces the
    // plugin while the lease is young (it would serve calls for a second). The old plugin
    // must close it at once: $1 spent, $3 released. Before, the plugin went with the lease
    // open, and the ledger held all $4 until its reservation TTL (15 min). On a slow
    // machine the lease can age out before Envoy lets go of the old plugin, which proves
    // nothing: then the test calls and pushes again.
    let closed_at_exit = "wasmcustom.bridle.ledger.leases_closed_at_exit";
    // Meanwhile another agent's uncosted calls go on, one after the other: none may be
    // refused because the new plugin has not yet read the worker's revocation set (it
    // once did, until its first tick, with revocation_stale).
    let (other, _) = ledger
        .issue(json!({ "policy": "pushed", "label": "acme/other", "expires_in": "1h" }))
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A connection the replaced listener closes at once (--drain-time-s 0) is
                // the test's drain, not Bridle's answer: sent again.
                if let Ok(r) = Request::new("GET", "/v1/customers/cus_1")
                    .bearer(&other)
                    .try_send(port, Duration::from_secs(5))
                    .await
                {
                    statuses.push((r.status, r.reason().to_string()));
                }
            }
            statuses
        })
    };
    let mut calls = 0;
    for attempt in 0..3 {
        let r = intent(&token).send(port).await;
        assert_eq!(r.status, 200, "{}", r.text());
        calls += 1;
        spend_once_reserved(&ledger, &id, "4.00", Duration::from_secs(2)).await;
        let pushed = Instant::now();
        let extra = json!({ "method": "GET", "path": format!("/v1/charges/{attempt}*") });
        envoy
            .push(&setup(policies(&[policy(&[extra])])))
            .await
            .unwrap();
        let spend = spend_once_reserved(&ledger, &id, "0.00", Duration::from_secs(5)).await;
        assert_eq!(spend["window"], dollars(calls), "{spend}");
        assert!(pushed.elapsed() < Duration::from_secs(5));
        let stats = envoy
            .stats(&format!("^{}$", closed_at_exit.replace('.', "\\.")))
            .await;
        if stats.get(closed_at_exit).copied().unwrap_or(0) >= 1 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = hammer.await.unwrap();
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "{} of {} uncosted calls refused across the push: {refused:?}",
        refused.len(),
        statuses.len()
    );
    let stats = envoy
        .stats(&format!("^{}$", closed_at_exit.replace('.', "\\.")))
        .await;
    assert!(
        stats.get(closed_at_exit).copied().unwrap_or(0) >= 1,
        "no lease was ever open when Envoy let go of a plugin: {stats:?}"
    );
    assert!(
        !envoy.log().contains("could not say the plugin is done"),
        "a plugin going away could not finish"
    );
    let records = ledger.await_audit(&format!("token_id={id}"), calls).await;
    assert_eq!(records.len(), calls, "{records:#?}");

    // The new plugin serves the token (and the pushed endpoint), with a lease of its own.
    let r = intent(&token).send(port).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = Request::new("GET", format!("/v1/charges/{}ch_1", calls - 1))
        .bearer(&token)
        .send(port)
        .await;
    assert_eq!(r.status, 200, "the pushed endpoint: {}", r.text());
    let spend = spend_once_reserved(&ledger, &id, "0.00", Duration::from_secs(5)).await;
    assert_eq!(spend["window"], dollars(calls + 1), "{spend}");
}

fn dollars(calls: usize) -> String {
    format!("{calls}.00")
}
