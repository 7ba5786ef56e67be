//! What a root context does on its tick: refresh this plugin's copy of the revocation set,
//! poll the ledger's feed when this worker holds the lease, and flush buffered settles and
//! audit records to the ledger. At most one poll and one report are in flight per root.

use std::collections::HashMap;

use bridle_core::ledger_api::REPORT_PATH;
use bridle_core::revocation::RevocationFeed;

use crate::host::{Host, Level};
use crate::plugin::Plugin;
use crate::reports::{self, Encoded};
use crate::revocations;
use crate::stream::{call_ledger, read_call_response};

enum Pending {
    Poll,
    Report(Vec<Encoded>),
}

#[derive(Default)]
pub struct Ticker {
    pending: HashMap<u32, Pending>,
}

fn now_ms<H: Host>(host: &H) -> u64 {
    host.now_nanos().map_or(0, |n| n / 1_000_000)
}

impl Ticker {
    pub fn on_tick<H: Host>(&mut self, host: &H, plugin: &Plugin) {
        plugin.debug.set(host.log_level() <= Level::Debug);
        let Some(ledger) = &plugin.ledger else { return };
        let now = now_ms(host);
        if let Ok(mut cache) = ledger.revocations.try_borrow_mut() {
            if let Err(e) = cache.refresh(host, &ledger.keys) {
                host.log(
                    Level::Warn,
                    &format!("could not read the shared revocation set (status {})", e.0),
                );
            }
            host.record(plugin.metrics.ledger.revocations, cache.set.len() as u64);
        }
        let polling = self.pending.values().any(|p| matches!(p, Pending::Poll));
        if !polling {
            match revocations::take_poll_lease(
                host,
                &ledger.keys,
                now,
                ledger.link.revocation_poll_ms,
            ) {
                Ok(Some(since)) => {
                    let path = format!(
                        "{}?since={since}",
                        bridle_core::ledger_api::REVOCATIONS_PATH
                    );
                    match call_ledger(host, ledger, "GET", &path, &[]) {
                        Ok(call) => {
                            self.pending.insert(call, Pending::Poll);
                        }
                        Err(_) => host.increment(plugin.metrics.ledger.polls_failed, 1),
                    }
                }
                Ok(None) => {}
                Err(e) => host.log(
                    Level::Warn,
                    &format!("could not take the revocation poll lease (status {})", e.0),
                ),
            }
        }
        let reporting = self
            .pending
            .values()
            .any(|p| matches!(p, Pending::Report(_)));
        if !reporting {
            let items = ledger
                .reports
                .try_borrow_mut()
                .map(|mut b| b.take())
                .unwrap_or_default();
            if !items.is_empty() {
                match call_ledger(
                    host,
                    ledger,
                    "POST",
                    REPORT_PATH,
                    &reports::report_body(&items),
                ) {
                    Ok(call) => {
                        self.pending.insert(call, Pending::Report(items));
                    }
                    _ => {
                        host.increment(plugin.metrics.ledger.reports_failed, 1);
                        put_back(host, plugin, items);
                    }
                }
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
            Some(Pending::Poll) => {
                let page = read_call_response(host, body_size).and_then(|b| {
                    serde_json::from_slice::<RevocationFeed>(&b)
                        .map_err(|_| "unreadable feed".to_string())
                });
                match page {
                    Ok(page) => match revocations::merge(host, &ledger.keys, &page, now_ms(host)) {
                        Ok(_) => {
                            host.increment(plugin.metrics.ledger.polls_ok, 1);
                            if let Ok(mut cache) = ledger.revocations.try_borrow_mut() {
                                let _ = cache.refresh(host, &ledger.keys);
                            }
                        }
                        Err(e) => {
                            host.increment(plugin.metrics.ledger.polls_failed, 1);
                            host.log(
                                Level::Warn,
                                &format!("could not merge revocations (status {})", e.0),
                            );
                        }
                    },
                    Err(why) => {
                        host.increment(plugin.metrics.ledger.polls_failed, 1);
                        host.log(Level::Warn, &format!("revocation poll failed: {why}"));
                    }
                }
            }
            Some(Pending::Report(items)) => match read_call_response(host, body_size) {
                Ok(_) => host.increment(plugin.metrics.ledger.reports_ok, 1),
                Err(why) => {
                    host.increment(plugin.metrics.ledger.reports_failed, 1);
                    host.log(
                        Level::Warn,
                        &format!("report to the ledger failed ({why}); will resend"),
                    );
                    put_back(host, plugin, items);
                }
            },
        }
    }
}

/// Returns a batch the ledger did not take to the front of the buffer.
fn put_back<H: Host>(host: &H, plugin: &Plugin, items: Vec<Encoded>) {
    let Some(ledger) = &plugin.ledger else { return };
    let dropped = match ledger.reports.try_borrow_mut() {
        Ok(mut buffer) => buffer.put_back(items),
        Err(_) => items.len(),
    };
    if dropped > 0 {
        host.increment(plugin.metrics.ledger.items_dropped, dropped as i64);
    }
}
