//! Hostile input through the real Envoy: oversized and malformed tokens, headers and bodies.
//! Each gets a clear 4xx, nothing reaches the vendor, the VM never crashes, and Envoy's memory
//! stays bounded however often it is tried.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::{Request, Response};
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::Keys;
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::MockVendor;
use serde_json::{json, Value};

fn stripe_policy() -> Value {
    json!({
        "name": "pay", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "4h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [
            { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
            { "method": "GET", "path": "/v1/charges/*" },
        ],
        "caps": { "per_transaction": "50", "per_window": "100", "window": "1h" },
    })
}

struct Stack {
    _ledger: Ledger,
    envoy: Envoy,
    mock: MockVendor,
    token: String,
}

async fn stack() -> Stack {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let ps = policies(&[stripe_policy()]);
    let ledger = Ledger::start(&ps, &keys).await;
    let mut setup = Setup::new(ps, &keys).upstream_all(&mock.url());
    setup.ledger = Some(ledger.url());
    setup.concurrency = 1;
    let envoy = Envoy::start(&setup).await.unwrap();
    let token = keys.token("pay", Vendor::Stripe);
    Stack {
        _ledger: ledger,
        envoy,
        mock,
        token,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// A clear refusal: a 4xx, and when Bridle refused it, a vendor-shaped JSON body.
fn assert_clear_4xx(r: &Response, what: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: {} {}",
        r.status,
        r.text()
    );
    if !r.reason().is_empty() {
        let body = r.json();
        assert!(
            body["error"]["message"].is_string(),
            "{what}: not a Stripe-shaped error: {}",
            r.text()
        );
    }
}

async fn no_vm_crash(envoy: &Envoy) {
    let crashes: u64 = envoy.stats("wasm\\..*(crash|failed)").await.values().sum();
    assert_eq!(crashes, 0, "the Wasm VM crashed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_tokens_are_refused_with_401() {
    let s = stack().await;
    let port = s.envoy.port(Vendor::Stripe);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (head, rest) = s.token.split_once('.').unwrap();
    let (claims, sig) = rest.split_once('.').unwrap();
    let nested = format!("{}1{}", "[".repeat(20_000), "]".repeat(20_000));
    let huge_claims = b64.encode(format!(
        r#"{{"v":1,"id":"tok_x","policy":"pay","vendor":"stripe","iat":0,"exp":9999999999,"label":"{}"}}"#,
        "a".repeat(30_000)
    ));
    let tokens: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("prefix only", "bvt_".into()),
        ("dots", "bvt_..".into()),
        ("too many parts", format!("{}.x", s.token)),
        (
            "short signature",
            format!("{head}.{claims}.{}", &sig[..sig.len() / 2]),
        ),
        ("padded signature", format!("{}==", s.token)),
        ("claims not base64", format!("{head}.!!!!.{sig}")),
        (
            "claims nested 20k deep",
            format!("{head}.{}.{sig}", b64.encode(&nested)),
        ),
        ("claims of 40 KB", format!("{head}.{huge_claims}.{sig}")),
        ("40 KB of junk", format!("bvt_{}", "A".repeat(40_000))),
        ("a space inside", format!("{head}. {claims}.{sig}")),
        ("a vendor key instead", "sk_live_51Habc".into()),
    ];
    for (what, token) in &tokens {
        let r = Request::new("GET", "/v1/charges/ch_1")
            .bearer(token)
            .send(port)
            .await;
        assert_clear_4xx(&r, what);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
    }
    // Basic with a hostile user name, and a bearer scheme with nothing after it.
    for value in [
        format!("Basic {}", b64.encode(format!("{}:", "x".repeat(30_000)))),
        "Basic %%%".to_string(),
        "Bearer".to_string(),
        "Bearer ".repeat(1000),
    ] {
        let r = Request::new("GET", "/v1/charges/ch_1")
            .header("authorization", &value)
            .send(port)
            .await;
        assert_clear_4xx(&r, &value[..value.len().min(20)]);
    }
    assert_eq!(s.mock.count(), 0);
    no_vm_crash(&s.envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_before_they_reach_anyone() {
    let s = stack().await;
    let port = s.envoy.port(Vendor::Stripe);
    let big = "a".repeat(1 << 20);
    let cases = [
        (
            "a 1 MiB header",
            Request::new("GET", "/v1/charges/ch_1")
                .bearer(&s.token)
                .header("x-note", &big),
        ),
        (
            "a 1 MiB token",
            Request::new("GET", "/v1/charges/ch_1").bearer(&format!("bvt_{big}")),
        ),
        (
            "a 1 MiB path",
            Request::new("GET", format!("/v1/charges/{big}")).bearer(&s.token),
        ),
        ("500 headers", {
            let mut r = Request::new("GET", "/v1/charges/ch_1").bearer(&s.token);
            for i in 0..500 {
                r = r.header(&format!("x-h{i}"), "v");
            }
            r
        }),
    ];
    for (what, request) in cases {
        // Envoy answers 431 (or 413/414) and may close the connection while the rest of the
        // request is still being written: a reset is also a refusal, never a hang.
        match request
            .try_send(port, std::time::Duration::from_secs(10))
            .await
        {
            Ok(r) => assert_clear_4xx(&r, what),
            Err(e) => assert!(!e.contains("no answer"), "{what}: {e}"),
        }
    }
    assert_eq!(s.mock.count(), 0);
    // Envoy and the filter are unharmed.
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&s.token)
        .send(port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    no_vm_crash(&s.envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_on_a_costed_endpoint_get_a_4xx_and_memory_stays_bounded() {
    let s = stack().await;
    let port = s.envoy.port(Vendor::Stripe);
    let ten_mib = format!("amount=100&currency=usd&note={}", "x".repeat(10 << 20));
    let nested = format!(
        r#"{{"amount":100,"currency":"usd","metadata":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let many_fields: String = (0..20_000)
        .map(|i| format!("f{i}=v"))
        .collect::<Vec<_>>()
        .join("&");
    let many_amounts: String = (0..5_000)
        .map(|i| format!("amount={i}"))
        .collect::<Vec<_>>()
        .join("&")
        + "&currency=usd";
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "a 10 MiB body",
            form,
            ten_mib.into_bytes(),
            "body_too_large",
        ),
        (
            "JSON nested 100k deep",
            "application/json",
            nested.into_bytes(),
            "",
        ),
        (
            "20,000 form fields, no amount",
            form,
            many_fields.into_bytes(),
            "",
        ),
        ("5,000 amount fields", form, many_amounts.into_bytes(), ""),
        (
            "non-UTF-8 form",
            form,
            b"amount=1\xff\xfe00&currency=us\xc3d".to_vec(),
            "",
        ),
        (
            "truncated JSON",
            "application/json",
            br#"{"amount": 10"#.to_vec(),
            "",
        ),
        (
            "an amount of 10^30",
            form,
            b"amount=1000000000000000000000000000000&currency=usd".to_vec(),
            "",
        ),
        (
            "a negative amount",
            form,
            b"amount=-500&currency=usd".to_vec(),
            "",
        ),
        (
            "an unknown currency",
            form,
            b"amount=500&currency=zzz".to_vec(),
            "",
        ),
    ];
    let before = rss_kib(s.envoy.pid());
    // Several rounds: a leak or an unbounded buffer grows with each one.
    for round in 0..5 {
        for (what, content_type, body, reason) in &cases {
            let r = Request::new("POST", "/v1/payment_intents")
                .bearer(&s.token)
                .header("content-type", content_type)
                .body(body)
                .send(port)
                .await;
            assert_clear_4xx(&r, what);
            if *reason == "body_too_large" {
                // Bridle's 413, or Envoy's own when its buffer limit trips first.
                assert_eq!(r.status, 413, "{what}: {}", r.text());
                assert!(
                    ["body_too_large", ""].contains(&r.reason()),
                    "{what}: {}",
                    r.reason()
                );
            }
            if *reason == "body_unreadable" {
                assert_eq!((r.status, r.reason()), (400, *reason), "{what}");
            }
            if round == 0 {
                println!("{what}: {} {}", r.status, r.reason());
            }
        }
    }
    let after = rss_kib(s.envoy.pid());
    assert_eq!(s.mock.count(), 0, "a hostile body reached the vendor");
    // Five rounds moved 50 MiB of 10 MiB bodies alone through Envoy; the filter buffers at
    // most 1 MiB per request, so growth stays far below that.
    assert!(
        after < before + 48 * 1024,
        "Envoy grew from {before} KiB to {after} KiB"
    );
    // The ordinary costed call still works.
    let r = Request::new("POST", "/v1/payment_intents")
        .bearer(&s.token)
        .form("amount=100&currency=usd")
        .send(port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    no_vm_crash(&s.envoy).await;
}
