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
    let mut endpoints = vec![json!({ "method": "POST", "path": "/v1/payment_intents",
        "cost": { "amount": { "field": "amount", "currency": "usd" } } })];
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

    let r = intent(&token).send(port).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The call opened a lease of four: $4 reserved, $1 of it spent.
    spend_once_reserved(&ledger, &id, "4.00", Duration::from_secs(2)).await;

    // The push replaces the plugin while the lease is young (it would serve calls for a
    // second). The old plugin must close it: $1 spent, $3 released, at once. Before, the
    // plugin went with the lease open, and the ledger held all $4 until its reservation TTL.
    let pushed = Instant::now();
    let after = policies(&[policy(&[
        json!({ "method": "GET", "path": "/v1/charges/*" }),
    ])]);
    envoy.push(&setup(after)).await.unwrap();
    let spend = spend_once_reserved(&ledger, &id, "0.00", Duration::from_secs(5)).await;
    assert_eq!(spend["window"], "1.00", "{spend}");
    assert!(
        pushed.elapsed() < Duration::from_secs(5),
        "settled at the push, not at the reservation TTL"
    );
    let records = ledger.await_audit(&format!("token_id={id}"), 1).await;
    assert_eq!(records.len(), 1, "{records:#?}");

    // The new plugin serves the token (and the pushed endpoint), with a lease of its own.
    let r = intent(&token).send(port).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&token)
        .send(port)
        .await;
    assert_eq!(r.status, 200, "the pushed endpoint: {}", r.text());
    let spend = spend_once_reserved(&ledger, &id, "0.00", Duration::from_secs(5)).await;
    assert_eq!(spend["window"], "2.00", "{spend}");
}
