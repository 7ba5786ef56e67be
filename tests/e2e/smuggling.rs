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

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bridle_core::money::Usd;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::{self, Request, Response};
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::h2c;
use bridle_e2e::keys::Keys;
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::{MockVendor, Recorded, Reply};
use serde_json::{json, Value};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const MESSAGES: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";

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

fn twilio(name: &str, prices: Value) -> Value {
    let mut cost = json!({ "fixed": "0.0079", "per": "sms_segment" });
    for (k, v) in prices.as_object().unwrap() {
        cost[k] = v.clone();
    }
    json!({
        "name": name, "vendor": "twilio", "secret_env": "TWILIO_API_KEY", "max_ttl": "1h",
        "merchants": { "allow": [SID] },
        "endpoints": [{ "method": "POST", "path": "/2010-04-01/Accounts/*/Messages.json", "cost": cost }],
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

/// A message sent with the token as Twilio's SDKs present a key: Basic `<AccountSid>:<key>`.
fn message(token: &str) -> Request {
    Request::new("POST", MESSAGES).header(
        "authorization",
        format!("Basic {}", STANDARD.encode(format!("{SID}:{token}"))),
    )
}

fn refused(r: &Response, status: u16, reason: &str, case: &str) {
    assert_eq!(
        (r.status, r.reason()),
        (status, reason),
        "{case}: {}",
        r.text()
    );
}

/// `s` with every byte percent-encoded, as a query or form body may carry it.
fn percent(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Whether anything the vendor received holds the token, as is or percent-encoded.
fn reached_vendor(got: &[Recorded], token: &str) -> bool {
    let encoded = percent(token).to_ascii_lowercase();
    got.iter().any(|r| {
        let all = r.everything();
        all.contains("bvt_") || all.to_ascii_lowercase().contains(&encoded)
    })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_token_never_reaches_the_vendor() {
    let s = stack(&[stripe_pay()]).await;
    let (token, _) = s.issue("pay").await;
    let port = s.stripe();
    let encoded = percent(&token);
    // In the query or another header, percent-encoded: the vendor would decode it.
    let r = Request::new("GET", format!("/v1/charges/ch_1?note={encoded}"))
        .bearer(&token)
        .send(port)
        .await;
    refused(&r, 400, "credential_ambiguous", "query");
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&token)
        .header("x-note", format!("%62vt{}", &token[3..]))
        .send(port)
        .await;
    refused(&r, 400, "credential_ambiguous", "header");
    // In a body Bridle reads to price it.
    for body in [
        format!("amount=100&currency=usd&description={token}"),
        format!("amount=100&currency=usd&description={encoded}"),
    ] {
        let r = intent(&token, &body).send(port).await;
        refused(&r, 400, "credential_ambiguous", "costed body");
    }
    assert_eq!(s.mock.count(), 0, "{:#?}", s.mock.requests());

    // In a body that streams through: HTTP/1.1 chunks, the token cut across two of them.
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
             content-type: application/x-www-form-urlencoded\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .into_bytes()
    };
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len()).into_bytes();
    let (first, second) = token.split_at(6);
    let pieces = vec![
        head("/v1/customers"),
        chunk("name=Ada&note=hello+"),
        chunk(first),
        chunk(second),
        chunk("&city=Paris"),
        b"0\r\n\r\n".to_vec(),
    ];
    let r = client::send_raw(port, &pieces, Duration::from_millis(40))
        .await
        .unwrap();
    refused(&r, 400, "credential_ambiguous", "streamed body");
    // The same over HTTP/2, percent-encoded, split inside an escape.
    let (first, second) = encoded.split_at(13);
    let r = h2c::Request::new("POST", "/v1/customers")
        .bearer(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .piece("name=Ada&note=")
        .piece(first)
        .piece(second)
        .piece("&city=Paris")
        .send(port)
        .await;
    refused(&r, 400, "credential_ambiguous", "streamed body over HTTP/2");
    assert!(
        !reached_vendor(&s.mock.requests(), &token),
        "{:#?}",
        s.mock.requests()
    );

    // A clean body streams through whole, a piece that ends like a token's start included.
    s.mock.clear();
    let pieces = vec![
        head("/v1/customers"),
        chunk("name=Ada&note=hello+bv"),
        chunk("x&city=Paris"),
        b"0\r\n\r\n".to_vec(),
    ];
    let r = client::send_raw(port, &pieces, Duration::from_millis(40))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.mock.requests()[0].body,
        b"name=Ada&note=hello+bvx&city=Paris"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_are_read_whole_and_trailers_never_skip_the_decision() {
    let s = stack(&[stripe_pay()]).await;
    let (token, id) = s.issue("pay").await;
    let port = s.stripe();
    let costed = || {
        h2c::Request::new("POST", "/v1/payment_intents")
            .bearer(&token)
            .header("content-type", "application/x-www-form-urlencoded")
    };
    // A costed body in pieces, one DATA frame each: priced on the whole of it.
    let r = costed()
        .piece("amou")
        .piece("nt=300&cur")
        .piece("rency=usd")
        .send(port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.mock.requests()[0].body, b"amount=300&currency=usd");
    assert_eq!(s.spent(&id).await, Usd::parse("3").unwrap());
    // The same with trailers: refused where it is held, before any reservation, and never
    // resumed by Envoy without a decision.
    let r = costed()
        .piece("amount=100&currency=usd")
        .trailer("x-amount", "9999999")
        .send(port)
        .await;
    refused(&r, 400, "trailers_not_allowed", "costed, with trailers");
    // Over the window cap ($5 with $3 spent) and ended by trailers: refused all the same.
    let r = costed()
        .piece("amount=450&currency=usd")
        .trailer("x-note", "1")
        .send(port)
        .await;
    refused(
        &r,
        400,
        "trailers_not_allowed",
        "over the cap, with trailers",
    );
    // A free call whose body streams, then trailers: stopped there.
    let r = h2c::Request::new("POST", "/v1/customers")
        .bearer(&token)
        .piece("name=Ada")
        .trailer("x-note", "1")
        .send(port)
        .await;
    refused(&r, 400, "trailers_not_allowed", "free, with trailers");
    let got = s.mock.requests();
    assert_eq!(
        got.iter()
            .filter(|r| r.path == "/v1/payment_intents")
            .count(),
        1,
        "only the first costed call reached the vendor: {got:#?}"
    );
    assert_eq!(s.spent(&id).await, Usd::parse("3").unwrap());
    // A plain HTTP/2 call works.
    let r = h2c::Request::new("GET", "/v1/charges/ch_1")
        .bearer(&token)
        .send(port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_media_and_templates_are_priced_by_the_policy() {
    let s = stack(&[
        twilio("sms", json!({})),
        twilio("mms", json!({ "mms": "0.02", "template": "0.05" })),
    ])
    .await;
    let port = s.envoy.port(Vendor::Twilio);
    let send = |token: &str, body: &str| message(token).form(body);
    let mms =
        "To=%2B15551234567&From=%2B15557654321&Body=hi&MediaUrl=https%3A%2F%2Fexample.com%2Fa.png";
    let template = "To=%2B15551234567&From=%2B15557654321&ContentSid=HX0123";
    let as_mms = "To=%2B15551234567&From=%2B15557654321&Body=hi&SendAsMms=true";
    // A policy that prices SMS segments only: none of these is one segment.
    let (sms, sms_id) = s.issue("sms").await;
    for body in [
        mms,
        template,
        as_mms,
        "To=whatsapp%3A%2B15551234567&Body=hi",
    ] {
        let r = send(&sms, body).send(port).await;
        refused(&r, 400, "cost_undetermined", body);
    }
    assert_eq!(s.mock.count(), 0);
    assert_eq!(s.spent(&sms_id).await, Usd::ZERO);
    // A policy with their own prices: reserved and committed at those.
    let (priced, priced_id) = s.issue("mms").await;
    for body in [mms, template] {
        let r = send(&priced, body).send(port).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text());
    }
    assert_eq!(s.spent(&priced_id).await, Usd::parse("0.07").unwrap());
    assert_eq!(s.mock.count(), 2);
}

/// A body sent without a content type that reads as JSON is read by Bridle as JSON; Twilio
/// reads its API's bodies as forms. A JSON string can hide `&ContentSid=...` (or `MediaUrl`,
/// `SendAsMms`) that only the form reading names: which message goes, a template or an MMS
/// or a plain SMS of however many segments, and so its price, would be a guess. Refused;
/// the same bytes declared as JSON, and a form that names nothing special, are plain SMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_kind_named_only_by_the_form_reading_is_refused() {
    let s = stack(&[twilio("mms", json!({ "mms": "0.02", "template": "0.05" }))]).await;
    let port = s.envoy.port(Vendor::Twilio);
    let (token, id) = s.issue("mms").await;
    let json_body = |field: &str| {
        format!(r#"{{"To":"+15551234567","From":"+15557654321","Body":"hi&{field}=HX0123"}}"#)
    };
    for field in ["ContentSid", "MediaUrl", "SendAsMms"] {
        let r = message(&token).body(json_body(field)).send(port).await;
        refused(&r, 400, "cost_undetermined", field);
        let b = r.json();
        assert_eq!(
            (
                b["code"].as_u64(),
                b["status"].as_u64(),
                b["more_info"].as_str()
            ),
            (Some(21000), Some(400), Some("bridle:cost_undetermined")),
            "{field}: {b}"
        );
        let text = b["message"].as_str().unwrap();
        assert!(
            text.contains(&format!(
                "{field} is named only when the body is read as a form"
            )) && text.ends_with("[cost_undetermined]"),
            "{field}: {text}"
        );
    }
    assert_eq!(s.mock.count(), 0, "{:#?}", s.mock.requests());
    assert_eq!(s.spent(&id).await, Usd::ZERO);

    // The refusal is specific: the same bytes declared as JSON, and a form that names no
    // template or media, are one SMS segment each, priced and sent.
    let r = message(&token)
        .header("content-type", "application/json")
        .body(json_body("ContentSid"))
        .send(port)
        .await;
    assert_eq!(r.status, 200, "declared JSON: {}", r.text());
    let r = message(&token)
        .form("To=%2B15551234567&From=%2B15557654321&Body=hi%26ContentSid%3DHX0123")
        .send(port)
        .await;
    assert_eq!(r.status, 200, "form: {}", r.text());
    let segment = Usd::parse("0.0079").unwrap();
    assert_eq!(s.spent(&id).await, segment.checked_add(segment).unwrap());
    assert_eq!(s.mock.count(), 2);

    // The ledger saw three refusals that cost nothing and two segments.
    let audit = s.ledger.await_audit(&format!("token_id={id}"), 5).await;
    let mut outcomes: Vec<(Option<u64>, Option<&str>, Option<&str>)> = audit
        .iter()
        .map(|a| {
            (
                a["status"].as_u64(),
                a["reason"].as_str(),
                a["cost"].as_str(),
            )
        })
        .collect();
    outcomes.sort();
    let refusal = (Some(400), Some("cost_undetermined"), None);
    let sent = (Some(200), Some("allowed"), Some("0.0079"));
    assert_eq!(
        outcomes,
        vec![sent, sent, refusal, refusal, refusal],
        "{audit:#?}"
    );
    assert_eq!(
        s.envoy
            .counter(Vendor::Twilio, "mms", "cost_undetermined")
            .await,
        3
    );
}

/// A rule that prices `amount` in a fixed currency ("the amounts here are US cents") is not
/// what Stripe reads: Stripe charges in the body's own `currency`. `amount=400&currency=gbp`
/// was priced $4.00 and reserved under a $5 window cap while Stripe charged £4.00
/// (about $5, a fifth more: a pound is dearer than a dollar, as a euro or a Swiss franc is).
/// A body that names another currency than the rule's, or names one ambiguously, is
/// refused before anything is reserved; one that names the rule's is priced as before.
/// The same holds for a nested amount, which Stripe charges in the currency beside it
/// (`line_items[0][price_data][currency]`), whatever the top-level `currency` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_currency_is_the_currency_the_vendor_reads() {
    let mut usd = stripe_pay();
    usd["name"] = json!("usd");
    usd["endpoints"][0]["cost"] = json!({ "amount": { "field": "amount", "currency": "usd" } });
    usd["lease"] = json!({ "calls": 4, "max_age_ms": 1000 });
    let mut nested = stripe_pay();
    nested["name"] = json!("nested");
    nested["endpoints"][0]["cost"] = json!({
        "amount": { "field": "line_items[0][price_data][unit_amount]", "currency_field": "currency" }
    });
    let s = stack(&[usd, nested]).await;
    let (token, id) = s.issue("usd").await;
    let port = s.stripe();
    for body in [
        "amount=400&currency=gbp",
        "amount=400&currency=EUR",
        "amount=400&currency=usd&currency=gbp",
        "amount=400&currency[]=gbp",
        "amount=400&currency[x]=usd",
    ] {
        let r = intent(&token, body).send(port).await;
        refused(&r, 400, "cost_undetermined", body);
    }
    assert_eq!(s.mock.count(), 0, "{:#?}", s.mock.requests());
    for body in ["amount=400&currency=usd", "amount=100&currency=USD"] {
        let r = intent(&token, body).send(port).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text());
    }
    assert_eq!(s.mock.count(), 2);
    assert_eq!(s.spent(&id).await, Usd::parse("5").unwrap());

    let (token, id) = s.issue("nested").await;
    let item = "line_items[0][price_data][unit_amount]=400&line_items[0][price_data][currency]";
    let body = format!("currency=usd&{item}=gbp");
    refused(
        &intent(&token, &body).send(port).await,
        400,
        "cost_undetermined",
        &body,
    );
    assert_eq!(s.mock.count(), 2, "{:#?}", s.mock.requests());
    let body = format!("currency=usd&{item}=usd");
    let r = intent(&token, &body).send(port).await;
    assert_eq!(r.status, 200, "{body}: {}", r.text());
    assert_eq!(s.mock.count(), 3);
    assert_eq!(s.spent(&id).await, Usd::parse("4").unwrap());
}
