//! Twilio: `Authorization: Basic <AccountSid>:<key>`; the account named in the path
//! (`/2010-04-01/Accounts/{AccountSid}/...`); errors as `{code, message, more_info,
//! status}` with Twilio's numeric codes; the secret is `<API key SID or Account SID>:<secret>`.
//!
//! A message is priced per SMS segment of its `Body` only when it is a plain SMS. Twilio's
//! Messages resource (`POST /2010-04-01/Accounts/{Sid}/Messages.json`) also sends MMS, when
//! the request has a `MediaUrl` or `SendAsMms=true` ("Twilio delivers the message as a
//! single MMS message, regardless of the presence of media"); Content Templates, when it has
//! a `ContentSid` (the text and media come from the template, which Bridle cannot see); and
//! other channels, when `To` or `From` is a channel address such as `whatsapp:+1555...`.
//!
//! Twilio's REST API has no idempotency key: sending a message is not idempotent, and a retry
//! sends again (its error 20500 says so). `I-Twilio-Idempotency-Token` is a header on Twilio's
//! webhooks to you, not on requests to Twilio. So every call is priced afresh, key or not.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{MessageKind, Presentation, Profile, Tenant};
use crate::body::{Body, Lookup};
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

    fn message_kind(&self, body: &Body) -> Result<MessageKind, String> {
        for field in ["To", "From"] {
            match body.get(field) {
                Lookup::Absent => {}
                Lookup::One(item) => {
                    if item.as_str().is_some_and(is_channel_address) {
                        return Err(format!(
                            "{field} is a channel address: Twilio sends it on that channel at its own price, and Bridle prices SMS and MMS only"
                        ));
                    }
                }
                _ => return Err(format!("{field} must be given once")),
            }
        }
        let send_as_mms = match body.get("SendAsMms") {
            Lookup::Absent => false,
            Lookup::One(item) => !item
                .as_str()
                .is_some_and(|v| v.eq_ignore_ascii_case("false")),
            Lookup::Ambiguous if body.is_sniffed() => return Err(reads_two_ways("SendAsMms")),
            // Given twice, or as a list: Twilio may read it as true.
            _ => true,
        };
        Ok(MessageKind {
            mms: send_as_mms || present(body, "MediaUrl")?,
            template: present(body, "ContentSid")?,
        })
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

/// Whether the message names `field` (given more than once counts: Twilio takes up to ten
/// `MediaUrl`s). In a body sent without a content type that Bridle reads as JSON, a field
/// only a form reading names is refused: which kind of message Twilio sends, and so its
/// price, would be a guess.
fn present(body: &Body, field: &str) -> Result<bool, String> {
    match body.get(field) {
        Lookup::Absent => Ok(false),
        Lookup::Ambiguous if body.is_sniffed() => Err(reads_two_ways(field)),
        _ => Ok(true),
    }
}

fn reads_two_ways(field: &str) -> String {
    format!(
        "{field} is named only when the body is read as a form, and the body came without a content type: send it as application/x-www-form-urlencoded"
    )
}

/// A channel address (`whatsapp:+1555...`, `messenger:...`): a scheme of letters and a colon,
/// where a phone number has digits and `+`.
fn is_channel_address(value: &str) -> bool {
    value.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphabetic())
    })
}
