//! Request ids: 128 bits, unique across workers and restarts. Each plugin seeds two streams
//! from the host's randomness once, then counts, so the request path makes no hostcall.
//!
//! An id starts with its request's millisecond. The ledger keys reservations and audit
//! records by id: random ids put every insert on a random page of those indexes, and each
//! report then dirtied (and wrote to the WAL, and fsynced) a page per record, which held the
//! reservations queued behind it (costed p99 4.6-5.0 ms against 3.1-3.6 ms with ids in time
//! order, `bridle-bench tail-where`, BENCHMARKS.md). The 80 bits after the time keep ids
//! unguessable and distinct across workers.

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

    /// 32 lowercase hex digits, never the same twice from one `Ids`: the request's
    /// millisecond first, then 80 bits from the seeded streams.
    pub fn next(&self, now_ms: u64) -> String {
        let c = self.counter.get().wrapping_add(1);
        self.counter.set(c);
        // splitmix64 is a bijection, so distinct counters give distinct words.
        let mut id = String::with_capacity(32);
        push_hex(&mut id, now_ms, 12);
        push_hex(&mut id, splitmix64(self.a.wrapping_add(c)), 16);
        push_hex(&mut id, splitmix64(self.b ^ c), 4);
        id
    }
}

/// Appends the low `digits` hex digits of `word`, zero-padded: what `{:0Nx}` writes, without
/// `format!`'s machinery, which was about a tenth of the filter's own work on an uncosted
/// request (a native profile of the request path).
fn push_hex(out: &mut String, word: u64, digits: u32) {
    for shift in (0..digits).rev() {
        let nibble = (word >> (shift * 4)) & 0xf;
        out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
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
            let id = ids.next(1_700_000_000_000);
            assert!(bridle_core::ledger_api::check_request_id(&id), "{id}");
            assert!(seen.insert(id));
        }
        assert_ne!(Ids::new([1; 16]).next(5), Ids::new([2; 16]).next(5));
    }

    #[test]
    fn ids_are_the_hex_of_their_parts() {
        let ids = Ids::new([3; 16]);
        let (a, b) = (u64::from_le_bytes([3; 8]), u64::from_le_bytes([3; 8]));
        for (c, ms) in [
            (1u64, 0u64),
            (2, 0xfedc_ba98_7654_3210),
            (3, 1_700_000_000_123),
        ] {
            let expected = format!(
                "{:012x}{:016x}{:04x}",
                ms & 0xffff_ffff_ffff,
                splitmix64(a.wrapping_add(c)),
                splitmix64(b ^ c) & 0xffff
            );
            assert_eq!(ids.next(ms), expected);
        }
    }

    #[test]
    fn ids_sort_in_time_order() {
        let ids = Ids::new([9; 16]);
        let mut last = String::new();
        for ms in 1_700_000_000_000u64..1_700_000_002_000 {
            let id = ids.next(ms);
            assert!(id > last, "{id} after {last}");
            assert!(id.starts_with(&format!("{ms:012x}")));
            last = id;
        }
    }
}
