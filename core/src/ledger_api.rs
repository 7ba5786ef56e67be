//! The filter-to-ledger protocol: JSON over HTTP on the ledger's enforcement surface. Shared
//! by both ends so that they cannot disagree on a field.
//!
//! - `POST /v1/enforce/reserve`: [`ReserveRequest`] -> [`ReserveResponse`]. A refusal (a cap,
//!   a revocation) is a 200 with `decision: denied`; any non-2xx means the ledger failed and
//!   the filter denies.
//! - `POST /v1/enforce/report`: [`Report`] -> [`ReportResponse`]: settles and audit records,
//!   batched by the filter. Both are idempotent, so a batch may be sent again.
//! - `GET /v1/enforce/revocations?since=N`: a [`crate::revocation::RevocationFeed`].

use serde::{Deserialize, Serialize};

use crate::money::Usd;
use crate::vendor::Vendor;
use crate::Reason;

pub const RESERVE_PATH: &str = "/v1/enforce/reserve";
pub const REPORT_PATH: &str = "/v1/enforce/report";
pub const REVOCATIONS_PATH: &str = "/v1/enforce/revocations";

/// Sent with every callout: the moment (milliseconds since the epoch, the proxy's clock)
/// after which the proxy has stopped waiting. A reservation read later than that was already
/// refused to the agent, and granting it would hold spend for a call that never happened.
pub const DEADLINE_HEADER: &str = "x-bridle-deadline-ms";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// The vault token as presented; the ledger verifies it itself.
    pub token: String,
    /// Unique per request, chosen by the filter; a fresh reservation takes this id.
    pub request_id: String,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant: Option<String>,
    pub amount: Usd,
    /// How the amount was worked out, for people reading the audit log.
    pub detail: String,
    /// The vendor's `Idempotency-Key`: a retry with the same key maps to the same reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// SHA-256 (64 lowercase hex digits) of what was reserved. The same key with another
    /// digest (or with a digest on one side only) is a different request, and is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Asks for a lease (`crate::lease`): up to this many calls of `amount` each, reserved as
    /// one reservation that the proxy spends call by call. Never with an idempotency key. A
    /// ledger whose policy has no lease reserves the one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_calls: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReserveResponse {
    Granted {
        reservation: String,
        /// The same idempotency key was seen before: this is that reservation, not new spend.
        replay: bool,
        /// For a lease asked for: how many calls of the amount it covers (1 to the calls
        /// asked for, fewer when the caps leave room for fewer). Absent: one plain call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leased_calls: Option<u32>,
    },
    Denied {
        reason: Reason,
        message: String,
        /// When the refusal lifts by itself (the spend breaker): seconds to wait.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleOutcome {
    /// The vendor accepted (2xx): commit `amount`, or the reservation if none is given.
    Commit,
    /// The vendor refused (4xx), or the request never left the proxy: release.
    Release,
    /// 5xx, timeout or reset: the vendor may have acted, so the reservation stays spent.
    Hold,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settle {
    pub reservation: String,
    pub outcome: SettleOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Usd>,
    /// Settles for an idempotent replay can only confirm the original, never release it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    /// For a call priced by tokens committed at its usage: the tokens, by class, that the
    /// ledger adds to the token's totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::llm::TokenUsage>,
}

/// One call through the proxy, allowed or denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Unique per request; the ledger stores each id once, so batches can be resent.
    pub id: String,
    pub at_ms: u64,
    pub vendor: Vendor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub method: String,
    /// The path Bridle matched, which is the path the vendor received.
    pub path: String,
    /// The status the agent got; 0 when the stream ended without a response.
    pub status: u16,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Usd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant: Option<String>,
    /// For a call priced by tokens: the model it named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// For a call priced by tokens: the usage the vendor reported, which `cost` is the price of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::llm::TokenUsage>,
    /// For a call priced by tokens that the vendor accepted but whose usage was never read
    /// (a stream cut short, the agent gone): why. It settled at its whole reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_missing: Option<String>,
    /// The usage cost more than the reservation, which is meant to be an upper bound: the
    /// actual cost was committed all the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub over_reservation: bool,
    /// The reservation was an idempotent replay: this call counted nothing new.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settles: Vec<Settle>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<AuditRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportResponse {
    pub settled: usize,
    pub audited: usize,
}

/// A reserve's digest: exactly 64 lowercase hex digits (SHA-256).
pub fn check_digest(digest: &str) -> bool {
    digest.len() == 64 && is_lower_hex(digest)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Request ids (and so reservation ids): 16-64 lowercase hex digits.
pub fn check_request_id(id: &str) -> bool {
    (16..=64).contains(&id.len()) && is_lower_hex(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_response_wire_format() {
        let g = ReserveResponse::Granted {
            reservation: "ab".repeat(8),
            replay: false,
            leased_calls: None,
        };
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"decision":"granted","reservation":"abababababababab","replay":false}"#
        );
        let d: ReserveResponse =
            serde_json::from_str(r#"{"decision":"denied","reason":"cap_window","message":"over"}"#)
                .unwrap();
        assert_eq!(
            d,
            ReserveResponse::Denied {
                reason: Reason::CapWindow,
                message: "over".into(),
                retry_after_secs: None,
            }
        );
        assert!(serde_json::from_str::<ReserveResponse>(r#"{"decision":"maybe"}"#).is_err());
    }

    #[test]
    fn request_ids() {
        assert!(check_request_id("0123456789abcdef"));
        assert!(!check_request_id("0123456789ABCDEF"));
        assert!(!check_request_id("short"));
        assert!(!check_request_id("../../etc/passwd0000"));
    }
}
