//! Storage behind the API. A backend must make `reserve` one atomic check-and-reserve, and
//! must not answer a mutation before it is durable. The API layer knows only this trait.
//! Read-only views must not wait behind reservations.
//!
//! - [`sqlite::SqliteStore`]: the default. One writer thread owns the connection and the
//!   in-memory accounts; it takes a batch of commands, applies them, commits once (WAL,
//!   `synchronous=FULL`), then answers them all: one fsync carries many requests.
//! - [`memory::MemoryStore`]: the same accounts under a lock, nothing persisted. For tests of
//!   the API layer and as the reference the scenario tests hold the others to.
//! - [`postgres::PostgresStore`]: several replicas on one PostgreSQL database, which is the
//!   authority: reserves and settles run in batched transactions that lock the sums they
//!   check, in a fixed order.

use std::future::Future;

use bridle_core::ledger_api::{AuditRecord, ReserveRequest, ReserveResponse, Settle};
use bridle_core::llm::TokenUsage;
use bridle_core::revocation::RevocationFeed;
use bridle_core::token::Claims;
use serde::{Deserialize, Serialize};

use crate::accounts::Alert;
use crate::records::{RevokeOutcome, RevokeRequest, TokenRecord};
use crate::views::{sort_tokens, PolicyView, TokenView};

pub mod memory;
pub mod postgres;
pub mod sqlite;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    pub policy: Option<String>,
    pub label_prefix: Option<String>,
    /// active, revoked or expired
    pub status: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub token_id: Option<String>,
    pub label_prefix: Option<String>,
    pub policy: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<u64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<u64>,
    pub limit: Option<usize>,
    /// The `next` of a previous page.
    pub after: Option<String>,
}

/// How long a deliverer owns the alerts `due_alerts` handed it: until it records an
/// attempt, or this passes (it died), no other deliverer gets them.
pub const ALERT_LEASE_MS: u64 = 60_000;

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 10_000;

impl AuditQuery {
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
    }

    /// Decodes the cursor: `<at_ms>:<id>`, the last record of the previous page.
    pub fn cursor(&self) -> Option<(u64, String)> {
        let (at, id) = self.after.as_deref()?.split_once(':')?;
        Some((at.parse().ok()?, id.to_string()))
    }

    pub fn matches(&self, r: &AuditRecord) -> bool {
        let eq = |want: &Option<String>, got: &Option<String>| {
            want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
        };
        eq(&self.token_id, &r.token_id)
            && eq(&self.policy, &r.policy)
            && self
                .label_prefix
                .as_ref()
                .is_none_or(|p| r.label.as_ref().is_some_and(|l| l.starts_with(p.as_str())))
            && self.since_ms.is_none_or(|s| r.at_ms >= s)
            && self.until_ms.is_none_or(|u| r.at_ms < u)
            && self
                .cursor()
                .is_none_or(|(at, id)| (r.at_ms, r.id.as_str()) > (at, id.as_str()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl AuditPage {
    pub fn from_sorted(mut records: Vec<AuditRecord>, limit: usize) -> AuditPage {
        let more = records.len() > limit;
        records.truncate(limit);
        let next = if more {
            records.last().map(|r| format!("{}:{}", r.at_ms, r.id))
        } else {
            None
        };
        AuditPage { records, next }
    }
}

/// An alert waiting in the outbox for webhook delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboxAlert {
    pub alert: Alert,
    pub attempts: u32,
}

/// The token classes of [`TokenUsage`] as stored (JSON keys), in the order
/// [`usage_from_sums`] reads their sums.
pub const USAGE_CLASSES: [&str; 6] = [
    "input",
    "cached_input",
    "cache_write_5m",
    "cache_write_1h",
    "output",
    "reasoning",
];

/// A reservation's usage as stored: JSON, or nothing.
pub fn usage_json(u: Option<&TokenUsage>) -> StoreResult<Option<String>> {
    u.map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError(format!("usage: {e}")))
}

/// A token's totals from the per-class sums of its rows, in [`USAGE_CLASSES`] order; a
/// negative sum (never written) reads as 0.
pub fn usage_from_sums(sums: [i64; 6]) -> TokenUsage {
    let [input, cached_input, cache_write_5m, cache_write_1h, output, reasoning] =
        sums.map(|n| u64::try_from(n).unwrap_or(0));
    TokenUsage {
        input,
        cached_input,
        cache_write_5m,
        cache_write_1h,
        output,
        reasoning,
    }
}

/// The audit record's fields beyond the indexed ones, stored as JSON so that a field can be
/// added without a new column.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExtra {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_missing: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub over_reservation: bool,
}

impl AuditExtra {
    pub fn of(r: &AuditRecord) -> AuditExtra {
        AuditExtra {
            replay: r.replay,
            model: r.model.clone(),
            usage: r.usage,
            usage_missing: r.usage_missing.clone(),
            over_reservation: r.over_reservation,
        }
    }

    /// `None` when there is nothing beyond the defaults.
    pub fn to_json(&self) -> StoreResult<Option<String>> {
        if *self == AuditExtra::default() {
            return Ok(None);
        }
        serde_json::to_string(self)
            .map(Some)
            .map_err(|e| StoreError(format!("audit record: {e}")))
    }

    /// Unreadable extras read as the defaults: an audit reader still gets the record.
    pub fn from_json(s: Option<&str>) -> AuditExtra {
        s.and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }
}

impl TokenQuery {
    /// Sorts views newest first and keeps one page.
    pub fn page(&self, mut views: Vec<TokenView>) -> Vec<TokenView> {
        sort_tokens(&mut views);
        views.truncate(self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE));
        views
    }

    pub fn matches(&self, v: &TokenView) -> bool {
        self.policy.as_ref().is_none_or(|p| &v.record.policy == p)
            && self
                .label_prefix
                .as_ref()
                .is_none_or(|p| v.record.label.starts_with(p.as_str()))
            && self.status.as_ref().is_none_or(|s| v.status == s)
    }
}

pub trait Store: Send + Sync + 'static {
    fn issue(&self, record: TokenRecord) -> impl Future<Output = StoreResult<()>> + Send;
    /// Checks every cap and reserves, atomically. `claims` are already verified.
    fn reserve(
        &self,
        claims: Claims,
        request: ReserveRequest,
    ) -> impl Future<Output = StoreResult<ReserveResponse>> + Send;
    /// Applies settles; returns how many changed a reservation.
    fn settle(&self, settles: Vec<Settle>) -> impl Future<Output = StoreResult<usize>> + Send;
    /// Stores audit records; a record whose id is already stored is skipped.
    fn append_audit(
        &self,
        records: Vec<AuditRecord>,
    ) -> impl Future<Output = StoreResult<usize>> + Send;
    fn revoke(
        &self,
        request: RevokeRequest,
    ) -> impl Future<Output = StoreResult<Result<RevokeOutcome, String>>> + Send;
    fn revocations(&self, since: u64) -> impl Future<Output = StoreResult<RevocationFeed>> + Send;
    fn token(&self, id: String) -> impl Future<Output = StoreResult<Option<TokenView>>> + Send;
    fn tokens(&self, query: TokenQuery)
        -> impl Future<Output = StoreResult<Vec<TokenView>>> + Send;
    fn policies(&self) -> impl Future<Output = StoreResult<Vec<PolicyView>>> + Send;
    fn audit(&self, query: AuditQuery) -> impl Future<Output = StoreResult<AuditPage>> + Send;
    /// Expires unsettled reservations into spend and forgets what nothing needs any more.
    fn maintain(&self) -> impl Future<Output = StoreResult<usize>> + Send;
    /// Claims alerts due for (re)delivery, for [`ALERT_LEASE_MS`]: several deliverers (one
    /// per replica) never get the same alert at once.
    fn due_alerts(
        &self,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<OutboxAlert>>> + Send;
    /// Records a delivery attempt: delivered, or retried at `next_attempt_ms` (`None`: give up).
    fn alert_attempted(
        &self,
        id: String,
        delivered: bool,
        next_attempt_ms: Option<u64>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Whether the store can serve: its database answers (and, embedded, its writer runs).
    fn health(&self) -> impl Future<Output = StoreResult<()>> + Send;
}
