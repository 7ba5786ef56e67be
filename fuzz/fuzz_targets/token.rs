//! Vault tokens: `PublicKeys::verify`, `unverified_claims`, `PublicKeys::parse` and
//! `SigningKey::parse` on any input, and mint/verify round trips of claims derived from the
//! input.
//!
//! Each input is used four ways:
//! 1. as a presented token (verified with the fixed public keys, as a proxy holds them; never
//!    panics, and what verifies is the canonical token of the claims it carries);
//! 2. as the claims JSON of a token genuinely signed with the fixed key, to reach the claims
//!    decoder behind the signature check;
//! 3. as the source of structured claims: minted, they verify to the same claims; any
//!    single-byte change, truncation or extension of the token, the second spelling of its
//!    signature, and the same claims signed with the proxy's public key taken for a secret
//!    are refused;
//! 4. as a key spec: public keys that parse verify only what their own keys signed and refuse
//!    any private key; a signing key that parses mints tokens its public key verifies; and
//!    neither shows key material in its `Debug`.
#![no_main]

use std::sync::OnceLock;

use bridle_core::money::Usd;
use bridle_core::policy::CapsNarrowing;
use bridle_core::token::{
    self, Claims, PublicKeys, SigningKey, TokenError, CLAIMS_VERSION, MAX_TOKEN_LEN, PREFIX,
    SIGNATURE_B64_LEN,
};
use bridle_core::vendor::Vendor;
use bridle_fuzz::{
    previous_signing_key, public_half, public_keys, second_spelling, sign_raw, signing_key,
    KEY_CURRENT, KEY_PREVIOUS, KID_CURRENT, KID_PREVIOUS,
};
use libfuzzer_sys::arbitrary::{self, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Base64url length of `n` bytes without padding.
fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// `hand_signed`: the token was signed here over input bytes, not minted.
fn presented(keys: &PublicKeys, text: &str, hand_signed: bool) {
    let verified = keys.verify(text);
    let unverified = token::unverified_claims(text);
    let _ = token::check_id(text);
    let _ = token::check_label(text);
    if let Err(e) = &verified {
        let _ = (e.reason(), e.to_string());
    }
    let Ok(claims) = verified else { return };
    assert_eq!(claims.v, CLAIMS_VERSION);
    assert!(text.len() <= MAX_TOKEN_LEN);
    assert_eq!(
        unverified.as_ref(),
        Some(&claims),
        "unverified claims differ"
    );
    // The fuzzer cannot forge a signature: what verifies here is a minted seed (or the
    // claims of target 2), and a minted token is the one spelling of its claims (Ed25519 is
    // deterministic).
    let kid = text
        .strip_prefix(PREFIX)
        .and_then(|r| r.split_once('.'))
        .map(|(kid, _)| kid)
        .expect("a verified token has a kid");
    let key: &[u8; 32] = match kid {
        KID_CURRENT => &KEY_CURRENT,
        KID_PREVIOUS => &KEY_PREVIOUS,
        other => panic!("verified under unknown kid {other:?}"),
    };
    let json = serde_json::to_vec(&claims).expect("claims serialize");
    let canonical = sign_raw(kid, key, &json);
    if hand_signed {
        // Claims JSON need not be canonical (spacing, key order, escapes), but it decodes
        // to claims whose canonical token verifies the same.
        assert_eq!(keys.verify(&canonical).as_ref(), Ok(&claims));
    } else {
        assert_eq!(
            canonical, text,
            "a verified token is not the canonical spelling"
        );
    }
}

fn signed_claims(keys: &PublicKeys, data: &[u8]) {
    let token = sign_raw(KID_CURRENT, &KEY_CURRENT, data);
    let expected: Option<Claims> = serde_json::from_slice::<Claims>(data)
        .ok()
        .filter(|c| c.v == CLAIMS_VERSION);
    match keys.verify(&token) {
        Ok(claims) => {
            assert!(token.len() <= MAX_TOKEN_LEN);
            assert_eq!(Some(&claims), expected.as_ref());
            assert_eq!(token::unverified_claims(&token).as_ref(), Some(&claims));
            // Minted again, in canonical form: the same claims (if it still fits).
            if let Ok(again) = signing_key().mint(&claims) {
                assert_eq!(keys.verify(&again).as_ref(), Ok(&claims));
            }
            presented(keys, &token, true);
        }
        Err(TokenError::Malformed(why)) => {
            if token.len() > MAX_TOKEN_LEN {
                assert_eq!(why, "too long");
            } else {
                assert!(
                    expected.is_none(),
                    "genuine claims refused as {why:?}: {:?}",
                    String::from_utf8_lossy(data)
                );
                assert!(
                    matches!(why, "claims are not valid" | "unsupported claims version"),
                    "{why}"
                );
            }
        }
        Err(e) => panic!("a genuinely signed token was refused as {e:?}"),
    }
}

fn usd(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<Usd>> {
    if u.arbitrary::<bool>()? {
        // Every amount a policy or a token may name: at most a billion dollars.
        let micros = u.int_in_range(0..=1_000_000_000_000_000i64)?;
        Ok(Usd::from_micros(micros))
    } else {
        Ok(None)
    }
}

fn claims_from(u: &mut Unstructured<'_>) -> arbitrary::Result<Claims> {
    let v = if u.ratio(1, 16)? {
        u.arbitrary()?
    } else {
        CLAIMS_VERSION
    };
    Ok(Claims {
        v,
        id: u.arbitrary()?,
        policy: u.arbitrary()?,
        vendor: *u.choose(&Vendor::ALL)?,
        iat: u.arbitrary()?,
        exp: u.arbitrary()?,
        label: u.arbitrary()?,
        endpoints: u.arbitrary()?,
        merchants: u.arbitrary()?,
        caps: CapsNarrowing {
            per_transaction: usd(u)?,
            per_window: usd(u)?,
            lifetime: usd(u)?,
        },
    })
}

fn round_trip(keys: &PublicKeys, data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(claims) = claims_from(&mut u) else {
        return;
    };
    let json_len = serde_json::to_vec(&claims).expect("claims serialize").len();
    let expected_len =
        PREFIX.len() + KID_CURRENT.len() + 1 + b64_len(json_len) + 1 + SIGNATURE_B64_LEN;
    let token = match signing_key().mint(&claims) {
        Ok(t) => t,
        Err(e) => {
            assert!(expected_len > MAX_TOKEN_LEN, "mint refused: {e}");
            return;
        }
    };
    assert_eq!(token.len(), expected_len);
    assert!(token.len() <= MAX_TOKEN_LEN);
    let verified = keys.verify(&token);
    if claims.v == CLAIMS_VERSION {
        assert_eq!(
            verified.as_ref(),
            Ok(&claims),
            "minted claims did not round-trip"
        );
    } else {
        assert_eq!(
            verified,
            Err(TokenError::Malformed("unsupported claims version"))
        );
        return;
    }
    // Every signature check costs far more than the parsing around it: the checks below
    // run on one input in four (the unit tests flip every bit of a token, and the property
    // tests try random keys), which keeps the target fast enough to explore the parsers.
    if u.ratio(3, 4).unwrap_or(true) {
        return;
    }
    // Rotation: the previous key alone does not know the current kid; a key of the same
    // kid but other bytes does not verify, and neither does what a proxy could sign with the
    // public keys it holds.
    let (previous_only, impostors) = fixtures();
    assert_eq!(previous_only.verify(&token), Err(TokenError::UnknownKey));
    for impostor in impostors {
        assert_eq!(
            keys.verify(&impostor.mint(&claims).expect("mints")),
            Err(TokenError::BadSignature),
            "{impostor:?} signed a token"
        );
    }
    if let Some(other) = second_spelling(&token) {
        assert!(keys.verify(&other).is_err(), "S + l verifies");
    }

    // Single-byte changes: at the structure's seams, and wherever the input says.
    let bytes = token.as_bytes();
    let mut positions: Vec<usize> = vec![
        0,
        3,
        4,
        bytes.len() - 1,
        bytes.len() - SIGNATURE_B64_LEN - 1,
    ];
    positions.extend(
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'.')
            .map(|(i, _)| i),
    );
    // Each change inside the claims or the signature costs a full verification (the
    // unit tests flip every bit); a few chosen positions keep the target fast.
    for _ in 0..3 {
        match u.choose_index(bytes.len()) {
            Ok(i) => positions.push(i),
            Err(_) => break,
        }
    }
    let chosen: u8 = u.arbitrary().unwrap_or(b'.');
    for &i in &positions {
        for new in [chosen, bytes[i] ^ 0x01] {
            if new == bytes[i] {
                continue;
            }
            let mut m = bytes.to_vec();
            m[i] = new;
            let Ok(s) = String::from_utf8(m) else {
                continue;
            };
            assert!(
                keys.verify(&s).is_err(),
                "byte {i} changed to {new:#04x} still verifies"
            );
        }
    }
    for n in [
        bytes.len() - 1,
        bytes.len() - SIGNATURE_B64_LEN,
        bytes.len() / 2,
        4,
    ] {
        assert!(
            keys.verify(&token[..n]).is_err(),
            "a {n}-byte prefix verifies"
        );
    }
    for extra in ["=", "A", ".", " ", "\n", "=="] {
        assert!(keys.verify(&format!("{token}{extra}")).is_err());
        assert!(keys.verify(&format!("{extra}{token}")).is_err());
    }
}

/// The previous key's public key alone, and keys that must not sign: another secret under
/// the current kid, and each public key of the proxy taken for a secret. Built once:
/// expanding a secret costs a scalar multiplication.
fn fixtures() -> &'static (PublicKeys, Vec<SigningKey>) {
    static FIXTURES: OnceLock<(PublicKeys, Vec<SigningKey>)> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let previous_only =
            PublicKeys::parse(&previous_signing_key().public_entry()).expect("parses");
        let impostors = [
            (KID_CURRENT, [0x33; 32]),
            (KID_CURRENT, public_half(signing_key())),
            (KID_PREVIOUS, public_half(previous_signing_key())),
        ]
        .iter()
        .map(|(kid, secret)| SigningKey::from_seed(kid, secret).expect("a valid kid"))
        .collect();
        (previous_only, impostors)
    })
}

fn example_claims() -> Claims {
    Claims {
        v: CLAIMS_VERSION,
        id: "tok_fuzz".into(),
        policy: "p".into(),
        vendor: Vendor::Stripe,
        iat: 1,
        exp: 2,
        label: "l".into(),
        endpoints: None,
        merchants: None,
        caps: CapsNarrowing::default(),
    }
}

/// Key material never reaches a log: a key is at least 43 base64url characters, a kid at
/// most 32, and Debug shows only kids.
fn debug_hides_keys(text: &str, shown: &str) {
    for entry in text.split(',') {
        if let Some((_, key)) = entry.trim().split_once(':') {
            let key = key.trim_end_matches('=');
            assert!(
                key.len() < 43 || !shown.contains(key),
                "Debug shows key material"
            );
        }
    }
}

fn key_spec(text: &str) {
    if let Ok(keys) = PublicKeys::parse(text) {
        // Public keys from any input verify only what their own keys signed: the fixed
        // signing key's token verifies exactly when its public key is among them.
        let token = signing_key().mint(&example_claims()).expect("mints");
        let holds_current = keys.kids().any(|k| k == KID_CURRENT)
            && text.contains(
                signing_key()
                    .public_entry()
                    .split_once(':')
                    .map_or("", |p| p.1),
            );
        match keys.verify(&token) {
            Ok(c) => {
                assert!(
                    holds_current,
                    "verified without the signing key's public key"
                );
                assert_eq!(c, example_claims());
            }
            Err(e) => assert!(!holds_current || e != TokenError::UnknownKey, "{e:?}"),
        }
        // Never a private key among them.
        assert!(!text.contains(&signing_key().encode()));
        debug_hides_keys(text, &format!("{keys:?}"));
    }
    if let Ok(key) = SigningKey::parse(text) {
        let claims = example_claims();
        let token = key.mint(&claims).expect("a parsed signing key mints");
        let own = PublicKeys::parse(&key.public_entry()).expect("its public key parses");
        assert_eq!(own.verify(&token), Ok(claims));
        assert!(
            PublicKeys::parse(&key.encode()).is_err(),
            "a signing key passed for public keys"
        );
        assert_eq!(
            SigningKey::parse(&key.encode()).map(|k| k.public_entry()),
            Ok(key.public_entry())
        );
        debug_hides_keys(text, &format!("{key:?}"));
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = public_keys();
    let text = String::from_utf8_lossy(data);
    presented(keys, &text, false);
    signed_claims(keys, data);
    round_trip(keys, data);
    if let Ok(text) = std::str::from_utf8(data) {
        key_spec(text);
    }
});
