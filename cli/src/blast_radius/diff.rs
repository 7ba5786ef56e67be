//! What a policy change widens: new endpoints or merchants, higher or removed caps, a longer
//! TTL, a looser loop breaker, less counted per call, a higher worst-case spend. A GitOps
//! pipeline posts the list on the pull request and asks for a security approval when it is
//! not empty. Narrowings are listed too, so a reviewer sees the whole change.
//!
//! Endpoints compare by the core's own containment ([`EndpointPattern::is_within`]): a new
//! endpoint within an old one widens nothing.

use std::collections::BTreeSet;

use bridle_core::cost::CostRule;
use bridle_core::money::{FxTable, Usd};
use bridle_core::policy::{CompiledPolicy, FailureMode};
use serde::Serialize;

use super::{describe_cost, for_policy, Assumptions, Radius};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub policy: String,
    /// endpoint, merchant, cap, ttl, loop_breaker, cost, fx, ledger_unavailable, spend,
    /// policy.
    pub what: &'static str,
    pub detail: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub widens: Vec<Change>,
    pub narrows: Vec<Change>,
}

struct Collect<'a> {
    policy: &'a str,
    diff: &'a mut Diff,
}

impl Collect<'_> {
    fn widen(&mut self, what: &'static str, detail: String) {
        self.diff.widens.push(Change {
            policy: self.policy.to_string(),
            what,
            detail,
        });
    }

    fn narrow(&mut self, what: &'static str, detail: String) {
        self.diff.narrows.push(Change {
            policy: self.policy.to_string(),
            what,
            detail,
        });
    }

    /// A cap: `None` means no cap, the widest of all.
    fn cap(&mut self, name: &str, before: Option<Usd>, after: Option<Usd>) {
        match (before, after) {
            (Some(b), None) => self.widen("cap", format!("{name} removed (was ${b}): uncapped")),
            (None, Some(a)) => self.narrow("cap", format!("{name} added: ${a}")),
            (Some(b), Some(a)) if a > b => {
                self.widen("cap", format!("{name} raised from ${b} to ${a}"))
            }
            (Some(b), Some(a)) if a < b => {
                self.narrow("cap", format!("{name} lowered from ${b} to ${a}"))
            }
            _ => {}
        }
    }

    /// A limit where higher is wider; `None` means no limit.
    fn limit(&mut self, what: &'static str, name: &str, before: Option<u64>, after: Option<u64>) {
        match (before, after) {
            (Some(b), None) => self.widen(what, format!("{name} removed (was {b}): no limit")),
            (None, Some(a)) => self.narrow(what, format!("{name} added: {a}")),
            (Some(b), Some(a)) if a > b => {
                self.widen(what, format!("{name} raised from {b} to {a}"))
            }
            (Some(b), Some(a)) if a < b => {
                self.narrow(what, format!("{name} lowered from {b} to {a}"))
            }
            _ => {}
        }
    }
}

/// What changes from `base` to `head`, policy by policy (matched by name).
pub fn diff(base: &[CompiledPolicy], head: &[CompiledPolicy], a: &Assumptions) -> Diff {
    let mut out = Diff::default();
    for new in head {
        let name = &new.policy.name;
        let mut c = Collect {
            policy: name,
            diff: &mut out,
        };
        match base.iter().find(|old| &old.policy.name == name) {
            None => {
                let r = for_policy(new, a);
                c.widen("policy", format!("new policy: {}", summary(&r)));
            }
            Some(old) => compare(old, new, a, &mut c),
        }
    }
    for old in base {
        if !head.iter().any(|n| n.policy.name == old.policy.name) {
            out.narrows.push(Change {
                policy: old.policy.name.clone(),
                what: "policy",
                detail: "policy removed: its tokens are refused".into(),
            });
        }
    }
    out
}

fn summary(r: &Radius) -> String {
    let spend = match r.spend.max_usd {
        Some(u) => format!("up to ${u}"),
        None => "no spend limit".into(),
    };
    format!(
        "{} endpoint(s), {} merchant(s){}, {} before a token expires",
        r.endpoints.len(),
        r.merchants.allow.len(),
        if r.merchants.unscoped {
            " and unscoped calls"
        } else {
            ""
        },
        spend
    )
}

fn compare(old: &CompiledPolicy, new: &CompiledPolicy, a: &Assumptions, c: &mut Collect<'_>) {
    let (o, n) = (&old.policy, &new.policy);

    // Endpoints, by containment; the cost of an endpoint that stays.
    for (i, e) in new.endpoints.iter().enumerate() {
        let new_cost = n.endpoints.get(i).and_then(|x| x.cost.as_ref());
        match old
            .endpoints
            .iter()
            .position(|oe| e.pattern.is_within(&oe.pattern))
        {
            None => c.widen(
                "endpoint",
                format!(
                    "new endpoint {}{}",
                    e.pattern,
                    match new_cost {
                        Some(cost) => format!(" (costed: {})", describe_cost(cost)),
                        None => " (uncosted: no cap limits it)".into(),
                    }
                ),
            ),
            Some(j) => {
                let old_cost = o.endpoints.get(j).and_then(|x| x.cost.as_ref());
                cost_change(&e.pattern.to_string(), old_cost, new_cost, c);
            }
        }
    }
    for e in &old.endpoints {
        if !new
            .endpoints
            .iter()
            .any(|ne| e.pattern.is_within(&ne.pattern))
        {
            c.narrow("endpoint", format!("endpoint {} removed", e.pattern));
        }
    }

    // Merchants.
    let before: BTreeSet<&String> = o.merchants.allow.iter().collect();
    let after: BTreeSet<&String> = n.merchants.allow.iter().collect();
    for m in after.difference(&before) {
        c.widen("merchant", format!("new merchant {m}"));
    }
    for m in before.difference(&after) {
        c.narrow("merchant", format!("merchant {m} removed"));
    }
    for (name, was, now) in [
        (
            "calls naming no merchant (allow_unscoped)",
            o.merchants.allow_unscoped,
            n.merchants.allow_unscoped,
        ),
        (
            "Stripe-Context (allow_stripe_context)",
            o.merchants.allow_stripe_context,
            n.merchants.allow_stripe_context,
        ),
    ] {
        if now && !was {
            c.widen("merchant", format!("{name} now allowed"));
        } else if was && !now {
            c.narrow("merchant", format!("{name} no longer allowed"));
        }
    }

    // Caps, and the window they reset over.
    c.cap(
        "per-transaction cap",
        o.caps.per_transaction,
        n.caps.per_transaction,
    );
    c.cap("per-window cap", o.caps.per_window, n.caps.per_window);
    c.cap("lifetime cap", o.caps.lifetime, n.caps.lifetime);
    c.cap(
        "policy aggregate cap",
        o.caps.policy_per_window,
        n.caps.policy_per_window,
    );
    let (ow, nw) = (o.caps.window(), n.caps.window());
    let windowed = n.caps.per_window.is_some() || n.caps.policy_per_window.is_some();
    let window = |d| bridle_core::duration::format(d);
    if nw < ow && windowed {
        c.widen(
            "cap",
            format!(
                "window shortened from {} to {}: the window caps reset more often",
                window(ow),
                window(nw)
            ),
        );
    } else if nw > ow && windowed {
        c.narrow(
            "cap",
            format!("window lengthened from {} to {}", window(ow), window(nw)),
        );
    }

    // Time to live.
    if n.max_ttl > o.max_ttl {
        c.widen(
            "ttl",
            format!(
                "max TTL lengthened from {} to {}",
                window(o.max_ttl),
                window(n.max_ttl)
            ),
        );
    } else if n.max_ttl < o.max_ttl {
        c.narrow(
            "ttl",
            format!(
                "max TTL shortened from {} to {}",
                window(o.max_ttl),
                window(n.max_ttl)
            ),
        );
    }

    // The loop breaker.
    let rate = |p: &bridle_core::policy::Policy| {
        p.loop_breaker
            .as_ref()
            .map(|l| u64::from(l.max_requests_per_minute))
    };
    let same = |p: &bridle_core::policy::Policy| {
        p.loop_breaker
            .as_ref()
            .map(|l| u64::from(l.max_identical_per_minute))
    };
    c.limit("loop_breaker", "requests per minute", rate(o), rate(n));
    c.limit(
        "loop_breaker",
        "identical requests per minute",
        same(o),
        same(n),
    );

    // When the ledger is out of reach.
    match (o.on_ledger_unavailable, n.on_ledger_unavailable) {
        (FailureMode::Deny, FailureMode::Allow) => c.widen(
            "ledger_unavailable",
            "on_ledger_unavailable: allow: revoked tokens keep making uncosted calls while the ledger is out of reach".into(),
        ),
        (FailureMode::Allow, FailureMode::Deny) => c.narrow(
            "ledger_unavailable",
            "on_ledger_unavailable: deny".into(),
        ),
        _ => {}
    }

    // Spend leases: costed calls that leave the ledger's own check for the proxy's.
    let lease = |p: &bridle_core::policy::Policy| p.lease.map(|l| (l.calls, l.max_age_ms));
    match (lease(o), lease(n)) {
        (None, Some((calls, age))) => c.widen(
            "lease",
            format!("lease: up to {calls} costed calls per worker spent for {age} ms without the ledger: a revoked token's leased calls are refused by the proxy's revocation set, not at reserve"),
        ),
        (Some(_), None) => c.narrow("lease", "no lease: every costed call reserved with the ledger".into()),
        (Some((oc, oa)), Some((nc, na))) if nc > oc || na > oa => c.widen(
            "lease",
            format!("lease: {oc} calls for {oa} ms -> {nc} calls for {na} ms"),
        ),
        (Some((oc, oa)), Some((nc, na))) if nc < oc || na < oa => c.narrow(
            "lease",
            format!("lease: {oc} calls for {oa} ms -> {nc} calls for {na} ms"),
        ),
        _ => {}
    }

    fx_change(&o.fx, &n.fx, c);

    // The sum of it all: the worst a token can spend before it expires.
    let (ro, rn) = (for_policy(old, a), for_policy(new, a));
    match (ro.spend.max_usd, rn.spend.max_usd) {
        (Some(b), None) => c.widen(
            "spend",
            format!("most a token can spend before it expires: was ${b}, now unbounded"),
        ),
        (Some(b), Some(x)) if x > b => c.widen(
            "spend",
            format!("most a token can spend before it expires: ${b} -> ${x}"),
        ),
        (None, Some(x)) => c.narrow(
            "spend",
            format!("most a token can spend before it expires: was unbounded, now ${x}"),
        ),
        (Some(b), Some(x)) if x < b => c.narrow(
            "spend",
            format!("most a token can spend before it expires: ${b} -> ${x}"),
        ),
        _ => {}
    }
}

/// A cost rule that counts less for the same call widens: more calls fit under every cap.
fn cost_change(
    endpoint: &str,
    before: Option<&CostRule>,
    after: Option<&CostRule>,
    c: &mut Collect<'_>,
) {
    match (before, after) {
        (Some(b), None) => c.widen(
            "cost",
            format!(
                "{endpoint} is no longer costed (was {}): no cap limits it",
                describe_cost(b)
            ),
        ),
        (None, Some(a)) => c.narrow(
            "cost",
            format!("{endpoint} is now costed: {}", describe_cost(a)),
        ),
        (Some(b), Some(a)) if b != a => {
            let detail = format!(
                "{endpoint} cost changed from {} to {}",
                describe_cost(b),
                describe_cost(a)
            );
            // Only a higher price or estimate is clearly narrower; any other change to how a
            // call is counted needs a reviewer's eyes, so it is listed as widening.
            let same_shape = CostRule {
                fixed: a.fixed,
                max: a.max,
                ..b.clone()
            } == *a;
            let not_lower = |x: Option<Usd>, y: Option<Usd>| match (x, y) {
                (Some(x), Some(y)) => y >= x,
                (x, y) => x == y,
            };
            if same_shape && not_lower(b.fixed, a.fixed) && not_lower(b.max, a.max) {
                c.narrow("cost", detail);
            } else {
                c.widen(
                    "cost",
                    format!("{detail}: counts less, or differently, per call"),
                );
            }
        }
        _ => {}
    }
}

/// A currency newly accepted, or one whose rate fell (a payment counts as fewer dollars),
/// widens.
fn fx_change(before: &FxTable, after: &FxTable, c: &mut Collect<'_>) {
    // A million whole units compares rates exactly through the core's own conversion.
    let value = |t: &FxTable, cur: &str| t.to_usd(1_000_000, cur, 0).ok();
    for cur in after.0.keys() {
        match (value(before, cur), value(after, cur)) {
            (None, _) => c.widen(
                "fx",
                format!("currency {cur} now accepted at {}", rate_text(after, cur)),
            ),
            (Some(b), Some(a)) if a < b => c.widen(
                "fx",
                format!(
                    "{cur} rate lowered from {} to {}: payments in it count as fewer dollars",
                    rate_text(before, cur),
                    rate_text(after, cur)
                ),
            ),
            (Some(b), Some(a)) if a > b => c.narrow(
                "fx",
                format!(
                    "{cur} rate raised from {} to {}",
                    rate_text(before, cur),
                    rate_text(after, cur)
                ),
            ),
            _ => {}
        }
    }
    for cur in before.0.keys() {
        if !after.0.contains_key(cur) {
            c.narrow("fx", format!("currency {cur} no longer accepted"));
        }
    }
}

fn rate_text(t: &FxTable, cur: &str) -> String {
    t.rate(cur).map_or("?".into(), |r| format!("${r}"))
}
