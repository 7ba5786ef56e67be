//! Vault tokens: self-contained, signed, checked locally with no network hop.
//!
//! ```text
//! bvt_<kid>.<claims>.<signature>
//! ```
//! - `bvt_` is a fixed prefix that secret scanners can match.
//! - `kid` names the signing key in the keyring, so keys rotate without invalidating tokens
//!   signed by the previous key.
//! - `claims` is base64url (no padding) JSON, see [`Claims`].
//! - `signature` is base64url HMAC-SHA256 over everything before the last `.`.
//!
//! Every part is canonical: padding, trailing bits, unknown fields and duplicate fields are
//! refused, so one token has exactly one spelling.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::policy::CapsNarrowing;
use crate::vendor::Vendor;
use crate::Reason;

pub const PREFIX: &str = "bvt_";
/// Longest token accepted. Claims with a few dozen endpoints and merchants fit easily.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Shortest signing key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;
const SIGNATURE_B64_LEN: usize = 43;
pub const CLAIMS_VERSION: u8 = 1;

type HmacSha256 = Hmac<Sha256>;

/// What a token says. Signed, so the filter trusts it once the signature checks out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub v: u8,
    /// Token id: what audit records, revocations and the ledger key on. Not secret.
    pub id: String,
    pub policy: String,
    pub vendor: Vendor,
    /// Issued-at and expiry, unix seconds.
    pub iat: u64,
    pub exp: u64,
    /// Who holds it: an agent run id, or `tenant/agent/run`. Revocable by prefix.
    pub label: String,
    /// Narrowing: a token can only ever shrink its policy's scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchants: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "CapsNarrowing::is_empty")]
    pub caps: CapsNarrowing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed(&'static str),
    UnknownKey,
    BadSignature,
}

impl TokenError {
    pub fn reason(&self) -> Reason {
        match self {
            TokenError::Malformed(_) => Reason::TokenMalformed,
            TokenError::UnknownKey => Reason::TokenUnknownKey,
            TokenError::BadSignature => Reason::TokenBadSignature,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "the vault token is malformed: {why}"),
            TokenError::UnknownKey => {
                f.write_str("the vault token was signed with a key this proxy does not hold")
            }
            TokenError::BadSignature => f.write_str("the vault token's signature does not verify"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Signing keys by id. The first is the current key (used to mint); all of them verify.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for Keyring {
    /// Key ids only: key material never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(kid, _)| kid))
            .finish()
    }
}

fn is_valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 32
        && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Keyring {
    /// Parses `kid:base64url-key[,kid:base64url-key...]`, current key first. Errors name the
    /// entry by position and key id, never by key material.
    pub fn parse(spec: &str) -> Result<Keyring, String> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, entry) in spec.split(',').map(str::trim).enumerate() {
            let Some((kid, key_b64)) = entry.split_once(':') else {
                return Err(format!(
                    "keyring entry {} is not \"kid:base64url-key\"",
                    i + 1
                ));
            };
            if !is_valid_kid(kid) {
                return Err(format!(
                    "keyring entry {}: key id must be 1-32 of [A-Za-z0-9-]",
                    i + 1
                ));
            }
            let key = URL_SAFE_NO_PAD
                .decode(key_b64.trim_end_matches('='))
                .map_err(|_| format!("keyring entry {} ({kid}): key is not base64url", i + 1))?;
            if key.len() < MIN_KEY_LEN {
                return Err(format!(
                    "keyring entry {} ({kid}): key is {} bytes, at least {MIN_KEY_LEN} are required",
                    i + 1,
                    key.len()
                ));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(format!("keyring entry {} repeats key id {kid}", i + 1));
            }
            keys.push((kid.to_string(), key));
        }
        Ok(Keyring { keys })
    }

    /// Encodes a key for a keyring spec: `kid:base64url`.
    pub fn encode_entry(kid: &str, key: &[u8]) -> String {
        format!("{kid}:{}", URL_SAFE_NO_PAD.encode(key))
    }

    pub fn current_kid(&self) -> Option<&str> {
        self.keys.first().map(|(kid, _)| kid.as_str())
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    fn key(&self, kid: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, key)| key.as_slice())
    }

    fn mac(&self, kid: &str) -> Option<HmacSha256> {
        self.key(kid)
            .and_then(|key| HmacSha256::new_from_slice(key).ok())
    }

    /// Signs claims with the current key.
    pub fn mint(&self, claims: &Claims) -> Result<String, String> {
        let kid = self.current_kid().ok_or("the keyring is empty")?;
        let json = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let signed = format!("{PREFIX}{kid}.{}", URL_SAFE_NO_PAD.encode(json));
        let mut mac = self.mac(kid).ok_or("no key")?;
        mac.update(signed.as_bytes());
        let token = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "the token would be {} bytes, over the {MAX_TOKEN_LEN}-byte limit: narrow it with fewer endpoints or merchants",
                token.len()
            ));
        }
        Ok(token)
    }

    /// Checks structure and signature, then decodes the claims. Time, policy and revocation
    /// are the caller's to check: they need the clock and the configuration.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let rest = token
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed("missing the bvt_ prefix"))?;
        let (signed_rest, signature) = rest
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("missing signature"))?;
        let (kid, claims_b64) = signed_rest
            .split_once('.')
            .ok_or(TokenError::Malformed("missing claims"))?;
        if !is_valid_kid(kid) || claims_b64.contains('.') {
            return Err(TokenError::Malformed("bad structure"));
        }
        if signature.len() != SIGNATURE_B64_LEN {
            return Err(TokenError::Malformed("bad signature length"));
        }
        let mut mac = self.mac(kid).ok_or(TokenError::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        // The signed bytes are the token as sent, up to the last '.'.
        let signed_len = token.len() - SIGNATURE_B64_LEN - 1;
        let signed = token
            .get(..signed_len)
            .ok_or(TokenError::Malformed("bad structure"))?;
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("claims are not valid"))?;
        if claims.v != CLAIMS_VERSION {
            return Err(TokenError::Malformed("unsupported claims version"));
        }
        Ok(claims)
    }
}

/// Pulls the id out of a token without verifying it, for error messages about a token that
/// was refused. Never trust the result.
pub fn unverified_claims(token: &str) -> Option<Claims> {
    let claims_b64 = token.strip_prefix(PREFIX)?.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64).ok()?).ok()
}

/// Checks that a token id or label is printable, bounded and free of separators that would
/// make audit queries or prefix revocation ambiguous.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!("token id {id:?} must be 1-64 of [A-Za-z0-9_-]"));
    }
    Ok(())
}

pub fn check_label(label: &str) -> Result<(), String> {
    let ok = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@' | b'+' | b'=')
    };
    if label.is_empty() || label.len() > 200 || !label.bytes().all(ok) {
        return Err(format!(
            "label {label:?} must be 1-200 of [A-Za-z0-9-_.:/@+=], e.g. \"acme/agent-7/run-42\""
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn keyring() -> Keyring {
        Keyring::parse(&format!(
            "k2:{},k1:{}",
            URL_SAFE_NO_PAD.encode([2u8; 32]),
            URL_SAFE_NO_PAD.encode([1u8; 32])
        ))
        .unwrap()
    }

    pub(crate) fn claims() -> Claims {
        Claims {
            v: 1,
            id: "tok_123".into(),
            policy: "stripe-payments".into(),
            vendor: Vendor::Stripe,
            iat: 1_700_000_000,
            exp: 1_700_003_600,
            label: "acme/agent-7/run-42".into(),
            endpoints: Some(vec!["GET /v1/charges/*".into()]),
            merchants: None,
            caps: CapsNarrowing::default(),
        }
    }

    #[test]
    fn round_trips() {
        let ring = keyring();
        let token = ring.mint(&claims()).unwrap();
        assert!(token.starts_with("bvt_k2."));
        assert_eq!(ring.verify(&token).unwrap(), claims());
        assert_eq!(unverified_claims(&token).unwrap().id, "tok_123");
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let ring = keyring();
        let token = ring.mint(&claims()).unwrap();
        let bytes = token.as_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80] {
                let mut t = bytes.to_vec();
                t[i] ^= flip;
                let Ok(s) = String::from_utf8(t) else {
                    continue;
                };
                assert!(
                    ring.verify(&s).is_err(),
                    "flipping bit {flip:#x} of byte {i} was accepted"
                );
            }
        }
    }

    #[test]
    fn truncations_and_extensions_are_refused() {
        let ring = keyring();
        let token = ring.mint(&claims()).unwrap();
        for n in 0..token.len() {
            assert!(
                ring.verify(&token[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        for extra in ["=", "A", ".", " ", "\n"] {
            assert!(ring.verify(&format!("{token}{extra}")).is_err());
            assert!(ring.verify(&format!("{extra}{token}")).is_err());
        }
    }

    #[test]
    fn forged_claims_do_not_verify() {
        let ring = keyring();
        let token = ring.mint(&claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut evil = claims();
        evil.exp += 86_400 * 365;
        evil.endpoints = None;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap()),
            parts[2]
        );
        assert_eq!(ring.verify(&forged), Err(TokenError::BadSignature));
        // Signed by a key the proxy does not hold, under a known kid.
        let other = Keyring::parse(&format!("k2:{}", URL_SAFE_NO_PAD.encode([9u8; 32]))).unwrap();
        assert_eq!(
            ring.verify(&other.mint(&claims()).unwrap()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn rotation_keeps_previous_keys_valid_and_drops_removed_ones() {
        let old = Keyring::parse(&format!("k1:{}", URL_SAFE_NO_PAD.encode([1u8; 32]))).unwrap();
        let old_token = old.mint(&claims()).unwrap();
        let rotated = keyring(); // k2 current, k1 previous
        assert!(rotated.verify(&old_token).is_ok());
        assert!(rotated.mint(&claims()).unwrap().starts_with("bvt_k2."));
        let retired = Keyring::parse(&format!("k2:{}", URL_SAFE_NO_PAD.encode([2u8; 32]))).unwrap();
        assert_eq!(retired.verify(&old_token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn claims_are_strict() {
        let ring = keyring();
        let signed = |json: &str| {
            let s = format!("bvt_k2.{}", URL_SAFE_NO_PAD.encode(json));
            let mut mac = ring.mac("k2").unwrap();
            mac.update(s.as_bytes());
            format!(
                "{s}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            )
        };
        let good = serde_json::to_string(&claims()).unwrap();
        assert!(ring.verify(&signed(&good)).is_ok());
        let unknown = good.replacen('{', "{\"admin\":true,", 1);
        assert!(matches!(
            ring.verify(&signed(&unknown)),
            Err(TokenError::Malformed(_))
        ));
        let dup = good.replacen('{', "{\"policy\":\"other\",", 1);
        assert!(matches!(
            ring.verify(&signed(&dup)),
            Err(TokenError::Malformed(_))
        ));
        let v2 = good.replacen("\"v\":1", "\"v\":2", 1);
        assert!(matches!(
            ring.verify(&signed(&v2)),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn keyring_errors_never_show_key_material() {
        let short = URL_SAFE_NO_PAD.encode([7u8; 16]);
        let e = Keyring::parse(&format!("k1:{short}")).unwrap_err();
        assert!(e.contains("16 bytes") && !e.contains(&short), "{e}");
        assert!(Keyring::parse("k1").is_err());
        assert!(Keyring::parse("bad kid:AAAA").is_err());
        let k = URL_SAFE_NO_PAD.encode([1u8; 32]);
        assert!(Keyring::parse(&format!("a:{k},a:{k}"))
            .unwrap_err()
            .contains("repeats"));
        let ring = keyring();
        assert_eq!(format!("{ring:?}"), "[\"k2\", \"k1\"]");
    }

    #[test]
    fn ids_and_labels_are_bounded() {
        assert!(check_id("tok_01HX-abc").is_ok());
        assert!(check_id("tok 1").is_err());
        assert!(check_id("").is_err());
        assert!(check_label("acme/agent-7/run-42").is_ok());
        assert!(check_label("acme agent").is_err());
        assert!(check_label(&"a".repeat(201)).is_err());
    }
}
