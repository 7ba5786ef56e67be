//! The filter and the ledger together, through the real Envoy and the real ledger process:
//! costs, caps, concurrency, idempotency, the loop breaker, revocation, failure modes,
//! durability across kill -9, alerts, and the audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use bridle_cli::render::LedgerProtocol;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::{Request, Response};
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::{canary_secret, Keys, ADMIN_KEY, ENFORCER_KEY};
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::{MockVendor, Reply};
use serde_json::{json, Value};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

fn stripe_pay() -> Value {
    json!({
        "name": "pay", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow": ["acct_1Merchant"], "allow_unscoped": true },
        "endpoints": [
            { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
            { "method": "POST", "path": "/v1/refunds", "cost": {
                "amount": { "field": "amount", "currency_field": "currency" }, "max": "40",
                "settle": { "field": "amount", "currency_field": "currency" } } },
            { "method": "GET", "path": "/v1/charges/*" },
        ],
        "caps": { "per_transaction": "50", "per_window": "100", "lifetime": "300", "window": "1h" },
        "fx": { "eur": "1.08", "jpy": "0.0067" },
    })
}

fn stripe_tight() -> Value {
    json!({
        "name": "tight", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [{ "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency": "usd" } } }],
        "caps": { "per_window": "100", "policy_per_window": "250", "window": "1h" },
    })
}

fn stripe_loop() -> Value {
    json!({
        "name": "loopy", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [
            { "method": "GET", "path": "/v1/charges/*" },
            { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency": "usd" } } },
        ],
        "loop_breaker": { "max_requests_per_minute": 6, "max_identical_per_minute": 2 },
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

fn resend_mail() -> Value {
    json!({
        "name": "mail", "vendor": "resend", "secret_env": "RESEND_API_KEY", "max_ttl": "4h",
        "endpoints": [{ "method": "POST", "path": "/emails", "cost": { "fixed": "0.001", "per": "recipient" } }],
        "caps": { "per_transaction": "0.003" },
    })
}

fn openai_open() -> Value {
    json!({
        "name": "chat", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "4h",
        "endpoints": [{ "method": "GET", "path": "/v1/models" }],
        "on_ledger_unavailable": "allow",
    })
}

struct Stack {
    ledger: Ledger,
    envoy: Envoy,
    mock: MockVendor,
    keys: Keys,
}

async fn stack_with(extra_ledger_args: &[&str]) -> Stack {
    stack_speaking(extra_ledger_args, LedgerProtocol::default()).await
}

async fn stack_speaking(extra_ledger_args: &[&str], protocol: LedgerProtocol) -> Stack {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let ps = policies(&[
        stripe_pay(),
        stripe_tight(),
        stripe_loop(),
        twilio_sms(),
        resend_mail(),
        openai_open(),
    ]);
    let ledger = Ledger::start_with(&ps, &keys, extra_ledger_args).await;
    let mut setup = Setup::new(ps, &keys).upstream_all(&mock.url());
    setup.ledger = Some(ledger.url());
    setup.ledger_protocol = protocol;
    let envoy = Envoy::start(&setup).await.unwrap();
    Stack {
        ledger,
        envoy,
        mock,
        keys,
    }
}

async fn stack() -> Stack {
    stack_with(&[]).await
}

impl Stack {
    async fn issue(&self, policy: &str, label: &str) -> (String, String) {
        self.ledger
            .issue(json!({ "policy": policy, "label": label, "expires_in": "1h" }))
            .await
    }

    fn stripe(&self) -> u16 {
        self.envoy.port(Vendor::Stripe)
    }

    /// Waits until the token has no open reservation left (settles arrive in batches).
    async fn settled(&self, id: &str) -> Value {
        self.ledger.settled(id).await
    }
}

fn intent(token: &str, amount: &str, currency: &str) -> Request {
    Request::new("POST", "/v1/payment_intents")
        .bearer(token)
        .form(&format!(
            "amount={amount}&currency={currency}&payment_method_types[]=card"
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_costed_call_reserves_forwards_and_commits() {
    let s = stack().await;
    let (token, id) = s.issue("pay", "acme/run-1").await;
    let r = intent(&token, "2000", "usd").send(s.stripe()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = s.mock.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some(format!("Bearer {}", canary_secret(Vendor::Stripe).1).as_str())
    );
    assert_eq!(
        got[0].body, b"amount=2000&currency=usd&payment_method_types[]=card",
        "the body reaches the vendor untouched"
    );
    assert!(!got[0].everything().contains("bvt_"));
    let t = s.settled(&id).await;
    assert_eq!(
        (
            t["spend"]["window"].as_str(),
            t["spend"]["lifetime"].as_str()
        ),
        (Some("20.00"), Some("20.00"))
    );
    let audit = s.ledger.await_audit(&format!("token_id={id}"), 1).await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0]["status"].as_u64(),
            audit[0]["reason"].as_str(),
            audit[0]["cost"].as_str()
        ),
        (Some(200), Some("allowed"), Some("20.00"))
    );
    assert_eq!(s.envoy.counter(Vendor::Stripe, "pay", "allowed").await, 1);

    // A token minted offline (bridle mint) is accounted for from its first costed call.
    let mut claims = bridle_e2e::keys::claims("pay", Vendor::Stripe);
    claims.label = "acme/offline".into();
    let minted = s.keys.mint(&claims);
    assert_eq!(
        intent(&minted, "700", "usd").send(s.stripe()).await.status,
        200
    );
    let t = s.settled(&claims.id).await;
    assert_eq!(
        (
            t["spend"]["window"].as_str(),
            t["issued"].as_bool(),
            t["label"].as_str()
        ),
        (Some("7.00"), Some(false), Some("acme/offline"))
    );
}

/// The ledger cluster speaks HTTP/1.1 by default and HTTP/2 (h2c to the ledger, one
/// multiplexed connection per worker) when rendered so; reservations, settles and revocation
/// polls work over either, and Envoy's own counters show which was spoken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_travel_over_http1_by_default_and_http2_when_rendered_so() {
    for (protocol, spoken, not_spoken) in [
        (LedgerProtocol::default(), "http1", "http2"),
        (LedgerProtocol::Http2, "http2", "http1"),
    ] {
        let s = stack_speaking(&[], protocol).await;
        let (token, id) = s.issue("pay", "acme/protocol").await;
        for _ in 0..3 {
            let r = intent(&token, "100", "usd").send(s.stripe()).await;
            assert_eq!(r.status, 200, "{protocol:?}: {}", r.text());
        }
        let t = s.settled(&id).await;
        assert_eq!(t["spend"]["window"].as_str(), Some("3.00"), "{protocol:?}");
        let stats = s
            .envoy
            .stats("^cluster\\.bridle_ledger\\.upstream_cx_http")
            .await;
        let total = |p: &str| {
            stats
                .get(&format!("cluster.bridle_ledger.upstream_cx_{p}_total"))
                .copied()
                .unwrap_or(0)
        };
        assert!(total(spoken) >= 1, "{protocol:?}: {stats:?}");
        assert_eq!(total(not_spoken), 0, "{protocol:?}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_rules_price_each_vendor() {
    let s = stack().await;
    let (token, id) = s.issue("pay", "acme/costs").await;
    // Zero-decimal yen, and euros through the policy's FX table.
    assert_eq!(
        intent(&token, "500", "jpy").send(s.stripe()).await.status,
        200
    );
    assert_eq!(
        intent(&token, "1000", "eur").send(s.stripe()).await.status,
        200
    );
    // A currency without a rate is refused before the vendor sees it.
    let before = s.mock.count();
    let r = intent(&token, "100", "xyz").send(s.stripe()).await;
    assert_eq!(
        (r.status, r.reason()),
        (400, "currency_unknown"),
        "{}",
        r.text()
    );
    // An ambiguous amount is refused, never read the cheap way.
    let r = Request::new("POST", "/v1/payment_intents")
        .bearer(&token)
        .form("amount=1&amount=4999&currency=usd")
        .send(s.stripe())
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (400, "cost_undetermined"),
        "{}",
        r.text()
    );
    assert_eq!(s.mock.count(), before);
    // A refund without an amount reserves the policy's maximum, then settles from the
    // response ($15.00 from the mock's refund).
    let r = Request::new("POST", "/v1/refunds")
        .bearer(&token)
        .form("charge=ch_1")
        .send(s.stripe())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = s.settled(&id).await;
    // $3.35 (yen) + $10.80 (euros) + $15.00 (refund settled from the response).
    assert_eq!(t["spend"]["window"].as_str(), Some("29.15"), "{t}");

    // Twilio: 200 GSM characters are two SMS segments at $0.0079.
    let (sms, sms_id) = s.issue("sms", "acme/sms").await;
    let basic = base64_basic(SID, &sms);
    let body = format!(
        "To=%2B15551234567&From=%2B15557654321&Body={}",
        "a".repeat(200)
    );
    let r = Request::new("POST", format!("/2010-04-01/Accounts/{SID}/Messages.json"))
        .header("authorization", basic)
        .form(&body)
        .send(s.envoy.port(Vendor::Twilio))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.settled(&sms_id).await["spend"]["window"].as_str(),
        Some("0.0158")
    );

    // Resend: one price per recipient, to + cc + bcc; over the per-transaction cap is refused.
    let (mail, mail_id) = s.issue("mail", "acme/mail").await;
    let port = s.envoy.port(Vendor::Resend);
    let three = json!({"from": "a@x.io", "to": ["b@x.io", "c@x.io"], "cc": "d@x.io", "subject": "s", "text": "t"});
    assert_eq!(
        Request::new("POST", "/emails")
            .bearer(&mail)
            .json(&three)
            .send(port)
            .await
            .status,
        200
    );
    assert_eq!(
        s.settled(&mail_id).await["spend"]["window"].as_str(),
        Some("0.003")
    );
    let four = json!({"from": "a@x.io", "to": ["b@x.io", "c@x.io"], "cc": "d@x.io", "bcc": ["e@x.io"], "subject": "s", "text": "t"});
    let r = Request::new("POST", "/emails")
        .bearer(&mail)
        .json(&four)
        .send(port)
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (402, "cap_per_transaction"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["name"], "cap_per_transaction");
}

fn base64_basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cap_refuses_naming_the_cap_never_as_a_card_decline() {
    let s = stack().await;
    let (token, _) = s.issue("pay", "acme/caps").await;
    // Stripe: 403, so the SDK raises PermissionError; every 402 would be a CardError.
    let r = intent(&token, "5001", "usd").send(s.stripe()).await;
    assert_eq!(
        (r.status, r.reason()),
        (403, "cap_per_transaction"),
        "{}",
        r.text()
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$50.00 per-transaction cap"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("stripe-should-retry"), Some("false"));
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(
        intent(&token, "5000", "usd").send(s.stripe()).await.status,
        200
    );
    assert_eq!(
        intent(&token, "5000", "usd").send(s.stripe()).await.status,
        200
    );
    let r = intent(&token, "1", "usd").send(s.stripe()).await;
    assert_eq!((r.status, r.reason()), (403, "cap_window"), "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("$100.00 cap") && message.contains("$100.00 already spent"),
        "{message}"
    );

    // A token narrowed below its policy: its lifetime cap bites first.
    let narrowed = s.ledger.issue(json!({ "policy": "pay", "label": "acme/narrow", "expires_in": "1h", "caps": { "lifetime": "30" } })).await.0;
    assert_eq!(
        intent(&narrowed, "3000", "usd")
            .send(s.stripe())
            .await
            .status,
        200
    );
    let r = intent(&narrowed, "1", "usd").send(s.stripe()).await;
    assert_eq!(
        (r.status, r.reason()),
        (403, "cap_lifetime"),
        "{}",
        r.text()
    );

    // The policy aggregate spans tokens: $250 across three.
    for (label, amount, want) in [
        ("t/a", "10000", 200),
        ("t/b", "10000", 200),
        ("t/c", "5000", 200),
        ("t/d", "1", 403),
    ] {
        let (t, _) = s.issue("tight", label).await;
        let r = intent(&t, amount, "usd").send(s.stripe()).await;
        assert_eq!(r.status, want, "{label}: {}", r.text());
        if want == 403 {
            assert_eq!(r.reason(), "cap_policy");
        }
    }
    // Refused calls never reach the vendor.
    assert_eq!(s.mock.count(), 6);
    assert_eq!(
        s.envoy.counter(Vendor::Stripe, "pay", "cap_window").await,
        1
    );
    assert_eq!(
        s.envoy.counter(Vendor::Stripe, "tight", "cap_policy").await,
        1
    );
}

/// At most this many calls in flight at once: far more than it takes to race for a cap, few
/// enough that a loaded machine rarely pushes the ledger past the filter's callout deadline
/// (which refuses calls with 503 before they can race at all; those are resent).
const IN_FLIGHT: usize = 48;

/// Hundreds of concurrent costed calls against small caps: committed plus reserved spend
/// ends at or under each cap, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spend_never_exceeds_a_cap_under_concurrency() {
    let s = stack().await;
    let port = s.stripe();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let send = |r: Request| {
        let gate = gate.clone();
        tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            until_decided(&r, port).await
        })
    };
    // One token, its own $100 window cap; $3.33 a call.
    let (token, id) = s.issue("tight", "race/one").await;
    let mut tasks = Vec::new();
    for _ in 0..300 {
        tasks.push(send(intent(&token, "333", "usd")));
    }
    let (ok, retried) = futures_count(tasks).await;
    // $100 holds exactly 30 calls of $3.33. A call the ledger answered after the proxy had
    // stopped waiting (a loaded machine) was refused yet stays reserved, never under-counted:
    // then fewer calls went through, never more, and the spend is at the cap all the same.
    assert!(
        ok <= 30 && (retried > 0 || ok == 30),
        "{ok} calls of $3.33 in $100"
    );
    let t = s.settled(&id).await;
    assert_eq!(t["spend"]["window"].as_str(), Some("99.90"));

    // Twenty tokens racing for the policy's $250 (minus the $99.90 above).
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (tok, _) = s.issue("tight", &format!("race/many-{i}")).await;
        for _ in 0..20 {
            tasks.push(send(intent(&tok, "333", "usd")));
        }
    }
    let (granted, retried) = futures_count(tasks).await;
    assert!(
        granted <= 45 && (retried > 0 || granted == 45),
        "$150.10 left holds 45 calls of $3.33, not {granted}"
    );
    let policies = s.ledger.admin("GET", "/v1/policies", None).await.json();
    let tight = policies["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tight")
        .unwrap()
        .clone();
    assert_eq!(tight["window_spend"].as_str(), Some("249.75"), "{tight}");
}

/// Sends a costed call until the cap decides it (200, or 403 on Stripe), resending it when the ledger
/// did not answer in time (503), as an agent would; returns (status, resends).
async fn until_decided(r: &Request, port: u16) -> (u16, u32) {
    for resends in 0..40 {
        let answer = r.send(port).await;
        match (answer.status, answer.reason()) {
            (200 | 403, _) => return (answer.status, resends),
            (503, "ledger_unavailable") => tokio::time::sleep(Duration::from_millis(20)).await,
            (status, reason) => panic!("unexpected status {status} {reason}"),
        }
    }
    panic!("no decision in 40 attempts");
}

/// How many calls were granted, and how many were resent on the way.
async fn futures_count(tasks: Vec<tokio::task::JoinHandle<(u16, u32)>>) -> (usize, u32) {
    let (mut n, mut resends) = (0, 0);
    for t in tasks {
        let (status, r) = t.await.unwrap();
        n += usize::from(status == 200);
        resends += r;
    }
    (n, resends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_count_once() {
    let s = stack().await;
    let (token, id) = s.issue("pay", "acme/idem").await;
    for _ in 0..3 {
        let r = intent(&token, "1500", "usd")
            .header("idempotency-key", "order-42-attempt")
            .send(s.stripe())
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The vendor sees every retry (it answers them from its own idempotency cache); Bridle
    // counts the money once.
    assert_eq!(s.mock.count(), 3);
    assert_eq!(
        s.settled(&id).await["spend"]["window"].as_str(),
        Some("15.00")
    );
    // A new key is new spend.
    assert_eq!(
        intent(&token, "1500", "usd")
            .header("idempotency-key", "order-43")
            .send(s.stripe())
            .await
            .status,
        200
    );
    assert_eq!(
        s.settled(&id).await["spend"]["window"].as_str(),
        Some("30.00")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_outcomes_settle_the_reservation() {
    let s = stack().await;
    let (token, id) = s.issue("pay", "acme/settle").await;
    // 4xx: the vendor refused, nothing was spent.
    s.mock.reply_next(Reply::json(
        402,
        json!({"error": {"type": "card_error", "code": "card_declined"}}),
    ));
    assert_eq!(
        intent(&token, "4000", "usd").send(s.stripe()).await.status,
        402
    );
    assert_eq!(
        s.settled(&id).await["spend"]["window"].as_str(),
        Some("0.00")
    );
    // 5xx: the vendor may have acted; the reservation stays spent.
    s.mock
        .reply_next(Reply::json(500, json!({"error": {"type": "api_error"}})));
    assert_eq!(
        intent(&token, "4000", "usd").send(s.stripe()).await.status,
        500
    );
    assert_eq!(
        s.settled(&id).await["spend"]["window"].as_str(),
        Some("40.00")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_breaker_stops_a_looping_agent_in_its_first_minute() {
    let s = stack().await;
    let (token, _) = s.issue("loopy", "acme/loop").await;
    // Identical requests: two a minute.
    let same = || Request::new("GET", "/v1/charges/ch_same").bearer(&token);
    assert_eq!(same().send(s.stripe()).await.status, 200);
    assert_eq!(same().send(s.stripe()).await.status, 200);
    let r = same().send(s.stripe()).await;
    assert_eq!(
        (r.status, r.reason()),
        (429, "repeat_limited"),
        "{}",
        r.text()
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(r.header("stripe-should-retry"), Some("false"));
    // Any requests: six a minute (the three above count).
    for i in 0..3 {
        assert_eq!(
            Request::new("GET", format!("/v1/charges/ch_{i}"))
                .bearer(&token)
                .send(s.stripe())
                .await
                .status,
            200
        );
    }
    let r = Request::new("GET", "/v1/charges/ch_other")
        .bearer(&token)
        .send(s.stripe())
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (429, "rate_limited"),
        "{}",
        r.text()
    );
    // Costed calls are counted too, and never reach the ledger's reserve once stopped.
    let r = intent(&token, "100", "usd").send(s.stripe()).await;
    assert_eq!(r.status, 429);
    assert_eq!(s.mock.count(), 5);
}

/// Polls until `request` is refused, returning how long that took.
async fn refused_within(port: u16, request: &Request, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = request.send(port).await;
        if r.status == 401 {
            assert_eq!(r.reason(), "token_revoked");
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still {} after {limit:?}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_id_and_by_prefix_takes_effect_within_a_second() {
    let s = stack().await;
    let port = s.stripe();
    let (a1, _) = s.issue("pay", "acme/agent-a/run-1").await;
    let (a2, _) = s.issue("pay", "acme/agent-a/run-2").await;
    let (b1, b1_id) = s.issue("pay", "acme/agent-b/run-1").await;
    let get = |t: &str| Request::new("GET", "/v1/charges/ch_1").bearer(t);
    for t in [&a1, &a2, &b1] {
        assert_eq!(get(t).send(port).await.status, 200);
    }
    s.ledger.revoke(json!({ "token_id": b1_id })).await;
    let took = refused_within(port, &get(&b1), Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(
        get(&a1).send(port).await.status,
        200,
        "other tokens are untouched"
    );

    let out = s
        .ledger
        .revoke(json!({ "label_prefix": "acme/agent-a/" }))
        .await;
    assert_eq!(out["tokens_revoked"], 2);
    for t in [&a1, &a2] {
        let took = refused_within(port, &get(t), Duration::from_secs(1)).await;
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    // Costed calls by a revoked token are refused too (the ledger checks at reserve).
    let r = intent(&a2, "100", "usd").send(port).await;
    assert_eq!((r.status, r.reason()), (401, "token_revoked"));
    // A token issued after the prefix revocation is a new grant.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (a3, _) = s.issue("pay", "acme/agent-a/run-3").await;
    assert_eq!(get(&a3).send(port).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ledger_down_requests_fail_closed_promptly() {
    let mut s = stack().await;
    let (token, _) = s.issue("pay", "acme/down").await;
    let (chat, _) = s.issue("chat", "acme/chat").await;
    s.ledger.kill9();
    // Costed: denied at once (the callout fails fast), well under its 500 ms deadline.
    for _ in 0..5 {
        let start = Instant::now();
        let r = intent(&token, "100", "usd")
            .try_send(s.stripe(), Duration::from_secs(3))
            .await
            .expect("a costed request hung");
        assert_eq!(
            (r.status, r.reason()),
            (503, "ledger_unavailable"),
            "{}",
            r.text()
        );
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(r.header("stripe-should-retry"), Some("false"));
    }
    // Uncosted: allowed while the revocation set is fresh, then the policy decides.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let r = Request::new("GET", "/v1/charges/ch_1")
            .bearer(&token)
            .send(s.stripe())
            .await;
        if r.status == 503 {
            assert_eq!(r.reason(), "revocation_stale");
            break;
        }
        assert_eq!(r.status, 200);
        assert!(Instant::now() < deadline, "never went stale");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A policy that says `on_ledger_unavailable: allow` keeps serving uncosted calls.
    let r = Request::new("GET", "/v1/models")
        .bearer(&chat)
        .send(s.envoy.port(Vendor::Openai))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.mock
            .requests()
            .iter()
            .filter(|q| q.method == "POST")
            .count(),
        0,
        "no costed call got through"
    );
    // The ledger comes back: so does service.
    s.ledger.restart().await;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Request::new("GET", "/v1/charges/ch_1")
        .bearer(&token)
        .send(s.stripe())
        .await
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        intent(&token, "100", "usd").send(s.stripe()).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_committed_spend() {
    let mut s = stack().await;
    let (token, id) = s.issue("pay", "acme/crash").await;
    let port = s.stripe();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (token, stop) = (token.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut granted, mut refused) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = intent(&token, "10", "usd")
                    .try_send(port, Duration::from_secs(3))
                    .await
                    .expect("a request hung across the crash");
                match r.status {
                    200 => granted += 1,
                    503 | 403 => refused += 1,
                    other => panic!("status {other}: {}", r.text()),
                }
            }
            (granted, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.ledger.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.ledger.restart().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut granted, mut refused) = (0, 0);
    for w in workers {
        let (g, r) = w.await.unwrap();
        granted += g;
        refused += r;
    }
    assert!(
        granted > 20 && refused > 0,
        "granted {granted}, refused {refused}"
    );
    // Every call the agent saw succeed was reserved durably before it was forwarded: the
    // ledger's spend covers all of them ($0.10 each), and never passes the $100 cap.
    let t = s.settled(&id).await;
    let spent = bridle_core::money::Usd::parse(t["spend"]["lifetime"].as_str().unwrap())
        .unwrap()
        .micros();
    assert!(
        spent >= granted as i64 * 100_000,
        "spend ${} < {granted} granted calls",
        t["spend"]["lifetime"]
    );
    assert!(spent <= 100_000_000);
    assert_eq!(
        s.mock.count() as u64,
        granted,
        "only granted calls reached the vendor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_alerts_fire_exactly_once_per_threshold() {
    let hook = MockVendor::start().await;
    let s = stack_with(&["--alert-webhook", &format!("{}/hooks/bridle", hook.url())]).await;
    let (token, _) = s.issue("pay", "acme/alerts").await;
    for amount in ["5000", "3000", "500"] {
        assert_eq!(
            intent(&token, amount, "usd").send(s.stripe()).await.status,
            200
        ); // 50%, 80%, 85%
    }
    for _ in 0..2 {
        assert_eq!(
            intent(&token, "2000", "usd").send(s.stripe()).await.status,
            403
        ); // refused at the cap: 100%
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let window_alerts = |h: &MockVendor| -> Vec<Value> {
        h.requests()
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
            .filter(|b| b["alert"]["cap"] == "per_window")
            .collect()
    };
    while window_alerts(&hook).len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let alerts = window_alerts(&hook);
    let thresholds: Vec<u64> = alerts
        .iter()
        .map(|a| a["alert"]["threshold"].as_u64().unwrap())
        .collect();
    assert_eq!(
        thresholds.iter().filter(|t| **t == 80).count(),
        1,
        "{alerts:?}"
    );
    assert_eq!(
        thresholds.iter().filter(|t| **t == 100).count(),
        1,
        "{alerts:?}"
    );
    assert_eq!(alerts[0]["type"], "bridle.cap_alert");
    assert_eq!(alerts[0]["alert"]["label"], "acme/alerts");
    assert!(s.ledger.metrics().await.contains(
        "bridle_ledger_alerts_total{policy=\"pay\",cap=\"per_window\",threshold=\"80\"} 1"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_audited_once() {
    let s = stack().await;
    let started_ms = bridle_e2e::keys::now() * 1000 - 1000;
    let (token, _) = s.issue("pay", "acme/audit").await;
    let port = s.stripe();
    let requests: Vec<Request> = vec![
        Request::new("GET", "/v1/charges/ch_1").bearer(&token),
        intent(&token, "100", "usd"),
        Request::new("POST", "/v1/customers").bearer(&token),
        Request::new("GET", "/v1/charges/ch_1"),
        Request::new("GET", "/v1/charges/ch_1").bearer("bvt_forged.x.y"),
        intent(&token, "99999", "usd"),
        Request::new("GET", "/v1/charges/ch_1/../../customers").bearer(&token),
        Request::new("GET", "/v1/charges/ch_1%2f..%2fcustomers").bearer(&token),
    ];
    let mut statuses = Vec::new();
    for r in &requests {
        statuses.push(r.send(port).await.status);
    }
    s.ledger
        .await_audit(&format!("since_ms={started_ms}"), requests.len())
        .await;
    // Exactly once: give any duplicate time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit = s.ledger.audit(&format!("since_ms={started_ms}")).await;
    assert_eq!(audit.len(), requests.len(), "{audit:#?}");
    let mut got: Vec<u16> = audit
        .iter()
        .map(|a| a["status"].as_u64().unwrap() as u16)
        .collect();
    got.sort();
    statuses.sort();
    assert_eq!(got, statuses);
    let ids: std::collections::HashSet<&str> =
        audit.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), requests.len());
    let reasons: Vec<&str> = audit
        .iter()
        .map(|a| a["reason"].as_str().unwrap())
        .collect();
    for want in [
        "allowed",
        "endpoint_not_allowed",
        "token_missing",
        "token_malformed",
        "cap_per_transaction",
        "proxy_rejected",
    ] {
        assert!(reasons.contains(&want), "no {want} in {reasons:?}");
    }
    // What the vendor received is exactly the path the audit log says was matched.
    for (rec, got) in audit
        .iter()
        .filter(|a| a["reason"] == "allowed")
        .zip(s.mock.requests())
    {
        assert_eq!(
            rec["path"].as_str().unwrap(),
            got.path.split('?').next().unwrap()
        );
    }

    // `bridle audit | head` (and `bridle tokens | head`): the reader has gone before the CLI
    // writes a line. The CLI stops quietly with success; it used to panic on the broken pipe.
    let policies = bridle_e2e::repo_root().join("policies");
    let policies = policies.to_str().unwrap();
    for args in [
        &["audit", "--label-prefix", "acme/"][..],
        &["tokens"][..],
        &["blast-radius", "--policies", policies][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(bridle_e2e::workspace_binary("bridle"))
            .args(args)
            .args(["--ledger", &s.ledger.url()])
            .env_clear()
            .env("BRIDLE_ADMIN_KEY", ADMIN_KEY)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "bridle {args:?} into a closed pipe: {} {stderr}",
            out.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_refuses_missing_and_wrong_credentials_and_is_unreachable_through_the_proxy() {
    let s = stack().await;
    let port = s.ledger.port;
    let (vault_token, _) = s.issue("pay", "acme/keys").await;
    // Every route the ledger serves behind a key (ledger/src/api/mod.rs), with its surface.
    let routes = [
        ("POST", "/v1/tokens", ADMIN_KEY),
        ("GET", "/v1/tokens", ADMIN_KEY),
        ("GET", "/v1/tokens/tok_1", ADMIN_KEY),
        ("POST", "/v1/revocations", ADMIN_KEY),
        ("GET", "/v1/audit", ADMIN_KEY),
        ("GET", "/v1/policies", ADMIN_KEY),
        ("POST", "/v1/enforce/reserve", ENFORCER_KEY),
        ("POST", "/v1/enforce/settle", ENFORCER_KEY),
        ("POST", "/v1/enforce/report", ENFORCER_KEY),
        ("GET", "/v1/enforce/revocations", ENFORCER_KEY),
    ];
    for (method, path, key) in routes {
        let other = if key == ADMIN_KEY {
            ENFORCER_KEY
        } else {
            ADMIN_KEY
        };
        let wrong = [
            None,
            Some("Bearer wrong-key-wrong-key".to_string()),
            Some("Basic YWRtaW46YWRtaW4=".to_string()),
            Some(format!("Bearer {other}")),
            Some(format!("Bearer {vault_token}")),
            Some(format!("Bearer {key}x")),
            Some(format!("Bearer {}", &key[..key.len() - 1])),
            Some(format!("Basic {key}")),
            Some(key.to_string()),
        ];
        for auth in &wrong {
            let mut r = Request::new(method, path);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            if method == "POST" {
                r = r.json(&json!({}));
            }
            let resp = r.send(port).await;
            assert_eq!(
                (resp.status, resp.json()["error"]["code"].as_str()),
                (401, Some("unauthenticated")),
                "{method} {path} with {auth:?}: {}",
                resp.text()
            );
        }
        // Two credentials, one of them right, is still no credential.
        let resp = Request::new(method, path)
            .bearer(key)
            .bearer("wrong-key-wrong-key")
            .json(&json!({}))
            .send(port)
            .await;
        assert_eq!(resp.status, 401, "{method} {path} with two credentials");
    }
    // Neither key opens the other surface.
    assert_eq!(
        Request::new("GET", "/v1/tokens")
            .bearer(ENFORCER_KEY)
            .send(port)
            .await
            .status,
        401
    );
    assert_eq!(
        Request::new("GET", "/v1/enforce/revocations")
            .bearer(ADMIN_KEY)
            .send(port)
            .await
            .status,
        401
    );
    assert_eq!(
        Request::new("GET", "/v1/tokens")
            .bearer(ADMIN_KEY)
            .send(port)
            .await
            .status,
        200
    );
    // An agent with a vault token cannot reach the ledger through the proxy: the proxy
    // routes only to the vendor, and the policy does not allow these paths anyway.
    let (token, _) = s.issue("pay", "acme/sneaky").await;
    for (method, path) in [
        ("POST", "/v1/enforce/reserve"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/revocations"),
        ("GET", "/v1/enforce/revocations"),
    ] {
        let r: Response = Request::new(method, path)
            .bearer(&token)
            .send(s.stripe())
            .await;
        assert_eq!(
            (r.status, r.reason()),
            (403, "endpoint_not_allowed"),
            "{method} {path}"
        );
    }
    assert_eq!(s.mock.count(), 0);
}
