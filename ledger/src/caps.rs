//! Cap arithmetic: which sums a token's spend is checked against, and the check itself. Every
//! backend (memory, SQLite, PostgreSQL) asks these functions, so a cap means the same thing
//! whichever store counts it.
//!
//! Caps are data: each capped sum is a [`CapRule`], a limit over a [`Scope`] (one token, or
//! every token of a policy) and a [`Span`] (a rolling window of some length, or ever). The
//! backends keep one running sum per scope and span they track ([`tracked_spans`]); a new
//! kind of cap over a new span (a per-minute circuit breaker, say) is one more rule and one
//! more tracked span, not a new code path.
//!
//! Money is integer micro-dollars and every sum is checked: a sum that would overflow is
//! refused, never wrapped.

use bridle_core::duration;
use bridle_core::money::Usd;
use bridle_core::policy::{effective_caps, Caps, CapsNarrowing};
use bridle_core::Reason;
use serde::{Deserialize, Serialize};

/// Alert thresholds, in percent of a cap.
pub const THRESHOLDS: [u8; 2] = [80, 100];

/// Which cap an alert or a denial is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapKind {
    PerWindow,
    Lifetime,
    PolicyPerWindow,
    /// The spend breaker: a token's spend over its policy's short window.
    PerShortWindow,
}

impl CapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CapKind::PerWindow => "per_window",
            CapKind::Lifetime => "lifetime",
            CapKind::PolicyPerWindow => "policy_per_window",
            CapKind::PerShortWindow => "per_short_window",
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            CapKind::PerWindow => Reason::CapWindow,
            CapKind::Lifetime => Reason::CapLifetime,
            CapKind::PolicyPerWindow => Reason::CapPolicy,
            CapKind::PerShortWindow => Reason::SpendRateLimited,
        }
    }
}

/// Whose spend a sum adds up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Token,
    Policy,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Token => "token",
            Scope::Policy => "policy",
        }
    }
}

/// How far back a sum looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Span {
    /// Reservations made after `now - ms`.
    Rolling { ms: u64 },
    /// Every reservation ever made.
    Ever,
}

impl Span {
    /// Reservations at or before this time have left the span.
    pub fn floor(self, now_ms: u64) -> u64 {
        match self {
            Span::Rolling { ms } => now_ms.saturating_sub(ms),
            Span::Ever => 0,
        }
    }

    /// How long an alert about this span stays fired: one window, or for good.
    pub fn suppress_ms(self) -> u64 {
        match self {
            Span::Rolling { ms } => ms,
            Span::Ever => u64::MAX,
        }
    }

    /// The span as a number for storage: its length in milliseconds, 0 for ever.
    pub fn key(self) -> i64 {
        match self {
            Span::Rolling { ms } => i64::try_from(ms).unwrap_or(i64::MAX).max(1),
            Span::Ever => 0,
        }
    }

    pub fn from_key(key: i64) -> Span {
        match u64::try_from(key) {
            Ok(ms) if ms > 0 => Span::Rolling { ms },
            _ => Span::Ever,
        }
    }
}

/// A policy's rolling window.
pub fn window_span(caps: &Caps) -> Span {
    Span::Rolling {
        ms: u64::try_from(caps.window().as_millis()).unwrap_or(u64::MAX),
    }
}

/// The spend breaker's short window, for a policy that has a breaker.
pub fn short_span(caps: &Caps) -> Option<Span> {
    caps.per_short_window?;
    Some(Span::Rolling {
        ms: u64::try_from(caps.short_window().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The sums every backend keeps for a policy's tokens and for the policy itself, capped or
/// not (views and alerts read them too).
pub fn tracked_spans(caps: &Caps) -> (Vec<Span>, Vec<Span>) {
    let mut token = vec![window_span(caps), Span::Ever];
    // A breaker as long as the window is the same sum, kept once.
    token.extend(short_span(caps).filter(|s| *s != window_span(caps)));
    (token, vec![window_span(caps)])
}

/// One capped sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapRule {
    pub kind: CapKind,
    pub scope: Scope,
    pub span: Span,
    pub limit: Usd,
}

/// The caps in force for one token: its policy's, lowered by the token's narrowing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapSet {
    pub per_transaction: Option<Usd>,
    /// Checked in this order; the first one broken is the reason given.
    pub rules: Vec<CapRule>,
}

pub fn cap_set(policy: &Caps, narrowing: &CapsNarrowing) -> CapSet {
    let caps = effective_caps(policy, narrowing);
    let window = window_span(policy);
    let rules = [
        (CapKind::PerWindow, Scope::Token, window, caps.per_window),
        (CapKind::Lifetime, Scope::Token, Span::Ever, caps.lifetime),
        (
            CapKind::PolicyPerWindow,
            Scope::Policy,
            window,
            caps.policy_per_window,
        ),
        // Last: a refusal that waiting cures (429 with Retry-After) only when no cap that
        // waiting does not cure is broken too.
        (
            CapKind::PerShortWindow,
            Scope::Token,
            short_span(policy).unwrap_or(window),
            caps.per_short_window,
        ),
    ]
    .into_iter()
    .filter_map(|(kind, scope, span, limit)| {
        limit.map(|limit| CapRule {
            kind,
            scope,
            span,
            limit,
        })
    })
    .collect();
    CapSet {
        per_transaction: caps.per_transaction,
        rules,
    }
}

/// Why a reservation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    PerTransaction {
        cap: Usd,
    },
    /// The rule's sum, `spent` before this call, has no room for it.
    Over {
        rule: CapRule,
        spent: i64,
    },
    /// A running sum would overflow: refused rather than wrapped.
    Overflow,
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::PerTransaction { .. } => Reason::CapPerTransaction,
            Refusal::Over { rule, .. } => rule.kind.reason(),
            Refusal::Overflow => Reason::Internal,
        }
    }

    /// What the agent is told, naming the cap, the amounts and the window.
    pub fn message(&self, amount: Usd, policy: &str, policy_caps: &Caps) -> String {
        match self {
            Refusal::PerTransaction { cap } => {
                format!("This ${amount} call is over the token's ${cap} per-transaction cap.")
            }
            Refusal::Over { rule, spent } => {
                let window_name = duration::format(policy_caps.window());
                let short_name = duration::format(policy_caps.short_window());
                let what = match rule.kind {
                    CapKind::PerWindow => format!("this token's spend in the last {window_name}"),
                    CapKind::Lifetime => "this token's lifetime spend".to_string(),
                    CapKind::PolicyPerWindow => {
                        format!("policy {policy:?}'s spend in the last {window_name}")
                    }
                    CapKind::PerShortWindow => {
                        format!("this token's spend in the last {short_name}")
                    }
                };
                let noun = if rule.kind == CapKind::PerShortWindow {
                    "spend breaker"
                } else {
                    "cap"
                };
                format!(
                    "A ${amount} call would bring {what} to ${}, over its ${} {noun} (${} already spent or reserved).",
                    usd(spent.saturating_add(amount.micros())),
                    rule.limit,
                    usd(*spent),
                )
            }
            Refusal::Overflow => "The ledger's running sums cannot hold this call.".to_string(),
        }
    }
}

/// Checks a reservation of `amount` against every cap: `spent(scope, span)` is what that sum
/// holds now (committed and reserved). `tracked` lists every sum the reservation will be
/// added to; each must stay representable.
pub fn check(
    amount: i64,
    caps: &CapSet,
    tracked: &[i64],
    spent: impl Fn(Scope, Span) -> i64,
) -> Result<(), Refusal> {
    if let Some(cap) = caps.per_transaction {
        if amount > cap.micros() {
            return Err(Refusal::PerTransaction { cap });
        }
    }
    for rule in &caps.rules {
        let before = spent(rule.scope, rule.span);
        match before.checked_add(amount) {
            Some(after) if after <= rule.limit.micros() => {}
            _ => {
                return Err(Refusal::Over {
                    rule: *rule,
                    spent: before,
                })
            }
        }
    }
    if tracked.iter().any(|s| s.checked_add(amount).is_none()) {
        return Err(Refusal::Overflow);
    }
    Ok(())
}

/// Checks a lease of up to `calls` calls of `amount` each (see `bridle_core::lease`): the
/// per-transaction cap holds each call, every other cap the whole lease. Grants the most calls
/// the caps leave room for; refuses, as [`check`] would the one call, when there is room for
/// none.
pub fn check_lease(
    amount: i64,
    calls: u32,
    caps: &CapSet,
    tracked: &[i64],
    spent: impl Fn(Scope, Span) -> i64,
) -> Result<u32, Refusal> {
    check(amount, caps, tracked, &spent)?;
    let sums = CapSet {
        per_transaction: None,
        rules: caps.rules.clone(),
    };
    for n in (2..=calls).rev() {
        let Some(total) = amount.checked_mul(i64::from(n)) else {
            continue;
        };
        if check(total, &sums, tracked, &spent).is_ok() {
            return Ok(n);
        }
    }
    Ok(1)
}

/// When a breaker's refusal lifts: the seconds until enough of the spend inside the rule's
/// window has left it for `amount` to fit under its limit. `inside` is what the window holds,
/// oldest first, as (made at, counted now). `None` when waiting cannot help: the call alone
/// is over the limit, or the span never moves.
pub fn retry_after_secs(
    rule: &CapRule,
    now_ms: u64,
    spent: i64,
    amount: i64,
    inside: impl IntoIterator<Item = (u64, i64)>,
) -> Option<u64> {
    let limit = rule.limit.micros();
    let Span::Rolling { ms } = rule.span else {
        return None;
    };
    if amount > limit {
        return None;
    }
    let secs = |ms: u64| ms.div_ceil(1000).max(1);
    let mut left = spent;
    for (at, counted) in inside {
        left = left.saturating_sub(counted);
        if left.checked_add(amount).is_some_and(|after| after <= limit) {
            // It leaves when the window's floor reaches it.
            return Some(secs(at.saturating_add(ms).saturating_sub(now_ms)));
        }
    }
    // Not everything inside was known: after a whole window, everything has left.
    Some(secs(ms))
}

/// The thresholds (percent of `limit`) that `spent` has reached.
pub fn reached(spent: i64, limit: Usd) -> impl Iterator<Item = u8> {
    THRESHOLDS.into_iter().filter(move |t| {
        // spent / limit >= t%, in integers wide enough for any two i64s.
        limit.micros() > 0 && i128::from(spent) * 100 >= i128::from(limit.micros()) * i128::from(*t)
    })
}

/// Spend over a limit as a fraction, for views (0.42 = 42%).
pub fn utilization(spent: i64, limit: Option<Usd>) -> Option<f64> {
    limit
        .filter(|c| c.micros() > 0)
        .map(|c| spent as f64 / c.micros() as f64)
}

/// Micro-dollars as `Usd`, negative as zero (a sum is never negative; a view never panics).
pub fn usd(micros: i64) -> Usd {
    Usd::from_micros(micros.max(0)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn caps() -> Caps {
        Caps {
            per_transaction: Some(Usd::from_micros(50).unwrap()),
            per_window: Some(Usd::from_micros(100).unwrap()),
            lifetime: None,
            policy_per_window: Some(Usd::from_micros(250).unwrap()),
            window: Some(Duration::from_secs(3600)),
            ..Caps::default()
        }
    }

    #[test]
    fn rules_are_the_capped_sums_in_order() {
        let narrowing = CapsNarrowing {
            lifetime: Some(Usd::from_micros(70).unwrap()),
            ..Default::default()
        };
        let set = cap_set(&caps(), &narrowing);
        let kinds: Vec<_> = set.rules.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                CapKind::PerWindow,
                CapKind::Lifetime,
                CapKind::PolicyPerWindow
            ]
        );
        assert_eq!(set.rules[1].span, Span::Ever);
        assert_eq!(set.rules[2].scope, Scope::Policy);
        let hour = Span::Rolling { ms: 3_600_000 };
        assert_eq!(tracked_spans(&caps()), (vec![hour, Span::Ever], vec![hour]));
    }

    #[test]
    fn the_check_refuses_the_first_cap_broken_and_never_overflows() {
        let set = cap_set(&caps(), &CapsNarrowing::default());
        assert_eq!(check(50, &set, &[0], |_, _| 0), Ok(()));
        assert_eq!(
            check(51, &set, &[0], |_, _| 0).unwrap_err().reason(),
            Reason::CapPerTransaction
        );
        let over = check(
            10,
            &set,
            &[0],
            |s, _| if s == Scope::Token { 95 } else { 0 },
        );
        assert_eq!(over.unwrap_err().reason(), Reason::CapWindow);
        assert_eq!(
            check(10, &set, &[0], |_, _| i64::MAX).unwrap_err().reason(),
            Reason::CapWindow,
            "a sum that would overflow is over its cap"
        );
        let uncapped = cap_set(&Caps::default(), &CapsNarrowing::default());
        assert_eq!(
            check(10, &uncapped, &[i64::MAX - 5], |_, _| 0),
            Err(Refusal::Overflow)
        );
    }

    #[test]
    fn the_breaker_is_a_token_rule_over_its_short_span_checked_last() {
        let breaker = Caps {
            per_short_window: Some(Usd::from_micros(10).unwrap()),
            short_window: Some(Duration::from_secs(60)),
            ..caps()
        };
        let minute = Span::Rolling { ms: 60_000 };
        let set = cap_set(&breaker, &CapsNarrowing::default());
        let last = set.rules.last().unwrap();
        assert_eq!(
            (last.kind, last.scope, last.span),
            (CapKind::PerShortWindow, Scope::Token, minute)
        );
        assert_eq!(last.kind.reason(), Reason::SpendRateLimited);
        let hour = Span::Rolling { ms: 3_600_000 };
        assert_eq!(
            tracked_spans(&breaker),
            (vec![hour, Span::Ever, minute], vec![hour])
        );
        // A daily cap broken too is the reason given: waiting for the breaker would not help.
        let both = check(5, &set, &[0], |_, span| if span == minute { 8 } else { 98 });
        assert_eq!(both.unwrap_err().reason(), Reason::CapWindow);
        let Err(Refusal::Over { rule, spent }) =
            check(5, &set, &[0], |_, span| if span == minute { 8 } else { 0 })
        else {
            panic!("the breaker refuses")
        };
        assert_eq!((rule.kind, spent), (CapKind::PerShortWindow, 8));
        // 8 inside: 3 made at 1 s, 5 at 30 s. Room for 5 once the 3 has left, at 61 s; for 9
        // once both have, at 90 s; for 11 never.
        let inside = [(1_000, 3), (30_000, 5)];
        assert_eq!(retry_after_secs(&rule, 40_000, 8, 5, inside), Some(21));
        assert_eq!(retry_after_secs(&rule, 40_000, 8, 9, inside), Some(50));
        assert_eq!(retry_after_secs(&rule, 40_000, 8, 11, inside), None);
        // What is inside unknown: a whole window.
        assert_eq!(retry_after_secs(&rule, 40_000, 8, 5, []), Some(60));
    }

    #[test]
    fn a_lease_gets_the_most_calls_the_caps_leave_room_for() {
        let set = cap_set(&caps(), &CapsNarrowing::default());
        let none = |_: Scope, _: Span| 0i64;
        let per_tx = set.per_transaction.unwrap().micros();
        // The per-transaction cap holds each call, not the lease.
        assert_eq!(check_lease(per_tx, 2, &set, &[0], none), Ok(2));
        assert!(matches!(
            check_lease(per_tx + 1, 2, &set, &[0], none),
            Err(Refusal::PerTransaction { .. })
        ));
        let window = set.rules[0].limit.micros();
        // Room for three calls of a tenth of the window: three, whatever was asked.
        let spent = |_: Scope, _: Span| window - 3 * (window / 10);
        assert_eq!(check_lease(window / 10, 8, &set, &[0], spent), Ok(3));
        assert_eq!(check_lease(window / 10, 2, &set, &[0], spent), Ok(2));
        // Room for none: the one call's refusal.
        let full = |_: Scope, _: Span| window;
        assert!(matches!(
            check_lease(1, 8, &set, &[0], full),
            Err(Refusal::Over { .. })
        ));
        // A lease whose total would overflow a tracked sum gets fewer calls, never a wrap.
        assert_eq!(check_lease(1, 8, &set, &[i64::MAX - 2], none), Ok(2));
    }

    #[test]
    fn spans_round_trip_their_keys() {
        for s in [
            Span::Ever,
            Span::Rolling { ms: 1 },
            Span::Rolling { ms: 86_400_000 },
        ] {
            assert_eq!(Span::from_key(s.key()), s);
        }
        assert_eq!(Span::Rolling { ms: 10 }.floor(5), 0);
        assert_eq!(
            reached(80, Usd::from_micros(100).unwrap()).collect::<Vec<_>>(),
            [80]
        );
        assert_eq!(reached(i64::MAX, Usd::from_micros(1).unwrap()).count(), 2);
    }
}
