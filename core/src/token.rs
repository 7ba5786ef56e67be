//! Vault tokens: self-contained, signed, checked locally with no network hop.
//!
//! ```text
//! bvt_<kid>.<claims>.<signature>
//! ```
//! - `bvt_` is a fixed prefix that secret scanners can match.
//! - `kid` names the signing key, so keys rotate without invalidating tokens signed by the
//!   previous key.
//! - `claims` is base64url (no padding) JSON, see [`Claims`].
//! - `signature` is base64url Ed25519 over everything before the last `.`.
//!
//! Signing is asymmetric so that a proxy can verify but never mint: the ledger (and `bridle
//! mint`) hold the one [`SigningKey`]; Envoy holds only [`PublicKeys`], and nothing a proxy's
//! environment contains signs a token that verifies.
//!
//! Every part is canonical: padding, trailing bits, unknown fields and duplicate fields are
//! refused, and signatures are checked strictly (no non-canonical scalar, no small-order
//! point), so one token has exactly one spelling.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::policy::CapsNarrowing;
use crate::vendor::Vendor;
use crate::Reason;

pub const PREFIX: &str = "bvt_";
/// Longest token accepted. Claims with a few dozen endpoints and merchants fit easily.
pub const MAX_TOKEN_LEN: usize = 4096;
/// An Ed25519 public key, in bytes.
pub const PUBLIC_KEY_LEN: usize = ed25519_dalek::PUBLIC_KEY_LENGTH;
/// A signing key as Bridle writes it: the 32-byte secret, then its 32-byte public half, so
/// that it can never be mistaken for a public key (or for an HMAC key of the old format).
pub const SIGNING_KEY_LEN: usize = ed25519_dalek::KEYPAIR_LENGTH;
/// Base64url length of a 64-byte Ed25519 signature.
pub const SIGNATURE_B64_LEN: usize = 86;
pub const CLAIMS_VERSION: u8 = 1;

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
                f.write_str("the vault token was signed with a key this proxy does not know")
            }
            TokenError::BadSignature => f.write_str("the vault token's signature does not verify"),
        }
    }
}

impl std::error::Error for TokenError {}

fn is_valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 32
        && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The entries of a key spec, `kid:base64url[,kid:base64url...]`, decoded. Errors name the
/// entry by position and key id, never by key material.
fn key_entries(spec: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, entry) in spec.split(',').map(str::trim).enumerate() {
        let n = i + 1;
        let Some((kid, key_b64)) = entry.split_once(':') else {
            return Err(format!("entry {n} is not \"kid:base64url-key\""));
        };
        if !is_valid_kid(kid) {
            return Err(format!("entry {n}: key id must be 1-32 of [A-Za-z0-9-]"));
        }
        let key = URL_SAFE_NO_PAD
            .decode(key_b64.trim_end_matches('='))
            .map_err(|_| format!("entry {n} ({kid}): key is not base64url"))?;
        if entries.iter().any(|(k, _)| k == kid) {
            return Err(format!("entry {n} repeats key id {kid}"));
        }
        entries.push((kid.to_string(), key));
    }
    Ok(entries)
}

/// Splits a token into its key id, its signed part and its signature, checking the shape.
fn split(token: &str) -> Result<(&str, &str, &str, &str), TokenError> {
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
    // The signed bytes are the token as sent, up to the last '.'.
    let signed = token
        .get(..token.len() - SIGNATURE_B64_LEN - 1)
        .ok_or(TokenError::Malformed("bad structure"))?;
    Ok((kid, claims_b64, signed, signature))
}

/// The public keys that verify tokens, by id: all a proxy holds. They verify; nothing here
/// can mint.
#[derive(Clone)]
pub struct PublicKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl fmt::Debug for PublicKeys {
    /// Key ids only, like every key type here.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(kid, _)| kid))
            .finish()
    }
}

impl PublicKeys {
    /// Parses `kid:base64url-public-key[,...]` (the output of `bridle pubkey`), current key
    /// first by convention; every key verifies. A private signing key here is refused: a
    /// proxy must never hold one.
    pub fn parse(spec: &str) -> Result<PublicKeys, String> {
        let mut keys = Vec::new();
        for (i, (kid, bytes)) in key_entries(spec)?.into_iter().enumerate() {
            let n = i + 1;
            let bytes: [u8; PUBLIC_KEY_LEN] = match bytes.len() {
                SIGNING_KEY_LEN => return Err(format!(
                    "entry {n} ({kid}) is a private signing key: a proxy must hold only public keys (derive them with `bridle pubkey`)"
                )),
                PUBLIC_KEY_LEN => bytes.try_into().map_err(|_| format!("entry {n} ({kid}): key is not {PUBLIC_KEY_LEN} bytes"))?,
                len => return Err(format!(
                    "entry {n} ({kid}): key is {len} bytes, an Ed25519 public key is {PUBLIC_KEY_LEN}"
                )),
            };
            let key = VerifyingKey::from_bytes(&bytes)
                .ok()
                .filter(|k| !k.is_weak())
                .ok_or_else(|| format!("entry {n} ({kid}) is not a valid Ed25519 public key"))?;
            keys.push((kid, key));
        }
        Ok(PublicKeys { keys })
    }

    /// One entry of a spec: `kid:base64url`.
    pub fn encode_entry(kid: &str, key: &[u8; PUBLIC_KEY_LEN]) -> String {
        format!("{kid}:{}", URL_SAFE_NO_PAD.encode(key))
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    fn key(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key)
    }

    /// Checks structure and signature, then decodes the claims. Time, policy and revocation
    /// are the caller's to check: they need the clock and the configuration.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (kid, claims_b64, signed, signature) = split(token)?;
        let key = self.key(kid).ok_or(TokenError::UnknownKey)?;
        let signature: [u8; ed25519_dalek::SIGNATURE_LENGTH] = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(TokenError::Malformed("signature is not base64url"))?;
        // Strict: refuses a non-canonical scalar and small-order points, so that no second
        // signature of the same claims verifies.
        key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&signature))
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

/// The private key that signs tokens, with its id: only the ledger and `bridle mint` hold
/// it. One at a time: after a rotation the old key is kept only as a public key.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    /// The key id only: key material never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SigningKey").field(&self.kid).finish()
    }
}

impl SigningKey {
    /// A signing key from 32 secret random bytes (`bridle keygen` reads them from the OS).
    pub fn from_seed(kid: &str, seed: &[u8; 32]) -> Result<SigningKey, String> {
        if !is_valid_kid(kid) {
            return Err("key id must be 1-32 of [A-Za-z0-9-]".into());
        }
        Ok(SigningKey {
            kid: kid.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    /// Parses `kid:base64url` as [`SigningKey::encode`] writes it (the output of `bridle
    /// keygen`).
    pub fn parse(spec: &str) -> Result<SigningKey, String> {
        let mut entries = key_entries(spec)?;
        if entries.len() != 1 {
            return Err(
                "holds one signing key; keys that only verify belong in the public keys".into(),
            );
        }
        let (kid, bytes) = entries.remove(0);
        let bytes: [u8; SIGNING_KEY_LEN] = match bytes.len() {
            PUBLIC_KEY_LEN => return Err(format!(
                "{kid}: {PUBLIC_KEY_LEN} bytes is a public key (or an HMAC key of the old format), not a signing key: generate one with `bridle keygen`"
            )),
            SIGNING_KEY_LEN => bytes.try_into().map_err(|_| format!("{kid}: key is not {SIGNING_KEY_LEN} bytes"))?,
            len => return Err(format!(
                "{kid}: key is {len} bytes, a signing key is {SIGNING_KEY_LEN}: generate one with `bridle keygen`"
            )),
        };
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| format!("{kid}: the key's public half does not match its secret"))?;
        Ok(SigningKey { kid, key })
    }

    /// `kid:base64url` of the secret and its public half: what [`SigningKey::parse`] reads.
    pub fn encode(&self) -> String {
        format!(
            "{}:{}",
            self.kid,
            URL_SAFE_NO_PAD.encode(self.key.to_keypair_bytes())
        )
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// This key's public entry, `kid:base64url`, for the proxies' public keys.
    pub fn public_entry(&self) -> String {
        PublicKeys::encode_entry(&self.kid, self.key.verifying_key().as_bytes())
    }

    /// The public keys that hold only this key.
    pub fn public_keys(&self) -> PublicKeys {
        PublicKeys {
            keys: vec![(self.kid.clone(), self.key.verifying_key())],
        }
    }

    /// Signs claims.
    pub fn mint(&self, claims: &Claims) -> Result<String, String> {
        let json = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let signed = format!("{PREFIX}{}.{}", self.kid, URL_SAFE_NO_PAD.encode(json));
        let len = signed.len() + 1 + SIGNATURE_B64_LEN;
        if len > MAX_TOKEN_LEN {
            return Err(format!(
                "the token would be {len} bytes, over the {MAX_TOKEN_LEN}-byte limit: narrow it with fewer endpoints or merchants"
            ));
        }
        let signature = self.key.sign(signed.as_bytes());
        Ok(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

/// What the ledger holds: the signing key that mints, and the public keys that verify the
/// tokens presented to it (those of earlier keys too, until their tokens expire).
#[derive(Clone, Debug)]
pub struct SigningKeyring {
    signing: SigningKey,
    public: PublicKeys,
}

impl SigningKeyring {
    /// `public`: the proxies' public keys, which must include the signing key's own (else
    /// the proxies would refuse every token minted); `None` verifies with that key alone.
    pub fn new(signing: SigningKey, public: Option<PublicKeys>) -> Result<SigningKeyring, String> {
        let own = signing.key.verifying_key();
        let public = match public {
            None => signing.public_keys(),
            Some(p) => match p.key(&signing.kid) {
                Some(k) if *k == own => p,
                Some(_) => {
                    return Err(format!(
                        "the public key listed as {} is not the signing key's",
                        signing.kid
                    ))
                }
                None => {
                    return Err(format!(
                        "the public keys do not list the signing key {}: publish its public key (`bridle pubkey`) to every proxy first",
                        signing.kid
                    ))
                }
            },
        };
        Ok(SigningKeyring { signing, public })
    }

    /// The id of the key that mints.
    pub fn current_kid(&self) -> &str {
        self.signing.kid()
    }

    pub fn public_keys(&self) -> &PublicKeys {
        &self.public
    }

    pub fn mint(&self, claims: &Claims) -> Result<String, String> {
        self.signing.mint(claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.public.verify(token)
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

    /// The current signing key, `k2`.
    pub(crate) fn signing_key() -> SigningKey {
        SigningKey::from_seed("k2", &[2u8; 32]).unwrap()
    }

    /// The previous signing key, `k1`: its tokens still verify.
    pub(crate) fn previous_signing_key() -> SigningKey {
        SigningKey::from_seed("k1", &[1u8; 32]).unwrap()
    }

    /// What a proxy holds: the public keys of `k2` and `k1`.
    pub(crate) fn public_spec() -> String {
        format!(
            "{},{}",
            signing_key().public_entry(),
            previous_signing_key().public_entry()
        )
    }

    pub(crate) fn public_keys() -> PublicKeys {
        PublicKeys::parse(&public_spec()).unwrap()
    }

    /// What the ledger holds: `k2` signs, `k2` and `k1` verify.
    pub(crate) fn keyring() -> SigningKeyring {
        SigningKeyring::new(signing_key(), Some(public_keys())).unwrap()
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

    /// A token over any claims JSON, signed by `key` as `mint` signs.
    fn signed(key: &SigningKey, json: &str) -> String {
        let s = format!("bvt_{}.{}", key.kid(), URL_SAFE_NO_PAD.encode(json));
        format!(
            "{s}.{}",
            URL_SAFE_NO_PAD.encode(key.key.sign(s.as_bytes()).to_bytes())
        )
    }

    #[test]
    fn round_trips() {
        let ring = keyring();
        let token = ring.mint(&claims()).unwrap();
        assert!(token.starts_with("bvt_k2."));
        assert_eq!(token.rsplit_once('.').unwrap().1.len(), SIGNATURE_B64_LEN);
        assert_eq!(ring.verify(&token).unwrap(), claims());
        assert_eq!(public_keys().verify(&token).unwrap(), claims());
        assert_eq!(unverified_claims(&token).unwrap().id, "tok_123");
        // Ed25519 is deterministic: the same claims, the same token.
        assert_eq!(ring.mint(&claims()).unwrap(), token);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let keys = public_keys();
        let token = signing_key().mint(&claims()).unwrap();
        let bytes = token.as_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80] {
                let mut t = bytes.to_vec();
                t[i] ^= flip;
                let Ok(s) = String::from_utf8(t) else {
                    continue;
                };
                assert!(
                    keys.verify(&s).is_err(),
                    "flipping bit {flip:#x} of byte {i} was accepted"
                );
            }
        }
    }

    #[test]
    fn truncations_and_extensions_are_refused() {
        let keys = public_keys();
        let token = signing_key().mint(&claims()).unwrap();
        for n in 0..token.len() {
            assert!(
                keys.verify(&token[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        for extra in ["=", "A", ".", " ", "\n"] {
            assert!(keys.verify(&format!("{token}{extra}")).is_err());
            assert!(keys.verify(&format!("{extra}{token}")).is_err());
        }
    }

    #[test]
    fn forged_claims_do_not_verify() {
        let keys = public_keys();
        let token = signing_key().mint(&claims()).unwrap();
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
        assert_eq!(keys.verify(&forged), Err(TokenError::BadSignature));
        // Signed by a key the proxy does not hold, under a known kid.
        let other = SigningKey::from_seed("k2", &[9u8; 32]).unwrap();
        assert_eq!(
            keys.verify(&other.mint(&claims()).unwrap()),
            Err(TokenError::BadSignature)
        );
        // The previous key's signature moved onto the current kid.
        let old = previous_signing_key().mint(&claims()).unwrap();
        let moved = old.replacen("bvt_k1.", "bvt_k2.", 1);
        assert_eq!(keys.verify(&moved), Err(TokenError::BadSignature));
    }

    /// Whoever reads a proxy's environment gets its public keys, and nothing they can make of
    /// them signs a token the proxy accepts.
    #[test]
    fn a_proxys_keys_cannot_mint() {
        let spec = public_spec();
        let keys = PublicKeys::parse(&spec).unwrap();
        assert!(!spec.contains(&signing_key().encode()));
        let mut attempts = 0;
        for entry in spec.split(',') {
            let (kid, b64) = entry.split_once(':').unwrap();
            let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(b64).unwrap().try_into().unwrap();
            // The public key taken for a secret, under its own kid and the other one.
            for kid in [kid, "k1", "k2"] {
                let key = SigningKey::from_seed(kid, &bytes).unwrap();
                assert_eq!(
                    keys.verify(&key.mint(&claims()).unwrap()),
                    Err(TokenError::BadSignature)
                );
                attempts += 1;
            }
        }
        assert_eq!(attempts, 6);
        // Without a key: a signature of zeros, of ones, the public key twice, another
        // token's signature.
        let signed_part = |t: &str| t.rsplit_once('.').unwrap().0.to_string();
        let real = signing_key().mint(&claims()).unwrap();
        let mut evil = claims();
        evil.policy = "other".into();
        let evil_signed = signed_part(&signing_key().mint(&evil).unwrap());
        let public = signing_key().key.verifying_key().to_bytes();
        for sig in [
            [0u8; 64],
            [0xffu8; 64],
            [public, public].concat().try_into().unwrap(),
            URL_SAFE_NO_PAD
                .decode(real.rsplit_once('.').unwrap().1)
                .unwrap()
                .try_into()
                .unwrap(),
        ] {
            let forged = format!("{evil_signed}.{}", URL_SAFE_NO_PAD.encode::<[u8; 64]>(sig));
            assert!(keys.verify(&forged).is_err());
        }
    }

    #[test]
    fn a_second_spelling_of_a_signature_is_refused() {
        // S + l, the group order, verifies under the lax check; the strict one refuses it.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let token = signing_key().mint(&claims()).unwrap();
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let mut carry = 0u16;
        for (i, l) in L.iter().enumerate() {
            let sum = u16::from(sig[32 + i]) + u16::from(*l) + carry;
            sig[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        let other = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_ne!(other, token);
        assert_eq!(public_keys().verify(&other), Err(TokenError::BadSignature));
    }

    #[test]
    fn rotation_keeps_previous_keys_valid_and_drops_removed_ones() {
        let old_token = previous_signing_key().mint(&claims()).unwrap();
        let rotated = keyring(); // k2 signs, k1 still verifies
        assert!(rotated.verify(&old_token).is_ok());
        assert!(rotated.mint(&claims()).unwrap().starts_with("bvt_k2."));
        let retired = PublicKeys::parse(&signing_key().public_entry()).unwrap();
        assert_eq!(retired.verify(&old_token), Err(TokenError::UnknownKey));
        assert_eq!(rotated.current_kid(), "k2");
    }

    #[test]
    fn the_ledger_refuses_a_signing_key_the_proxies_would_not_accept() {
        let only_old = PublicKeys::parse(&previous_signing_key().public_entry()).unwrap();
        let e = SigningKeyring::new(signing_key(), Some(only_old)).unwrap_err();
        assert!(e.contains("do not list the signing key k2"), "{e}");
        let impostor = SigningKey::from_seed("k2", &[9u8; 32]).unwrap();
        let e = SigningKeyring::new(impostor, Some(public_keys())).unwrap_err();
        assert!(e.contains("not the signing key's"), "{e}");
        let alone = SigningKeyring::new(signing_key(), None).unwrap();
        assert_eq!(alone.public_keys().kids().collect::<Vec<_>>(), ["k2"]);
    }

    #[test]
    fn claims_are_strict() {
        let keys = public_keys();
        let key = signing_key();
        let good = serde_json::to_string(&claims()).unwrap();
        assert!(keys.verify(&signed(&key, &good)).is_ok());
        let unknown = good.replacen('{', "{\"admin\":true,", 1);
        assert!(matches!(
            keys.verify(&signed(&key, &unknown)),
            Err(TokenError::Malformed(_))
        ));
        let dup = good.replacen('{', "{\"policy\":\"other\",", 1);
        assert!(matches!(
            keys.verify(&signed(&key, &dup)),
            Err(TokenError::Malformed(_))
        ));
        let v2 = good.replacen("\"v\":1", "\"v\":2", 1);
        assert!(matches!(
            keys.verify(&signed(&key, &v2)),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn each_key_goes_only_where_it_belongs() {
        let key = signing_key();
        let encoded = key.encode();
        let secret_b64 = encoded.split_once(':').unwrap().1;
        // A signing key in the proxies' public keys: refused, and named as such.
        let e = PublicKeys::parse(&encoded).unwrap_err();
        assert!(
            e.contains("private signing key") && !e.contains(secret_b64),
            "{e}"
        );
        // A public key (or an old 32-byte HMAC key) where the signing key goes.
        let e = SigningKey::parse(&key.public_entry()).unwrap_err();
        assert!(e.contains("is a public key"), "{e}");
        let hmac = format!("k1:{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(SigningKey::parse(&hmac).is_err());
        // A signing key whose public half was swapped.
        let mut bytes = key.key.to_keypair_bytes();
        bytes[32..].copy_from_slice(previous_signing_key().key.verifying_key().as_bytes());
        let e = SigningKey::parse(&format!("k2:{}", URL_SAFE_NO_PAD.encode(bytes))).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        // One signing key at a time.
        let two = format!("{encoded},{}", previous_signing_key().encode());
        assert!(SigningKey::parse(&two)
            .unwrap_err()
            .contains("one signing key"));
        // Round trip.
        let back = SigningKey::parse(&encoded).unwrap();
        assert_eq!(back.public_entry(), key.public_entry());
        assert_eq!(back.mint(&claims()), key.mint(&claims()));
    }

    #[test]
    fn key_errors_never_show_key_material() {
        let short = URL_SAFE_NO_PAD.encode([7u8; 16]);
        let e = PublicKeys::parse(&format!("k1:{short}")).unwrap_err();
        assert!(e.contains("16 bytes") && !e.contains(&short), "{e}");
        let e = SigningKey::parse(&format!("k1:{short}")).unwrap_err();
        assert!(e.contains("16 bytes") && !e.contains(&short), "{e}");
        assert!(PublicKeys::parse("k1").is_err());
        assert!(PublicKeys::parse("").is_err());
        assert!(PublicKeys::parse("bad kid:AAAA").is_err());
        // A point of small order is not a key anyone can be held to.
        let weak = format!("k1:{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert!(PublicKeys::parse(&weak)
            .unwrap_err()
            .contains("not a valid"));
        let k = signing_key().public_entry();
        let dup = format!("{k},{k}");
        assert!(PublicKeys::parse(&dup).unwrap_err().contains("repeats"));
        assert_eq!(format!("{:?}", public_keys()), "[\"k2\", \"k1\"]");
        let shown = format!("{:?} {:?}", signing_key(), keyring());
        assert!(!shown.contains(signing_key().encode().split_once(':').unwrap().1));
        assert!(shown.contains("k2"), "{shown}");
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
