//! The filter's configuration: one listener's vendor, its policies, and how to reach the
//! ledger. Arrives as JSON plugin configuration (Envoy's `google.protobuf.Struct`, or Istio's
//! WasmPlugin `pluginConfig`), rendered from the YAML policies by `bridle render`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::{CompiledPolicy, ConfigError, Policy};
use crate::vendor::Vendor;

/// Where the filter reads the public keys that verify vault tokens (`kid:key,...`, from
/// `bridle pubkey`). A proxy holds nothing that can sign.
pub const DEFAULT_PUBLIC_KEYS_ENV: &str = "BRIDLE_PUBLIC_KEYS";
/// Where the ledger and `bridle mint` read the one private key that signs vault tokens.
pub const SIGNING_KEY_ENV: &str = "BRIDLE_SIGNING_KEY";

/// The filter's tick: how often each worker copies the shared revocation set, takes the poll
/// lease when it is due, and flushes reports. The fastest of the revocation poll and the
/// report flush.
///
/// Short, so that reports are small and steady: a report every 100 ms arrived as one burst
/// the ledger's core took a millisecond or two to ingest, and the reservations that landed
/// in it made most of the costed call's one-connection tail (p99 3.2-3.5 ms with 100 ms,
/// 2.8-2.9 ms with 20 ms; BENCHMARKS.md). It also brings revocations sooner.
pub const TICK_MS: u32 = 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The vendor this listener fronts. Every policy must be for it.
    pub vendor: Vendor,
    pub policies: Vec<Policy>,
    /// Without a ledger the filter runs standalone: no revocation feed, no audit log, and no
    /// costed endpoints. Meant for development; production configs name a ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerLink>,
    /// The environment variable holding the public keys that verify tokens.
    #[serde(default = "default_public_keys_env")]
    pub public_keys_env: String,
    /// The vendor's price table for calls priced by tokens, rendered from
    /// `policies/prices/<vendor>.yaml` (a policy's `models.prices` come first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<crate::llm::PriceEntry>,
}

fn default_public_keys_env() -> String {
    DEFAULT_PUBLIC_KEYS_ENV.to_string()
}

/// How the filter reaches the ledger: an Envoy cluster, with deadlines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerLink {
    pub cluster: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Deadline of every callout to the ledger.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The environment variable holding the filter's enforcement credential.
    #[serde(default = "default_credential_env")]
    pub credential_env: String,
    #[serde(default = "default_poll_ms")]
    pub revocation_poll_ms: u64,
    /// Past this age, the revocation set is stale and uncosted requests follow each
    /// policy's `on_ledger_unavailable`.
    #[serde(default = "default_staleness_ms")]
    pub max_staleness_ms: u64,
}

fn default_authority() -> String {
    "bridle-ledger".to_string()
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_credential_env() -> String {
    "BRIDLE_ENFORCER_KEY".to_string()
}
fn default_poll_ms() -> u64 {
    200
}
fn default_staleness_ms() -> u64 {
    3_000
}

impl LedgerLink {
    /// The longest a revocation committed in the ledger takes to reach every worker of a
    /// proxy that can reach the ledger, for calls the filter decides alone (costed calls are
    /// checked by the ledger at reserve, from the commit on). The poll that just missed it
    /// started at most `revocation_poll_ms` before the next is due, which a tick notices
    /// within `TICK_MS`; that poll's answer takes at most `timeout_ms`; the other workers
    /// copy the merged set on their next tick.
    pub fn revocation_reach_ms(&self) -> u64 {
        let tick = u64::from(TICK_MS);
        self.revocation_poll_ms
            .saturating_add(tick)
            .saturating_add(self.timeout_ms)
            .saturating_add(tick)
    }
}

/// A checked configuration, ready for the request path.
#[derive(Clone, Debug)]
pub struct CompiledConfig {
    pub vendor: Vendor,
    pub policies: Vec<Arc<ServedPolicy>>,
    by_name: HashMap<String, Arc<ServedPolicy>>,
    pub ledger: Option<LedgerLink>,
    pub public_keys_env: String,
    /// The vendor's price table, compiled.
    pub prices: Arc<crate::llm::PriceList>,
}

/// A policy as one listener serves it: compiled, with where its stats are and the request
/// headers that carry its vendor secret.
#[derive(Debug)]
pub struct ServedPolicy {
    pub compiled: CompiledPolicy,
    /// Its position in the configuration, which is where its stats counters are.
    pub slot: usize,
    injection: Injection,
}

impl std::ops::Deref for ServedPolicy {
    type Target = CompiledPolicy;

    fn deref(&self) -> &CompiledPolicy {
        &self.compiled
    }
}

impl ServedPolicy {
    /// The headers that carry the vendor secret (empty until [`CompiledConfig::with_secrets`]).
    pub fn injection(&self) -> &[(&'static str, String)] {
        &self.injection.0
    }
}

/// Header values holding a secret: never shown by `Debug`.
#[derive(Default)]
struct Injection(Vec<(&'static str, String)>);

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl CompiledConfig {
    pub fn policy(&self, name: &str) -> Option<&Arc<ServedPolicy>> {
        self.by_name.get(name)
    }

    /// The same configuration with each policy's vendor secret read through `env` (the
    /// filter's environment). A missing or malformed secret refuses the whole configuration;
    /// the error names the variable, never its value.
    pub fn with_secrets(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<CompiledConfig, String> {
        let mut policies = Vec::with_capacity(self.policies.len());
        for served in &self.policies {
            let policy = &served.compiled.policy;
            let secret = env(&policy.secret_env).ok_or_else(|| {
                format!(
                    "policy {:?}: environment variable {} (the vendor secret) is not set",
                    policy.name, policy.secret_env
                )
            })?;
            let headers = policy
                .vendor
                .injection(&secret)
                .map_err(|e| format!("policy {:?}: {}: {e}", policy.name, policy.secret_env))?;
            policies.push(Arc::new(ServedPolicy {
                compiled: served.compiled.clone(),
                slot: served.slot,
                injection: Injection(headers),
            }));
        }
        Ok(CompiledConfig::from_parts(
            self.vendor,
            policies,
            self.ledger,
            self.public_keys_env,
            self.prices,
        ))
    }

    fn from_parts(
        vendor: Vendor,
        policies: Vec<Arc<ServedPolicy>>,
        ledger: Option<LedgerLink>,
        public_keys_env: String,
        prices: Arc<crate::llm::PriceList>,
    ) -> CompiledConfig {
        let by_name = policies
            .iter()
            .map(|p| (p.compiled.policy.name.clone(), p.clone()))
            .collect();
        CompiledConfig {
            vendor,
            policies,
            by_name,
            ledger,
            public_keys_env,
            prices,
        }
    }
}

impl FilterConfig {
    /// Parses plugin configuration as Envoy delivers it: JSON text (a `StringValue`, or
    /// Istio's `pluginConfig`) or a binary `google.protobuf.Struct`.
    pub fn from_plugin_bytes(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_none() || first == Some(&b'{') {
            // JSON text, unless the bytes are a Struct that only looks like it: a Struct
            // starts with its first entry's tag, 0x0a (a newline), then that entry's length,
            // which can be 123 (a `{`). A JSON error is the one worth showing.
            return FilterConfig::from_json(bytes)
                .or_else(|json_error| FilterConfig::from_struct(bytes).map_err(|_| json_error));
        }
        FilterConfig::from_struct(bytes)
    }

    fn from_struct(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let value = crate::struct_pb::struct_to_json(bytes)
            .map_err(|e| ConfigError::new("", format!("invalid configuration: {e}")))?;
        serde_json::from_value(value)
            .map_err(|e| ConfigError::new("", format!("invalid configuration: {e}")))
    }

    /// Parses JSON configuration. The error names the field at fault.
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed: Result<FilterConfig, _> = serde::Deserialize::deserialize(&mut de);
        let config =
            parsed.map_err(|e| ConfigError::new("", format!("invalid configuration: {e}")))?;
        de.end()
            .map_err(|e| ConfigError::new("", format!("invalid configuration: {e}")))?;
        Ok(config)
    }

    pub fn compile(&self) -> Result<CompiledConfig, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut policies = Vec::with_capacity(self.policies.len());
        let mut by_name = HashMap::new();
        if self.policies.is_empty() {
            errors.push(ConfigError::new(
                "policies",
                "no policies: the filter would refuse every request",
            ));
        }
        for (i, p) in self.policies.iter().enumerate() {
            let field = format!("policies[{i}]");
            if p.vendor != self.vendor {
                errors.push(ConfigError::new(
                    format!("{field}.vendor"),
                    format!(
                        "policy {:?} is for {} but this listener fronts {}",
                        p.name, p.vendor, self.vendor
                    ),
                ));
            }
            if by_name.insert(p.name.clone(), i).is_some() {
                errors.push(ConfigError::new(
                    format!("{field}.name"),
                    format!("policy {:?} is defined twice", p.name),
                ));
            }
            match p.compile() {
                Ok(compiled) => policies.push(Arc::new(ServedPolicy {
                    compiled,
                    slot: i,
                    injection: Injection::default(),
                })),
                Err(es) => errors.extend(es.into_iter().map(|e| e.within(&field))),
            }
        }
        if self.ledger.is_none() {
            for (i, p) in self.policies.iter().enumerate() {
                if let Some(j) = p.endpoints.iter().position(|e| e.cost.is_some()) {
                    errors.push(ConfigError::new(
                        format!("policies[{i}].endpoints[{j}].cost"),
                        "costed endpoints need a ledger to count spend: configure ledger",
                    ));
                }
            }
        }
        if let Some(l) = &self.ledger {
            if l.cluster.is_empty() {
                errors.push(ConfigError::new(
                    "ledger.cluster",
                    "must name an Envoy cluster",
                ));
            }
            if !(10..=10_000).contains(&l.timeout_ms) {
                errors.push(ConfigError::new(
                    "ledger.timeout_ms",
                    "must be between 10 and 10000",
                ));
            }
            if !(50..=10_000).contains(&l.revocation_poll_ms) {
                errors.push(ConfigError::new(
                    "ledger.revocation_poll_ms",
                    "must be between 50 and 10000",
                ));
            }
            if l.max_staleness_ms < 2 * l.revocation_poll_ms {
                errors.push(ConfigError::new(
                    "ledger.max_staleness_ms",
                    "must be at least twice revocation_poll_ms, or every missed poll would deny traffic",
                ));
            }
        }
        errors.extend(crate::llm::prices::check_entries(
            &self.prices,
            self.vendor,
            "prices",
            false,
        ));
        let prices = crate::llm::PriceList::new(&self.prices);
        errors.extend(unpriced_models(&policies, &prices));
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CompiledConfig::from_parts(
            self.vendor,
            policies,
            self.ledger.clone(),
            self.public_keys_env.clone(),
            Arc::new(prices),
        ))
    }
}

/// Every model a policy allows by name must have a price (its own, or the table's): a call
/// to it would otherwise be refused on every request.
fn unpriced_models(
    policies: &[Arc<ServedPolicy>],
    prices: &crate::llm::PriceList,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for served in policies {
        let Some(models) = &served.compiled.models else {
            continue;
        };
        for name in models.unpriced(prices) {
            errors.push(ConfigError::new(
                format!("policies[{}].models.allow", served.slot),
                format!(
                    "model {name:?} has no price in the {} price table or the policy's models.prices",
                    served.compiled.policy.vendor
                ),
            ));
        }
    }
    errors
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::tests::stripe_policy;

    pub(crate) fn stripe_config() -> FilterConfig {
        FilterConfig {
            vendor: Vendor::Stripe,
            policies: vec![stripe_policy()],
            ledger: None,
            public_keys_env: DEFAULT_PUBLIC_KEYS_ENV.into(),
            prices: Vec::new(),
        }
    }

    #[test]
    fn parses_and_compiles() {
        let json = serde_json::to_vec(&stripe_config()).unwrap();
        let c = FilterConfig::from_json(&json).unwrap().compile().unwrap();
        assert_eq!(c.policy("stripe-payments").map(|p| p.slot), Some(0));
        assert!(c.policy("nope").is_none());
    }

    #[test]
    fn errors_point_at_the_policy_field() {
        let mut cfg = stripe_config();
        let mut twilio = stripe_policy();
        twilio.name = "other".into();
        twilio.vendor = Vendor::Twilio;
        twilio.endpoints[0].path = "/v1//x".into();
        cfg.policies.push(twilio);
        cfg.policies.push(stripe_policy());
        let errors = cfg.compile().unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with("policies[1].vendor: policy \"other\" is for twilio")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with("policies[1].endpoints[0]: path glob \"/v1//x\"")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|e| e
                    .starts_with("policies[2].name: policy \"stripe-payments\" is defined twice")),
            "{shown:?}"
        );
    }

    #[test]
    fn trailing_garbage_and_unknown_fields_are_refused() {
        let mut json = serde_json::to_vec(&stripe_config()).unwrap();
        json.extend_from_slice(b" {}");
        assert!(FilterConfig::from_json(&json).is_err());
        assert!(
            FilterConfig::from_json(br#"{"vendor":"stripe","policies":[],"debug":true}"#)
                .unwrap_err()
                .to_string()
                .contains("unknown field `debug`")
        );
        assert!(FilterConfig::from_json(b"not json").is_err());
    }

    #[test]
    fn a_struct_that_looks_like_json_text_is_read_as_a_struct() {
        // Caught by fuzz/fuzz_targets/policy.rs: a binary Struct whose first entry is 123
        // bytes long starts with "\n{", and was taken for JSON text and refused.
        // Struct entries may come in any order: the public keys' variable first, padded
        // until its entry is 123 bytes long, then the rest.
        let mut cfg = stripe_config();
        let json = serde_json::to_value(&cfg).unwrap();
        let rest: serde_json::Map<String, serde_json::Value> = ["vendor", "policies"]
            .iter()
            .map(|k| (k.to_string(), json[*k].clone()))
            .collect();
        let rest = crate::struct_pb::tests::encode_struct(&serde_json::Value::Object(rest));
        let (name, mut bytes) = (0..200)
            .map(|n| {
                let name = "K".repeat(n);
                let first = serde_json::json!({ "public_keys_env": name });
                (name, crate::struct_pb::tests::encode_struct(&first))
            })
            .find(|(_, bytes)| bytes.starts_with(b"\n{"))
            .unwrap();
        bytes.extend(rest);
        cfg.public_keys_env = name;
        assert_eq!(bytes[..2], *b"\n{");
        assert_eq!(FilterConfig::from_plugin_bytes(&bytes), Ok(cfg));
        // JSON text that does not parse still gets the JSON error.
        let e = FilterConfig::from_plugin_bytes(b"{\"vendor\": \"stripe\", oops}").unwrap_err();
        assert!(e.to_string().contains("line 1 column"), "{e}");
    }
}
