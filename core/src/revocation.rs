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

/// The set the filter checks on every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationSet {
    seq: u64,
    tokens: HashMap<String, u64>,
    prefixes: Vec<(String, u64, u64)>,
    policies: HashMap<String, (u64, u64)>,
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
                    self.tokens.insert(e.value.clone(), e.until);
                }
                RevocationKind::LabelPrefix => {
                    self.prefixes.retain(|(p, _, _)| p != &e.value);
                    self.prefixes.push((e.value.clone(), e.at, e.until));
                }
                RevocationKind::Policy => {
                    let at = self
                        .policies
                        .get(&e.value)
                        .map_or(e.at, |(old, _)| e.at.max(*old));
                    self.policies.insert(e.value.clone(), (at, e.until));
                }
            }
        }
        self.seq = self.seq.max(feed.seq);
    }

    /// Drops entries that can no longer match a live token.
    pub fn prune(&mut self, now: u64) {
        self.tokens.retain(|_, until| *until >= now);
        self.prefixes.retain(|(_, _, until)| *until >= now);
        self.policies.retain(|_, (_, until)| *until >= now);
    }

    pub fn revokes(&self, claims: &Claims) -> bool {
        self.tokens.contains_key(&claims.id)
            || self
                .prefixes
                .iter()
                .any(|(p, at, _)| claims.iat <= *at && claims.label.starts_with(p.as_str()))
            || self
                .policies
                .get(&claims.policy)
                .is_some_and(|(at, _)| claims.iat <= *at)
    }

    /// The set as a feed, for sharing between Envoy workers.
    pub fn to_feed(&self) -> RevocationFeed {
        let mut entries = Vec::with_capacity(self.len());
        for (id, until) in &self.tokens {
            entries.push(RevocationEntry {
                seq: 0,
                kind: RevocationKind::Token,
                value: id.clone(),
                at: 0,
                until: *until,
            });
        }
        for (p, at, until) in &self.prefixes {
            entries.push(RevocationEntry {
                seq: 0,
                kind: RevocationKind::LabelPrefix,
                value: p.clone(),
                at: *at,
                until: *until,
            });
        }
        for (name, (at, until)) in &self.policies {
            entries.push(RevocationEntry {
                seq: 0,
                kind: RevocationKind::Policy,
                value: name.clone(),
                at: *at,
                until: *until,
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
        assert_eq!(copy, set);
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
