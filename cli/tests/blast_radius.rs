//! `bridle blast-radius` as a pipeline runs it: the built binary on the example policies, a
//! token given as text, and `--diff` against a folder and against a git revision, with the
//! exit status a GitOps gate keys on.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn bridle(dir: &Path, args: &[&str]) -> Output {
    bridle_with_key(dir, args, None)
}

/// The command with one key variable set (`BRIDLE_SIGNING_KEY` to mint,
/// `BRIDLE_PUBLIC_KEYS` to verify), or none.
fn bridle_with_key(dir: &Path, args: &[&str], key: Option<(&str, &str)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bridle"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("BRIDLE_SIGNING_KEY")
        .env_remove("BRIDLE_PUBLIC_KEYS")
        .env_remove("BRIDLE_ADMIN_KEY");
    if let Some((name, value)) = key {
        cmd.env(name, value.trim());
    }
    cmd.output().unwrap()
}

/// `bridle pubkey` of a signing key.
fn public_key(dir: &Path, signing_key: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bridle"))
        .current_dir(dir)
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), signing_key.as_bytes()).unwrap();
    ok(child.wait_with_output().unwrap())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}:\n{}{}",
        o.status,
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Copies a folder of policies, price tables (`prices/`) included.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, target).unwrap();
        }
    }
}

/// A git work tree with the example policies committed.
fn work_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo().join("policies"), &dir.path().join("policies"));
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-qm", "policies"]);
    dir
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn reports_every_example_policy_in_each_format() {
    let root = repo();
    let json: Value =
        serde_json::from_str(&ok(bridle(&root, &["blast-radius", "--format", "json"]))).unwrap();
    let names: Vec<&str> = json["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "anthropic-messages",
            "openai-chat",
            "resend-transactional",
            "stripe-payments",
            "twilio-sms"
        ]
    );
    let twilio = &json["reports"][4];
    assert_eq!(twilio["spend"]["max_usd"], "20.00");
    assert_eq!(twilio["calls"]["per_minute"], 30);
    let table = ok(bridle(&root, &["blast-radius", "--policy", "twilio-sms"]));
    assert!(table.starts_with("policy twilio-sms (twilio)\n"), "{table}");
    assert!(
        table.contains("AC00000000000000000000000000b71d1e"),
        "{table}"
    );
    let md = ok(bridle(
        &root,
        &["blast-radius", "--format", "markdown", "--proxies", "2"],
    ));
    assert!(
        md.contains("## policy resend-transactional (resend)"),
        "{md}"
    );
    assert!(md.contains("calls counted across 2 proxies"), "{md}");
    let e = bridle(&root, &["blast-radius", "--policy", "nope"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("no policy named \"nope\""));
}

#[test]
fn a_token_given_as_text_reports_its_narrowing() {
    let root = repo();
    let signing_key = ok(bridle(&root, &["keygen", "--kid", "t1"]));
    let public_keys = public_key(&root, &signing_key);
    let token = ok(bridle_with_key(
        &root,
        &[
            "mint",
            "--policy",
            "stripe-payments",
            "--label",
            "acme/run-1",
            "--ttl",
            "10m",
            "--merchant",
            "acct_1BridleDemoB",
            "--endpoint",
            "GET /v1/charges/*",
        ],
        Some(("BRIDLE_SIGNING_KEY", &signing_key)),
    ));
    let out = ok(bridle_with_key(
        &root,
        &["blast-radius", "--format", "json", "--token", token.trim()],
        Some(("BRIDLE_PUBLIC_KEYS", &public_keys)),
    ));
    let r: Value = serde_json::from_str(&out).unwrap();
    let r = &r["reports"][0];
    assert_eq!(r["token"]["verified"], true);
    assert_eq!(r["endpoints"][0]["endpoint"], "GET /v1/charges/*");
    assert_eq!(r["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(
        r["merchants"]["allow"],
        serde_json::json!(["acct_1BridleDemoB"])
    );
    assert_eq!(r["spend"]["max_usd"], "0.00", "reads only");
    assert!(r["ttl_secs"].as_u64().unwrap() <= 600);
    // Without public keys it is decoded and says so; with another key's, it is refused.
    let decoded = ok(bridle(&root, &["blast-radius", "--token", token.trim()]));
    assert!(decoded.contains("decoded, not verified"), "{decoded}");
    let other = public_key(&root, &ok(bridle(&root, &["keygen", "--kid", "t1"])));
    let wrong = bridle_with_key(
        &root,
        &["blast-radius", "--token", token.trim()],
        Some(("BRIDLE_PUBLIC_KEYS", &other)),
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("signature"));
}

#[test]
fn diff_against_a_git_revision_lists_what_widens_and_gates_on_it() {
    let tree = work_tree();
    let dir = tree.path();
    let unchanged = bridle(dir, &["blast-radius", "--diff", "HEAD", "--exit-code"]);
    assert_eq!(unchanged.status.code(), Some(0));
    assert!(stdout(&unchanged).contains("Nothing widens against HEAD."));

    // Widen: a refund endpoint, a higher window cap, a longer TTL.
    let stripe = dir.join("policies/stripe-payments.yaml");
    edit(
        &stripe,
        "  - { method: GET, path: /v1/charges/* }",
        "  - { method: GET, path: /v1/charges/* }\n  - { method: POST, path: /v1/refunds }",
    );
    edit(
        &stripe,
        "per_window: \"1000.00\"",
        "per_window: \"3000.00\"",
    );
    edit(&stripe, "max_ttl: 1h", "max_ttl: 8h");
    let widened = bridle(
        dir,
        &[
            "blast-radius",
            "--diff",
            "HEAD",
            "--exit-code",
            "--format",
            "markdown",
        ],
    );
    assert_eq!(widened.status.code(), Some(3), "{}", stdout(&widened));
    let md = stdout(&widened);
    assert!(md.contains("a security review is required"), "{md}");
    for want in [
        "| stripe-payments | endpoint | new endpoint POST /v1/refunds (uncosted: no cap limits it) |",
        "| stripe-payments | cap | per-window cap raised from $1000.00 to $3000.00 |",
        "| stripe-payments | ttl | max TTL lengthened from 1h to 8h |",
        "| stripe-payments | spend | most a token can spend before it expires: $1000.00 -> $3000.00 |",
    ] {
        assert!(md.contains(want), "missing {want:?} in:\n{md}");
    }
    // Without --exit-code the same diff exits 0.
    assert!(bridle(dir, &["blast-radius", "--diff", "HEAD"])
        .status
        .success());

    // Commit it; then narrowing against that revision widens nothing, and a new policy file
    // (a brand-new grant) does.
    git(dir, &["commit", "-qam", "widen"]);
    edit(&stripe, "max_ttl: 8h", "max_ttl: 30m");
    std::fs::remove_file(dir.join("policies/twilio-sms.yaml")).unwrap();
    let narrowed = bridle(
        dir,
        &[
            "blast-radius",
            "--diff",
            "HEAD",
            "--exit-code",
            "--format",
            "json",
        ],
    );
    assert_eq!(narrowed.status.code(), Some(0), "{}", stdout(&narrowed));
    let j: Value = serde_json::from_str(&stdout(&narrowed)).unwrap();
    assert_eq!(j["widens"], serde_json::json!([]));
    let narrows: Vec<String> = j["narrows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["policy"].as_str().unwrap(),
                c["detail"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        narrows.contains(&"stripe-payments max TTL shortened from 8h to 30m".to_string()),
        "{narrows:?}"
    );
    assert!(
        narrows
            .iter()
            .any(|n| n.starts_with("twilio-sms policy removed")),
        "{narrows:?}"
    );
    // HEAD~1 had neither the refund endpoint nor the higher cap.
    let vs_first = bridle(
        dir,
        &["blast-radius", "--diff", "HEAD~1", "--format", "json"],
    );
    let j: Value = serde_json::from_str(&stdout(&vs_first)).unwrap();
    assert!(j["widens"].to_string().contains("POST /v1/refunds"), "{j}");

    std::fs::write(
        dir.join("policies/openai-batch.yaml"),
        "name: openai-batch\nvendor: openai\nsecret_env: OPENAI_API_KEY\nmax_ttl: 1h\nendpoints:\n  - { method: POST, path: /v1/batches }\n",
    )
    .unwrap();
    let added = bridle(dir, &["blast-radius", "--diff", "HEAD", "--exit-code"]);
    assert_eq!(added.status.code(), Some(3));
    assert!(
        stdout(&added).contains("new policy: 1 endpoint(s)"),
        "{}",
        stdout(&added)
    );
}

#[test]
fn diff_against_a_folder_and_refusals() {
    let tree = work_tree();
    let dir = tree.path();
    let base = tempfile::tempdir().unwrap();
    copy_tree(&dir.join("policies"), base.path());
    edit(
        &dir.join("policies/openai-chat.yaml"),
        "  max_identical_per_minute: 20",
        "  max_identical_per_minute: 200",
    );
    let out = ok(bridle(
        dir,
        &["blast-radius", "--diff", base.path().to_str().unwrap()],
    ));
    assert!(
        out.contains("identical requests per minute raised from 20 to 200"),
        "{out}"
    );
    let e = bridle(dir, &["blast-radius", "--diff", "no-such-rev"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("neither a folder nor a git revision"));
}
