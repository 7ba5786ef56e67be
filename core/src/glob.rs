//! Endpoint patterns: an HTTP method and a path glob, such as `GET /v1/charges/*`.
//!
//! Globs are matched one segment at a time, so `*` can never cross a `/`: `/v1/charges/*`
//! matches `/v1/charges/ch_1` and never `/v1/charges/ch_1/refunds`. Within a segment, `*`
//! matches any run of characters (`ch_*`). There is no `**` and no `?`: a pattern that needs
//! a deeper match must say so one segment at a time.

use std::fmt;

use wildmatch::WildMatch;

use crate::path::{self, RequestPath};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    Any,
    Glob(WildMatch),
}

impl Segment {
    fn matches(&self, s: &str) -> bool {
        match self {
            Segment::Literal(l) => l == s,
            Segment::Any => true,
            Segment::Glob(g) => g.matches(s),
        }
    }
}

/// A compiled path glob.
#[derive(Clone, Debug)]
pub struct PathGlob {
    source: String,
    segments: Vec<Segment>,
}

impl PathGlob {
    pub fn parse(source: &str) -> Result<PathGlob, PatternError> {
        let err = |why: &str| Err(PatternError(format!("path glob {source:?} {why}")));
        if source.contains('?') {
            return err("contains '?': globs match the path only, and '?' is not a wildcard");
        }
        if source.contains("**") {
            return err(
                "contains '**': '*' matches within one segment; list deeper paths explicitly",
            );
        }
        // A glob must itself be a strict path once its wildcards are read as ordinary text.
        let as_path = source.replace('*', "x");
        if let Err(e) = path::check(as_path.as_bytes()) {
            return err(&format!("is not a strict path: {e}"));
        }
        let segments = source
            .split('/')
            .skip(1)
            .map(|s| {
                if s == "*" {
                    Segment::Any
                } else if s.contains('*') {
                    Segment::Glob(WildMatch::new(s))
                } else {
                    Segment::Literal(s.to_string())
                }
            })
            .collect();
        Ok(PathGlob {
            source: source.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when every path this glob matches, `outer` matches too: each segment is the
    /// same literal or glob, or a literal the outer segment matches, or outer's `*`.
    pub fn is_within(&self, outer: &PathGlob) -> bool {
        self.segments.len() == outer.segments.len()
            && self
                .segments
                .iter()
                .zip(&outer.segments)
                .all(|(inner, outer)| match (inner, outer) {
                    (_, Segment::Any) => true,
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Literal(a), Segment::Glob(g)) => g.matches(a),
                    (Segment::Glob(a), Segment::Glob(b)) => a.pattern() == b.pattern(),
                    _ => false,
                })
    }

    pub fn matches(&self, path: &RequestPath<'_>) -> bool {
        let mut want = self.segments.iter();
        for got in path.segments() {
            match want.next() {
                Some(seg) if seg.matches(got) => {}
                _ => return false,
            }
        }
        want.next().is_none()
    }
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// `METHOD /path/glob`, e.g. `POST /v1/refunds`.
#[derive(Clone, Debug)]
pub struct EndpointPattern {
    pub method: String,
    pub path: PathGlob,
}

impl EndpointPattern {
    pub fn new(method: &str, path: &str) -> Result<EndpointPattern, PatternError> {
        if !METHODS.contains(&method) {
            return Err(PatternError(format!(
                "method {method:?} is not one of {}",
                METHODS.join(", ")
            )));
        }
        Ok(EndpointPattern {
            method: method.to_string(),
            path: PathGlob::parse(path)?,
        })
    }

    /// Parses the one-string form used in token narrowing: `"GET /v1/charges/*"`.
    pub fn parse(spec: &str) -> Result<EndpointPattern, PatternError> {
        match spec.split_once(' ') {
            Some((method, path)) => EndpointPattern::new(method, path),
            None => Err(PatternError(format!(
                "endpoint {spec:?} must be \"METHOD /path/glob\", e.g. \"GET /v1/charges/*\""
            ))),
        }
    }

    pub fn matches(&self, method: &str, path: &RequestPath<'_>) -> bool {
        self.method == method && self.path.matches(path)
    }

    pub fn is_within(&self, outer: &EndpointPattern) -> bool {
        self.method == outer.method && self.path.is_within(&outer.path)
    }
}

impl fmt::Display for EndpointPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, p: &str) -> bool {
        PathGlob::parse(glob)
            .unwrap()
            .matches(&path::check(p.as_bytes()).unwrap())
    }

    #[test]
    fn star_stays_inside_one_segment() {
        assert!(m("/v1/charges/*", "/v1/charges/ch_1"));
        assert!(!m("/v1/charges/*", "/v1/charges/ch_1/refunds"));
        assert!(!m("/v1/charges/*", "/v1/charges"));
        assert!(m("/v1/charges/ch_*", "/v1/charges/ch_1"));
        assert!(!m("/v1/charges/ch_*", "/v1/charges/py_1"));
        assert!(m("/v1/*/refunds", "/v1/charges/refunds"));
        assert!(!m("/v1/*/refunds", "/v1/a/b/refunds"));
        assert!(m(
            "/2010-04-01/Accounts/*/Messages.json",
            "/2010-04-01/Accounts/AC1/Messages.json"
        ));
        assert!(!m(
            "/2010-04-01/Accounts/*/Messages.json",
            "/2010-04-01/Accounts/AC1/Calls.json"
        ));
        assert!(m("/v1/files/*.json", "/v1/files/a.json"));
        assert!(!m("/v1/files/*.json", "/v1/files/a.jsonx"));
    }

    #[test]
    fn literal_matching_is_exact_and_case_sensitive() {
        assert!(m("/v1/charges", "/v1/charges"));
        assert!(!m("/v1/charges", "/v1/Charges"));
        assert!(!m("/v1/charges", "/v1/charges/x"));
        assert!(!m("/v1/charges", "/v1"));
        assert!(!m("/v1/charges", "/v1/chargesx"));
        // An encoded byte is not its plain spelling: %2B is not '+'.
        assert!(!m("/v1/phone/+1", "/v1/phone/%2B1"));
    }

    #[test]
    fn malformed_globs_are_refused_with_a_reason() {
        for (g, why) in [
            ("v1/charges", "start with '/'"),
            ("/v1//charges", "empty segment"),
            ("/v1/charges/", "empty segment"),
            ("/v1/../charges", "'.' or '..'"),
            ("/v1/**", "'**'"),
            ("/v1/charge?", "'?'"),
            ("/v1/%2fx", "forbidden byte"),
            ("/v1/char ges", "forbidden byte"),
            ("/v1/x;y", "forbidden byte"),
            ("", "empty"),
        ] {
            let e = PathGlob::parse(g).unwrap_err().to_string();
            assert!(e.contains(why), "{g:?}: {e}");
        }
    }

    #[test]
    fn narrower_patterns_are_within_wider_ones() {
        let within = |a: &str, b: &str| {
            EndpointPattern::parse(a)
                .unwrap()
                .is_within(&EndpointPattern::parse(b).unwrap())
        };
        assert!(within("GET /v1/charges/*", "GET /v1/charges/*"));
        assert!(within("GET /v1/charges/ch_1", "GET /v1/charges/*"));
        assert!(within("GET /v1/charges/ch_1", "GET /v1/charges/ch_*"));
        assert!(within("GET /v1/charges/ch_*", "GET /v1/charges/*"));
        assert!(!within("GET /v1/charges/*", "GET /v1/charges/ch_*"));
        assert!(!within("GET /v1/charges/py_1", "GET /v1/charges/ch_*"));
        assert!(!within("POST /v1/charges/ch_1", "GET /v1/charges/*"));
        assert!(!within("GET /v1/charges", "GET /v1/charges/*"));
        assert!(!within("GET /v1/charges/*/refunds", "GET /v1/charges/*"));
    }

    #[test]
    fn endpoint_patterns_match_method_exactly() {
        let e = EndpointPattern::parse("POST /v1/refunds").unwrap();
        let p = path::check(b"/v1/refunds").unwrap();
        assert!(e.matches("POST", &p));
        assert!(!e.matches("GET", &p));
        assert!(!e.matches("post", &p));
        assert!(EndpointPattern::parse("FETCH /x").is_err());
        assert!(EndpointPattern::parse("GET").is_err());
        assert!(EndpointPattern::parse("GET  /x").is_err());
        assert_eq!(e.to_string(), "POST /v1/refunds");
    }
}
