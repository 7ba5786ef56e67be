//! One HTTP request through the filter.
//!
//! ```text
//! headers ── deny ─────────────────────────────────────────► local reply
//!    │  allow, free ─────────────────────────────────────────► rewrite, forward
//!    │  allow, free, loop breaker ─► whole body ─► fingerprint ─► rewrite, forward
//!    └─ allow, costed ─► whole body ─► price ─► reserve ─┬─ granted ─► rewrite, resume
//!                                                        └─ refused, error, timeout ─► local reply
//! response ─► (settle amount from the body, when the rule says) ─► on_log: settle, audit
//! ```
//!
//! Every outcome goes through [`Stream::deny`] or [`Stream::forward`]: a hostcall that fails
//! half-way through a rewrite turns into a denial, and a denial that cannot be sent resets
//! the stream. Nothing is ever forwarded by default, and nothing waits without a deadline:
//! the ledger callout carries the link's timeout, and its error, timeout or non-2xx denies.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;

use bridle_core::cost::{AmountField, CostRule};
use bridle_core::decision::{Denial, Grant, Request, Subject};
use bridle_core::ledger_api::{
    AuditRecord, ReserveRequest, ReserveResponse, Settle, SettleOutcome, RESERVE_PATH,
};
use bridle_core::loop_breaker::Verdict;
use bridle_core::money::Usd;
use bridle_core::policy::{CompiledPolicy, FailureMode};
use bridle_core::Reason;
use proxy_wasm::types::Action;

use crate::host::{BufferType, Headers, Host, Level, MapType};
use crate::plugin::{Ledger, Plugin};
use crate::reports::Item;

/// Largest request body read to price a call; larger costed requests are refused.
pub const MAX_BODY: usize = 1 << 20;
/// Largest response body read to settle a call; a larger one settles at the reservation.
pub const MAX_RESPONSE_BODY: usize = 1 << 20;
/// Longest idempotency key passed to the ledger (Stripe's own limit).
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A request whose body Bridle reads before deciding: a costed one (to price it), or one
/// whose policy watches for identical repeats (to fingerprint it).
struct Pending {
    grant: Grant,
    costed: bool,
    raw_path: Vec<u8>,
    content_type: Option<Vec<u8>>,
    idempotency_key: Option<String>,
}

struct Reserved {
    id: String,
    replay: bool,
    settle: Option<AmountField>,
}

enum Phase {
    /// No headers seen: Envoy refused the request before the filter ran, or it is starting.
    Start,
    Denied,
    AwaitingBody(Box<Pending>),
    Reserving {
        costed: Box<Pending>,
        call: u32,
    },
    Forwarded,
    ReadingResponse,
}

pub struct Stream {
    plugin: Option<Rc<Plugin>>,
    phase: Phase,
    request_id: String,
    started_ms: u64,
    reason: Reason,
    subject: Option<Subject>,
    method: String,
    path: String,
    merchant: Option<String>,
    reservation: Option<Reserved>,
    /// Reserved (or, once known, settled) cost.
    cost: Option<Usd>,
    settled_amount: Option<Usd>,
    status: Option<u16>,
    response_content_type: Option<Vec<u8>>,
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

fn now_ms<H: Host>(host: &H) -> u64 {
    host.now_nanos().map_or(0, |n| n / 1_000_000)
}

fn fingerprint(method: &str, raw_path: &[u8], body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    (method, raw_path, body).hash(&mut h);
    h.finish()
}

fn cost_rule<'a>(plugin: &'a Plugin, grant: &Grant) -> Option<(&'a CompiledPolicy, &'a CostRule)> {
    let policy = plugin.gate.config().policy(grant.subject.policy_index)?;
    let rule = policy
        .policy
        .endpoints
        .get(grant.endpoint_index)?
        .cost
        .as_ref()?;
    Some((policy, rule))
}

impl Stream {
    pub fn new(plugin: Option<Rc<Plugin>>) -> Stream {
        Stream {
            plugin,
            phase: Phase::Start,
            request_id: String::new(),
            started_ms: 0,
            reason: Reason::ProxyRejected,
            subject: None,
            method: String::new(),
            path: String::new(),
            merchant: None,
            reservation: None,
            cost: None,
            settled_amount: None,
            status: None,
            response_content_type: None,
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
        self.started_ms = now_ms(host);
        self.request_id = plugin.ids.next();
        let headers = match host.header_map(MapType::RequestHeaders) {
            Ok(h) => h,
            Err(e) => {
                return self.deny(
                    host,
                    &plugin,
                    Denial::new(
                        Reason::Internal,
                        format!("Could not read the request (status {}).", e.0),
                    ),
                    None,
                )
            }
        };
        ablate!(1);
        self.method =
            String::from_utf8_lossy(header(&headers, ":method").unwrap_or_default()).into_owned();
        self.path = audit_path(header(&headers, ":path").unwrap_or_default());
        let decision = {
            let revocations = plugin.ledger.as_ref().map(|l| l.revocations.borrow());
            let empty = bridle_core::revocation::RevocationSet::default();
            let set = revocations.as_ref().map_or(&empty, |r| &r.set);
            plugin
                .gate
                .decide(&Request { headers: &headers }, self.started_ms / 1000, set)
        };
        let grant = match decision {
            Ok(grant) => grant,
            Err(denial) => return self.deny(host, &plugin, denial, None),
        };
        ablate!(2);
        self.subject = Some(grant.subject.clone());
        self.path = grant.path.clone();
        self.merchant = grant.merchant.clone();
        let Some(policy) = plugin.gate.config().policy(grant.subject.policy_index) else {
            return self.deny(
                host,
                &plugin,
                Denial::new(Reason::Internal, "policy index"),
                None,
            );
        };
        let costed = cost_rule(&plugin, &grant).is_some();

        if let Some(ledger) = &plugin.ledger {
            // Costed calls ask the ledger, which checks revocation itself; free calls rely on
            // the shared set, and a set nobody could refresh follows the policy.
            let fresh = ledger
                .revocations
                .borrow()
                .is_fresh(self.started_ms, ledger.link.max_staleness_ms);
            if !costed && !fresh && policy.policy.on_ledger_unavailable == FailureMode::Deny {
                let denial = Denial::new(
                    Reason::RevocationStale,
                    "Bridle cannot confirm this token is not revoked: the ledger has not answered recently.",
                );
                return self.deny(host, &plugin, with_subject(denial, &grant), None);
            }
        }
        let raw_path = header(&headers, ":path").unwrap_or_default().to_vec();
        let watch_repeats = policy.policy.loop_breaker.is_some();
        if !costed && (end_of_stream || !watch_repeats) {
            // The whole request is known now, or its body would not change the decision.
            let fp = end_of_stream.then(|| fingerprint(&grant.method, &raw_path, &[]));
            if let Some(action) = self.loop_check(host, &plugin, policy, &grant, fp) {
                return action;
            }
            return self.forward(host, &plugin, &grant);
        }
        let pending = Box::new(Pending {
            costed,
            content_type: header(&headers, "content-type").map(<[u8]>::to_vec),
            idempotency_key: header(&headers, "idempotency-key")
                .and_then(|k| std::str::from_utf8(k).ok())
                .filter(|k| {
                    !k.is_empty()
                        && k.len() <= MAX_IDEMPOTENCY_KEY
                        && k.bytes().all(|b| (0x20..0x7f).contains(&b))
                })
                .map(String::from),
            raw_path,
            grant,
        });
        if end_of_stream {
            return self.with_body(host, &plugin, pending, Some(&[]));
        }
        // Headers wait here while the body is buffered (the Envoy config sets
        // allow_on_headers_stop_iteration so that body callbacks still arrive).
        self.phase = Phase::AwaitingBody(pending);
        Action::Pause
    }

    /// Decides once the body is read: price and reserve a costed call, or fingerprint a free
    /// one for the loop breaker and let it go. `None`: too large to read.
    fn with_body<H: Host>(
        &mut self,
        host: &H,
        plugin: &Plugin,
        pending: Box<Pending>,
        body: Option<&[u8]>,
    ) -> Action {
        if pending.costed {
            return match body {
                Some(body) => self.reserve(host, plugin, pending, body),
                None => {
                    let denial = Denial::new(
                        Reason::BodyTooLarge,
                        format!("A costed request's body may be at most {MAX_BODY} bytes."),
                    );
                    self.deny(host, plugin, with_subject(denial, &pending.grant), None)
                }
            };
        }
        let Some(policy) = plugin
            .gate
            .config()
            .policy(pending.grant.subject.policy_index)
        else {
            return self.deny(
                host,
                plugin,
                with_subject(
                    Denial::new(Reason::Internal, "policy index"),
                    &pending.grant,
                ),
                None,
            );
        };
        // A body too large to read still counts against the rate, just unfingerprinted.
        let fp = body.map(|b| fingerprint(&pending.grant.method, &pending.raw_path, b));
        if let Some(action) = self.loop_check(host, plugin, policy, &pending.grant, fp) {
            return action;
        }
        self.forward(host, plugin, &pending.grant)
    }

    pub fn on_request_body<H: Host>(
        &mut self,
        host: &H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            return Action::Pause;
        };
        match std::mem::replace(&mut self.phase, Phase::Start) {
            Phase::AwaitingBody(pending) => {
                if body_size > MAX_BODY {
                    return self.with_body(host, &plugin, pending, None);
                }
                if !end_of_stream {
                    self.phase = Phase::AwaitingBody(pending);
                    return Action::Pause;
                }
                match host.buffer(BufferType::RequestBody, 0, body_size) {
                    Ok(body) => {
                        self.with_body(host, &plugin, pending, Some(&body.unwrap_or_default()))
                    }
                    Err(e) => {
                        let denial = Denial::new(
                            Reason::Internal,
                            format!("Could not read the request body (status {}).", e.0),
                        );
                        self.deny(host, &plugin, with_subject(denial, &pending.grant), None)
                    }
                }
            }
            phase @ (Phase::Denied | Phase::Reserving { .. }) => {
                self.phase = phase;
                Action::Pause
            }
            phase => {
                self.phase = phase;
                Action::Continue
            }
        }
    }

    /// Prices the request and asks the ledger to reserve it.
    fn reserve<H: Host>(
        &mut self,
        host: &H,
        plugin: &Plugin,
        costed: Box<Pending>,
        body: &[u8],
    ) -> Action {
        let grant = &costed.grant;
        let Some((policy, rule)) = cost_rule(plugin, grant) else {
            return self.deny(
                host,
                plugin,
                with_subject(Denial::new(Reason::Internal, "cost rule"), grant),
                None,
            );
        };
        // Vendors such as Stripe merge query parameters into a POST's parameters: a price
        // read from the body alone could be overruled by `?amount=...`. Costed calls carry
        // everything in the body.
        if costed
            .raw_path
            .split(|b| *b == b'?')
            .nth(1)
            .is_some_and(|q| !q.is_empty())
        {
            let denial = Denial::new(
                Reason::CostUndetermined,
                "A costed request must carry its parameters in the body, not the URL.",
            );
            return self.deny(host, plugin, with_subject(denial, grant), None);
        }
        let fp = Some(fingerprint(&grant.method, &costed.raw_path, body));
        if let Some(action) = self.loop_check(host, plugin, policy, grant, fp) {
            return action;
        }
        let estimate = match rule.estimate(&policy.policy.fx, costed.content_type.as_deref(), body)
        {
            Ok(e) => e,
            Err(e) => {
                return self.deny(
                    host,
                    plugin,
                    with_subject(Denial::new(e.reason, e.message), grant),
                    None,
                )
            }
        };
        self.cost = Some(estimate.reserve);
        let Some(ledger) = &plugin.ledger else {
            return self.deny(
                host,
                plugin,
                with_subject(
                    Denial::new(Reason::LedgerUnavailable, "No ledger is configured."),
                    grant,
                ),
                None,
            );
        };
        let request = ReserveRequest {
            token: grant.credential.clone(),
            request_id: self.request_id.clone(),
            method: grant.method.clone(),
            path: grant.path.clone(),
            merchant: grant.merchant.clone(),
            amount: estimate.reserve,
            detail: estimate.detail,
            idempotency_key: costed.idempotency_key.clone(),
            digest: None,
        };
        let body = match serde_json::to_vec(&request) {
            Ok(b) => b,
            Err(_) => {
                return self.deny(
                    host,
                    plugin,
                    with_subject(
                        Denial::new(Reason::Internal, "encoding the reservation"),
                        grant,
                    ),
                    None,
                )
            }
        };
        match call_ledger(host, ledger, "POST", RESERVE_PATH, &body) {
            Ok(call) => {
                self.phase = Phase::Reserving { costed, call };
                Action::Pause
            }
            Err(status) => {
                host.increment(plugin.metrics.ledger.reserve_failed, 1);
                let denial = Denial::new(
                    Reason::LedgerUnavailable,
                    format!("Bridle could not reach its ledger (status {status})."),
                );
                self.deny(host, plugin, with_subject(denial, grant), None)
            }
        }
    }

    /// The ledger's answer to a reservation.
    pub fn on_call_response<H: Host>(&mut self, host: &H, call: u32, body_size: usize) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let costed = match std::mem::replace(&mut self.phase, Phase::Start) {
            Phase::Reserving {
                costed,
                call: expected,
            } if expected == call => costed,
            phase => {
                self.phase = phase;
                return;
            }
        };
        let answer = read_call_response(host, body_size).and_then(|body| {
            serde_json::from_slice::<ReserveResponse>(&body)
                .map_err(|_| "The ledger's answer was unreadable.".to_string())
        });
        match answer {
            Err(why) => {
                host.increment(plugin.metrics.ledger.reserve_failed, 1);
                let denial = Denial::new(Reason::LedgerUnavailable, why);
                self.deny(host, &plugin, with_subject(denial, &costed.grant), None);
                // Never forwarded: if the ledger did reserve, release it.
                self.reservation = Some(Reserved {
                    id: self.request_id.clone(),
                    replay: false,
                    settle: None,
                });
            }
            Ok(ReserveResponse::Denied { reason, message }) => {
                let denial = Denial::new(reason, message);
                self.deny(host, &plugin, with_subject(denial, &costed.grant), None);
            }
            Ok(ReserveResponse::Granted {
                reservation,
                replay,
            }) => {
                let settle = cost_rule(&plugin, &costed.grant).and_then(|(_, r)| r.settle.clone());
                self.reservation = Some(Reserved {
                    id: reservation,
                    replay,
                    settle,
                });
                if self.forward(host, &plugin, &costed.grant) == Action::Continue {
                    if let Err(e) = host.resume_request() {
                        host.log(
                            Level::Error,
                            &format!(
                                "could not resume a granted request (status {}); resetting it",
                                e.0
                            ),
                        );
                        self.phase = Phase::Denied;
                        let _ = host.reset_request();
                    }
                }
            }
        }
    }

    pub fn on_response_headers<H: Host>(&mut self, host: &H, end_of_stream: bool) -> Action {
        // Only a settle rule needs the response now; the audit record reads the status at
        // the end of the stream. Nothing else is asked of the host on this path.
        let settles_from_body = matches!(self.phase, Phase::Forwarded)
            && self
                .reservation
                .as_ref()
                .is_some_and(|r| r.settle.is_some());
        if !settles_from_body || end_of_stream {
            return Action::Continue;
        }
        self.status = response_status(host);
        if self.status.is_some_and(|s| (200..300).contains(&s)) {
            self.response_content_type = host
                .header_value(MapType::ResponseHeaders, "content-type")
                .ok()
                .flatten();
            self.phase = Phase::ReadingResponse;
        }
        Action::Continue
    }

    pub fn on_response_body<H: Host>(
        &mut self,
        host: &H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !matches!(self.phase, Phase::ReadingResponse) {
            return Action::Continue;
        }
        if body_size > MAX_RESPONSE_BODY {
            host.log(
                Level::Warn,
                "response too large to settle from; settling at the reservation",
            );
            self.phase = Phase::Forwarded;
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.phase = Phase::Forwarded;
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let (Some(field), Some(subject)) = (
            self.reservation.as_ref().and_then(|r| r.settle.clone()),
            self.subject.clone(),
        ) else {
            return Action::Continue;
        };
        let fx = plugin
            .gate
            .config()
            .policy(subject.policy_index)
            .map(|p| p.policy.fx.clone())
            .unwrap_or_default();
        match host.buffer(BufferType::ResponseBody, 0, body_size) {
            Ok(Some(body)) => {
                match field.read_usd(&fx, self.response_content_type.as_deref(), &body) {
                    Ok(amount) => self.settled_amount = Some(amount),
                    Err(e) => host.log(
                        Level::Warn,
                        &format!(
                            "cannot settle from the response ({}); settling at the reservation",
                            e.message
                        ),
                    ),
                }
            }
            _ => host.log(
                Level::Warn,
                "cannot read the response to settle; settling at the reservation",
            ),
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
        let status = self.status.or_else(|| response_status(host));
        if matches!(self.phase, Phase::Start) {
            // Envoy answered before the filter ran (a malformed request): audit it anyway.
            if let Ok(headers) = host.header_map(MapType::RequestHeaders) {
                self.method =
                    String::from_utf8_lossy(header(&headers, ":method").unwrap_or_default())
                        .into_owned();
                self.path = audit_path(header(&headers, ":path").unwrap_or_default());
            }
            self.request_id = plugin.ids.next();
            self.started_ms = now_ms(host);
            plugin.metrics.count(host, None, Reason::ProxyRejected);
        }
        let forwarded = matches!(self.phase, Phase::Forwarded | Phase::ReadingResponse);
        let settle = match (&self.reservation, &self.phase) {
            (Some(r), _) if forwarded => Some(Settle {
                reservation: r.id.clone(),
                outcome: match status {
                    Some(200..=299) => SettleOutcome::Commit,
                    Some(400..=499) => SettleOutcome::Release,
                    // 5xx, no response, or a reset: the vendor may have acted.
                    _ => SettleOutcome::Hold,
                },
                amount: if matches!(status, Some(200..=299)) {
                    self.settled_amount
                } else {
                    None
                },
                replay: r.replay,
            }),
            // Reserved (or perhaps reserved) but never forwarded: release.
            (Some(r), _) => Some(Settle {
                reservation: r.id.clone(),
                outcome: SettleOutcome::Release,
                amount: None,
                replay: r.replay,
            }),
            (None, Phase::Reserving { .. }) => Some(Settle {
                reservation: self.request_id.clone(),
                outcome: SettleOutcome::Release,
                amount: None,
                replay: false,
            }),
            _ => None,
        };
        if let Some(s) = settle {
            report(host, &plugin, ledger, Item::Settle(s));
        }
        let record = AuditRecord {
            id: self.request_id.clone(),
            at_ms: self.started_ms,
            vendor: plugin.gate.vendor(),
            token_id: self.subject.as_ref().map(|s| s.token_id.clone()),
            label: self.subject.as_ref().map(|s| s.label.clone()),
            policy: self.subject.as_ref().map(|s| s.policy.clone()),
            method: self.method.clone(),
            path: self.path.clone(),
            status: status.unwrap_or(0),
            reason: if matches!(self.phase, Phase::Start) {
                Reason::ProxyRejected
            } else {
                self.reason
            },
            cost: if matches!(self.reason, Reason::Allowed) {
                self.settled_amount.or(self.cost)
            } else {
                None
            },
            reservation: self.reservation.as_ref().map(|r| r.id.clone()),
            merchant: self.merchant.clone(),
            replay: false,
        };
        report(host, &plugin, ledger, Item::Audit(Box::new(record)));
    }

    /// Counts the request against the policy's loop breaker; `Some` is the refusal.
    fn loop_check<H: Host>(
        &mut self,
        host: &H,
        plugin: &Plugin,
        policy: &CompiledPolicy,
        grant: &Grant,
        fp: Option<u64>,
    ) -> Option<Action> {
        let limits = policy.policy.loop_breaker.as_ref()?;
        let denial = match crate::loop_guard::check(host, limits, &grant.subject.token_id, fp, self.started_ms / 1000) {
            Ok(Verdict::Ok) => return None,
            Ok(Verdict::RateLimited { retry_after_secs }) => (
                Denial::new(
                    Reason::RateLimited,
                    format!("This token made more than {} requests in a minute; it may continue in {retry_after_secs}s.", limits.max_requests_per_minute),
                ),
                Some(retry_after_secs),
            ),
            Ok(Verdict::RepeatLimited { retry_after_secs }) => (
                Denial::new(
                    Reason::RepeatLimited,
                    format!("This token sent the same request more than {} times in a minute.", limits.max_identical_per_minute),
                ),
                Some(retry_after_secs),
            ),
            Err(e) => (Denial::new(Reason::Internal, format!("Could not count the request (status {}).", e.0)), None),
        };
        Some(self.deny(host, plugin, with_subject(denial.0, grant), denial.1))
    }

    /// Rewrites the credentials and lets the request go.
    fn forward<H: Host>(&mut self, host: &H, plugin: &Plugin, grant: &Grant) -> Action {
        let rewrite = || -> Result<(), u32> {
            let injection = plugin.injection(grant.subject.policy_index);
            for name in &grant.strip_headers {
                // A header the secret is about to replace needs no separate removal.
                if !injection.iter().any(|(n, _)| n == name) {
                    host.remove_header(MapType::RequestHeaders, name)
                        .map_err(|e| e.0)?;
                }
            }
            for (name, value) in injection {
                host.replace_header(MapType::RequestHeaders, name, value.as_bytes())
                    .map_err(|e| e.0)?;
            }
            Ok(())
        };
        if let Err(status) = rewrite() {
            let denial = Denial::new(
                Reason::Internal,
                format!("Could not rewrite the request's credentials (status {status})."),
            );
            return self.deny(host, plugin, with_subject(denial, grant), None);
        }
        self.reason = Reason::Allowed;
        self.phase = Phase::Forwarded;
        plugin
            .metrics
            .count(host, Some(grant.subject.policy_index), Reason::Allowed);
        Action::Continue
    }

    fn deny<H: Host>(
        &mut self,
        host: &H,
        plugin: &Plugin,
        denial: Denial,
        retry_after: Option<u64>,
    ) -> Action {
        self.phase = Phase::Denied;
        self.reason = denial.reason;
        if denial.subject.is_some() {
            self.subject = denial.subject.clone();
        }
        let policy = denial.subject.as_ref().map(|s| s.policy_index);
        plugin.metrics.count(host, policy, denial.reason);
        if matches!(denial.reason, Reason::Internal | Reason::LedgerUnavailable) {
            host.log(Level::Error, &denial.message);
        } else if plugin.debug.get() {
            let token = denial.subject.as_ref().map_or("-", |s| s.token_id.as_str());
            host.log(
                Level::Debug,
                &format!("denied {} token={token}", denial.reason),
            );
        }
        let response =
            plugin
                .gate
                .vendor()
                .error_response(denial.reason, &denial.message, retry_after);
        send_or_reset(host, response.status, &response.headers, &response.body);
        Action::Pause
    }
}

fn response_status<H: Host>(host: &H) -> Option<u16> {
    let value = host
        .header_value(MapType::ResponseHeaders, ":status")
        .ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Hands an item to the plugin's report buffer, counting what a full buffer had to forget.
fn report<H: Host>(host: &H, plugin: &Plugin, ledger: &Ledger, item: Item) {
    let dropped = match (item.encode(), ledger.reports.try_borrow_mut()) {
        (Some(encoded), Ok(mut buffer)) => buffer.push(encoded),
        _ => 1,
    };
    if dropped > 0 {
        host.increment(plugin.metrics.ledger.items_dropped, dropped as i64);
    }
}

fn with_subject(mut d: Denial, grant: &Grant) -> Denial {
    d.subject = Some(grant.subject.clone());
    d
}

/// A path fit for the audit log: printable, bounded, without the query (which may carry
/// personal data).
fn audit_path(raw: &[u8]) -> String {
    let path = raw.split(|b| *b == b'?').next().unwrap_or_default();
    let mut s: String = String::from_utf8_lossy(path)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(512)
        .collect();
    if s.is_empty() {
        s.push('-');
    }
    s
}

/// Starts a callout to the ledger with its deadline and credential.
pub fn call_ledger<H: Host>(
    host: &H,
    ledger: &Ledger,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<u32, u32> {
    let authorization = format!("Bearer {}", ledger.enforcer_key);
    let deadline = (now_ms(host) + ledger.link.timeout_ms).to_string();
    let headers = [
        (":method", method),
        (":path", path),
        (":authority", ledger.link.authority.as_str()),
        ("content-type", "application/json"),
        ("authorization", authorization.as_str()),
        (bridle_core::ledger_api::DEADLINE_HEADER, deadline.as_str()),
    ];
    host.dispatch(&ledger.link.cluster, &headers, body, ledger.link.timeout_ms)
        .map_err(|e| e.0)
}

/// The body of a 200 answer to a callout, or why there is none.
pub fn read_call_response<H: Host>(host: &H, body_size: usize) -> Result<Vec<u8>, String> {
    let headers = host
        .header_map(MapType::CallResponseHeaders)
        .map_err(|_| "The ledger did not answer.".to_string())?;
    let status = header(&headers, ":status")
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
