//! The project's Python (`.venv`, which `make test` gives Envoy, the official SDKs and the
//! Python client), running scripts of the suites with a clean environment, and the Python
//! snippets of README.md that must run as written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::repo_root;

/// `.venv/bin/python`.
pub fn python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test` (it creates .venv and installs tests/sdk/requirements.txt)",
        python.display()
    );
    python
}

/// Runs `.venv/bin/python <args>` in `dir` with a clean environment plus `vars`, and returns
/// its stdout. Scripts talk only to 127.0.0.1: no proxy applies.
pub async fn run(dir: &Path, args: &[String], vars: &[(&str, String)]) -> String {
    let python = python();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.args(args)
        .current_dir(dir)
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
        "a Python package is not installed in .venv: run `make test` (it installs \
         tests/sdk/requirements.txt, tests/client/requirements.txt and clients/python):\n{stderr}"
    );
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
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

/// Runs a vendor script in tests/sdk/ and parses the one JSON object it prints.
pub async fn run_script(script: &str, vars: &[(&str, String)]) -> Value {
    run_json(&repo_root().join("tests/sdk"), script, vars).await
}

/// The official SDK a script reports is the one tests/sdk/requirements.txt pins.
pub fn assert_version(out: &Value, package: &str) {
    assert_eq!(
        out["sdk_version"].as_str(),
        Some(pinned(package).as_str()),
        "the installed {package} is not the pinned one: run `make test`"
    );
}

/// Runs a script and parses the one JSON object it prints last.
pub async fn run_json(dir: &Path, script: &str, vars: &[(&str, String)]) -> Value {
    let stdout = run(dir, &[script.to_string()], vars).await;
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    eprintln!("{script}: {line}");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script} printed no JSON object ({e}):\n{stdout}"))
}

/// The ```python block in README.md's `## {section}` that starts with `first_line`.
pub fn readme_python(section: &str, first_line: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let heading = format!("\n## {section}\n");
    let start = readme
        .find(&heading)
        .unwrap_or_else(|| panic!("README.md has no section {section:?}"))
        + heading.len();
    let body = &readme[start..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    body.split("```python\n")
        .skip(1)
        .filter_map(|block| block.split_once("\n```").map(|(code, _)| code))
        .find(|code| code.starts_with(first_line))
        .unwrap_or_else(|| {
            panic!("README.md's {section:?} has no Python block starting {first_line:?}")
        })
        .to_string()
        + "\n"
}

/// Runs a README snippet as written (tests/sdk/readme_snippet.py): connections to the
/// fixed `make run` ports it names are routed to the test's listeners, `routes` being
/// `(readme_port, test_port)` pairs. Returns its stdout.
pub async fn run_readme_snippet(
    snippet: &str,
    routes: &[(u16, u16)],
    vars: &[(&str, String)],
) -> String {
    let routes: Vec<String> = routes.iter().map(|(a, b)| format!("{a}={b}")).collect();
    let mut all = vec![
        ("BRIDLE_SNIPPET", snippet.to_string()),
        ("BRIDLE_ROUTES", routes.join(",")),
    ];
    all.extend(vars.iter().cloned());
    run(
        &repo_root().join("tests/sdk"),
        &["readme_snippet.py".to_string()],
        &all,
    )
    .await
}
