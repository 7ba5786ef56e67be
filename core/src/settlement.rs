//! How a reservation moves once the vendor has answered: what the vendor's status means for
//! the money ([`outcome_for_status`], which the filter applies), and the one settle rule every
//! ledger backend applies.
//!
//! A reservation counts against every cap from the moment it is made. Reserved, held (the
//! vendor may have acted) and expired reservations count in full, a committed one at its
//! final amount, a released one not at all. Committed, released and expired are final: a
//! later settle of a final reservation changes nothing, so settles can be resent freely.
//!
//! Money is integer micro-dollars, always within [`Usd`]'s bounds (0 to a billion dollars):
//! a counted amount is either the reserved amount or a commit's `amount`, both `Usd`s.

use serde::{Deserialize, Serialize};

use crate::ledger_api::{Settle, SettleOutcome};
use crate::money::Usd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Reserved,
    Held,
    Committed,
    Released,
    /// Never settled: counted in full, as if committed.
    Expired,
}

impl ReservationState {
    pub const ALL: [ReservationState; 5] = [
        ReservationState::Reserved,
        ReservationState::Held,
        ReservationState::Committed,
        ReservationState::Released,
        ReservationState::Expired,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReservationState::Committed | ReservationState::Released | ReservationState::Expired
        )
    }

    /// Still open: counted, and a later answer may still change what it counts.
    pub fn is_open(self) -> bool {
        matches!(self, ReservationState::Reserved | ReservationState::Held)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Reserved => "reserved",
            ReservationState::Held => "held",
            ReservationState::Committed => "committed",
            ReservationState::Released => "released",
            ReservationState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<ReservationState> {
        ReservationState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// What the vendor's answer means for the money reserved for a call it received: 2xx commits;
/// 4xx releases, because the vendor refused and spent nothing; anything else (5xx, no
/// response, a reset) holds, because the vendor may have acted.
pub fn outcome_for_status(status: Option<u16>) -> SettleOutcome {
    match status {
        Some(200..=299) => SettleOutcome::Commit,
        Some(400..=499) => SettleOutcome::Release,
        _ => SettleOutcome::Hold,
    }
}

/// What a settle makes of a reservation: its new state and what it counts from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub state: ReservationState,
    /// Micro-dollars counted against every cap.
    pub counted: i64,
}

/// Applies one settle to a reservation in `state` that reserved `reserved` micro-dollars.
/// `None`: the settle changes nothing (a final reservation, or a replay's release).
///
/// - Commit (2xx): the amount the vendor reports, else what was reserved. More than was
///   reserved is recorded as reported, not clamped: the vendor charged it.
/// - Release (4xx, or never sent): nothing counts. A replay's settle can confirm the
///   original but never release it: the original request may have been executed.
/// - Hold (5xx, timeout, reset): the vendor may have acted; the reservation stays counted,
///   and a later answer may still resolve it.
pub fn settle(state: ReservationState, reserved: i64, s: &Settle) -> Option<Transition> {
    if state.is_final() {
        return None;
    }
    let (state, counted) = match (s.outcome, s.replay, state) {
        (SettleOutcome::Commit, _, _) => (
            ReservationState::Committed,
            s.amount.map_or(reserved, Usd::micros),
        ),
        (SettleOutcome::Release, false, _) => (ReservationState::Released, 0),
        (SettleOutcome::Release, true, _) => return None,
        (SettleOutcome::Hold, _, ReservationState::Reserved) => (ReservationState::Held, reserved),
        (SettleOutcome::Hold, _, _) => return None,
    };
    Some(Transition { state, counted })
}

/// A reservation left unsettled for the whole reservation TTL expires into spend: counted
/// in full. Only a plain reserved one does; a held one already counts in full and waits for
/// its answer.
pub fn expires(state: ReservationState) -> bool {
    state == ReservationState::Reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(outcome: SettleOutcome, amount: Option<i64>, replay: bool) -> Settle {
        Settle {
            reservation: "0".repeat(16),
            outcome,
            amount: amount.and_then(Usd::from_micros),
            replay,
            usage: None,
        }
    }

    #[test]
    fn vendor_statuses_settle_as_commit_release_or_hold() {
        for (status, want) in [
            (Some(200), SettleOutcome::Commit),
            (Some(201), SettleOutcome::Commit),
            (Some(299), SettleOutcome::Commit),
            (Some(400), SettleOutcome::Release),
            (Some(402), SettleOutcome::Release),
            (Some(499), SettleOutcome::Release),
            (Some(500), SettleOutcome::Hold),
            (Some(503), SettleOutcome::Hold),
            (Some(302), SettleOutcome::Hold),
            (Some(100), SettleOutcome::Hold),
            (None, SettleOutcome::Hold),
        ] {
            assert_eq!(outcome_for_status(status), want, "{status:?}");
        }
    }

    #[test]
    fn each_outcome_from_each_state() {
        use ReservationState::*;
        use SettleOutcome::*;
        let t = |state, counted| Some(Transition { state, counted });
        assert_eq!(
            settle(Reserved, 40, &s(Commit, None, false)),
            t(Committed, 40)
        );
        assert_eq!(
            settle(Reserved, 40, &s(Commit, Some(30), false)),
            t(Committed, 30)
        );
        assert_eq!(
            settle(Held, 40, &s(Commit, Some(55), true)),
            t(Committed, 55)
        );
        assert_eq!(
            settle(Reserved, 40, &s(Release, None, false)),
            t(Released, 0)
        );
        assert_eq!(settle(Held, 40, &s(Release, None, false)), t(Released, 0));
        assert_eq!(settle(Reserved, 40, &s(Release, None, true)), None);
        assert_eq!(settle(Reserved, 40, &s(Hold, None, false)), t(Held, 40));
        assert_eq!(settle(Held, 40, &s(Hold, None, false)), None);
        for fin in [Committed, Released, Expired] {
            for o in [Commit, Release, Hold] {
                assert_eq!(
                    settle(fin, 40, &s(o, Some(1), false)),
                    None,
                    "{fin:?} {o:?}"
                );
            }
        }
        assert!(expires(Reserved) && !expires(Held) && !expires(Committed));
    }

    #[test]
    fn states_round_trip_their_names() {
        for st in ReservationState::ALL {
            assert_eq!(ReservationState::parse(st.as_str()), Some(st));
            assert_eq!(st.is_open(), !st.is_final());
        }
    }
}
