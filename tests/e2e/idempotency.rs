//! Idempotency keys through the real Envoy, the real ledger and a recording vendor (issue 12,
//! hole 1): a key replays only the request it was first used for, only where the vendor
//! itself replays it, and a replay counts nothing in the spend or the audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::{Request, Response};
use bridle_e2e::envoy::policies;
use bridle_e2e::stack::Stack;
use serde_json::{json, Value};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

fn stripe_pay() -> Value {
    // No per-transaction cap: a key reused for a huge amount must be refused for the key.
    json!({
        "name": "pay", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow": ["acct_1Alpha", "acct_1Beta"], "allow_unscoped": true },
        "endpoints": [
            { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
            { "method": "POST", "path": "/v1/refunds", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
        ],
        "caps": { "per_window": "10000000", "window": "1h" },
    })
}

fn openai_chat() -> Value {
    json!({
        "name": "chat", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "4h",
        "endpoints": [{ "method": "POST", "path": "/v1/chat/completions", "cost": { "max": "0.05" } }],
        "caps": { "per_window": "0.10", "window": "1h" },
    })
}

fn twilio_sms() -> Value {
    json!({
        "name": "sms", "vendor": "twilio", "secret_env": "TWILIO_API_KEY", "max_ttl": "4h",
        "merchants": { "allow": [SID] },
        "endpoints": [{ "method": "POST", "path": "/2010-04-01/Accounts/*/Messages.json",
                        "cost": { "fixed": "0.0079", "per": "sms_segment" } }],
    })
}

async fn stack() -> Stack {
    Stack::start(policies(&[stripe_pay(), openai_chat(), twilio_sms()])).await
}

async fn issue(s: &Stack, policy: &str, label: &str) -> (String, String) {
    s.ledger
        .issue(json!({ "policy": policy, "label": label, "expires_in": "1h" }))
        .await
}

fn intent(token: &str, amount: &str, key: &str) -> Request {
    Request::new("POST", "/v1/payment_intents")
        .bearer(token)
        .header("idempotency-key", key)
        .form(&format!("amount={amount}&currency=usd"))
}

/// A Bridle refusal in Stripe's format, with the reason in the header and the body.
fn assert_stripe_refusal(r: &Response, reason: &str) {
    assert_eq!((r.status, r.reason()), (400, reason), "{}", r.text());
    assert_eq!(r.json()["error"]["code"], reason, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_under_one_key_is_a_replay_counted_once() {
    let s = stack().await;
    let (token, id) = issue(&s, "pay", "acme/replay").await;
    for _ in 0..3 {
        let r = intent(&token, "1500", "order-42")
            .send(s.envoy.port(Vendor::Stripe))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Stripe sees every retry and answers it from its own idempotency cache; the ledger
    // counts the money once.
    let got = s.mock.requests();
    assert_eq!(got.len(), 3);
    assert!(got
        .iter()
        .all(|r| r.header("idempotency-key").as_deref() == Some("order-42")));
    assert_eq!(s.ledger.settled(&id).await["spend"]["window"], "15.00");

    // The audit log agrees with the spend: one call at $15, two replays that count nothing.
    let audit = s.ledger.await_audit(&format!("token_id={id}"), 3).await;
    assert_eq!(audit.len(), 3, "{audit:?}");
    let replays: Vec<&Value> = audit.iter().filter(|a| a["replay"] == true).collect();
    assert_eq!(replays.len(), 2, "{audit:?}");
    assert!(replays
        .iter()
        .all(|a| a["cost"].is_null() && a["reason"] == "allowed"));
    let first = audit.iter().find(|a| a["replay"] != true).unwrap();
    assert_eq!(first["cost"], "15.00", "{first}");
    assert!(
        replays
            .iter()
            .all(|a| a["reservation"] == first["reservation"]),
        "a replay names the reservation it repeats: {audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_or_sent_twice_is_refused() {
    let s = stack().await;
    let port = s.envoy.port(Vendor::Stripe);
    let (token, id) = issue(&s, "pay", "acme/reuse").await;
    let first = intent(&token, "100", "k-1").header("stripe-account", "acct_1Alpha");
    assert_eq!(first.send(port).await.status, 200);
    assert_eq!(s.mock.count(), 1);

    // The same key on another merchant for $999,999.99; on no merchant; with another amount;
    // on another path; with another body. Each is another request: refused, never forwarded.
    let refund = Request::new("POST", "/v1/refunds")
        .bearer(&token)
        .header("idempotency-key", "k-1")
        .header("stripe-account", "acct_1Alpha")
        .form("amount=100&currency=usd");
    let described = Request::new("POST", "/v1/payment_intents")
        .bearer(&token)
        .header("idempotency-key", "k-1")
        .header("stripe-account", "acct_1Alpha")
        .form("amount=100&currency=usd&description=x");
    for (what, r) in [
        (
            "another merchant and amount",
            intent(&token, "99999999", "k-1").header("stripe-account", "acct_1Beta"),
        ),
        ("no merchant", intent(&token, "100", "k-1")),
        (
            "another amount",
            intent(&token, "101", "k-1").header("stripe-account", "acct_1Alpha"),
        ),
        ("another path", refund),
        ("another body", described),
    ] {
        let answer = r.send(port).await;
        assert_stripe_refusal(&answer, "idempotency_key_reused");
        assert_eq!(s.mock.count(), 1, "{what} reached the vendor");
    }
    // The key still belongs to its first request, which still replays.
    assert_eq!(first.send(port).await.status, 200);
    assert_eq!(s.mock.count(), 2);

    // More than one key: the header twice (the same key, or two), or keys joined by a comma.
    for (what, r) in [
        (
            "two keys",
            intent(&token, "100", "k-2").header("idempotency-key", "k-3"),
        ),
        (
            "one key twice",
            intent(&token, "100", "k-2").header("idempotency-key", "k-2"),
        ),
        ("joined", intent(&token, "100", "k-2, k-3")),
    ] {
        let answer = r.send(port).await;
        assert_stripe_refusal(&answer, "idempotency_key_ambiguous");
        assert_eq!(s.mock.count(), 2, "{what} reached the vendor");
    }
    assert_eq!(s.ledger.settled(&id).await["spend"]["window"], "1.00");
    let audit = s.ledger.await_audit(&format!("token_id={id}"), 10).await;
    let reasons = |code: &str| audit.iter().filter(|a| a["reason"] == code).count();
    assert_eq!(
        (
            reasons("idempotency_key_reused"),
            reasons("idempotency_key_ambiguous")
        ),
        (5, 3),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendors_that_do_not_replay_a_key_are_priced_afresh() {
    let s = stack().await;
    // The issue's attack: one key, a $0.10 window, $0.05 a call. OpenAI executes (and bills)
    // every call whatever its key, so each counts, and the cap stops the third.
    let (token, id) = issue(&s, "chat", "acme/chat").await;
    let chat = Request::new("POST", "/v1/chat/completions")
        .bearer(&token)
        .header("idempotency-key", "same-key")
        .json(
            &json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "hi" }] }),
        );
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = chat.send(s.envoy.port(Vendor::Openai)).await;
        statuses.push((r.status, r.reason().to_string()));
    }
    let granted = statuses.iter().filter(|(st, _)| *st == 200).count();
    assert_eq!(granted, 2, "{statuses:?}");
    assert!(
        statuses[2..]
            .iter()
            .all(|(st, reason)| *st == 403 && reason == "cap_window"),
        "{statuses:?}"
    );
    assert_eq!(s.mock.count(), 2, "only granted calls reach the vendor");
    assert_eq!(s.ledger.settled(&id).await["spend"]["window"], "0.10");

    // Twilio sends an SMS again on a retry: the same key twice is two messages, two prices.
    let (token, id) = issue(&s, "sms", "acme/sms").await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{token}"))
    );
    for _ in 0..2 {
        let r = Request::new("POST", format!("/2010-04-01/Accounts/{SID}/Messages.json"))
            .header("authorization", &basic)
            .header("idempotency-key", "same-key")
            .form("To=%2B15550001111&From=%2B15550002222&Body=hello")
            .send(s.envoy.port(Vendor::Twilio))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(s.mock.count(), 4);
    assert_eq!(s.ledger.settled(&id).await["spend"]["window"], "0.0158");
    let audit = s.ledger.await_audit(&format!("token_id={id}"), 2).await;
    assert!(
        audit
            .iter()
            .all(|a| a["replay"] != true && a["cost"] == "0.0079"),
        "{audit:?}"
    );
}
