//! Settles and audit records leave the request path through a shared queue, and a root
//! context sends them to the ledger in batches on its tick: one callout for many requests,
//! and nothing tied to a stream that may already be gone.
//!
//! A batch that fails is put back, up to `MAX_ATTEMPTS` times (seconds of ledger outage,
//! enough to ride out a restart); the ledger stores each item once, so a batch that was
//! stored but not acknowledged is harmless to resend.

use bridle_core::ledger_api::{AuditRecord, Report, Settle};
use serde::{Deserialize, Serialize};

use crate::host::{Host, HostError};

pub const MAX_ATTEMPTS: u32 = 100;
/// Items per report callout.
pub const MAX_BATCH: usize = 2000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    Settle(Settle),
    Audit(Box<AuditRecord>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub attempts: u32,
    pub item: Item,
}

pub fn push<H: Host>(host: &H, queue: u32, item: Item) -> Result<(), HostError> {
    let bytes =
        serde_json::to_vec(&Queued { attempts: 0, item }).map_err(|_| HostError(u32::MAX))?;
    host.queue_push(queue, &bytes)
}

/// Takes up to `MAX_BATCH` items off the queue.
pub fn take<H: Host>(host: &H, queue: u32) -> Result<Vec<Queued>, HostError> {
    let mut out = Vec::new();
    while out.len() < MAX_BATCH {
        match host.queue_pop(queue)? {
            None => break,
            Some(bytes) => {
                if let Ok(q) = serde_json::from_slice::<Queued>(&bytes) {
                    out.push(q);
                }
            }
        }
    }
    Ok(out)
}

pub fn report(items: &[Queued]) -> Report {
    let mut r = Report::default();
    for q in items {
        match &q.item {
            Item::Settle(s) => r.settles.push(s.clone()),
            Item::Audit(a) => r.audit.push((**a).clone()),
        }
    }
    r
}

/// Puts a failed batch back; returns how many items were given up on.
pub fn put_back<H: Host>(host: &H, queue: u32, items: Vec<Queued>) -> usize {
    let mut dropped = 0;
    for mut q in items {
        q.attempts += 1;
        let kept = q.attempts < MAX_ATTEMPTS
            && serde_json::to_vec(&q)
                .ok()
                .is_some_and(|bytes| host.queue_push(queue, &bytes).is_ok());
        if !kept {
            dropped += 1;
        }
    }
    dropped
}
