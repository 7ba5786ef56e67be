//! Which cap alerts fire, and when: once per threshold (80 % and 100 %) per window, or once
//! ever for lifetime caps. Delivery is `alerts.rs`; every backend fires by these rules, and
//! PostgreSQL stores the last firing per key so that replicas fire each one once.

use bridle_core::money::Usd;
use serde::{Deserialize, Serialize};

use crate::caps::{reached, usd, CapKind, CapRule, CapSet, Scope, Span};
use crate::records::TokenRecord;

/// A cap utilization crossing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub at_ms: u64,
    pub policy: String,
    /// The token, for token caps; absent for the policy aggregate.
    pub token_id: Option<String>,
    pub label: Option<String>,
    pub cap: CapKind,
    pub threshold: u8,
    pub spent: Usd,
    pub limit: Usd,
}

impl Alert {
    /// What an alert is about, whenever it fires: fired once per key per suppression span.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.policy,
            self.token_id.as_deref().unwrap_or("*"),
            self.cap.as_str(),
            self.threshold
        )
    }
}

/// An alert with how long it stays fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    pub alert: Alert,
    pub suppress_ms: u64,
}

impl Firing {
    /// Whether it fires, given when its key last fired.
    pub fn is_due(&self, last_fired_ms: Option<u64>) -> bool {
        last_fired_ms.is_none_or(|last| self.alert.at_ms.saturating_sub(last) >= self.suppress_ms)
    }
}

fn firing(
    now_ms: u64,
    policy: &str,
    token: &TokenRecord,
    rule: &CapRule,
    threshold: u8,
    spent: i64,
) -> Firing {
    let token = (rule.scope == Scope::Token).then_some(token);
    Firing {
        alert: Alert {
            id: format!(
                "{}-{now_ms}-{}-{}-{threshold}",
                token.map_or(policy, |t| t.id.as_str()),
                rule.kind.as_str(),
                policy
            ),
            at_ms: now_ms,
            policy: policy.to_string(),
            token_id: token.map(|t| t.id.clone()),
            label: token.map(|t| t.label.clone()),
            cap: rule.kind,
            threshold,
            spent: usd(spent),
            limit: rule.limit,
        },
        suppress_ms: rule.span.suppress_ms(),
    }
}

/// Every threshold current spend has reached, over every capped sum of the token's policy.
pub fn reached_by(
    now_ms: u64,
    token: &TokenRecord,
    caps: &CapSet,
    spent: impl Fn(Scope, Span) -> i64,
) -> Vec<Firing> {
    let mut out = Vec::new();
    for rule in &caps.rules {
        let s = spent(rule.scope, rule.span);
        for threshold in reached(s, rule.limit) {
            out.push(firing(now_ms, &token.policy, token, rule, threshold, s));
        }
    }
    out
}

/// A refusal by a cap means the cap is reached: its 100% alert.
pub fn on_refusal(now_ms: u64, token: &TokenRecord, rule: &CapRule, spent: i64) -> Firing {
    firing(now_ms, &token.policy, token, rule, 100, spent)
}
