//! One HTTP request through the filter: reads what Envoy has, feeds it to the core's
//! [`Exchange`], and does what each [`Step`] asks. What is decided, in which order and why,
//! is all in `bridle_core::exchange`; this file only does I/O.
//!
//! Every hostcall that fails becomes a refusal, and a refusal that cannot be sent resets the
//! stream: nothing is forwarded by default, and nothing waits without a deadline (the ledger
//! callout carries the link's timeout).

use std::rc::Rc;

use bridle_core::exchange::{Arrival, Body, Exchange, Reply, Step, MAX_RESPONSE_BODY};
use bridle_core::lease::LeaseBook;
use bridle_core::ledger_api::RESERVE_PATH;
use bridle_core::revocation::RevocationSet;
use bridle_core::Reason;
use proxy_wasm::types::Action;

use crate::host::{BufferType, Host, Level, MapType};
use crate::ledger_link;
use crate::loop_guard::SharedCounter;
use crate::plugin::Plugin;
use crate::reports::Item;

pub use bridle_core::exchange::MAX_BODY;

/// A streamed body is read into the VM this much at a time, for its scan.
const SCAN_SLICE: usize = 64 * 1024;

pub struct Stream {
    plugin: Option<Rc<Plugin>>,
    /// `None` until the request's headers arrive (and for ever, if Envoy answers first).
    exchange: Option<Exchange>,
    /// The reservation callout in flight.
    call: Option<u32>,
    /// How much of the request body Envoy holds for the filter: while it is read before the
    /// decision, all of it; while it streams, the bytes already scanned but held back (Envoy
    /// appends what arrives next to them).
    held: usize,
    /// The size of the request body Envoy holds, for a rewrite to replace.
    body_size: usize,
}

impl Stream {
    pub fn new(plugin: Option<Rc<Plugin>>) -> Stream {
        Stream {
            plugin,
            exchange: None,
            call: None,
            held: 0,
            body_size: 0,
        }
    }

    pub fn on_request_headers<H: Host>(&mut self, host: &H, end_of_stream: bool) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            return refuse_unconfigured(host);
        };
        ablate!(0);
        #[cfg(all(feature = "test-trap", target_arch = "wasm32"))]
        if matches!(
            host.header_value(MapType::RequestHeaders, "x-test-trap"),
            Ok(Some(_))
        ) {
            core::arch::wasm32::unreachable();
        }
        let now_ms = host.now_ms();
        let id = plugin.ids.next(now_ms);
        let bp = &plugin.blueprint;
        let headers = match host.header_map(MapType::RequestHeaders) {
            Ok(h) => h,
            Err(e) => {
                let message = format!("Could not read the request (status {}).", e.0);
                let (exchange, step) = Exchange::unreadable(bp, id, now_ms, message);
                self.exchange = Some(exchange);
                return self.perform(host, &plugin, step, false);
            }
        };
        ablate!(1);
        let (exchange, step) = {
            let revocations = plugin.ledger.as_ref().map(|l| l.revocations.borrow());
            let empty = RevocationSet::default();
            let (set, fresh_at_ms) = revocations
                .as_ref()
                .map_or((&empty, 0), |r| (&r.set, r.fresh_at_ms));
            let arrival = Arrival {
                headers: &headers,
                end_of_stream,
                now_ms,
                id,
                revocations: set,
                revocations_fresh_at_ms: fresh_at_ms,
            };
            Exchange::begin(bp, arrival, &SharedCounter(host))
        };
        self.exchange = Some(exchange);
        ablate!(2);
        self.perform(host, &plugin, step, false)
    }

    pub fn on_request_body<H: Host>(
        &mut self,
        host: &H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let (Some(plugin), Some(exchange)) = (self.plugin.clone(), self.exchange.as_mut()) else {
            return Action::Pause;
        };
        if exchange.awaits_body() {
            let bp = &plugin.blueprint;
            let counter = SharedCounter(host);
            self.held = body_size;
            self.body_size = body_size;
            let step = if body_size > MAX_BODY {
                exchange.on_body(bp, &counter, Body::TooLarge)
            } else if !end_of_stream {
                // Headers wait while the body is buffered (the Envoy config sets
                // allow_on_headers_stop_iteration so that body callbacks still arrive).
                return Action::Pause;
            } else {
                read_body(host, exchange, bp, &counter, body_size)
            };
            self.held = 0;
            let action = self.perform(host, &plugin, step, false);
            // Forwarded with its body still coming (too large to read): what Envoy holds now
            // goes first, and is scanned like the rest.
            if action == Action::Pause
                || !self.exchange.as_ref().is_some_and(Exchange::streams_body)
            {
                return action;
            }
        }
        self.stream_body(host, &plugin, body_size, end_of_stream)
    }

    /// The request's trailers: they end its body. Any trailer is refused; none at all means
    /// the body is complete, and the decision it waited for is made now. Never `Continue`
    /// without a decision: that would let Envoy resume a request still held.
    pub fn on_request_trailers<H: Host>(&mut self, host: &H, num_trailers: usize) -> Action {
        let (Some(plugin), Some(exchange)) = (self.plugin.clone(), self.exchange.as_mut()) else {
            // Envoy answered before the filter ran.
            return Action::Pause;
        };
        let bp = &plugin.blueprint;
        let trailers = if num_trailers == 0 {
            Vec::new()
        } else {
            match host.header_map(MapType::RequestTrailers) {
                Ok(t) => t,
                Err(e) => {
                    let step =
                        exchange.fail(bp, format!("Could not read the trailers (status {}).", e.0));
                    return self.perform(host, &plugin, step, false);
                }
            }
        };
        if let Some(step) = exchange.on_trailers(bp, &trailers) {
            // A reservation in flight is released; its answer will be ignored.
            self.call = None;
            return self.perform(host, &plugin, step, false);
        }
        if exchange.awaits_body() {
            let counter = SharedCounter(host);
            self.body_size = self.held;
            let step = read_body(host, exchange, bp, &counter, self.held);
            self.held = 0;
            return self.perform(host, &plugin, step, false);
        }
        if exchange.holds_request() {
            Action::Pause
        } else {
            // Forwarded, its body streamed to the end: whatever was held back can go.
            self.held = 0;
            Action::Continue
        }
    }

    /// Scans the part of a streaming body Envoy holds that was not scanned yet, then lets it
    /// all through, or holds it while its end could begin a vault token.
    fn stream_body<H: Host>(
        &mut self,
        host: &H,
        plugin: &Plugin,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Pause;
        };
        if !exchange.streams_body() {
            return if exchange.holds_request() {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        let bp = &plugin.blueprint;
        let mut at = self.held;
        if body_size < at {
            let step = exchange.fail(bp, "The request body Envoy held shrank.".into());
            return self.perform(host, plugin, step, false);
        }
        while at < body_size {
            let len = (body_size - at).min(SCAN_SLICE);
            let chunk = match host.buffer(BufferType::RequestBody, at, len) {
                Ok(Some(chunk)) if chunk.len() == len => chunk,
                Ok(_) => {
                    let step = exchange.fail(bp, "The request body could not be read.".into());
                    return self.perform(host, plugin, step, false);
                }
                Err(e) => {
                    let message = format!("Could not read the request body (status {}).", e.0);
                    let step = exchange.fail(bp, message);
                    return self.perform(host, plugin, step, false);
                }
            };
            if let Some(step) = exchange.on_body_chunk(bp, &chunk) {
                return self.perform(host, plugin, step, false);
            }
            at += len;
        }
        if end_of_stream || exchange.body_pending() == 0 {
            self.held = 0;
            Action::Continue
        } else {
            self.held = body_size;
            Action::Pause
        }
    }

    /// The ledger's answer to a reservation.
    pub fn on_call_response<H: Host>(&mut self, host: &H, call: u32, body_size: usize) {
        let (Some(plugin), Some(exchange)) = (self.plugin.clone(), self.exchange.as_mut()) else {
            return;
        };
        if self.call != Some(call) {
            return;
        }
        self.call = None;
        let answer = ledger_link::read_answer(host, body_size);
        let answer = answer.as_deref().map_err(Clone::clone);
        let step = match plugin.ledger.as_ref().map(|l| l.leases.try_borrow_mut()) {
            Some(Ok(mut book)) => exchange.on_reservation(&plugin.blueprint, &mut book, answer),
            // No book to open a lease in: a lease granted serves this call alone and
            // expires into spend in the ledger.
            _ => exchange.on_reservation(&plugin.blueprint, &mut LeaseBook::default(), answer),
        };
        self.perform(host, &plugin, step, true);
    }

    pub fn on_response_headers<H: Host>(&mut self, host: &H, end_of_stream: bool) -> Action {
        // Only a settle rule needs the response now; the audit record reads the status at the
        // end of the stream. Nothing else is asked of the host on this path.
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        if !exchange.wants_response() || end_of_stream {
            return Action::Continue;
        }
        // What to do with the body is asked again chunk by chunk (reading_response,
        // watching_response), so the answer here needs no keeping.
        let _ = exchange.on_response_head(response_status(host), || {
            host.header_value(MapType::ResponseHeaders, "content-type")
                .ok()
                .flatten()
        });
        Action::Continue
    }

    pub fn on_response_body<H: Host>(
        &mut self,
        host: &H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let (Some(plugin), Some(exchange)) = (self.plugin.as_ref(), self.exchange.as_mut()) else {
            return Action::Continue;
        };
        if exchange.watching_response() {
            // Each chunk passes on as it arrives; the exchange only looks at it.
            match host.buffer(BufferType::ResponseBody, 0, body_size) {
                Ok(chunk) => {
                    exchange.on_response_chunk(chunk.as_deref().unwrap_or_default(), end_of_stream)
                }
                Err(e) => {
                    let why = format!("could not read the response (status {})", e.0);
                    host.log(Level::Warn, &format!("{why}; settling at the reservation"));
                    exchange.on_response_unreadable(why);
                }
            }
            return Action::Continue;
        }
        if !exchange.reading_response() {
            return Action::Continue;
        }
        let read;
        let body = if body_size > MAX_RESPONSE_BODY {
            Some(Body::TooLarge)
        } else if !end_of_stream {
            return Action::Pause;
        } else {
            read = host.buffer(BufferType::ResponseBody, 0, body_size);
            match &read {
                Ok(Some(body)) => Some(Body::Complete(body)),
                _ => None,
            }
        };
        if let Some(warning) = exchange.on_response_body(&plugin.blueprint, body) {
            host.log(Level::Warn, &warning);
        }
        Action::Continue
    }

    /// The stream is over: settle what was reserved, and audit the call.
    pub fn on_log<H: Host>(&mut self, host: &H) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        #[cfg(feature = "ablation")]
        if crate::ablation::stop_at(3) {
            return;
        }
        let Some(ledger) = &plugin.ledger else { return };
        let vendor = plugin.blueprint.vendor();
        let Some(exchange) = self.exchange.take() else {
            // Envoy answered before the filter ran (a malformed request): audit it anyway.
            let headers = host.header_map(MapType::RequestHeaders).unwrap_or_default();
            let now_ms = host.now_ms();
            let record = Exchange::proxy_rejected(
                vendor,
                plugin.ids.next(now_ms),
                now_ms,
                &headers,
                response_status(host),
            );
            plugin.metrics.count(host, None, Reason::ProxyRejected);
            ledger.report(host, &plugin.metrics, Item::Audit(Box::new(record)));
            return;
        };
        let status = exchange.status().or_else(|| response_status(host));
        let finished = exchange.finish(vendor, status);
        plugin.metrics.count_usage(host, &finished.audit);
        if let Some((spend, outcome)) = &finished.lease {
            // A book in use cannot take it: the lease then closes at what it was given back,
            // or expires into spend in the ledger (over-counted, never under).
            if let Ok(mut book) = ledger.leases.try_borrow_mut() {
                book.end(spend, *outcome);
            }
        }
        if let Some(settle) = finished.settle {
            ledger.report(host, &plugin.metrics, Item::Settle(settle));
        }
        ledger.report(host, &plugin.metrics, Item::Audit(Box::new(finished.audit)));
    }

    /// Does what a step asks; `resume` when the request is held and must be resumed to go.
    fn perform<H: Host>(&mut self, host: &H, plugin: &Plugin, step: Step, resume: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Pause;
        };
        let bp = &plugin.blueprint;
        match step {
            Step::ReadBody => Action::Pause,
            Step::RewriteBody(body) => {
                let written = host
                    .set_buffer(BufferType::RequestBody, 0, self.body_size, &body)
                    .and_then(|()| {
                        // A length the agent sent must be the new body's, or the vendor
                        // would read a different request.
                        match host.header_value(MapType::RequestHeaders, "content-length")? {
                            Some(_) => host.replace_header(
                                MapType::RequestHeaders,
                                "content-length",
                                body.len().to_string().as_bytes(),
                            ),
                            None => Ok(()),
                        }
                    })
                    .map_err(|e| e.0);
                let step = exchange.on_body_rewritten(bp, written);
                self.perform(host, plugin, step, resume)
            }
            Step::Refuse(reply) => {
                deny(host, plugin, reply);
                Action::Pause
            }
            Step::Reserve(body) => {
                let sent = match &plugin.ledger {
                    Some(ledger) => ledger
                        .call(host, "POST", RESERVE_PATH, &body)
                        .map_err(|status| format!("status {status}")),
                    None => Err("no ledger is configured".to_string()),
                };
                match sent {
                    Ok(call) => {
                        self.call = Some(call);
                        Action::Pause
                    }
                    Err(why) => {
                        host.increment(plugin.metrics.ledger.reserve_failed, 1);
                        let step = exchange.on_reservation_unsent(bp, &why);
                        self.perform(host, plugin, step, resume)
                    }
                }
            }
            Step::Lease => {
                let now_ms = host.now_ms();
                let step = match plugin.ledger.as_ref().map(|l| l.leases.try_borrow_mut()) {
                    Some(Ok(mut book)) => {
                        let step = exchange.on_lease(bp, &mut book, now_ms);
                        if matches!(step, Step::Forward { .. }) {
                            host.increment(plugin.metrics.ledger.lease_spends, 1);
                        }
                        step
                    }
                    _ => exchange.on_lease(bp, &mut LeaseBook::default(), now_ms),
                };
                self.perform(host, plugin, step, resume)
            }
            Step::Forward { slot } => {
                let rewritten = exchange.rewrite().ok_or(u32::MAX).and_then(|rewrite| {
                    for name in rewrite.removals() {
                        host.remove_header(MapType::RequestHeaders, name)
                            .map_err(|e| e.0)?;
                    }
                    for (name, value) in rewrite.secret_headers() {
                        host.replace_header(MapType::RequestHeaders, name, value.as_bytes())
                            .map_err(|e| e.0)?;
                    }
                    Ok(())
                });
                if let Err(status) = rewritten {
                    let message =
                        format!("Could not rewrite the request's credentials (status {status}).");
                    let step = exchange.fail(bp, message);
                    return self.perform(host, plugin, step, resume);
                }
                plugin.metrics.count(host, Some(slot), Reason::Allowed);
                if !resume {
                    return Action::Continue;
                }
                if let Err(e) = host.resume_request() {
                    host.log(
                        Level::Error,
                        &format!(
                            "could not resume a granted request (status {}); resetting it",
                            e.0
                        ),
                    );
                    // Never delivered: the exchange releases what was reserved.
                    let _ = exchange.fail(bp, "The granted request could not be resumed.".into());
                    let _ = host.reset_request();
                }
                Action::Pause
            }
        }
    }
}

/// Counts, logs and sends a refusal.
fn deny<H: Host>(host: &H, plugin: &Plugin, reply: Reply) {
    plugin.metrics.count(host, reply.slot, reply.reason);
    if reply.ledger_failed {
        host.increment(plugin.metrics.ledger.reserve_failed, 1);
    }
    if reply.is_failure() {
        host.log(Level::Error, &reply.message);
    } else if plugin.debug.get() {
        let token = reply.token_id.as_deref().unwrap_or("-");
        host.log(
            Level::Debug,
            &format!("denied {} token={token}", reply.reason),
        );
    }
    let response = &reply.response;
    send_or_reset(host, response.status, &response.headers, &response.body);
}

/// Reads the whole request body Envoy holds and gives it to the exchange.
fn read_body<H: Host>(
    host: &H,
    exchange: &mut Exchange,
    bp: &bridle_core::exchange::Blueprint,
    counter: &SharedCounter<'_, H>,
    size: usize,
) -> Step {
    match host.buffer(BufferType::RequestBody, 0, size) {
        Ok(body) => exchange.on_body(
            bp,
            counter,
            Body::Complete(body.as_deref().unwrap_or_default()),
        ),
        Err(e) => exchange.fail(
            bp,
            format!("Could not read the request body (status {}).", e.0),
        ),
    }
}

fn response_status<H: Host>(host: &H) -> Option<u16> {
    let value = host
        .header_value(MapType::ResponseHeaders, ":status")
        .ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Sends a local reply; if even that fails, resets the stream rather than leave it hanging
/// or let it through.
fn send_or_reset<H: Host>(host: &H, status: u16, headers: &[(&'static str, String)], body: &str) {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    if host
        .send_response(status, &headers, body.as_bytes())
        .is_err()
    {
        host.log(
            Level::Error,
            "could not send a local reply; resetting the stream",
        );
        let _ = host.reset_request();
    }
}

/// Without a configuration (Envoy normally refuses to start one), refuse everything.
fn refuse_unconfigured<H: Host>(host: &H) -> Action {
    let body =
        r#"{"error":{"type":"api_error","code":"internal","message":"Bridle is not configured."}}"#;
    send_or_reset(
        host,
        500,
        &[
            ("content-type", "application/json".into()),
            ("x-bridle-reason", "internal".into()),
        ],
        body,
    );
    Action::Pause
}
