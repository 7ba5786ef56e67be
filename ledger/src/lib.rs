//! Bridle's ledger: issues and revokes vault tokens, accounts for spend in two phases
//! (reserve, then commit or release) with every cap checked atomically, keeps the audit log
//! and fires cap alerts.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod accounts;
pub mod alerts;
pub mod api;
pub mod cap_alerts;
pub mod caps;
pub mod clock;
pub mod idempotency;
pub mod metrics;
pub mod policies;
pub mod records;
pub mod revocations;
pub mod store;
pub mod views;
pub mod window;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use bridle_core::policy::CompiledPolicy;
use bridle_core::token::SigningKeyring;

use crate::api::App;
use crate::clock::{SharedClock, SystemClock};
use crate::metrics::Metrics;
use crate::store::memory::MemoryStore;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

/// Shortest admin or enforcement key accepted.
pub const MIN_KEY_LEN: usize = 16;

pub struct Config {
    pub listen: SocketAddr,
    /// A SQLite file, or a PostgreSQL URL (`postgres://...`) for several replicas on one
    /// database; `None` keeps everything in memory (tests only: nothing survives).
    pub db: Option<String>,
    pub policies: Vec<CompiledPolicy>,
    pub keyring: SigningKeyring,
    pub admin_key: String,
    pub enforcer_key: String,
    pub reservation_ttl: Duration,
    pub alert_webhook: Option<String>,
}

impl Config {
    /// Refuses keys that are missing, short, or the same for both surfaces.
    pub fn check(&self) -> Result<(), String> {
        for (name, key) in [
            ("BRIDLE_ADMIN_KEY", &self.admin_key),
            ("BRIDLE_ENFORCER_KEY", &self.enforcer_key),
        ] {
            if key.len() < MIN_KEY_LEN {
                return Err(format!("{name} must be at least {MIN_KEY_LEN} characters"));
            }
        }
        if self.admin_key == self.enforcer_key {
            return Err("BRIDLE_ADMIN_KEY and BRIDLE_ENFORCER_KEY must differ: the filter's key must not open the admin API".into());
        }
        if self.policies.is_empty() {
            return Err("no policies".into());
        }
        Ok(())
    }
}

/// Runs the ledger until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), String> {
    config.check()?;
    let clock: SharedClock = Arc::new(SystemClock);
    let ttl_ms = config.reservation_ttl.as_millis() as u64;
    match config.db.clone() {
        Some(url) if store::postgres::is_url(&url) => {
            let store = PostgresStore::open(&url, &config.policies, ttl_ms, clock.clone())
                .await
                .map_err(|e| format!("the PostgreSQL database: {e}"))?;
            tracing::info!(
                "store: postgresql (batched transactions; the database is the authority)"
            );
            serve(config, store, clock).await
        }
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            let store = SqliteStore::open(&path, &config.policies, ttl_ms, clock.clone())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            tracing::info!(db = %path.display(), "store: sqlite (WAL, synchronous=FULL, group commit)");
            serve(config, store, clock).await
        }
        None => {
            tracing::warn!("store: memory; nothing survives a restart");
            let store = MemoryStore::new(&config.policies, ttl_ms, clock.clone());
            serve(config, store, clock).await
        }
    }
}

async fn serve<S: Store>(config: Config, store: S, clock: SharedClock) -> Result<(), String> {
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::default());
    let app = Arc::new(App {
        store: store.clone(),
        keyring: config.keyring,
        verified: bridle_core::token_cache::TokenCache::new(api::TOKEN_CACHE_CAPACITY),
        policies: config
            .policies
            .iter()
            .map(|p| (p.policy.name.clone(), p.clone()))
            .collect::<HashMap<_, _>>(),
        admin_key: config.admin_key,
        enforcer_key: config.enforcer_key,
        metrics: metrics.clone(),
        clock: clock.clone(),
    });
    let maintainer = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match maintainer.maintain().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!("{n} reservations were never settled and expired into spend")
                }
                Err(e) => tracing::error!("maintenance: {e}"),
            }
        }
    });
    tokio::spawn(alerts::deliver(store, config.alert_webhook, metrics, clock));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!("listening on http://{}", config.listen);
    // Without TCP_NODELAY an HTTP/2 answer written as several frames waits on Nagle for the
    // peer's delayed ACK (about 40 ms): every reservation would pay it.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("could not set TCP_NODELAY on a connection: {e}");
        }
    });
    axum::serve(listener, api::router(app))
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("shutting down");
        })
        .await
        .map_err(|e| e.to_string())
}
