//! PostgreSQL: several ledger replicas on one database, with every guarantee the embedded
//! store gives one process.
//!
//! The database is the authority: a replica keeps no spend in memory. Reserves and settles
//! queue for the replica's writer, which runs whatever is waiting as one transaction
//! ([`batch`]): it locks the running sums it needs in a fixed order, checks every cap with
//! the same [`crate::accounts::Accounts`] the embedded backends use, writes, commits, and
//! only then answers. Views read on a pool of their own ([`reads`]), so they never wait for
//! reserves; other writes (issue, revoke, audit, expiry) are single transactions
//! ([`writes`]). Migrations are versioned and run at start-up ([`migrate`]).
//!
//! Any database error denies (the API answers 5xx, the filter refuses); connections are
//! re-made as the database comes back, so a replica recovers by itself.

mod batch;
mod migrate;
mod reads;
mod rows;
mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bridle_core::ledger_api::{AuditRecord, ReserveRequest, ReserveResponse, Settle};
use bridle_core::policy::CompiledPolicy;
use bridle_core::revocation::RevocationFeed;
use bridle_core::token::Claims;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

use super::{
    AuditPage, AuditQuery, OutboxAlert, Store, StoreError, StoreResult, TokenQuery, ALERT_LEASE_MS,
};
use crate::clock::SharedClock;
use crate::policies::Policies;
use crate::records::{RevokeOutcome, RevokeRequest, TokenRecord};
use crate::views::{PolicyView, TokenView};

pub use batch::MAX_BATCH;

/// The advisory lock between revokes (exclusive) and accounting batches (shared):
/// "bridlerv" as bytes.
const REVOCATION_LOCK: i64 = 0x6272_6964_6c65_7276;
/// Connections for views, and for everything else.
const READ_CONNECTIONS: usize = 4;
const WRITE_CONNECTIONS: usize = 4;
/// How long start-up waits for the database before giving up (an orchestrator restarts).
const STARTUP_WAIT: Duration = Duration::from_secs(30);

pub fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError(format!("postgres: {e}"))
}

async fn client(pool: &Pool) -> StoreResult<deadpool_postgres::Object> {
    pool.get()
        .await
        .map_err(|e| StoreError(format!("postgres: {e}")))
}

/// Whether `--db` names a PostgreSQL database rather than a SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

pub struct PostgresStore {
    writes: Pool,
    reads: Pool,
    jobs: mpsc::UnboundedSender<batch::Job>,
    policies: Arc<Policies>,
    ttl_ms: u64,
    clock: SharedClock,
}

fn pool(config: &tokio_postgres::Config, size: usize) -> StoreResult<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| StoreError(format!("postgres pool: {e}")))
}

impl PostgresStore {
    /// Connects (waiting up to 30 s for the database), migrates, and starts the writer.
    pub async fn open(
        url: &str,
        policies: &[CompiledPolicy],
        reservation_ttl_ms: u64,
        clock: SharedClock,
    ) -> StoreResult<PostgresStore> {
        // The URL may hold a password: errors name neither.
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError(format!("the database URL does not parse: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(2));
        }
        config
            .application_name("bridle-ledger")
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        let deadline = Instant::now() + STARTUP_WAIT;
        let mut client = loop {
            match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    break client;
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("waiting for the database: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(pg(e)),
            }
        };
        let applied = migrate::run(&mut client).await.map_err(pg)?;
        if !applied.is_empty() {
            tracing::info!(?applied, "database migrated");
        }
        tracing::info!(version = migrate::latest(), "database schema");
        drop(client);
        let policies = Arc::new(Policies::new(policies));
        let writes = pool(&config, WRITE_CONNECTIONS)?;
        let reads = pool(&config, READ_CONNECTIONS)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch::writer(
            writes.clone(),
            policies.clone(),
            reservation_ttl_ms,
            clock.clone(),
            rx,
        ));
        Ok(PostgresStore {
            writes,
            reads,
            jobs: tx,
            policies,
            ttl_ms: reservation_ttl_ms,
            clock,
        })
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn queue<T>(
        &self,
        job: batch::Job,
        answer: oneshot::Receiver<StoreResult<T>>,
    ) -> StoreResult<T> {
        self.jobs
            .send(job)
            .map_err(|_| StoreError("the ledger's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError("the ledger's writer dropped a request".into()))?
    }
}

impl Store for PostgresStore {
    async fn issue(&self, record: TokenRecord) -> StoreResult<()> {
        writes::issue(&self.writes, record).await
    }

    async fn reserve(
        &self,
        claims: Claims,
        request: ReserveRequest,
    ) -> StoreResult<ReserveResponse> {
        let (reply, answer) = oneshot::channel();
        let job = batch::Job::Reserve {
            claims: Box::new(claims),
            request: Box::new(request),
            reply,
        };
        self.queue(job, answer).await
    }

    async fn settle(&self, settles: Vec<Settle>) -> StoreResult<usize> {
        let (reply, answer) = oneshot::channel();
        self.queue(batch::Job::Settle { settles, reply }, answer)
            .await
    }

    async fn append_audit(&self, records: Vec<AuditRecord>) -> StoreResult<usize> {
        writes::append_audit(&self.writes, records).await
    }

    async fn revoke(&self, request: RevokeRequest) -> StoreResult<Result<RevokeOutcome, String>> {
        writes::revoke(&self.writes, &self.policies, self.now(), request).await
    }

    async fn revocations(&self, since: u64) -> StoreResult<RevocationFeed> {
        reads::revocations(&self.reads, since, self.now()).await
    }

    async fn token(&self, id: String) -> StoreResult<Option<TokenView>> {
        reads::token(&self.reads, &self.policies, id, self.now()).await
    }

    async fn tokens(&self, query: TokenQuery) -> StoreResult<Vec<TokenView>> {
        reads::tokens(&self.reads, &self.policies, query, self.now()).await
    }

    async fn policies(&self) -> StoreResult<Vec<PolicyView>> {
        reads::policies(&self.reads, &self.policies, self.now()).await
    }

    async fn audit(&self, query: AuditQuery) -> StoreResult<AuditPage> {
        reads::audit(&self.reads, query).await
    }

    async fn maintain(&self) -> StoreResult<usize> {
        writes::expire(&self.writes, self.now(), self.ttl_ms).await
    }

    async fn due_alerts(&self, limit: usize) -> StoreResult<Vec<OutboxAlert>> {
        let claimed = writes::claim_alerts(&self.writes, self.now(), ALERT_LEASE_MS, limit).await?;
        Ok(claimed
            .into_iter()
            .filter_map(|(body, attempts)| {
                Some(OutboxAlert {
                    alert: serde_json::from_value(body).ok()?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                })
            })
            .collect())
    }

    async fn alert_attempted(
        &self,
        id: String,
        delivered: bool,
        next_attempt_ms: Option<u64>,
    ) -> StoreResult<()> {
        writes::alert_attempted(&self.writes, self.now(), id, delivered, next_attempt_ms).await
    }

    async fn health(&self) -> StoreResult<()> {
        reads::ping(&self.reads).await
    }
}
