//! What a root context does on its tick: refresh this plugin's copy of the revocation set,
//! close spend leases too old to spend from and ask ahead for the next lease of tokens in use,
//! poll the ledger's feed when this worker holds the poll lease, and flush buffered settles
//! and audit records to the ledger. At most one poll and one report are in flight per root.
//! The ticker decides when; `ledger_link` does the talking.
//!
//! When Envoy lets go of the plugin (a configuration push replaced it, once its streams have
//! ended), the root closes its leases and sends what it still holds before it says it is
//! done: otherwise the leases would count in full until the ledger expired them, and the
//! last audit records would be lost.

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

/// Failed report flushes a plugin going away tries before it gives up on what the ledger
/// would not take (each callout has the link's deadline, so this bounds how long it lingers).
const FINAL_FLUSHES: u32 = 8;

#[derive(Default)]
pub struct Ticker {
    pending: HashMap<u32, Pending>,
    /// `Some(report flushes failed)` once Envoy asked the plugin to finish.
    stopping: Option<u32>,
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

    /// Envoy is done with the plugin: close its leases and flush its reports. `true` if
    /// nothing is left in flight (it may go now); otherwise it tells the host
    /// ([`Host::done`]) once the last callout has been answered.
    pub fn on_done<H: Host>(&mut self, host: &H, plugin: &Plugin) -> bool {
        self.stopping = Some(0);
        self.finish(host, plugin)
    }

    /// One step of finishing: whether nothing is left in flight.
    fn finish<H: Host>(&mut self, host: &H, plugin: &Plugin) -> bool {
        let (Some(ledger), Some(failures)) = (&plugin.ledger, self.stopping.as_mut()) else {
            return self.pending.is_empty();
        };
        // Again on every answer: a renewal granted meanwhile opened a lease.
        ledger.close_all_leases(host, &plugin.metrics);
        let reporting = self
            .pending
            .values()
            .any(|p| matches!(p, Pending::Report(_)));
        while !reporting && ledger.has_reports() {
            if *failures < FINAL_FLUSHES {
                if let Some((call, items)) = ledger.flush_reports(host, &plugin.metrics) {
                    self.pending.insert(call, Pending::Report(items));
                    break;
                }
                // Not sent at all (the host refused the callout): try again at once.
                *failures += 1;
            } else {
                let lost = ledger.drop_reports(host, &plugin.metrics);
                if lost > 0 {
                    host.log(
                        Level::Error,
                        &format!(
                            "going away with {lost} settles and audit records the ledger did \
                             not take"
                        ),
                    );
                }
            }
        }
        self.pending.is_empty()
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
                let taken = ledger.on_reports_answer(host, &plugin.metrics, body_size, items);
                if let (false, Some(failures)) = (taken, self.stopping.as_mut()) {
                    *failures += 1;
                }
            }
            Some(Pending::Renewal(renewal)) => {
                ledger.on_renewal(host, &plugin.metrics, body_size, renewal)
            }
        }
        if self.stopping.is_some() && self.finish(host, plugin) {
            if let Err(e) = host.done() {
                host.log(
                    Level::Warn,
                    &format!("could not say the plugin is done (status {})", e.0),
                );
            }
        }
    }
}
