//! Bridle's pure request-path logic, shared by the Envoy filter, the ledger and the CLI.
//!
//! Nothing here talks to a host: no proxy-wasm, no sockets, no clocks. Every function takes
//! the time and the request as arguments, so the whole decision path is unit-tested natively
//! and the filter stays a thin adapter over hostcalls.
//!
//! Start reading at [`exchange`]: the request path from headers to settle, top to bottom.
//! It asks [`decision`] about the headers, [`cost`] for a price, and the [`vendor`] modules
//! for everything particular to one vendor's API.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod body;
pub mod body_rules;
pub mod config;
pub mod cost;
pub mod decision;
pub mod duration;
pub mod exchange;
pub mod glob;
pub mod idempotency;
pub mod issue;
pub mod lease;
pub mod ledger_api;
pub mod llm;
pub mod loop_breaker;
pub mod money;
pub mod path;
pub mod policy;
#[cfg(feature = "files")]
pub mod policy_files;
#[cfg(feature = "files")]
pub mod price_files;
pub mod reason;
pub mod revocation;
pub mod settlement;
pub mod sms;
pub mod struct_pb;
pub mod token;
pub mod token_cache;
pub mod token_scan;
pub mod vendor;

pub use reason::Reason;
