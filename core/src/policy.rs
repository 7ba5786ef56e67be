//! Policies: what a family of vault tokens may do. One YAML file per policy for people; the
//! same structure as JSON in the filter's configuration.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere) and [`Policy::compile`] checks
//! everything serde cannot, reporting the field path of each problem.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cost::CostRule;
use crate::glob::EndpointPattern;
use crate::money::{FxTable, Usd};
use crate::vendor::Vendor;

/// The longest TTL any policy may allow. Vault tokens are for runs, not for years.
pub const MAX_POLICY_TTL: Duration = Duration::from_secs(30 * 86_400);
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(86_400);
pub const DEFAULT_SHORT_WINDOW: Duration = Duration::from_secs(60);
/// The longest a spend breaker's window may be.
pub const MAX_SHORT_WINDOW: Duration = Duration::from_secs(3_600);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Lowercase letters, digits and dashes: the name appears in tokens, stats and URLs.
    pub name: String,
    pub vendor: Vendor,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The environment variable (in Envoy's, from a Kubernetes Secret) holding the vendor key.
    pub secret_env: String,
    /// The longest a token of this policy may live.
    #[serde(with = "crate::duration")]
    pub max_ttl: Duration,
    #[serde(default, skip_serializing_if = "Merchants::is_default")]
    pub merchants: Merchants,
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Caps::is_empty")]
    pub caps: Caps,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_breaker: Option<LoopBreaker>,
    /// What uncosted requests do when Bridle cannot confirm revocations with the ledger.
    /// Costed requests always need the ledger and are denied without it.
    #[serde(default, skip_serializing_if = "FailureMode::is_deny")]
    pub on_ledger_unavailable: FailureMode,
    /// Exchange rates to USD for costs read in other currencies.
    #[serde(default, skip_serializing_if = "FxTable::is_empty")]
    pub fx: FxTable,
    /// For endpoints priced by tokens: the models calls may name, and their limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<crate::llm::Models>,
    /// Lets each proxy worker reserve several fixed-price calls of a token at once and spend
    /// them without asking the ledger per call (see `crate::lease`). Off unless given: it
    /// changes when spend is counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// A policy's spend leases: how many calls one lease may cover, and how long a worker may
/// spend from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// Calls of the first call's price one lease covers at most (2 to [`MAX_LEASE_CALLS`]).
    pub calls: u32,
    /// After this many milliseconds from its request a lease is spent no more and closed
    /// (10 to [`MAX_LEASE_AGE_MS`], and at most a tenth of the policy's shortest window).
    #[serde(default = "default_lease_age_ms")]
    pub max_age_ms: u64,
}

pub const MAX_LEASE_CALLS: u32 = 64;
pub const MAX_LEASE_AGE_MS: u64 = 1_000;

fn default_lease_age_ms() -> u64 {
    250
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merchants {
    /// Stripe connected account ids (`acct_...`) or Twilio account SIDs (`AC...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Requests that name no merchant: for Stripe, no `Stripe-Account` header, i.e. the
    /// platform account itself; for Twilio, paths outside `/2010-04-01/Accounts/{Sid}`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_unscoped: bool,
    /// Stripe only: let `Stripe-Context` through (its value must be an allowed merchant).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_stripe_context: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Merchants {
    fn is_default(&self) -> bool {
        *self == Merchants::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub method: String,
    pub path: String,
    /// What a call costs; an endpoint without one is free and needs no ledger round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostRule>,
}

/// Spend caps, in US dollars. Each is optional; a token can only lower them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_transaction: Option<Usd>,
    /// Per token, over the rolling `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_window: Option<Usd>,
    /// Per token, over its whole life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Usd>,
    /// All tokens of the policy together, over the rolling `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_per_window: Option<Usd>,
    /// The rolling window for `per_window` and `policy_per_window`; 24h if not given.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// The spend breaker: per token, over the short rolling `short_window`. A looping agent
    /// is stopped with 429 and `Retry-After` long before its daily cap is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_short_window: Option<Usd>,
    /// The breaker's window; a minute if not given.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub short_window: Option<Duration>,
}

impl Caps {
    pub fn is_empty(&self) -> bool {
        *self == Caps::default()
    }

    pub fn window(&self) -> Duration {
        self.window.unwrap_or(DEFAULT_WINDOW)
    }

    pub fn short_window(&self) -> Duration {
        self.short_window.unwrap_or(DEFAULT_SHORT_WINDOW)
    }
}

/// The caps a token may lower (never raise) below its policy's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsNarrowing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_transaction: Option<Usd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_window: Option<Usd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Usd>,
}

impl CapsNarrowing {
    pub fn is_empty(&self) -> bool {
        *self == CapsNarrowing::default()
    }
}

/// The lower of two optional caps: `None` means "no cap".
pub fn min_cap(a: Option<Usd>, b: Option<Usd>) -> Option<Usd> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The caps in force for one token: the policy's, lowered by the token's narrowing.
pub fn effective_caps(policy: &Caps, token: &CapsNarrowing) -> Caps {
    Caps {
        per_transaction: min_cap(policy.per_transaction, token.per_transaction),
        per_window: min_cap(policy.per_window, token.per_window),
        lifetime: min_cap(policy.lifetime, token.lifetime),
        policy_per_window: policy.policy_per_window,
        window: policy.window,
        per_short_window: policy.per_short_window,
        short_window: policy.short_window,
    }
}

/// Stops a looping agent: every request of a token counts, costed or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopBreaker {
    pub max_requests_per_minute: u32,
    /// The same method, path, query and body, repeated.
    pub max_identical_per_minute: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    #[default]
    Deny,
    Allow,
}

impl FailureMode {
    fn is_deny(&self) -> bool {
        *self == FailureMode::Deny
    }
}

impl FxTable {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One problem in a configuration, with the path of the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, inside a parent field: `endpoints[1].path` inside `policies[0]`.
    pub fn within(self, parent: &str) -> ConfigError {
        let field = if self.field.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.field)
        };
        ConfigError {
            field,
            message: self.message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A policy whose every field has been checked, with its endpoint globs compiled.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub policy: Policy,
    /// In the policy's order: the first that matches a request is the one that applies.
    pub endpoints: Vec<Arc<CompiledEndpoint>>,
    /// The `models` section, ready to match.
    pub models: Option<Arc<crate::llm::CompiledModels>>,
}

/// One endpoint of a policy, ready to match: its pattern, and what a call to it costs.
#[derive(Clone, Debug)]
pub struct CompiledEndpoint {
    pub pattern: EndpointPattern,
    /// `None`: free, and needs no ledger round trip.
    pub cost: Option<CostRule>,
}

impl CompiledEndpoint {
    pub fn matches(&self, method: &str, path: &crate::path::RequestPath<'_>) -> bool {
        self.pattern.matches(method, path)
    }
}

pub fn check_policy_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-63 lowercase letters, digits and dashes, e.g. \"stripe-payments\""
        ))
    }
}

fn check_env_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_');
    if first_ok
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 128
    {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an environment variable name (A-Z, 0-9, _)"
        ))
    }
}

impl Policy {
    /// Checks what serde cannot and compiles the endpoint globs. Reports every problem.
    pub fn compile(&self) -> Result<CompiledPolicy, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| errors.push(ConfigError::new(field, message));

        if let Err(e) = check_policy_name(&self.name) {
            fail("name", e);
        }
        if let Err(e) = check_env_name(&self.secret_env) {
            fail("secret_env", e);
        }
        if self.max_ttl > MAX_POLICY_TTL {
            fail(
                "max_ttl",
                format!(
                    "{} is longer than the 30-day limit",
                    crate::duration::format(self.max_ttl)
                ),
            );
        }

        let m = &self.merchants;
        if !self.vendor.has_tenants() {
            if !m.allow.is_empty() || m.allow_unscoped {
                fail(
                    "merchants",
                    format!(
                        "{} has no merchants or accounts to scope; remove this section",
                        self.vendor
                    ),
                );
            }
        } else {
            if m.allow.is_empty() && !m.allow_unscoped {
                fail(
                    "merchants",
                    "allows no merchant: list accounts in merchants.allow, or set merchants.allow_unscoped: true".into(),
                );
            }
            for (i, id) in m.allow.iter().enumerate() {
                if let Err(e) = self.vendor.check_tenant_id(id) {
                    fail(&format!("merchants.allow[{i}]"), e);
                }
                if m.allow.iter().take(i).any(|other| other == id) {
                    fail(
                        &format!("merchants.allow[{i}]"),
                        format!("{id:?} is listed twice"),
                    );
                }
            }
        }
        if m.allow_stripe_context && self.vendor != Vendor::Stripe {
            fail(
                "merchants.allow_stripe_context",
                "only applies to stripe".into(),
            );
        }

        if self.endpoints.is_empty() {
            fail(
                "endpoints",
                "a policy must allow at least one endpoint".into(),
            );
        }
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for (i, e) in self.endpoints.iter().enumerate() {
            match EndpointPattern::new(&e.method, &e.path) {
                Ok(p) => {
                    if endpoints
                        .iter()
                        .any(|q: &Arc<CompiledEndpoint>| q.pattern.to_string() == p.to_string())
                    {
                        fail(&format!("endpoints[{i}]"), format!("{p} is listed twice"));
                    }
                    endpoints.push(Arc::new(CompiledEndpoint {
                        pattern: p,
                        cost: e.cost.clone(),
                    }));
                }
                Err(err) => fail(&format!("endpoints[{i}]"), err.0),
            }
            if let Some(cost) = &e.cost {
                for err in cost.check(&format!("endpoints[{i}].cost")) {
                    fail(&err.field, err.message);
                }
                for fixed in [&cost.amount, &cost.settle]
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.currency.as_deref())
                {
                    if self.fx.rate(fixed).is_none() {
                        fail(
                            &format!("endpoints[{i}].cost"),
                            format!("currency {fixed:?} needs a rate in fx"),
                        );
                    }
                }
            }
        }

        if let Some(lb) = &self.loop_breaker {
            if lb.max_requests_per_minute == 0 {
                fail(
                    "loop_breaker.max_requests_per_minute",
                    "must be at least 1".into(),
                );
            }
            if lb.max_identical_per_minute == 0 {
                fail(
                    "loop_breaker.max_identical_per_minute",
                    "must be at least 1".into(),
                );
            }
        }
        if let Some(w) = self.caps.window {
            if w > Duration::from_secs(366 * 86_400) {
                fail("caps.window", "must be at most a year".into());
            }
        }
        if self.caps.short_window.is_some() && self.caps.per_short_window.is_none() {
            fail(
                "caps.short_window",
                "is the window of per_short_window, which is not given".into(),
            );
        }
        let short = self.caps.short_window();
        if short < Duration::from_secs(1) || short > MAX_SHORT_WINDOW {
            fail(
                "caps.short_window",
                "must be between 1s and 1h: it is the breaker's window, not a budget's".into(),
            );
        }
        if let Some(lease) = &self.lease {
            if !(2..=MAX_LEASE_CALLS).contains(&lease.calls) {
                fail(
                    "lease.calls",
                    format!("must be between 2 and {MAX_LEASE_CALLS}"),
                );
            }
            // A leased call counts from its lease's request, up to max_age before it was
            // made: a tenth of the shortest window bounds how early it leaves that window.
            let shortest = self
                .caps
                .window()
                .min(if self.caps.per_short_window.is_some() {
                    short
                } else {
                    self.caps.window()
                });
            let tenth = u64::try_from(shortest.as_millis() / 10).unwrap_or(u64::MAX);
            if lease.max_age_ms < 10 || lease.max_age_ms > MAX_LEASE_AGE_MS.min(tenth) {
                fail(
                    "lease.max_age_ms",
                    format!(
                        "must be between 10 and {} (1s, and a tenth of the policy's shortest window)",
                        MAX_LEASE_AGE_MS.min(tenth)
                    ),
                );
            }
        }
        if let Some(models) = &self.models {
            for e in models.check(self.vendor) {
                fail(&format!("models.{}", e.field), e.message);
            }
        }
        for (i, api) in self
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, e.cost.as_ref()?.tokens?)))
        {
            if api.vendor() != self.vendor {
                fail(
                    &format!("endpoints[{i}].cost.tokens"),
                    format!(
                        "{} is an API of {}, not {}",
                        api.name(),
                        api.vendor(),
                        self.vendor
                    ),
                );
            }
            if self.models.is_none() {
                fail(
                    &format!("endpoints[{i}].cost.tokens"),
                    "calls priced by tokens need a models section: the models they may name".into(),
                );
            }
        }
        for currency in self.fx.0.keys() {
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
                fail(
                    &format!("fx.{currency}"),
                    "currency codes are three lowercase letters, e.g. eur".into(),
                );
            }
        }

        if errors.is_empty() {
            Ok(CompiledPolicy {
                policy: self.clone(),
                endpoints,
                models: self.models.as_ref().map(|m| Arc::new(m.compile())),
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn stripe_policy() -> Policy {
        serde_json::from_value(serde_json::json!({
            "name": "stripe-payments",
            "vendor": "stripe",
            "secret_env": "STRIPE_SECRET_KEY",
            "max_ttl": "1h",
            "merchants": { "allow": ["acct_1Merchant", "acct_2Merchant"] },
            "endpoints": [
                { "method": "POST", "path": "/v1/payment_intents" },
                { "method": "GET", "path": "/v1/payment_intents/*" },
                { "method": "GET", "path": "/v1/charges/*" },
            ],
            "caps": { "per_transaction": "100.00", "per_window": "500", "lifetime": "2000.00" },
        }))
        .unwrap()
    }

    #[test]
    fn a_good_policy_compiles_and_round_trips() {
        let p = stripe_policy();
        let c = p.compile().unwrap();
        assert_eq!(c.endpoints.len(), 3);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
        assert_eq!(p.caps.window(), DEFAULT_WINDOW);
    }

    #[test]
    fn unknown_fields_and_vendors_are_refused() {
        let mut v = serde_json::to_value(stripe_policy()).unwrap();
        v["endpoint"] = serde_json::json!([]);
        assert!(serde_json::from_value::<Policy>(v)
            .unwrap_err()
            .to_string()
            .contains("unknown field `endpoint`"));
        let mut v = serde_json::to_value(stripe_policy()).unwrap();
        v["vendor"] = "paypal".into();
        assert!(serde_json::from_value::<Policy>(v)
            .unwrap_err()
            .to_string()
            .contains("unknown variant `paypal`"));
        let mut v = serde_json::to_value(stripe_policy()).unwrap();
        v["caps"]["daily"] = "5".into();
        assert!(serde_json::from_value::<Policy>(v).is_err());
    }

    #[test]
    fn semantic_errors_name_their_field() {
        let mut p = stripe_policy();
        p.name = "Stripe Payments".into();
        p.secret_env = "stripe-key".into();
        p.max_ttl = Duration::from_secs(90 * 86_400);
        p.merchants.allow.push("cus_123".into());
        p.endpoints.push(Endpoint {
            method: "GET".into(),
            path: "/v1/charges/**".into(),
            cost: None,
        });
        p.endpoints.push(Endpoint {
            method: "GET".into(),
            path: "/v1/charges/*".into(),
            cost: None,
        });
        p.endpoints.push(Endpoint {
            method: "FETCH".into(),
            path: "/v1/x".into(),
            cost: None,
        });
        let errors = p.compile().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "secret_env",
                "max_ttl",
                "merchants.allow[2]",
                "endpoints[3]",
                "endpoints[4]",
                "endpoints[5]"
            ],
            "{errors:?}"
        );
        assert!(errors[4].to_string().contains("'**'"));
        assert!(errors[5].to_string().contains("listed twice"));
    }

    #[test]
    fn a_lease_is_bounded_by_calls_age_and_the_shortest_window() {
        let lease = |calls, max_age_ms| {
            let mut p = stripe_policy();
            p.lease = Some(Lease { calls, max_age_ms });
            p
        };
        let fields = |p: Policy| -> Vec<String> {
            p.compile()
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert!(lease(2, 10).compile().is_ok());
        assert!(lease(MAX_LEASE_CALLS, MAX_LEASE_AGE_MS).compile().is_ok());
        assert_eq!(fields(lease(1, 250)), ["lease.calls"]);
        assert_eq!(fields(lease(MAX_LEASE_CALLS + 1, 250)), ["lease.calls"]);
        assert_eq!(fields(lease(8, 9)), ["lease.max_age_ms"]);
        assert_eq!(fields(lease(8, MAX_LEASE_AGE_MS + 1)), ["lease.max_age_ms"]);
        // A 2 s breaker window: a lease spends for at most 200 ms.
        let mut p = lease(8, 201);
        p.caps.per_short_window = Some(Usd::from_micros(1).unwrap());
        p.caps.short_window = Some(Duration::from_secs(2));
        assert_eq!(fields(p.clone()), ["lease.max_age_ms"]);
        p.lease = Some(Lease {
            calls: 8,
            max_age_ms: 200,
        });
        assert!(p.compile().is_ok());
        let json: Policy = serde_json::from_value(serde_json::json!({
            "name": "p", "vendor": "stripe", "secret_env": "K", "max_ttl": "1h",
            "merchants": { "allow_unscoped": true },
            "endpoints": [{ "method": "GET", "path": "/v1/charges/*" }],
            "lease": { "calls": 4 },
        }))
        .unwrap();
        assert_eq!(
            json.lease.map(|l| l.max_age_ms),
            Some(250),
            "the default age"
        );
    }

    #[test]
    fn merchant_rules_follow_the_vendor() {
        let mut p = stripe_policy();
        p.merchants = Merchants::default();
        assert_eq!(p.compile().unwrap_err()[0].field, "merchants");
        p.merchants.allow_unscoped = true;
        assert!(p.compile().is_ok());

        let mut p = stripe_policy();
        p.vendor = Vendor::Openai;
        p.merchants.allow_stripe_context = true;
        let fields: Vec<String> = p
            .compile()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["merchants", "merchants.allow_stripe_context"]);
    }

    #[test]
    fn tokens_only_lower_caps() {
        let policy = stripe_policy().caps;
        let lower = CapsNarrowing {
            per_transaction: Usd::parse("5").ok(),
            per_window: Usd::parse("9999").ok(),
            lifetime: None,
        };
        let eff = effective_caps(&policy, &lower);
        assert_eq!(eff.per_transaction, Usd::parse("5").ok());
        assert_eq!(
            eff.per_window, policy.per_window,
            "a token cannot raise a cap"
        );
        assert_eq!(eff.lifetime, policy.lifetime);
        let uncapped = Caps::default();
        assert_eq!(
            effective_caps(&uncapped, &lower).per_window,
            Usd::parse("9999").ok()
        );
    }
}
