//! Vendors: what Bridle knows about each vendor's API, one module per vendor.
//!
//! A vendor module says where an agent presents its vault token, where the tenant (merchant,
//! account) is named, how the real secret is injected, what an error looks like so that the
//! vendor's official SDK raises a clear exception, and any rule of its own for reading
//! request bodies. Everything else in Bridle is generic over [`Vendor`]; adding a vendor
//! means adding a module that implements [`Profile`] and one line in [`Vendor::profile`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::decision::{Denial, Request};
use crate::path::RequestPath;
use crate::policy::Merchants;
use crate::Reason;

mod anthropic;
mod openai;
mod resend;
mod stripe;
mod twilio;

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

/// The tenant a request names, as the vendor's API reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tenant {
    /// The request acts for this merchant or account.
    Named(String),
    /// The request names none (Stripe: the platform account itself).
    Unnamed,
}

/// What a message-sending request sends besides plain text, as its vendor reads the body:
/// each is priced on its own, never per SMS segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageKind {
    /// A multimedia message (MMS).
    pub mms: bool,
    /// A message rendered from a template stored at the vendor, whose text Bridle cannot see.
    pub template: bool,
}

/// One vendor's API, as Bridle needs to know it.
pub(crate) trait Profile: Sync {
    /// The live API, used when no other upstream is configured.
    fn default_upstream(&self) -> &'static str;
    /// The ways this vendor's SDKs send their key.
    fn presentations(&self) -> &'static [Presentation];
    /// How to send the vault token, for error messages.
    fn expected_presentation(&self) -> &'static str;
    /// Whether the vendor has tenants (merchants, accounts) that a policy scopes.
    fn has_tenants(&self) -> bool {
        false
    }
    /// Checks that a tenant id has the vendor's shape, to catch typos in policies.
    fn check_tenant_id(&self, id: &str) -> Result<(), String> {
        Err(format!(
            "{id:?}: this vendor has no merchants or accounts to scope"
        ))
    }
    /// The tenant a request acts for; only called when [`Profile::has_tenants`].
    fn tenant(
        &self,
        _req: &Request<'_>,
        _path: &RequestPath<'_>,
        _rules: &Merchants,
        _policy: &str,
    ) -> Result<Tenant, Denial> {
        Ok(Tenant::Unnamed)
    }
    /// The request headers that carry `secret`, already checked to be printable ASCII.
    fn injection(&self, secret: &str) -> Result<Vec<(&'static str, String)>, String>;
    /// The body of an error in the vendor's own format.
    fn error_body(&self, status: u16, code: &'static str, message: &str) -> serde_json::Value;
    /// Headers of the vendor's own that tell its SDK not to retry.
    fn no_retry_headers(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// The HTTP status of a refusal, where this vendor's SDK would misread the reason's own
    /// (a cap's 402 read as a declined card, say).
    fn status(&self, reason: Reason) -> u16 {
        reason.status()
    }
    /// The header whose key makes the vendor answer a retry of `method path` from its first
    /// execution, if its API does so for that request. Only then does Bridle let a retry under
    /// the same key count nothing: where the vendor would execute it again, so does the
    /// ledger count it again. None by default: a vendor honours keys only where its own
    /// documentation says so.
    fn idempotency_header(&self, _method: &str, _path: &str) -> Option<&'static str> {
        None
    }
    /// How many decimals an amount's minor unit has in this vendor's API. Vendors without a
    /// convention of their own are read the way Stripe documents it (ISO 4217 for the
    /// currencies that differ from two decimals).
    fn minor_unit_exponent(&self, currency: &str) -> u32 {
        stripe::minor_unit_exponent(currency)
    }
    /// What a message priced per SMS segment really sends, from its body; `Err` says why it
    /// cannot be priced as a message at all.
    fn message_kind(&self, _body: &Body) -> Result<MessageKind, String> {
        Ok(MessageKind::default())
    }
}

impl Vendor {
    pub const ALL: [Vendor; 5] = [
        Vendor::Stripe,
        Vendor::Twilio,
        Vendor::Resend,
        Vendor::Openai,
        Vendor::Anthropic,
    ];

    /// The module that knows this vendor's API.
    pub(crate) fn profile(self) -> &'static dyn Profile {
        match self {
            Vendor::Stripe => &stripe::Stripe,
            Vendor::Twilio => &twilio::Twilio,
            Vendor::Resend => &resend::Resend,
            Vendor::Openai => &openai::Openai,
            Vendor::Anthropic => &anthropic::Anthropic,
        }
    }

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
        self.profile().default_upstream()
    }

    pub fn accepts(self, p: Presentation) -> bool {
        self.profile().presentations().contains(&p)
    }

    pub fn expected_presentation(self) -> &'static str {
        self.profile().expected_presentation()
    }

    /// Whether the vendor has tenants (merchants, accounts) that a policy scopes.
    pub fn has_tenants(self) -> bool {
        self.profile().has_tenants()
    }

    /// Checks that a tenant id has the vendor's shape, to catch typos in policies.
    pub fn check_tenant_id(self, id: &str) -> Result<(), String> {
        if self.has_tenants() {
            self.profile().check_tenant_id(id)
        } else {
            Err(format!(
                "{} has no merchants or accounts to scope",
                self.name()
            ))
        }
    }

    /// The tenant a request acts for (`None` for vendors without tenants).
    pub fn tenant(
        self,
        req: &Request<'_>,
        path: &RequestPath<'_>,
        rules: &Merchants,
        policy: &str,
    ) -> Result<Option<Tenant>, Denial> {
        if !self.has_tenants() {
            return Ok(None);
        }
        self.profile().tenant(req, path, rules, policy).map(Some)
    }

    /// The header carrying a retry's idempotency key, if the vendor's API honours one for
    /// `method path` (the matched, canonical path).
    pub fn idempotency_header(self, method: &str, path: &str) -> Option<&'static str> {
        self.profile().idempotency_header(method, path)
    }

    /// How many decimals an amount's minor unit has in this vendor's API.
    pub fn minor_unit_exponent(self, currency: &str) -> u32 {
        self.profile().minor_unit_exponent(currency)
    }

    /// What a message priced per SMS segment really sends (MMS, a template), from its body.
    pub fn message_kind(self, body: &Body) -> Result<MessageKind, String> {
        self.profile().message_kind(body)
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
        self.profile().injection(secret)
    }

    /// A denial in the vendor's own error format, plus Bridle's reason header. The reason code
    /// is also in the message, because most SDKs show only the message in the exception.
    pub fn error_response(
        self,
        reason: Reason,
        message: &str,
        retry_after_secs: Option<u64>,
    ) -> ErrorResponse {
        let status = self.profile().status(reason);
        let code = reason.code();
        let message = format!("Bridle: {message} [{code}]");
        let body = self.profile().error_body(status, code, &message);
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            (REASON_HEADER, code.to_string()),
            // Denials are decisions, not outages: official SDKs must not retry them.
            ("x-should-retry", "false".to_string()),
        ];
        for (name, value) in self.profile().no_retry_headers() {
            headers.push((name, value.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

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

    /// A cap is a refusal from Bridle, not the vendor account's money: no SDK may read it as
    /// a declined card (Stripe's `CardError` for any 402) or as the account's billing (the
    /// OpenAI and Anthropic SDKs' 402 classes).
    #[test]
    fn caps_read_as_refusals_in_every_sdk() {
        for v in Vendor::ALL {
            for reason in [
                Reason::CapPerTransaction,
                Reason::CapWindow,
                Reason::CapLifetime,
                Reason::CapPolicy,
            ] {
                let r = v.error_response(reason, "over", None);
                let want = match v {
                    Vendor::Stripe | Vendor::Openai | Vendor::Anthropic => 403,
                    Vendor::Twilio | Vendor::Resend => 402,
                };
                assert_eq!(r.status, want, "{v} {reason}");
                assert!(r
                    .headers
                    .contains(&(REASON_HEADER, reason.code().to_string())));
                assert!(
                    r.body.contains(&format!("[{}]", reason.code())),
                    "{}",
                    r.body
                );
                for misleading in ["card_error", "billing_error"] {
                    assert!(!r.body.contains(misleading), "{v}: {}", r.body);
                }
            }
            // Every other reason keeps its own status.
            let r = v.error_response(Reason::RateLimited, "slow", Some(1));
            assert_eq!(r.status, 429);
        }
    }

    #[test]
    fn twilio_messages_say_what_they_send() {
        let kind = |body: &str| {
            let b =
                Body::read(Some(b"application/x-www-form-urlencoded"), body.as_bytes()).unwrap();
            Vendor::Twilio.message_kind(&b)
        };
        assert_eq!(kind("To=%2B1555&Body=hi"), Ok(MessageKind::default()));
        assert_eq!(
            kind("To=%2B1555&Body=hi&SendAsMms=FALSE"),
            Ok(MessageKind::default())
        );
        assert!(kind("To=%2B1555&MediaUrl=x").unwrap().mms);
        assert!(kind("To=%2B1555&SendAsMms=true").unwrap().mms);
        assert!(
            kind("To=%2B1555&SendAsMms=false&SendAsMms=true")
                .unwrap()
                .mms
        );
        // Named by only one reading of a body sent without a content type: which message
        // goes, and so its price, would be a guess.
        for field in ["ContentSid", "MediaUrl", "SendAsMms"] {
            // Sent without a content type, JSON to Bridle, a form to a form parser.
            let sniffed = format!(r#"{{"To":"+1555","Body":"a&{field}=HX1"}}"#);
            let b = Body::read(None, sniffed.as_bytes()).unwrap();
            assert!(Vendor::Twilio.message_kind(&b).is_err(), "{sniffed}");
        }
        assert!(kind("To=%2B1555&ContentSid=HX1").unwrap().template);
        assert!(kind("To=whatsapp%3A%2B1555").is_err());
        assert!(kind("From=rcs%3Abrand").is_err());
        assert!(kind("To=%2B1555&To=%2B1666").is_err());
        // Only Twilio's bodies carry these.
        let b = Body::read(Some(b"application/x-www-form-urlencoded"), b"MediaUrl=x").unwrap();
        assert_eq!(Vendor::Stripe.message_kind(&b), Ok(MessageKind::default()));
    }
}
