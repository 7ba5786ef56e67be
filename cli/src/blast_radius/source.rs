//! Where a blast-radius report reads from: policy files in folders or at a git revision, and
//! a token given as text (decoded, verified when the public keys are at hand) or by id (read
//! from the ledger's admin API).

use std::path::{Path, PathBuf};
use std::process::Command;

use bridle_core::policy::CompiledPolicy;
use bridle_core::policy_files;
use bridle_core::token::{self, Claims, PublicKeys};
use serde_json::Value;

use crate::ledger_client::LedgerClient;

fn file_errors(es: Vec<policy_files::FileError>) -> Vec<String> {
    es.into_iter().map(|e| e.to_string()).collect()
}

/// The policies under `paths`, as checked in.
pub fn folders(paths: &[PathBuf]) -> Result<Vec<CompiledPolicy>, Vec<String>> {
    policy_files::load(paths).map_err(file_errors)
}

/// The policies `paths` held at git revision `rev` (paths relative to the current folder,
/// inside a git work tree). A path that did not exist then holds no policies.
pub fn git_revision(rev: &str, paths: &[PathBuf]) -> Result<Vec<CompiledPolicy>, Vec<String>> {
    let git = |args: &[&str]| -> Result<Vec<u8>, String> {
        let out = Command::new("git")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let commit = format!("{rev}^{{commit}}");
    git(&["rev-parse", "--verify", "--quiet", &commit])
        .map_err(|_| vec![format!("{rev:?} is neither a folder nor a git revision")])?;
    let mut texts = Vec::new();
    for path in paths {
        let spec = path.to_string_lossy().replace('\\', "/");
        let spec = spec.trim_end_matches('/');
        // A folder lists its direct children, as `policy_files::files` reads a folder.
        let kind = git(&["cat-file", "-t", &format!("{rev}:./{spec}")]).ok();
        let names: Vec<String> = match kind
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).trim().to_string())
        {
            None => Vec::new(),
            Some(k) if k == "tree" => {
                let listing = git(&[
                    "ls-tree",
                    "--name-only",
                    "-z",
                    rev,
                    "--",
                    &format!("{spec}/"),
                ])
                .map_err(|e| vec![e])?;
                listing
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
                    .collect()
            }
            Some(_) => vec![spec.to_string()],
        };
        for name in names {
            let text = git(&["show", &format!("{rev}:./{name}")]).map_err(|e| vec![e])?;
            let text = String::from_utf8(text)
                .map_err(|_| vec![format!("{rev}:{name} is not UTF-8 text")])?;
            texts.push((PathBuf::from(format!("{rev}:{name}")), text));
        }
    }
    policy_files::parse_all(texts).map_err(file_errors)
}

/// `--diff`'s argument: a folder (or file) if one exists at that path, else a git revision.
pub fn base(arg: &str, paths: &[PathBuf]) -> Result<Vec<CompiledPolicy>, Vec<String>> {
    if Path::new(arg).exists() {
        folders(&[PathBuf::from(arg)])
    } else {
        git_revision(arg, paths)
    }
}

/// A token to report on, and what is known about it.
pub struct TokenInput {
    pub claims: Claims,
    pub verified: bool,
    pub revoked: bool,
}

/// A vault token's claims: verified with the proxies' `public_keys` when given, else only
/// decoded (a reviewer may hold a token without the keys; a forged one would be refused by
/// the proxy anyway, so its report can only overstate).
pub fn token_text(text: &str, public_keys: Option<&str>) -> Result<TokenInput, String> {
    let text = text.trim();
    match public_keys {
        Some(spec) => {
            let keys = PublicKeys::parse(spec).map_err(|e| format!("BRIDLE_PUBLIC_KEYS: {e}"))?;
            let claims = keys.verify(text).map_err(|e| e.to_string())?;
            Ok(TokenInput {
                claims,
                verified: true,
                revoked: false,
            })
        }
        None => token::unverified_claims(text)
            .map(|claims| TokenInput {
                claims,
                verified: false,
                revoked: false,
            })
            .ok_or_else(|| "this is not a vault token (bvt_...) whose claims can be read".into()),
    }
}

/// A token the ledger knows, by id: its narrowing and whether it is revoked.
pub fn token_from_ledger(client: &LedgerClient, id: &str) -> Result<TokenInput, String> {
    token::check_id(id)?;
    let v = client.get(&format!("/v1/tokens/{id}"), &[])?;
    let claims = claims_from_view(&v)?;
    Ok(TokenInput {
        claims,
        verified: true,
        revoked: v.get("status").and_then(Value::as_str) == Some("revoked"),
    })
}

/// The claims inside the ledger's token view (`GET /v1/tokens/{id}`).
fn claims_from_view(v: &Value) -> Result<Claims, String> {
    let mut claims = serde_json::Map::new();
    claims.insert("v".into(), token::CLAIMS_VERSION.into());
    for k in ["id", "policy", "vendor", "iat", "exp", "label"] {
        claims.insert(k.into(), v.get(k).cloned().unwrap_or(Value::Null));
    }
    // Narrowing: absent, not null, when the token has none.
    for k in ["endpoints", "merchants"] {
        if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
            claims.insert(k.into(), x.clone());
        }
    }
    if let Some(caps) = v
        .get("caps")
        .filter(|c| c.as_object().is_some_and(|c| !c.is_empty()))
    {
        claims.insert("caps".into(), caps.clone());
    }
    serde_json::from_value(Value::Object(claims))
        .map_err(|e| format!("the ledger's token view: {e}"))
}
