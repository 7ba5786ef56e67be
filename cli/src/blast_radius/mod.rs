//! `bridle blast-radius`: the security reviewer's question, "if this token is stolen right
//! now, what is the worst it can do?", answered from the policies and, for one token, its
//! narrowing, with the core's own types and rules: [`effective_caps`] for caps,
//! [`EndpointPattern::is_within`] for endpoints, the filter's merchant rules, the loop
//! breaker's per-minute counting and the ledger link's poll timing.
//!
//! - [`radius`]: the worst case of one policy or one token.
//! - [`diff`]: what a policy change widens, for a pull request that needs a security review.
//! - [`source`]: policies from a folder or a git revision, tokens from text or the ledger.
//! - [`output`]: table, JSON and Markdown.
//! - [`command`]: the command line.

pub mod command;
pub mod diff;
pub mod output;
pub mod source;

use std::time::Duration;

use bridle_core::config::LedgerLink;
use bridle_core::cost::{CostRule, Per};
use bridle_core::glob::EndpointPattern;
use bridle_core::loop_breaker::WINDOW_SECS;
use bridle_core::money::Usd;
use bridle_core::policy::{effective_caps, CompiledPolicy, FailureMode};
use bridle_core::token::Claims;
use bridle_core::vendor::Vendor;
use serde::Serialize;

/// How a report is computed beyond the policies themselves.
#[derive(Clone, Debug)]
pub struct Assumptions {
    /// The ledger link the filter runs with (what `bridle render` deploys).
    pub link: LedgerLink,
    /// How many proxies serve the policy: the loop breaker counts per proxy.
    pub proxies: u64,
    /// Unix seconds, for a token's remaining life.
    pub now: u64,
}

/// One token, when the report is about a token rather than its whole policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenFacts {
    pub id: String,
    pub label: String,
    pub expires_at: u64,
    /// Its signature was checked against the public keys (or the ledger issued it).
    pub verified: bool,
    /// Why it can do nothing at all, if so: expired, revoked, or refused by its policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inert: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointReach {
    /// `METHOD /path/glob`.
    pub endpoint: String,
    /// What a call reserves; `None`: free, so no spend cap limits it.
    pub cost: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MerchantReach {
    /// Whether the vendor has merchants or accounts Bridle scopes on at all.
    pub scoped: bool,
    pub allow: Vec<String>,
    /// Calls naming no merchant (Stripe: the platform account itself).
    pub unscoped: bool,
    pub stripe_context: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CapsReach {
    pub per_transaction: Option<Usd>,
    pub per_window: Option<Usd>,
    pub lifetime: Option<Usd>,
    pub policy_per_window: Option<Usd>,
    pub window_secs: u64,
}

/// One bound on what the token can spend before it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpendBound {
    pub usd: Usd,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpendReach {
    /// The lowest bound; `None`: nothing bounds it.
    pub max_usd: Option<Usd>,
    pub bounds: Vec<SpendBound>,
    /// Whether any reachable endpoint is costed at all: Bridle counts no other spend.
    pub costed_endpoints: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallsReach {
    /// Per calendar minute, per proxy.
    pub per_minute: u32,
    pub identical_per_minute: u32,
    /// In any 60 seconds that straddle a minute, per proxy: two minutes' worth.
    pub in_any_60s: u64,
    /// Over the whole TTL, across every proxy.
    pub before_expiry: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RevocationReach {
    /// Uncosted calls, while the proxy can reach the ledger: the worst case.
    pub worst_ms: u64,
    pub poll_ms: u64,
    pub tick_ms: u32,
    pub timeout_ms: u64,
    /// Costed calls are checked by the ledger at reserve: refused from the commit on; those
    /// spent from a lease, by the worker's revocation set like uncosted ones.
    pub costed: String,
    /// What happens to uncosted calls when the proxy cannot reach the ledger.
    pub ledger_unreachable: String,
}

/// The worst one policy, or one token, can do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Radius {
    pub policy: String,
    pub vendor: Vendor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenFacts>,
    pub endpoints: Vec<EndpointReach>,
    pub merchants: MerchantReach,
    pub caps: CapsReach,
    /// The longest it lives: the policy's max TTL, or what is left of the token's life.
    pub ttl_secs: u64,
    pub spend: SpendReach,
    /// `None`: no loop breaker, so no per-minute limit.
    pub calls: Option<CallsReach>,
    pub revocation: RevocationReach,
    /// Anything the numbers alone do not say.
    pub notes: Vec<String>,
}

/// A short description of what a cost rule reserves.
pub fn describe_cost(rule: &CostRule) -> String {
    if rule.tokens.is_some() {
        // Priced by tokens: a rule of its own (policy checks refuse it beside anything else).
        return "its tokens at the model's prices: the most it can cost reserved, settled from its usage".into();
    }
    let mut out = match (&rule.amount, &rule.fixed, &rule.max) {
        (Some(a), _, max) => {
            let currency = match (&a.currency, &a.currency_field) {
                (Some(c), _) => c.clone(),
                (None, Some(f)) => format!("in {f}"),
                (None, None) => String::new(),
            };
            let mut s = format!("the request's {} ({currency})", a.field);
            if let Some(m) = max {
                s.push_str(&format!(", or ${m} when it names none"));
            }
            s
        }
        (None, Some(price), _) => {
            let per = match rule.per {
                Per::Call => "call",
                Per::SmsSegment => "SMS segment",
                Per::Recipient => "recipient",
            };
            format!("${price} per {per}")
        }
        (None, None, Some(m)) => format!("${m} estimate per call"),
        (None, None, None) => "nothing".into(),
    };
    if rule.settle.is_some() {
        out.push_str(", settled from the response");
    }
    out
}

/// The report for a whole policy: what any token of it could do.
pub fn for_policy(policy: &CompiledPolicy, a: &Assumptions) -> Radius {
    compute(policy, None, a)
}

/// The report for one token: its policy with the token's narrowing applied, for the rest of
/// its life.
pub fn for_token(
    policy: &CompiledPolicy,
    claims: &Claims,
    verified: bool,
    revoked: bool,
    a: &Assumptions,
) -> Radius {
    compute(policy, Some((claims, verified, revoked)), a)
}

fn compute(
    compiled: &CompiledPolicy,
    token: Option<(&Claims, bool, bool)>,
    a: &Assumptions,
) -> Radius {
    let p = &compiled.policy;
    let mut notes = Vec::new();

    // Endpoints: the policy's, or the token's that lie within them (the filter requires a
    // request to match both, so a token endpoint outside every policy endpoint reaches at
    // most their overlap).
    let mut endpoints: Vec<EndpointReach> = Vec::new();
    let cost_of = |i: usize| {
        p.endpoints
            .get(i)
            .and_then(|e| e.cost.as_ref())
            .map(describe_cost)
    };
    match token.and_then(|(c, _, _)| c.endpoints.as_ref()) {
        None => {
            for (i, e) in compiled.endpoints.iter().enumerate() {
                endpoints.push(EndpointReach {
                    endpoint: e.pattern.to_string(),
                    cost: cost_of(i),
                });
            }
        }
        Some(narrowed) => {
            for spec in narrowed {
                match EndpointPattern::parse(spec) {
                    Ok(e) => match compiled.endpoints.iter().position(|o| e.is_within(&o.pattern)) {
                        Some(i) => endpoints.push(EndpointReach {
                            endpoint: e.to_string(),
                            cost: cost_of(i),
                        }),
                        None => notes.push(format!(
                            "token endpoint {e} is not within the policy's endpoints: it reaches at most where they overlap"
                        )),
                    },
                    Err(err) => notes.push(format!("token endpoint {spec:?} is refused: {err}")),
                }
            }
        }
    }

    // Merchants: the filter's rule is the token's list within the policy's allow list, and
    // no unscoped calls once a token names merchants.
    let scoped = p.vendor.has_tenants();
    let rules = &p.merchants;
    let narrowed_merchants = token.and_then(|(c, _, _)| c.merchants.as_ref());
    let merchants = MerchantReach {
        scoped,
        allow: match narrowed_merchants {
            None => rules.allow.clone(),
            Some(m) => m
                .iter()
                .filter(|x| rules.allow.contains(x))
                .cloned()
                .collect(),
        },
        unscoped: scoped && rules.allow_unscoped && narrowed_merchants.is_none(),
        stripe_context: rules.allow_stripe_context,
    };

    let caps = match token {
        Some((c, _, _)) => effective_caps(&p.caps, &c.caps),
        None => p.caps.clone(),
    };
    let window = caps.window();

    let mut token_facts = None;
    let ttl_secs = match token {
        None => p.max_ttl.as_secs(),
        Some((c, verified, revoked)) => {
            let inert = if revoked {
                Some("revoked: the proxy refuses it".to_string())
            } else if a.now >= c.exp {
                Some("expired: the proxy refuses it".to_string())
            } else if c.exp <= c.iat || c.exp - c.iat > p.max_ttl.as_secs() {
                Some(format!(
                    "lives longer than policy {:?} allows: the proxy refuses it",
                    p.name
                ))
            } else {
                None
            };
            let left = if inert.is_some() {
                0
            } else {
                c.exp - a.now.max(c.iat)
            };
            token_facts = Some(TokenFacts {
                id: c.id.clone(),
                label: c.label.clone(),
                expires_at: c.exp,
                verified,
                inert,
            });
            left
        }
    };
    let inert = token_facts.as_ref().is_some_and(|t| t.inert.is_some());
    if inert {
        endpoints.clear();
    }

    // Calls: the loop breaker counts per token per calendar minute on each proxy.
    let minutes = minutes_spanned(ttl_secs);
    let calls = p.loop_breaker.as_ref().map(|lb| CallsReach {
        per_minute: lb.max_requests_per_minute,
        identical_per_minute: lb.max_identical_per_minute,
        in_any_60s: 2 * u64::from(lb.max_requests_per_minute),
        before_expiry: u64::from(lb.max_requests_per_minute)
            .saturating_mul(minutes)
            .saturating_mul(a.proxies),
    });

    let costed_endpoints = endpoints.iter().any(|e| e.cost.is_some());
    let spend = spend_reach(&caps, window, ttl_secs, calls.as_ref(), costed_endpoints);
    if !costed_endpoints && !endpoints.is_empty() {
        notes.push(
            "no reachable endpoint is costed: Bridle counts no spend for these calls, and no cap limits them".into(),
        );
    } else if endpoints.iter().any(|e| e.cost.is_none()) && costed_endpoints {
        notes
            .push("uncosted endpoints are limited by the loop breaker only, not by any cap".into());
    }
    if calls.is_none() && !endpoints.is_empty() {
        notes.push("no loop breaker: nothing limits the call rate".into());
    }
    if a.proxies > 1 {
        notes.push(format!(
            "calls counted across {} proxies: each proxy's loop breaker counts on its own",
            a.proxies
        ));
    }

    let link = &a.link;
    let revocation = RevocationReach {
        worst_ms: link.revocation_reach_ms(),
        poll_ms: link.revocation_poll_ms,
        tick_ms: bridle_core::config::TICK_MS,
        timeout_ms: link.timeout_ms,
        costed: match p.lease {
            None => "refused from the commit on (the ledger checks every reservation)".into(),
            Some(l) => format!(
                "refused from the commit on when reserved one by one; calls spent from a lease (up to {} per worker, for {} ms) are refused by the proxy's revocation set, within {} ms",
                l.calls,
                l.max_age_ms,
                link.revocation_reach_ms()
            ),
        },
        ledger_unreachable: match p.on_ledger_unavailable {
            FailureMode::Deny => format!(
                "uncosted calls are refused once the revocation set is {} ms old",
                link.max_staleness_ms
            ),
            FailureMode::Allow => {
                "uncosted calls go on, revoked or not, until the proxy reaches the ledger again (on_ledger_unavailable: allow)".into()
            }
        },
    };

    Radius {
        policy: p.name.clone(),
        vendor: p.vendor,
        token: token_facts,
        endpoints,
        merchants,
        caps: CapsReach {
            per_transaction: caps.per_transaction,
            per_window: caps.per_window,
            lifetime: caps.lifetime,
            policy_per_window: caps.policy_per_window,
            window_secs: window.as_secs(),
        },
        ttl_secs,
        spend,
        calls,
        revocation,
        notes,
    }
}

/// Calendar minutes a span of `secs` can touch: one more than it fills, when it does not
/// start on the minute.
fn minutes_spanned(secs: u64) -> u64 {
    if secs == 0 {
        0
    } else {
        secs.div_ceil(WINDOW_SECS) + 1
    }
}

/// Rolling windows a span of `secs` can touch: the ledger forgets a reservation exactly one
/// window after it was made, so spending the whole cap at the start of each window fits
/// `ceil(ttl / window)` windows.
fn windows_spanned(secs: u64, window: Duration) -> u64 {
    secs.div_ceil(window.as_secs().max(1))
}

fn spend_reach(
    caps: &bridle_core::policy::Caps,
    window: Duration,
    ttl_secs: u64,
    calls: Option<&CallsReach>,
    costed: bool,
) -> SpendReach {
    let mut bounds = Vec::new();
    if !costed || ttl_secs == 0 {
        return SpendReach {
            max_usd: Some(Usd::ZERO),
            bounds,
            costed_endpoints: costed,
        };
    }
    let windows = windows_spanned(ttl_secs, window);
    let window_text = bridle_core::duration::format(window);
    let mut add = |usd: Option<Usd>, why: String| {
        if let Some(usd) = usd {
            bounds.push(SpendBound { usd, why });
        }
    };
    if let Some(l) = caps.lifetime {
        add(Some(l), format!("the ${l} lifetime cap"));
    }
    if let Some(w) = caps.per_window {
        add(
            w.checked_mul(windows),
            format!("the ${w} cap per {window_text} window, {windows} window(s) within the TTL"),
        );
    }
    if let Some(w) = caps.policy_per_window {
        add(
            w.checked_mul(windows),
            format!(
                "the policy's ${w} aggregate per {window_text} window (shared by every token), {windows} window(s)"
            ),
        );
    }
    if let (Some(t), Some(c)) = (caps.per_transaction, calls) {
        add(
            t.checked_mul(c.before_expiry),
            format!(
                "the ${t} per-transaction cap times the {} calls the loop breaker lets through before expiry",
                c.before_expiry
            ),
        );
    }
    bounds.sort_by_key(|b| b.usd);
    SpendReach {
        max_usd: bounds.first().map(|b| b.usd),
        bounds,
        costed_endpoints: costed,
    }
}

#[cfg(test)]
mod tests;
