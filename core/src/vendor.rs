//! Vendor profiles: where an agent presents its vault token, where the tenant (merchant,
//! account) is named, how the real secret is injected, and what an error looks like, in
//! each vendor's own terms, so that the vendor's official SDK raises a clear exception.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::Reason;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Stripe,
    Twilio,
    Resend,
    Openai,
    Anthropic,
}

/// How an agent's SDK sends its key, and so where the vault token arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presentation {
    /// `Authorization: Bearer <token>`
    Bearer,
    /// `Authorization: Basic base64(<token>:)` (Stripe's key-as-user-name form)
    BasicUser,
    /// `Authorization: Basic base64(<account>:<token>)` (Twilio)
    BasicPassword,
    /// `x-api-key: <token>` (Anthropic)
    ApiKeyHeader,
}

impl fmt::Display for Presentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Presentation::Bearer => "Authorization: Bearer",
            Presentation::BasicUser => "Authorization: Basic (token as user name)",
            Presentation::BasicPassword => "Authorization: Basic (token as password)",
            Presentation::ApiKeyHeader => "x-api-key",
        })
    }
}

/// Where a request names the tenant it acts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantSource {
    /// Stripe Connect: the `Stripe-Account` header; absent means the platform account.
    StripeAccountHeader,
    /// Twilio: `/2010-04-01/Accounts/{AccountSid}/...`.
    TwilioPathAccount,
    /// The vendor has no tenant concept Bridle scopes on.
    None,
}

impl Vendor {
    pub const ALL: [Vendor; 5] = [
        Vendor::Stripe,
        Vendor::Twilio,
        Vendor::Resend,
        Vendor::Openai,
        Vendor::Anthropic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Vendor::Stripe => "stripe",
            Vendor::Twilio => "twilio",
            Vendor::Resend => "resend",
            Vendor::Openai => "openai",
            Vendor::Anthropic => "anthropic",
        }
    }

    pub fn from_name(name: &str) -> Option<Vendor> {
        Vendor::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The live API, used when no other upstream is configured.
    pub fn default_upstream(self) -> &'static str {
        match self {
            Vendor::Stripe => "https://api.stripe.com",
            Vendor::Twilio => "https://api.twilio.com",
            Vendor::Resend => "https://api.resend.com",
            Vendor::Openai => "https://api.openai.com",
            Vendor::Anthropic => "https://api.anthropic.com",
        }
    }

    pub fn accepts(self, p: Presentation) -> bool {
        matches!(
            (self, p),
            (
                Vendor::Stripe,
                Presentation::Bearer | Presentation::BasicUser
            ) | (Vendor::Twilio, Presentation::BasicPassword)
                | (Vendor::Resend | Vendor::Openai, Presentation::Bearer)
                | (
                    Vendor::Anthropic,
                    Presentation::ApiKeyHeader | Presentation::Bearer
                )
        )
    }

    pub fn expected_presentation(self) -> &'static str {
        match self {
            Vendor::Stripe => {
                "Authorization: Bearer <vault token> (or Basic with the token as user name)"
            }
            Vendor::Twilio => "Authorization: Basic <AccountSid>:<vault token>",
            Vendor::Resend | Vendor::Openai => "Authorization: Bearer <vault token>",
            Vendor::Anthropic => "x-api-key: <vault token> (or Authorization: Bearer)",
        }
    }

    pub fn tenant_source(self) -> TenantSource {
        match self {
            Vendor::Stripe => TenantSource::StripeAccountHeader,
            Vendor::Twilio => TenantSource::TwilioPathAccount,
            _ => TenantSource::None,
        }
    }

    /// Checks that a tenant id has the vendor's shape, to catch typos in policies.
    pub fn check_tenant_id(self, id: &str) -> Result<(), String> {
        let ok = match self {
            Vendor::Stripe => id
                .strip_prefix("acct_")
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric())),
            Vendor::Twilio => {
                id.len() == 34
                    && id.starts_with("AC")
                    && id.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
            }
            _ => false,
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            Vendor::Stripe => format!("{id:?} is not a Stripe account id (acct_...)"),
            Vendor::Twilio => {
                format!("{id:?} is not a Twilio account SID (AC followed by 32 hex digits)")
            }
            _ => format!("{} has no merchants or accounts to scope", self.name()),
        })
    }

    /// The request headers that carry the real secret, computed once at configuration time.
    /// Errors describe the shape expected, never the value.
    pub fn injection(self, secret: &str) -> Result<Vec<(&'static str, String)>, String> {
        if secret.is_empty()
            || secret.len() > 4096
            || !secret.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(
                "the secret must be 1-4096 printable ASCII characters with no spaces".into(),
            );
        }
        Ok(match self {
            Vendor::Stripe | Vendor::Resend | Vendor::Openai => {
                vec![("authorization", format!("Bearer {secret}"))]
            }
            Vendor::Twilio => {
                if !secret.contains(':') {
                    return Err(
                        "the Twilio secret must be \"<API key SID or Account SID>:<secret>\""
                            .into(),
                    );
                }
                vec![(
                    "authorization",
                    format!("Basic {}", STANDARD.encode(secret)),
                )]
            }
            Vendor::Anthropic => vec![("x-api-key", secret.to_string())],
        })
    }

    /// A denial in the vendor's own error format, plus Bridle's reason header. The reason code
    /// is also in the message, because most SDKs show only the message in the exception.
    pub fn error_response(
        self,
        reason: Reason,
        message: &str,
        retry_after_secs: Option<u64>,
    ) -> ErrorResponse {
        let status = reason.status();
        let code = reason.code();
        let message = format!("Bridle: {message} [{code}]");
        let body = match self {
            Vendor::Stripe => serde_json::json!({
                "error": {
                    "type": stripe_error_type(status),
                    "code": code,
                    "message": message,
                }
            }),
            Vendor::Openai => serde_json::json!({
                "error": {
                    "message": message,
                    "type": openai_error_type(status),
                    "param": null,
                    "code": code,
                }
            }),
            Vendor::Anthropic => serde_json::json!({
                "type": "error",
                "error": {
                    "type": anthropic_error_type(status),
                    "message": message,
                    "details": { "error_code": code },
                },
            }),
            Vendor::Twilio => serde_json::json!({
                "code": twilio_error_code(status),
                "message": message,
                "more_info": format!("bridle:{code}"),
                "status": status,
                "bridle_reason": code,
            }),
            Vendor::Resend => serde_json::json!({
                "statusCode": status,
                "name": resend_error_name(status, code),
                "message": message,
                "bridle_reason": code,
            }),
        };
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            (REASON_HEADER, code.to_string()),
            // Denials are decisions, not outages: official SDKs must not retry them.
            ("x-should-retry", "false".to_string()),
        ];
        if self == Vendor::Stripe {
            headers.push(("stripe-should-retry", "false".to_string()));
        }
        if let Some(secs) = retry_after_secs {
            headers.push(("retry-after", secs.to_string()));
        }
        ErrorResponse {
            status,
            headers,
            body: body.to_string(),
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub const REASON_HEADER: &str = "x-bridle-reason";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

// The SDKs pick their exception class from the HTTP status; the type only refines it.
fn stripe_error_type(status: u16) -> &'static str {
    match status {
        402 => "card_error",
        429 => "rate_limit_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

fn openai_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

fn twilio_error_code(status: u16) -> u32 {
    match status {
        401 => 20003,
        403 => 20403,
        404 => 20404,
        429 => 20429,
        500..=599 => 20500,
        _ => 21000,
    }
}

/// Resend's SDK maps some names to classes that replace the message (401 `missing_api_key`),
/// so only names that keep it are used; otherwise the name is Bridle's reason code.
fn resend_error_name(status: u16, code: &'static str) -> &'static str {
    match status {
        400 => "validation_error",
        429 => "rate_limit_exceeded",
        500 => "application_error",
        _ => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presentations_per_vendor() {
        assert!(Vendor::Stripe.accepts(Presentation::Bearer));
        assert!(Vendor::Stripe.accepts(Presentation::BasicUser));
        assert!(!Vendor::Stripe.accepts(Presentation::ApiKeyHeader));
        assert!(Vendor::Twilio.accepts(Presentation::BasicPassword));
        assert!(!Vendor::Twilio.accepts(Presentation::Bearer));
        assert!(Vendor::Anthropic.accepts(Presentation::ApiKeyHeader));
        assert!(
            Vendor::Anthropic.accepts(Presentation::Bearer),
            "anthropic SDK 2.x sends Bearer"
        );
        assert!(!Vendor::Anthropic.accepts(Presentation::BasicUser));
        assert!(Vendor::Openai.accepts(Presentation::Bearer));
        assert!(Vendor::Resend.accepts(Presentation::Bearer));
    }

    #[test]
    fn injection_headers() {
        assert_eq!(
            Vendor::Stripe.injection("sk_test_123").unwrap(),
            vec![("authorization", "Bearer sk_test_123".to_string())]
        );
        assert_eq!(
            Vendor::Twilio.injection("SK123:s3cret").unwrap(),
            vec![(
                "authorization",
                format!("Basic {}", STANDARD.encode("SK123:s3cret"))
            )]
        );
        assert_eq!(
            Vendor::Anthropic.injection("sk-ant-1").unwrap(),
            vec![("x-api-key", "sk-ant-1".to_string())]
        );
        let e = Vendor::Twilio.injection("nocolon").unwrap_err();
        assert!(!e.contains("nocolon"));
        // Header injection through a secret is impossible.
        assert!(Vendor::Openai.injection("sk-1\r\nx-evil: 1").is_err());
        assert!(Vendor::Openai.injection("").is_err());
    }

    #[test]
    fn tenant_ids_are_shape_checked() {
        assert!(Vendor::Stripe
            .check_tenant_id("acct_1Nv0FGQ9RKHgCVdK")
            .is_ok());
        assert!(Vendor::Stripe.check_tenant_id("acct_").is_err());
        assert!(Vendor::Stripe.check_tenant_id("cus_123").is_err());
        assert!(Vendor::Twilio
            .check_tenant_id("AC0123456789abcdef0123456789abcdef")
            .is_ok());
        assert!(Vendor::Twilio.check_tenant_id("AC123").is_err());
        assert!(Vendor::Openai.check_tenant_id("org-1").is_err());
    }

    #[test]
    fn errors_carry_reason_and_suppress_retries() {
        for v in Vendor::ALL {
            let r = v.error_response(Reason::EndpointNotAllowed, "nope", None);
            assert_eq!(r.status, 403);
            assert!(r
                .headers
                .contains(&("x-bridle-reason", "endpoint_not_allowed".into())));
            assert!(r.headers.contains(&("x-should-retry", "false".into())));
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert!(
                r.body.contains("Bridle: nope [endpoint_not_allowed]"),
                "{v}: {}",
                r.body
            );
            match v {
                Vendor::Stripe => assert_eq!(body["error"]["type"], "invalid_request_error"),
                Vendor::Openai => assert_eq!(body["error"]["code"], "endpoint_not_allowed"),
                Vendor::Anthropic => assert_eq!(body["error"]["type"], "permission_error"),
                Vendor::Twilio => assert_eq!(body["code"], 20403),
                Vendor::Resend => {
                    assert_eq!(body["statusCode"], 403);
                    assert_eq!(body["name"], "endpoint_not_allowed");
                }
            }
        }
        let r = Vendor::Stripe.error_response(Reason::RateLimited, "slow down", Some(30));
        assert!(r.headers.contains(&("stripe-should-retry", "false".into())));
        assert!(r.headers.contains(&("retry-after", "30".into())));
    }
}
