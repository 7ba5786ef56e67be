//! Strict request paths.
//!
//! Bridle authorizes on the exact bytes it forwards. A path that a server, a proxy or a
//! framework could read in two ways (dot segments, doubled slashes, encoded separators,
//! matrix parameters, backslashes) is refused, never normalized and then allowed: the
//! vendor might normalize differently, and the decision would be about another path.
//!
//! Accepted paths are fixed points of [`canonicalize`]: an accepted path is already
//! canonical.

use std::fmt;

/// Longest `:path` (with query) Bridle will look at. Vendor APIs use far shorter ones.
pub const MAX_PATH_LEN: usize = 8 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    Empty,
    TooLong,
    NotAbsolute,
    /// A byte that is not printable ASCII, or one of `#`, `\`, `;` (and space).
    ForbiddenByte(u8),
    EmptySegment,
    DotSegment,
    BadPercentEncoding,
    /// `%2e`, `%2f`, `%5c`, `%25`, `%3b`, `%3f`, `%23`, a control byte or a non-ASCII byte.
    EncodedForbidden(u8),
    /// A percent-encoded byte that has a plain spelling (`%41` for `A`), or lowercase hex.
    NonCanonicalEncoding,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => f.write_str("the path is empty"),
            PathError::TooLong => write!(f, "the path is longer than {MAX_PATH_LEN} bytes"),
            PathError::NotAbsolute => f.write_str("the path does not start with '/'"),
            PathError::ForbiddenByte(b) => write!(f, "the path contains the forbidden byte 0x{b:02x}"),
            PathError::EmptySegment => f.write_str("the path has an empty segment ('//' or a trailing '/')"),
            PathError::DotSegment => f.write_str("the path has a '.' or '..' segment"),
            PathError::BadPercentEncoding => f.write_str("the path has a malformed percent-encoding"),
            PathError::EncodedForbidden(b) => {
                write!(f, "the path percent-encodes the forbidden byte 0x{b:02x}")
            }
            PathError::NonCanonicalEncoding => {
                f.write_str("the path percent-encodes a character that must be written plainly, or uses lowercase hex")
            }
        }
    }
}

impl std::error::Error for PathError {}

/// A checked request target: the path that is matched and the query that is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestPath<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl<'a> RequestPath<'a> {
    /// The path's segments, without the leading `/`. Never empty strings.
    pub fn segments(&self) -> std::str::Split<'a, char> {
        let rest = self.path.strip_prefix('/').unwrap_or(self.path);
        rest.split('/')
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Bytes that must never appear percent-encoded in a path: separators and dots (they would
/// change the segment structure after one decode), `%` (double decoding), `;` (matrix
/// parameters), `?` and `#` (a decoder could end the path early), controls and non-ASCII.
fn encoded_byte_is_forbidden(b: u8) -> bool {
    matches!(b, b'.' | b'/' | b'\\' | b'%' | b';' | b'?' | b'#') || !(0x20..0x7f).contains(&b)
}

/// Checks a raw `:path` value and splits off its query. The query is not matched, but it is
/// forwarded, so it gets the byte-level checks too.
pub fn check(raw: &[u8]) -> Result<RequestPath<'_>, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    for &b in raw {
        if !(0x21..=0x7e).contains(&b) || b == b'#' || b == b'\\' {
            return Err(PathError::ForbiddenByte(b));
        }
    }
    // Every byte is printable ASCII, so this cannot fail; it just avoids unsafe.
    let text = std::str::from_utf8(raw).map_err(|_| PathError::ForbiddenByte(0x80))?;
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains(';') {
        return Err(PathError::ForbiddenByte(b';'));
    }
    for segment in path.split('/').skip(1) {
        match segment {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => check_segment_encoding(segment.as_bytes())?,
        }
    }
    if let Some(q) = query {
        check_query_encoding(q.as_bytes())?;
    }
    Ok(RequestPath { path, query })
}

fn check_segment_encoding(segment: &[u8]) -> Result<(), PathError> {
    let mut i = 0;
    while let Some(&b) = segment.get(i) {
        if b == b'%' {
            let (hi, lo) = match (segment.get(i + 1), segment.get(i + 2)) {
                (Some(&hi), Some(&lo)) => (hi, lo),
                _ => return Err(PathError::BadPercentEncoding),
            };
            let value = match (hex_value(hi), hex_value(lo)) {
                (Some(h), Some(l)) => h * 16 + l,
                _ => return Err(PathError::BadPercentEncoding),
            };
            if encoded_byte_is_forbidden(value) {
                return Err(PathError::EncodedForbidden(value));
            }
            if is_unreserved(value) || hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
                return Err(PathError::NonCanonicalEncoding);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn check_query_encoding(query: &[u8]) -> Result<(), PathError> {
    let mut i = 0;
    while let Some(&b) = query.get(i) {
        if b == b'%' {
            match (
                query.get(i + 1).copied().and_then(hex_value),
                query.get(i + 2).copied().and_then(hex_value),
            ) {
                (Some(_), Some(_)) => i += 3,
                _ => return Err(PathError::BadPercentEncoding),
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The canonical spelling of a path (query excluded): unreserved characters decoded, other
/// percent-encodings in uppercase hex, a `%` that starts no encoding written `%25`, dot
/// segments resolved, empty segments dropped. Idempotent on any text.
/// Used by tests and tooling to explain refusals; the request path never uses it to rewrite.
pub fn canonicalize(path: &str) -> String {
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let decoded = canonical_segment(raw);
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(decoded),
        }
    }
    format!("/{}", segments.join("/"))
}

fn canonical_segment(segment: &str) -> String {
    let bytes = segment.as_bytes();
    // Bytes, not chars: non-ASCII text is copied as it is, whole UTF-8 sequences.
    let mut out: Vec<u8> = Vec::with_capacity(segment.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let decoded = if b == b'%' {
            match (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                (Some(h), Some(l)) => Some(h * 16 + l),
                _ => None,
            }
        } else {
            None
        };
        match decoded {
            Some(v) if is_unreserved(v) => {
                out.push(v);
                i += 3;
            }
            Some(v) => {
                out.extend_from_slice(format!("%{v:02X}").as_bytes());
                i += 3;
            }
            // A stray '%' is spelled as an encoding, or it could join the bytes after it
            // into one on a second pass ("%%32e" would become "%2e", then ".").
            None if b == b'%' => {
                out.extend_from_slice(b"%25");
                i += 1;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only whole UTF-8 sequences and ASCII were copied, so this is the input's own text.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> RequestPath<'_> {
        check(p.as_bytes()).unwrap_or_else(|e| panic!("{p:?} refused: {e}"))
    }

    #[test]
    fn accepts_ordinary_vendor_paths() {
        for p in [
            "/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15",
            "/v1/payment_intents",
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
            "/v1/chat/completions",
            "/emails",
            "/v1/customers/search",
            "/v1/phone/%2B15551234567",
        ] {
            let rp = ok(p);
            assert_eq!(rp.path, p);
            assert_eq!(rp.query, None);
            assert_eq!(canonicalize(p), p, "accepted paths are canonical");
        }
    }

    #[test]
    fn splits_query_and_keeps_it_verbatim() {
        let rp = ok("/v1/charges?limit=3&starting_after=ch_1&expand[]=data.customer");
        assert_eq!(rp.path, "/v1/charges");
        assert_eq!(
            rp.query,
            Some("limit=3&starting_after=ch_1&expand[]=data.customer")
        );
        assert_eq!(rp.segments().collect::<Vec<_>>(), ["v1", "charges"]);
        // A query may hold dots, slashes and encoded anything: it is not matched.
        assert!(check(b"/v1/files?purpose=a/b.c&x=%2F%2e").is_ok());
    }

    #[test]
    fn refuses_every_ambiguous_spelling() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("v1/charges", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/v1/../admin", PathError::DotSegment),
            ("/v1/./charges", PathError::DotSegment),
            ("/v1/charges/..", PathError::DotSegment),
            ("/v1//charges", PathError::EmptySegment),
            ("//v1/charges", PathError::EmptySegment),
            ("/v1/charges/", PathError::EmptySegment),
            ("/", PathError::EmptySegment),
            ("/v1/%2e%2e/admin", PathError::EncodedForbidden(b'.')),
            ("/v1/%2E%2E/admin", PathError::EncodedForbidden(b'.')),
            ("/v1/charges%2fch_1", PathError::EncodedForbidden(b'/')),
            ("/v1/charges%2Fch_1", PathError::EncodedForbidden(b'/')),
            ("/v1/charges%5cch_1", PathError::EncodedForbidden(b'\\')),
            ("/v1/charges%5Cch_1", PathError::EncodedForbidden(b'\\')),
            ("/v1/charges/%252e%252e", PathError::EncodedForbidden(b'%')),
            ("/v1/charges/ch_1%3bx", PathError::EncodedForbidden(b';')),
            ("/v1/charges/ch_1%3Fx", PathError::EncodedForbidden(b'?')),
            ("/v1/charges/ch_1%23x", PathError::EncodedForbidden(b'#')),
            ("/v1/charges/ch_1%00", PathError::EncodedForbidden(0)),
            ("/v1/charges/ch_1%C3%A9", PathError::EncodedForbidden(0xc3)),
            ("/v1/ch%61rges", PathError::NonCanonicalEncoding),
            ("/v1/charges/%2b1", PathError::NonCanonicalEncoding),
            ("/v1/charges/%", PathError::BadPercentEncoding),
            ("/v1/charges/%2", PathError::BadPercentEncoding),
            ("/v1/charges/%zz", PathError::BadPercentEncoding),
            ("/v1/charges;a=b", PathError::ForbiddenByte(b';')),
            ("/v1/charges/ch_1;.json", PathError::ForbiddenByte(b';')),
            ("/v1\\charges", PathError::ForbiddenByte(b'\\')),
            ("/v1/charges#frag", PathError::ForbiddenByte(b'#')),
            ("/v1/charges?x=1#frag", PathError::ForbiddenByte(b'#')),
            ("/v1/charges ", PathError::ForbiddenByte(b' ')),
            ("/v1/char\tges", PathError::ForbiddenByte(b'\t')),
            ("/v1/charges\r\n", PathError::ForbiddenByte(b'\r')),
            ("/v1/charges\x7f", PathError::ForbiddenByte(0x7f)),
            ("/v1/charges?q=%zz", PathError::BadPercentEncoding),
        ];
        for (p, want) in cases {
            assert_eq!(check(p.as_bytes()).err().as_ref(), Some(want), "{p:?}");
        }
        assert_eq!(
            check("/v1/ch\u{e9}".as_bytes()),
            Err(PathError::ForbiddenByte(0xc3))
        );
        assert_eq!(check(&[b'/', 0xff]), Err(PathError::ForbiddenByte(0xff)));
        assert_eq!(check(&[b'/', 0]), Err(PathError::ForbiddenByte(0)));
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(check(long.as_bytes()), Err(PathError::TooLong));
    }

    #[test]
    fn canonicalize_resolves_what_check_refuses() {
        assert_eq!(canonicalize("/v1/../admin"), "/admin");
        assert_eq!(canonicalize("/v1//charges/"), "/v1/charges");
        assert_eq!(canonicalize("/v1/ch%61rges"), "/v1/charges");
        assert_eq!(canonicalize("/v1/%2b1"), "/v1/%2B1");
        assert_eq!(canonicalize("/v1/%2e%2e/admin"), "/admin");
    }

    #[test]
    fn canonicalize_is_idempotent() {
        // Found by fuzz/fuzz_targets/path.rs: a stray '%' joined the decoded bytes after it
        // into a new encoding ("%6%61" became "%6a"), and non-ASCII text was re-encoded as
        // Latin-1 on every pass.
        for (p, want) in [
            ("/v/ch%6%61r", "/v/ch%256ar"),
            ("/a/%%32e", "/a/%252e"),
            ("/a/%", "/a/%25"),
            ("/a/%2", "/a/%252"),
            ("/a/%zz", "/a/%25zz"),
            ("/v1/ch\u{e9}rges", "/v1/ch\u{e9}rges"),
            ("/\u{1F600}/%F0%9F%98%80", "/\u{1F600}/%F0%9F%98%80"),
        ] {
            let once = canonicalize(p);
            assert_eq!(once, want, "{p:?}");
            assert_eq!(canonicalize(&once), once, "{p:?}");
        }
    }
}
