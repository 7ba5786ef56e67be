//! Price table files: `policies/prices/<vendor>.yaml`, one per vendor, for people and GitOps.
//! Errors name the file and the field, as policy files' do. Only native tools (the CLI) load
//! them; the filter receives each vendor's table inside its rendered configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::llm::{PriceEntry, PriceTable};
use crate::policy_files::FileError;
use crate::vendor::Vendor;

/// Every vendor's table, by vendor.
pub type Prices = BTreeMap<Vendor, Vec<PriceEntry>>;

/// Parses and checks one table. The file is named after its vendor, and every entry says when
/// it was compared with which pricing page.
pub fn parse(file: &Path, text: &str) -> Result<PriceTable, Vec<FileError>> {
    let err = |message: String| FileError {
        file: file.to_path_buf(),
        message,
    };
    let table: PriceTable = serde_yaml_ng::from_str(text).map_err(|e| vec![err(e.to_string())])?;
    let mut errors: Vec<FileError> = table
        .check(true)
        .into_iter()
        .map(|e| err(e.to_string()))
        .collect();
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if stem != table.vendor.name() {
        errors.push(err(format!(
            "vendor: a table for {} belongs in {}.yaml",
            table.vendor,
            table.vendor.name()
        )));
    }
    if errors.is_empty() {
        Ok(table)
    } else {
        Err(errors)
    }
}

/// Loads every `*.yaml` table in `dir`. A folder that does not exist holds no tables (policies
/// that price by tokens then need prices of their own, which the config check insists on).
pub fn load(dir: &Path) -> Result<Prices, Vec<FileError>> {
    let mut prices = Prices::new();
    if !dir.exists() {
        return Ok(prices);
    }
    let files = crate::policy_files::yaml_files(dir).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(FileError {
                    file,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match parse(&file, &text) {
            Ok(table) => {
                if prices.insert(table.vendor, table.models).is_some() {
                    errors.push(FileError {
                        file,
                        message: format!("a second table for {}", table.vendor),
                    });
                }
            }
            Err(es) => errors.extend(es),
        }
    }
    if errors.is_empty() {
        Ok(prices)
    } else {
        Err(errors)
    }
}

/// The shipped tables beside a policy folder: `<policies>/prices`.
pub fn beside(policies: &Path) -> PathBuf {
    if policies.is_file() {
        policies
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("prices")
    } else {
        policies.join("prices")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_prices() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/prices")
    }

    #[test]
    fn the_shipped_tables_load_and_price_their_flagships() {
        let prices = load(&repo_prices()).unwrap();
        let list = |v: Vendor| crate::llm::PriceList::new(&prices[&v]);
        for (vendor, model) in [
            (Vendor::Openai, "gpt-4o-mini"),
            (Vendor::Openai, "gpt-4o-mini-2024-07-18"),
            (Vendor::Openai, "gpt-4o-2024-05-13"),
            (Vendor::Openai, "o4-mini-2025-04-16"),
            (Vendor::Anthropic, "claude-sonnet-4-5"),
            (Vendor::Anthropic, "claude-sonnet-4-5-20250929"),
            (Vendor::Anthropic, "claude-opus-4-20250514"),
            (Vendor::Anthropic, "claude-haiku-4-5-20251001"),
        ] {
            assert!(
                matches!(
                    list(vendor).find(model),
                    crate::llm::prices::Found::Priced(_)
                ),
                "{model}"
            );
        }
        // The older gpt-4o snapshot is dearer: the exact entry wins over the glob.
        match list(Vendor::Openai).find("gpt-4o-2024-05-13") {
            crate::llm::prices::Found::Priced(e) => assert_eq!(e.output.to_string(), "15.00"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            list(Vendor::Openai).find("gpt-4o-mini-audio-preview"),
            crate::llm::prices::Found::Unlisted
        );
    }

    #[test]
    fn tables_are_checked_and_named_after_their_vendor() {
        let text = "vendor: openai\nmodels:\n  - { model: gpt-4o-mini, input: \"0.15\", output: \"0.60\" }\n";
        let errors = parse(Path::new("prices/anthropic.yaml"), text).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[0].starts_with("prices/anthropic.yaml: models[0].checked"));
        assert!(shown[1].contains("models[0].source"));
        assert!(shown[2].contains("belongs in openai.yaml"));
        let typo = "vendor: openai\nmodels:\n  - { model: m, inputs: \"1\", output: \"1\" }\n";
        let e = parse(Path::new("openai.yaml"), typo).unwrap_err()[0].to_string();
        assert!(
            e.contains("unknown field `inputs`") && e.contains("line 3"),
            "{e}"
        );
        assert!(load(Path::new("/nonexistent/prices")).unwrap().is_empty());
    }
}
