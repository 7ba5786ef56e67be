//! What an agent can slip past the decision, through the real Envoy, the real ledger and the
//! mock vendor (issue 12): Envoy's own control headers, encoded bodies, form keys a vendor's
//! parser reads differently, a vault token in disguise, bodies in pieces and trailers over
//! HTTP/2, and Twilio messages that are not plain SMS. Each case checks what the agent got
//! and what the vendor received (and so, what it would have done).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use bridle_core::money::Usd;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::{Request, Response};
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::h2c;
use bridle_e2e::keys::Keys;
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::{MockVendor, Reply};
use serde_json::{json, Value};

fn stripe_pay() -> Value {
    json!({
        "name": "pay", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [
            { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
            { "method": "GET", "path": "/v1/charges/*" },
            // Free, without a loop breaker: its body streams through, never buffered.
            { "method": "POST", "path": "/v1/customers" },
        ],
        "caps": { "per_transaction": "50", "per_window": "5", "window": "1h" },
    })
}

struct Stack {
    ledger: Ledger,
    envoy: Envoy,
    mock: MockVendor,
}

async fn stack(ps: &[Value]) -> Stack {
    stack_with(ps, false).await
}

async fn stack_with(ps: &[Value], trust_local_clients: bool) -> Stack {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let ps = policies(ps);
    let ledger = Ledger::start(&ps, &keys).await;
    let mut setup = Setup::new(ps, &keys).upstream_all(&mock.url());
    setup.ledger = Some(ledger.url());
    setup.trust_local_clients = trust_local_clients;
    let envoy = Envoy::start(&setup).await.unwrap();
    Stack {
        ledger,
        envoy,
        mock,
    }
}

impl Stack {
    async fn issue(&self, policy: &str) -> (String, String) {
        self.ledger
            .issue(json!({ "policy": policy, "label": "smuggling/run", "expires_in": "1h" }))
            .await
    }

    fn stripe(&self) -> u16 {
        self.envoy.port(Vendor::Stripe)
    }

    /// The token's lifetime spend once its reservations are settled.
    async fn spent(&self, id: &str) -> Usd {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.ledger.token(id).await;
            if t["spend"]["reserved"] == "0.00" || Instant::now() > deadline {
                return Usd::parse(t["spend"]["lifetime"].as_str().unwrap()).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn intent(token: &str, body: &str) -> Request {
    Request::new("POST", "/v1/payment_intents")
        .bearer(token)
        .form(body)
}

fn refused(r: &Response, status: u16, reason: &str, case: &str) {
    assert_eq!(
        (r.status, r.reason()),
        (status, reason),
        "{case}: {}",
        r.text()
    );
}

/// Envoy 1.40 trusts no client address by default, and the shipped listeners say so
/// explicitly, so Envoy strips `x-envoy-*` from agents itself. A mesh that trusts its own
/// network (as Istio can) would obey them: here Envoy trusts local clients, and the filter
/// alone stands between a retry header and a second call under one reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_control_headers_never_replay_a_costed_call() {
    let s = stack_with(&[stripe_pay()], true).await;
    let (token, id) = s.issue("pay").await;
    // The vendor fails every call: a retry would reach it again under one reservation.
    s.mock
        .reply_always(Reply::json(503, json!({"error": {"type": "api_error"}})));
    let controls = [
        ("x-envoy-retry-on", "5xx,reset,retriable-status-codes"),
        ("x-envoy-retriable-status-codes", "503"),
        ("x-envoy-max-retries", "5"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "5000"),
        ("x-envoy-internal", "true"),
    ];
    let mut r = intent(&token, "amount=100&currency=usd");
    for (n, v) in controls {
        r = r.header(n, v);
    }
    let got = r.send(s.stripe()).await;
    assert_eq!(got.status, 503, "the vendor's answer: {}", got.text());
    // Over HTTP/2 as well.
    let mut r = h2c::Request::new("POST", "/v1/payment_intents")
        .bearer(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .piece("amount=100&currency=usd");
    for (n, v) in controls {
        r = r.header(n, v);
    }
    assert_eq!(r.send(s.stripe()).await.status, 503);
    let received = s.mock.requests();
    assert_eq!(
        received.len(),
        2,
        "each costed call reaches the vendor exactly once"
    );
    for r in &received {
        assert!(
            r.headers.iter().all(|(n, _)| !n.starts_with("x-envoy-")),
            "a control header reached the vendor:\n{}",
            r.everything()
        );
    }
    // Both calls held their reservation (the vendor may have acted), nothing more.
    assert_eq!(s.spent(&id).await, Usd::parse("2").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_bodies_and_ambiguous_forms_are_refused_before_pricing() {
    let s = stack(&[stripe_pay()]).await;
    let (token, id) = s.issue("pay").await;
    let port = s.stripe();
    // An upstream that inflates request bodies would read something else than was priced.
    for encoding in ["deflate", "gzip", "br", "identity, gzip"] {
        let r = intent(&token, "amount=11&currency=usd")
            .header("content-encoding", encoding)
            .send(port)
            .await;
        refused(&r, 400, "body_encoded", encoding);
    }
    // Keys and separators a Rack-style parser reads as `amount` (or another field).
    for body in [
        "amount=100&currency=usd&[amount]=9999999",
        "amount=100&currency=usd&%5Bamount%5D=9999999",
        "amount=100&currency=usd&amount]=9999999",
        "amount=100&currency=usd;amount=9999999",
        "amount=100&currency=usd& amount=9999999",
        "amount=100&currency=usd&transfer_data[amount]x=1",
    ] {
        let r = intent(&token, body).send(port).await;
        refused(&r, 400, "body_unreadable", body);
    }
    assert_eq!(s.mock.count(), 0, "{:#?}", s.mock.requests());
    // What is left reads the same everywhere, and is priced.
    let r = intent(&token, "amount=100&currency=usd&metadata[order]=a+b%3Bc")
        .header("content-encoding", "identity")
        .send(port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.spent(&id).await, Usd::parse("1").unwrap());
}
