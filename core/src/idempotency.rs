//! Idempotency keys on the filter's side: which requests carry one the ledger may honour, and
//! the digest that binds a key to the request first sent under it.
//!
//! A retry under a key the ledger already holds counts nothing new, so a key is honoured only
//! where the vendor does the same: it answers the retry from its first execution instead of
//! executing it again ([`Vendor::idempotency_header`], per vendor and endpoint). Elsewhere
//! every call is priced afresh and the key goes to the vendor as any other header.
//!
//! The ledger replays a key only for the same digest: SHA-256 over everything that was
//! priced and reserved (vendor, method, canonical path, merchant, the priced amount and how
//! it was worked out, and a hash of the body). The same key sent with another amount,
//! merchant, path or body is refused (`idempotency_key_reused`), never let through uncounted.
//!
//! A request with the idempotency header twice, or with a comma in it (how a proxy joins two),
//! is refused whatever the vendor: Bridle would read one key and a vendor another.

use sha2::{Digest, Sha256};

use crate::decision::{Denial, Request};
use crate::money::Usd;
use crate::vendor::Vendor;
use crate::Reason;

/// The idempotency header every vendor that honours keys uses (and the IETF draft names).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Longest idempotency key passed to the ledger (Stripe's own limit).
const MAX_KEY: usize = 255;

/// Refuses a request with more than one idempotency key: the header twice, or a value with a
/// comma, which is how HTTP joins repeated headers and so how a vendor may read two keys.
pub fn check_single(req: &Request<'_>) -> Result<(), Denial> {
    let mut values = req.all(IDEMPOTENCY_HEADER);
    let first = values.next();
    let repeated = values.next().is_some();
    if repeated || first.is_some_and(|v| v.contains(&b',')) {
        return Err(Denial::new(
            Reason::IdempotencyKeyAmbiguous,
            "Send at most one Idempotency-Key header, with one key and no comma.",
        ));
    }
    Ok(())
}

/// The request's idempotency key, if its vendor honours one for `method path` and it is one
/// the ledger can keep: printable ASCII, at most [`MAX_KEY`] bytes. Any other key is not the
/// ledger's business: the call is priced afresh (and the vendor, which refuses a malformed
/// key, decides what to make of it).
pub fn key(
    vendor: Vendor,
    method: &str,
    path: &str,
    headers: &[(String, Vec<u8>)],
) -> Option<String> {
    let name = vendor.idempotency_header(method, path)?;
    let key = headers.iter().find(|(n, _)| n == name)?.1.as_slice();
    let key = std::str::from_utf8(key).ok()?;
    let valid =
        !key.is_empty() && key.len() <= MAX_KEY && key.bytes().all(|b| (0x20..0x7f).contains(&b));
    valid.then(|| key.to_string())
}

/// What was reserved, as the ledger binds it to a key.
pub struct Reserved<'a> {
    pub vendor: Vendor,
    pub method: &'a str,
    /// The canonical path Bridle matched.
    pub path: &'a str,
    pub merchant: Option<&'a str>,
    pub amount: Usd,
    /// How the amount was worked out: the request's currency and the rate applied.
    pub detail: &'a str,
    pub body: &'a [u8],
}

impl Reserved<'_> {
    /// SHA-256, 64 lowercase hex digits. Every field is length-prefixed, so no two requests
    /// can run together into the same input.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let body = Sha256::digest(self.body);
        let merchant = self.merchant.map_or(&b"\x00"[..], |m| m.as_bytes());
        let amount = self.amount.micros().to_be_bytes();
        for field in [
            self.vendor.name().as_bytes(),
            self.method.as_bytes(),
            self.path.as_bytes(),
            &[u8::from(self.merchant.is_some())][..],
            merchant,
            &amount[..],
            self.detail.as_bytes(),
            &body[..],
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger_api::check_digest;

    fn reserved() -> Reserved<'static> {
        Reserved {
            vendor: Vendor::Stripe,
            method: "POST",
            path: "/v1/payment_intents",
            merchant: Some("acct_1A"),
            amount: Usd::from_micros(1_000_000).unwrap(),
            detail: "1.00 usd = $1.00",
            body: b"amount=100&currency=usd",
        }
    }

    #[test]
    fn digests_are_sha256_hex_and_bind_every_field() {
        let base = reserved().digest();
        assert!(check_digest(&base), "{base}");
        assert_eq!(base, reserved().digest(), "deterministic");
        let variants = [
            Reserved {
                vendor: Vendor::Resend,
                ..reserved()
            },
            Reserved {
                method: "PUT",
                ..reserved()
            },
            Reserved {
                path: "/v1/refunds",
                ..reserved()
            },
            Reserved {
                merchant: Some("acct_1B"),
                ..reserved()
            },
            Reserved {
                merchant: None,
                ..reserved()
            },
            // A merchant whose id is the byte that stands for "none" is still a merchant.
            Reserved {
                merchant: Some("\0"),
                ..reserved()
            },
            Reserved {
                amount: Usd::from_micros(99_999_999_000_000).unwrap(),
                ..reserved()
            },
            Reserved {
                detail: "1.00 eur = $1.00",
                ..reserved()
            },
            Reserved {
                body: b"amount=100&currency=usd&x=1",
                ..reserved()
            },
            // Fields cannot run into each other.
            Reserved {
                method: "POS",
                path: "T/v1/payment_intents",
                ..reserved()
            },
        ];
        let mut seen = std::collections::HashSet::from([base]);
        for v in variants {
            assert!(seen.insert(v.digest()), "a collision");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn keys_only_where_the_vendor_honours_them() {
        let h = headers(&[("idempotency-key", "k-1")]);
        let k = |v, m, p| key(v, m, p, &h);
        assert_eq!(
            k(Vendor::Stripe, "POST", "/v1/payment_intents").as_deref(),
            Some("k-1")
        );
        assert_eq!(k(Vendor::Stripe, "GET", "/v1/charges/ch_1"), None);
        assert_eq!(k(Vendor::Resend, "POST", "/emails").as_deref(), Some("k-1"));
        assert_eq!(
            k(Vendor::Resend, "POST", "/emails/batch").as_deref(),
            Some("k-1")
        );
        assert_eq!(k(Vendor::Resend, "POST", "/domains"), None);
        assert_eq!(
            k(
                Vendor::Twilio,
                "POST",
                "/2010-04-01/Accounts/AC1/Messages.json"
            ),
            None
        );
        assert_eq!(k(Vendor::Openai, "POST", "/v1/chat/completions"), None);
        assert_eq!(k(Vendor::Anthropic, "POST", "/v1/messages"), None);
    }

    #[test]
    fn one_key_at_most() {
        let check = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            check_single(&Request { headers: &h }).map_err(|d| d.reason)
        };
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&[("idempotency-key", "a")]), Ok(()));
        let ambiguous = Err(Reason::IdempotencyKeyAmbiguous);
        assert_eq!(
            check(&[("idempotency-key", "a"), ("idempotency-key", "a")]),
            ambiguous
        );
        assert_eq!(
            check(&[("idempotency-key", "a"), ("idempotency-key", "b")]),
            ambiguous
        );
        assert_eq!(check(&[("idempotency-key", "a, b")]), ambiguous);
        assert_eq!(check(&[("idempotency-key", "a,b")]), ambiguous);
    }
}
