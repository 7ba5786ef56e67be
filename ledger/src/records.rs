//! What the ledger records: tokens, reservations, and revocation requests and outcomes.

use bridle_core::policy::CapsNarrowing;
use bridle_core::revocation::RevocationEntry;
use bridle_core::token::Claims;
use bridle_core::vendor::Vendor;
use serde::{Deserialize, Serialize};

pub use bridle_core::settlement::ReservationState;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub token_id: String,
    pub policy: String,
    pub at_ms: u64,
    /// What was reserved.
    pub reserved: i64,
    /// What counts against caps now.
    pub counted: i64,
    pub state: ReservationState,
    pub idempotency_key: Option<String>,
    /// SHA-256 of what was reserved, as the filter computed it (with the key: a retry must
    /// carry the same).
    pub digest: Option<String>,
    pub method: String,
    pub path: String,
    pub detail: String,
    pub settled_at_ms: Option<u64>,
    /// For a call priced by tokens committed at its usage: its tokens, by class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<bridle_core::llm::TokenUsage>,
}

/// A token as the ledger knows it: issued here, or first seen at a reserve (minted offline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub policy: String,
    pub vendor: Vendor,
    pub label: String,
    pub iat: u64,
    pub exp: u64,
    pub endpoints: Option<Vec<String>>,
    pub merchants: Option<Vec<String>>,
    pub caps: CapsNarrowing,
    /// Issued by this ledger, rather than minted offline and first seen at a reserve.
    pub issued: bool,
    pub revoked_at: Option<u64>,
}

impl TokenRecord {
    pub fn from_claims(c: &Claims, issued: bool) -> TokenRecord {
        TokenRecord {
            id: c.id.clone(),
            policy: c.policy.clone(),
            vendor: c.vendor,
            label: c.label.clone(),
            iat: c.iat,
            exp: c.exp,
            endpoints: c.endpoints.clone(),
            merchants: c.merchants.clone(),
            caps: c.caps.clone(),
            issued,
            revoked_at: None,
        }
    }

    /// The claims this record was made from, for revocation checks.
    pub fn claims(&self) -> Claims {
        Claims {
            v: bridle_core::token::CLAIMS_VERSION,
            id: self.id.clone(),
            policy: self.policy.clone(),
            vendor: self.vendor,
            iat: self.iat,
            exp: self.exp,
            label: self.label.clone(),
            endpoints: self.endpoints.clone(),
            merchants: self.merchants.clone(),
            caps: self.caps.clone(),
        }
    }
}

/// The narrowing a token record carries beside its indexed fields, as stored (JSON).
#[derive(Serialize, Deserialize)]
pub struct Narrowing {
    pub endpoints: Option<Vec<String>>,
    pub merchants: Option<Vec<String>>,
    pub caps: CapsNarrowing,
}

impl Narrowing {
    pub fn of(t: &TokenRecord) -> Narrowing {
        Narrowing {
            endpoints: t.endpoints.clone(),
            merchants: t.merchants.clone(),
            caps: t.caps.clone(),
        }
    }
}

/// A revocation asked for by an admin.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RevokeOutcome {
    pub revocation: RevocationEntry,
    /// Known tokens it covers, now marked revoked.
    pub tokens_revoked: usize,
}
