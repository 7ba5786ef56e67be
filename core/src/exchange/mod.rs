//! The request path, top to bottom: one [`Exchange`] carries a request from its headers to
//! its settle and audit record, as data.
//!
//! ```text
//! begin (headers) ── deny ───────────────────────────────────────────────────► Refuse
//!    │  allow, free ──────────────────────────────────────────────────────────► Forward
//!    │  allow, free, loop breaker ─► ReadBody ─► on_body: count ──────────────► Forward
//!    └─ allow, costed ─► ReadBody ─► on_body: count, price ─► Reserve ─► on_reservation
//!                                                        granted ─► Forward ┘  └─ refused ─► Refuse
//! on_response_head ─► (settle rule: on_response_body reads the amount) ─► finish: settle, audit
//! ```
//!
//! A call priced by tokens (`tokens.rs`) takes one more step before its reservation, when
//! Bridle writes into its body ([`Step::RewriteBody`]: an output maximum, a stream's usage
//! option), and its response is watched as it passes ([`Exchange::on_response_chunk`]) for
//! the usage it settles at.
//!
//! The filter's adapter (`src/stream.rs`) does what each [`Step`] asks — buffer the body, call
//! the ledger, rewrite the headers, send a reply — and feeds what it read back in. Nothing here
//! touches a host: the clock, the request and the ledger's answers arrive as arguments, the
//! loop breaker's counts behind the [`Counter`] trait. Each phase holds only its own data, so
//! an exchange cannot be, say, forwarded without a decision or settled without a reservation.
//!
//! The rules that hold throughout: nothing is forwarded by default (every path ends in
//! [`Step::Forward`] only after a grant); a costed call is forwarded only once the ledger has
//! reserved it; anything that cannot be read or decided refuses, in the vendor's own format.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::config::{CompiledConfig, FilterConfig, LedgerLink};
use crate::cost::{AmountField, CostRule, Pricing};
use crate::decision::{Denial, Gate, Grant, Request, Subject};
use crate::idempotency::{self, Reserved};
use crate::lease::{LeaseBook, Spend};
use crate::ledger_api::{AuditRecord, ReserveRequest, ReserveResponse, Settle, SettleOutcome};
use crate::llm::Quote;
use crate::loop_breaker::{Counter, Verdict};
use crate::money::Usd;
use crate::policy::FailureMode;
use crate::revocation::RevocationSet;
use crate::settlement::outcome_for_status;
use crate::token::PublicKeys;
use crate::token_scan::{self, TokenScan};
use crate::vendor::{ErrorResponse, Vendor};
use crate::Reason;

mod tokens;

pub use tokens::ResponseBody;
use tokens::TokenCall;

/// Largest request body read to price a call; larger costed requests are refused.
pub const MAX_BODY: usize = 1 << 20;
/// Largest response body read to settle a call; a larger one settles at the reservation.
pub const MAX_RESPONSE_BODY: usize = 1 << 20;
/// Longest path kept in the audit log.
const MAX_AUDIT_PATH: usize = 512;

/// Everything fixed for one listener: the checked policies with their secrets, the public
/// keys that verify tokens, and the ledger link. Built once per configuration; every exchange reads it.
pub struct Blueprint {
    gate: Gate,
}

impl Blueprint {
    /// Builds the blueprint from the plugin configuration and the filter's environment (the
    /// token public keys and each policy's vendor secret). Any problem refuses the whole configuration,
    /// with a message that names the field or variable at fault and never a secret.
    pub fn configure(
        bytes: Option<&[u8]>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Blueprint, String> {
        let bytes = bytes.ok_or("no plugin configuration: render one with `bridle render`")?;
        let config = FilterConfig::from_plugin_bytes(bytes).map_err(|e| e.to_string())?;
        let compiled = config.compile().map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let keys_env = &compiled.public_keys_env;
        let spec = env(keys_env).ok_or_else(|| {
            format!("environment variable {keys_env} (the token public keys) is not set")
        })?;
        let keys = PublicKeys::parse(&spec).map_err(|e| format!("{keys_env}: {e}"))?;
        let compiled = compiled.with_secrets(env)?;
        Ok(Blueprint {
            gate: Gate::new(compiled, keys),
        })
    }

    pub fn vendor(&self) -> Vendor {
        self.gate.vendor()
    }

    pub fn config(&self) -> &CompiledConfig {
        self.gate.config()
    }

    pub fn ledger(&self) -> Option<&LedgerLink> {
        self.config().ledger.as_ref()
    }

    /// A reply in the vendor's format; `slot` is the policy's, when a genuine token named one.
    fn reply(&self, denial: Denial, retry_after: Option<u64>) -> Reply {
        Reply {
            response: self
                .vendor()
                .error_response(denial.reason, &denial.message, retry_after),
            reason: denial.reason,
            slot: denial.subject.as_ref().map(|s| s.slot),
            token_id: denial.subject.map(|s| s.token_id),
            message: denial.message,
            ledger_failed: false,
        }
    }
}

/// A request's head as it arrived, and what the adapter knows of the world at that moment.
pub struct Arrival<'a> {
    /// All headers, pseudo-headers included, names lowercase.
    pub headers: &'a [(String, Vec<u8>)],
    /// The headers are the whole request: there is no body.
    pub end_of_stream: bool,
    pub now_ms: u64,
    /// Unique per request: the audit record's id, and a fresh reservation's.
    pub id: String,
    pub revocations: &'a RevocationSet,
    /// When some worker last heard from the ledger (ms), for the staleness rule.
    pub revocations_fresh_at_ms: u64,
}

/// What the adapter must do next.
#[derive(Debug)]
#[must_use]
pub enum Step {
    /// Apply [`Exchange::rewrite`] to the request headers and let the request go (resume it,
    /// if it was held). Count it as allowed under the policy's `slot`.
    Forward { slot: usize },
    /// Answer with this reply; the request goes no further.
    Refuse(Reply),
    /// Hold the headers and buffer the body, up to [`MAX_BODY`], then call
    /// [`Exchange::on_body`].
    ReadBody,
    /// Send this reservation (JSON) to the ledger, then call [`Exchange::on_reservation`] with
    /// its answer, or [`Exchange::on_reservation_unsent`] if it could not be sent.
    Reserve(Vec<u8>),
    /// A call its policy may spend from a lease: call [`Exchange::on_lease`] with the
    /// worker's [`LeaseBook`], which forwards it or asks the ledger for a lease.
    Lease,
    /// Replace the buffered request body with this one (and its `content-length`), then call
    /// [`Exchange::on_body_rewritten`].
    RewriteBody(Vec<u8>),
}

/// A refusal, ready to send.
#[derive(Debug)]
pub struct Reply {
    pub response: ErrorResponse,
    pub reason: Reason,
    /// The policy's stats slot, when a genuine token named a policy.
    pub slot: Option<usize>,
    /// For a debug log line; never the token itself.
    pub token_id: Option<String>,
    /// What went wrong, in words fit for a log line (and already in the response).
    pub message: String,
    /// The ledger failed to answer a reservation (as opposed to refusing it).
    pub ledger_failed: bool,
}

impl Reply {
    /// Whether the refusal is Bridle's own failure, worth an error log line, rather than a
    /// decision about the request.
    pub fn is_failure(&self) -> bool {
        matches!(self.reason, Reason::Internal | Reason::LedgerUnavailable)
    }
}

/// What the adapter could read of a body.
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    Complete(&'a [u8]),
    /// Over the size the exchange asked for.
    TooLarge,
}

/// The headers to rewrite before the request goes to the vendor.
pub struct Rewrite<'a> {
    grant: &'a Grant,
    /// Headers removed for the exchange's own sake (a call priced by tokens asks for an
    /// uncompressed response, so that its usage can be read).
    extra: &'static [&'static str],
}

impl<'a> Rewrite<'a> {
    /// Client headers to remove: its credentials and anything else Bridle strips. A header
    /// the secret is about to replace needs no separate removal.
    pub fn removals(&self) -> impl Iterator<Item = &'a str> + 'a {
        let injection = self.grant.policy.injection();
        self.grant
            .strip_headers
            .iter()
            .filter(move |name| !injection.iter().any(|(n, _)| n == name))
            .map(String::as_str)
            .chain(self.extra.iter().copied())
    }

    /// Headers to set, carrying the vendor secret.
    pub fn secret_headers(&self) -> &'a [(&'static str, String)] {
        self.grant.policy.injection()
    }
}

/// The stream is over: what to tell the ledger.
#[derive(Debug)]
pub struct Finished {
    pub settle: Option<Settle>,
    pub audit: AuditRecord,
    /// A call spent from a lease settles there ([`LeaseBook::end`]), not with the ledger.
    pub lease: Option<(Spend, SettleOutcome)>,
}

/// One request through the proxy.
pub struct Exchange {
    id: String,
    started_ms: u64,
    /// As the request named them, for the audit log; the path becomes the matched path once
    /// the request is allowed.
    method: String,
    path: String,
    /// The tenant the request acts for, once a grant names it.
    merchant: Option<String>,
    phase: Phase,
}

enum Phase {
    /// Allowed on its headers, waiting for the body before the last word.
    ReadingBody(Box<Held>),
    /// Priced; the adapter writes Bridle's changes into the body before the reservation
    /// (encoded) is sent.
    RewritingBody(Box<Held>, Usd, Vec<u8>),
    /// Priced, to be spent from the worker's lease or reserved with one.
    Leasing(Box<Held>, Usd, Box<ReserveRequest>),
    /// Priced and sent to the ledger, waiting for its answer.
    Reserving(Box<Held>, Usd),
    /// Allowed, and on its way to the vendor or back.
    Forwarded(Box<Passage>),
    /// Refused: the reply is sent, and whatever the ledger may hold for it is released.
    Refused(Box<Refusal>),
}

impl Default for Refusal {
    /// A placeholder while a transition takes the phase apart; every transition replaces it.
    fn default() -> Refusal {
        Refusal {
            reason: Reason::Internal,
            subject: None,
            release: None,
            lease: None,
        }
    }
}

/// A request allowed on its headers whose body Bridle reads before deciding.
struct Held {
    grant: Grant,
    raw_path: Vec<u8>,
    content_type: Option<Vec<u8>>,
    idempotency_key: Option<String>,
    /// A call priced by tokens, once its body is priced.
    quote: Option<Box<Quote>>,
    /// The worker's revocation set was fresh when the request arrived: a lease may be spent
    /// (the ledger, which checks revocations itself, is not asked).
    revocations_fresh: bool,
    /// A lease asked for by this call is spent from until then (the proxy's clock).
    lease_until_ms: Option<u64>,
    /// The reservation that asked for a lease, kept to ask for the token's next one with.
    lease_template: Option<Box<ReserveRequest>>,
}

struct Passage {
    grant: Grant,
    reservation: Option<Reservation>,
    status: Option<u16>,
    response: ResponseRead,
    /// A request forwarded before its body ended: the body streams through, scanned for a
    /// vault token as it goes.
    body_scan: Option<TokenScan>,
    tokens: Option<Box<TokenCall>>,
}

/// The money the ledger holds for a forwarded call.
struct Reservation {
    id: String,
    replay: bool,
    reserved: Usd,
    /// What the response said the call cost, when the rule reads it from there.
    settled: Option<Usd>,
    /// Spent from a lease: `id` is the lease's, which settles in the worker's book.
    lease: Option<Spend>,
}

#[derive(PartialEq, Eq)]
enum ResponseRead {
    /// Nothing to read: the status settles it.
    Status,
    /// A 2xx whose body says what the call cost; its content type.
    SettleBody(Option<Vec<u8>>),
}

struct Refusal {
    reason: Reason,
    subject: Option<Subject>,
    /// A reservation the ledger may hold although the request never left: released.
    release: Option<(String, bool)>,
    /// A call spent from a lease, and how it ends there: given back if it never left, spent
    /// if the vendor saw any of it.
    lease: Option<(Spend, SettleOutcome)>,
}

impl Exchange {
    /// A request's headers arrive: decide, or say what more is needed.
    pub fn begin(bp: &Blueprint, arrival: Arrival<'_>, counter: &dyn Counter) -> (Exchange, Step) {
        let raw_path = header(arrival.headers, ":path").unwrap_or_default();
        let mut exchange = Exchange {
            id: arrival.id,
            started_ms: arrival.now_ms,
            method: String::from_utf8_lossy(header(arrival.headers, ":method").unwrap_or_default())
                .into_owned(),
            path: audit_path(raw_path),
            merchant: None,
            // Replaced below by every outcome.
            phase: Phase::Refused(Box::default()),
        };
        let decision = bp.gate.decide(
            &Request {
                headers: arrival.headers,
            },
            arrival.now_ms / 1000,
            arrival.revocations,
        );
        let grant = match decision {
            Ok(grant) => grant,
            Err(denial) => {
                let step = exchange.refuse(bp, denial, None);
                return (exchange, step);
            }
        };
        exchange.path.clone_from(&grant.path);
        exchange.merchant.clone_from(&grant.merchant);
        let policy = &grant.policy.policy;
        let costed = grant.endpoint.cost.is_some();
        if let Some(api) = grant.endpoint.cost.as_ref().and_then(|c| c.tokens) {
            if let Err(e) = api.check_headers(arrival.headers) {
                let denial = Denial::new(e.reason, e.message);
                let step = exchange.refuse(bp, denial.about(&grant.subject), None);
                return (exchange, step);
            }
        }

        // Costed calls ask the ledger, which checks revocation itself; free calls rely on the
        // revocation set, and a set nobody could refresh follows the policy. So do calls
        // spent from a lease: a stale set sends them to the ledger.
        let mut stale = true;
        if let Some(link) = bp.ledger() {
            stale = arrival
                .now_ms
                .saturating_sub(arrival.revocations_fresh_at_ms)
                > link.max_staleness_ms;
            if !costed && stale && policy.on_ledger_unavailable == FailureMode::Deny {
                let denial = Denial::new(
                    Reason::RevocationStale,
                    "Bridle cannot confirm this token is not revoked: the ledger has not answered recently.",
                );
                let step = exchange.refuse(bp, denial.about(&grant.subject), None);
                return (exchange, step);
            }
        }
        let watch_repeats = policy.loop_breaker.is_some();
        if !costed && (arrival.end_of_stream || !watch_repeats) {
            // The whole request is known now, or its body would not change the decision.
            let fp = arrival
                .end_of_stream
                .then(|| fingerprint(&grant.method, raw_path, &[]));
            if let Some(step) = exchange.count(bp, counter, &grant, fp) {
                return (exchange, step);
            }
            let step = exchange.forward(grant, None, None);
            if !arrival.end_of_stream {
                exchange.stream_body();
            }
            return (exchange, step);
        }
        let held = Box::new(Held {
            content_type: header(arrival.headers, "content-type").map(<[u8]>::to_vec),
            idempotency_key: idempotency::key(
                bp.vendor(),
                &grant.method,
                &grant.path,
                arrival.headers,
            ),
            raw_path: raw_path.to_vec(),
            grant,
            quote: None,
            revocations_fresh: !stale,
            lease_until_ms: None,
            lease_template: None,
        });
        if arrival.end_of_stream {
            let step = exchange.with_body(bp, counter, held, Body::Complete(&[]));
            return (exchange, step);
        }
        exchange.phase = Phase::ReadingBody(held);
        (exchange, Step::ReadBody)
    }

    /// The request's headers could not even be read (`message` says why): refuse it.
    pub fn unreadable(
        bp: &Blueprint,
        id: String,
        now_ms: u64,
        message: String,
    ) -> (Exchange, Step) {
        let mut exchange = Exchange {
            id,
            started_ms: now_ms,
            method: String::new(),
            path: audit_path(b""),
            merchant: None,
            phase: Phase::Refused(Box::default()),
        };
        let step = exchange.refuse(bp, Denial::new(Reason::Internal, message), None);
        (exchange, step)
    }

    /// Whether the exchange waits for the body asked for by [`Step::ReadBody`].
    pub fn awaits_body(&self) -> bool {
        matches!(self.phase, Phase::ReadingBody(_))
    }

    /// Whether the request must stay where it is: refused, or waiting for the ledger.
    pub fn holds_request(&self) -> bool {
        matches!(
            self.phase,
            Phase::Refused(_)
                | Phase::Leasing(..)
                | Phase::Reserving(..)
                | Phase::RewritingBody(..)
        )
    }

    /// The body asked for by [`Step::ReadBody`] is read.
    pub fn on_body(&mut self, bp: &Blueprint, counter: &dyn Counter, body: Body<'_>) -> Step {
        match self.take_phase() {
            Phase::ReadingBody(held) => self.with_body(bp, counter, held, body),
            other => self.unexpected(bp, other, "a request body"),
        }
    }

    /// Decides once the body is read: price and reserve a costed call, or fingerprint a free
    /// one for the loop breaker and let it go.
    fn with_body(
        &mut self,
        bp: &Blueprint,
        counter: &dyn Counter,
        held: Box<Held>,
        body: Body<'_>,
    ) -> Step {
        if let Body::Complete(b) = body {
            if token_scan::contains_token(b) {
                return self.refuse(bp, token_elsewhere().about(&held.grant.subject), None);
            }
        }
        let endpoint = held.grant.endpoint.clone();
        let Some(rule) = endpoint.cost.as_ref() else {
            // A body too large to read still counts against the rate, just unfingerprinted,
            // and streams on, scanned as it goes.
            let fp = match body {
                Body::Complete(b) => Some(fingerprint(&held.grant.method, &held.raw_path, b)),
                Body::TooLarge => None,
            };
            if let Some(step) = self.count(bp, counter, &held.grant, fp) {
                return step;
            }
            let step = self.forward(held.grant, None, None);
            if matches!(body, Body::TooLarge) {
                self.stream_body();
            }
            return step;
        };
        let Body::Complete(body) = body else {
            let denial = Denial::new(
                Reason::BodyTooLarge,
                format!("A costed request's body may be at most {MAX_BODY} bytes."),
            );
            return self.refuse(bp, denial.about(&held.grant.subject), None);
        };
        let rule: &CostRule = rule;
        // Vendors such as Stripe merge query parameters into a POST's parameters: a price read
        // from the body alone could be overruled by `?amount=...`. Costed calls carry
        // everything in the body.
        if held
            .raw_path
            .split(|b| *b == b'?')
            .nth(1)
            .is_some_and(|q| !q.is_empty())
        {
            let denial = Denial::new(
                Reason::CostUndetermined,
                "A costed request must carry its parameters in the body, not the URL.",
            );
            return self.refuse(bp, denial.about(&held.grant.subject), None);
        }
        let fp = Some(fingerprint(&held.grant.method, &held.raw_path, body));
        if let Some(step) = self.count(bp, counter, &held.grant, fp) {
            return step;
        }
        let mut held = held;
        let pricing = Pricing::new(bp.vendor(), &held.grant.policy.policy.fx);
        let estimate = match rule.tokens {
            Some(api) => tokens::quote(api, bp, &held, body).map(|q| {
                let estimate = q.estimate();
                held.quote = Some(q);
                estimate
            }),
            None => rule.estimate(pricing, held.content_type.as_deref(), body),
        };
        let estimate = match estimate {
            Ok(e) => e,
            Err(e) => {
                let denial = Denial::new(e.reason, e.message);
                return self.refuse(bp, denial.about(&held.grant.subject), None);
            }
        };
        if bp.ledger().is_none() {
            let denial = Denial::new(Reason::LedgerUnavailable, "No ledger is configured.");
            return self.refuse(bp, denial.about(&held.grant.subject), None);
        }
        // A key binds to what was reserved: the ledger replays it only for the same digest.
        let digest = held.idempotency_key.as_ref().map(|_| {
            Reserved {
                vendor: bp.vendor(),
                method: &held.grant.method,
                path: &held.grant.path,
                merchant: held.grant.merchant.as_deref(),
                amount: estimate.reserve,
                detail: &estimate.detail,
                body,
            }
            .digest()
        });
        // A fixed price, known now and final, with no key the ledger must replay by: such
        // calls may share a lease (crate::lease).
        let lease = held.grant.policy.policy.lease.filter(|_| {
            rule.tokens.is_none() && rule.settle.is_none() && held.idempotency_key.is_none()
        });
        let request = ReserveRequest {
            token: held.grant.credential.clone(),
            request_id: self.id.clone(),
            method: held.grant.method.clone(),
            path: held.grant.path.clone(),
            merchant: held.grant.merchant.clone(),
            amount: estimate.reserve,
            detail: estimate.detail,
            idempotency_key: held.idempotency_key.clone(),
            digest,
            // A stale revocation set spends no lease, so asks for none: a lease asked for
            // here would skip the one-ask-at-a-time rule of `on_lease`.
            lease_calls: lease.filter(|_| held.revocations_fresh).map(|l| l.calls),
        };
        if lease.is_some() && held.revocations_fresh {
            self.phase = Phase::Leasing(held, estimate.reserve, Box::new(request));
            return Step::Lease;
        }
        self.encode_reservation(bp, held, estimate.reserve, &request)
    }

    /// A call asked for by [`Step::Lease`]: spent from the token's lease in `book` if it has
    /// room (forwarded at once), or reserved with the ledger as a new lease.
    pub fn on_lease(&mut self, bp: &Blueprint, book: &mut LeaseBook, now_ms: u64) -> Step {
        let (held, reserved, request) = match self.take_phase() {
            Phase::Leasing(held, reserved, request) => (held, reserved, request),
            other => return self.unexpected(bp, other, "a lease"),
        };
        match book.take(&held.grant.subject.token_id, reserved, now_ms) {
            Some(spend) => {
                let held = *held;
                self.forward(
                    held.grant,
                    Some(Reservation {
                        id: spend.lease.clone(),
                        replay: false,
                        reserved,
                        settled: None,
                        lease: Some(spend),
                    }),
                    None,
                )
            }
            None => {
                let mut held = held;
                let mut request = *request;
                let deadline = now_ms.saturating_add(bp.ledger().map_or(0, |l| l.timeout_ms));
                if book.may_ask(&held.grant.subject.token_id, now_ms, deadline) {
                    // Aged from now, when its request goes, not from the headers: after a
                    // slow upload it would be too old to serve any call but this one. The
                    // ledger counts it from later still, so no call is counted early by
                    // more than the age.
                    let lease = held.grant.policy.policy.lease;
                    held.lease_until_ms = lease.map(|l| now_ms.saturating_add(l.max_age_ms));
                    held.lease_template = Some(Box::new(request.clone()));
                } else {
                    // Another call of the token is asking for a lease: this one reserves
                    // alone, rather than pile up leases the next grant would replace.
                    request.lease_calls = None;
                    held.lease_until_ms = None;
                }
                self.encode_reservation(bp, held, reserved, &request)
            }
        }
    }

    fn encode_reservation(
        &mut self,
        bp: &Blueprint,
        mut held: Box<Held>,
        reserved: Usd,
        request: &ReserveRequest,
    ) -> Step {
        match serde_json::to_vec(request) {
            Ok(encoded) => {
                let rewrite = held.quote.as_mut().and_then(|q| q.body.take());
                if let Some(body) = rewrite {
                    self.phase = Phase::RewritingBody(held, reserved, encoded);
                    return Step::RewriteBody(body);
                }
                self.phase = Phase::Reserving(held, reserved);
                Step::Reserve(encoded)
            }
            Err(_) => {
                let denial = Denial::new(Reason::Internal, "encoding the reservation");
                self.refuse(bp, denial.about(&held.grant.subject), None)
            }
        }
    }

    /// The body asked for by [`Step::RewriteBody`] is in place (`Err`: the hostcall's status,
    /// and the request is refused; nothing was reserved yet).
    pub fn on_body_rewritten(&mut self, bp: &Blueprint, written: Result<(), u32>) -> Step {
        match self.take_phase() {
            Phase::RewritingBody(held, reserved, encoded) => match written {
                Ok(()) => {
                    self.phase = Phase::Reserving(held, reserved);
                    Step::Reserve(encoded)
                }
                Err(status) => {
                    let mut denial = Denial::new(
                        Reason::Internal,
                        format!("Could not rewrite the request body (status {status})."),
                    );
                    denial.subject = Some(held.grant.subject.clone());
                    self.refuse(bp, denial, None)
                }
            },
            other => self.unexpected(bp, other, "a rewritten body"),
        }
    }

    /// The reservation could not even be sent (`why`): nothing was reserved.
    pub fn on_reservation_unsent(&mut self, bp: &Blueprint, why: &str) -> Step {
        match self.take_phase() {
            Phase::Reserving(held, _) => {
                let denial = Denial::new(
                    Reason::LedgerUnavailable,
                    format!("Bridle could not reach its ledger ({why})."),
                );
                self.refuse(bp, denial.about(&held.grant.subject), None)
            }
            other => self.unexpected(bp, other, "an unsent reservation"),
        }
    }

    /// The ledger's answer to the reservation: its body on a 200, or why there is none. A
    /// lease granted opens in `book`, the worker's.
    pub fn on_reservation(
        &mut self,
        bp: &Blueprint,
        book: &mut LeaseBook,
        answer: Result<&[u8], String>,
    ) -> Step {
        let (held, reserved) = match self.take_phase() {
            Phase::Reserving(held, reserved) => (held, reserved),
            other => return self.unexpected(bp, other, "the ledger's answer"),
        };
        if held.lease_until_ms.is_some() {
            // Whatever the answer, the token's other calls may ask for a lease again.
            book.answered(&held.grant.subject.token_id);
        }
        let answer = answer.and_then(|body| {
            serde_json::from_slice::<ReserveResponse>(body)
                .map_err(|_| "The ledger's answer was unreadable.".to_string())
        });
        match answer {
            Err(why) => {
                let denial = Denial::new(Reason::LedgerUnavailable, why);
                // Never forwarded: if the ledger did reserve, release it.
                let release = Some((self.id.clone(), false));
                let mut step =
                    self.refuse_releasing(bp, denial.about(&held.grant.subject), release);
                if let Step::Refuse(reply) = &mut step {
                    reply.ledger_failed = true;
                }
                step
            }
            Ok(ReserveResponse::Denied {
                reason,
                message,
                retry_after_secs,
            }) => self.refuse(
                bp,
                Denial::new(reason, message).about(&held.grant.subject),
                retry_after_secs,
            ),
            Ok(ReserveResponse::Granted {
                reservation,
                replay,
                leased_calls,
            }) => {
                let mut held = *held;
                // Only a lease this call asked for opens; anything else is a plain reservation.
                // Never more calls than the policy's, whatever the answer says.
                let policy_lease = held.grant.policy.policy.lease;
                let most = policy_lease.map_or(1, |l| l.calls);
                let template = held
                    .lease_template
                    .take()
                    .zip(policy_lease)
                    .map(|(r, l)| (*r, l.max_age_ms));
                let lease = leased_calls
                    .zip(held.lease_until_ms)
                    .filter(|_| !replay)
                    .map(|(calls, until_ms)| (calls.min(most), until_ms))
                    .map(|(calls, until_ms)| {
                        book.open(
                            &held.grant.subject.token_id,
                            &reservation,
                            reserved,
                            calls,
                            until_ms,
                            template,
                        )
                    });
                self.forward(
                    held.grant,
                    Some(Reservation {
                        id: reservation,
                        replay,
                        reserved,
                        settled: None,
                        lease,
                    }),
                    held.quote.map(|q| Box::new(TokenCall::new(q))),
                )
            }
        }
    }

    /// Whether the request was forwarded before its body ended: the adapter feeds each
    /// piece of the body to [`Exchange::on_body_chunk`] before letting it through, and holds
    /// back the last [`Exchange::body_pending`] bytes until it has seen what follows.
    pub fn streams_body(&self) -> bool {
        matches!(&self.phase, Phase::Forwarded(p) if p.body_scan.is_some())
    }

    /// The next piece of a body that streams through ([`Exchange::streams_body`]). `Some` is
    /// the refusal: the piece (with everything held back) must not be let through.
    pub fn on_body_chunk(&mut self, bp: &Blueprint, chunk: &[u8]) -> Option<Step> {
        let Phase::Forwarded(p) = &mut self.phase else {
            return None;
        };
        let scan = p.body_scan.as_mut()?;
        if !scan.feed(chunk) {
            return None;
        }
        let subject = p.grant.subject.clone();
        Some(self.refuse_forwarded(bp, token_elsewhere().about(&subject)))
    }

    /// How many bytes at the end of the body streamed so far could begin a vault token: they
    /// wait for the next piece (or the end of the body) before they go.
    pub fn body_pending(&self) -> usize {
        match &self.phase {
            Phase::Forwarded(p) => p.body_scan.as_ref().map_or(0, TokenScan::pending),
            _ => 0,
        }
    }

    /// The request's trailers arrived (after the body, which has then ended). Trailers are
    /// refused wherever the request is: no vendor SDK sends them, and what a vendor makes of
    /// them (merged into the headers or not) is not Bridle's to guess. `None` when there are
    /// none, or the request is already refused: the body has simply ended.
    pub fn on_trailers(&mut self, bp: &Blueprint, trailers: &[(String, Vec<u8>)]) -> Option<Step> {
        if trailers.is_empty() {
            return None;
        }
        let denial = Denial::new(
            Reason::TrailersNotAllowed,
            "Request trailers are refused: send everything in the headers and the body.",
        );
        match self.take_phase() {
            Phase::ReadingBody(held)
            | Phase::RewritingBody(held, ..)
            | Phase::Leasing(held, ..) => {
                Some(self.refuse(bp, denial.about(&held.grant.subject), None))
            }
            // Reserved perhaps, never forwarded: released.
            Phase::Reserving(held, _) => {
                let release = Some((self.id.clone(), false));
                Some(self.refuse_releasing(bp, denial.about(&held.grant.subject), release))
            }
            // Forwarded while its body streamed (a costed call only ever goes once its body
            // and trailers are in): the trailers stop here and the vendor sees a request cut
            // short.
            Phase::Forwarded(p) => {
                let denial = denial.about(&p.grant.subject);
                self.phase = Phase::Forwarded(p);
                Some(self.refuse_forwarded(bp, denial))
            }
            refused @ Phase::Refused(_) => {
                self.phase = refused;
                None
            }
        }
    }

    /// The rewrite a [`Step::Forward`] asks for.
    pub fn rewrite(&self) -> Option<Rewrite<'_>> {
        match &self.phase {
            Phase::Forwarded(p) => Some(Rewrite {
                grant: &p.grant,
                // The response must arrive readable for its usage to be read.
                extra: if p.tokens.is_some() {
                    &["accept-encoding"]
                } else {
                    &[]
                },
            }),
            _ => None,
        }
    }

    /// The adapter could not carry out a step (a hostcall failed): refuse, and release
    /// whatever the ledger holds or may hold, since the request did not leave.
    pub fn fail(&mut self, bp: &Blueprint, message: String) -> Step {
        let mut lease = None;
        let (subject, release) = match &self.phase {
            Phase::ReadingBody(held)
            | Phase::RewritingBody(held, ..)
            | Phase::Leasing(held, ..) => (Some(held.grant.subject.clone()), None),
            Phase::Reserving(held, _) => (
                Some(held.grant.subject.clone()),
                Some((self.id.clone(), false)),
            ),
            // Its body streaming, the vendor may have seen part of it: as `refuse_forwarded`.
            Phase::Forwarded(p) if p.body_scan.is_some() => {
                lease = p
                    .reservation
                    .as_ref()
                    .and_then(|r| r.lease.clone())
                    .map(|spend| (spend, SettleOutcome::Hold));
                (Some(p.grant.subject.clone()), None)
            }
            Phase::Forwarded(p) => {
                lease = p
                    .reservation
                    .as_ref()
                    .and_then(|r| r.lease.clone())
                    .map(|spend| (spend, SettleOutcome::Release));
                let release = p
                    .reservation
                    .as_ref()
                    .filter(|r| r.lease.is_none())
                    .map(|r| (r.id.clone(), r.replay));
                (Some(p.grant.subject.clone()), release)
            }
            Phase::Refused(r) => {
                lease.clone_from(&r.lease);
                (r.subject.clone(), r.release.clone())
            }
        };
        let mut denial = Denial::new(Reason::Internal, message);
        denial.subject = subject;
        let step = self.refuse_releasing(bp, denial, release);
        if let Phase::Refused(refusal) = &mut self.phase {
            refusal.lease = lease;
        }
        step
    }

    /// Whether the response matters beyond its status: a settle rule reads its body, or a
    /// call priced by tokens its usage.
    pub fn wants_response(&self) -> bool {
        matches!(&self.phase, Phase::Forwarded(p)
            if p.reservation.is_some()
                && (p.tokens.is_some()
                    || p.grant.endpoint.cost.as_ref().is_some_and(|c| c.settle.is_some())))
    }

    /// The response's head, for a request that [`Exchange::wants_response`]. Says what to do
    /// with its body: buffer it (up to [`MAX_RESPONSE_BODY`]) for
    /// [`Exchange::on_response_body`], or watch it pass; `content_type` is read only if so.
    pub fn on_response_head(
        &mut self,
        status: Option<u16>,
        content_type: impl FnOnce() -> Option<Vec<u8>>,
    ) -> ResponseBody {
        let wants = self.wants_response();
        let Phase::Forwarded(p) = &mut self.phase else {
            return ResponseBody::Ignore;
        };
        p.status = status;
        if !(wants && status.is_some_and(|s| (200..300).contains(&s))) {
            return ResponseBody::Ignore;
        }
        if let Some(call) = p.tokens.as_mut() {
            return call.watch(content_type().as_deref());
        }
        p.response = ResponseRead::SettleBody(content_type());
        ResponseBody::Buffer
    }

    /// Whether the response body is being watched, chunk by chunk, as it passes.
    pub fn watching_response(&self) -> bool {
        matches!(&self.phase, Phase::Forwarded(p) if p.tokens.as_ref().is_some_and(|t| t.reader.is_some()))
    }

    /// A chunk of a response being watched could not be read (`why`): whatever the rest says,
    /// the usage can no longer be trusted, and the call settles at its reservation.
    pub fn on_response_unreadable(&mut self, why: String) {
        if let Phase::Forwarded(p) = &mut self.phase {
            if let Some(call) = p.tokens.as_mut() {
                call.spoil(why);
            }
        }
    }

    /// The next chunk of a response being watched; `end_of_stream` when the vendor's
    /// response is complete.
    pub fn on_response_chunk(&mut self, chunk: &[u8], end_of_stream: bool) {
        if let Phase::Forwarded(p) = &mut self.phase {
            if let Some(call) = p.tokens.as_mut() {
                call.feed(chunk);
                if end_of_stream {
                    call.end(true);
                }
            }
        }
    }

    /// The response body asked for by [`Exchange::on_response_head`] (`None`: it could not be
    /// read). Returns a warning for the log when the amount could not be read: the call then
    /// settles at the reservation.
    pub fn on_response_body(&mut self, bp: &Blueprint, body: Option<Body<'_>>) -> Option<String> {
        let Phase::Forwarded(p) = &mut self.phase else {
            return None;
        };
        let ResponseRead::SettleBody(content_type) =
            std::mem::replace(&mut p.response, ResponseRead::Status)
        else {
            return None;
        };
        let field: &AmountField = p.grant.endpoint.cost.as_ref()?.settle.as_ref()?;
        let reservation = p.reservation.as_mut()?;
        let body = match body {
            Some(Body::Complete(b)) => b,
            Some(Body::TooLarge) => {
                return Some(
                    "response too large to settle from; settling at the reservation".into(),
                )
            }
            None => {
                return Some(
                    "cannot read the response to settle; settling at the reservation".into(),
                )
            }
        };
        let pricing = Pricing::new(bp.vendor(), &p.grant.policy.policy.fx);
        match field.read_usd(pricing, content_type.as_deref(), body) {
            Ok(amount) => {
                reservation.settled = Some(amount);
                None
            }
            Err(e) => Some(format!(
                "cannot settle from the response ({}); settling at the reservation",
                e.message
            )),
        }
    }

    /// Whether the exchange is buffering a response body to settle from.
    pub fn reading_response(&self) -> bool {
        matches!(&self.phase, Phase::Forwarded(p) if p.response != ResponseRead::Status)
    }

    /// The response status, if the exchange has read it.
    pub fn status(&self) -> Option<u16> {
        match &self.phase {
            Phase::Forwarded(p) => p.status,
            _ => None,
        }
    }

    /// The stream is over, with `status` the agent got (`None`: no response): what the ledger
    /// must settle, and the audit record.
    pub fn finish(self, vendor: Vendor, status: Option<u16>) -> Finished {
        let release = |id: &str, replay: bool| Settle {
            reservation: id.to_string(),
            outcome: SettleOutcome::Release,
            amount: None,
            replay,
            usage: None,
        };
        // A stream that ended before Bridle decided (the agent went away while its body was
        // read or its reservation made) is audited as the proxy's.
        let mut llm = tokens::Audited::default();
        let mut lease = None;
        let (reason, cost, subject, reservation, settle, replay) = match self.phase {
            Phase::Forwarded(mut p) => {
                let outcome = outcome_for_status(status);
                if let (Some(call), Some(r)) = (p.tokens.take(), p.reservation.as_mut()) {
                    llm = call.audited(outcome, r);
                }
                lease = p
                    .reservation
                    .as_mut()
                    .and_then(|r| r.lease.take())
                    .map(|spend| (spend, outcome));
                let settle = p
                    .reservation
                    .as_ref()
                    .filter(|_| lease.is_none())
                    .map(|r| Settle {
                        reservation: r.id.clone(),
                        outcome,
                        amount: r.settled.filter(|_| outcome == SettleOutcome::Commit),
                        replay: r.replay,
                        usage: llm.usage.filter(|_| outcome == SettleOutcome::Commit),
                    });
                // A replay counts nothing new: its cost is the original's, audited there.
                let cost = p
                    .reservation
                    .as_ref()
                    .filter(|r| !r.replay)
                    .map(|r| r.settled.unwrap_or(r.reserved));
                let replay = p.reservation.as_ref().is_some_and(|r| r.replay);
                let reservation = p.reservation.map(|r| r.id);
                (
                    Reason::Allowed,
                    cost,
                    Some(p.grant.subject),
                    reservation,
                    settle,
                    replay,
                )
            }
            // Perhaps reserved, never answered: release.
            Phase::Reserving(held, _) => {
                let settle = Some(release(&self.id, false));
                (
                    Reason::ProxyRejected,
                    None,
                    Some(held.grant.subject),
                    None,
                    settle,
                    false,
                )
            }
            Phase::ReadingBody(held)
            | Phase::RewritingBody(held, ..)
            | Phase::Leasing(held, ..) => (
                Reason::ProxyRejected,
                None,
                Some(held.grant.subject),
                None,
                None,
                false,
            ),
            Phase::Refused(r) => {
                let settle = r.release.as_ref().map(|(id, replay)| release(id, *replay));
                let replay = r.release.as_ref().is_some_and(|(_, replay)| *replay);
                let mut reservation = r.release.map(|(id, _)| id);
                // A leased call the vendor saw part of is counted in its lease: audited so.
                let mut cost = None;
                if let Some((spend, SettleOutcome::Hold)) = &r.lease {
                    reservation = Some(spend.lease.clone());
                    cost = Some(spend.amount);
                }
                lease = r.lease;
                (r.reason, cost, r.subject, reservation, settle, replay)
            }
        };
        Finished {
            settle,
            audit: AuditRecord {
                id: self.id,
                at_ms: self.started_ms,
                vendor,
                token_id: subject.as_ref().map(|s| s.token_id.clone()),
                label: subject.as_ref().map(|s| s.label.clone()),
                policy: subject.map(|s| s.policy),
                method: self.method,
                path: self.path,
                status: status.unwrap_or(0),
                reason,
                cost,
                reservation,
                merchant: self.merchant,
                model: llm.model,
                usage: llm.usage,
                usage_missing: llm.missing,
                over_reservation: llm.over_reservation,
                replay,
            },
            lease,
        }
    }

    /// The audit record of a request Envoy answered before the filter saw it (a malformed
    /// request, say).
    pub fn proxy_rejected(
        vendor: Vendor,
        id: String,
        now_ms: u64,
        headers: &[(String, Vec<u8>)],
        status: Option<u16>,
    ) -> AuditRecord {
        AuditRecord {
            id,
            at_ms: now_ms,
            vendor,
            token_id: None,
            label: None,
            policy: None,
            method: String::from_utf8_lossy(header(headers, ":method").unwrap_or_default())
                .into_owned(),
            path: audit_path(header(headers, ":path").unwrap_or_default()),
            status: status.unwrap_or(0),
            reason: Reason::ProxyRejected,
            cost: None,
            reservation: None,
            merchant: None,
            model: None,
            usage: None,
            usage_missing: None,
            over_reservation: false,
            replay: false,
        }
    }

    /// Counts the request against the policy's loop breaker; `Some` is the refusal.
    fn count(
        &mut self,
        bp: &Blueprint,
        counter: &dyn Counter,
        grant: &Grant,
        fp: Option<u64>,
    ) -> Option<Step> {
        let limits = grant.policy.policy.loop_breaker.as_ref()?;
        let verdict = counter.count(limits, &grant.subject.token_id, fp, self.started_ms / 1000);
        let (denial, retry_after) = match verdict {
            Ok(Verdict::Ok) => return None,
            Ok(Verdict::RateLimited { retry_after_secs }) => (
                Denial::new(
                    Reason::RateLimited,
                    format!(
                        "This token made more than {} requests in a minute; it may continue in {retry_after_secs}s.",
                        limits.max_requests_per_minute
                    ),
                ),
                Some(retry_after_secs),
            ),
            Ok(Verdict::RepeatLimited { retry_after_secs }) => (
                Denial::new(
                    Reason::RepeatLimited,
                    format!(
                        "This token sent the same request more than {} times in a minute.",
                        limits.max_identical_per_minute
                    ),
                ),
                Some(retry_after_secs),
            ),
            Err(why) => (
                Denial::new(Reason::Internal, format!("Could not count the request ({why}).")),
                None,
            ),
        };
        Some(self.refuse(bp, denial.about(&grant.subject), retry_after))
    }

    fn forward(
        &mut self,
        grant: Grant,
        reservation: Option<Reservation>,
        tokens: Option<Box<TokenCall>>,
    ) -> Step {
        let slot = grant.subject.slot;
        self.phase = Phase::Forwarded(Box::new(Passage {
            grant,
            reservation,
            status: None,
            response: ResponseRead::Status,
            body_scan: None,
            tokens,
        }));
        Step::Forward { slot }
    }

    /// The request just forwarded goes before its body has ended: scan the body as it
    /// streams.
    fn stream_body(&mut self) {
        if let Phase::Forwarded(p) = &mut self.phase {
            p.body_scan = Some(TokenScan::default());
        }
    }

    fn refuse(&mut self, bp: &Blueprint, denial: Denial, retry_after: Option<u64>) -> Step {
        self.phase = Phase::Refused(Box::new(Refusal {
            reason: denial.reason,
            subject: denial.subject.clone(),
            release: None,
            lease: None,
        }));
        Step::Refuse(bp.reply(denial, retry_after))
    }

    /// Refuses a request the vendor has seen part of (its body was streaming): it may have
    /// acted on it. A call spent from a lease counts as spent there; a reservation, were there
    /// one, is left to expire into spend.
    fn refuse_forwarded(&mut self, bp: &Blueprint, denial: Denial) -> Step {
        let lease = match &mut self.phase {
            Phase::Forwarded(p) => p.reservation.as_mut().and_then(|r| r.lease.take()),
            _ => None,
        };
        let step = self.refuse(bp, denial, None);
        if let Phase::Refused(refusal) = &mut self.phase {
            refusal.lease = lease.map(|spend| (spend, SettleOutcome::Hold));
        }
        step
    }

    /// Refuses a request for which the ledger holds, or may hold, `release`.
    fn refuse_releasing(
        &mut self,
        bp: &Blueprint,
        denial: Denial,
        release: Option<(String, bool)>,
    ) -> Step {
        let step = self.refuse(bp, denial, None);
        if let Phase::Refused(refusal) = &mut self.phase {
            refusal.release = release;
        }
        step
    }

    /// A callback out of order (the adapter's bug, or the host's): refuse rather than guess.
    fn unexpected(&mut self, bp: &Blueprint, phase: Phase, what: &str) -> Step {
        self.phase = phase;
        self.fail(bp, format!("Bridle was not expecting {what} now."))
    }

    fn take_phase(&mut self) -> Phase {
        std::mem::replace(&mut self.phase, Phase::Refused(Box::default()))
    }
}

/// A vault token in a request body, which would reach the vendor.
fn token_elsewhere() -> Denial {
    Denial::new(
        Reason::CredentialAmbiguous,
        "A vault token may appear only in the credential header, never in the request body.",
    )
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// Identifies identical requests for the loop breaker: method, path with query, and body.
fn fingerprint(method: &str, raw_path: &[u8], body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    (method, raw_path, body).hash(&mut h);
    h.finish()
}

/// A path fit for the audit log: printable, bounded, without the query (which may carry
/// personal data).
fn audit_path(raw: &[u8]) -> String {
    let path = raw.split(|b| *b == b'?').next().unwrap_or_default();
    let mut s: String = String::from_utf8_lossy(path)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_AUDIT_PATH)
        .collect();
    if s.is_empty() {
        s.push('-');
    }
    s
}

impl std::fmt::Debug for Exchange {
    /// Never the grant's credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.phase {
            Phase::ReadingBody(_) => "reading body",
            Phase::RewritingBody(..) => "rewriting body",
            Phase::Leasing(..) => "leasing",
            Phase::Reserving(..) => "reserving",
            Phase::Forwarded(_) => "forwarded",
            Phase::Refused(_) => "refused",
        };
        f.debug_struct("Exchange")
            .field("id", &self.id)
            .field("phase", &phase)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
