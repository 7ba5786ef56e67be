//! A policy's `models` section: which models its tokens may call (globs), the most output a
//! call may ask for, and prices of its own that override or add to the shipped table.
//!
//! ```yaml
//! models:
//!   allow: [gpt-4o-mini, "gpt-4o-mini-????-??-??"]
//!   max_output_tokens: 4096
//!   prices:
//!     - { model: ft:gpt-4o-mini-2024-07-18:acme:triage:x1, input: "0.30", output: "1.20" }
//! ```

use serde::{Deserialize, Serialize};
use wildmatch::WildMatch;

use crate::llm::prices::{check_entries, check_model_name, resolve, Found, PriceEntry, PriceList};
use crate::policy::ConfigError;
use crate::vendor::Vendor;

/// No call may ask for more output than this, whatever a policy says.
pub const MAX_OUTPUT_TOKENS: u64 = 10_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// Model names, or globs (`*`, `?`) of them, that calls may name.
    pub allow: Vec<String>,
    /// The most output tokens a call may ask for; written into calls that name no maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Prices that override or add to the vendor's shipped table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceEntry>,
}

impl Models {
    /// Checks the section; field paths are relative to it.
    pub fn check(&self, vendor: Vendor) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.allow.is_empty() {
            errors.push(ConfigError::new(
                "allow",
                "list the models calls may name (globs allowed, \"*\" for any priced model)",
            ));
        }
        for (i, m) in self.allow.iter().enumerate() {
            if let Err(e) = check_model_name(m, true) {
                errors.push(ConfigError::new(format!("allow[{i}]"), e));
            }
            if self.allow.iter().take(i).any(|o| o == m) {
                errors.push(ConfigError::new(
                    format!("allow[{i}]"),
                    format!("{m:?} is listed twice"),
                ));
            }
        }
        if let Some(max) = self.max_output_tokens {
            if max == 0 || max > MAX_OUTPUT_TOKENS {
                errors.push(ConfigError::new(
                    "max_output_tokens",
                    format!("must be between 1 and {MAX_OUTPUT_TOKENS}"),
                ));
            }
        }
        errors.extend(check_entries(&self.prices, vendor, "prices", false));
        errors
    }

    pub fn compile(&self) -> CompiledModels {
        CompiledModels {
            allow: self
                .allow
                .iter()
                .map(|m| {
                    let glob = m.contains(['*', '?']).then(|| WildMatch::new(m));
                    (m.clone(), glob)
                })
                .collect(),
            max_output_tokens: self.max_output_tokens,
            prices: PriceList::new(&self.prices),
        }
    }
}

/// A checked `models` section, ready to match.
#[derive(Clone, Debug)]
pub struct CompiledModels {
    allow: Vec<(String, Option<WildMatch>)>,
    pub max_output_tokens: Option<u64>,
    pub prices: PriceList,
}

impl CompiledModels {
    pub fn allows(&self, model: &str) -> bool {
        self.allow.iter().any(|(name, glob)| match glob {
            Some(g) => g.matches(model),
            None => name == model,
        })
    }

    /// The allowed names that are not globs: each must have a price.
    pub fn literal_names(&self) -> impl Iterator<Item = &str> {
        self.allow
            .iter()
            .filter(|(_, glob)| glob.is_none())
            .map(|(name, _)| name.as_str())
    }

    /// The models allowed by name that neither the policy nor `shipped` prices: every call
    /// to one would be refused. (What globs allow cannot be listed ahead.)
    pub fn unpriced<'a>(&'a self, shipped: &'a PriceList) -> impl Iterator<Item = &'a str> + 'a {
        self.literal_names()
            .filter(move |name| !matches!(resolve(name, &self.prices, shipped), Found::Priced(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(v: serde_json::Value) -> Models {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn globs_allow_dated_snapshots_only_where_listed() {
        let m = models(serde_json::json!({
            "allow": ["gpt-4o-mini", "gpt-4o-mini-????-??-??"], "max_output_tokens": 4096
        }));
        assert!(m.check(Vendor::Openai).is_empty());
        let c = m.compile();
        assert!(c.allows("gpt-4o-mini"));
        assert!(c.allows("gpt-4o-mini-2024-07-18"));
        assert!(!c.allows("gpt-4o"));
        assert!(!c.allows("gpt-4o-mini-search-preview"));
        assert_eq!(c.literal_names().collect::<Vec<_>>(), ["gpt-4o-mini"]);
        assert_eq!(c.max_output_tokens, Some(4096));
    }

    #[test]
    fn problems_name_their_field() {
        let m = models(serde_json::json!({
            "allow": ["a b", "x", "x"], "max_output_tokens": 0,
            "prices": [{ "model": "x", "input": "0", "output": "1" }]
        }));
        let fields: Vec<String> = m
            .check(Vendor::Openai)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "allow[0]",
                "allow[2]",
                "max_output_tokens",
                "prices[0].input"
            ]
        );
        assert_eq!(
            models(serde_json::json!({ "allow": [] })).check(Vendor::Openai)[0].field,
            "allow"
        );
        assert!(
            serde_json::from_value::<Models>(serde_json::json!({ "allow": ["x"], "max": 1 }))
                .is_err()
        );
    }
}
