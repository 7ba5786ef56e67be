//! Request and response bodies, read strictly for cost rules (implementation in progress).
