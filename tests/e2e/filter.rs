//! The filter in the real Envoy: allowed calls carry the vendor secret and never the vault
//! token; every denial has its status, vendor-shaped body, reason header and counter, and
//! never reaches the vendor.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bridle_core::token::SigningKey;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::{Request, Response};
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::{canary_secret, claims, now, Keys};
use bridle_e2e::mock::MockVendor;
use serde_json::json;

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";

fn all_vendor_policies() -> Vec<serde_json::Value> {
    vec![
        json!({
            "name": "stripe-payments", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
            "merchants": { "allow": ["acct_1Merchant"], "allow_unscoped": true },
            "endpoints": [
                { "method": "GET", "path": "/v1/charges/*" },
                { "method": "POST", "path": "/v1/payment_intents" },
            ],
        }),
        json!({
            "name": "stripe-readonly", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
            "merchants": { "allow": ["acct_1Merchant"] },
            "endpoints": [{ "method": "GET", "path": "/v1/charges/*" }],
        }),
        json!({
            "name": "twilio-sms", "vendor": "twilio", "secret_env": "TWILIO_API_KEY", "max_ttl": "1h",
            "merchants": { "allow": [TWILIO_SID] },
            "endpoints": [{ "method": "POST", "path": "/2010-04-01/Accounts/*/Messages.json" }],
        }),
        json!({
            "name": "resend-mail", "vendor": "resend", "secret_env": "RESEND_API_KEY", "max_ttl": "1h",
            "endpoints": [{ "method": "POST", "path": "/emails" }],
        }),
        json!({
            "name": "openai-chat", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "1h",
            "endpoints": [{ "method": "POST", "path": "/v1/chat/completions" }],
        }),
        json!({
            "name": "anthropic-messages", "vendor": "anthropic", "secret_env": "ANTHROPIC_API_KEY", "max_ttl": "1h",
            "endpoints": [{ "method": "POST", "path": "/v1/messages" }],
        }),
    ]
}

async fn start() -> (Envoy, MockVendor, Keys) {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let setup = Setup::new(policies(&all_vendor_policies()), &keys).upstream_all(&mock.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    (envoy, mock, keys)
}

/// The request each vendor's SDK would make, carrying `token` the way that SDK does.
fn vendor_call(vendor: Vendor, token: &str) -> Request {
    match vendor {
        Vendor::Stripe => Request::new("GET", "/v1/charges/ch_1")
            .bearer(token)
            .header("stripe-account", "acct_1Merchant"),
        Vendor::Twilio => Request::new(
            "POST",
            format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"),
        )
        .header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{TWILIO_SID}:{token}"))),
        )
        .form("To=%2B15551234567&From=%2B15557654321&Body=hi"),
        Vendor::Resend => Request::new("POST", "/emails").bearer(token).json(
            &json!({"to": "a@example.com", "from": "b@example.com", "subject": "s", "text": "t"}),
        ),
        Vendor::Openai => Request::new("POST", "/v1/chat/completions")
            .bearer(token)
            .json(&json!({"model": "gpt-x", "messages": []})),
        Vendor::Anthropic => Request::new("POST", "/v1/messages")
            .header("x-api-key", token)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "claude-x", "max_tokens": 1, "messages": []})),
    }
}

fn policy_of(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Stripe => "stripe-payments",
        Vendor::Twilio => "twilio-sms",
        Vendor::Resend => "resend-mail",
        Vendor::Openai => "openai-chat",
        Vendor::Anthropic => "anthropic-messages",
    }
}

/// The header the vendor's real API authenticates with, as Bridle must inject it.
fn expected_credential(vendor: Vendor) -> (&'static str, String) {
    let secret = canary_secret(vendor).1;
    match vendor {
        Vendor::Twilio => (
            "authorization",
            format!("Basic {}", STANDARD.encode(secret)),
        ),
        Vendor::Anthropic => ("x-api-key", secret.to_string()),
        _ => ("authorization", format!("Bearer {secret}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_calls_reach_the_vendor_with_the_secret_and_never_the_token() {
    let (envoy, mock, keys) = start().await;
    for vendor in Vendor::ALL {
        mock.clear();
        let token = keys.token(policy_of(vendor), vendor);
        let r = vendor_call(vendor, &token)
            .header("x-http-method-override", "DELETE")
            .header("x-method-override", "DELETE")
            .header("x-bridle-upstream", "spoofed")
            .send(envoy.port(vendor))
            .await;
        assert_eq!(r.status, 200, "{vendor}: {}", r.text());
        let got = mock.requests();
        assert_eq!(got.len(), 1, "{vendor}");
        let (name, value) = expected_credential(vendor);
        assert_eq!(
            got[0].header(name).as_deref(),
            Some(value.as_str()),
            "{vendor} secret not injected"
        );
        let everything = got[0].everything();
        assert!(
            !everything.contains("bvt_"),
            "{vendor}: the vault token reached the vendor:\n{everything}"
        );
        for stripped in [
            "x-http-method-override",
            "x-method-override",
            "x-bridle-upstream",
        ] {
            assert_eq!(
                got[0].headers_named(stripped),
                0,
                "{vendor}: {stripped} was forwarded"
            );
        }
        // Exactly one credential header reaches the vendor.
        assert_eq!(
            got[0].headers_named("authorization") + got[0].headers_named("x-api-key"),
            1,
            "{vendor}"
        );
        assert_eq!(
            envoy.counter(vendor, policy_of(vendor), "allowed").await,
            1,
            "{vendor}"
        );
        // The secret never comes back to the agent.
        assert!(
            !r.text().contains(canary_secret(vendor).1),
            "{vendor}: secret in response"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_accepts_the_bearer_form_its_sdk_sends() {
    let (envoy, mock, keys) = start().await;
    let token = keys.token("anthropic-messages", Vendor::Anthropic);
    let r = Request::new("POST", "/v1/messages")
        .bearer(&token)
        .json(&json!({"model": "m"}))
        .send(envoy.port(Vendor::Anthropic))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = &mock.requests()[0];
    assert_eq!(
        got.header("x-api-key").as_deref(),
        Some(canary_secret(Vendor::Anthropic).1)
    );
    assert_eq!(
        got.headers_named("authorization"),
        0,
        "the client's Authorization must be stripped"
    );
}

/// One row per denial reason: the request, the status and the reason it must get.
struct Case {
    name: &'static str,
    request: Request,
    status: u16,
    reason: &'static str,
    /// The policy the counter is attributed to, or `_unattributed`.
    policy: &'static str,
}

fn denial_cases(keys: &Keys) -> Vec<Case> {
    let good = keys.token("stripe-payments", Vendor::Stripe);
    let charge = |token: &str| Request::new("GET", "/v1/charges/ch_1").bearer(token);
    let with = |f: &dyn Fn(&mut bridle_core::token::Claims)| {
        let mut c = claims("stripe-payments", Vendor::Stripe);
        f(&mut c);
        keys.mint(&c)
    };
    let foreign = Keys::generate();
    let same_kid_other_key = {
        let mut k = [0u8; 32];
        k[0] = 1;
        SigningKey::from_seed(keys.ring.kid(), &k)
            .unwrap()
            .mint(&claims("stripe-payments", Vendor::Stripe))
            .unwrap()
    };
    let tampered = {
        let mut t = good.clone().into_bytes();
        let i = t.len() / 2;
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).unwrap()
    };
    vec![
        Case {
            name: "no credential",
            request: Request::new("GET", "/v1/charges/ch_1"),
            status: 401,
            reason: "token_missing",
            policy: "_unattributed",
        },
        Case {
            name: "a real vendor key",
            request: charge("sk_live_notavaulttoken"),
            status: 401,
            reason: "token_malformed",
            policy: "_unattributed",
        },
        Case {
            name: "garbage token",
            request: charge("bvt_x.y.z"),
            status: 401,
            reason: "token_malformed",
            policy: "_unattributed",
        },
        Case {
            name: "tampered token",
            request: charge(&tampered),
            status: 401,
            reason: "token_bad_signature",
            policy: "_unattributed",
        },
        Case {
            name: "forged with a guessed key",
            request: charge(&same_kid_other_key),
            status: 401,
            reason: "token_bad_signature",
            policy: "_unattributed",
        },
        Case {
            name: "unknown signing key",
            request: charge(&foreign.token("stripe-payments", Vendor::Stripe)),
            status: 401,
            reason: "token_unknown_key",
            policy: "_unattributed",
        },
        Case {
            name: "expired",
            request: charge(&with(&|c| {
                c.iat = now() - 700;
                c.exp = now() - 1;
            })),
            status: 401,
            reason: "token_expired",
            policy: "stripe-payments",
        },
        Case {
            name: "not yet valid",
            request: charge(&with(&|c| {
                c.iat = now() + 600;
                c.exp = now() + 900;
            })),
            status: 401,
            reason: "token_not_yet_valid",
            policy: "stripe-payments",
        },
        Case {
            name: "ttl beyond policy",
            request: charge(&with(&|c| c.exp = c.iat + 7200)),
            status: 401,
            reason: "token_ttl_too_long",
            policy: "stripe-payments",
        },
        Case {
            name: "unknown policy",
            request: charge(&with(&|c| c.policy = "gone".into())),
            status: 401,
            reason: "token_policy_unknown",
            policy: "_unattributed",
        },
        Case {
            name: "another vendor's token",
            request: charge(&keys.token("openai-chat", Vendor::Openai)),
            status: 401,
            reason: "token_wrong_vendor",
            policy: "_unattributed",
        },
        Case {
            name: "x-api-key on stripe",
            request: Request::new("GET", "/v1/charges/ch_1").header("x-api-key", &good),
            status: 401,
            reason: "credential_scheme",
            policy: "stripe-payments",
        },
        Case {
            name: "digest scheme",
            request: Request::new("GET", "/v1/charges/ch_1").header("authorization", "Digest x"),
            status: 401,
            reason: "credential_scheme",
            policy: "_unattributed",
        },
        Case {
            name: "two authorization headers",
            request: charge(&good).bearer(&good),
            status: 400,
            reason: "credential_ambiguous",
            policy: "_unattributed",
        },
        Case {
            name: "authorization and x-api-key",
            request: charge(&good).header("x-api-key", &good),
            status: 400,
            reason: "credential_ambiguous",
            policy: "_unattributed",
        },
        Case {
            name: "token in the query",
            request: Request::new("GET", format!("/v1/charges/ch_1?k={good}")).bearer(&good),
            status: 400,
            reason: "credential_ambiguous",
            policy: "stripe-payments",
        },
        Case {
            name: "endpoint outside policy",
            request: Request::new("POST", "/v1/refunds").bearer(&good),
            status: 403,
            reason: "endpoint_not_allowed",
            policy: "stripe-payments",
        },
        Case {
            name: "method outside policy",
            request: Request::new("DELETE", "/v1/charges/ch_1").bearer(&good),
            status: 403,
            reason: "endpoint_not_allowed",
            policy: "stripe-payments",
        },
        Case {
            name: "endpoint outside token",
            request: charge(&with(&|c| {
                c.endpoints = Some(vec!["POST /v1/payment_intents".into()])
            })),
            status: 403,
            reason: "endpoint_not_allowed",
            policy: "stripe-payments",
        },
        Case {
            name: "merchant outside policy",
            request: charge(&good).header("stripe-account", "acct_9Other"),
            status: 403,
            reason: "merchant_not_allowed",
            policy: "stripe-payments",
        },
        Case {
            name: "merchant outside token",
            request: charge(&with(&|c| {
                c.merchants = Some(vec!["acct_1Merchant".into()])
            })),
            status: 403,
            reason: "merchant_not_allowed",
            policy: "stripe-payments",
        },
        Case {
            name: "two merchants",
            request: charge(&good)
                .header("stripe-account", "acct_1Merchant")
                .header("stripe-account", "acct_1Merchant"),
            status: 400,
            reason: "merchant_ambiguous",
            policy: "stripe-payments",
        },
        Case {
            name: "stripe-context",
            request: charge(&good).header("stripe-context", "acct_1Merchant"),
            status: 403,
            reason: "header_not_allowed",
            policy: "stripe-payments",
        },
        Case {
            name: "read-only policy posting",
            request: Request::new("POST", "/v1/payment_intents")
                .bearer(&keys.token("stripe-readonly", Vendor::Stripe))
                .header("stripe-account", "acct_1Merchant"),
            status: 403,
            reason: "endpoint_not_allowed",
            policy: "stripe-readonly",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_has_its_status_body_reason_and_counter_and_never_reaches_the_vendor() {
    let (envoy, mock, keys) = start().await;
    let port = envoy.port(Vendor::Stripe);
    for case in denial_cases(&keys) {
        let before = envoy
            .counter(Vendor::Stripe, case.policy, case.reason)
            .await;
        let r: Response = case.request.send(port).await;
        assert_eq!(
            (r.status, r.reason()),
            (case.status, case.reason),
            "{}: {}",
            case.name,
            r.text()
        );
        // Stripe's own error shape, so stripe-python raises a typed exception.
        let body = r.json();
        assert_eq!(body["error"]["code"], case.reason, "{}", case.name);
        assert!(
            body["error"]["type"].is_string()
                && body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(case.reason),
            "{}: {body}",
            case.name
        );
        assert_eq!(
            r.header("stripe-should-retry"),
            Some("false"),
            "{}",
            case.name
        );
        assert_eq!(r.header("x-should-retry"), Some("false"), "{}", case.name);
        assert_eq!(
            envoy
                .counter(Vendor::Stripe, case.policy, case.reason)
                .await,
            before + 1,
            "{}: counter",
            case.name
        );
        assert!(!r.text().contains(canary_secret(Vendor::Stripe).1));
    }
    assert_eq!(
        mock.count(),
        0,
        "a denied request reached the vendor: {:?}",
        mock.requests().first().map(|r| r.everything())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_speak_each_vendors_error_format() {
    let (envoy, mock, keys) = start().await;
    for vendor in Vendor::ALL {
        // A valid token for the wrong endpoint: 403 endpoint_not_allowed on every vendor.
        let token = keys.token(policy_of(vendor), vendor);
        let mut req = vendor_call(vendor, &token);
        req.path = b"/v9/not-allowed".to_vec();
        let r = req.send(envoy.port(vendor)).await;
        assert_eq!(
            (r.status, r.reason()),
            (403, "endpoint_not_allowed"),
            "{vendor}: {}",
            r.text()
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        let b = r.json();
        match vendor {
            Vendor::Stripe => assert_eq!(b["error"]["type"], "invalid_request_error"),
            Vendor::Openai => assert_eq!(b["error"]["code"], "endpoint_not_allowed"),
            Vendor::Anthropic => {
                assert_eq!(b["type"], "error");
                assert_eq!(b["error"]["type"], "permission_error");
            }
            Vendor::Twilio => assert_eq!(
                (b["code"].as_u64(), b["status"].as_u64()),
                (Some(20403), Some(403))
            ),
            Vendor::Resend => assert_eq!(
                (b["statusCode"].as_u64(), b["name"].as_str()),
                (Some(403), Some("endpoint_not_allowed"))
            ),
        }
        // A missing token is refused in the vendor's format too: the listener knows its vendor.
        let mut bare = vendor_call(vendor, "");
        bare.headers
            .retain(|(n, _)| n != "authorization" && n != "x-api-key");
        let r = bare.send(envoy.port(vendor)).await;
        assert_eq!((r.status, r.reason()), (401, "token_missing"), "{vendor}");
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_bytes_do_not_crash_the_filter() {
    let (envoy, mock, keys) = start().await;
    let port = envoy.port(Vendor::Stripe);
    let token = keys.token("stripe-payments", Vendor::Stripe);
    for value in [&b"caf\xe9\xff"[..], b"\x80\x81", b"Bearer \xff\xfe"] {
        let r = Request::new("GET", "/v1/charges/ch_1")
            .header("authorization", value)
            .send(port)
            .await;
        assert_eq!(
            (r.status, r.reason()),
            (401, "token_malformed"),
            "{}",
            r.text()
        );
        let r = Request::new("GET", "/v1/charges/ch_1")
            .bearer(&token)
            .header("x-note", value)
            .send(port)
            .await;
        assert_eq!(
            r.status,
            200,
            "a non-UTF-8 header elsewhere is forwarded untouched: {}",
            r.text()
        );
    }
    // The VM is still healthy: an ordinary request works and Envoy's wasm stats show no crash.
    assert_eq!(
        Request::new("GET", "/v1/charges/ch_1")
            .bearer(&token)
            .send(port)
            .await
            .status,
        200
    );
    assert_eq!(mock.count(), 4);
    let crashes: u64 = envoy.stats("wasm\\..*(crash|failed)").await.values().sum();
    assert_eq!(crashes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_tokens_never_reach_the_vendor() {
    let (envoy, mock, keys) = start().await;
    let port = envoy.port(Vendor::Stripe);
    let token = keys.token("stripe-payments", Vendor::Stripe);
    let bytes = token.as_bytes();
    // Every position, one flip each: a representative sweep through the whole proxy (the
    // unit tests flip every bit of every byte).
    let mut tried = 0;
    for i in 0..bytes.len() {
        let mut t = bytes.to_vec();
        t[i] = match t[i] {
            b'a'..=b'y' | b'A'..=b'Y' | b'0'..=b'8' => t[i] + 1,
            _ => b'a',
        };
        if t == bytes {
            continue;
        }
        let r = Request::new("GET", "/v1/charges/ch_1")
            .header("authorization", [b"Bearer ".as_slice(), &t].concat())
            .send(port)
            .await;
        assert_eq!(
            r.status,
            401,
            "flipping byte {i} gave {}: {}",
            r.status,
            r.text()
        );
        tried += 1;
    }
    assert!(tried > 200, "only {tried} variants");
    assert_eq!(mock.count(), 0);
}
