//! Retries: a request reserved again is the same reservation, never new spend.
//!
//! Two ways a reserve can repeat one already made: the same `Idempotency-Key` from the same
//! token (the agent retried), or the same request id (the proxy resent its callout). The
//! rules here decide; each backend only finds the earlier reservation.

use bridle_core::Reason;

use crate::records::ReservationState;

/// What to do with a reserve that repeats an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// The earlier reservation stands for this one: granted with `replay: true`, nothing new
    /// counted.
    Replay(String),
    /// Reserve afresh, under every cap; the new reservation takes the key over.
    Fresh,
    Refuse(Reason, &'static str),
}

/// The token already used this key for the reservation `held` (in `state`, reserved for a
/// request whose digest was `held_digest`).
///
/// - Another digest, or a digest on one side only: another request under the same key. The
///   vendor would answer it with the first request's result (or an error), so it is
///   refused rather than let through as a replay that counts nothing.
/// - A released reservation is not replayed: nothing was spent under it and a commit can no
///   longer land on it, so the retry (which the vendor may well execute) is reserved afresh.
/// - Otherwise a replay.
pub fn by_key(
    held: &str,
    state: ReservationState,
    held_digest: Option<&str>,
    digest: Option<&str>,
) -> Repeat {
    if held_digest != digest {
        return Repeat::Refuse(
            Reason::IdempotencyKeyReused,
            "This Idempotency-Key was already used for a different request by this token.",
        );
    }
    if state == ReservationState::Released {
        return Repeat::Fresh;
    }
    Repeat::Replay(held.to_string())
}

/// A reservation with this request id exists, made by `holder`: the same request resent is
/// the same reservation; an id reused by another token is a bug upstream, and never a way
/// into its spend.
pub fn by_request_id(id: &str, holder: &str, token: &str) -> Repeat {
    if holder == token {
        Repeat::Replay(id.to_string())
    } else {
        Repeat::Refuse(
            Reason::Internal,
            "This request id belongs to another token's reservation.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_decide_between_a_replay_and_a_refusal() {
        use ReservationState::*;
        let d = Some("ab");
        assert_eq!(by_key("r1", Reserved, d, d), Repeat::Replay("r1".into()));
        assert_eq!(
            by_key("r1", Committed, None, None),
            Repeat::Replay("r1".into())
        );
        assert_eq!(by_key("r1", Released, d, d), Repeat::Fresh);
        for (a, b) in [(d, Some("cd")), (d, None), (None, d)] {
            assert!(matches!(
                by_key("r1", Reserved, a, b),
                Repeat::Refuse(Reason::IdempotencyKeyReused, _)
            ));
        }
        assert_eq!(by_request_id("r", "t1", "t1"), Repeat::Replay("r".into()));
        assert!(matches!(
            by_request_id("r", "t1", "t2"),
            Repeat::Refuse(Reason::Internal, _)
        ));
    }
}
