//! Policy files: one YAML document per policy, for people and GitOps. Errors name the file,
//! the field and (for syntax errors) the line, so that a pipeline's log points at the fix.
//! Only native tools (CLI, ledger) load files; the filter receives rendered JSON.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::policy::{CompiledPolicy, Policy};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// Parses and checks one policy file.
pub fn parse(file: &Path, text: &str) -> Result<CompiledPolicy, Vec<FileError>> {
    let err = |message: String| FileError {
        file: file.to_path_buf(),
        message,
    };
    let policy: Policy = serde_yaml_ng::from_str(text).map_err(|e| vec![err(e.to_string())])?;
    policy
        .compile()
        .map_err(|errors| errors.into_iter().map(|e| err(e.to_string())).collect())
}

/// The policy files a path names: the file itself, or every `*.yaml`/`*.yml` in a folder,
/// in name order so that renders are reproducible.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, FileError> {
    let err = |message: String| FileError {
        file: path.to_path_buf(),
        message,
    };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let out = yaml_files(path)?;
    if out.is_empty() {
        return Err(err("no *.yaml policy files here".into()));
    }
    Ok(out)
}

/// The `*.yaml` and `*.yml` files directly in a folder, in name order.
pub(crate) fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FileError {
        file: dir.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Loads every policy under the given paths and checks them together: each must be valid
/// and policy names must be unique across files (tokens, stats and the ledger key on them).
pub fn load(paths: &[PathBuf]) -> Result<Vec<CompiledPolicy>, Vec<FileError>> {
    let mut errors = Vec::new();
    let mut texts = Vec::new();
    for path in paths {
        let files = match files(path) {
            Ok(f) => f,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(t) => texts.push((file, t)),
                Err(e) => errors.push(FileError {
                    file,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
    }
    match parse_all(texts) {
        Ok(policies) if errors.is_empty() => Ok(policies),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// Parses and checks policy files already read (from disk, or from a git revision), with
/// names unique across them.
pub fn parse_all(
    files: impl IntoIterator<Item = (PathBuf, String)>,
) -> Result<Vec<CompiledPolicy>, Vec<FileError>> {
    let mut errors = Vec::new();
    let mut policies = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for (file, text) in files {
        match parse(&file, &text) {
            Ok(p) => {
                if let Some(first) = seen.insert(p.policy.name.clone(), file.clone()) {
                    errors.push(FileError {
                        file: file.clone(),
                        message: format!(
                            "name: policy {:?} is already defined in {}",
                            p.policy.name,
                            first.display()
                        ),
                    });
                }
                policies.push(p);
            }
            Err(es) => errors.extend(es),
        }
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: stripe-payments\nvendor: stripe\nsecret_env: STRIPE_SECRET_KEY\nmax_ttl: 1h\nmerchants:\n  allow: [acct_1Merchant]\nendpoints:\n  - method: GET\n    path: /v1/charges/*\n";

    #[test]
    fn parses_yaml_policies() {
        let p = parse(Path::new("p.yaml"), GOOD).unwrap();
        assert_eq!(p.policy.name, "stripe-payments");
    }

    #[test]
    fn errors_name_file_field_and_line() {
        let typo = GOOD.replace("    path:", "    pth:");
        let e = parse(Path::new("policies/x.yaml"), &typo).unwrap_err()[0].to_string();
        assert!(
            e.starts_with("policies/x.yaml: endpoints[0]: unknown field `pth`"),
            "{e}"
        );
        assert!(e.contains("line 9 column 5"), "{e}");
        let glob = GOOD.replace("/v1/charges/*", "/v1/charges/**");
        let e = parse(Path::new("x.yaml"), &glob).unwrap_err()[0].to_string();
        assert!(e.starts_with("x.yaml: endpoints[0]: path glob"), "{e}");
        let vendor = GOOD.replace("vendor: stripe", "vendor: paypal");
        let e = parse(Path::new("x.yaml"), &vendor).unwrap_err()[0].to_string();
        assert!(e.contains("unknown variant `paypal`"), "{e}");
        let float = GOOD.replace("max_ttl: 1h", "max_ttl: 1h\ncaps:\n  lifetime: 10.5");
        let e = parse(Path::new("x.yaml"), &float).unwrap_err()[0].to_string();
        assert!(e.contains("quoted decimal string"), "{e}");
    }

    #[test]
    fn names_are_unique_across_files() {
        let dir = std::env::temp_dir().join(format!("bridle-policy-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.join("b.yml"), GOOD).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let errors = load(std::slice::from_ref(&dir)).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("already defined in"),
            "{}",
            errors[0]
        );
        std::fs::remove_file(dir.join("b.yml")).unwrap();
        assert_eq!(load(std::slice::from_ref(&dir)).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
