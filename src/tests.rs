//! The filter's flow against the fake host: configuration, rewriting, denials and the
//! failure of every hostcall the request path depends on.

use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bridle_core::token::{Claims, Keyring};
use bridle_core::vendor::Vendor;
use proxy_wasm::types::Action;

use crate::fake_host::FakeHost;
use crate::host::MapType;
use crate::plugin::Plugin;
use crate::stream::Stream;

const SECRET: &str = "sk_test_CANARY_secret_value_123";
const NOW: u64 = 1_700_000_100;

fn keyring_spec() -> String {
    format!("k1:{}", URL_SAFE_NO_PAD.encode([7u8; 32]))
}

fn config() -> serde_json::Value {
    serde_json::json!({
        "vendor": "stripe",
        "policies": [{
            "name": "stripe-payments",
            "vendor": "stripe",
            "secret_env": "STRIPE_SECRET_KEY",
            "max_ttl": "1h",
            "merchants": { "allow": ["acct_1Merchant"], "allow_unscoped": true },
            "endpoints": [
                { "method": "GET", "path": "/v1/charges/*" },
                { "method": "POST", "path": "/v1/payment_intents" },
            ],
        }],
    })
}

fn host() -> FakeHost {
    let h = FakeHost::default();
    h.now_secs.set(NOW);
    h.env
        .borrow_mut()
        .insert("BRIDLE_KEYRING".into(), keyring_spec());
    h.env
        .borrow_mut()
        .insert("STRIPE_SECRET_KEY".into(), SECRET.into());
    h
}

fn plugin(h: &FakeHost) -> Rc<Plugin> {
    Rc::new(Plugin::configure(h, Some(config().to_string().as_bytes())).unwrap())
}

fn token() -> String {
    let claims = Claims {
        v: 1,
        id: "tok_abc".into(),
        policy: "stripe-payments".into(),
        vendor: Vendor::Stripe,
        iat: NOW - 10,
        exp: NOW + 600,
        label: "acme/run-1".into(),
        endpoints: None,
        merchants: None,
        caps: Default::default(),
    };
    Keyring::parse(&keyring_spec())
        .unwrap()
        .mint(&claims)
        .unwrap()
}

fn request(h: &FakeHost, method: &str, path: &str, extra: &[(&str, &[u8])]) {
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", method.as_bytes()),
        (":path", path.as_bytes()),
        (":authority", b"localhost"),
    ];
    headers.extend_from_slice(extra);
    h.set_map(MapType::RequestHeaders, &headers);
}

#[test]
fn allowed_requests_carry_the_secret_and_not_the_token() {
    let h = host();
    let p = plugin(&h);
    let auth = format!("Bearer {}", token());
    request(
        &h,
        "GET",
        "/v1/charges/ch_1",
        &[
            ("authorization", auth.as_bytes()),
            ("x-http-method-override", b"DELETE"),
            ("x-bridle-upstream", b"x"),
        ],
    );
    assert_eq!(
        Stream::new(Some(p)).on_request_headers(&h, true),
        Action::Continue
    );
    assert_eq!(
        h.header(MapType::RequestHeaders, "authorization")
            .as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(
        h.header(MapType::RequestHeaders, "x-http-method-override"),
        None
    );
    assert_eq!(h.header(MapType::RequestHeaders, "x-bridle-upstream"), None);
    let forwarded = format!("{:?}", h.map(MapType::RequestHeaders));
    assert!(!forwarded.contains("bvt_"), "{forwarded}");
    assert_eq!(h.counter("bridle.stripe.stripe-payments.allowed"), 1);
    assert!(h.sent().is_none());
}

#[test]
fn denials_are_vendor_shaped_counted_and_secret_free() {
    let h = host();
    let p = plugin(&h);
    let auth = format!("Bearer {}", token());
    request(
        &h,
        "POST",
        "/v1/refunds",
        &[("authorization", auth.as_bytes())],
    );
    assert_eq!(
        Stream::new(Some(p.clone())).on_request_headers(&h, true),
        Action::Pause
    );
    let sent = h.sent().unwrap();
    assert_eq!(sent.status, 403);
    assert_eq!(sent.header("x-bridle-reason"), Some("endpoint_not_allowed"));
    assert_eq!(sent.header("stripe-should-retry"), Some("false"));
    let body: serde_json::Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(body["error"]["code"], "endpoint_not_allowed");
    assert_eq!(
        h.counter("bridle.stripe.stripe-payments.endpoint_not_allowed"),
        1
    );
    // The request was not rewritten: the secret went nowhere.
    assert_eq!(
        h.header(MapType::RequestHeaders, "authorization"),
        Some(auth)
    );

    request(&h, "GET", "/v1/charges/ch_1", &[]);
    Stream::new(Some(p)).on_request_headers(&h, true);
    assert_eq!(h.sent().unwrap().status, 401);
    assert_eq!(h.counter("bridle.stripe._unattributed.token_missing"), 1);
    assert!(!h.all_logs().contains(SECRET));
    assert!(!format!("{:?}", h.sent()).contains(SECRET));
}

#[test]
fn a_failed_rewrite_denies_instead_of_forwarding() {
    let h = host();
    let p = plugin(&h);
    let auth = format!("Bearer {}", token());
    request(
        &h,
        "GET",
        "/v1/charges/ch_1",
        &[("authorization", auth.as_bytes())],
    );
    h.fail_edits.set(true);
    assert_eq!(
        Stream::new(Some(p)).on_request_headers(&h, true),
        Action::Pause
    );
    assert_eq!(h.sent().unwrap().status, 500);
    assert_eq!(h.counter("bridle.stripe.stripe-payments.internal"), 1);
    assert_eq!(h.counter("bridle.stripe.stripe-payments.allowed"), 0);
}

#[test]
fn a_denial_that_cannot_be_sent_resets_the_stream() {
    let h = host();
    let p = plugin(&h);
    request(&h, "GET", "/v1/charges/ch_1", &[]);
    h.fail_send.set(true);
    assert_eq!(
        Stream::new(Some(p)).on_request_headers(&h, true),
        Action::Pause
    );
    assert!(h.reset.get());
}

#[test]
fn an_unconfigured_filter_refuses_everything() {
    let h = host();
    request(&h, "GET", "/v1/charges/ch_1", &[]);
    assert_eq!(
        Stream::new(None).on_request_headers(&h, true),
        Action::Pause
    );
    assert_eq!(h.sent().unwrap().status, 500);
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let h = host();
    let err = |bytes: Option<&[u8]>, h: &FakeHost| Plugin::configure(h, bytes).unwrap_err();
    assert!(err(None, &h).contains("no plugin configuration"));
    assert!(err(Some(b"{"), &h).contains("invalid configuration"));
    let mut bad = config();
    bad["policies"][0]["endpoints"][0]["path"] = "/v1/charges/**".into();
    assert!(err(Some(bad.to_string().as_bytes()), &h).contains("policies[0].endpoints[0]"));
    let mut unknown = config();
    unknown["policies"][0]["vendor"] = "paypal".into();
    assert!(err(Some(unknown.to_string().as_bytes()), &h).contains("unknown variant `paypal`"));

    let no_secret = host();
    no_secret.env.borrow_mut().remove("STRIPE_SECRET_KEY");
    assert!(err(Some(config().to_string().as_bytes()), &no_secret)
        .contains("STRIPE_SECRET_KEY (the vendor secret) is not set"));
    let bad_secret = host();
    bad_secret
        .env
        .borrow_mut()
        .insert("STRIPE_SECRET_KEY".into(), "two words".into());
    let e = err(Some(config().to_string().as_bytes()), &bad_secret);
    assert!(
        e.contains("printable ASCII") && !e.contains("two words"),
        "{e}"
    );
    let no_keyring = host();
    no_keyring.env.borrow_mut().remove("BRIDLE_KEYRING");
    assert!(err(Some(config().to_string().as_bytes()), &no_keyring).contains("BRIDLE_KEYRING"));
}
