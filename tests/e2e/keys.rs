//! Token keys through the real processes: a proxy verifies and cannot mint; the CLI's
//! `keygen`, `pubkey` and `mint` fit the ledger and Envoy; a rotation keeps old tokens valid
//! until their public key is dropped; the ledger refuses a signing key the proxies would not
//! accept.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bridle_core::policy_files;
use bridle_core::token::{Claims, SigningKey};
use bridle_core::vendor::Vendor;
use bridle_e2e::client::Request;
use bridle_e2e::envoy::{policies, Envoy, Setup};
use bridle_e2e::keys::{claims, Keys, PUBLIC_KEYS_ENV, SIGNING_KEY_ENV};
use bridle_e2e::ledger::Ledger;
use bridle_e2e::mock::MockVendor;
use bridle_e2e::{repo_root, workspace_binary};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

fn stripe_reads() -> serde_json::Value {
    json!({
        "name": "reads", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [{ "method": "GET", "path": "/v1/charges/*" }],
    })
}

fn stripe_costed() -> serde_json::Value {
    json!({
        "name": "pay", "vendor": "stripe", "secret_env": "STRIPE_SECRET_KEY", "max_ttl": "1h",
        "merchants": { "allow_unscoped": true },
        "endpoints": [
            { "method": "GET", "path": "/v1/charges/*" },
            { "method": "POST", "path": "/v1/payment_intents",
              "cost": { "amount": { "field": "amount", "currency_field": "currency" } } },
        ],
    })
}

/// The secret half of a signing key spec, in every encoding someone might store it in.
fn secret_spellings(spec: &str) -> Vec<String> {
    let keypair = URL_SAFE_NO_PAD
        .decode(spec.split_once(':').unwrap().1)
        .unwrap();
    let seed = &keypair[..32];
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    vec![
        URL_SAFE_NO_PAD.encode(seed),
        STANDARD.encode(seed),
        hex(seed),
        URL_SAFE_NO_PAD.encode(&keypair),
        STANDARD.encode(&keypair),
        hex(&keypair),
    ]
}

/// A token over `claims` in the old symmetric format: HMAC-SHA256 with `key`.
fn hmac_token(kid: &str, key: &[u8], claims: &Claims) -> String {
    let signed = format!(
        "bvt_{kid}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Every token an attacker can make from Envoy's environment: each value, and each
/// `kid:base64` entry in it, taken as an Ed25519 secret (as it is, or cut or padded to 32
/// bytes), as a whole signing key, and as an HMAC key of the old format, under every key id
/// the environment names.
fn tokens_from(env: &[(String, String)], claims: &Claims) -> Vec<(String, String)> {
    let mut kids = BTreeSet::new();
    let mut materials: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, value) in env {
        materials.push((format!("{name} (raw)"), value.as_bytes().to_vec()));
        for entry in value.split(',') {
            if let Some((kid, b64)) = entry.trim().split_once(':') {
                // Only what a token can carry as a key id.
                if SigningKey::from_seed(kid, &[0; 32]).is_ok() {
                    kids.insert(kid.to_string());
                }
                for (how, engine) in [("base64url", &URL_SAFE_NO_PAD), ("base64", &STANDARD)] {
                    if let Ok(bytes) = engine.decode(b64.trim_end_matches('=')) {
                        materials.push((format!("{name} {kid} ({how})"), bytes));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (what, bytes) in &materials {
        let mut seed = [0u8; 32];
        let n = bytes.len().min(32);
        seed[..n].copy_from_slice(&bytes[..n]);
        for kid in &kids {
            let ed = SigningKey::from_seed(kid, &seed).unwrap();
            out.push((
                format!("{what} as an Ed25519 secret"),
                ed.mint(claims).unwrap(),
            ));
            if bytes.len() == 64 {
                let spec = format!("{kid}:{}", URL_SAFE_NO_PAD.encode(bytes));
                if let Ok(k) = SigningKey::parse(&spec) {
                    out.push((format!("{what} as a signing key"), k.mint(claims).unwrap()));
                }
            }
            out.push((
                format!("{what} as an HMAC key"),
                hmac_token(kid, bytes, claims),
            ));
        }
    }
    out
}

/// Issue 12, hole 9: whoever reads one proxy's environment could mint a token for any
/// policy. Now Envoy holds public keys only: every token made from what it holds is refused
/// by the real Envoy, and never reaches the vendor, while the ledger's tokens pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_environment_cannot_mint() {
    let mock = MockVendor::start().await;
    let keys = Keys::generate();
    let setup = Setup::new(policies(&[stripe_reads()]), &keys).upstream_all(&mock.url());
    let env = setup.environment();
    // The signing key is nowhere in Envoy's environment, in any encoding.
    for spelling in secret_spellings(&keys.spec) {
        for (name, value) in &env {
            assert!(
                !value.contains(&spelling),
                "{name} holds the signing key's secret"
            );
        }
    }
    assert!(env.iter().all(|(n, _)| n != SIGNING_KEY_ENV));
    assert!(env.iter().any(|(n, _)| n == PUBLIC_KEYS_ENV));

    let envoy = Envoy::start(&setup).await.unwrap();
    let port = envoy.port(Vendor::Stripe);
    let claims = claims("reads", Vendor::Stripe);
    let forged = tokens_from(&env, &claims);
    // The public keys themselves, decoded, as each kind of key; and every other value.
    for kind in ["an Ed25519 secret", "an HMAC key"] {
        let how = format!(
            "{PUBLIC_KEYS_ENV} {} (base64url) as {kind}",
            keys.ring.kid()
        );
        assert!(forged.iter().any(|(h, _)| *h == how), "{how} not tried");
    }
    assert!(
        forged.len() >= 2 * env.len(),
        "only {} attempts",
        forged.len()
    );
    for (how, token) in &forged {
        let r = Request::new("GET", "/v1/charges/ch_1")
            .bearer(token)
            .send(port)
            .await;
        assert_eq!(r.status, 401, "{how}: {}", r.text());
        assert!(
            [
                "token_bad_signature",
                "token_malformed",
                "token_unknown_key"
            ]
            .contains(&r.reason()),
            "{how}: {}",
            r.reason()
        );
    }
    assert_eq!(mock.count(), 0, "a forged token reached the vendor");
    // The same claims, signed by the ledger's key: accepted.
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&keys.mint(&claims))
        .send(port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.count(), 1);
}

fn bridle(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(workspace_binary("bridle"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bridle keygen` makes the ledger's key, `bridle pubkey` the proxies', and a token from
/// `bridle mint` passes the real Envoy that holds only the public key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_pubkey_and_mint_fit_the_proxy() {
    let (ok, signing, err) = bridle(&["keygen", "--kid", "cli-1"], &[], "");
    assert!(ok, "{err}");
    assert!(signing.starts_with("cli-1:"), "{signing}");
    let (ok, public, err) = bridle(&["pubkey"], &[], &format!("{signing}\n"));
    assert!(ok, "{err}");
    let keys = Keys::from_spec(&signing);
    assert_eq!(public, keys.public_spec);
    assert!(!public.contains(signing.split_once(':').unwrap().1));
    // Keys go only where they belong.
    let (ok, _, err) = bridle(&["pubkey"], &[], &public);
    assert!(!ok && err.contains("is a public key"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reads.yaml"), stripe_reads().to_string()).unwrap();
    let policy_dir = dir.path().to_str().unwrap();
    let mint = [
        "mint",
        "--policies",
        policy_dir,
        "--policy",
        "reads",
        "--label",
        "cli/test",
    ];
    let (ok, _, err) = bridle(&mint, &[(SIGNING_KEY_ENV, &public)], "");
    assert!(!ok && err.contains("BRIDLE_SIGNING_KEY"), "{err}");
    let (ok, token, err) = bridle(&mint, &[(SIGNING_KEY_ENV, &signing)], "");
    assert!(ok, "{err}");
    assert!(token.starts_with("bvt_cli-1."), "{token}");

    let mock = MockVendor::start().await;
    let policies = policy_files::load(&[dir.path().to_path_buf()]).unwrap();
    let setup = Setup::new(policies, &keys).upstream_all(&mock.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&token)
        .send(envoy.port(Vendor::Stripe))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A rotation, as deploy/README.md describes it: the proxies and the ledger hold the new
/// and the old public keys while the ledger signs with the new key; tokens of both keys
/// pass, costed calls too (the ledger verifies them); once the old public key is dropped,
/// its tokens are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_tokens_until_their_public_key_goes() {
    let mock = MockVendor::start().await;
    let old = Keys::generate();
    let new = Keys::generate().trusting(&old);
    let policies = policies(&[stripe_costed()]);
    let ledger = Ledger::start(&policies, &new).await;
    let mut setup = Setup::new(policies, &new).upstream_all(&mock.url());
    setup.ledger = Some(ledger.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    let port = envoy.port(Vendor::Stripe);
    let old_token = old.token("pay", Vendor::Stripe);
    let (issued, _) = ledger
        .issue(json!({ "policy": "pay", "label": "rotate/new", "expires_in": "10m" }))
        .await;
    assert!(
        issued.starts_with(&format!("bvt_{}.", new.ring.kid())),
        "{issued}"
    );
    for token in [&old_token, &issued] {
        let r = Request::new("POST", "/v1/payment_intents")
            .bearer(token)
            .form("amount=500&currency=usd")
            .send(port)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(mock.count(), 2);
    drop(envoy);

    // The old public key dropped: its tokens are refused, the new ones pass.
    let current = Keys::from_spec(&new.spec);
    let mut setup = Setup::new(setup.policies.clone(), &current).upstream_all(&mock.url());
    setup.ledger = Some(ledger.url());
    let envoy = Envoy::start(&setup).await.unwrap();
    let port = envoy.port(Vendor::Stripe);
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&old_token)
        .send(port)
        .await;
    assert_eq!((r.status, r.reason()), (401, "token_unknown_key"));
    let r = Request::new("GET", "/v1/charges/ch_1")
        .bearer(&issued)
        .send(port)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The ledger will not mint what the proxies would refuse: it does not start with a signing
/// key missing from the public keys, with a public key for a signing key, or with a
/// signing key among the public keys.
#[test]
fn the_ledger_refuses_keys_the_proxies_would_not_accept() {
    let keys = Keys::generate();
    let other = Keys::generate();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("reads.yaml");
    std::fs::write(&policy, stripe_reads().to_string()).unwrap();
    let start = |signing: &str, public: &str| {
        let mut child = Command::new(workspace_binary("bridle-ledger"))
            .args(["--memory", "--listen", "127.0.0.1:0", "--policies"])
            .arg(&policy)
            .env_clear()
            .env(SIGNING_KEY_ENV, signing)
            .env(PUBLIC_KEYS_ENV, public)
            .env("BRIDLE_ADMIN_KEY", "adm_0123456789abcdef")
            .env("BRIDLE_ENFORCER_KEY", "enf_0123456789abcdef")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the ledger started with {signing:.8}... and {public:.8}...");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success());
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        for spelling in secret_spellings(&keys.spec) {
            assert!(
                !err.contains(&spelling),
                "the ledger's error shows the key: {err}"
            );
        }
        err
    };
    let e = start(&keys.spec, &other.public_spec);
    assert!(
        e.contains("do not list the signing key") && e.contains(keys.ring.kid()),
        "{e}"
    );
    let e = start(&keys.public_spec, &keys.public_spec);
    assert!(
        e.contains("BRIDLE_SIGNING_KEY") && e.contains("is a public key"),
        "{e}"
    );
    let e = start(&keys.spec, &keys.spec);
    assert!(e.contains("private signing key"), "{e}");
}
