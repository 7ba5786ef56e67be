//! The official SDKs (stripe, twilio, resend, openai, anthropic, at the versions pinned in
//! tests/sdk/requirements.txt) through the real Envoy with the built filter and the real
//! ledger, configured exactly as README.md tells users to.
//!
//! Each vendor's script (tests/sdk/<vendor>_sdk.py) runs with a clean environment and prints
//! one JSON object: what an allowed call returned, and which exception class each refusal
//! raised, with its message. Here we check that:
//! - the allowed calls parse into the SDK's result objects, and the vendor (the mock) got
//!   the real secret and never a vault token;
//! - each refusal raises the SDK's own class for its status, with Bridle's reason code in
//!   `str(e)`, and never reaches the vendor;
//! - no SDK retries a refusal, even those that retry 429 and 5xx by default: Envoy's counter
//!   for the reason moves by exactly one per call the script made.
//!
//! The last test runs README.md's walkthrough snippet as written against the repo's own
//! `policies/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use bridle_core::policy::CompiledPolicy;
use bridle_core::vendor::Vendor;
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::{canary_secret, Keys};
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::{MockVendor, Recorded};
use bridle_e2e::python::{self, assert_version, run_script};
use bridle_e2e::repo_root;
use serde_json::{json, Value};

const STRIPE_MERCHANT: &str = "acct_1SdkMerchant";
const STRIPE_OTHER_MERCHANT: &str = "acct_1SdkStranger";
const TWILIO_SID: &str = "AC5d4c3b2a10fedcba9876543210fedcba";
const TWILIO_OTHER_SID: &str = "AC00000000000000000000000000000bad";
/// Every test policy's loop breaker lets the same request through this often a minute.
const IDENTICAL_PER_MINUTE: u64 = 2;
/// The Resend SDK sends its GETs with a `{}` body, which Bridle does not read for uncosted
/// calls, so only the request rate can stop a loop of them: this many a minute per token.
const RESEND_PER_MINUTE: u64 = 4;

fn loop_breaker() -> Value {
    json!({ "max_requests_per_minute": 60, "max_identical_per_minute": IDENTICAL_PER_MINUTE })
}

fn stripe_policy() -> Value {
    json!({
        "name": "sdk-stripe", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
        "merchants": { "allow": [STRIPE_MERCHANT], "allow_unscoped": false },
        "endpoints": [
            { "method": "POST", "path": "/v1/payment_intents", "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
            { "method": "GET", "path": "/v1/payment_intents/*" },
            { "method": "GET", "path": "/v1/charges/*" },
        ],
        "caps": { "per_transaction": "50.00", "per_window": "1000.00", "window": "24h" },
        "loop_breaker": loop_breaker(),
    })
}

fn twilio_policy() -> Value {
    json!({
        "name": "sdk-twilio", "vendor": "twilio", "secret_env": "TWILIO_API_KEY", "max_ttl": "1h",
        "merchants": { "allow": [TWILIO_SID] },
        "endpoints": [
            { "method": "POST", "path": "/2010-04-01/Accounts/*/Messages.json", "cost": { "fixed": "0.0079", "per": "sms_segment" } },
            { "method": "GET", "path": "/2010-04-01/Accounts/*/Messages/*" },
        ],
        // Two segments ($0.0158) pass; three ($0.0237) do not.
        "caps": { "per_transaction": "0.02" },
        "loop_breaker": loop_breaker(),
    })
}

fn resend_policy() -> Value {
    json!({
        "name": "sdk-resend", "vendor": "resend", "secret_env": "RESEND_API_KEY", "max_ttl": "1h",
        "endpoints": [
            { "method": "POST", "path": "/emails", "cost": { "fixed": "0.001", "per": "recipient" } },
            { "method": "GET", "path": "/emails/*" },
        ],
        // Three recipients pass; four do not.
        "caps": { "per_transaction": "0.003" },
        "loop_breaker": { "max_requests_per_minute": RESEND_PER_MINUTE, "max_identical_per_minute": IDENTICAL_PER_MINUTE },
    })
}

fn openai_policy() -> Value {
    json!({
        "name": "sdk-openai", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "1h",
        "endpoints": [
            { "method": "POST", "path": "/v1/chat/completions", "cost": { "max": "0.05" } },
            { "method": "GET", "path": "/v1/models" },
        ],
        "caps": { "per_window": "5.00", "window": "24h" },
        "loop_breaker": loop_breaker(),
    })
}

fn anthropic_policy() -> Value {
    json!({
        "name": "sdk-anthropic", "vendor": "anthropic", "secret_env": "ANTHROPIC_API_KEY", "max_ttl": "1h",
        "endpoints": [
            { "method": "POST", "path": "/v1/messages", "cost": { "max": "0.08" } },
            { "method": "POST", "path": "/v1/messages/count_tokens" },
        ],
        "caps": { "per_window": "10.00", "window": "24h" },
        "loop_breaker": loop_breaker(),
    })
}

struct Stack {
    ledger: Ledger,
    envoy: Envoy,
    mock: MockVendor,
}

async fn start(ps: Vec<CompiledPolicy>) -> Stack {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let ledger = Ledger::start(&ps, &keys).await;
    let mut setup = Setup::new(ps, &keys).upstream_all(&mock.url());
    setup.ledger = Some(ledger.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    Stack {
        ledger,
        envoy,
        mock,
    }
}

impl Stack {
    async fn issue(&self, request: Value) -> String {
        self.ledger.issue(request).await.0
    }

    async fn token(&self, policy: &str, label: &str) -> String {
        self.issue(json!({ "policy": policy, "label": label, "expires_in": "30m" }))
            .await
    }

    /// The base URL README.md's table says to give the SDK (OpenAI's includes `/v1`).
    fn base_url(&self, vendor: Vendor) -> String {
        let url = format!("http://127.0.0.1:{}", self.envoy.port(vendor));
        if vendor == Vendor::Openai {
            format!("{url}/v1")
        } else {
            url
        }
    }

    async fn counter(&self, vendor: Vendor, policy: &str, reason: &str) -> u64 {
        self.envoy.counter(vendor, policy, reason).await
    }

    /// Checks that every request the vendor received carried the real secret, exactly as the
    /// filter injects it, and no trace of a vault token; returns them.
    fn vendor_saw_only_the_secret(&self, vendor: Vendor) -> Vec<Recorded> {
        let got = self.mock.requests();
        let injected = vendor.injection(canary_secret(vendor).1).unwrap();
        for r in &got {
            for (name, value) in &injected {
                assert_eq!(
                    r.header(name).as_deref(),
                    Some(value.as_str()),
                    "{name} at the vendor:\n{}",
                    r.everything()
                );
            }
            assert!(
                !r.everything().contains("bvt_"),
                "a vault token reached the vendor:\n{}",
                r.everything()
            );
        }
        got
    }
}

/// An allowed call: it returned a parsed result.
fn allowed<'a>(out: &'a Value, case: &str) -> &'a Value {
    let o = &out[case];
    assert_eq!(o["ok"], true, "{case} should have succeeded: {o}");
    o
}

/// A refusal: the SDK raised `class`, with status `status` and the reason code in `str(e)`.
fn refused<'a>(out: &'a Value, case: &str, class: &str, status: u64, reason: &str) -> &'a Value {
    let o = &out[case];
    assert_eq!(o["ok"], false, "{case} should have been refused: {o}");
    assert_eq!(o["class"].as_str(), Some(class), "{case}: {o}");
    assert_eq!(o["status"].as_u64(), Some(status), "{case}: {o}");
    let text = o["str"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("[{reason}]")) && text.contains("Bridle: "),
        "{case}: str(e) does not name the reason {reason}: {text:?}"
    );
    o
}

/// The loop case: the same call until a 429 for `reason`. Returns how many went through
/// first; that is the policy's `limit` unless the calls straddled a calendar minute, where
/// the loop breaker's counts start again.
fn loop_refused(out: &Value, class: &str, reason: &str, limit: u64) -> u64 {
    let o = refused(out, "loop", class, 429, reason);
    let before = o["allowed_before"].as_u64().unwrap();
    let minute = |k: &str| (o[k].as_f64().unwrap() / 60.0).floor() as u64;
    if minute("first_call_at") == minute("last_call_at") {
        assert_eq!(before, limit, "{o}");
    } else {
        assert!((limit..=2 * limit + 1).contains(&before), "{o}");
    }
    before
}

/// How many of the recorded requests were `method path` (query aside).
fn calls_to(got: &[Recorded], method: &str, path: &str) -> usize {
    got.iter()
        .filter(|r| r.method == method && r.path.split('?').next() == Some(path))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_sdk() {
    let mut s = start(policies(&[stripe_policy()])).await;
    let (token, token_id) = s
        .ledger
        .issue(json!({ "policy": "sdk-stripe", "label": "sdk/stripe/main", "expires_in": "30m" }))
        .await;
    let vars = vec![
        ("BRIDLE_URL", s.base_url(Vendor::Stripe)),
        ("BRIDLE_TOKEN", token),
        (
            "BRIDLE_TOKEN_LOOP",
            s.token("sdk-stripe", "sdk/stripe/loop").await,
        ),
        ("STRIPE_MERCHANT", STRIPE_MERCHANT.to_string()),
        ("STRIPE_OTHER_MERCHANT", STRIPE_OTHER_MERCHANT.to_string()),
    ];
    let mut main = vars.clone();
    main.push(("BRIDLE_PHASE", "main".into()));
    let out = run_script("stripe_sdk.py", &main).await;
    assert_version(&out, "stripe");

    // (a) Allowed calls parse into Stripe objects.
    let pi = allowed(&out, "allowed");
    assert_eq!(
        (
            pi["id"].as_str(),
            pi["amount"].as_u64(),
            pi["type"].as_str()
        ),
        (Some("pi_mock_1"), Some(2000), Some("PaymentIntent")),
        "{pi}"
    );
    assert_eq!(allowed(&out, "allowed_read")["id"], "mock_1");
    let module = allowed(&out, "module_allowed");
    assert_eq!(
        (module["id"].as_str(), module["amount"].as_u64()),
        (Some("pi_mock_1"), Some(1500))
    );

    // (b) Outside the policy: stripe.PermissionError. Its `code` is None in stripe-python
    // (only InvalidRequestError and CardError get one); the code is on `e.error.code`.
    let e = refused(
        &out,
        "endpoint_denied",
        "stripe.PermissionError",
        403,
        "endpoint_not_allowed",
    );
    assert!(
        e["str"].as_str().unwrap().contains("POST /v1/refunds"),
        "{e}"
    );
    assert_eq!(e["error_code"], "endpoint_not_allowed");
    assert_eq!(e["user_message"], e["str"]);
    let e = refused(
        &out,
        "merchant_denied",
        "stripe.PermissionError",
        403,
        "merchant_not_allowed",
    );
    assert_eq!(e["error_code"], "merchant_not_allowed");

    // (c) Over the cap: stripe.PermissionError (403), never stripe.CardError, which the SDK
    // raises for any 402 and an agent would take for a declined card. The reason is on
    // `e.error.code`.
    let e = refused(
        &out,
        "cap",
        "stripe.PermissionError",
        403,
        "cap_per_transaction",
    );
    assert_eq!(e["error_code"], "cap_per_transaction");
    assert_ne!(e["error_type"], "card_error");
    assert!(
        e["str"]
            .as_str()
            .unwrap()
            .contains("$50.00 per-transaction cap"),
        "{e}"
    );
    // A loop: stripe.RateLimitError after the allowed repeats.
    let looped = loop_refused(
        &out,
        "stripe.RateLimitError",
        "repeat_limited",
        IDENTICAL_PER_MINUTE,
    );
    assert_eq!(out["loop"]["error_code"], "repeat_limited");

    // The vendor saw the allowed calls only, each once, with the real secret.
    let got = s.vendor_saw_only_the_secret(Vendor::Stripe);
    assert_eq!(got.len() as u64, 3 + looped, "{got:#?}");
    assert_eq!(calls_to(&got, "POST", "/v1/payment_intents"), 2);
    assert_eq!(calls_to(&got, "POST", "/v1/refunds"), 0);
    let first = &got[0];
    assert_eq!(
        first.body, b"amount=2000&currency=usd",
        "the form body, untouched"
    );
    assert_eq!(
        first.header("stripe-account").as_deref(),
        Some(STRIPE_MERCHANT)
    );
    assert!(
        first.header("idempotency-key").is_some(),
        "the SDK's Idempotency-Key reaches Stripe"
    );
    assert!(got
        .iter()
        .all(|r| r.header("stripe-account").as_deref() == Some(STRIPE_MERCHANT)));
    for (reason, n) in [
        ("allowed", 3 + looped),
        ("endpoint_not_allowed", 1),
        ("merchant_not_allowed", 1),
        ("cap_per_transaction", 1),
        ("repeat_limited", 1),
    ] {
        assert_eq!(
            s.counter(Vendor::Stripe, "sdk-stripe", reason).await,
            n,
            "{reason}"
        );
    }
    // The ledger priced the SDK's form bodies: $20.00 + $15.00, committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spend = loop {
        let t = s.ledger.token(&token_id).await;
        if t["spend"]["reserved"] == "0.00" || Instant::now() > deadline {
            break t["spend"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (spend["reserved"].as_str(), spend["lifetime"].as_str()),
        (Some("0.00"), Some("35.00")),
        "{spend}"
    );

    // The module-level API retries 5xx twice by default; Bridle's 503 with
    // Stripe-Should-Retry: false is attempted once.
    assert_eq!(out["module_max_network_retries"], 2);
    s.ledger.kill9();
    let mut down = vars.clone();
    down.push(("BRIDLE_PHASE", "ledger_down".into()));
    let out = run_script("stripe_sdk.py", &down).await;
    assert_eq!(out["module_max_network_retries"], 2);
    refused(
        &out,
        "unavailable",
        "stripe.APIError",
        503,
        "ledger_unavailable",
    );
    assert_eq!(
        s.counter(Vendor::Stripe, "sdk-stripe", "ledger_unavailable")
            .await,
        1,
        "one attempt, no retries"
    );
    assert_eq!(s.mock.count() as u64, 3 + looped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_sdk() {
    let s = start(policies(&[twilio_policy()])).await;
    let out = run_script(
        "twilio_sdk.py",
        &[
            ("BRIDLE_URL", s.base_url(Vendor::Twilio)),
            (
                "BRIDLE_TOKEN",
                s.token("sdk-twilio", "sdk/twilio/main").await,
            ),
            (
                "BRIDLE_TOKEN_LOOP",
                s.token("sdk-twilio", "sdk/twilio/loop").await,
            ),
            ("TWILIO_ACCOUNT_SID", TWILIO_SID.to_string()),
            ("TWILIO_OTHER_SID", TWILIO_OTHER_SID.to_string()),
        ],
    )
    .await;
    assert_version(&out, "twilio");

    let m = allowed(&out, "allowed");
    assert_eq!(
        (m["sid"].as_str(), m["type"].as_str()),
        (
            Some("SM00000000000000000000000000000001"),
            Some("MessageInstance")
        ),
        "{m}"
    );
    // Every refusal is a TwilioRestException with the HTTP status and Twilio's error code.
    let class = "twilio.base.exceptions.TwilioRestException";
    let e = refused(&out, "endpoint_denied", class, 403, "endpoint_not_allowed");
    assert_eq!(e["code"], 20403);
    let e = refused(&out, "merchant_denied", class, 403, "merchant_not_allowed");
    assert_eq!(e["code"], 20403);
    refused(&out, "cap", class, 402, "cap_per_transaction");
    let looped = loop_refused(&out, class, "repeat_limited", IDENTICAL_PER_MINUTE);
    assert_eq!(out["loop"]["code"], 20429);

    let got = s.vendor_saw_only_the_secret(Vendor::Twilio);
    assert_eq!(got.len() as u64, 1 + looped, "{got:#?}");
    assert_eq!(
        calls_to(
            &got,
            "POST",
            &format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
        ),
        1
    );
    for (reason, n) in [
        ("allowed", 1 + looped),
        ("endpoint_not_allowed", 1),
        ("merchant_not_allowed", 1),
        ("cap_per_transaction", 1),
        ("repeat_limited", 1),
    ] {
        assert_eq!(
            s.counter(Vendor::Twilio, "sdk-twilio", reason).await,
            n,
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_sdk() {
    let s = start(policies(&[resend_policy()])).await;
    let out = run_script(
        "resend_sdk.py",
        &[
            ("BRIDLE_URL", s.base_url(Vendor::Resend)),
            (
                "BRIDLE_TOKEN",
                s.token("sdk-resend", "sdk/resend/main").await,
            ),
            (
                "BRIDLE_TOKEN_LOOP",
                s.token("sdk-resend", "sdk/resend/loop").await,
            ),
        ],
    )
    .await;
    assert_version(&out, "resend");

    assert_eq!(
        allowed(&out, "allowed")["id"],
        "4ef9a417-02e9-4d39-ad75-9611e0fcc33c"
    );
    // Resend raises ResendError, its `code` the HTTP status and its `error_type` the reason
    // (for 429, the SDK's own RateLimitError: the name is Resend's rate_limit_exceeded).
    let e = refused(
        &out,
        "endpoint_denied",
        "resend.exceptions.ResendError",
        403,
        "endpoint_not_allowed",
    );
    assert_eq!(
        (e["code"].as_u64(), e["error_type"].as_str()),
        (Some(403), Some("endpoint_not_allowed"))
    );
    let e = refused(
        &out,
        "cap",
        "resend.exceptions.ResendError",
        402,
        "cap_per_transaction",
    );
    assert_eq!(
        (e["code"].as_u64(), e["error_type"].as_str()),
        (Some(402), Some("cap_per_transaction"))
    );
    // The SDK sends every GET with a `{}` body; Bridle reads it whole to fingerprint it, so
    // the identical reads are what stop the loop.
    let looped = loop_refused(
        &out,
        "resend.exceptions.RateLimitError",
        "repeat_limited",
        IDENTICAL_PER_MINUTE,
    );
    assert_eq!(out["loop"]["code"], 429);

    let got = s.vendor_saw_only_the_secret(Vendor::Resend);
    assert_eq!(got.len() as u64, 1 + looped, "{got:#?}");
    assert_eq!(calls_to(&got, "POST", "/emails"), 1);
    for (reason, n) in [
        ("allowed", 1 + looped),
        ("endpoint_not_allowed", 1),
        ("cap_per_transaction", 1),
        ("repeat_limited", 1),
    ] {
        assert_eq!(
            s.counter(Vendor::Resend, "sdk-resend", reason).await,
            n,
            "{reason}"
        );
    }
}

/// What differs between the OpenAI and Anthropic runs, which otherwise check the same.
struct Llm {
    vendor: Vendor,
    policy: &'static str,
    script: &'static str,
    package: &'static str,
    /// One call's estimate: a token capped at this much makes one call.
    estimate: &'static str,
    /// The endpoint of the costed call, and of the loop's call.
    costed_path: &'static str,
    loop_call: (&'static str, &'static str),
    /// Allowed uncosted calls the script makes besides the loop.
    extra_allowed: u64,
    /// Exception classes for 403 (a policy refusal, and a cap: never the SDK's billing or
    /// payment class), 429 and 503.
    classes: [&'static str; 3],
}

async fn llm_sdk(llm: Llm, policy: Value) -> Value {
    let mut s = start(policies(&[policy])).await;
    let p = llm.policy;
    let capped = s
        .issue(
            json!({ "policy": p, "label": "sdk/llm/capped", "expires_in": "30m",
                       "caps": { "lifetime": llm.estimate } }),
        )
        .await;
    let vars = vec![
        ("BRIDLE_URL", s.base_url(llm.vendor)),
        ("BRIDLE_TOKEN", s.token(p, "sdk/llm/main").await),
        ("BRIDLE_TOKEN_CAPPED", capped),
        ("BRIDLE_TOKEN_LOOP", s.token(p, "sdk/llm/loop").await),
    ];
    let mut main = vars.clone();
    main.push(("BRIDLE_PHASE", "main".into()));
    let out = run_script(llm.script, &main).await;
    assert_version(&out, llm.package);
    assert_eq!(out["max_retries"], 2, "the SDK's default retries are on");
    let [forbidden, rate, unavailable] = llm.classes;

    allowed(&out, "allowed");
    allowed(&out, "cap_first");
    let e = refused(
        &out,
        "endpoint_denied",
        forbidden,
        403,
        "endpoint_not_allowed",
    );
    assert!(
        e["str"].as_str().unwrap().starts_with("Error code: 403 - "),
        "{e}"
    );
    refused(&out, "cap", forbidden, 403, "cap_lifetime");
    // The 429 comes with Retry-After (1-60 s) and x-should-retry: false; a retrying SDK
    // would have waited it out, twice (the counters below are the proof of one attempt).
    let looped = loop_refused(&out, rate, "repeat_limited", IDENTICAL_PER_MINUTE);
    assert!(
        out["loop"]["elapsed_s"].as_f64().unwrap() < 5.0,
        "{}",
        out["loop"]
    );

    let got = s.vendor_saw_only_the_secret(llm.vendor);
    let allowed_calls = 2 + llm.extra_allowed + looped;
    assert_eq!(got.len() as u64, allowed_calls, "{got:#?}");
    let (loop_method, loop_path) = llm.loop_call;
    let loop_is_costed = loop_path == llm.costed_path;
    assert_eq!(
        calls_to(&got, "POST", llm.costed_path) as u64,
        2 + if loop_is_costed { looped } else { 0 }
    );
    assert!(calls_to(&got, loop_method, loop_path) as u64 >= looped);
    assert_eq!(
        got.len(),
        calls_to(&got, "POST", llm.costed_path)
            + if loop_is_costed {
                0
            } else {
                calls_to(&got, loop_method, loop_path)
            }
            + llm.extra_allowed as usize,
        "the vendor saw only allowed endpoints"
    );
    for (reason, n) in [
        ("allowed", allowed_calls),
        ("endpoint_not_allowed", 1),
        ("cap_lifetime", 1),
        ("repeat_limited", 1),
    ] {
        assert_eq!(s.counter(llm.vendor, p, reason).await, n, "{reason}");
    }

    // With the ledger down, a costed call is refused with 503: the SDK would retry a 503
    // twice, but makes one attempt.
    s.ledger.kill9();
    let mut down = vars.clone();
    down.push(("BRIDLE_PHASE", "ledger_down".into()));
    let after = run_script(llm.script, &down).await;
    refused(
        &after,
        "unavailable",
        unavailable,
        503,
        "ledger_unavailable",
    );
    assert_eq!(
        s.counter(llm.vendor, p, "ledger_unavailable").await,
        1,
        "one attempt, no retries"
    );
    assert_eq!(s.mock.count() as u64, allowed_calls);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk() {
    let out = llm_sdk(
        Llm {
            vendor: Vendor::Openai,
            policy: "sdk-openai",
            script: "openai_sdk.py",
            package: "openai",
            estimate: "0.05",
            costed_path: "/v1/chat/completions",
            loop_call: ("GET", "/v1/models"),
            extra_allowed: 0,
            classes: [
                "openai.PermissionDeniedError",
                "openai.RateLimitError",
                "openai.InternalServerError",
            ],
        },
        openai_policy(),
    )
    .await;
    let c = allowed(&out, "allowed");
    assert_eq!(
        (c["id"].as_str(), c["content"].as_str(), c["type"].as_str()),
        (
            Some("chatcmpl-mock"),
            Some("Hello from the mock vendor."),
            Some("ChatCompletion")
        ),
        "{c}"
    );
    // The SDK reads `code` from the error body: Bridle's reason.
    assert_eq!(out["endpoint_denied"]["code"], "endpoint_not_allowed");
    assert_eq!(out["endpoint_denied"]["type"], "permission_error");
    assert_eq!(out["cap"]["code"], "cap_lifetime");
    assert_eq!(
        out["cap"]["type"], "permission_error",
        "not the account's billing"
    );
    assert_eq!(out["loop"]["code"], "repeat_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk() {
    let out = llm_sdk(
        Llm {
            vendor: Vendor::Anthropic,
            policy: "sdk-anthropic",
            script: "anthropic_sdk.py",
            package: "anthropic",
            estimate: "0.08",
            costed_path: "/v1/messages",
            // count_tokens is uncosted and carries a body, which Bridle does not read, so
            // its repeats cannot be told apart; the costed call can.
            loop_call: ("POST", "/v1/messages"),
            extra_allowed: 1,
            classes: [
                "anthropic.PermissionDeniedError",
                "anthropic.RateLimitError",
                "anthropic.ServiceUnavailableError",
            ],
        },
        anthropic_policy(),
    )
    .await;
    let m = allowed(&out, "allowed");
    assert_eq!(
        (m["id"].as_str(), m["text"].as_str(), m["type"].as_str()),
        (
            Some("msg_mock"),
            Some("Hello from the mock vendor."),
            Some("Message")
        ),
        "{m}"
    );
    assert_eq!(allowed(&out, "allowed_count")["type"], "MessageTokensCount");
    // The reason is also in the body's error.details.error_code.
    assert_eq!(out["endpoint_denied"]["error_code"], "endpoint_not_allowed");
    assert_eq!(out["endpoint_denied"]["type"], "permission_error");
    assert_eq!(out["cap"]["error_code"], "cap_lifetime");
    assert_eq!(
        out["cap"]["type"], "permission_error",
        "not the account's billing"
    );
    assert_eq!(out["loop"]["error_code"], "repeat_limited");
}

/// README.md's walkthrough: the Stripe SDK snippet, as written, against the repo's own
/// policies (`make run`'s), with a token the ledger issued for `stripe-payments`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_snippet_runs_as_written() {
    let snippet = python::readme_python("Five-minute walkthrough", "import os, stripe");
    let ps = bridle_core::policy_files::load(&[repo_root().join("policies")])
        .unwrap_or_else(|e| panic!("policies/: {e:?}"));
    let s = start(ps).await;
    let token = s
        .issue(json!({ "policy": "stripe-payments", "label": "demo/agent-1/run-1", "expires_in": "15m" }))
        .await;
    // The snippet names make run's Stripe address; the test's listener stands in for it.
    let stdout = python::run_readme_snippet(
        &snippet,
        &[(10001, s.envoy.port(Vendor::Stripe))],
        &[("TOKEN", token)],
    )
    .await;
    eprintln!("README snippet printed:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();

    // print(pi.id): the PaymentIntent the vendor created.
    assert_eq!(lines.first().copied(), Some("pi_mock_1"), "{stdout}");
    let got = s.vendor_saw_only_the_secret(Vendor::Stripe);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (got[0].method.as_str(), got[0].path.as_str()),
        ("POST", "/v1/payment_intents")
    );
    assert_eq!(
        got[0].header("stripe-account").as_deref(),
        Some("acct_1BridleDemoA")
    );
    assert_eq!(
        s.counter(Vendor::Stripe, "stripe-payments", "endpoint_not_allowed")
            .await,
        1,
        "the refund was refused, once"
    );

    // print(e.code, "-", e.user_message): the line the README's comment promises.
    let denial = lines.get(1).copied().unwrap_or_default();
    let want = "endpoint_not_allowed - Bridle: POST /v1/refunds is not an endpoint that \
                policy \"stripe-payments\" allows. [endpoint_not_allowed]";
    assert_eq!(
        denial, want,
        "README.md's walkthrough snippet does not print what its comment says. \
         stripe.PermissionError leaves `code` None (stripe-python passes a code only to \
         InvalidRequestError and CardError); the reason is on `e.error.code`. The README \
         line should read:\n    print(e.error.code, \"-\", e.user_message)     \
         # endpoint_not_allowed - Bridle: POST /v1/refunds ...\nThe snippet:\n{snippet}"
    );
}
