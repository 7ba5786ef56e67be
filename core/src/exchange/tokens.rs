//! The request path's part for calls priced by tokens (`crate::llm`): the quote travels with
//! the exchange from the body to the settle, and the response is watched for its usage as it
//! passes, chunk by chunk.
//!
//! How such a call settles, once the vendor answered 2xx:
//! - its usage was read: commit exactly its price, even above the reservation (flagged);
//! - its usage was not read (the stream ended early, the agent went away, the response was
//!   unreadable): commit the whole reservation, and say why in the audit record.

use super::{Blueprint, Held, Reservation};
use crate::cost::{CostError, Estimate};
use crate::ledger_api::SettleOutcome;
use crate::llm::{Quote, TokenApi, TokenUsage, Unread, UsageReader};
use crate::money::Usd;

/// Prices a held request's body as a call to `api`, under its policy's models and the
/// listener's price table.
pub(super) fn quote(
    api: TokenApi,
    bp: &Blueprint,
    held: &Held,
    body: &[u8],
) -> Result<Box<Quote>, CostError> {
    crate::llm::quote(
        api,
        held.grant.policy.models.as_deref(),
        &bp.config().prices,
        held.content_type.as_deref(),
        body,
    )
    .map(Box::new)
}

impl Quote {
    /// The reservation, as every cost rule's estimate reads.
    pub(super) fn estimate(&self) -> Estimate {
        Estimate {
            reserve: self.reserve,
            detail: self.detail.clone(),
        }
    }
}

/// What the audit record says of a call priced by tokens.
#[derive(Debug, Default)]
pub(super) struct Audited {
    pub model: Option<String>,
    pub usage: Option<TokenUsage>,
    pub missing: Option<String>,
    pub over_reservation: bool,
}

/// What the adapter does with a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum ResponseBody {
    /// Nothing: let it pass.
    Ignore,
    /// Buffer it whole (up to `MAX_RESPONSE_BODY`) for [`super::Exchange::on_response_body`].
    Buffer,
    /// Let each chunk pass as it arrives, and show it to
    /// [`super::Exchange::on_response_chunk`] first.
    Watch,
}

/// A forwarded call priced by tokens.
#[derive(Debug)]
pub(super) struct TokenCall {
    pub quote: Box<Quote>,
    /// Watching a 2xx response for its usage.
    pub reader: Option<UsageReader>,
    /// The usage once the response ended (or why there is none).
    pub read: Option<Result<TokenUsage, Unread>>,
}

/// How a call priced by tokens settled, for the settle and the audit record.
#[derive(Debug, Default, PartialEq, Eq)]
struct TokenSettle {
    /// What to commit; `None`: the reservation.
    pub amount: Option<Usd>,
    pub usage: Option<TokenUsage>,
    /// Why the usage could not settle the call.
    pub missing: Option<String>,
    pub over_reservation: bool,
}

impl TokenCall {
    pub fn new(quote: Box<Quote>) -> TokenCall {
        TokenCall {
            quote,
            reader: None,
            read: None,
        }
    }

    /// Starts watching a 2xx response with this content type.
    pub fn watch(&mut self, content_type: Option<&[u8]>) -> ResponseBody {
        self.reader = Some(self.quote.reader(content_type));
        ResponseBody::Watch
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if let Some(r) = self.reader.as_mut() {
            r.feed(chunk);
        }
    }

    /// Stops watching: the usage cannot be read whole.
    pub fn spoil(&mut self, why: String) {
        if self.reader.take().is_some() {
            self.read = Some(Err(Unread(why)));
        }
    }

    /// The response is over; `complete` if it ended as the vendor ended it.
    pub fn end(&mut self, complete: bool) {
        if let Some(r) = self.reader.take() {
            self.read = Some(r.finish(complete));
        }
    }

    /// Settles the call on the vendor's `outcome`: a commit is at the usage's price (written
    /// into `reservation`), or at the reservation when there is no usage to go by.
    pub fn audited(self, outcome: SettleOutcome, reservation: &mut Reservation) -> Audited {
        let model = Some(self.quote.model.clone());
        if outcome != SettleOutcome::Commit {
            return Audited {
                model,
                ..Audited::default()
            };
        }
        let settled = self.settle(reservation.reserved);
        reservation.settled = settled.amount;
        Audited {
            model,
            usage: settled.usage,
            missing: settled.missing,
            over_reservation: settled.over_reservation,
        }
    }

    /// The settle of a call the vendor accepted, whose reservation was `reserved`.
    fn settle(mut self, reserved: Usd) -> TokenSettle {
        // A response still being watched when the stream ends was cut short.
        self.end(false);
        match self.read {
            Some(Ok(usage)) => match self.quote.cost(&usage) {
                Some(cost) => TokenSettle {
                    amount: Some(cost),
                    usage: Some(usage),
                    missing: None,
                    over_reservation: cost > reserved,
                },
                None => TokenSettle {
                    usage: Some(usage),
                    missing: Some(format!(
                        "the usage has tokens {} has no price for",
                        self.quote.model
                    )),
                    ..TokenSettle::default()
                },
            },
            Some(Err(Unread(why))) => TokenSettle {
                missing: Some(why),
                ..TokenSettle::default()
            },
            None => TokenSettle {
                missing: Some("the response had no body".into()),
                ..TokenSettle::default()
            },
        }
    }
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
