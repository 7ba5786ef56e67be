//! A configuration push through the real Envoy and the real ledger: Envoy replaces the
//! plugin, and the one it lets go of settles its spend leases and sends what it still holds
//! before it is deleted, rather than leave the leases to count in full until the ledger
//! expires them; and a push of the filter's configuration alone (ECDS, as Istio's WasmPlugin
//! makes it) narrows the policy for the next request on every connection, old ones included.
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

/// One HTTP/1.1 connection kept open across requests, as an agent's HTTP client keeps it.
struct KeepAlive(tokio::net::TcpStream);

impl KeepAlive {
    async fn open(port: u16) -> KeepAlive {
        KeepAlive(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        )
    }

    /// Sends one request and reads its response: (status, `x-bridle-reason`, connection closing).
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        form: &str,
    ) -> (u16, String, bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: api.stripe.com\r\nauthorization: Bearer {token}\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
            form.len()
        );
        self.0.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), self.0.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some(split) = text.find("\r\n\r\n") {
                let head = text[..split].to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if raw.len() >= split + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    let reason = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-bridle-reason:"))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    return (status, reason, head.contains("connection: close"));
                }
            }
        }
    }
}

/// A push narrows the policy at once for every request, whichever connection it comes on:
/// delivered by extension config discovery (ECDS, as Istio's WasmPlugin delivers it), the
/// next request on a connection opened before the push meets the new plugin, not the old
/// one's endpoints or its open lease. (A push by listener update, as `start_pushable` makes,
/// leaves connections opened before it on the old plugin until Envoy has drained them: see
/// SECURITY.md, "Known limits".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_push_reaches_connections_opened_before_it() {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let charges = json!({ "method": "GET", "path": "/v1/charges/*" });
    let before = policies(&[policy(&[charges])]);
    let ledger = Ledger::start(&before, &keys).await;
    let setup = |ps| {
        let mut s = Setup::new(ps, &keys).upstream_all(&mock.url());
        s.ledger = Some(ledger.url());
        s.concurrency = 1;
        s
    };
    let envoy = Envoy::start_discovered(&setup(before)).await.unwrap();
    let port = envoy.port(Vendor::Stripe);
    let (token, id) = ledger
        .issue(json!({ "policy": "pushed", "label": "acme/ecds", "expires_in": "1h" }))
        .await;
    let form = "amount=100&currency=usd";
    let mut old = KeepAlive::open(port).await;
    let seen = old.send("GET", "/v1/charges/ch_1", &token, "").await;
    assert_eq!(seen.0, 200, "{seen:?}");
    // A lease of four opens on the old plugin: $4 reserved, $1 spent.
    let seen = old.send("POST", "/v1/payment_intents", &token, form).await;
    assert_eq!(seen.0, 200, "{seen:?}");

    // The push takes the charges away, and the lease.
    let mut narrowed = policy(&[]);
    narrowed.as_object_mut().unwrap().remove("lease");
    envoy
        .push_filters(&setup(policies(&[narrowed])))
        .await
        .unwrap();
    let r = Request::new("GET", "/v1/charges/ch_2")
        .bearer(&token)
        .send(port)
        .await;
    assert_eq!(r.status, 403, "a new connection: {}", r.text());
    let seen = old.send("GET", "/v1/charges/ch_3", &token, "").await;
    assert_eq!(
        (seen.0, seen.1.as_str()),
        (403, "endpoint_not_allowed"),
        "the connection opened before the push: {seen:?}"
    );
    let seen = old.send("POST", "/v1/payment_intents", &token, form).await;
    assert_eq!(seen.0, 200, "{seen:?}");
    let spends = "wasmcustom.bridle.ledger.lease_spends";
    let stats = envoy
        .stats(&format!("^{}$", spends.replace('.', "\\.")))
        .await;
    assert_eq!(
        stats.get(spends).copied().unwrap_or(0),
        0,
        "the call after the push spent the old plugin's lease"
    );
    let spend = spend_once_reserved(&ledger, &id, "0.00", Duration::from_secs(5)).await;
    assert_eq!(spend["window"], dollars(2), "{spend}");
}
