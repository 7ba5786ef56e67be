//! The library behind the `bridle` command, shared with the end-to-end tests so that they
//! render exactly what the command renders.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod blast_radius;
pub mod ledger_client;
pub mod render;
pub mod stdout;
