//! One plugin configuration on one Envoy worker: the checked policies, the keyring, the
//! injected credentials and the counters. Built once in `on_configure`; a configuration
//! that is wrong in any way is refused whole, with a log line that says what and where.

use std::cell::RefCell;

use bridle_core::config::FilterConfig;
use bridle_core::decision::Gate;
use bridle_core::revocation::RevocationSet;
use bridle_core::token::Keyring;

use crate::host::Host;
use crate::metrics::Metrics;

pub struct Plugin {
    pub gate: Gate,
    /// Per policy: the request headers that carry the real vendor secret.
    injections: Vec<Vec<(&'static str, String)>>,
    pub metrics: Metrics,
    pub revocations: RefCell<RevocationSet>,
}

impl std::fmt::Debug for Plugin {
    /// Never the injections: they hold the vendor secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("vendor", &self.gate.vendor())
            .finish_non_exhaustive()
    }
}

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

        let names: Vec<&str> = compiled
            .policies
            .iter()
            .map(|p| p.policy.name.as_str())
            .collect();
        let metrics = Metrics::define(host, compiled.vendor, &names)
            .map_err(|e| format!("could not define stats counters (status {})", e.0))?;
        Ok(Plugin {
            gate: Gate::new(compiled, keyring),
            injections,
            metrics,
            revocations: RefCell::new(RevocationSet::default()),
        })
    }

    pub fn injection(&self, policy: usize) -> &[(&'static str, String)] {
        self.injections.get(policy).map_or(&[], Vec::as_slice)
    }
}
