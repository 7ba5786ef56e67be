//! Signing keys, vault tokens and canary secrets for tests.
//!
//! Each test gets a fresh Ed25519 signing key: the ledger is given the key itself, Envoy only
//! its public key, as in production.
//!
//! Every vendor secret the tests hand Envoy is a canary: a value that must never show up in
//! a response, a log, an audit record or a metric. Tests grep for them.

use std::time::{SystemTime, UNIX_EPOCH};

use bridle_core::token::{Claims, SigningKey};
use bridle_core::vendor::Vendor;

pub use bridle_core::config::{DEFAULT_PUBLIC_KEYS_ENV as PUBLIC_KEYS_ENV, SIGNING_KEY_ENV};
pub const ENFORCER_KEY: &str = "enf_CANARY_enforcer_5b0d3a";
pub const ADMIN_KEY: &str = "adm_CANARY_admin_7c11e4";

/// The environment variable and canary value of each vendor's secret in test policies.
pub fn canary_secret(vendor: Vendor) -> (&'static str, &'static str) {
    match vendor {
        Vendor::Stripe => ("STRIPE_SECRET_KEY", "sk_test_CANARY_stripe_9f3a61c2"),
        Vendor::Twilio => (
            "TWILIO_API_KEY",
            "SK0000000000000000000000000CANARY:CANARY_twilio_secret_77",
        ),
        Vendor::Resend => ("RESEND_API_KEY", "re_CANARY_resend_2e8b4f"),
        Vendor::Openai => ("OPENAI_API_KEY", "sk-CANARY-openai-c41d90"),
        Vendor::Anthropic => ("ANTHROPIC_API_KEY", "sk-ant-CANARY-anthropic-83aa17"),
    }
}

pub fn all_canaries() -> Vec<&'static str> {
    let mut v: Vec<&str> = Vendor::ALL.iter().map(|v| canary_secret(*v).1).collect();
    v.push(ENFORCER_KEY);
    v.push(ADMIN_KEY);
    v
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh signing key for one test, and the public keys proxies verify with.
#[derive(Clone)]
pub struct Keys {
    /// The signing key, `kid:base64url`: what the ledger gets as `BRIDLE_SIGNING_KEY`.
    pub spec: String,
    /// The same key, to mint with.
    pub ring: SigningKey,
    /// `BRIDLE_PUBLIC_KEYS`, all Envoy gets: the signing key's public key, and any others
    /// added with [`Keys::trusting`].
    pub public_spec: String,
}

impl Keys {
    pub fn generate() -> Keys {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        let key = SigningKey::from_seed(&format!("e2e-{}", random_hex(3)), &seed).unwrap();
        Keys::from_spec(&key.encode())
    }

    /// From a signing key spec (`bridle keygen`'s output).
    pub fn from_spec(spec: &str) -> Keys {
        let ring = SigningKey::parse(spec).unwrap();
        Keys {
            spec: spec.to_string(),
            public_spec: ring.public_entry(),
            ring,
        }
    }

    /// These keys, with `other`'s public keys verifying too (a rotation in progress).
    pub fn trusting(mut self, other: &Keys) -> Keys {
        self.public_spec = format!("{},{}", self.public_spec, other.public_spec);
        self
    }

    pub fn mint(&self, claims: &Claims) -> String {
        self.ring.mint(claims).unwrap()
    }

    /// A token for `policy` with no narrowing, valid for ten minutes.
    pub fn token(&self, policy: &str, vendor: Vendor) -> String {
        self.mint(&claims(policy, vendor))
    }
}

/// Plain claims for `policy`: no narrowing, issued now, ten minutes to live.
pub fn claims(policy: &str, vendor: Vendor) -> Claims {
    let now = now();
    Claims {
        v: 1,
        id: format!("tok_{}", random_hex(8)),
        policy: policy.into(),
        vendor,
        iat: now - 5,
        exp: now + 600,
        label: format!("e2e/run-{}", random_hex(4)),
        endpoints: None,
        merchants: None,
        caps: Default::default(),
    }
}
