//! The ledger's HTTP surface: two separately authenticated parts.
//!
//! - Admin (`BRIDLE_ADMIN_KEY`): issue, list and revoke tokens, read the audit log.
//! - Enforcement (`BRIDLE_ENFORCER_KEY`, held only by the filter): reserve, settle and
//!   report, and the revocation feed.
//!
//! `/healthz`, `/livez` and `/metrics` need no credential and reveal no secret.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bridle_core::policy::CompiledPolicy;
use bridle_core::token::{Claims, SigningKeyring, TokenError};
use bridle_core::token_cache::TokenCache;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::Store;

mod admin;
mod auth;
mod enforce;
mod errors;

pub use errors::ApiError;

/// Everything a request handler needs.
pub struct App<S> {
    pub store: Arc<S>,
    pub keyring: SigningKeyring,
    /// Tokens already verified, so a busy token costs one signature check, not one per call.
    pub verified: TokenCache<Claims>,
    pub policies: HashMap<String, CompiledPolicy>,
    pub admin_key: String,
    pub enforcer_key: String,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
}

impl<S> App<S> {
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Verifies a token's structure and signature, once per distinct token.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verified
            .get_or_verify(token, |t| self.keyring.verify(t))
            .map(|claims| Claims::clone(&claims))
    }
}

/// How many verified tokens the ledger remembers.
pub const TOKEN_CACHE_CAPACITY: usize = 4096;

/// Large enough for a filter's batched report; everything else is far smaller.
const BODY_LIMIT: usize = 16 << 20;

pub fn router<S: Store>(app: Arc<App<S>>) -> Router {
    let admin = Router::new()
        .route(
            "/v1/tokens",
            post(admin::issue::<S>).get(admin::list_tokens::<S>),
        )
        .route("/v1/tokens/{id}", get(admin::get_token::<S>))
        .route("/v1/revocations", post(admin::revoke::<S>))
        .route("/v1/audit", get(admin::audit::<S>))
        .route("/v1/policies", get(admin::policies::<S>))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_admin::<S>,
        ));
    let enforce = Router::new()
        .route(
            bridle_core::ledger_api::RESERVE_PATH,
            post(enforce::reserve::<S>),
        )
        .route("/v1/enforce/settle", post(enforce::settle::<S>))
        .route(
            bridle_core::ledger_api::REPORT_PATH,
            post(enforce::report::<S>),
        )
        .route(
            bridle_core::ledger_api::REVOCATIONS_PATH,
            get(enforce::revocations::<S>),
        )
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_enforcer::<S>,
        ));
    Router::new()
        .merge(admin)
        .merge(enforce)
        .route("/healthz", get(healthz::<S>))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics::<S>))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such endpoint.")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This endpoint does not take that method.",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// Healthy when the store can serve: its database answers and (embedded) its writer runs.
/// Never waits behind reservations.
async fn healthz<S: Store>(State(app): State<Arc<App<S>>>) -> Response {
    match app.store.health().await {
        Ok(()) => Json(serde_json::json!({ "status": "ok", "policies": app.policies.len() }))
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Alive: serving HTTP, whatever the database is doing (restarting a replica does not bring
/// a shared database back).
async fn livez() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn metrics<S: Store>(State(app): State<Arc<App<S>>>) -> Response {
    let policies = app.store.policies().await.unwrap_or_default();
    let active = crate::store::TokenQuery {
        status: Some("active".into()),
        limit: Some(crate::store::MAX_PAGE),
        ..Default::default()
    };
    if let Ok(tokens) = app.store.tokens(active).await {
        app.metrics.set_tokens(&tokens);
    }
    let last_minute = crate::store::AuditQuery {
        since_ms: Some(app.now_ms().saturating_sub(60_000)),
        limit: Some(crate::store::MAX_PAGE),
        ..Default::default()
    };
    if let Ok(page) = app.store.audit(last_minute).await {
        app.metrics.set_refusals(&page.records);
    }
    match app.metrics.encode(&policies) {
        Ok(text) => (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not encode metrics",
        )
        .into_response(),
    }
}
