//! The filter's side of the ledger: where it is, how to authenticate, the buffer that carries
//! settles and audit records to it, and this plugin's copy of the revocation set. Everything
//! said to the ledger goes through here, so every callout carries the same deadline and
//! credential: the stream's reservations, and the ticker's revocation polls and report
//! flushes (the ticker only decides when).

use std::cell::RefCell;

use bridle_core::config::LedgerLink;
use bridle_core::lease::LeaseBook;
use bridle_core::ledger_api::{
    ReserveResponse, Settle, SettleOutcome, DEADLINE_HEADER, REPORT_PATH, RESERVE_PATH,
    REVOCATIONS_PATH,
};
use bridle_core::money::Usd;
use bridle_core::revocation::RevocationFeed;

use crate::host::{BufferType, Host, Level, MapType};
use crate::ids::Ids;
use crate::metrics::Metrics;
use crate::reports::{self, Buffer, Encoded, Item};
use crate::revocations::{self, Cache};

/// A renewal in flight: what to open when the ledger grants it.
pub struct RenewalCall {
    token_id: String,
    request_id: String,
    price: Usd,
    calls: u32,
    until_ms: u64,
}

pub struct Ledger {
    pub link: LedgerLink,
    /// The enforcement credential: sent to the ledger, never logged.
    pub enforcer_key: String,
    pub reports: RefCell<Buffer>,
    pub keys: revocations::Keys,
    pub revocations: RefCell<Cache>,
    /// This worker's spend leases (policies with `lease`).
    pub leases: RefCell<LeaseBook>,
}

impl Ledger {
    pub fn new(link: LedgerLink, enforcer_key: String) -> Ledger {
        Ledger {
            keys: revocations::Keys::new(&link.cluster),
            link,
            enforcer_key,
            reports: RefCell::new(Buffer::default()),
            revocations: RefCell::new(Cache::default()),
            leases: RefCell::new(LeaseBook::default()),
        }
    }

    /// Retires leases too old to spend from and reports the settles of those closed.
    pub fn close_leases<H: Host>(&self, host: &H, metrics: &Metrics) {
        self.settle_leases(host, metrics, |book| book.expire(host.now_ms()));
    }

    /// Closes every lease of this plugin and reports their settles: it is going away.
    pub fn close_all_leases<H: Host>(&self, host: &H, metrics: &Metrics) {
        let open = self.settle_leases(host, metrics, |book| {
            let open = book.len();
            book.close_all();
            open
        });
        if open > 0 {
            host.increment(metrics.ledger.leases_closed_at_exit, open as i64);
        }
    }

    /// Runs `close` on the lease book, then reports the settles of every lease closed.
    fn settle_leases<H: Host, R: Default>(
        &self,
        host: &H,
        metrics: &Metrics,
        close: impl FnOnce(&mut LeaseBook) -> R,
    ) -> R {
        let (result, closed) = match self.leases.try_borrow_mut() {
            Ok(mut book) => {
                let result = close(&mut book);
                (result, book.take_closed())
            }
            Err(_) => return R::default(),
        };
        for settle in closed {
            self.report(host, metrics, Item::Settle(settle));
        }
        result
    }

    /// Forgets the reports still buffered (the ledger would not take them before the plugin
    /// went away): how many.
    pub fn drop_reports<H: Host>(&self, host: &H, metrics: &Metrics) -> usize {
        let mut lost = 0;
        if let Ok(mut buffer) = self.reports.try_borrow_mut() {
            while !buffer.is_empty() {
                lost += buffer.take().len();
            }
        }
        if lost > 0 {
            host.increment(metrics.ledger.items_dropped, lost as i64);
        }
        lost
    }

    /// Starts a callout with the link's deadline and the enforcement credential; the answer
    /// arrives in `on_http_call_response` with the returned token. `Err` is the host's status.
    pub fn call<H: Host>(
        &self,
        host: &H,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<u32, u32> {
        let authorization = format!("Bearer {}", self.enforcer_key);
        let deadline = (host.now_ms() + self.link.timeout_ms).to_string();
        let headers = [
            (":method", method),
            (":path", path),
            (":authority", self.link.authority.as_str()),
            ("content-type", "application/json"),
            ("authorization", authorization.as_str()),
            (DEADLINE_HEADER, deadline.as_str()),
        ];
        host.dispatch(&self.link.cluster, &headers, body, self.link.timeout_ms)
            .map_err(|e| e.0)
    }

    /// Hands an item to the report buffer, counting what a full buffer had to forget.
    pub fn report<H: Host>(&self, host: &H, metrics: &Metrics, item: Item) {
        let dropped = match (item.encode(), self.reports.try_borrow_mut()) {
            (Some(encoded), Ok(mut buffer)) => buffer.push(encoded),
            _ => 1,
        };
        if dropped > 0 {
            host.increment(metrics.ledger.items_dropped, dropped as i64);
        }
    }

    /// Asks the ledger for the next lease of each token whose live lease is in use: the
    /// calls in flight, to answer in [`Ledger::on_renewal`].
    pub fn renew_leases<H: Host>(
        &self,
        host: &H,
        metrics: &Metrics,
        ids: &Ids,
    ) -> Vec<(u32, RenewalCall)> {
        let now_ms = host.now_ms();
        // A stale revocation set spends no lease (its calls go to the ledger): none is asked
        // for ahead either, as none is asked for by a call.
        let fresh = self
            .revocations
            .try_borrow()
            .is_ok_and(|c| c.is_fresh(now_ms, self.link.max_staleness_ms));
        if !fresh {
            return Vec::new();
        }
        let due = match self.leases.try_borrow_mut() {
            Ok(mut book) => book.renewals(now_ms, self.link.timeout_ms),
            Err(_) => return Vec::new(),
        };
        let mut calls = Vec::with_capacity(due.len());
        for renewal in due {
            let mut request = renewal.request;
            request.request_id = ids.next(now_ms);
            let pending = RenewalCall {
                token_id: renewal.token_id,
                request_id: request.request_id.clone(),
                price: request.amount,
                calls: request.lease_calls.unwrap_or(1),
                until_ms: now_ms.saturating_add(renewal.max_age_ms),
            };
            let sent = serde_json::to_vec(&request)
                .map_err(|_| u32::MAX)
                .and_then(|body| self.call(host, "POST", RESERVE_PATH, &body));
            match sent {
                Ok(call) => calls.push((call, pending)),
                Err(_) => {
                    host.increment(metrics.ledger.reserve_failed, 1);
                    if let Ok(mut book) = self.leases.try_borrow_mut() {
                        book.renewal_failed(&pending.token_id);
                    }
                }
            }
        }
        calls
    }

    /// The ledger's answer to a renewal: the token's next lease, or none (and, if the
    /// ledger may hold one nobody will spend, its release).
    pub fn on_renewal<H: Host>(
        &self,
        host: &H,
        metrics: &Metrics,
        body_size: usize,
        call: RenewalCall,
    ) {
        let answer = read_answer(host, body_size).and_then(|b| {
            serde_json::from_slice::<ReserveResponse>(&b).map_err(|_| "unreadable".to_string())
        });
        let Ok(mut book) = self.leases.try_borrow_mut() else {
            return;
        };
        let release = match answer {
            Ok(ReserveResponse::Granted {
                reservation,
                replay: false,
                leased_calls: Some(calls),
            }) => {
                let calls = calls.min(call.calls);
                book.renewed(
                    &call.token_id,
                    &reservation,
                    call.price,
                    calls,
                    call.until_ms,
                );
                return;
            }
            // A plain reservation (the ledger's policy has no lease now): nobody spends it.
            Ok(ReserveResponse::Granted { reservation, .. }) => Some(reservation),
            Ok(ReserveResponse::Denied { .. }) => None,
            Err(_) => {
                host.increment(metrics.ledger.reserve_failed, 1);
                Some(call.request_id.clone())
            }
        };
        book.renewal_failed(&call.token_id);
        drop(book);
        let Some(reservation) = release else { return };
        let settle = Settle {
            reservation,
            outcome: SettleOutcome::Release,
            amount: None,
            replay: false,
            usage: None,
        };
        self.report(host, metrics, Item::Settle(settle));
    }

    /// Copies the shared revocation set into this plugin's memory when another worker has
    /// changed it, so the request path reads plain memory.
    pub fn refresh_revocations<H: Host>(&self, host: &H, metrics: &Metrics) {
        if let Ok(mut cache) = self.revocations.try_borrow_mut() {
            if let Err(e) = cache.refresh(host, &self.keys) {
                host.log(
                    Level::Warn,
                    &format!("could not read the shared revocation set (status {})", e.0),
                );
            }
            host.record(metrics.ledger.revocations, cache.set.len() as u64);
        }
    }

    /// Polls the revocation feed if this worker wins this interval's lease; the call's token.
    pub fn poll_revocations<H: Host>(&self, host: &H, metrics: &Metrics) -> Option<u32> {
        let since = match revocations::take_poll_lease(
            host,
            &self.keys,
            host.now_ms(),
            self.link.revocation_poll_ms,
        ) {
            Ok(since) => since?,
            Err(e) => {
                host.log(
                    Level::Warn,
                    &format!("could not take the revocation poll lease (status {})", e.0),
                );
                return None;
            }
        };
        let path = format!("{REVOCATIONS_PATH}?since={since}");
        match self.call(host, "GET", &path, &[]) {
            Ok(call) => Some(call),
            Err(_) => {
                host.increment(metrics.ledger.polls_failed, 1);
                None
            }
        }
    }

    /// The feed's answer: merged into the shared set, which is then stamped fresh.
    pub fn on_revocations<H: Host>(&self, host: &H, metrics: &Metrics, body_size: usize) {
        let page = read_answer(host, body_size).and_then(|b| {
            serde_json::from_slice::<RevocationFeed>(&b).map_err(|_| "unreadable feed".to_string())
        });
        let page = match page {
            Ok(page) => page,
            Err(why) => {
                host.increment(metrics.ledger.polls_failed, 1);
                host.log(Level::Warn, &format!("revocation poll failed: {why}"));
                return;
            }
        };
        match revocations::merge(host, &self.keys, &page, host.now_ms()) {
            Ok(_) => {
                host.increment(metrics.ledger.polls_ok, 1);
                if let Ok(mut cache) = self.revocations.try_borrow_mut() {
                    let _ = cache.refresh(host, &self.keys);
                }
            }
            Err(e) => {
                host.increment(metrics.ledger.polls_failed, 1);
                host.log(
                    Level::Warn,
                    &format!("could not merge revocations (status {})", e.0),
                );
            }
        }
    }

    /// Sends the next batch of settles and audit records, if any: the call's token and the
    /// batch, to put back if the ledger does not take it.
    pub fn flush_reports<H: Host>(
        &self,
        host: &H,
        metrics: &Metrics,
    ) -> Option<(u32, Vec<Encoded>)> {
        let items = self
            .reports
            .try_borrow_mut()
            .map(|mut b| b.take())
            .unwrap_or_default();
        if items.is_empty() {
            return None;
        }
        match self.call(host, "POST", REPORT_PATH, &reports::report_body(&items)) {
            Ok(call) => Some((call, items)),
            Err(_) => {
                host.increment(metrics.ledger.reports_failed, 1);
                self.put_back(host, metrics, items);
                None
            }
        }
    }

    /// The ledger's answer to a batch: taken (`true`), or put back to be sent again.
    pub fn on_reports_answer<H: Host>(
        &self,
        host: &H,
        metrics: &Metrics,
        body_size: usize,
        items: Vec<Encoded>,
    ) -> bool {
        match read_answer(host, body_size) {
            Ok(_) => {
                host.increment(metrics.ledger.reports_ok, 1);
                true
            }
            Err(why) => {
                host.increment(metrics.ledger.reports_failed, 1);
                host.log(
                    Level::Warn,
                    &format!("report to the ledger failed ({why}); will resend"),
                );
                self.put_back(host, metrics, items);
                false
            }
        }
    }

    /// Whether settles or audit records wait to be sent.
    pub fn has_reports(&self) -> bool {
        self.reports.try_borrow().is_ok_and(|b| !b.is_empty())
    }

    /// Returns a batch the ledger did not take to the front of the buffer.
    fn put_back<H: Host>(&self, host: &H, metrics: &Metrics, items: Vec<Encoded>) {
        let dropped = match self.reports.try_borrow_mut() {
            Ok(mut buffer) => buffer.put_back(items),
            Err(_) => items.len(),
        };
        if dropped > 0 {
            host.increment(metrics.ledger.items_dropped, dropped as i64);
        }
    }
}

/// The body of a 200 answer to a callout, or why there is none: any other status, or no
/// answer at all, is a failure.
pub fn read_answer<H: Host>(host: &H, body_size: usize) -> Result<Vec<u8>, String> {
    let status = host
        .header_value(MapType::CallResponseHeaders, ":status")
        .map_err(|_| "The ledger did not answer.".to_string())?;
    let status = status
        .as_deref()
        .and_then(|s| std::str::from_utf8(s).ok())
        .unwrap_or("none");
    if status != "200" {
        return Err(format!(
            "The ledger could not be reached or failed (status {status})."
        ));
    }
    host.buffer(BufferType::CallResponseBody, 0, body_size)
        .map_err(|_| "The ledger's answer could not be read.".to_string())
        .map(Option::unwrap_or_default)
}
