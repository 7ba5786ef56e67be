//! Stable, machine-readable reasons for every decision the filter makes.
//!
//! The code strings are an API: they appear in the `x-bridle-reason` header, in vendor-shaped
//! error bodies, in Envoy stats names and in the audit log. Never rename one; add a new one.
//!
//! HTTP status: 401 the credential is not good; 403 a good credential asked for something
//! outside its scope; 400 the request is ambiguous or unpriceable; 402 money; 429 loop
//! breaker; 503 Bridle cannot decide safely, so it refuses; 502 the vendor could not be
//! reached (Envoy's own answer, rendered in the vendor's format).

use serde::{Deserialize, Serialize};

macro_rules! reasons {
    ($($variant:ident => $code:literal, $status:literal;)*) => {
        /// Why a request was refused (or `Allowed`, for stats and audit symmetry).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Reason { $($variant,)* }

        impl Reason {
            /// Every reason, so that one stats counter per reason can be defined up front.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            pub fn code(self) -> &'static str {
                match self { $(Reason::$variant => $code,)* }
            }

            pub fn status(self) -> u16 {
                match self { $(Reason::$variant => $status,)* }
            }
        }
    };
}

reasons! {
    Allowed => "allowed", 200;
    // The credential.
    TokenMissing => "token_missing", 401;
    TokenMalformed => "token_malformed", 401;
    TokenUnknownKey => "token_unknown_key", 401;
    TokenBadSignature => "token_bad_signature", 401;
    TokenExpired => "token_expired", 401;
    TokenNotYetValid => "token_not_yet_valid", 401;
    TokenTtlTooLong => "token_ttl_too_long", 401;
    TokenPolicyUnknown => "token_policy_unknown", 401;
    TokenWrongVendor => "token_wrong_vendor", 401;
    TokenRevoked => "token_revoked", 401;
    CredentialScheme => "credential_scheme", 401;
    CredentialAmbiguous => "credential_ambiguous", 400;
    // The request itself.
    PathRejected => "path_rejected", 400;
    MerchantAmbiguous => "merchant_ambiguous", 400;
    // A body sent compressed (any Content-Encoding but identity): Bridle would read one thing
    // and a vendor that inflates it another.
    BodyEncoded => "body_encoded", 400;
    // Trailers after the body: no vendor SDK sends them, and no one can say what a vendor
    // makes of them.
    TrailersNotAllowed => "trailers_not_allowed", 400;
    EndpointNotAllowed => "endpoint_not_allowed", 403;
    MerchantNotAllowed => "merchant_not_allowed", 403;
    HeaderNotAllowed => "header_not_allowed", 403;
    // LLM calls priced by tokens: a model outside the policy's list, one without a price, and
    // an output maximum above the policy's.
    ModelNotAllowed => "model_not_allowed", 403;
    ModelUnpriced => "model_unpriced", 400;
    MaxTokensNotAllowed => "max_tokens_not_allowed", 403;
    BodyTooLarge => "body_too_large", 413;
    BodyUnreadable => "body_unreadable", 400;
    // An Idempotency-Key already used for a different request by the same token.
    IdempotencyKeyReused => "idempotency_key_reused", 400;
    // More than one Idempotency-Key (the header twice, or keys joined by a comma): Bridle would
    // read one and a vendor perhaps another.
    IdempotencyKeyAmbiguous => "idempotency_key_ambiguous", 400;
    // Money.
    CostUndetermined => "cost_undetermined", 400;
    CurrencyUnknown => "currency_unknown", 400;
    CapPerTransaction => "cap_per_transaction", 402;
    CapWindow => "cap_window", 402;
    CapLifetime => "cap_lifetime", 402;
    CapPolicy => "cap_policy", 402;
    // Loop breaker, and the spend breaker (a cap over a short window).
    RateLimited => "rate_limited", 429;
    RepeatLimited => "repeat_limited", 429;
    SpendRateLimited => "spend_rate_limited", 429;
    // Bridle's own dependencies: refuse rather than guess.
    LedgerUnavailable => "ledger_unavailable", 503;
    RevocationStale => "revocation_stale", 503;
    Internal => "internal", 500;
    // Envoy refused the request before Bridle saw it (a malformed path, say); audited too.
    ProxyRejected => "proxy_rejected", 400;
    // The vendor could not be reached: no connection, or its TLS certificate did not check
    // out. The request was not sent.
    UpstreamUnavailable => "upstream_unavailable", 502;
    // The connection to the vendor failed after the request went out (a timeout, a reset
    // before the answer): the vendor may have acted on it.
    UpstreamFailed => "upstream_failed", 502;
}

impl Reason {
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }

    pub fn is_denial(self) -> bool {
        self != Reason::Allowed
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            // serde and code() must agree: the audit log uses one, headers the other.
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.code())
            );
        }
    }

    #[test]
    fn denials_never_look_like_success() {
        for &r in Reason::ALL {
            if r.is_denial() {
                assert!(r.status() >= 400, "{r} has status {}", r.status());
            }
        }
    }
}
