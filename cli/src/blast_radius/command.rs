//! The `bridle blast-radius` command line.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;

use super::output::{self, Format};
use super::{diff, for_policy, for_token, source, Assumptions};
use crate::ledger_client::LedgerClient;
use crate::render::{self, Upstream};

#[derive(Args)]
pub struct BlastRadiusArgs {
    /// Policy files or folders.
    #[arg(long = "policies", default_value = "policies")]
    pub paths: Vec<PathBuf>,
    /// Only these policies (repeatable); all of them by default.
    #[arg(long = "policy")]
    pub only: Vec<String>,
    /// One token instead of whole policies: a vault token (bvt_..., verified with
    /// BRIDLE_PUBLIC_KEYS when set) or a token id (tok_..., read from the ledger).
    #[arg(long)]
    pub token: Option<String>,
    /// List what the policies widen against another policy folder or a git revision
    /// (e.g. origin/main), instead of reporting them.
    #[arg(long, value_name = "FOLDER|REV")]
    pub diff: Option<String>,
    /// With --diff: exit with status 3 when something widens (for a pipeline gate).
    #[arg(long)]
    pub exit_code: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// How many proxies serve these policies: each one's loop breaker counts on its own.
    #[arg(long, default_value_t = 1)]
    pub proxies: u64,
    /// The ledger the filter polls (its link timing is what `bridle render` deploys), and
    /// where a token id is looked up.
    #[arg(
        long = "ledger",
        env = "BRIDLE_LEDGER_URL",
        default_value = "http://127.0.0.1:8181"
    )]
    pub ledger: String,
    #[arg(long, env = "BRIDLE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// The public keys that verify a token given as text, `kid:base64url,...` (the
    /// proxies' own: public, they verify and cannot mint).
    #[arg(long, env = "BRIDLE_PUBLIC_KEYS")]
    pub public_keys: Option<String>,
}

/// What the command exits with when `--exit-code` is given and something widens.
pub const WIDENS_EXIT: u8 = 3;

/// Runs the command; `Ok(true)` when a diff found something that widens.
pub fn run(args: BlastRadiusArgs) -> Result<bool, Vec<String>> {
    let one = |e: String| vec![e];
    let ledger = Upstream::parse(&args.ledger).map_err(|e| one(format!("--ledger: {e}")))?;
    if args.proxies == 0 {
        return Err(one("--proxies must be at least 1".into()));
    }
    let assumptions = Assumptions {
        link: render::ledger_link(&ledger),
        proxies: args.proxies,
        now: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let mut head = source::folders(&args.paths)?;
    for name in &args.only {
        if !head.iter().any(|p| &p.policy.name == name) {
            return Err(one(format!(
                "no policy named {name:?} under {:?}",
                args.paths
            )));
        }
    }
    if !args.only.is_empty() {
        head.retain(|p| args.only.contains(&p.policy.name));
    }

    if let Some(base_arg) = &args.diff {
        if args.token.is_some() {
            return Err(one("--diff compares policies; leave out --token".into()));
        }
        let mut base = source::base(base_arg, &args.paths)?;
        if !args.only.is_empty() {
            base.retain(|p| args.only.contains(&p.policy.name));
        }
        let d = diff::diff(&base, &head, &assumptions);
        let text = output::diff(&d, base_arg, args.format).map_err(one)?;
        crate::stdout::write(format_args!("{text}")).map_err(one)?;
        return Ok(args.exit_code && !d.widens.is_empty());
    }

    let reports = match &args.token {
        None => head.iter().map(|p| for_policy(p, &assumptions)).collect(),
        Some(t) => {
            let input = if t.starts_with(bridle_core::token::PREFIX) {
                source::token_text(t, args.public_keys.as_deref()).map_err(one)?
            } else {
                let key = args.admin_key.as_deref().ok_or_else(|| {
                    one("a token id is looked up in the ledger: set BRIDLE_ADMIN_KEY (or give the token itself)".into())
                })?;
                source::token_from_ledger(&LedgerClient::new(&args.ledger, key), t).map_err(one)?
            };
            let policy = head
                .iter()
                .find(|p| p.policy.name == input.claims.policy)
                .ok_or_else(|| {
                    one(format!(
                        "the token names policy {:?}, which is not under {:?}",
                        input.claims.policy, args.paths
                    ))
                })?;
            vec![for_token(
                policy,
                &input.claims,
                input.verified,
                input.revoked,
                &assumptions,
            )]
        }
    };
    let text = output::reports(&reports, &assumptions, args.format).map_err(one)?;
    crate::stdout::write(format_args!("{text}")).map_err(one)?;
    Ok(false)
}
