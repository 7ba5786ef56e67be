//! Stripe: `Authorization: Bearer` (or Basic with the key as user name); Connect accounts
//! named by `Stripe-Account` (or `Stripe-Context`); errors as `{"error": {type, code,
//! message}}`; `Stripe-Should-Retry` steers the SDK's retries; amounts in the currency's
//! minor unit, by Stripe's own zero- and three-decimal lists.

use super::{Presentation, Profile, Tenant};
use crate::decision::{Denial, Request};
use crate::path::RequestPath;
use crate::policy::Merchants;
use crate::Reason;

pub(crate) struct Stripe;

impl Profile for Stripe {
    fn default_upstream(&self) -> &'static str {
        "https://api.stripe.com"
    }

    fn presentations(&self) -> &'static [Presentation] {
        &[Presentation::Bearer, Presentation::BasicUser]
    }

    fn expected_presentation(&self) -> &'static str {
        "Authorization: Bearer <vault token> (or Basic with the token as user name)"
    }

    fn has_tenants(&self) -> bool {
        true
    }

    fn check_tenant_id(&self, id: &str) -> Result<(), String> {
        let ok = id
            .strip_prefix("acct_")
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()));
        if ok {
            Ok(())
        } else {
            Err(format!("{id:?} is not a Stripe account id (acct_...)"))
        }
    }

    /// Stripe Connect: `Stripe-Account`, or `Stripe-Context` when the policy allows it;
    /// neither means the platform account.
    fn tenant(
        &self,
        req: &Request<'_>,
        _path: &RequestPath<'_>,
        rules: &Merchants,
        policy: &str,
    ) -> Result<Tenant, Denial> {
        let accounts: Vec<&[u8]> = req.all("stripe-account").collect();
        let contexts: Vec<&[u8]> = req.all("stripe-context").collect();
        // A comma is Envoy's join of repeated headers: more than one merchant.
        let joined = accounts.iter().chain(&contexts).any(|v| v.contains(&b','));
        if !contexts.is_empty() && !rules.allow_stripe_context {
            return Err(Denial::new(
                Reason::HeaderNotAllowed,
                format!("Stripe-Context is not allowed by policy {policy:?}."),
            ));
        }
        if accounts.len() + contexts.len() > 1 || joined {
            return Err(Denial::new(
                Reason::MerchantAmbiguous,
                "Name at most one merchant: one Stripe-Account or Stripe-Context header.",
            ));
        }
        match accounts.first().or(contexts.first()) {
            None => Ok(Tenant::Unnamed),
            Some(v) => std::str::from_utf8(v)
                .map(|t| Tenant::Named(t.to_string()))
                .map_err(|_| {
                    Denial::new(
                        Reason::MerchantNotAllowed,
                        "The merchant header is not valid text.",
                    )
                }),
        }
    }

    fn injection(&self, secret: &str) -> Result<Vec<(&'static str, String)>, String> {
        Ok(vec![("authorization", format!("Bearer {secret}"))])
    }

    /// stripe-python raises `CardError` for every 402 (`_api_requestor.py`,
    /// `specific_v1_api_error`): an agent would read a spending cap as a declined card and try
    /// another. A cap is a limit on what the token may do, so it answers 403 here, and the SDK
    /// raises `PermissionError`, as for an endpoint the policy does not allow.
    fn status(&self, reason: Reason) -> u16 {
        match reason.status() {
            402 => 403,
            status => status,
        }
    }

    fn error_body(&self, status: u16, code: &'static str, message: &str) -> serde_json::Value {
        // The SDK picks its exception class from the HTTP status; the type only refines it.
        let kind = match status {
            429 => "rate_limit_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        serde_json::json!({ "error": { "type": kind, "code": code, "message": message } })
    }

    fn no_retry_headers(&self) -> &'static [(&'static str, &'static str)] {
        &[("stripe-should-retry", "false")]
    }

    /// Stripe's idempotent requests (docs.stripe.com/api/idempotent_requests): every `POST`
    /// accepts `Idempotency-Key`; a retry under the same key gets the saved result of the
    /// first, and Stripe errors if its parameters differ. GET and DELETE are idempotent by
    /// nature and cost nothing.
    fn idempotency_header(&self, method: &str, _path: &str) -> Option<&'static str> {
        (method == "POST").then_some("idempotency-key")
    }
}

/// Decimals of a currency's minor unit as Stripe counts them: its zero-decimal and
/// three-decimal lists; everything else has two.
pub(crate) fn minor_unit_exponent(currency: &str) -> u32 {
    const ZERO_DECIMAL: [&str; 16] = [
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    const THREE_DECIMAL: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];
    if ZERO_DECIMAL.contains(&currency) {
        0
    } else if THREE_DECIMAL.contains(&currency) {
        3
    } else {
        2
    }
}
