//! One plugin configuration on one Envoy worker: the checked policies, the keyring, the
//! injected credentials, the counters and the link to the ledger. Built once in
//! `on_configure`; a configuration that is wrong in any way is refused whole, with a log
//! line that says what and where.

use std::cell::{Cell, RefCell};

use bridle_core::config::{FilterConfig, LedgerLink};
use bridle_core::decision::Gate;
use bridle_core::token::Keyring;

use crate::host::{Host, Level};
use crate::ids::Ids;
use crate::metrics::Metrics;
use crate::reports::Buffer;
use crate::revocations::{self, Cache};

/// The filter's side of the ledger: where it is, how to authenticate, the buffer that carries
/// settles and audit records to it, and this plugin's copy of the revocation set.
pub struct Ledger {
    pub link: LedgerLink,
    /// The enforcement credential: sent to the ledger, never logged.
    pub enforcer_key: String,
    pub reports: RefCell<Buffer>,
    pub keys: revocations::Keys,
    pub revocations: RefCell<Cache>,
}

pub struct Plugin {
    pub gate: Gate,
    /// Per policy: the request headers that carry the real vendor secret.
    injections: Vec<Vec<(&'static str, String)>>,
    pub metrics: Metrics,
    pub ledger: Option<Ledger>,
    pub ids: Ids,
    /// Whether Envoy logs this plugin at debug level; read on each tick, so the request path
    /// formats a debug line only when someone will see it.
    pub debug: Cell<bool>,
}

impl std::fmt::Debug for Plugin {
    /// Never the injections or the enforcer key: they are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("vendor", &self.gate.vendor())
            .finish_non_exhaustive()
    }
}

/// The tick period, defined in the core so that `bridle blast-radius` computes revocation
/// reach from the same number.
pub use bridle_core::config::TICK_MS;

impl Plugin {
    pub fn configure<H: Host>(host: &H, bytes: Option<&[u8]>) -> Result<Plugin, String> {
        let bytes = bytes.ok_or("no plugin configuration: render one with `bridle render`")?;
        let config = FilterConfig::from_plugin_bytes(bytes).map_err(|e| e.to_string())?;
        let compiled = config.compile().map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;

        let keyring_spec = host.env(&compiled.keyring_env).ok_or_else(|| {
            format!(
                "environment variable {} (the signing keyring) is not set",
                compiled.keyring_env
            )
        })?;
        let keyring =
            Keyring::parse(&keyring_spec).map_err(|e| format!("{}: {e}", compiled.keyring_env))?;

        let mut injections = Vec::with_capacity(compiled.policies.len());
        for p in &compiled.policies {
            let policy = &p.policy;
            let secret = host.env(&policy.secret_env).ok_or_else(|| {
                format!(
                    "policy {:?}: environment variable {} (the vendor secret) is not set",
                    policy.name, policy.secret_env
                )
            })?;
            let headers = policy
                .vendor
                .injection(&secret)
                .map_err(|e| format!("policy {:?}: {}: {e}", policy.name, policy.secret_env))?;
            injections.push(headers);
        }

        let ledger = match &compiled.ledger {
            None => None,
            Some(link) => {
                let enforcer_key = host
                    .env(&link.credential_env)
                    .filter(|k| !k.is_empty() && k.bytes().all(|b| (0x21..=0x7e).contains(&b)))
                    .ok_or_else(|| {
                        format!(
                            "environment variable {} (the ledger enforcement key) is not set",
                            link.credential_env
                        )
                    })?;
                host.set_tick_ms(TICK_MS)
                    .map_err(|e| format!("could not set the tick period (status {})", e.0))?;
                Some(Ledger {
                    keys: revocations::Keys::new(&link.cluster),
                    link: link.clone(),
                    enforcer_key,
                    reports: RefCell::new(Buffer::default()),
                    revocations: RefCell::new(Cache::default()),
                })
            }
        };

        #[cfg(feature = "ablation")]
        crate::ablation::configure(host);
        let mut seed = [0u8; 16];
        host.random(&mut seed)
            .map_err(|_| "no randomness available for request ids".to_string())?;
        let names: Vec<&str> = compiled
            .policies
            .iter()
            .map(|p| p.policy.name.as_str())
            .collect();
        let metrics = Metrics::define(host, compiled.vendor, &names)
            .map_err(|e| format!("could not define stats counters (status {})", e.0))?;
        if let Some(mut cache) = ledger
            .as_ref()
            .and_then(|l| l.revocations.try_borrow_mut().ok())
        {
            cache.metrics = Some(revocations::CacheMetrics {
                propagation_ms: metrics.ledger.revocation_propagation_ms,
                age_ms: metrics.ledger.revocation_age_ms,
            });
        }
        Ok(Plugin {
            gate: Gate::new(compiled, keyring),
            injections,
            metrics,
            ledger,
            ids: Ids::new(seed),
            debug: Cell::new(host.log_level() <= Level::Debug),
        })
    }

    pub fn injection(&self, policy: usize) -> &[(&'static str, String)] {
        self.injections.get(policy).map_or(&[], Vec::as_slice)
    }
}
