//! Issuing a token: turning a request for a scoped credential into claims, after checking
//! that the narrowing really is narrower. The filter intersects policy and token scope on
//! every request anyway; these checks are for the person or orchestrator asking, so that a
//! token that could never be used, or that asks for more than its policy, is refused with a
//! reason instead of silently doing less than expected.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::glob::EndpointPattern;
use crate::policy::{CapsNarrowing, CompiledPolicy, ConfigError};
use crate::token::{self, Claims, CLAIMS_VERSION};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    pub policy: String,
    /// Who will hold it: an agent run id, or `tenant/agent/run` for prefix revocation.
    pub label: String,
    /// How long it lives; at most the policy's `max_ttl`.
    #[serde(with = "crate::duration")]
    pub expires_in: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchants: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "CapsNarrowing::is_empty")]
    pub caps: CapsNarrowing,
}

/// Builds the claims of a new token, or every reason it cannot be issued.
pub fn claims_for(
    policy: &CompiledPolicy,
    req: &IssueRequest,
    id: String,
    now: u64,
) -> Result<Claims, Vec<ConfigError>> {
    let p = &policy.policy;
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| errors.push(ConfigError::new(field, message));

    if req.policy != p.name {
        fail(
            "policy",
            format!(
                "asked for policy {:?} but checked against {:?}",
                req.policy, p.name
            ),
        );
    }
    if let Err(e) = token::check_id(&id) {
        fail("id", e);
    }
    if let Err(e) = token::check_label(&req.label) {
        fail("label", e);
    }
    if req.expires_in > p.max_ttl {
        fail(
            "expires_in",
            format!(
                "{} is longer than policy {:?} allows ({})",
                crate::duration::format(req.expires_in),
                p.name,
                crate::duration::format(p.max_ttl)
            ),
        );
    }
    if let Some(endpoints) = &req.endpoints {
        if endpoints.is_empty() {
            fail(
                "endpoints",
                "an empty list would allow nothing; omit it to keep the policy's endpoints".into(),
            );
        }
        for (i, spec) in endpoints.iter().enumerate() {
            match EndpointPattern::parse(spec) {
                Err(e) => fail(&format!("endpoints[{i}]"), e.0),
                Ok(e)
                    if !policy
                        .endpoints
                        .iter()
                        .any(|outer| e.is_within(&outer.pattern)) =>
                {
                    fail(
                        &format!("endpoints[{i}]"),
                        format!("{e} is not within any endpoint of policy {:?}", p.name),
                    )
                }
                Ok(_) => {}
            }
        }
    }
    if let Some(merchants) = &req.merchants {
        if !p.vendor.has_tenants() {
            fail(
                "merchants",
                format!("{} has no merchants or accounts to scope", p.vendor),
            );
        } else if merchants.is_empty() {
            fail(
                "merchants",
                "an empty list would allow nothing; omit it to keep the policy's merchants".into(),
            );
        }
        for (i, m) in merchants.iter().enumerate() {
            if !p.merchants.allow.contains(m) {
                fail(
                    &format!("merchants[{i}]"),
                    format!("{m:?} is not an allowed merchant of policy {:?}", p.name),
                );
            }
        }
    }
    let caps = [
        (
            "caps.per_transaction",
            req.caps.per_transaction,
            p.caps.per_transaction,
        ),
        ("caps.per_window", req.caps.per_window, p.caps.per_window),
        ("caps.lifetime", req.caps.lifetime, p.caps.lifetime),
    ];
    for (field, asked, limit) in caps {
        if let (Some(asked), Some(limit)) = (asked, limit) {
            if asked > limit {
                fail(
                    field,
                    format!("${asked} is above the policy's ${limit}: a token can only lower caps"),
                );
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Claims {
        v: CLAIMS_VERSION,
        id,
        policy: p.name.clone(),
        vendor: p.vendor,
        iat: now,
        exp: now.saturating_add(req.expires_in.as_secs()),
        label: req.label.clone(),
        endpoints: req.endpoints.clone(),
        merchants: req.merchants.clone(),
        caps: req.caps.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Usd;
    use crate::policy::tests::stripe_policy;

    fn request() -> IssueRequest {
        IssueRequest {
            policy: "stripe-payments".into(),
            label: "acme/agent-7/run-42".into(),
            expires_in: Duration::from_secs(900),
            endpoints: Some(vec!["GET /v1/charges/ch_1".into()]),
            merchants: Some(vec!["acct_1Merchant".into()]),
            caps: CapsNarrowing {
                per_transaction: Usd::parse("5").ok(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn issues_narrowed_claims() {
        let policy = stripe_policy().compile().unwrap();
        let c = claims_for(&policy, &request(), "tok_1".into(), 1000).unwrap();
        assert_eq!((c.iat, c.exp), (1000, 1900));
        assert_eq!(c.vendor, policy.policy.vendor);
        assert_eq!(
            c.merchants.as_deref(),
            Some(&["acct_1Merchant".to_string()][..])
        );
    }

    #[test]
    fn refuses_anything_wider_than_the_policy() {
        let policy = stripe_policy().compile().unwrap();
        let mut r = request();
        r.expires_in = Duration::from_secs(7200);
        r.endpoints = Some(vec![
            "POST /v1/refunds".into(),
            "GET /v1/charges/*/refunds".into(),
            "GET /v1/charges/*".into(),
        ]);
        r.merchants = Some(vec!["acct_9Other".into()]);
        r.caps.per_transaction = Usd::parse("1000").ok();
        r.label = "has space".into();
        let errors = claims_for(&policy, &r, "bad id".into(), 0).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "label",
                "expires_in",
                "endpoints[0]",
                "endpoints[1]",
                "merchants[0]",
                "caps.per_transaction"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn empty_narrowing_lists_are_refused() {
        let policy = stripe_policy().compile().unwrap();
        let mut r = request();
        r.endpoints = Some(vec![]);
        r.merchants = Some(vec![]);
        let fields: Vec<String> = claims_for(&policy, &r, "tok_1".into(), 0)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["endpoints", "merchants"]);
    }
}
