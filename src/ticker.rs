//! What a root context does on its tick: refresh this plugin's copy of the revocation set,
//! close spend leases too old to spend from and ask ahead for the next lease of tokens in use,
//! poll the ledger's feed when this worker holds the poll lease, and flush buffered settles
//! and audit records to the ledger. At most one poll and one report are in flight per root.
//! The ticker decides when; `ledger_link` does the talking.

use std::collections::HashMap;

use crate::host::{Host, Level};
use crate::ledger_link::RenewalCall;
use crate::plugin::Plugin;
use crate::reports::Encoded;

enum Pending {
    Poll,
    Report(Vec<Encoded>),
    Renewal(RenewalCall),
}

#[derive(Default)]
pub struct Ticker {
    pending: HashMap<u32, Pending>,
}

impl Ticker {
    pub fn on_tick<H: Host>(&mut self, host: &H, plugin: &Plugin) {
        plugin.debug.set(host.log_level() <= Level::Debug);
        let Some(ledger) = &plugin.ledger else { return };
        let metrics = &plugin.metrics;
        ledger.refresh_revocations(host, metrics);
        ledger.close_leases(host, metrics);
        for (call, renewal) in ledger.renew_leases(host, metrics, &plugin.ids) {
            self.pending.insert(call, Pending::Renewal(renewal));
        }
        if !self.pending.values().any(|p| matches!(p, Pending::Poll)) {
            if let Some(call) = ledger.poll_revocations(host, metrics) {
                self.pending.insert(call, Pending::Poll);
            }
        }
        if !self
            .pending
            .values()
            .any(|p| matches!(p, Pending::Report(_)))
        {
            if let Some((call, items)) = ledger.flush_reports(host, metrics) {
                self.pending.insert(call, Pending::Report(items));
            }
        }
    }

    pub fn on_call_response<H: Host>(
        &mut self,
        host: &H,
        plugin: &Plugin,
        call: u32,
        body_size: usize,
    ) {
        let Some(ledger) = &plugin.ledger else { return };
        match self.pending.remove(&call) {
            None => {}
            Some(Pending::Poll) => ledger.on_revocations(host, &plugin.metrics, body_size),
            Some(Pending::Report(items)) => {
                ledger.on_reports_answer(host, &plugin.metrics, body_size, items)
            }
            Some(Pending::Renewal(renewal)) => {
                ledger.on_renewal(host, &plugin.metrics, body_size, renewal)
            }
        }
    }
}
