//! Strict request paths: `path::check`, `path::canonicalize` and glob matching.
//!
//! What `check` accepts is already canonical and has one reading: printable ASCII only; no
//! `#` or `\` anywhere; in the path part no `;`, no empty, `.` or `..` segment, and no
//! percent-encoding of a separator, a dot, `%` itself or anything with a plain spelling, so
//! that decoding it once more changes no segment. `canonicalize` is idempotent on any text.
//! Glob matching agrees with a plain reference matcher in which `*` stays inside a segment.
#![no_main]

use bridle_core::glob::{EndpointPattern, PathGlob};
use bridle_core::path::{self, RequestPath, MAX_PATH_LEN};
use libfuzzer_sys::fuzz_target;

const GLOBS: [&str; 10] = [
    "/v1/charges/*",
    "/v1/charges/ch_*",
    "/v1/*/refunds",
    "/2010-04-01/Accounts/*/Messages.json",
    "/emails/*",
    "/v1/files/*.json",
    "/v1/*_*/x*y*z",
    "/*",
    "/*/*",
    "/v1/payment_intents",
];

/// `*` matches any run of characters, within the one segment it is given. The classic
/// greedy matcher with backtracking to the last star.
fn wild(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&b'*') {
            star = Some((pi, ti));
            pi += 1;
        } else if p.get(pi) == Some(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// The reference: same number of segments, each matched on its own.
fn reference_match(glob: &str, path: &str) -> bool {
    let g: Vec<&str> = glob.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    g.len() == p.len()
        && g.iter()
            .zip(&p)
            .all(|(g, p)| wild(g.as_bytes(), p.as_bytes()))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// One round of percent-decoding, as a server or framework might do.
fn decode_once(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn check_accepted(raw: &[u8], rp: &RequestPath<'_>) {
    assert!(raw.len() <= MAX_PATH_LEN);
    for &b in raw {
        assert!((0x21..=0x7e).contains(&b), "byte {b:#04x} accepted");
        assert!(b != b'#' && b != b'\\', "byte {:?} accepted", b as char);
    }
    let raw = std::str::from_utf8(raw).expect("accepted paths are ASCII");
    let p = rp.path;
    match rp.query {
        Some(q) => assert_eq!(format!("{p}?{q}"), raw),
        None => assert_eq!(p, raw),
    }
    assert!(p.starts_with('/'));
    assert!(!p.contains('?') && !p.contains(';'));
    assert!(
        !p.contains("//") && !p.ends_with('/'),
        "empty segment in {p:?}"
    );
    let lower = p.to_ascii_lowercase();
    for bad in ["%2f", "%2e", "%5c", "%25", "%3b", "%3f", "%23", "%00"] {
        assert!(!lower.contains(bad), "{bad} in {p:?}");
    }
    // `..` is refused as a segment; inside a name (`report..final.json`) it is just text.
    for segment in rp.segments() {
        assert!(!segment.is_empty() && segment != "." && segment != "..");
    }
    assert_eq!(rp.segments().count(), p.split('/').count() - 1);
    // Accepted paths are canonical.
    assert_eq!(
        path::canonicalize(p),
        p,
        "an accepted path is not canonical"
    );
    // Decoded once more, by anything downstream, the path keeps its segments.
    let decoded = decode_once(p);
    assert_eq!(
        decoded.iter().filter(|b| **b == b'/').count(),
        p.matches('/').count(),
        "decoding {p:?} adds a separator"
    );
    assert!(!decoded
        .iter()
        .any(|b| matches!(b, b'\\' | b';' | b'%' | b'?' | b'#') || !(0x20..0x7f).contains(b)));
    for segment in decoded.split(|b| *b == b'/').skip(1) {
        assert!(
            segment != b"." && segment != b"..",
            "decoding {p:?} makes a dot segment"
        );
    }
}

fn check_globs(rp: &RequestPath<'_>) {
    let p = rp.path;
    for source in GLOBS {
        let glob = PathGlob::parse(source).expect("fixed globs parse");
        assert_eq!(
            glob.matches(rp),
            reference_match(source, p),
            "{source} against {p:?}"
        );
    }
    // The path itself, read as a glob, matches itself (`*` in it matches a literal `*`).
    match PathGlob::parse(p) {
        Ok(glob) => {
            assert!(glob.matches(rp), "{p:?} does not match itself");
            assert_eq!(glob.as_str(), p);
        }
        Err(e) => assert!(p.contains("**"), "{p:?} is not a glob: {e}"),
    }
    // Any one segment turned into `*` still matches; one segment more or less does not.
    let segments: Vec<&str> = rp.segments().collect();
    for k in 0..segments.len().min(8) {
        let mut s = segments.clone();
        s[k] = "*";
        let source = format!("/{}", s.join("/"));
        let Ok(glob) = PathGlob::parse(&source) else {
            assert!(source.contains("**"), "{source:?} refused");
            continue;
        };
        assert!(glob.matches(rp), "{source} does not match {p:?}");
        let deeper = PathGlob::parse(&format!("{source}/*")).expect("one more segment parses");
        assert!(!deeper.matches(rp), "`*` matched across a `/` in {p:?}");
        if s.len() > 1 {
            let shallower =
                PathGlob::parse(&format!("/{}", s[..s.len() - 1].join("/"))).expect("parses");
            assert!(!shallower.matches(rp));
        }
        let endpoint = EndpointPattern::new("GET", &source).expect("parses");
        assert!(endpoint.matches("GET", rp) && !endpoint.matches("POST", rp));
        if !p.contains('*') {
            let literal = EndpointPattern::new("GET", p).expect("parses");
            assert!(literal.is_within(&endpoint), "{p} is not within {source}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // canonicalize is total and idempotent on any text, and lands on an absolute path.
    if let Ok(text) = std::str::from_utf8(data) {
        let once = path::canonicalize(text);
        assert!(once.starts_with('/'));
        assert_eq!(
            path::canonicalize(&once),
            once,
            "canonicalize({text:?}) is not canonical"
        );
    }
    match path::check(data) {
        Ok(rp) => {
            check_accepted(data, &rp);
            check_globs(&rp);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});
