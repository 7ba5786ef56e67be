//! One plugin configuration on one Envoy worker: the core's blueprint (the checked policies,
//! the public keys, the injected credentials), the counters, request ids and the link to the
//! ledger. Built once in `on_configure`; a configuration that is wrong in any way is refused
//! whole, with a log line that says what and where.

use std::cell::Cell;

use bridle_core::exchange::Blueprint;

use crate::host::{Host, Level};
use crate::ids::Ids;
use crate::ledger_link::Ledger;
use crate::metrics::Metrics;
use crate::revocations;

pub struct Plugin {
    pub blueprint: Blueprint,
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
            .field("vendor", &self.blueprint.vendor())
            .finish_non_exhaustive()
    }
}

/// The tick period, defined in the core so that `bridle blast-radius` computes revocation
/// reach from the same number.
pub use bridle_core::config::TICK_MS;

impl Plugin {
    pub fn configure<H: Host>(host: &H, bytes: Option<&[u8]>) -> Result<Plugin, String> {
        let blueprint = Blueprint::configure(bytes, |name| host.env(name))?;

        let ledger = match blueprint.ledger() {
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
                Some(Ledger::new(link.clone(), enforcer_key))
            }
        };

        #[cfg(feature = "ablation")]
        crate::ablation::configure(host);
        let mut seed = [0u8; 16];
        host.random(&mut seed)
            .map_err(|_| "no randomness available for request ids".to_string())?;
        let names: Vec<&str> = blueprint
            .config()
            .policies
            .iter()
            .map(|p| p.policy.name.as_str())
            .collect();
        let metrics = Metrics::define(host, blueprint.vendor(), &names)
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
        // A plugin that replaces another (a configuration push) reads the worker's set now:
        // its first tick is up to TICK_MS away, and until then it would refuse every
        // uncosted call as unable to confirm revocations.
        if let Some(l) = &ledger {
            l.refresh_revocations(host, &metrics);
        }
        Ok(Plugin {
            blueprint,
            metrics,
            ledger,
            ids: Ids::new(seed),
            debug: Cell::new(host.log_level() <= Level::Debug),
        })
    }
}
