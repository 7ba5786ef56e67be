//! Finding a vault token in bytes on their way to the vendor, so that none is forwarded.
//!
//! A token is the agent's credential for Bridle; the vendor must never see one. The header
//! decision looks for one in every header it does not strip and in the query; the exchange
//! looks in every request body it reads, and in bodies it streams, chunk by chunk.
//!
//! What counts as a token is its unmistakable head: `bvt_`, a key id (1 to 32 ASCII letters,
//! digits or dashes, as `token.rs` issues them) and the `.` after it. The bare prefix alone
//! would refuse a fair share of large binary uploads by chance (four given bytes turn up
//! about once in 4 GiB); the key id and the dot make that negligible and still catch every
//! token, whole or cut short after its key id.
//!
//! The vendor decodes what it reads, so the scan does too: each character may arrive as
//! itself, percent-encoded (`%62`, as in a query or a form body) or as a JSON `\u0062`
//! escape, in any mix. Anything else is taken literally.
//!
//! The scan is a small automaton fed any number of pieces: a token cut across two body
//! chunks is found when the second arrives, and [`TokenScan::pending`] says how many bytes at
//! the end of what was fed could still begin one, so that the adapter holds them back until
//! it has seen what follows. That hold-back is bounded (a few hundred bytes).

use crate::token::PREFIX;

/// The most characters a key id has (`token.rs`).
const MAX_KID: usize = 32;
/// The longest escape read: `\u` and four hex digits.
const MAX_ESCAPE: usize = 6;
/// What a JSON escape of a non-ASCII character decodes to here: nothing a token contains.
const NOT_ASCII: u8 = 0x80;

/// A scan over one stream of bytes (a header value, a query, a body in pieces).
#[derive(Clone, Debug, Default)]
pub struct TokenScan {
    /// Bytes fed so far.
    fed: u64,
    /// An escape begun but not finished: its bytes, how many, and where it began.
    escape: [u8; MAX_ESCAPE],
    escape_len: usize,
    escape_at: u64,
    /// How many characters of `bvt_` were just seen, and where the first began.
    prefix: usize,
    prefix_at: u64,
    /// After a whole `bvt_`: how many key-id characters follow, and where the `b` began.
    kid: Option<(usize, u64)>,
    found: bool,
}

/// Whether `bytes` hold a vault token, in any spelling [`TokenScan`] decodes.
pub fn contains_token(bytes: &[u8]) -> bool {
    let mut scan = TokenScan::default();
    scan.feed(bytes);
    scan.found()
}

impl TokenScan {
    /// Feeds the next bytes of the stream. Returns whether a token has been found, in these
    /// bytes or across them and earlier ones.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.found {
                break;
            }
            let at = self.fed;
            self.fed = self.fed.saturating_add(1);
            self.byte(b, at);
        }
        self.found
    }

    /// Whether a token has been found.
    pub fn found(&self) -> bool {
        self.found
    }

    /// How many bytes at the end of what was fed could begin a token: the part of the stream
    /// that must not be let through before the bytes after it have been seen.
    pub fn pending(&self) -> usize {
        if self.found {
            return 0;
        }
        let starts = [
            self.kid.map(|(_, at)| at),
            (self.prefix > 0).then_some(self.prefix_at),
            (self.escape_len > 0).then_some(self.escape_at),
        ];
        match starts.into_iter().flatten().min() {
            Some(start) => usize::try_from(self.fed.saturating_sub(start)).unwrap_or(usize::MAX),
            None => 0,
        }
    }

    /// One raw byte at stream offset `at`: either plain, or part of an escape.
    fn byte(&mut self, b: u8, at: u64) {
        if self.escape_len == 0 {
            if b == b'%' || b == b'\\' {
                self.escape = [b, 0, 0, 0, 0, 0];
                self.escape_len = 1;
                self.escape_at = at;
            } else {
                self.character(b, at);
            }
            return;
        }
        if let Some(slot) = self.escape.get_mut(self.escape_len) {
            *slot = b;
            self.escape_len = self.escape_len.saturating_add(1);
        }
        let seq = self.escape.get(..self.escape_len).unwrap_or_default();
        match escape(seq) {
            Escape::More => {}
            Escape::Char(c) => {
                self.escape_len = 0;
                self.character(c, self.escape_at);
            }
            Escape::Not => {
                // Not an escape after all: its first byte is itself, and the bytes after it
                // are read again (`%%62` is a `%`, then an escaped `b`).
                let (pending, len, start) = (self.escape, self.escape_len, self.escape_at);
                self.escape_len = 0;
                let mut rest = pending.iter().take(len);
                if let Some(&first) = rest.next() {
                    self.character(first, start);
                }
                for (offset, &r) in (1u64..).zip(rest) {
                    self.byte(r, start.saturating_add(offset));
                }
            }
        }
    }

    /// One decoded character, which began at stream offset `at`.
    fn character(&mut self, c: u8, at: u64) {
        let head = PREFIX.as_bytes();
        // A key id in progress ends at its `.` (a token), continues, or was none.
        if let Some((len, start)) = self.kid {
            self.kid = if c == b'.' && len > 0 {
                self.found = true;
                return;
            } else if is_kid_char(c) && len < MAX_KID {
                Some((len.saturating_add(1), start))
            } else {
                None
            };
        }
        // `bvt_` may begin anywhere, a key id in progress included (`b`, `v`, `t` are key-id
        // characters); no proper prefix of it ends with its own start, so a mismatch only
        // ever restarts at a `b`.
        if head.get(self.prefix) == Some(&c) {
            if self.prefix == 0 {
                self.prefix_at = at;
            }
            self.prefix = self.prefix.saturating_add(1);
            if self.prefix == head.len() {
                self.kid = Some((0, self.prefix_at));
                self.prefix = 0;
            }
        } else if head.first() == Some(&c) {
            self.prefix = 1;
            self.prefix_at = at;
        } else {
            self.prefix = 0;
        }
    }
}

fn is_kid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

enum Escape {
    /// Could still be an escape: read on.
    More,
    /// A whole escape, and the character it stands for.
    Char(u8),
    /// Not an escape.
    Not,
}

/// What an escape begun with `%` or `\` is so far.
fn escape(seq: &[u8]) -> Escape {
    let hex_at = |i: usize| seq.get(i).and_then(|b| hex(*b));
    match seq {
        [b'%'] | [b'\\'] | [b'\\', b'u'] => Escape::More,
        [b'%', _] | [b'\\', b'u', ..] if hex_at(seq.len().saturating_sub(1)).is_none() => {
            Escape::Not
        }
        [b'%', _] => Escape::More,
        [b'%', _, _] => match (hex_at(1), hex_at(2)) {
            (Some(hi), Some(lo)) => Escape::Char(hi << 4 | lo),
            _ => Escape::Not,
        },
        [b'\\', b'u', _, _, _, _] => {
            let unit = (2..6).try_fold(0u32, |acc, i| Some(acc << 4 | u32::from(hex_at(i)?)));
            match unit.and_then(|u| u8::try_from(u).ok()) {
                Some(c) if c.is_ascii() => Escape::Char(c),
                _ if unit.is_some() => Escape::Char(NOT_ASCII),
                _ => Escape::Not,
            }
        }
        [b'\\', b'u', ..] => Escape::More,
        _ => Escape::Not,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::{claims, keyring};

    fn token() -> String {
        keyring().mint(&claims()).unwrap()
    }

    /// `b` percent-encoded, JSON-escaped, or as is, character by character.
    fn spellings(s: &str) -> Vec<String> {
        let pct: String = s.bytes().map(|b| format!("%{b:02x}")).collect();
        let pct_upper: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
        let json: String = s.bytes().map(|b| format!("\\u{:04x}", b)).collect();
        let mixed: String = s
            .bytes()
            .enumerate()
            .map(|(i, b)| match i % 3 {
                0 => (b as char).to_string(),
                1 => format!("%{b:02x}"),
                _ => format!("\\u00{b:02X}"),
            })
            .collect();
        vec![s.to_string(), pct, pct_upper, json, mixed]
    }

    #[test]
    fn finds_tokens_in_every_spelling() {
        let t = token();
        for spelled in spellings(&t) {
            for wrapped in [
                spelled.clone(),
                format!("q=1&k={spelled}&x=2"),
                format!("{{\"note\": \"{spelled}\"}}"),
                format!("%%%{spelled}"),
                format!("\\\\{spelled}"),
                format!("bvt_bvt_{spelled}"),
            ] {
                assert!(contains_token(wrapped.as_bytes()), "{wrapped}");
            }
        }
        // Cut short after its key id, it is still a token's head.
        assert!(contains_token(b"x=bvt_k1."));
        assert!(contains_token(
            format!("bvt_{}.", "a".repeat(MAX_KID)).as_bytes()
        ));
        // A new prefix may begin inside what looked like a key id.
        assert!(contains_token(b"bvt_xbvt_k."));
        assert!(contains_token(b"bvt_bvt_bvt_q."));
    }

    #[test]
    fn leaves_what_is_not_a_token() {
        for clean in [
            &b""[..],
            b"bvt_",
            b"bvt_.",
            b"bvt_k",
            b"bvt_k_x.",
            b"bvt.k.",
            b"bvtk.",
            b"BVT_k.",
            b"b vt_k.",
            b"%62%76%74%5f",
            b"%6",
            b"%g2vt_k.",
            b"\\u062vt_k.",
            b"\\x62vt_k.",
            b"amount=2000&currency=usd",
            b"{\"model\":\"gpt\",\"messages\":[]}",
        ] {
            assert!(!contains_token(clean), "{}", String::from_utf8_lossy(clean));
        }
        // A key id longer than any the keyring issues is no token's.
        assert!(!contains_token(
            format!("bvt_{}.", "a".repeat(MAX_KID + 1)).as_bytes()
        ));
        // Non-ASCII escapes decode to nothing a token holds.
        assert!(!contains_token(b"\\u0162vt_k."));
    }

    /// The property the adapter relies on: for every way of cutting a stream in two, the
    /// token is found by the time the second piece is fed, and everything let through
    /// before it (all of the first piece but its pending bytes) holds no part of it.
    #[test]
    fn every_split_point_holds_back_the_start_of_a_token() {
        let t = token();
        for spelled in spellings(&t) {
            let before = "amount=1&note=hello+";
            let stream = format!("{before}{spelled}&more=x");
            let start = before.len();
            let bytes = stream.as_bytes();
            for cut in 0..=bytes.len() {
                let (first, second) = bytes.split_at(cut);
                let mut scan = TokenScan::default();
                let found_early = scan.feed(first);
                if !found_early {
                    let released = cut - scan.pending();
                    assert!(
                        released <= start,
                        "cut {cut}: released {released} bytes, but the token starts at {start} ({spelled})"
                    );
                }
                assert!(scan.feed(second), "cut {cut}: not found ({spelled})");
            }
        }
    }

    #[test]
    fn every_split_into_many_pieces_finds_the_token() {
        let stream = format!("x={}&y=1", spellings(&token())[4]);
        for size in 1..=8 {
            let mut scan = TokenScan::default();
            let mut released = 0;
            let mut found = false;
            for piece in stream.as_bytes().chunks(size) {
                found = scan.feed(piece);
                if found {
                    break;
                }
                released = scan.fed as usize - scan.pending();
            }
            assert!(found, "pieces of {size}");
            assert!(released <= 2, "pieces of {size}: released {released}");
        }
    }

    #[test]
    fn pending_is_bounded_and_clears() {
        let mut scan = TokenScan::default();
        scan.feed(b"hello b");
        assert_eq!(scan.pending(), 1);
        scan.feed(b"x");
        assert_eq!(scan.pending(), 0);
        scan.feed(b"%6");
        assert_eq!(scan.pending(), 2);
        scan.feed(b"2v");
        assert_eq!(scan.pending(), 4);
        scan.feed(b"\\u0074_");
        assert_eq!(scan.pending(), 11);
        scan.feed(b"kid-1");
        assert_eq!(scan.pending(), 16);
        scan.feed(b" ");
        assert_eq!(scan.pending(), 0);
        // The longest hold-back: the prefix and a whole key id, every character escaped.
        let worst: String = format!("bvt_{}", "a".repeat(MAX_KID))
            .bytes()
            .map(|b| format!("\\u{:04x}", b))
            .collect();
        let mut scan = TokenScan::default();
        scan.feed(worst.as_bytes());
        assert_eq!(scan.pending(), worst.len());
        assert!(scan.pending() <= (PREFIX.len() + MAX_KID) * MAX_ESCAPE);
        // Once found, nothing is pending: the stream is refused.
        let mut scan = TokenScan::default();
        assert!(scan.feed(b"bvt_k.x"));
        assert_eq!(scan.pending(), 0);
    }
}
