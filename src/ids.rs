//! Request ids: 128 bits, unique across workers and restarts. Each plugin seeds two streams
//! from the host's randomness once, then counts, so the request path makes no hostcall.

use std::cell::Cell;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub struct Ids {
    a: u64,
    b: u64,
    counter: Cell<u64>,
}

impl Ids {
    pub fn new(seed: [u8; 16]) -> Ids {
        let (a, b) = seed.split_at(8);
        let word = |s: &[u8]| s.try_into().map(u64::from_le_bytes).unwrap_or(0);
        Ids {
            a: word(a),
            b: word(b),
            counter: Cell::new(0),
        }
    }

    /// 32 lowercase hex digits, never the same twice from one `Ids`.
    pub fn next(&self) -> String {
        let c = self.counter.get().wrapping_add(1);
        self.counter.set(c);
        // splitmix64 is a bijection, so distinct counters give distinct halves.
        format!(
            "{:016x}{:016x}",
            splitmix64(self.a.wrapping_add(c)),
            splitmix64(self.b ^ c)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let ids = Ids::new([7; 16]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.next();
            assert!(bridle_core::ledger_api::check_request_id(&id), "{id}");
            assert!(seen.insert(id));
        }
        assert_ne!(Ids::new([1; 16]).next(), Ids::new([2; 16]).next());
    }
}
