//! SMS segment counting (implementation in progress).
