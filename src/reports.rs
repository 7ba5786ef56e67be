//! Settles and audit records wait in the plugin's own buffer (memory the worker's streams and
//! root context share) and the root context sends them to the ledger in batches on its tick:
//! one callout for many requests, nothing tied to a stream that may already be gone, and no
//! hostcall or encoding on the request path.
//!
//! A batch that fails goes back to the front of the buffer and is sent again (the ledger
//! stores each item once, so a batch that was stored but not acknowledged is harmless to
//! resend). Memory is bounded: a full buffer forgets its oldest items and counts them.

use std::collections::VecDeque;

use bridle_core::ledger_api::{AuditRecord, Report, Settle};

/// Items one plugin holds at most: minutes of traffic while the ledger is away.
pub const MAX_BUFFERED: usize = 100_000;
/// Items per report callout.
pub const MAX_BATCH: usize = 2000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Settle(Settle),
    Audit(Box<AuditRecord>),
}

#[derive(Debug, Default)]
pub struct Buffer {
    items: VecDeque<Item>,
}

impl Buffer {
    /// Adds an item; returns how many old ones a full buffer forgot to make room.
    pub fn push(&mut self, item: Item) -> usize {
        let mut dropped = 0;
        while self.items.len() >= MAX_BUFFERED {
            self.items.pop_front();
            dropped += 1;
        }
        self.items.push_back(item);
        dropped
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the next batch.
    pub fn take(&mut self) -> Vec<Item> {
        let n = self.items.len().min(MAX_BATCH);
        self.items.drain(..n).collect()
    }

    /// Puts a failed batch back in front, in order; returns how many a full buffer forgot.
    pub fn put_back(&mut self, batch: Vec<Item>) -> usize {
        for item in batch.into_iter().rev() {
            self.items.push_front(item);
        }
        let mut dropped = 0;
        while self.items.len() > MAX_BUFFERED {
            self.items.pop_back();
            dropped += 1;
        }
        dropped
    }
}

pub fn report(items: &[Item]) -> Report {
    let mut r = Report::default();
    for item in items {
        match item {
            Item::Settle(s) => r.settles.push(s.clone()),
            Item::Audit(a) => r.audit.push((**a).clone()),
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_core::ledger_api::SettleOutcome;

    fn settle(n: usize) -> Item {
        Item::Settle(Settle {
            reservation: format!("{n:032x}"),
            outcome: SettleOutcome::Commit,
            amount: None,
            replay: false,
        })
    }

    #[test]
    fn batches_keep_order_and_failed_ones_go_back_in_front() {
        let mut b = Buffer::default();
        for n in 0..MAX_BATCH + 5 {
            b.push(settle(n));
        }
        let first = b.take();
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0], settle(0));
        assert_eq!(b.put_back(first), 0);
        assert_eq!(b.take()[0], settle(0));
        assert_eq!(
            b.take(),
            (MAX_BATCH..MAX_BATCH + 5).map(settle).collect::<Vec<_>>()
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_full_buffer_forgets_the_oldest() {
        let mut b = Buffer::default();
        for n in 0..MAX_BUFFERED {
            assert_eq!(b.push(settle(n)), 0);
        }
        assert_eq!(b.push(settle(MAX_BUFFERED)), 1);
        assert_eq!(b.len(), MAX_BUFFERED);
        assert_eq!(b.take()[0], settle(1));
    }
}
