//! The decision on a request's headers: allow (and how to rewrite them) or deny (and why).
//!
//! Order matters. The credential is checked before anything about the request, so that an
//! unauthenticated caller learns nothing about the policy; the path is made strict before
//! it is matched; the tenant is checked last, against a path already known to be allowed.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::{CompiledConfig, ServedPolicy};
use crate::glob::EndpointPattern;
use crate::path::{self, RequestPath};
use crate::policy::{CompiledEndpoint, CompiledPolicy};
use crate::revocation::RevocationSet;
use crate::token::{self, Claims, PublicKeys};
use crate::token_cache::TokenCache;
use crate::token_scan;
use crate::vendor::{Presentation, Tenant, Vendor};
use crate::Reason;

/// Headers that carry a credential. Exactly one may be present.
const CREDENTIAL_HEADERS: [&str; 2] = ["authorization", "x-api-key"];
/// Headers always removed before forwarding: the agent's credentials, and method and path
/// overrides (Bridle authorizes on `:method` and `:path` alone, so no server may be told to
/// read another).
const STRIPPED_HEADERS: [&str; 8] = [
    "authorization",
    "x-api-key",
    "proxy-authorization",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];
/// Bridle's own namespace: never accepted from a client.
const BRIDLE_HEADER_PREFIX: &str = "x-bridle-";
/// Envoy's control headers: its router obeys some from the client (`x-envoy-retry-on` and
/// `x-envoy-max-retries` would replay a costed call under one reservation,
/// `x-envoy-upstream-rq-timeout-ms` cut it short), and Envoy cleans them only from requests
/// it deems external. The filter runs before the router: it removes every one, always.
/// (Removed rather than refused: a sidecar in front of the agent adds some of its own.)
const ENVOY_HEADER_PREFIX: &str = "x-envoy-";
/// Tokens verified once stay cached: signature and decoding are the costly part.
const TOKEN_CACHE_CAPACITY: usize = 1024;
/// Clock skew tolerated on `iat` between the issuer and this proxy.
const IAT_SKEW_SECS: u64 = 60;

/// A request's head, as the filter read it from the host.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// All headers, pseudo-headers included, names lowercase.
    pub headers: &'a [(String, Vec<u8>)],
}

impl<'a> Request<'a> {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of a header, in order.
    pub fn all(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Who a decision was about, when the token was genuine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub token_id: String,
    pub label: String,
    pub policy: String,
    /// The policy's stats slot ([`ServedPolicy::slot`]).
    pub slot: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    /// Safe to show the agent: never contains a credential.
    pub message: String,
    pub subject: Option<Subject>,
}

impl Denial {
    pub fn new(reason: Reason, message: impl Into<String>) -> Denial {
        Denial {
            reason,
            message: message.into(),
            subject: None,
        }
    }

    pub fn about(mut self, s: &Subject) -> Denial {
        self.subject = Some(s.clone());
        self
    }
}

/// A token whose signature checked out, with its narrowing compiled.
#[derive(Debug)]
pub struct VerifiedToken {
    pub claims: Claims,
    endpoints: Option<Vec<EndpointPattern>>,
}

#[derive(Clone)]
pub struct Grant {
    pub subject: Subject,
    /// The vault token as presented: sent on to the ledger (which verifies it again) for
    /// costed calls; never forwarded to the vendor, never logged.
    pub credential: String,
    pub token: Arc<VerifiedToken>,
    /// The policy that allowed the request.
    pub policy: Arc<ServedPolicy>,
    /// The policy's endpoint that matched: its cost rule applies.
    pub endpoint: Arc<CompiledEndpoint>,
    /// The tenant the request acts for, if the vendor has one and the request names it.
    pub merchant: Option<String>,
    /// Client headers to remove before the secret is injected.
    pub strip_headers: Vec<String>,
    pub method: String,
    pub path: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("presentation", &self.presentation)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Grant {
    /// Everything but the credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("subject", &self.subject)
            .field("endpoint", &self.endpoint.pattern)
            .field("merchant", &self.merchant)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The credential as presented, before verification.
#[derive(PartialEq, Eq)]
pub struct Credential {
    pub token: String,
    pub presentation: Presentation,
}

/// Finds the one credential on a request.
pub fn find_credential(req: &Request<'_>, vendor: Vendor) -> Result<Credential, Denial> {
    let mut found: Option<(&str, &[u8])> = None;
    let mut count = 0;
    for (name, value) in req.headers {
        if CREDENTIAL_HEADERS.contains(&name.as_str()) {
            count += 1;
            found = Some((name.as_str(), value.as_slice()));
        }
    }
    let Some((name, value)) = found else {
        return Err(Denial::new(
            Reason::TokenMissing,
            format!(
                "No Bridle vault token: send it as {}.",
                vendor.expected_presentation()
            ),
        ));
    };
    // Envoy joins repeated headers with a comma (RFC 9110 field combination); no credential
    // Bridle accepts contains one, so a comma means several credentials.
    if count > 1 || value.contains(&b',') {
        return Err(Denial::new(
            Reason::CredentialAmbiguous,
            "More than one credential header (Authorization, x-api-key): send exactly one vault token.",
        ));
    }
    let not_vault = || {
        Denial::new(
            Reason::TokenMalformed,
            format!(
                "The credential is not a Bridle vault token (bvt_...): send it as {}.",
                vendor.expected_presentation()
            ),
        )
    };
    let value = std::str::from_utf8(value).map_err(|_| not_vault())?;
    let (token, presentation) = if name == "x-api-key" {
        (value.to_string(), Presentation::ApiKeyHeader)
    } else {
        let (scheme, rest) = value.split_once(' ').ok_or_else(not_vault)?;
        if scheme.eq_ignore_ascii_case("bearer") {
            (rest.to_string(), Presentation::Bearer)
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD.decode(rest).map_err(|_| not_vault())?;
            let decoded = String::from_utf8(decoded).map_err(|_| not_vault())?;
            let (user, pass) = decoded.split_once(':').ok_or_else(not_vault)?;
            if user.starts_with(token::PREFIX) && pass.is_empty() {
                (user.to_string(), Presentation::BasicUser)
            } else if pass.starts_with(token::PREFIX) {
                (pass.to_string(), Presentation::BasicPassword)
            } else {
                return Err(not_vault());
            }
        } else {
            return Err(Denial::new(
                Reason::CredentialScheme,
                format!(
                    "Unsupported authorization scheme: send the vault token as {}.",
                    vendor.expected_presentation()
                ),
            ));
        }
    };
    if !token.starts_with(token::PREFIX) {
        return Err(not_vault());
    }
    Ok(Credential {
        token,
        presentation,
    })
}

/// Everything the filter needs to decide on request headers.
pub struct Gate {
    config: CompiledConfig,
    keys: PublicKeys,
    cache: TokenCache<VerifiedToken>,
}

impl Gate {
    pub fn new(config: CompiledConfig, keys: PublicKeys) -> Gate {
        Gate {
            config,
            keys,
            cache: TokenCache::new(TOKEN_CACHE_CAPACITY),
        }
    }

    pub fn config(&self) -> &CompiledConfig {
        &self.config
    }

    pub fn vendor(&self) -> Vendor {
        self.config.vendor
    }

    fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, Denial> {
        self.cache.get_or_verify(token, |token| {
            let claims = self
                .keys
                .verify(token)
                .map_err(|e| Denial::new(e.reason(), format!("{e}.")))?;
            let endpoints = match &claims.endpoints {
                None => None,
                Some(specs) => Some(
                    specs
                        .iter()
                        .map(|s| EndpointPattern::parse(s))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| {
                            Denial::new(
                                Reason::TokenMalformed,
                                "The vault token's endpoint narrowing is invalid.",
                            )
                        })?,
                ),
            };
            Ok(VerifiedToken { claims, endpoints })
        })
    }

    /// Decides on a request's headers. `now` is unix seconds.
    pub fn decide(
        &self,
        req: &Request<'_>,
        now: u64,
        revocations: &RevocationSet,
    ) -> Result<Grant, Denial> {
        let vendor = self.config.vendor;
        let credential = find_credential(req, vendor)?;
        let token = self.verify(&credential.token)?;
        let claims = &token.claims;

        if claims.vendor != vendor {
            return Err(Denial::new(
                Reason::TokenWrongVendor,
                format!(
                    "This vault token is for {}; this endpoint fronts {vendor}.",
                    claims.vendor
                ),
            ));
        }
        let Some(served) = self.config.policy(&claims.policy) else {
            return Err(Denial::new(
                Reason::TokenPolicyUnknown,
                format!(
                    "This vault token names policy {:?}, which this proxy does not serve.",
                    claims.policy
                ),
            ));
        };
        let policy = &served.compiled;
        let subject = Subject {
            token_id: claims.id.clone(),
            label: claims.label.clone(),
            policy: claims.policy.clone(),
            slot: served.slot,
        };

        check_time(claims, policy, now).map_err(|d| d.about(&subject))?;
        if !vendor.accepts(credential.presentation) {
            return Err(Denial::new(
                Reason::CredentialScheme,
                format!(
                    "Send the vault token as {}.",
                    vendor.expected_presentation()
                ),
            )
            .about(&subject));
        }
        if revocations.revokes(claims) {
            return Err(
                Denial::new(Reason::TokenRevoked, "This vault token has been revoked.")
                    .about(&subject),
            );
        }

        let method = req
            .header(":method")
            .and_then(|m| std::str::from_utf8(m).ok())
            .ok_or_else(|| {
                Denial::new(Reason::PathRejected, "The request has no method.").about(&subject)
            })?;
        let raw_path = req.header(":path").ok_or_else(|| {
            Denial::new(Reason::PathRejected, "The request has no path.").about(&subject)
        })?;
        let path = path::check(raw_path).map_err(|e| {
            Denial::new(
                Reason::PathRejected,
                format!("Refused an ambiguous path: {e}."),
            )
            .about(&subject)
        })?;

        let endpoint = policy
            .endpoints
            .iter()
            .find(|e| e.matches(method, &path))
            .ok_or_else(|| {
                Denial::new(
                    Reason::EndpointNotAllowed,
                    format!(
                        "{method} {} is not an endpoint that policy {:?} allows.",
                        path.path, claims.policy
                    ),
                )
                .about(&subject)
            })?;
        if let Some(narrowed) = &token.endpoints {
            if !narrowed.iter().any(|e| e.matches(method, &path)) {
                return Err(Denial::new(
                    Reason::EndpointNotAllowed,
                    format!(
                        "{method} {} is outside this vault token's endpoints.",
                        path.path
                    ),
                )
                .about(&subject));
            }
        }

        let merchant = check_merchant(req, &path, policy, claims).map_err(|d| d.about(&subject))?;
        check_content_encoding(req).map_err(|d| d.about(&subject))?;
        crate::idempotency::check_single(req).map_err(|d| d.about(&subject))?;
        let strip_headers = headers_to_strip(req);
        if carries_vault_token_elsewhere(req, &strip_headers) {
            return Err(Denial::new(
                Reason::CredentialAmbiguous,
                "A vault token may appear only in the credential header, never in the URL or another header.",
            )
            .about(&subject));
        }
        Ok(Grant {
            credential: credential.token.clone(),
            strip_headers,
            method: method.to_string(),
            path: path.path.to_string(),
            subject,
            token,
            policy: served.clone(),
            endpoint: endpoint.clone(),
            merchant,
        })
    }
}

fn check_time(claims: &Claims, policy: &CompiledPolicy, now: u64) -> Result<(), Denial> {
    if now >= claims.exp {
        return Err(Denial::new(
            Reason::TokenExpired,
            "This vault token has expired.",
        ));
    }
    if claims.iat > now.saturating_add(IAT_SKEW_SECS) {
        return Err(Denial::new(
            Reason::TokenNotYetValid,
            "This vault token is not valid yet.",
        ));
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > policy.policy.max_ttl.as_secs() {
        return Err(Denial::new(
            Reason::TokenTtlTooLong,
            format!(
                "This vault token lives longer than policy {:?} allows ({}).",
                policy.policy.name,
                crate::duration::format(policy.policy.max_ttl)
            ),
        ));
    }
    Ok(())
}

/// The tenant a request acts for, checked against the policy and the token's narrowing.
fn check_merchant(
    req: &Request<'_>,
    path: &RequestPath<'_>,
    policy: &CompiledPolicy,
    claims: &Claims,
) -> Result<Option<String>, Denial> {
    let rules = &policy.policy.merchants;
    let tenant = match policy
        .policy
        .vendor
        .tenant(req, path, rules, &policy.policy.name)?
    {
        None => return Ok(None),
        Some(Tenant::Named(t)) => Some(t),
        Some(Tenant::Unnamed) => None,
    };
    let token_allows = |t: &str| {
        claims
            .merchants
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == t))
    };
    match tenant {
        Some(t) => {
            if !rules.allow.contains(&t) {
                return Err(Denial::new(
                    Reason::MerchantNotAllowed,
                    format!(
                        "Merchant {t:?} is not allowed by policy {:?}.",
                        policy.policy.name
                    ),
                ));
            }
            if !token_allows(&t) {
                return Err(Denial::new(
                    Reason::MerchantNotAllowed,
                    format!("Merchant {t:?} is outside this vault token's merchants."),
                ));
            }
            Ok(Some(t))
        }
        None => {
            if !rules.allow_unscoped {
                return Err(Denial::new(
                    Reason::MerchantNotAllowed,
                    format!(
                        "Policy {:?} requires a merchant: name an allowed account.",
                        policy.policy.name
                    ),
                ));
            }
            if claims.merchants.is_some() {
                return Err(Denial::new(
                    Reason::MerchantNotAllowed,
                    "This vault token is limited to named merchants: name one of them.",
                ));
            }
            Ok(None)
        }
    }
}

/// Anything that looks like a vault token outside the headers Bridle strips would be
/// forwarded to the vendor; refuse instead. The query (in `:path`) and every header value
/// are read as the vendor may decode them: percent-encoded too.
fn carries_vault_token_elsewhere(req: &Request<'_>, stripped: &[String]) -> bool {
    req.headers
        .iter()
        .filter(|(name, _)| !stripped.contains(name))
        .any(|(_, value)| token_scan::contains_token(value))
}

/// A request body is read as it is sent: an encoded one (gzip, deflate, br...) would be
/// priced on bytes the vendor never reads, and read as something else once inflated. Only
/// `identity`, which means no encoding, passes; so does no header at all.
fn check_content_encoding(req: &Request<'_>) -> Result<(), Denial> {
    for value in req.all("content-encoding") {
        let identity =
            std::str::from_utf8(value).is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            let shown = String::from_utf8_lossy(value);
            return Err(Denial::new(
                Reason::BodyEncoded,
                format!(
                    "Content-Encoding {} is refused: Bridle reads request bodies as sent, so send the body uncompressed.",
                    crate::body::shown(shown.trim())
                ),
            ));
        }
    }
    Ok(())
}

fn headers_to_strip(req: &Request<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in req.headers {
        let strip = STRIPPED_HEADERS.contains(&name.as_str())
            || name.starts_with(BRIDLE_HEADER_PREFIX)
            || name.starts_with(ENVOY_HEADER_PREFIX);
        if strip && !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::stripe_config;
    use crate::config::FilterConfig;
    use crate::policy::Policy;
    use crate::revocation::{RevocationEntry, RevocationFeed, RevocationKind};
    use crate::token::tests::{keyring, public_keys};

    const NOW: u64 = 1_700_000_100;

    fn claims() -> Claims {
        let mut c = crate::token::tests::claims();
        c.endpoints = None;
        c
    }

    fn gate_for(config: FilterConfig) -> Gate {
        Gate::new(config.compile().unwrap(), public_keys())
    }

    fn gate() -> Gate {
        gate_for(stripe_config())
    }

    fn bearer(c: &Claims) -> Vec<u8> {
        format!("Bearer {}", keyring().mint(c).unwrap()).into_bytes()
    }

    fn req(method: &str, path: &str, extra: &[(&str, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
            (":authority".to_string(), b"localhost".to_vec()),
        ];
        h.extend(extra.iter().map(|(n, v)| (n.to_string(), v.clone())));
        h
    }

    fn decide(g: &Gate, headers: &[(String, Vec<u8>)]) -> Result<Grant, Denial> {
        g.decide(&Request { headers }, NOW, &RevocationSet::default())
    }

    fn reason(g: &Gate, headers: &[(String, Vec<u8>)]) -> Reason {
        match decide(g, headers) {
            Ok(_) => Reason::Allowed,
            Err(d) => d.reason,
        }
    }

    #[test]
    fn allows_a_good_request_and_strips_client_credentials() {
        let g = gate();
        let h = req(
            "POST",
            "/v1/payment_intents",
            &[
                ("authorization", bearer(&claims())),
                ("stripe-account", b"acct_1Merchant".to_vec()),
                ("x-http-method-override", b"DELETE".to_vec()),
                ("x-bridle-upstream", b"evil".to_vec()),
                ("proxy-authorization", b"x".to_vec()),
            ],
        );
        let grant = decide(&g, &h).unwrap();
        assert_eq!(grant.subject.token_id, "tok_123");
        assert_eq!(grant.merchant.as_deref(), Some("acct_1Merchant"));
        // The policy's first endpoint matched.
        assert!(Arc::ptr_eq(
            &grant.endpoint,
            &g.config().policies[0].endpoints[0]
        ));
        assert_eq!(
            grant.strip_headers,
            [
                "authorization",
                "x-http-method-override",
                "x-bridle-upstream",
                "proxy-authorization"
            ]
        );
    }

    #[test]
    fn credentials_are_found_in_each_vendor_presentation() {
        let token = keyring().mint(&claims()).unwrap();
        let basic_user = format!("Basic {}", STANDARD.encode(format!("{token}:")));
        let basic_pass = format!("Basic {}", STANDARD.encode(format!("AC123:{token}")));
        for (name, value, want) in [
            (
                "authorization",
                format!("Bearer {token}"),
                Presentation::Bearer,
            ),
            (
                "authorization",
                format!("bearer {token}"),
                Presentation::Bearer,
            ),
            ("authorization", basic_user, Presentation::BasicUser),
            ("authorization", basic_pass, Presentation::BasicPassword),
            ("x-api-key", token.clone(), Presentation::ApiKeyHeader),
        ] {
            let h = req("GET", "/x", &[(name, value.into_bytes())]);
            let c = find_credential(&Request { headers: &h }, Vendor::Stripe).unwrap();
            assert_eq!(c.presentation, want);
            assert_eq!(c.token, token);
        }
    }

    #[test]
    fn credential_problems_are_401_or_400_and_never_echo_the_credential() {
        let g = gate();
        let token = keyring().mint(&claims()).unwrap();
        type Case<'a> = (Vec<(&'a str, Vec<u8>)>, Reason);
        let cases: Vec<Case> = vec![
            (vec![], Reason::TokenMissing),
            (
                vec![("authorization", b"Bearer sk_live_realkey123".to_vec())],
                Reason::TokenMalformed,
            ),
            (
                vec![("authorization", b"Digest abc".to_vec())],
                Reason::CredentialScheme,
            ),
            (
                vec![("authorization", b"Bearer".to_vec())],
                Reason::TokenMalformed,
            ),
            (
                vec![("authorization", b"Basic !!!".to_vec())],
                Reason::TokenMalformed,
            ),
            (
                vec![("authorization", vec![b'B', 0xff])],
                Reason::TokenMalformed,
            ),
            (
                vec![
                    ("authorization", format!("Bearer {token}").into_bytes()),
                    ("authorization", format!("Bearer {token}").into_bytes()),
                ],
                Reason::CredentialAmbiguous,
            ),
            (
                vec![
                    ("authorization", format!("Bearer {token}").into_bytes()),
                    ("x-api-key", token.clone().into_bytes()),
                ],
                Reason::CredentialAmbiguous,
            ),
            (
                vec![("x-api-key", token.clone().into_bytes())],
                Reason::CredentialScheme,
            ),
            // What Envoy's HTTP/1 codec makes of two Authorization headers.
            (
                vec![(
                    "authorization",
                    format!("Bearer {token},Bearer {token}").into_bytes(),
                )],
                Reason::CredentialAmbiguous,
            ),
            (
                vec![("authorization", format!("Bearer {token}x").into_bytes())],
                Reason::TokenMalformed,
            ),
        ];
        for (extra, want) in cases {
            let h = req("POST", "/v1/payment_intents", &extra);
            let d = decide(&g, &h).unwrap_err();
            assert_eq!(d.reason, want, "{extra:?}");
            assert!(!d.message.contains("sk_live_realkey123") && !d.message.contains(&token));
        }
    }

    #[test]
    fn time_rules() {
        let g = gate();
        let mut c = claims();
        c.exp = NOW;
        assert_eq!(
            reason(
                &g,
                &req(
                    "POST",
                    "/v1/payment_intents",
                    &[
                        ("authorization", bearer(&c)),
                        ("stripe-account", b"acct_1Merchant".to_vec())
                    ]
                )
            ),
            Reason::TokenExpired
        );
        let mut c = claims();
        c.iat = NOW + 61;
        c.exp = NOW + 600;
        assert_eq!(
            reason(
                &g,
                &req(
                    "POST",
                    "/v1/payment_intents",
                    &[
                        ("authorization", bearer(&c)),
                        ("stripe-account", b"acct_1Merchant".to_vec())
                    ]
                )
            ),
            Reason::TokenNotYetValid
        );
        let mut c = claims();
        c.exp = c.iat + 3601; // policy max_ttl is 1h
        assert_eq!(
            reason(
                &g,
                &req(
                    "POST",
                    "/v1/payment_intents",
                    &[
                        ("authorization", bearer(&c)),
                        ("stripe-account", b"acct_1Merchant".to_vec())
                    ]
                )
            ),
            Reason::TokenTtlTooLong
        );
    }

    #[test]
    fn policy_and_vendor_must_match() {
        let g = gate();
        let mut c = claims();
        c.policy = "unknown".into();
        assert_eq!(
            reason(
                &g,
                &req("GET", "/v1/charges/ch_1", &[("authorization", bearer(&c))])
            ),
            Reason::TokenPolicyUnknown
        );
        let mut c = claims();
        c.vendor = Vendor::Openai;
        assert_eq!(
            reason(
                &g,
                &req("GET", "/v1/charges/ch_1", &[("authorization", bearer(&c))])
            ),
            Reason::TokenWrongVendor
        );
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let g = gate();
        let h = req(
            "GET",
            "/v1/charges/ch_1",
            &[
                ("authorization", bearer(&claims())),
                ("stripe-account", b"acct_1Merchant".to_vec()),
            ],
        );
        let mut set = RevocationSet::default();
        assert!(g.decide(&Request { headers: &h }, NOW, &set).is_ok());
        set.apply(&RevocationFeed {
            seq: 1,
            entries: vec![RevocationEntry {
                seq: 1,
                kind: RevocationKind::Token,
                value: "tok_123".into(),
                at: NOW,
                until: NOW + 3600,
                at_ms: 0,
            }],
            reset: false,
        });
        let d = g.decide(&Request { headers: &h }, NOW, &set).unwrap_err();
        assert_eq!(d.reason, Reason::TokenRevoked);
        assert_eq!(d.subject.unwrap().token_id, "tok_123");
    }

    #[test]
    fn endpoints_are_the_intersection_of_policy_and_token() {
        let g = gate();
        let auth = |c: &Claims| {
            vec![
                ("authorization", bearer(c)),
                ("stripe-account", b"acct_1Merchant".to_vec()),
            ]
        };
        let c = claims();
        assert_eq!(
            reason(&g, &req("GET", "/v1/charges/ch_1", &auth(&c))),
            Reason::Allowed
        );
        assert_eq!(
            reason(&g, &req("POST", "/v1/charges/ch_1", &auth(&c))),
            Reason::EndpointNotAllowed
        );
        assert_eq!(
            reason(&g, &req("GET", "/v1/charges/ch_1/refunds", &auth(&c))),
            Reason::EndpointNotAllowed
        );
        assert_eq!(
            reason(
                &g,
                &req("GET", "/v1/charges/ch_1?expand[]=customer", &auth(&c))
            ),
            Reason::Allowed
        );
        // The method override header does not change the decision: :method does.
        let mut h = req("GET", "/v1/charges/ch_1", &auth(&c));
        h.push(("x-http-method-override".into(), b"POST".to_vec()));
        assert_eq!(reason(&g, &h), Reason::Allowed);

        let mut narrow = claims();
        narrow.endpoints = Some(vec!["GET /v1/charges/*".into()]);
        assert_eq!(
            reason(&g, &req("GET", "/v1/charges/ch_1", &auth(&narrow))),
            Reason::Allowed
        );
        assert_eq!(
            reason(&g, &req("POST", "/v1/payment_intents", &auth(&narrow))),
            Reason::EndpointNotAllowed
        );
        // A token cannot widen: an endpoint only the token names is still refused.
        let mut wide = claims();
        wide.endpoints = Some(vec!["POST /v1/refunds".into(), "GET /v1/charges/*".into()]);
        assert_eq!(
            reason(&g, &req("POST", "/v1/refunds", &auth(&wide))),
            Reason::EndpointNotAllowed
        );
    }

    #[test]
    fn ambiguous_paths_are_refused_before_matching() {
        let g = gate();
        let auth = vec![
            ("authorization", bearer(&claims())),
            ("stripe-account", b"acct_1Merchant".to_vec()),
        ];
        for p in [
            "/v1/charges/../payment_intents",
            "/v1/charges//ch_1",
            "/v1/charges/ch_1%2f..",
            "/v1/charges/ch_1;x",
            "/v1/charges/ch_1#",
            "/v1/charges/ch_%31",
        ] {
            assert_eq!(
                reason(&g, &req("GET", p, &auth)),
                Reason::PathRejected,
                "{p}"
            );
        }
    }

    #[test]
    fn stripe_merchant_scope() {
        let g = gate();
        let t = bearer(&claims());
        let with = |extra: &[(&str, &[u8])]| {
            let mut e = vec![("authorization", t.clone())];
            e.extend(extra.iter().map(|(n, v)| (*n, v.to_vec())));
            reason(&g, &req("GET", "/v1/charges/ch_1", &e))
        };
        assert_eq!(
            with(&[("stripe-account", b"acct_1Merchant")]),
            Reason::Allowed
        );
        assert_eq!(
            with(&[("stripe-account", b"acct_9Other")]),
            Reason::MerchantNotAllowed
        );
        assert_eq!(
            with(&[]),
            Reason::MerchantNotAllowed,
            "the platform account needs allow_unscoped"
        );
        assert_eq!(
            with(&[
                ("stripe-account", b"acct_1Merchant"),
                ("stripe-account", b"acct_2Merchant")
            ]),
            Reason::MerchantAmbiguous
        );
        assert_eq!(
            with(&[("stripe-account", b"acct_1Merchant,acct_2Merchant")]),
            Reason::MerchantAmbiguous,
            "Envoy's join of two Stripe-Account headers"
        );
        assert_eq!(
            with(&[
                ("stripe-account", b"acct_1Merchant"),
                ("stripe-context", b"acct_1Merchant")
            ]),
            Reason::HeaderNotAllowed
        );

        let mut cfg = stripe_config();
        cfg.policies[0].merchants.allow_unscoped = true;
        cfg.policies[0].merchants.allow_stripe_context = true;
        let g = gate_for(cfg);
        let r = |extra: Vec<(&str, Vec<u8>)>| reason(&g, &req("GET", "/v1/charges/ch_1", &extra));
        assert_eq!(r(vec![("authorization", t.clone())]), Reason::Allowed);
        assert_eq!(
            r(vec![
                ("authorization", t.clone()),
                ("stripe-context", b"acct_2Merchant".to_vec())
            ]),
            Reason::Allowed
        );
        assert_eq!(
            r(vec![
                ("authorization", t.clone()),
                ("stripe-context", b"acct_3".to_vec())
            ]),
            Reason::MerchantNotAllowed
        );
        assert_eq!(
            r(vec![
                ("authorization", t.clone()),
                ("stripe-context", b"acct_2Merchant".to_vec()),
                ("stripe-account", b"acct_1Merchant".to_vec())
            ]),
            Reason::MerchantAmbiguous
        );
        let mut narrow = claims();
        narrow.merchants = Some(vec!["acct_2Merchant".into()]);
        let n = bearer(&narrow);
        assert_eq!(
            r(vec![
                ("authorization", n.clone()),
                ("stripe-account", b"acct_2Merchant".to_vec())
            ]),
            Reason::Allowed
        );
        assert_eq!(
            r(vec![
                ("authorization", n.clone()),
                ("stripe-account", b"acct_1Merchant".to_vec())
            ]),
            Reason::MerchantNotAllowed
        );
        assert_eq!(
            r(vec![("authorization", n)]),
            Reason::MerchantNotAllowed,
            "a narrowed token cannot use the platform account"
        );
    }

    fn twilio_gate() -> Gate {
        let policy: Policy = serde_json::from_value(serde_json::json!({
            "name": "twilio-sms", "vendor": "twilio", "secret_env": "TWILIO_SECRET", "max_ttl": "1h",
            "merchants": { "allow": ["AC0123456789abcdef0123456789abcdef"] },
            "endpoints": [
                { "method": "POST", "path": "/2010-04-01/Accounts/*/Messages.json" },
                { "method": "GET", "path": "/2010-04-01/Accounts/*" },
            ],
        }))
        .unwrap();
        gate_for(FilterConfig {
            vendor: Vendor::Twilio,
            policies: vec![policy],
            ledger: None,
            public_keys_env: "K".into(),
            prices: Vec::new(),
        })
    }

    #[test]
    fn twilio_account_scope_from_the_path() {
        let g = twilio_gate();
        let mut c = claims();
        c.policy = "twilio-sms".into();
        c.vendor = Vendor::Twilio;
        let token = keyring().mint(&c).unwrap();
        let basic =
            format!("Basic {}", STANDARD.encode(format!("ACwhatever:{token}"))).into_bytes();
        let r = |m: &str, p: &str| reason(&g, &req(m, p, &[("authorization", basic.clone())]));
        assert_eq!(
            r(
                "POST",
                "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
            ),
            Reason::Allowed
        );
        assert_eq!(
            r(
                "GET",
                "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef.json"
            ),
            Reason::Allowed
        );
        assert_eq!(
            r(
                "POST",
                "/2010-04-01/Accounts/ACffffffffffffffffffffffffffffffff/Messages.json"
            ),
            Reason::MerchantNotAllowed
        );
        // Bearer is not how Twilio SDKs authenticate.
        let bearer_h = req(
            "POST",
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
            &[("authorization", format!("Bearer {token}").into_bytes())],
        );
        assert_eq!(reason(&g, &bearer_h), Reason::CredentialScheme);
    }

    #[test]
    fn a_vault_token_outside_the_credential_header_is_refused() {
        let g = gate();
        let t = bearer(&claims());
        let token = keyring().mint(&claims()).unwrap();
        let merchant = ("stripe-account", b"acct_1Merchant".to_vec());
        let in_query = req(
            "GET",
            &format!("/v1/charges/ch_1?key={token}"),
            &[("authorization", t.clone()), merchant.clone()],
        );
        assert_eq!(reason(&g, &in_query), Reason::CredentialAmbiguous);
        let in_header = req(
            "GET",
            "/v1/charges/ch_1",
            &[
                ("authorization", t.clone()),
                merchant.clone(),
                ("x-note", token.clone().into_bytes()),
            ],
        );
        assert_eq!(reason(&g, &in_header), Reason::CredentialAmbiguous);
        // Percent-encoded, the vendor decodes it back: in the query, or in a header.
        let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
        let in_query = req(
            "GET",
            &format!("/v1/charges/ch_1?key={encoded}"),
            &[("authorization", t.clone()), merchant.clone()],
        );
        assert_eq!(reason(&g, &in_query), Reason::CredentialAmbiguous);
        let partly = format!("%62vt{}", &token[3..]);
        let in_header = req(
            "GET",
            "/v1/charges/ch_1",
            &[
                ("authorization", t.clone()),
                merchant.clone(),
                ("x-note", partly.into_bytes()),
            ],
        );
        assert_eq!(reason(&g, &in_header), Reason::CredentialAmbiguous);
        // In a header Bridle strips anyway, it is harmless.
        let stripped = req(
            "GET",
            "/v1/charges/ch_1",
            &[
                ("authorization", t),
                merchant,
                ("proxy-authorization", token.into_bytes()),
            ],
        );
        assert_eq!(reason(&g, &stripped), Reason::Allowed);
    }

    #[test]
    fn envoy_control_headers_are_stripped_whatever_their_case_or_number() {
        let g = gate();
        let h = req(
            "POST",
            "/v1/payment_intents",
            &[
                ("authorization", bearer(&claims())),
                ("stripe-account", b"acct_1Merchant".to_vec()),
                ("x-envoy-retry-on", b"5xx,reset".to_vec()),
                ("x-envoy-max-retries", b"5".to_vec()),
                ("x-envoy-upstream-rq-timeout-ms", b"1".to_vec()),
                ("x-envoy-retry-on", b"gateway-error".to_vec()),
                ("x-envoyish", b"kept".to_vec()),
            ],
        );
        let grant = decide(&g, &h).unwrap();
        assert_eq!(
            grant.strip_headers,
            [
                "authorization",
                "x-envoy-retry-on",
                "x-envoy-max-retries",
                "x-envoy-upstream-rq-timeout-ms"
            ]
        );
    }

    #[test]
    fn encoded_bodies_are_refused_before_anything_is_read() {
        let g = gate();
        let with = |values: &[&[u8]]| {
            let mut extra = vec![
                ("authorization", bearer(&claims())),
                ("stripe-account", b"acct_1Merchant".to_vec()),
            ];
            extra.extend(values.iter().map(|v| ("content-encoding", v.to_vec())));
            req("POST", "/v1/payment_intents", &extra)
        };
        for refused in [
            &[&b"deflate"[..]][..],
            &[b"gzip"],
            &[b"br"],
            &[b"identity, gzip"],
            &[b"identity", b"deflate"],
            &[b""],
            &[b"\xff"],
        ] {
            let d = decide(&g, &with(refused)).unwrap_err();
            assert_eq!(d.reason, Reason::BodyEncoded, "{refused:?}");
            assert_eq!(d.subject.map(|s| s.token_id).as_deref(), Some("tok_123"));
        }
        for allowed in [&[][..], &[&b"identity"[..]], &[b" IDENTITY "]] {
            assert_eq!(reason(&g, &with(allowed)), Reason::Allowed, "{allowed:?}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_credential() {
        let g = gate();
        let t = bearer(&claims());
        let grant = decide(
            &g,
            &req(
                "GET",
                "/v1/charges/ch_1",
                &[
                    ("authorization", t),
                    ("stripe-account", b"acct_1Merchant".to_vec()),
                ],
            ),
        )
        .unwrap();
        assert!(grant.credential.starts_with("bvt_"));
        assert!(!format!("{grant:?}").contains("bvt_"));
    }

    #[test]
    fn cache_returns_the_same_verdicts() {
        let g = gate();
        let h = req(
            "GET",
            "/v1/charges/ch_1",
            &[
                ("authorization", bearer(&claims())),
                ("stripe-account", b"acct_1Merchant".to_vec()),
            ],
        );
        for _ in 0..3 {
            assert!(decide(&g, &h).is_ok());
        }
        // Expiry is checked on every request, cached or not.
        let d = g
            .decide(
                &Request { headers: &h },
                claims().exp,
                &RevocationSet::default(),
            )
            .unwrap_err();
        assert_eq!(d.reason, Reason::TokenExpired);
    }
}
