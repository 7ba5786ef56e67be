//! `bridle-ledger`: the ledger service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bridle_core::policy_files;
use bridle_core::token::{PublicKeys, SigningKey, SigningKeyring};
use bridle_ledger::Config;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bridle-ledger",
    version,
    about = "Bridle's ledger: vault token issuance, two-phase spend accounting, audit log."
)]
struct Args {
    #[arg(long, env = "BRIDLE_LEDGER_LISTEN", default_value = "127.0.0.1:8181")]
    listen: SocketAddr,
    /// The SQLite database file (created if missing), or a PostgreSQL URL
    /// (`postgres://user:password@host:port/database`) to run several replicas on one
    /// database. Give a URL holding a password through the environment, not the command line.
    #[arg(
        long,
        env = "BRIDLE_LEDGER_DB",
        default_value = "ledger.db",
        hide_env_values = true
    )]
    db: String,
    /// Keep everything in memory instead (tests only: nothing survives a restart).
    #[arg(long, conflicts_with = "db")]
    memory: bool,
    /// Policy files or folders: the same files the filter's configuration is rendered from.
    #[arg(
        long = "policies",
        env = "BRIDLE_POLICIES",
        default_value = "policies",
        value_delimiter = ','
    )]
    policies: Vec<PathBuf>,
    /// How long a reservation may stay unsettled before it counts as spent.
    #[arg(long, env = "BRIDLE_RESERVATION_TTL", default_value = "15m")]
    reservation_ttl: String,
    /// Threads serving HTTP (the store has its own writer thread besides). Defaults to the
    /// CPUs this process may use.
    #[arg(long, env = "BRIDLE_LEDGER_THREADS")]
    threads: Option<usize>,
    /// Where cap alerts are POSTed (JSON), retried with backoff.
    #[arg(long, env = "BRIDLE_ALERT_WEBHOOK")]
    alert_webhook: Option<String>,
    /// The private key that signs vault tokens, `kid:base64url` (`bridle keygen`). Only
    /// the ledger (and `bridle mint`) hold it; proxies get its public key.
    #[arg(long, env = "BRIDLE_SIGNING_KEY", hide_env_values = true)]
    signing_key: String,
    /// The public keys that verify tokens, `kid:base64url,...` (`bridle pubkey`): the same
    /// list the proxies hold. Defaults to the signing key's own; during a rotation it keeps
    /// the previous keys, and it must list the signing key.
    #[arg(long, env = "BRIDLE_PUBLIC_KEYS")]
    public_keys: Option<String>,
    #[arg(long, env = "BRIDLE_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
    #[arg(long, env = "BRIDLE_ENFORCER_KEY", hide_env_values = true)]
    enforcer_key: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BRIDLE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let threads = args.threads;
    let config = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bridle-ledger: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bridle-ledger: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bridle_ledger::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridle-ledger: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(args: Args) -> Result<Config, String> {
    let policies = policy_files::load(&args.policies).map_err(|es| {
        es.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(Config {
        listen: args.listen,
        db: (!args.memory).then_some(args.db),
        policies,
        keyring: keyring(&args.signing_key, args.public_keys.as_deref())?,
        admin_key: args.admin_key,
        enforcer_key: args.enforcer_key,
        reservation_ttl: bridle_core::duration::parse(&args.reservation_ttl)
            .map_err(|e| format!("--reservation-ttl: {e}"))?,
        alert_webhook: args.alert_webhook,
    })
}

fn keyring(signing_key: &str, public_keys: Option<&str>) -> Result<SigningKeyring, String> {
    let signing = SigningKey::parse(signing_key).map_err(|e| format!("BRIDLE_SIGNING_KEY: {e}"))?;
    let public = public_keys
        .map(PublicKeys::parse)
        .transpose()
        .map_err(|e| format!("BRIDLE_PUBLIC_KEYS: {e}"))?;
    SigningKeyring::new(signing, public).map_err(|e| format!("BRIDLE_PUBLIC_KEYS: {e}"))
}
