//! The way to the real vendor: every production upstream is HTTPS, and the Envoy render
//! originates TLS with SNI, a CA file and a name check. Here each vendor's upstream is a
//! local TLS server with a certificate authority of the test's own (`bridle_e2e::tls`):
//! - a call reaches it over TLS, with the server name sent (SNI) and the certificate's name
//!   checked, and the vendor secret crosses the wire only encrypted;
//! - a certificate for another name, one from an untrusted CA, or a peer that does not
//!   speak TLS at all fails closed: nothing is sent, and the agent gets the vendor's own
//!   error format with a Bridle reason (`upstream_unavailable`), which the official SDK
//!   raises once, without retrying;
//! - the secret and the vault token never leave in clear: every byte each upstream received
//!   is checked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bridle_core::vendor::Vendor;
use bridle_e2e::client::{Request, Response};
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::{canary_secret, Keys};
use bridle_e2e::python;
use bridle_e2e::repo_root;
use bridle_e2e::tls::{Connection, RawSink, TestCa, TlsVendor};
use serde_json::{json, Value};

/// The name every upstream is reached by: it resolves to 127.0.0.1 without DNS.
const HOST: &str = "localhost";

fn stripe_reads() -> Value {
    json!({
        "name": "reads", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [{ "method": "GET", "path": "/v1/charges/*" }],
    })
}

fn openai_models() -> Value {
    json!({
        "name": "models", "vendor": "openai", "secret_env": "OPENAI_API_KEY", "max_ttl": "1h",
        "endpoints": [{ "method": "GET", "path": "/v1/models" }],
    })
}

fn anthropic_count() -> Value {
    json!({
        "name": "count", "vendor": "anthropic", "secret_env": "ANTHROPIC_API_KEY", "max_ttl": "1h",
        "endpoints": [{ "method": "POST", "path": "/v1/messages/count_tokens" }],
    })
}

/// What each of these tests sends through a vendor's listener.
fn call(keys: &Keys, vendor: Vendor) -> (Request, String) {
    let (policy, request) = match vendor {
        Vendor::Stripe => ("reads", Request::new("GET", "/v1/charges/ch_1")),
        Vendor::Openai => ("models", Request::new("GET", "/v1/models")),
        Vendor::Anthropic => (
            "count",
            Request::new("POST", "/v1/messages/count_tokens")
                .json(&json!({ "model": "m", "messages": [] })),
        ),
        other => panic!("no call for {other}"),
    };
    let token = keys.token(policy, vendor);
    (request.bearer(&token), token)
}

/// Nothing secret, and nothing of the request, in the bytes an upstream received.
fn nothing_in_clear(what: &str, connections: &[Connection], token: &str, path: &str) {
    assert!(!connections.is_empty(), "{what}: Envoy never connected");
    for (i, c) in connections.iter().enumerate() {
        assert!(
            c.starts_with_tls(),
            "{what}, connection {i}: did not open with a TLS ClientHello: {:?}",
            String::from_utf8_lossy(&c.raw[..c.raw.len().min(64)])
        );
        for v in Vendor::ALL {
            let secret = canary_secret(v).1;
            for part in secret.split(':') {
                assert!(
                    !c.carried(part),
                    "{what}, connection {i}: a vendor secret in clear"
                );
            }
        }
        assert!(
            !c.carried(token),
            "{what}, connection {i}: the vault token in clear"
        );
        assert!(
            !c.carried(path),
            "{what}, connection {i}: the request line in clear"
        );
        assert!(
            !c.carried("HTTP/1.1"),
            "{what}, connection {i}: HTTP in clear"
        );
    }
}

/// Refused by Envoy because the vendor could not be reached securely, in `vendor`'s format.
fn assert_unreachable(what: &str, vendor: Vendor, r: &Response) {
    assert_eq!(r.status, 502, "{what}: {}", r.text());
    assert_eq!(r.reason(), "upstream_unavailable", "{what}");
    assert_eq!(r.header("x-should-retry"), Some("false"), "{what}");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{what}: {}",
        r.text()
    );
    let body = r.json();
    let text = body.to_string();
    assert!(
        text.contains("Bridle: could not reach") && text.contains("[upstream_unavailable]"),
        "{what}: {text}"
    );
    match vendor {
        Vendor::Stripe => {
            assert_eq!(body["error"]["type"], "api_error", "{what}: {text}");
            assert_eq!(body["error"]["code"], "upstream_unavailable", "{what}");
            assert_eq!(r.header("stripe-should-retry"), Some("false"), "{what}");
        }
        Vendor::Openai => {
            assert_eq!(body["error"]["type"], "server_error", "{what}: {text}");
            assert_eq!(body["error"]["code"], "upstream_unavailable", "{what}");
        }
        Vendor::Anthropic => {
            assert_eq!(body["type"], "error", "{what}: {text}");
            assert_eq!(body["error"]["type"], "api_error", "{what}");
            assert_eq!(
                body["error"]["details"]["error_code"],
                "upstream_unavailable"
            );
        }
        other => panic!("no format check for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reaches_the_vendor_over_tls_with_sni_and_its_name_checked() {
    let ca = TestCa::new("Bridle e2e CA");
    let vendor = TlsVendor::start(ca.issue(&[HOST])).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate();
    let mut setup = Setup::new(policies(&[stripe_reads()]), &keys);
    setup.upstreams.insert(Vendor::Stripe, vendor.url(HOST));
    setup.ca_file = Some(ca.write_pem(dir.path()));
    let envoy = Envoy::start(&setup).await.unwrap();

    let (request, token) = call(&keys, Vendor::Stripe);
    let r = request.send(envoy.port(Vendor::Stripe)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["bridle_mock"]["received_credential"],
        format!(
            "Bearer secret ({} characters, not a vault token)",
            canary_secret(Vendor::Stripe).1.len() + "Bearer ".len()
        )
    );
    // Decrypted at the vendor: the real secret, the exact path, the vendor's own host.
    let got = vendor.mock.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {}", canary_secret(Vendor::Stripe).1))
    );
    assert_eq!(got[0].path, "/v1/charges/ch_1");
    assert_eq!(
        got[0].header("host"),
        Some(format!("{HOST}:{}", vendor.port()))
    );
    assert!(!got[0].everything().contains(&token));
    // On the wire: a handshake naming the vendor, then only ciphertext.
    let connections = vendor.connections().await;
    for c in &connections {
        assert_eq!(c.sni.as_deref(), Some(HOST), "SNI");
        assert_eq!(c.handshake, Some(Ok(())));
    }
    nothing_in_clear("the TLS vendor", &connections, &token, "/v1/charges/ch_1");
    let stats = envoy.stats("^cluster\\.vendor_stripe\\.ssl\\.").await;
    assert!(
        stats.get("cluster.vendor_stripe.ssl.handshake").copied() >= Some(1),
        "{stats:?}"
    );
}

/// Three upstreams Envoy must not trust, one per vendor listener of one Envoy: a
/// certificate for another name (Stripe), a certificate from a CA Envoy does not trust
/// (OpenAI), and a port that answers in clear (Anthropic). Each call fails closed in its
/// vendor's format, nothing is sent, and the official Stripe SDK raises the refusal once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_not_the_vendor_fails_closed_in_the_vendors_format() {
    let trusted = TestCa::new("Bridle e2e CA");
    let stranger = TestCa::new("Someone else's CA");
    let wrong_name = TlsVendor::start(trusted.issue(&["api.example.test"])).await;
    let untrusted = TlsVendor::start(stranger.issue(&[HOST])).await;
    let clear = RawSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate();
    let mut setup = Setup::new(
        policies(&[stripe_reads(), openai_models(), anthropic_count()]),
        &keys,
    );
    setup.upstreams.insert(Vendor::Stripe, wrong_name.url(HOST));
    setup.upstreams.insert(Vendor::Openai, untrusted.url(HOST));
    setup
        .upstreams
        .insert(Vendor::Anthropic, format!("https://{HOST}:{}", clear.port));
    setup.ca_file = Some(trusted.write_pem(dir.path()));
    let envoy = Envoy::start(&setup).await.unwrap();

    for (what, vendor) in [
        ("a certificate for another name", Vendor::Stripe),
        ("a certificate from an untrusted CA", Vendor::Openai),
        ("a peer that does not speak TLS", Vendor::Anthropic),
    ] {
        let (request, token) = call(&keys, vendor);
        let path = String::from_utf8(request.path.clone()).unwrap();
        let r = request.send(envoy.port(vendor)).await;
        assert_unreachable(what, vendor, &r);
        let connections = match vendor {
            Vendor::Stripe => wrong_name.connections().await,
            Vendor::Openai => untrusted.connections().await,
            _ => clear.connections(),
        };
        nothing_in_clear(what, &connections, &token, &path);
        if vendor != Vendor::Anthropic {
            for c in &connections {
                assert_eq!(c.sni.as_deref(), Some(HOST), "{what}: SNI");
                assert!(
                    matches!(c.handshake, Some(Err(_))),
                    "{what}: the handshake completed: {:?}",
                    c.handshake
                );
            }
        }
    }
    assert_eq!(wrong_name.mock.count(), 0);
    assert_eq!(untrusted.mock.count(), 0);
    // Envoy refused each for the reason meant: the name, then the chain.
    let stats = envoy
        .stats("^cluster\\.vendor_.*\\.ssl\\.fail_verify")
        .await;
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    assert!(
        stat("cluster.vendor_stripe.ssl.fail_verify_san") >= 1,
        "{stats:?}"
    );
    assert!(
        stat("cluster.vendor_openai.ssl.fail_verify_error") >= 1,
        "{stats:?}"
    );

    // The official SDK: its module-level API retries 5xx twice by default, but not this.
    let before = rq_5xx(&envoy).await;
    let (_, token) = call(&keys, Vendor::Stripe);
    let out = python::run_json(
        &repo_root().join("tests/sdk"),
        "stripe_upstream_down.py",
        &[
            (
                "BRIDLE_URL",
                format!("http://127.0.0.1:{}", envoy.port(Vendor::Stripe)),
            ),
            ("BRIDLE_TOKEN", token),
        ],
    )
    .await;
    assert_eq!(out["module_max_network_retries"], 2, "{out}");
    let read = &out["read"];
    assert_eq!(read["ok"], false, "{out}");
    assert_eq!(read["class"], "stripe.APIError", "{out}");
    assert_eq!(read["status"], 502, "{out}");
    assert_eq!(read["error_code"], "upstream_unavailable", "{out}");
    assert!(
        read["str"]
            .as_str()
            .unwrap_or_default()
            .contains("[upstream_unavailable]"),
        "{out}"
    );
    assert_eq!(rq_5xx(&envoy).await - before, 1, "one attempt, no retries");
    assert_eq!(wrong_name.mock.count(), 0);
}

async fn rq_5xx(envoy: &Envoy) -> u64 {
    let name = "http.bridle_stripe.downstream_rq_5xx";
    envoy
        .stats(&format!("^{}$", name.replace('.', "\\.")))
        .await
        .get(name)
        .copied()
        .unwrap_or(0)
}
