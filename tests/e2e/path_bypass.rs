//! Path-bypass attempts through the real Envoy: the policy allows only `GET /v1/charges/*`,
//! and each request dresses a forbidden target up as an allowed one.
//!
//! Run twice: with Envoy's own path normalization (the shipped configuration) and without it,
//! to show that the filter's strict matching holds on its own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bridle_core::vendor::Vendor;
use bridle_e2e::client::Request;
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::Keys;
use bridle_e2e::mock::MockVendor;
use serde_json::json;

/// Each is a request target aimed somewhere `GET /v1/charges/*` does not allow.
const BYPASSES: &[&[u8]] = &[
    b"/v1/charges/../refunds",
    b"/v1/charges/ch_1/../../refunds",
    b"/v1/charges/%2e%2e/refunds",
    b"/v1/charges/%2E%2E/refunds",
    b"/v1/charges/.%2e/refunds",
    b"/v1/charges/%2e./refunds",
    b"/v1/charges/ch_1%2frefunds",
    b"/v1/charges/ch_1%2Frefunds",
    b"/v1/charges/ch_1%2f..%2f..%2frefunds",
    b"/v1/charges/ch_1%5crefunds",
    b"/v1/charges/ch_1%5C..%5Crefunds",
    b"/v1/charges/ch_1\\..\\refunds",
    b"/v1/charges/..\\refunds",
    b"/v1/charges/ch_1;/../../refunds",
    b"/v1/charges/ch_1;jsessionid=x",
    b"/v1/charges/ch_1%3b/../refunds",
    b"/v1/charges/%252e%252e/refunds",
    b"/v1/charges/%25%32%65%25%32%65/refunds",
    b"/v1/charges/%C0%AE%C0%AE/refunds",
    b"/v1/charges/%u002e%u002e/refunds",
    b"/v1/charges/ch_1%00/refunds",
    b"/v1/charges/ch_1%09",
    b"/v1/charges/ch_1%3F/../refunds",
    b"/v1/charges/ch_1%23/../refunds",
    b"/v1/charges/ch_1#/../../refunds",
    b"/v1//charges/ch_1",
    b"//v1/charges/ch_1",
    b"/v1/charges//ch_1",
    b"/v1/charges/./ch_1",
    b"/v1/charges/ch_1/",
    b"/v1/charges/ch_1/.",
    b"/v1/charges/ch_1/..",
    b"/v1/charges/ch_1/refunds",
    b"/v1/ch%61rges/ch_1",
    b"/V1/CHARGES/ch_1",
    b"/v1/charges",
    b"/%2e%2e/v1/charges/ch_1",
    b"/v1/charges/ch_\xc3\xa9",
    b"/v1/refunds",
    b"http://evil.example/v1/refunds",
];

fn policy() -> serde_json::Value {
    json!({
        "name": "charges-read", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
        "merchants": { "allow": ["acct_1Merchant"], "allow_unscoped": true },
        "endpoints": [{ "method": "GET", "path": "/v1/charges/*" }],
    })
}

/// `/v1/charges/<one clean segment>`: the only shape the vendor may ever receive.
fn is_allowed_shape(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or("");
    let rest = path.strip_prefix("/v1/charges/").unwrap_or("");
    !rest.is_empty() && !rest.contains('/') && bridle_core::path::check(path.as_bytes()).is_ok()
}

async fn attack(hardened: bool) {
    assert!(BYPASSES.len() >= 40);
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let mut setup = Setup::new(policies(&[policy()]), &keys).upstream_all(&mock.url());
    setup.envoy_path_hardening = hardened;
    let envoy = Envoy::start(&setup).await.unwrap();
    let port = envoy.port(Vendor::Stripe);
    let token = keys.token("charges-read", Vendor::Stripe);

    for target in BYPASSES {
        let shown = String::from_utf8_lossy(target);
        let r = Request::new("GET", *target).bearer(&token).send(port).await;
        if hardened {
            // Envoy may normalize a path before the filter sees it; then the filter decides
            // on, and the vendor receives, the normalized path. Either way nothing outside
            // the allowlist may arrive.
            assert!(
                r.status >= 400
                    || mock
                        .requests()
                        .last()
                        .is_some_and(|q| is_allowed_shape(&q.path)),
                "{shown}: {}",
                r.status
            );
        } else {
            assert!(
                (400..500).contains(&r.status),
                "without Envoy's normalization the filter alone must refuse {shown}: got {} {}",
                r.status,
                r.text()
            );
            assert_eq!(
                mock.count(),
                0,
                "{shown} reached the vendor as {:?}",
                mock.requests().last().map(|q| q.path.clone())
            );
        }
    }
    for got in mock.requests() {
        assert!(
            is_allowed_shape(&got.path),
            "the vendor received {:?}",
            got.path
        );
    }
    // The filter's own refusals are counted.
    if !hardened {
        let refused = envoy
            .counter(Vendor::Stripe, "charges-read", "path_rejected")
            .await
            + envoy
                .counter(Vendor::Stripe, "charges-read", "endpoint_not_allowed")
                .await;
        assert!(
            refused >= 25,
            "only {refused} refusals were the filter's own"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_attempts_fail_with_envoy_normalization() {
    attack(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_attempts_fail_with_the_filter_alone() {
    attack(false).await;
}

/// What the filter allows arrives byte for byte: no normalization after the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_paths_arrive_exactly_as_matched() {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let setup = Setup::new(policies(&[policy()]), &keys).upstream_all(&mock.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    let token = keys.token("charges-read", Vendor::Stripe);
    let allowed: &[&str] = &[
        "/v1/charges/ch_1",
        "/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15",
        "/v1/charges/ch_1?expand[]=customer&expand[]=invoice",
        "/v1/charges/ch_1?q=a/../b%2F",
        "/v1/charges/ch_1?/../../refunds",
        "/v1/charges/%2B15551234567",
        "/v1/charges/*",
        "/v1/charges/ch_1%20x",
    ];
    for path in allowed {
        mock.clear();
        let r = Request::new("GET", *path)
            .bearer(&token)
            .send(envoy.port(Vendor::Stripe))
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            mock.requests()[0].path,
            *path,
            "the vendor received a different path"
        );
    }
}
