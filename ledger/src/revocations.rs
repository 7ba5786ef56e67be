//! Revocation requests: what an admin's request becomes (an entry of the feed), and the
//! in-memory log the embedded backends serve the feed from. PostgreSQL numbers and stores
//! the same entries in the database.

use bridle_core::revocation::{RevocationEntry, RevocationFeed, RevocationKind, RevocationSet};
use bridle_core::token::Claims;

use crate::policies::Policies;
use crate::records::RevokeRequest;

/// What a revocation names and until when it must be kept, before it is numbered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub kind: RevocationKind,
    pub value: String,
    /// Unix seconds.
    pub at: u64,
    pub until: u64,
    /// When the revoke was committed, in milliseconds: proxies measure propagation from it.
    pub at_ms: u64,
}

impl Planned {
    pub fn entry(&self, seq: u64) -> RevocationEntry {
        RevocationEntry {
            seq,
            kind: self.kind,
            value: self.value.clone(),
            at: self.at,
            until: self.until,
            at_ms: self.at_ms,
        }
    }
}

/// Checks a request and works out its entry. One token, a label prefix or a policy; tokens
/// issued after this moment are new grants and are not covered. `token_exp` is the expiry
/// of the named token when the ledger knows it (the entry is needed until then).
pub fn plan(
    req: &RevokeRequest,
    now_ms: u64,
    policies: &Policies,
    token_exp: impl FnOnce(&str) -> Option<u64>,
) -> Result<Planned, String> {
    let at = now_ms / 1000;
    let longest = at.saturating_add(policies.longest_ttl_s());
    let (kind, value, until) = match (&req.token_id, &req.label_prefix, &req.policy) {
        (Some(id), None, None) => {
            bridle_core::token::check_id(id)?;
            let until = token_exp(id).unwrap_or(longest);
            (RevocationKind::Token, id.clone(), until)
        }
        (None, Some(prefix), None) => {
            if prefix.is_empty() {
                return Err(
                    "label_prefix must not be empty; revoke policies one by one to stop everything"
                        .into(),
                );
            }
            (RevocationKind::LabelPrefix, prefix.clone(), longest)
        }
        (None, None, Some(name)) => {
            let Some(p) = policies.get(name) else {
                return Err(format!("no policy named {name:?}"));
            };
            let until = at.saturating_add(p.policy.policy.max_ttl.as_secs());
            (RevocationKind::Policy, name.clone(), until)
        }
        _ => return Err("give exactly one of token_id, label_prefix and policy".into()),
    };
    Ok(Planned {
        kind,
        value,
        at,
        until,
        at_ms: now_ms,
    })
}

/// The kind as stored.
pub fn kind_str(k: RevocationKind) -> &'static str {
    match k {
        RevocationKind::Token => "token",
        RevocationKind::LabelPrefix => "label_prefix",
        RevocationKind::Policy => "policy",
    }
}

pub fn parse_kind(s: &str) -> Option<RevocationKind> {
    [
        RevocationKind::Token,
        RevocationKind::LabelPrefix,
        RevocationKind::Policy,
    ]
    .into_iter()
    .find(|k| kind_str(*k) == s)
}

/// The revocations one process knows, numbered by it: the embedded backends' feed.
#[derive(Debug)]
pub struct RevocationLog {
    set: RevocationSet,
    log: Vec<RevocationEntry>,
    next_seq: u64,
}

impl Default for RevocationLog {
    fn default() -> RevocationLog {
        RevocationLog {
            set: RevocationSet::default(),
            log: Vec::new(),
            next_seq: 1,
        }
    }
}

impl RevocationLog {
    pub fn revokes(&self, claims: &Claims) -> bool {
        self.set.revokes(claims)
    }

    /// Sequence numbers never repeat, even after old entries are forgotten.
    pub fn set_next_seq(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next);
    }

    /// Adds an entry numbered elsewhere (loaded from storage).
    pub fn load(&mut self, e: RevocationEntry) {
        self.set_next_seq(e.seq.saturating_add(1));
        self.set.apply(&RevocationFeed {
            seq: e.seq,
            entries: vec![e.clone()],
            reset: false,
        });
        self.log.push(e);
    }

    /// Numbers a planned revocation and applies it.
    pub fn add(&mut self, planned: &Planned) -> RevocationEntry {
        let entry = planned.entry(self.next_seq);
        self.load(entry.clone());
        entry
    }

    pub fn since(&self, since: u64) -> RevocationFeed {
        RevocationFeed {
            seq: self.next_seq.saturating_sub(1),
            entries: self.log.iter().filter(|e| e.seq > since).cloned().collect(),
            reset: false,
        }
    }

    /// Forgets entries that can no longer match a live token.
    pub fn prune(&mut self, now_s: u64) {
        self.set.prune(now_s);
        self.log.retain(|e| e.until >= now_s);
    }
}
