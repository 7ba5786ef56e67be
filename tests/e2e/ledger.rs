//! Placeholder: the ledger end-to-end tests (being written).
