//! Configuration in the real Envoy: what the repository ships is what the policies render
//! to, and a bad policy, a missing secret or bad public keys makes Envoy refuse to start,
//! with a log line that says what is wrong.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bridle_cli::render::{self, EnvoyOptions};
use bridle_core::policy_files;
use bridle_core::vendor::Vendor;
use bridle_e2e::client::Request;
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::Keys;
use bridle_e2e::mock::MockVendor;
use bridle_e2e::repo_root;
use serde_json::json;

fn policy() -> serde_json::Value {
    json!({
        "name": "stripe-payments", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
        "merchants": { "allow": ["acct_1Merchant"] },
        "endpoints": [{ "method": "GET", "path": "/v1/charges/*" }],
    })
}

#[test]
fn the_shipped_envoy_config_is_the_rendering_of_the_shipped_policies() {
    let root = repo_root();
    let policies = policy_files::load(&[root.join("policies")]).unwrap();
    let rendered = render::to_yaml(&[render::envoy_bootstrap(
        &policies,
        &EnvoyOptions {
            prices: bridle_e2e::shipped_prices(),
            ..EnvoyOptions::default()
        },
    )
    .unwrap()])
    .unwrap();
    let shipped = std::fs::read_to_string(root.join("envoy/bridle.yaml")).unwrap();
    assert!(
        rendered == shipped,
        "envoy/bridle.yaml is stale: run `make envoy/bridle.yaml`"
    );
}

/// Starts Envoy with the first listener's policy edited by `edit`, expecting a refusal.
async fn refused(setup: &Setup, edit: impl Fn(&mut serde_json::Value)) -> String {
    let mut doc: serde_json::Value = serde_yaml_ng::from_str(&setup.render()).unwrap();
    let config = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"][0]["typed_config"]["config"];
    edit(&mut config["configuration"]["value"]["policies"][0]);
    match Envoy::start_config(
        &serde_yaml_ng::to_string(&doc).unwrap(),
        &setup.environment(),
        1,
    )
    .await
    {
        Ok(_) => panic!("Envoy accepted the configuration"),
        Err(log) => log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_by_envoy_with_the_reason() {
    let keys = Keys::generate();
    let setup = Setup::new(policies(&[policy()]), &keys).upstream_all("http://127.0.0.1:9");

    let log = refused(&setup, |p| {
        p["endpoints"][0]["path"] = json!("/v1/charges/**")
    })
    .await;
    assert!(
        log.contains(
            "configuration refused: policies[0].endpoints[0]: path glob \"/v1/charges/**\""
        ),
        "{log}"
    );

    let log = refused(&setup, |p| p["sekret"] = json!("x")).await;
    assert!(log.contains("unknown field `sekret`"), "{log}");

    let log = refused(&setup, |p| p["vendor"] = json!("paypal")).await;
    assert!(log.contains("unknown variant `paypal`"), "{log}");

    let log = refused(&setup, |p| {
        p["merchants"]["allow"][0] = json!("cus_notanaccount")
    })
    .await;
    assert!(
        log.contains("merchants.allow[0]: \"cus_notanaccount\" is not a Stripe account id"),
        "{log}"
    );

    // A missing secret or bad public keys are refused too, and the log never shows a secret.
    let no_secret = setup.clone().env("STRIPE_SECRET_KEY", "");
    let mut env = no_secret.environment();
    env.retain(|(n, _)| n != "STRIPE_SECRET_KEY");
    let log = match Envoy::start_config(&no_secret.render(), &env, 1).await {
        Ok(_) => panic!("started without the vendor secret"),
        Err(log) => log,
    };
    assert!(
        log.contains("STRIPE_SECRET_KEY (the vendor secret) is not set"),
        "{log}"
    );

    let bad_keys = setup.clone().env("BRIDLE_PUBLIC_KEYS", "k1:c2hvcnQ");
    let log = match Envoy::start(&bad_keys).await {
        Ok(_) => panic!("started with a short key"),
        Err(log) => log,
    };
    assert!(
        log.contains("BRIDLE_PUBLIC_KEYS: entry 1 (k1): key is 5 bytes"),
        "{log}"
    );
    // The signing key where the public keys go: a proxy must never hold it, so Envoy
    // refuses to start, and says why without showing the key.
    let private = setup.clone().env("BRIDLE_PUBLIC_KEYS", &keys.spec);
    let log = match Envoy::start(&private).await {
        Ok(_) => panic!("started with the signing key"),
        Err(log) => log,
    };
    assert!(
        log.contains("is a private signing key: a proxy must hold only public keys"),
        "{log}"
    );
    assert!(!log.contains(keys.spec.split_once(':').unwrap().1), "{log}");
}

/// Istio delivers `pluginConfig` as JSON text in a StringValue; a hand-written bootstrap
/// may do the same. Both forms configure the same filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_string_configuration_works_like_a_struct() {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let setup = Setup::new(policies(&[policy()]), &keys).upstream_all(&mock.url());
    let mut doc: serde_json::Value = serde_yaml_ng::from_str(&setup.render()).unwrap();
    let filter = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"][0]["typed_config"]["config"];
    let json_text = filter["configuration"]["value"].to_string();
    filter["configuration"] =
        json!({ "@type": "type.googleapis.com/google.protobuf.StringValue", "value": json_text });
    let envoy = Envoy::start_config(
        &serde_yaml_ng::to_string(&doc).unwrap(),
        &setup.environment(),
        1,
    )
    .await
    .unwrap();
    let port = envoy.port(Vendor::Stripe);
    let token = keys.token("stripe-payments", Vendor::Stripe);
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&token)
        .header("stripe-account", "acct_1Merchant")
        .send(port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&token)
        .send(port)
        .await;
    assert_eq!(r.reason(), "merchant_not_allowed");
}

/// The example policies in policies/ work as the README says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_policies_serve_requests() {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let policies = policy_files::load(&[repo_root().join("policies")]).unwrap();
    let ledger = bridle_e2e::ledger::Ledger::start(&policies, &keys).await;
    let mut setup = Setup::new(policies, &keys).upstream_all(&mock.url());
    setup.ledger = Some(ledger.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    let stripe = keys.token("stripe-payments", Vendor::Stripe);
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&stripe)
        .header("stripe-account", "acct_1BridleDemoA")
        .send(envoy.port(Vendor::Stripe))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let openai = keys.token("openai-chat", Vendor::Openai);
    let r = Request::new("POST", "/v1/chat/completions")
        .bearer(&openai)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send(envoy.port(Vendor::Openai))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = Request::new("POST", "/v1/files")
        .bearer(&openai)
        .body("x")
        .send(envoy.port(Vendor::Openai))
        .await;
    assert_eq!((r.status, r.reason()), (403, "endpoint_not_allowed"));
    // Costed examples: a $20 payment intent on an allowed merchant, then one over the cap.
    let pay = |amount: &str| {
        Request::new("POST", "/v1/payment_intents")
            .bearer(&stripe)
            .header("stripe-account", "acct_1BridleDemoA")
            .form(&format!("amount={amount}&currency=usd"))
    };
    let r = pay("2000").send(envoy.port(Vendor::Stripe)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // 403, not 402: Stripe's SDK reads every 402 as a declined card.
    let r = pay("30000").send(envoy.port(Vendor::Stripe)).await;
    assert_eq!((r.status, r.reason()), (403, "cap_per_transaction"));
}
