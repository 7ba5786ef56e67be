//! The end-to-end harness: real processes, real sockets.
//!
//! - [`envoy::Envoy`] renders a bootstrap with `bridle render`'s own code, starts the Envoy
//!   binary from the project's virtualenv with the built `.wasm`, and waits on its admin
//!   endpoint until every listener is up.
//! - [`mock::MockVendor`] is a vendor upstream that records exactly what it receives.
//! - [`client`] speaks raw HTTP/1.1, so tests can send paths and headers that a URL library
//!   would normalize or refuse; [`h2c`] speaks HTTP/2 frame by frame (bodies in pieces,
//!   trailers).
//! - [`tls`] gives a test its own certificate authority, a mock vendor that speaks only TLS,
//!   and a sink that records what a proxy sends to a port.
//! - [`ledger_gate::LedgerGate`] sits between Envoy and the ledger: it can fail the
//!   revocation feed alone, and records each reservation asked and answered.
//!
//! Nothing here skips: a missing Envoy binary or `.wasm` fails the test with the command
//! that builds it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod artifacts;
pub mod client;
pub mod envoy;
pub mod h2c;
pub mod keys;
pub mod ledger;
pub mod ledger_gate;
pub mod llm_mock;
pub mod mock;
pub mod postgres;
pub mod process;
pub mod python;
pub mod stack;
pub mod tls;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The price tables the repository ships (`policies/prices/`), as `bridle render` reads them.
pub fn shipped_prices() -> bridle_cli::render::Prices {
    bridle_core::price_files::load(&repo_root().join("policies/prices"))
        .unwrap_or_else(|e| panic!("policies/prices: {e:?}"))
}

/// A binary built by `cargo build` in this workspace (debug profile unless
/// `BRIDLE_PROFILE=release`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let profile = std::env::var("BRIDLE_PROFILE").unwrap_or_else(|_| "debug".into());
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `make test`)",
        path.display()
    );
    path
}
