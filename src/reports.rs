//! Settles and audit records wait in the plugin's own buffer (memory the worker's streams and
//! root context share) and the root context sends them to the ledger in batches on its tick:
//! one callout for many requests, nothing tied to a stream that may already be gone, and no
//! hostcall on the request path.
//!
//! Each item is encoded to JSON once, when its request ends, so that a flush only joins
//! bytes: encoding a whole batch on the tick stalled every request behind it on the worker
//! (the p99 tail `make bench` showed).
//!
//! A batch that fails goes back to the front of the buffer and is sent again (the ledger
//! stores each item once, so a batch that was stored but not acknowledged is harmless to
//! resend). Memory is bounded: a full buffer forgets its oldest items and counts them.

use std::collections::VecDeque;

use bridle_core::ledger_api::{AuditRecord, Settle};

/// Items one plugin holds at most: minutes of traffic while the ledger is away.
pub const MAX_BUFFERED: usize = 100_000;
/// Items per report callout.
pub const MAX_BATCH: usize = 2000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Settle(Settle),
    Audit(Box<AuditRecord>),
}

impl Item {
    pub fn encode(&self) -> Option<Encoded> {
        let (audit, json) = match self {
            Item::Settle(s) => (false, serde_json::to_vec(s)),
            Item::Audit(a) => (true, serde_json::to_vec(a)),
        };
        Some(Encoded {
            audit,
            json: json.ok()?,
        })
    }
}

/// An item as the ledger's report endpoint will read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    audit: bool,
    json: Vec<u8>,
}

impl Encoded {
    #[cfg(test)]
    pub fn decode(&self) -> Option<Item> {
        Some(if self.audit {
            Item::Audit(Box::new(serde_json::from_slice(&self.json).ok()?))
        } else {
            Item::Settle(serde_json::from_slice(&self.json).ok()?)
        })
    }
}

#[derive(Debug, Default)]
pub struct Buffer {
    items: VecDeque<Encoded>,
}

impl Buffer {
    /// Adds an item; returns how many old ones a full buffer forgot to make room.
    pub fn push(&mut self, item: Encoded) -> usize {
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
    pub fn take(&mut self) -> Vec<Encoded> {
        let n = self.items.len().min(MAX_BATCH);
        self.items.drain(..n).collect()
    }

    /// Puts a failed batch back in front, in order; returns how many a full buffer forgot.
    pub fn put_back(&mut self, batch: Vec<Encoded>) -> usize {
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

/// The body of a report callout (a `ledger_api::Report`), joined from encoded items.
pub fn report_body(items: &[Encoded]) -> Vec<u8> {
    let size: usize = items.iter().map(|i| i.json.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 32);
    out.push(b'{');
    for (audit, key) in [(false, &b"\"settles\":["[..]), (true, &b"\"audit\":["[..])] {
        let mut first = true;
        for item in items.iter().filter(|i| i.audit == audit) {
            if first {
                if out.len() > 1 {
                    out.push(b',');
                }
                out.extend_from_slice(key);
                first = false;
            } else {
                out.push(b',');
            }
            out.extend_from_slice(&item.json);
        }
        if !first {
            out.push(b']');
        }
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_core::ledger_api::SettleOutcome;

    fn settle(n: usize) -> Encoded {
        Item::Settle(Settle {
            reservation: format!("{n:032x}"),
            outcome: SettleOutcome::Commit,
            amount: None,
            replay: false,
            usage: None,
        })
        .encode()
        .unwrap()
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

    #[test]
    fn a_report_body_is_the_report_of_its_items() {
        use bridle_core::ledger_api::Report;
        let audit = |n: u64| {
            Item::Audit(Box::new(AuditRecord {
                id: format!("{n:032x}"),
                at_ms: n,
                vendor: bridle_core::vendor::Vendor::Stripe,
                token_id: Some("tok_1".into()),
                label: None,
                policy: Some("p".into()),
                method: "GET".into(),
                path: "/v1/charges/ch_\"1".into(),
                status: 200,
                reason: bridle_core::Reason::Allowed,
                cost: None,
                reservation: None,
                merchant: None,
                model: Some("gpt-4o-mini".into()),
                usage: Some(bridle_core::llm::TokenUsage {
                    input: n,
                    output: 7,
                    ..Default::default()
                }),
                usage_missing: None,
                over_reservation: n.is_multiple_of(2),
                replay: false,
            }))
        };
        let settle_item = |n: usize| settle(n).decode().unwrap();
        for items in [
            vec![],
            vec![settle_item(1)],
            vec![audit(1)],
            vec![audit(1), settle_item(2), audit(3), settle_item(4)],
        ] {
            let encoded: Vec<Encoded> = items.iter().map(|i| i.encode().unwrap()).collect();
            let body = report_body(&encoded);
            let report: Report = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
            let mut expected = Report::default();
            for i in items {
                match i {
                    Item::Settle(s) => expected.settles.push(s),
                    Item::Audit(a) => expected.audit.push(*a),
                }
            }
            assert_eq!(report, expected);
        }
    }
}
