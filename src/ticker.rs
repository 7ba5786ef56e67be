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

/// How long a plugin going away keeps trying to hand the ledger what it holds. What the
/// ledger has not taken by then is lost, counted as dropped and logged: lease settles then
/// expire into spend at the ledger, audit records are gone.
const FINAL_WAIT_MS: u64 = 30_000;

#[derive(Default)]
pub struct Ticker {
    pending: HashMap<u32, Pending>,
    /// Once Envoy asked the plugin to finish: what is left of it.
    stopping: Option<Stopping>,
}

struct Stopping {
    /// It keeps trying until then.
    until_ms: u64,
    /// A report failed: the next one waits for the tick, so that a ledger that refuses at
    /// once is not asked again and again in a tight loop.
    paused: bool,
    /// It told the host it is done.
    said: bool,
}

impl Ticker {
    pub fn on_tick<H: Host>(&mut self, host: &H, plugin: &Plugin) {
        plugin.debug.set(host.log_level() <= Level::Debug);
        if let Some(stopping) = self.stopping.as_mut() {
            // Going away: no polls, no renewals, only what it still holds.
            stopping.paused = false;
            self.finish(host, plugin);
            return;
        }
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
    /// nothing is left to send or in flight (it may go now); otherwise it tells the host
    /// ([`Host::done`]) once it has handed everything over, or given up.
    pub fn on_done<H: Host>(&mut self, host: &H, plugin: &Plugin) -> bool {
        self.stopping = Some(Stopping {
            until_ms: host.now_ms().saturating_add(FINAL_WAIT_MS),
            paused: false,
            said: false,
        });
        let finished = self.step(host, plugin);
        if let Some(stopping) = self.stopping.as_mut() {
            // Returning `true` is the answer: the host must not hear it twice.
            stopping.said = finished;
        }
        finished
    }

    /// Takes the next step of going away, and tells the host once there is nothing left.
    fn finish<H: Host>(&mut self, host: &H, plugin: &Plugin) {
        if !self.step(host, plugin) {
            return;
        }
        let Some(stopping) = self.stopping.as_mut() else {
            return;
        };
        if std::mem::replace(&mut stopping.said, true) {
            return;
        }
        if let Err(e) = host.done() {
            host.log(
                Level::Warn,
                &format!("could not say the plugin is done (status {})", e.0),
            );
        }
    }

    /// Closes what leases are open (a renewal granted meanwhile opens one), sends the next
    /// report if none is in flight, or gives up once the time is over: whether nothing is
    /// left to send or in flight.
    fn step<H: Host>(&mut self, host: &H, plugin: &Plugin) -> bool {
        let (Some(ledger), Some(stopping)) = (&plugin.ledger, self.stopping.as_ref()) else {
            return self.pending.is_empty();
        };
        ledger.close_all_leases(host, &plugin.metrics);
        let reporting = self
            .pending
            .values()
            .any(|p| matches!(p, Pending::Report(_)));
        if !reporting && ledger.has_reports() {
            if host.now_ms() >= stopping.until_ms {
                let lost = ledger.drop_reports(host, &plugin.metrics);
                host.log(
                    Level::Error,
                    &format!(
                        "going away with {lost} settles and audit records the ledger did not \
                         take in {} s",
                        FINAL_WAIT_MS / 1000
                    ),
                );
            } else if !stopping.paused {
                // A callout the host refuses is counted there, and tried again on the tick.
                if let Some((call, items)) = ledger.flush_reports(host, &plugin.metrics) {
                    self.pending.insert(call, Pending::Report(items));
                }
            }
        }
        self.pending.is_empty() && !ledger.has_reports()
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
                if let (false, Some(stopping)) = (taken, self.stopping.as_mut()) {
                    stopping.paused = true;
                }
            }
            Some(Pending::Renewal(renewal)) => {
                ledger.on_renewal(host, &plugin.metrics, body_size, renewal)
            }
        }
        if self.stopping.is_some() {
            self.finish(host, plugin);
        }
    }
}
