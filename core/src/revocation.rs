//! Revocations, as the ledger publishes them and the filter checks them.
//!
//! A revocation names one token, a label prefix (one tenant, one agent, one run) or a whole
//! policy. Prefix and policy revocations cover every token issued at or before the moment
//! of revocation; tokens issued afterwards are new grants and are not covered.
//!
//! Entries carry `until`: the time after which no token they cover can still be alive, so the
//! set stays as small as the live tokens it has to block.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::token::Claims;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    Token,
    LabelPrefix,
    Policy,
}

/// One entry of the ledger's revocation feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationEntry {
    pub seq: u64,
    pub kind: RevocationKind,
    pub value: String,
    /// When it was revoked, unix seconds.
    pub at: u64,
    /// After this, nothing it covers is alive; the entry can be dropped.
    pub until: u64,
    /// When the ledger committed it, unix milliseconds: what proxies measure revocation
    /// propagation from. 0 when unknown (written by an older ledger).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub at_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A page of the feed: entries after the caller's `since`, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationFeed {
    /// The newest sequence number the ledger has issued; ask again with `since=seq`.
    pub seq: u64,
    pub entries: Vec<RevocationEntry>,
    /// True when `since` was older than the ledger keeps: drop what you have and use this.
    #[serde(default)]
    pub reset: bool,
}

/// The set the filter checks on every request. Each entry keeps its commit time (`at_ms`)
/// so that the set, shared between Envoy workers as a feed, still says when each entry was
/// committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationSet {
    seq: u64,
    /// id -> (until, at_ms)
    tokens: HashMap<String, (u64, u64)>,
    /// (prefix, at, until, at_ms)
    prefixes: Vec<(String, u64, u64, u64)>,
    /// policy -> (at, until, at_ms)
    policies: HashMap<String, (u64, u64, u64)>,
}

impl RevocationSet {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.prefixes.len() + self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn apply(&mut self, feed: &RevocationFeed) {
        if feed.reset {
            *self = RevocationSet::default();
        }
        for e in &feed.entries {
            match e.kind {
                RevocationKind::Token => {
                    self.tokens.insert(e.value.clone(), (e.until, e.at_ms));
                }
                RevocationKind::LabelPrefix => {
                    self.prefixes.retain(|(p, _, _, _)| p != &e.value);
                    self.prefixes
                        .push((e.value.clone(), e.at, e.until, e.at_ms));
                }
                RevocationKind::Policy => {
                    let (at, at_ms) = self
                        .policies
                        .get(&e.value)
                        .filter(|(old, _, _)| *old > e.at)
                        .map_or((e.at, e.at_ms), |(old, _, old_ms)| (*old, *old_ms));
                    self.policies.insert(e.value.clone(), (at, e.until, at_ms));
                }
            }
        }
        self.seq = self.seq.max(feed.seq);
    }

    /// Drops entries that can no longer match a live token.
    pub fn prune(&mut self, now: u64) {
        self.tokens.retain(|_, (until, _)| *until >= now);
        self.prefixes.retain(|(_, _, until, _)| *until >= now);
        self.policies.retain(|_, (_, until, _)| *until >= now);
    }

    pub fn revokes(&self, claims: &Claims) -> bool {
        self.tokens.contains_key(&claims.id)
            || self
                .prefixes
                .iter()
                .any(|(p, at, _, _)| claims.iat <= *at && claims.label.starts_with(p.as_str()))
            || self
                .policies
                .get(&claims.policy)
                .is_some_and(|(at, _, _)| claims.iat <= *at)
    }

    /// The set as a feed, for sharing between Envoy workers.
    pub fn to_feed(&self) -> RevocationFeed {
        let mut entries = Vec::with_capacity(self.len());
        for (id, (until, at_ms)) in &self.tokens {
            entries.push(RevocationEntry {
                seq: 0,
                kind: RevocationKind::Token,
                value: id.clone(),
                at: 0,
                until: *until,
                at_ms: *at_ms,
            });
        }
        for (p, at, until, at_ms) in &self.prefixes {
            entries.push(RevocationEntry {
                seq: 0,
                kind: RevocationKind::LabelPrefix,
                value: p.clone(),
                at: *at,
                until: *until,
                at_ms: *at_ms,
            });
        }
        for (name, (at, until, at_ms)) in &self.policies {
            entries.push(RevocationEntry {
                seq: 0,
                kind: RevocationKind::Policy,
                value: name.clone(),
                at: *at,
                until: *until,
                at_ms: *at_ms,
            });
        }
        RevocationFeed {
            seq: self.seq,
            entries,
            reset: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::claims;

    fn entry(seq: u64, kind: RevocationKind, value: &str, at: u64) -> RevocationEntry {
        RevocationEntry {
            seq,
            kind,
            value: value.into(),
            at,
            until: at + 3600,
            at_ms: at * 1000 + 250,
        }
    }

    #[test]
    fn revokes_by_id_prefix_and_policy() {
        let c = claims(); // id tok_123, label acme/agent-7/run-42, iat 1_700_000_000
        let mut set = RevocationSet::default();
        assert!(!set.revokes(&c));
        set.apply(&RevocationFeed {
            seq: 1,
            entries: vec![entry(1, RevocationKind::Token, "tok_999", 1_700_000_100)],
            reset: false,
        });
        assert!(!set.revokes(&c));
        set.apply(&RevocationFeed {
            seq: 2,
            entries: vec![entry(2, RevocationKind::Token, "tok_123", 1_700_000_100)],
            reset: false,
        });
        assert!(set.revokes(&c));

        let mut set = RevocationSet::default();
        set.apply(&RevocationFeed {
            seq: 1,
            entries: vec![entry(
                1,
                RevocationKind::LabelPrefix,
                "acme/agent-7/",
                1_700_000_100,
            )],
            reset: false,
        });
        assert!(set.revokes(&c));
        let mut later = c.clone();
        later.iat = 1_700_000_101;
        assert!(
            !set.revokes(&later),
            "a token issued after the revocation is a new grant"
        );
        let mut other = c.clone();
        other.label = "acme/agent-8/run-1".into();
        assert!(!set.revokes(&other));

        let mut set = RevocationSet::default();
        set.apply(&RevocationFeed {
            seq: 1,
            entries: vec![entry(
                1,
                RevocationKind::Policy,
                "stripe-payments",
                1_700_000_000,
            )],
            reset: false,
        });
        assert!(
            set.revokes(&c),
            "issued in the same second counts as before"
        );
        assert_eq!(set.seq(), 1);
    }

    #[test]
    fn prunes_and_round_trips() {
        let mut set = RevocationSet::default();
        set.apply(&RevocationFeed {
            seq: 7,
            entries: vec![
                entry(5, RevocationKind::Token, "tok_1", 100),
                entry(6, RevocationKind::LabelPrefix, "acme/", 5000),
                entry(7, RevocationKind::Policy, "p", 5000),
            ],
            reset: false,
        });
        let mut copy = RevocationSet::default();
        copy.apply(&set.to_feed());
        assert_eq!(copy, set, "commit times survive the round trip too");
        let mut times: Vec<u64> = set.to_feed().entries.iter().map(|e| e.at_ms).collect();
        times.sort();
        assert_eq!(times, [100_250, 5_000_250, 5_000_250]);
        set.prune(4000);
        assert_eq!(set.len(), 2);
        let mut reset = set.clone();
        reset.apply(&RevocationFeed {
            seq: 9,
            entries: vec![],
            reset: true,
        });
        assert!(reset.is_empty());
        assert_eq!(reset.seq(), 9);
    }
}
