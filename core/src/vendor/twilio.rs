//! Twilio: `Authorization: Basic <AccountSid>:<key>`; the account named in the path
//! (`/2010-04-01/Accounts/{AccountSid}/...`); errors as `{code, message, more_info,
//! status}` with Twilio's numeric codes; the secret is `<API key SID or Account SID>:<secret>`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{Presentation, Profile, Tenant};
use crate::decision::{Denial, Request};
use crate::path::RequestPath;
use crate::policy::Merchants;

pub(crate) struct Twilio;

impl Profile for Twilio {
    fn default_upstream(&self) -> &'static str {
        "https://api.twilio.com"
    }

    fn presentations(&self) -> &'static [Presentation] {
        &[Presentation::BasicPassword]
    }

    fn expected_presentation(&self) -> &'static str {
        "Authorization: Basic <AccountSid>:<vault token>"
    }

    fn has_tenants(&self) -> bool {
        true
    }

    fn check_tenant_id(&self, id: &str) -> Result<(), String> {
        if id.len() == 34
            && id.starts_with("AC")
            && id.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
        {
            Ok(())
        } else {
            Err(format!(
                "{id:?} is not a Twilio account SID (AC followed by 32 hex digits)"
            ))
        }
    }

    /// The account is the third path segment, with or without `.json`.
    fn tenant(
        &self,
        _req: &Request<'_>,
        path: &RequestPath<'_>,
        _rules: &Merchants,
        _policy: &str,
    ) -> Result<Tenant, Denial> {
        let mut segs = path.segments();
        Ok(match (segs.next(), segs.next(), segs.next()) {
            (Some("2010-04-01"), Some("Accounts"), Some(sid)) => {
                Tenant::Named(sid.strip_suffix(".json").unwrap_or(sid).to_string())
            }
            _ => Tenant::Unnamed,
        })
    }

    fn injection(&self, secret: &str) -> Result<Vec<(&'static str, String)>, String> {
        if !secret.contains(':') {
            return Err(
                "the Twilio secret must be \"<API key SID or Account SID>:<secret>\"".into(),
            );
        }
        Ok(vec![(
            "authorization",
            format!("Basic {}", STANDARD.encode(secret)),
        )])
    }

    fn error_body(&self, status: u16, code: &'static str, message: &str) -> serde_json::Value {
        let twilio_code: u32 = match status {
            401 => 20003,
            403 => 20403,
            404 => 20404,
            429 => 20429,
            500..=599 => 20500,
            _ => 21000,
        };
        serde_json::json!({
            "code": twilio_code,
            "message": message,
            "more_info": format!("bridle:{code}"),
            "status": status,
            "bridle_reason": code,
        })
    }
}
