//! The project's Python with the official vendor SDKs (`tests/sdk/requirements.txt`, installed
//! into `.venv/` by `make test`), running one of the scripts in `tests/sdk/`: each prints one
//! JSON object that a Rust test asserts on.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::repo_root;

/// The project's Python, which `make test` gives the pinned SDKs.
pub fn python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test` (it creates .venv and installs tests/sdk/requirements.txt)",
        python.display()
    );
    python
}

/// The version tests/sdk/requirements.txt pins for `package`.
pub fn pinned(package: &str) -> String {
    let path = repo_root().join("tests/sdk/requirements.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{package}==")))
        .unwrap_or_else(|| panic!("{} pins no {package}", path.display()))
        .trim()
        .to_string()
}

/// Runs `.venv/bin/python <args>` in tests/sdk/ with a clean environment plus `vars`, and
/// returns its stdout. The SDKs talk only to 127.0.0.1: no proxy applies.
pub async fn run_python(args: &[String], vars: &[(&str, String)]) -> String {
    let python = python();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.args(args)
        .current_dir(repo_root().join("tests/sdk"))
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .envs(vars.iter().map(|(n, v)| (*n, v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // A retrying SDK would sleep (Anthropic's and OpenAI's honour Retry-After); a hang here
    // is a failure, not a wait.
    let out = tokio::time::timeout(Duration::from_secs(45), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not finish within 45 s"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the official SDKs are not installed in .venv: run `make test` \
         (or .venv/bin/pip install -r tests/sdk/requirements.txt):\n{stderr}"
    );
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Runs a vendor script and parses the one JSON object it prints.
pub async fn run_script(script: &str, vars: &[(&str, String)]) -> Value {
    let stdout = run_python(&[script.to_string()], vars).await;
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    eprintln!("{script}: {line}");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script} printed no JSON object ({e}):\n{stdout}"))
}

pub fn assert_version(out: &Value, package: &str) {
    assert_eq!(
        out["sdk_version"].as_str(),
        Some(pinned(package).as_str()),
        "the installed {package} is not the pinned one: run `make test`"
    );
}
