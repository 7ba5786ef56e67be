//! Property tests of the request path's pure logic.
//!
//! - **Strict paths** (`path::check`, `glob`): from an alphabet heavy in `/`, `.`, `%`, hex
//!   digits, `;`, `\`, `#`, `*`, `?`, controls and non-ASCII bytes, and from valid paths with
//!   such pieces inserted. An accepted path is its own canonical form; read by a decoder
//!   (one percent-decoding pass) it has the same segments, none of them empty, `.` or `..`,
//!   and nothing left to decode again or to split on; a glob matches it exactly when each
//!   segment matches its glob segment (`*` never crossing a `/`); and a glob matches it and
//!   its canonical form alike.
//! - **Narrowing only narrows** (`decision::Gate`, `issue`, `policy::effective_caps`): for
//!   random policies (endpoints, merchants, caps) and random token narrowing (endpoints
//!   inside, overlapping, wider than or disjoint from the policy's; merchants likewise; caps
//!   lower and higher), every request the real gate allows with the narrowed token, it also
//!   allows with a token of the same policy and no narrowing, on the same policy endpoint and
//!   for the same merchant; an allowed request's path is strict; effective caps are never
//!   above the policy's or the token's; and issuance refuses any narrowing that would widen
//!   (a cap above the policy's, a merchant or endpoint outside it, a longer TTL) while
//!   accepting what is plainly inside.
//!
//! - **Only the signing key mints** (`token`): for random claims, a token signed by any other
//!   key (random secrets, the proxies' own public keys taken for secrets, under every known
//!   key id) or carrying random signature bytes is refused by the public keys a proxy holds,
//!   while the signing key's token verifies to exactly its claims.
//!
//! `PROPTEST_CASES` sets every property's case count.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable
)]

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bridle_core::config::FilterConfig;
use bridle_core::decision::{Gate, Request};
use bridle_core::glob::{EndpointPattern, PathGlob};
use bridle_core::issue::{claims_for, IssueRequest};
use bridle_core::money::Usd;
use bridle_core::path;
use bridle_core::policy::{effective_caps, Caps, CapsNarrowing, Endpoint, Merchants, Policy};
use bridle_core::revocation::RevocationSet;
use bridle_core::token::{Claims, PublicKeys, SigningKey, TokenError};
use bridle_core::vendor::Vendor;
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        ..Config::default()
    }
}

// --- paths -------------------------------------------------------------------------------

const ENCODINGS: [&str; 30] = [
    "%", "%2", "%zz", "%g0", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%3b", "%3B", "%3f",
    "%3F", "%23", "%41", "%61", "%7e", "%7E", "%2b", "%2B", "%20", "%00", "%0A", "%7F", "%C3%A9",
    "%c3", "%252e", "%2525",
];
const WORDS: [&str; 14] = [
    "v1",
    "charges",
    "ch_1",
    "ch_",
    "payment_intents",
    "a",
    "Z",
    "-",
    "_",
    "~",
    "+",
    "x.json",
    "2010-04-01",
    "Accounts",
];
const VALID: [&str; 6] = [
    "/v1/charges/ch_1",
    "/v1/payment_intents",
    "/v1/charges/ch_1/refunds",
    "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
    "/v1/phone/%2B15551234567",
    "/v1/files/a.json?x=1",
];

fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => Just(b"/".to_vec()),
        4 => Just(b".".to_vec()),
        2 => Just(b"..".to_vec()),
        5 => prop::sample::select(ENCODINGS.to_vec()).prop_map(|s| s.as_bytes().to_vec()),
        3 => prop::sample::select(b"0123456789abcdefABCDEF".to_vec()).prop_map(|b| vec![b]),
        5 => prop::sample::select(WORDS.to_vec()).prop_map(|s| s.as_bytes().to_vec()),
        3 => prop::sample::select(b";\\#*?".to_vec()).prop_map(|b| vec![b]),
        2 => prop::sample::select(vec![
            vec![0xc3, 0xa9],
            vec![0xff],
            vec![0x00],
            vec![b'\t'],
            vec![b'\r', b'\n'],
            vec![0x7f],
            vec![b' '],
            vec![0x80],
        ]),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ]
}

/// Raw `:path` values: free-form from the pieces, or valid paths with pieces inserted.
fn raw_path() -> impl Strategy<Value = Vec<u8>> {
    let free = prop::collection::vec(piece(), 0..14).prop_map(|ps| ps.concat());
    let rooted =
        prop::collection::vec(piece(), 0..14).prop_map(|ps| [b"/".to_vec(), ps.concat()].concat());
    let derived = (
        prop::sample::select(VALID.to_vec()),
        prop::collection::vec((any::<prop::sample::Index>(), piece()), 0..4),
    )
        .prop_map(|(valid, inserts)| {
            let mut p = valid.as_bytes().to_vec();
            for (at, piece) in inserts {
                let i = at.index(p.len() + 1);
                p.splice(i..i, piece);
            }
            p
        });
    prop_oneof![2 => free, 3 => rooted, 3 => derived]
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// One pass of percent-decoding, as any server or framework would do.
fn decode_once(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let pair = b
            .get(i + 1)
            .copied()
            .and_then(hex)
            .zip(b.get(i + 2).copied().and_then(hex));
        match (b[i], pair) {
            (b'%', Some((h, l))) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// What "unambiguous" means, said without the checker's own code: the path is printable
/// ASCII without `#`, `\` or `;`; decoded once, its segments are the same ones, none empty,
/// `.` or `..`, and nothing in them decodes again, splits or ends the path.
fn assert_unambiguous(p: &str) -> Result<(), TestCaseError> {
    prop_assert!(p.starts_with('/'), "{:?}", p);
    prop_assert!(
        p.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !b"#\\;?".contains(&b)),
        "{:?}",
        p
    );
    prop_assert!(!p.contains("//") && !p.ends_with('/'), "{:?}", p);
    let raw: Vec<&str> = p.split('/').skip(1).collect();
    let decoded = decode_once(p);
    let segs: Vec<&[u8]> = decoded.split(|&b| b == b'/').skip(1).collect();
    prop_assert_eq!(raw.len(), segs.len(), "a decoded separator in {:?}", p);
    for s in &segs {
        prop_assert!(
            !s.is_empty() && *s != b"." && *s != b"..",
            "segment {:?} of {:?}",
            String::from_utf8_lossy(s),
            p
        );
        prop_assert!(
            s.iter()
                .all(|&b| (0x20..0x7f).contains(&b) && !b"%\\;?#".contains(&b)),
            "segment {:?} of {:?} decodes to something ambiguous",
            String::from_utf8_lossy(s),
            p
        );
    }
    Ok(())
}

/// A glob segment against a path segment, `*` matching any run of characters.
fn wild(pattern: &[u8], s: &[u8]) -> bool {
    match pattern.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| wild(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && wild(rest, &s[1..]),
    }
}

fn glob_oracle(glob: &str, p: &str) -> bool {
    let g: Vec<&str> = glob.split('/').collect();
    let s: Vec<&str> = p.split('/').collect();
    g.len() == s.len()
        && g.iter()
            .zip(&s)
            .all(|(g, s)| wild(g.as_bytes(), s.as_bytes()))
}

const GLOB_SEGMENTS: [&str; 10] = [
    "v1", "charges", "ch_1", "ch_*", "*", "*.json", "*_*", "x.json", "refunds", "%2B1*",
];

fn glob_source() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(GLOB_SEGMENTS.to_vec()), 1..5)
        .prop_map(|segs| format!("/{}", segs.join("/")))
}

/// Paths made to be matched by globs: glob segments with each `*` filled in.
fn glob_path() -> impl Strategy<Value = String> {
    let filler = prop::sample::select(vec![
        "", "1", "ch_1", "x", "_", "a.b", "%2B", "json", ".json",
    ]);
    (glob_source(), prop::collection::vec(filler, 8)).prop_map(|(g, fill)| {
        let mut out = String::new();
        let mut f = fill.iter().cycle();
        for c in g.chars() {
            if c == '*' {
                out.push_str(f.next().unwrap());
            } else {
                out.push(c);
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(config(4096))]

    /// Accepted paths are canonical and unambiguous, and whatever globs match them match
    /// their canonical form alike (it is the same string).
    #[test]
    fn accepted_paths_are_canonical_and_unambiguous(
        raw in raw_path(),
        globs in prop::collection::vec(glob_source(), 3),
    ) {
        if let Ok(rp) = path::check(&raw) {
            let canonical = path::canonicalize(rp.path);
            prop_assert_eq!(&canonical, rp.path);
            assert_unambiguous(rp.path)?;
            let again = path::check(canonical.as_bytes()).unwrap();
            for g in globs.iter().filter_map(|g| PathGlob::parse(g).ok()) {
                prop_assert_eq!(g.matches(&rp), g.matches(&again));
            }
            // The query is split off at the first '?', and the bytes are exactly the input.
            let whole = match rp.query {
                Some(q) => format!("{}?{q}", rp.path),
                None => rp.path.to_string(),
            };
            prop_assert_eq!(whole.as_bytes(), &raw[..]);
        }
    }

    /// A glob matches an accepted path exactly when the segments line up one to one and each
    /// matches, `*` standing for any run of characters inside one segment; so every path a
    /// policy glob matches is one `check` accepted, with no `..`, `//` or encoded separator.
    #[test]
    fn globs_match_segment_by_segment(
        glob in glob_source(),
        p in prop_oneof![glob_path(), raw_path().prop_map(|b| String::from_utf8_lossy(&b).into_owned())],
    ) {
        let Ok(g) = PathGlob::parse(&glob) else { return Ok(()) };
        let Ok(rp) = path::check(p.as_bytes()) else { return Ok(()) };
        prop_assert_eq!(g.matches(&rp), glob_oracle(&glob, rp.path), "{} vs {}", glob, rp.path);
        if g.matches(&rp) {
            assert_unambiguous(rp.path)?;
        }
    }

    /// `is_within`, which issuance relies on, is sound: a path the inner pattern matches, the
    /// outer one matches too.
    #[test]
    fn is_within_is_sound(inner in glob_source(), outer in glob_source(), paths in prop::collection::vec(glob_path(), 16)) {
        let (Ok(i), Ok(o)) = (PathGlob::parse(&inner), PathGlob::parse(&outer)) else { return Ok(()) };
        if i.is_within(&o) {
            for p in &paths {
                if let Ok(rp) = path::check(p.as_bytes()) {
                    prop_assert!(!i.matches(&rp) || o.matches(&rp), "{} within {} but {}", inner, outer, p);
                }
            }
        }
    }
}

// --- scope -------------------------------------------------------------------------------

const NOW: u64 = 1_800_000_000;
const STRIPE_ACCOUNTS: [&str; 4] = ["acct_1A", "acct_2B", "acct_3C", "acct_9Z"];
const TWILIO_ACCOUNTS: [&str; 3] = [
    "AC0123456789abcdef0123456789abcdef",
    "ACfedcba9876543210fedcba9876543210",
    "AC00000000000000000000000000000000",
];

/// Endpoints a policy picks from, and (with the extra ones) a token's narrowing.
fn endpoint_pool(vendor: Vendor) -> Vec<&'static str> {
    match vendor {
        Vendor::Stripe => vec![
            "POST /v1/payment_intents",
            "GET /v1/payment_intents/*",
            "GET /v1/charges/*",
            "GET /v1/charges/ch_*",
            "POST /v1/refunds",
            "GET /v1/customers/*/sources",
            "DELETE /v1/customers/*",
        ],
        Vendor::Twilio => vec![
            "POST /2010-04-01/Accounts/*/Messages.json",
            "GET /2010-04-01/Accounts/*/Messages/*",
            "GET /2010-04-01/Accounts/*",
            "POST /2010-04-01/Accounts/*/Calls.json",
        ],
        _ => vec![
            "POST /v1/chat/completions",
            "POST /v1/embeddings",
            "GET /v1/models/*",
            "GET /v1/files/*",
        ],
    }
}

/// Narrowing candidates beyond the pool: narrower, wider, other methods, disjoint.
fn narrowing_extras(vendor: Vendor) -> Vec<&'static str> {
    match vendor {
        Vendor::Stripe => vec![
            "GET /v1/charges/ch_1",
            "GET /v1/*/*",
            "POST /v1/charges/*",
            "GET /v1/charges/py_*",
            "GET /v1/customers/cus_1/sources",
            "POST /v1/payouts",
            "GET /v1/payment_intents/pi_*",
        ],
        Vendor::Twilio => vec![
            "POST /2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
            "GET /2010-04-01/Accounts/*/Calls.json",
            "GET /2010-04-01/*/*",
            "DELETE /2010-04-01/Accounts/*",
        ],
        _ => vec![
            "POST /v1/*/completions",
            "GET /v1/models/gpt-*",
            "POST /v1/images/generations",
            "GET /v1/*",
        ],
    }
}

fn accounts(vendor: Vendor) -> Vec<&'static str> {
    match vendor {
        Vendor::Stripe => STRIPE_ACCOUNTS.to_vec(),
        Vendor::Twilio => TWILIO_ACCOUNTS.to_vec(),
        _ => vec![],
    }
}

#[derive(Clone, Debug)]
struct Narrowing {
    endpoints: Option<Vec<String>>,
    merchants: Option<Vec<String>>,
    caps: CapsNarrowing,
    ttl_s: u64,
}

#[derive(Clone)]
struct Probe {
    method: &'static str,
    path: Vec<u8>,
    /// Stripe-Account headers (several, or a joined one, are ambiguous).
    headers: Vec<String>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} \"{}\" {:?}",
            self.method,
            self.path.escape_ascii(),
            self.headers
        )
    }
}

fn usd_opt(max: i64) -> impl Strategy<Value = Option<Usd>> {
    prop::option::weighted(
        0.6,
        (0..=max).prop_map(|d| Usd::from_cents(d * 100).unwrap()),
    )
}

fn caps() -> impl Strategy<Value = Caps> {
    (usd_opt(100), usd_opt(500), usd_opt(2000), usd_opt(5000)).prop_map(|(a, b, c, d)| Caps {
        per_transaction: a,
        per_window: b,
        lifetime: c,
        policy_per_window: d,
        ..Caps::default()
    })
}

fn policy(vendor: Vendor) -> impl Strategy<Value = Policy> {
    let pool = endpoint_pool(vendor);
    let n = pool.len();
    let accts = accounts(vendor);
    (
        prop::sample::subsequence(pool, 1..=n),
        prop::sample::subsequence(accts.clone(), 0..=accts.len()),
        any::<bool>(),
        caps(),
        1u64..=48,
    )
        .prop_map(move |(endpoints, allow, unscoped, caps, ttl_h)| {
            let has_tenants = !accounts(vendor).is_empty();
            Policy {
                name: "p".into(),
                vendor,
                description: String::new(),
                secret_env: "SECRET".into(),
                max_ttl: Duration::from_secs(ttl_h * 3600),
                merchants: Merchants {
                    allow: if has_tenants {
                        allow.iter().map(|s| s.to_string()).collect()
                    } else {
                        vec![]
                    },
                    allow_unscoped: has_tenants && (unscoped || allow.is_empty()),
                    allow_stripe_context: false,
                },
                endpoints: endpoints
                    .into_iter()
                    .map(|e| {
                        let (method, path) = e.split_once(' ').unwrap();
                        Endpoint {
                            method: method.into(),
                            path: path.into(),
                            cost: None,
                        }
                    })
                    .collect(),
                caps,
                loop_breaker: None,
                on_ledger_unavailable: Default::default(),
                fx: Default::default(),
                models: None,
                lease: None,
            }
        })
}

fn narrowing(vendor: Vendor) -> impl Strategy<Value = Narrowing> {
    let specs: Vec<&str> = endpoint_pool(vendor)
        .into_iter()
        .chain(narrowing_extras(vendor))
        .collect();
    let accts = accounts(vendor);
    let n = accts.len();
    (
        prop::option::weighted(0.7, prop::sample::subsequence(specs.clone(), 0..=4)),
        prop::option::weighted(0.5, prop::sample::subsequence(accts, 0..=n.min(3))),
        (usd_opt(150), usd_opt(700), usd_opt(2500)),
        prop_oneof![Just(60u64), Just(3600), Just(48 * 3600), Just(72 * 3600)],
    )
        .prop_map(|(endpoints, merchants, (a, b, c), ttl_s)| Narrowing {
            endpoints: endpoints.map(|e| e.into_iter().map(String::from).collect()),
            merchants: merchants.map(|m| m.into_iter().map(String::from).collect()),
            caps: CapsNarrowing {
                per_transaction: a,
                per_window: b,
                lifetime: c,
            },
            ttl_s,
        })
}

/// Requests: every endpoint spec the test knows, with each `*` filled in (sometimes badly),
/// or an arbitrary raw path; with 0, 1 or 2 merchant headers.
fn probe(vendor: Vendor) -> impl Strategy<Value = Probe> {
    let specs: Vec<&'static str> = endpoint_pool(vendor)
        .into_iter()
        .chain(narrowing_extras(vendor))
        .collect();
    let mut fillers: Vec<String> = [
        "ch_1",
        "py_1",
        "cus_1",
        "pi_1",
        "gpt-4",
        "x.json",
        "Messages.json",
        "",
        ".",
        "..",
        "a%2Fb",
        "%2e%2e",
        "ch_1;x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fillers.extend(accounts(vendor).iter().map(|a| a.to_string()));
    fillers.extend(TWILIO_ACCOUNTS.iter().map(|a| format!("{a}.json")));
    let templated = (
        prop::sample::select(specs),
        prop::collection::vec(prop::sample::select(fillers), 3),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec!["GET", "POST", "DELETE", "PUT", "HEAD"]),
        ),
    )
        .prop_map(|(spec, fill, other_method)| {
            let (method, glob) = spec.split_once(' ').unwrap();
            let mut f = fill.iter();
            let path: String = glob
                .split('*')
                .enumerate()
                .map(|(i, part)| {
                    if i == 0 {
                        part.to_string()
                    } else {
                        format!("{}{part}", f.next().map_or("z", String::as_str))
                    }
                })
                .collect();
            (other_method.unwrap_or(method), path.into_bytes())
        });
    let raw = (
        prop::sample::select(vec!["GET", "POST", "DELETE"]),
        raw_path(),
    );
    let merchants: Vec<String> = STRIPE_ACCOUNTS
        .iter()
        .map(|s| s.to_string())
        .chain(["acct_1A,acct_2B".to_string()])
        .collect();
    (
        prop_oneof![4 => templated, 1 => raw],
        prop::collection::vec(prop::sample::select(merchants), 0..=2),
    )
        .prop_map(move |((method, path), headers)| Probe {
            method,
            path,
            headers: if vendor == Vendor::Stripe {
                headers
            } else {
                vec![]
            },
        })
}

fn keyring() -> SigningKey {
    SigningKey::from_seed("k1", &[7u8; 32]).unwrap()
}

fn claims(p: &Policy, n: &Narrowing, narrowed: bool) -> Claims {
    Claims {
        v: 1,
        id: "tok_1".into(),
        policy: p.name.clone(),
        vendor: p.vendor,
        iat: NOW - 10,
        exp: NOW - 10 + p.max_ttl.as_secs(),
        label: "acme/agent/run".into(),
        endpoints: if narrowed { n.endpoints.clone() } else { None },
        merchants: if narrowed { n.merchants.clone() } else { None },
        caps: if narrowed {
            n.caps.clone()
        } else {
            CapsNarrowing::default()
        },
    }
}

fn headers(vendor: Vendor, token: &str, probe: &Probe) -> Vec<(String, Vec<u8>)> {
    let auth = match vendor {
        Vendor::Twilio => format!("Basic {}", STANDARD.encode(format!("ACany:{token}"))),
        _ => format!("Bearer {token}"),
    };
    let mut h = vec![
        (":method".to_string(), probe.method.as_bytes().to_vec()),
        (":path".to_string(), probe.path.clone()),
        (":authority".to_string(), b"api.example".to_vec()),
        ("authorization".to_string(), auth.into_bytes()),
    ];
    h.extend(
        probe
            .headers
            .iter()
            .map(|m| ("stripe-account".to_string(), m.clone().into_bytes())),
    );
    h
}

/// `a <= b` where `None` is no cap at all.
fn at_most(a: Option<Usd>, b: Option<Usd>) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a <= b,
    }
}

fn scope_case(p: &Policy, n: &Narrowing, probes: &[Probe]) -> Result<(), TestCaseError> {
    let compiled = p.compile();
    prop_assert!(compiled.is_ok(), "{:?}", compiled.err());
    let compiled = compiled.unwrap();
    let gate = Gate::new(
        FilterConfig {
            vendor: p.vendor,
            policies: vec![p.clone()],
            ledger: None,
            public_keys_env: "K".into(),
            prices: Vec::new(),
        }
        .compile()
        .unwrap(),
        keyring().public_keys(),
    );
    let ring = keyring();
    let plain = ring.mint(&claims(p, n, false)).unwrap();
    // The narrowing as claimed (minted directly, so it may ask for more than the policy),
    // and as issuance would grant it, when it does.
    let mut narrowed = vec![claims(p, n, true)];
    let issued = claims_for(
        &compiled,
        &IssueRequest {
            policy: p.name.clone(),
            label: "acme/agent/run".into(),
            expires_in: Duration::from_secs(n.ttl_s),
            endpoints: n.endpoints.clone(),
            merchants: n.merchants.clone(),
            caps: n.caps.clone(),
        },
        "tok_2".into(),
        NOW - 10,
    );
    if let Ok(c) = &issued {
        narrowed.push(c.clone());
    }
    let revocations = RevocationSet::default();

    for c in &narrowed {
        // Caps: never above the policy's, nor the token's own.
        let eff = effective_caps(&p.caps, &c.caps);
        for (e, pol, tok) in [
            (
                eff.per_transaction,
                p.caps.per_transaction,
                c.caps.per_transaction,
            ),
            (eff.per_window, p.caps.per_window, c.caps.per_window),
            (eff.lifetime, p.caps.lifetime, c.caps.lifetime),
        ] {
            prop_assert!(
                at_most(e, pol) && at_most(e, tok),
                "{:?} from {:?} and {:?}",
                e,
                pol,
                tok
            );
            prop_assert!(e == pol || e == tok);
        }
        prop_assert_eq!(eff.policy_per_window, p.caps.policy_per_window);
        prop_assert_eq!(eff.window(), p.caps.window());

        let token = ring.mint(c).unwrap();
        for probe in probes {
            let Ok(grant) = gate.decide(
                &Request {
                    headers: &headers(p.vendor, &token, probe),
                },
                NOW,
                &revocations,
            ) else {
                continue;
            };
            let alone = gate.decide(
                &Request {
                    headers: &headers(p.vendor, &plain, probe),
                },
                NOW,
                &revocations,
            );
            prop_assert!(
                alone.is_ok(),
                "narrowed token allowed {:?} that the policy alone refuses: {:?}",
                probe,
                alone.err()
            );
            let alone = alone.unwrap();
            prop_assert!(std::sync::Arc::ptr_eq(&grant.endpoint, &alone.endpoint));
            prop_assert_eq!(&grant.merchant, &alone.merchant);
            prop_assert_eq!(&grant.path, &alone.path);
            prop_assert_eq!(&grant.method, &alone.method);
            // And what was allowed is inside the token's own narrowing and the policy.
            let rp = path::check(&probe.path).unwrap();
            prop_assert_eq!(rp.path, grant.path.as_str());
            assert_unambiguous(rp.path)?;
            prop_assert!(grant.endpoint.matches(&grant.method, &rp));
            prop_assert!(compiled
                .endpoints
                .iter()
                .any(|e| e.pattern.to_string() == grant.endpoint.pattern.to_string()));
            if let Some(specs) = &c.endpoints {
                prop_assert!(specs.iter().any(|s| EndpointPattern::parse(s)
                    .unwrap()
                    .matches(&grant.method, &rp)));
            }
            match &grant.merchant {
                Some(m) => {
                    prop_assert!(p.merchants.allow.contains(m));
                    prop_assert!(c.merchants.as_ref().is_none_or(|ms| ms.contains(m)));
                }
                None => prop_assert!(
                    accounts(p.vendor).is_empty()
                        || (p.merchants.allow_unscoped && c.merchants.is_none())
                ),
            }
        }
    }

    // Issuance: never wider than the policy; and what is plainly inside it is issued.
    let inside_endpoints = n.endpoints.as_ref().is_none_or(|e| {
        !e.is_empty()
            && e.iter().all(|s| {
                p.endpoints
                    .iter()
                    .any(|pe| *s == format!("{} {}", pe.method, pe.path))
            })
    });
    let inside_merchants = n.merchants.as_ref().is_none_or(|m| {
        !accounts(p.vendor).is_empty()
            && !m.is_empty()
            && m.iter().all(|x| p.merchants.allow.contains(x))
    });
    let inside_caps =
        at_most(n.caps.per_transaction, p.caps.per_transaction) || n.caps.per_transaction.is_none();
    let inside_caps = inside_caps
        && (at_most(n.caps.per_window, p.caps.per_window) || n.caps.per_window.is_none())
        && (at_most(n.caps.lifetime, p.caps.lifetime) || n.caps.lifetime.is_none());
    let inside_ttl = n.ttl_s <= p.max_ttl.as_secs();
    match &issued {
        Ok(c) => {
            prop_assert!(
                inside_caps,
                "issued caps above the policy's: {:?} vs {:?}",
                n.caps,
                p.caps
            );
            prop_assert!(
                inside_merchants,
                "issued merchants outside the policy: {:?}",
                n.merchants
            );
            prop_assert!(inside_ttl && c.exp - c.iat == n.ttl_s);
            // Every issued endpoint's paths are the policy's: probe each with its own paths.
            if let Some(specs) = &c.endpoints {
                for probe in probes {
                    let Ok(rp) = path::check(&probe.path) else {
                        continue;
                    };
                    let by_token = specs.iter().any(|s| {
                        EndpointPattern::parse(s)
                            .unwrap()
                            .matches(probe.method, &rp)
                    });
                    let by_policy = compiled
                        .endpoints
                        .iter()
                        .any(|e| e.matches(probe.method, &rp));
                    prop_assert!(
                        !by_token || by_policy,
                        "issued endpoints reach {} {}",
                        probe.method,
                        rp.path
                    );
                }
            }
        }
        Err(errors) => {
            prop_assert!(
                !(inside_endpoints && inside_merchants && inside_caps && inside_ttl),
                "refused a narrowing inside the policy: {:?}",
                errors
            );
        }
    }
    Ok(())
}

fn vendor() -> impl Strategy<Value = Vendor> {
    prop_oneof![
        Just(Vendor::Stripe),
        Just(Vendor::Twilio),
        Just(Vendor::Openai)
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn narrowing_never_widens_the_policy(
        (p, n, probes) in vendor().prop_flat_map(|v| (policy(v), narrowing(v), prop::collection::vec(probe(v), 24)))
    ) {
        scope_case(&p, &n, &probes)?;
    }
}

// --- signing -----------------------------------------------------------------------------

fn any_claims() -> impl Strategy<Value = Claims> {
    (
        "[a-z0-9-]{1,20}",
        "[A-Za-z0-9_-]{1,30}",
        0u64..4_000_000_000,
        prop::option::of(prop::collection::vec("(GET|POST) /v1/[a-z*]{1,8}", 0..3)),
    )
        .prop_map(|(policy, label, exp, endpoints)| Claims {
            v: 1,
            id: "tok_prop".into(),
            policy,
            vendor: Vendor::Stripe,
            iat: exp / 2,
            exp,
            label,
            endpoints,
            merchants: None,
            caps: CapsNarrowing::default(),
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn only_the_signing_key_mints(
        claims in any_claims(),
        seed in any::<[u8; 32]>(),
        signature in prop::collection::vec(any::<u8>(), 64),
    ) {
        let signer = SigningKey::from_seed("k2", &[2u8; 32]).unwrap();
        let previous = SigningKey::from_seed("k1", &[1u8; 32]).unwrap();
        let spec = format!("{},{}", signer.public_entry(), previous.public_entry());
        let proxy = PublicKeys::parse(&spec).unwrap();
        let token = signer.mint(&claims).unwrap();
        prop_assert_eq!(proxy.verify(&token), Ok(claims.clone()));

        let (signed, _) = token.rsplit_once('.').unwrap();
        let random = format!("{signed}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&signature));
        prop_assert!(proxy.verify(&random).is_err());

        // Any other secret, and the proxy's own public keys taken for secrets, under each
        // key id the proxy knows.
        let public_halves: Vec<[u8; 32]> = spec
            .split(',')
            .map(|e| {
                let b64 = e.split_once(':').unwrap().1;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b64)
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        for secret in std::iter::once(seed).chain(public_halves) {
            if secret == [2u8; 32] || secret == [1u8; 32] {
                continue;
            }
            for kid in ["k2", "k1"] {
                let forger = SigningKey::from_seed(kid, &secret).unwrap();
                prop_assert_eq!(
                    proxy.verify(&forger.mint(&claims).unwrap()),
                    Err(TokenError::BadSignature)
                );
            }
        }
    }
}
