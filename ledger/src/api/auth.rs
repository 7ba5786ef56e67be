//! Bearer credentials for the two surfaces, compared in constant time. Neither key opens the
//! other surface.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, App};

fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get("authorization")?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

fn check(req: &Request, key: &str, surface: &str) -> Result<(), ApiError> {
    // More than one Authorization header is ambiguous: refuse rather than pick one.
    if req.headers().get_all("authorization").iter().count() > 1 {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Send one Authorization header.",
        ));
    }
    match bearer(req) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!("The {surface} API needs Authorization: Bearer <{surface} key>."),
        )),
        Some(given) if bool::from(given.ct_eq(key.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!("Wrong {surface} key."),
        )),
    }
}

pub async fn require_admin<S: Send + Sync + 'static>(
    State(app): State<Arc<App<S>>>,
    req: Request,
    next: Next,
) -> Response {
    match check(&req, &app.admin_key, "admin") {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

pub async fn require_enforcer<S: Send + Sync + 'static>(
    State(app): State<Arc<App<S>>>,
    req: Request,
    next: Next,
) -> Response {
    match check(&req, &app.enforcer_key, "enforcement") {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}
