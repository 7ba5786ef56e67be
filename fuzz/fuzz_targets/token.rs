//! Vault tokens: `Keyring::verify`, `unverified_claims` and `Keyring::parse` on any input,
//! and mint/verify round trips of claims derived from the input.
//!
//! Each input is used four ways:
//! 1. as a presented token (verified with the fixed keyring; never panics, and what verifies
//!    is a canonical token of the claims it carries);
//! 2. as the claims JSON of a token genuinely signed with the fixed key, to reach the claims
//!    decoder behind the signature check;
//! 3. as the source of structured claims: minted, they verify to the same claims, and any
//!    single-byte change, truncation or extension of the token is refused;
//! 4. as a keyring spec: one that parses mints tokens it verifies, and never shows key
//!    material in its `Debug`.
#![no_main]

use bridle_core::money::Usd;
use bridle_core::policy::CapsNarrowing;
use bridle_core::token::{
    self, Claims, Keyring, TokenError, CLAIMS_VERSION, MAX_TOKEN_LEN, PREFIX,
};
use bridle_core::vendor::Vendor;
use bridle_fuzz::{keyring, sign_raw, KEY_CURRENT, KEY_PREVIOUS, KID_CURRENT, KID_PREVIOUS};
use libfuzzer_sys::arbitrary::{self, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Base64url length of `n` bytes without padding.
fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// `hand_signed`: the token was signed here over input bytes, not minted.
fn presented(ring: &Keyring, text: &str, hand_signed: bool) {
    let verified = ring.verify(text);
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
    // claims of target 2), and a minted token is the one spelling of its claims.
    let kid = text
        .strip_prefix(PREFIX)
        .and_then(|r| r.split_once('.'))
        .map(|(kid, _)| kid)
        .expect("a verified token has a kid");
    let key: &[u8] = match kid {
        KID_CURRENT => &KEY_CURRENT,
        KID_PREVIOUS => &KEY_PREVIOUS,
        other => panic!("verified under unknown kid {other:?}"),
    };
    let json = serde_json::to_vec(&claims).expect("claims serialize");
    let canonical = sign_raw(kid, key, &json);
    if hand_signed {
        // Claims JSON need not be canonical (spacing, key order, escapes), but it decodes
        // to claims whose canonical token verifies the same.
        assert_eq!(ring.verify(&canonical).as_ref(), Ok(&claims));
    } else {
        assert_eq!(
            canonical, text,
            "a verified token is not the canonical spelling"
        );
    }
}

fn signed_claims(ring: &Keyring, data: &[u8]) {
    let token = sign_raw(KID_CURRENT, &KEY_CURRENT, data);
    let expected: Option<Claims> = serde_json::from_slice::<Claims>(data)
        .ok()
        .filter(|c| c.v == CLAIMS_VERSION);
    match ring.verify(&token) {
        Ok(claims) => {
            assert!(token.len() <= MAX_TOKEN_LEN);
            assert_eq!(Some(&claims), expected.as_ref());
            assert_eq!(token::unverified_claims(&token).as_ref(), Some(&claims));
            // Minted again, in canonical form: the same claims (if it still fits).
            if let Ok(again) = ring.mint(&claims) {
                assert_eq!(ring.verify(&again).as_ref(), Ok(&claims));
            }
            presented(ring, &token, true);
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

fn round_trip(ring: &Keyring, data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(claims) = claims_from(&mut u) else {
        return;
    };
    let json_len = serde_json::to_vec(&claims).expect("claims serialize").len();
    let expected_len = PREFIX.len() + KID_CURRENT.len() + 1 + b64_len(json_len) + 1 + 43;
    let token = match ring.mint(&claims) {
        Ok(t) => t,
        Err(e) => {
            assert!(expected_len > MAX_TOKEN_LEN, "mint refused: {e}");
            return;
        }
    };
    assert_eq!(token.len(), expected_len);
    assert!(token.len() <= MAX_TOKEN_LEN);
    let verified = ring.verify(&token);
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
    // Rotation: the previous key alone does not know the current kid; a key of the same
    // kid but other bytes does not verify.
    let previous_only =
        Keyring::parse(&Keyring::encode_entry(KID_PREVIOUS, &KEY_PREVIOUS)).expect("parses");
    assert_eq!(previous_only.verify(&token), Err(TokenError::UnknownKey));
    let impostor =
        Keyring::parse(&Keyring::encode_entry(KID_CURRENT, &[0x33; 32])).expect("parses");
    assert_eq!(impostor.verify(&token), Err(TokenError::BadSignature));

    // Single-byte changes: at the structure's seams, and wherever the input says.
    let bytes = token.as_bytes();
    let mut positions: Vec<usize> = vec![0, 3, 4, bytes.len() - 1, bytes.len() - 44];
    positions.extend(
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'.')
            .map(|(i, _)| i),
    );
    for _ in 0..8 {
        match u.choose_index(bytes.len()) {
            Ok(i) => positions.push(i),
            Err(_) => break,
        }
    }
    let chosen: u8 = u.arbitrary().unwrap_or(b'.');
    for &i in &positions {
        for new in [chosen, bytes[i] ^ 0x01, bytes[i] ^ 0x20, b'.'] {
            if new == bytes[i] {
                continue;
            }
            let mut m = bytes.to_vec();
            m[i] = new;
            let Ok(s) = String::from_utf8(m) else {
                continue;
            };
            assert!(
                ring.verify(&s).is_err(),
                "byte {i} changed to {new:#04x} still verifies"
            );
        }
    }
    for n in [bytes.len() - 1, bytes.len() - 43, bytes.len() / 2, 4] {
        assert!(
            ring.verify(&token[..n]).is_err(),
            "a {n}-byte prefix verifies"
        );
    }
    for extra in ["=", "A", ".", " ", "\n", "=="] {
        assert!(ring.verify(&format!("{token}{extra}")).is_err());
        assert!(ring.verify(&format!("{extra}{token}")).is_err());
    }
}

fn keyring_spec(text: &str) {
    let Ok(ring) = Keyring::parse(text) else {
        return;
    };
    let kid = ring
        .current_kid()
        .expect("a parsed keyring has a current key");
    assert!(ring.kids().any(|k| k == kid));
    let claims = Claims {
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
    };
    let token = ring.mint(&claims).expect("a parsed keyring mints");
    assert_eq!(ring.verify(&token), Ok(claims));
    // Key material never reaches a log: a key is at least 43 base64url characters, a kid at
    // most 32, and Debug shows only kids.
    let shown = format!("{ring:?}");
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

fuzz_target!(|data: &[u8]| {
    let ring = keyring();
    let text = String::from_utf8_lossy(data);
    presented(ring, &text, false);
    signed_claims(ring, data);
    round_trip(ring, data);
    if let Ok(text) = std::str::from_utf8(data) {
        keyring_spec(text);
    }
});
