//! Running sums over a span: what a rolling window holds, kept incrementally.
//!
//! [`WindowSum`] is the rule every backend shares: a sum and a floor. A reservation made
//! after the floor is inside the window; as time passes the floor rises and the amounts of
//! the reservations it passes leave the sum. A settle changes a reservation's counted amount,
//! and the sum with it, only while the reservation is still inside. PostgreSQL keeps one
//! `WindowSum` per row; the in-memory accounts keep one per [`Window`], with the reservations
//! in time order so that they know what leaves.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::caps::Span;

/// A sum overflowed: the caller refuses (a reserve) or saturates (a settle: counting more
/// than the sum can hold refuses every later reserve, which is closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowSum {
    /// Micro-dollars counted by the reservations inside.
    pub sum: i64,
    /// Reservations at or before this time have left.
    pub floor_ms: u64,
}

impl WindowSum {
    pub fn contains(&self, at_ms: u64) -> bool {
        at_ms > self.floor_ms
    }

    /// Adds a reservation made at `at_ms` (or a change of its counted amount), if inside.
    pub fn add(&mut self, at_ms: u64, delta: i64) -> Result<(), Overflow> {
        if self.contains(at_ms) {
            self.sum = self.sum.checked_add(delta).ok_or(Overflow)?;
        }
        Ok(())
    }

    /// The same, saturating: for amounts already spent, which must be counted whatever.
    pub fn add_saturating(&mut self, at_ms: u64, delta: i64) {
        if self.contains(at_ms) {
            self.sum = self.sum.saturating_add(delta);
        }
    }

    /// Raises the floor to `floor_ms`; `leaving` is what the reservations it passed counted.
    pub fn advance(&mut self, floor_ms: u64, leaving: i64) {
        if floor_ms > self.floor_ms {
            self.sum = self.sum.saturating_sub(leaving);
            self.floor_ms = floor_ms;
        }
    }
}

/// A window in memory: its sum and the reservations inside, oldest first.
#[derive(Clone, Debug)]
pub struct Window {
    pub span: Span,
    pub sum: WindowSum,
    /// Reservation ids are shared with the reservation map, not copied per window. Empty
    /// for `Span::Ever`, which nothing leaves.
    events: VecDeque<(u64, Arc<str>)>,
}

impl Window {
    pub fn new(span: Span) -> Window {
        Window::loaded(span, WindowSum::default())
    }

    /// A window whose sum was read from storage, already advanced to its floor.
    pub fn loaded(span: Span, sum: WindowSum) -> Window {
        Window {
            span,
            sum,
            events: VecDeque::new(),
        }
    }

    /// Drops what has left the window by `now_ms`; `counted` says what each reservation
    /// counts now.
    pub fn prune(&mut self, now_ms: u64, counted: impl Fn(&str) -> i64) {
        let floor = self.span.floor(now_ms);
        let mut leaving = 0i64;
        while let Some((at, id)) = self.events.front() {
            if *at > floor {
                break;
            }
            leaving = leaving.saturating_add(counted(id));
            self.events.pop_front();
        }
        self.sum.advance(floor, leaving);
    }

    /// Adds a fresh reservation. The caller has checked that the sum has room.
    pub fn push(&mut self, at_ms: u64, id: &Arc<str>, counted: i64) -> Result<(), Overflow> {
        if !self.sum.contains(at_ms) {
            return Ok(());
        }
        self.sum.add(at_ms, counted)?;
        if self.span != Span::Ever {
            self.events.push_back((at_ms, id.clone()));
        }
        Ok(())
    }

    /// The reservations inside, for views.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.events.iter().map(|(_, id)| &**id)
    }

    /// The reservations inside with when each was made, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &str)> {
        self.events.iter().map(|(at, id)| (*at, &**id))
    }

    /// Remembers a reservation inside that the loaded sum already counts (PostgreSQL reads
    /// the sum from its row and, where a rule needs them, the reservations apart). Call in
    /// time order.
    pub fn know(&mut self, at_ms: u64, id: &Arc<str>) {
        if self.sum.contains(at_ms) && self.span != Span::Ever {
            self.events.push_back((at_ms, id.clone()));
        }
    }
}

/// The windows of one scope (a token or a policy), one per tracked span.
#[derive(Clone, Debug, Default)]
pub struct Windows(Vec<Window>);

impl Windows {
    pub fn new(spans: &[Span]) -> Windows {
        Windows(spans.iter().map(|s| Window::new(*s)).collect())
    }

    pub fn get(&self, span: Span) -> Option<&Window> {
        self.0.iter().find(|w| w.span == span)
    }

    pub fn get_mut(&mut self, span: Span) -> Option<&mut Window> {
        self.0.iter_mut().find(|w| w.span == span)
    }

    /// The sum over `span`, 0 when it is not tracked.
    pub fn sum(&self, span: Span) -> i64 {
        self.get(span).map_or(0, |w| w.sum.sum)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Window> {
        self.0.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Window> {
        self.0.iter_mut()
    }

    /// Replaces (or adds) a window read from storage.
    pub fn load(&mut self, span: Span, sum: WindowSum) {
        self.0.retain(|w| w.span != span);
        self.0.push(Window::loaded(span, sum));
    }

    /// Raises each floor to the span's floor at `now_ms`: at a restart, reservations older
    /// than that are not loaded, so a later settle of one must leave the sum alone.
    pub fn raise_floors(&mut self, now_ms: u64) {
        for w in &mut self.0 {
            let floor = w.span.floor(now_ms);
            if floor > w.sum.floor_ms {
                w.sum.floor_ms = floor;
            }
        }
    }

    pub fn prune(&mut self, now_ms: u64, counted: impl Fn(&str) -> i64) {
        for w in &mut self.0 {
            w.prune(now_ms, &counted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_forgets_what_leaves_and_ignores_changes_outside() {
        let mut w = Window::new(Span::Rolling { ms: 10 });
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        w.push(1, &a, 5).unwrap();
        w.push(8, &b, 7).unwrap();
        assert_eq!(w.sum.sum, 12);
        w.prune(11, |id| if id == "a" { 5 } else { 7 });
        assert_eq!((w.sum.sum, w.sum.floor_ms), (7, 1));
        // A settle of `a` after it left changes nothing here.
        w.sum.add(1, -5).unwrap();
        assert_eq!(w.sum.sum, 7);
        w.sum.add(8, -2).unwrap();
        assert_eq!(w.sum.sum, 5);
        assert_eq!(w.sum.add(9, i64::MAX), Err(Overflow));
        w.sum.add_saturating(9, i64::MAX);
        assert_eq!(w.sum.sum, i64::MAX);
    }

    #[test]
    fn ever_keeps_everything() {
        let mut w = Window::new(Span::Ever);
        w.push(1, &Arc::from("a"), 5).unwrap();
        w.prune(u64::MAX, |_| 5);
        assert_eq!(w.sum.sum, 5);
        assert_eq!(w.ids().count(), 0);
    }
}
