//! Token prices: what a model charges per million tokens of each class, and the exact cost of
//! a call in integer micro-dollars, rounded up once on the total.
//!
//! Prices are data. Each vendor's table ships as `policies/prices/<vendor>.yaml`, reaches the
//! filter inside its rendered configuration (Envoy never reads a file), and a policy may
//! override or add entries under `models.prices`. An entry names one model, or a glob (`*`,
//! `?`) of its dated snapshots; an exact name wins over a glob, a policy's entry over the
//! shipped table's, and a name that two globs of one table match differently is not priced
//! at all. A class the entry does not price cannot be charged $0: a call that reports tokens
//! of that class has no cost Bridle can compute, and the caller settles it at the
//! reservation.

use serde::{Deserialize, Serialize};
use wildmatch::WildMatch;

use crate::llm::usage::TokenUsage;
use crate::money::Usd;
use crate::policy::ConfigError;
use crate::vendor::Vendor;

/// Tokens in a million: prices are per million tokens.
const PER: u128 = 1_000_000;
/// No single cost may exceed a billion dollars, like every amount Bridle handles.
const MAX_COST_MICROS: u128 = 1_000_000_000 * 1_000_000;
/// Model names (and globs) are at most this long.
pub const MAX_MODEL_NAME: usize = 256;

/// One model's prices, in dollars per million tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// A model name, or a glob of its dated snapshots (`gpt-4o-mini-????-??-??`).
    pub model: String,
    /// Input tokens read fresh (neither from nor into a cache).
    pub input: Usd,
    /// Input tokens read from the prompt cache (OpenAI `cached_tokens`, Anthropic cache
    /// reads). Absent: the vendor gives no discount, and they cost `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<Usd>,
    /// Input tokens written to a cache that lives five minutes (Anthropic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m: Option<Usd>,
    /// Input tokens written to a cache that lives an hour (Anthropic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<Usd>,
    /// Output tokens, reasoning included.
    pub output: Usd,
    /// When the entry was last compared with the vendor's pricing page, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<String>,
    /// The vendor's pricing page the entry was compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A vendor's price table, as shipped in `policies/prices/<vendor>.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    pub vendor: Vendor,
    pub models: Vec<PriceEntry>,
}

/// What a token in a request's input may turn out to be, for the reservation: read fresh, or
/// (when the request marks cache breakpoints) written to a cache, which costs more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputClass {
    Fresh,
    /// Cache writes are possible; `one_hour` when a breakpoint asks for the one-hour cache.
    CacheWrites {
        one_hour: bool,
    },
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// The characters a model name (or glob) may hold: vendors' names and fine-tune ids
/// (`ft:gpt-4o-mini-2024-07-18:org:name:id`) fit.
pub fn check_model_name(name: &str, glob_ok: bool) -> Result<(), String> {
    let ok_byte = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@')
            || (glob_ok && matches!(b, b'*' | b'?'))
    };
    if name.is_empty() || name.len() > MAX_MODEL_NAME || !name.bytes().all(ok_byte) {
        let what = if glob_ok {
            "model name or glob"
        } else {
            "model name"
        };
        return Err(format!(
            "{:?} is not a {what}: 1-{MAX_MODEL_NAME} letters, digits and - _ . : / @{}",
            crate::body::shown(name),
            if glob_ok {
                " (and * ? as wildcards)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

fn check_date(date: &str) -> bool {
    let b = date.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

impl PriceEntry {
    /// Checks one entry; `at` is its field path. `provenance` requires `checked` and
    /// `source` (the shipped tables; a policy's negotiated price may have no public page).
    pub fn check(&self, at: &str, vendor: Vendor, provenance: bool) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(ConfigError::new(format!("{at}.{field}"), message));
        };
        if let Err(e) = check_model_name(&self.model, true) {
            fail("model", e);
        }
        for (field, price) in [("input", self.input), ("output", self.output)] {
            if price == Usd::ZERO {
                fail(
                    field,
                    "a zero price would let calls through for free; give the vendor's price".into(),
                );
            }
        }
        if vendor == Vendor::Anthropic {
            for (field, price) in [
                ("cache_write_5m", self.cache_write_5m),
                ("cache_write_1h", self.cache_write_1h),
            ] {
                if price.is_none() {
                    fail(
                        field,
                        "Anthropic bills prompt-cache writes apart: give this price".into(),
                    );
                }
            }
        }
        match &self.checked {
            Some(d) if !check_date(d) => {
                fail("checked", format!("{d:?} is not a date such as 2026-11-27"))
            }
            None if provenance => fail(
                "checked",
                "say when the price was compared with the vendor's page".into(),
            ),
            _ => {}
        }
        match &self.source {
            Some(s)
                if !s.starts_with("https://")
                    || s.len() > 512
                    || s.contains(char::is_whitespace) =>
            {
                fail("source", format!("{s:?} is not an https URL"))
            }
            None if provenance => fail("source", "name the vendor's pricing page".into()),
            _ => {}
        }
        errors
    }

    /// The exact cost of `usage`, rounded up to the micro-dollar; `None` if the usage has
    /// tokens of a class this entry does not price, or the cost is past the limit.
    pub fn cost(&self, usage: &TokenUsage) -> Option<Usd> {
        let terms = [
            (usage.input, Some(self.input)),
            (
                usage.cached_input,
                Some(self.cached_input.unwrap_or(self.input)),
            ),
            (usage.cache_write_5m, self.cache_write_5m),
            (usage.cache_write_1h, self.cache_write_1h),
            (usage.output, Some(self.output)),
        ];
        let mut sum: u128 = 0;
        for (tokens, price) in terms {
            if tokens == 0 {
                continue;
            }
            let price = u128::try_from(price?.micros()).ok()?;
            sum = sum.checked_add(u128::from(tokens).checked_mul(price)?)?;
        }
        micros(sum)
    }

    /// The most `input_tokens` and `output_tokens` can cost, when the input's tokens are of
    /// `class`; `None` if a needed price is missing or the amount is past the limit.
    pub fn bound(&self, input_tokens: u64, class: InputClass, output_tokens: u64) -> Option<Usd> {
        // Cached input is cheaper at every vendor Bridle knows, but a policy's own price need
        // not be: the bound holds whatever the prices are.
        let mut input_price = self.input.max(self.cached_input.unwrap_or(self.input));
        if let InputClass::CacheWrites { one_hour } = class {
            input_price = input_price.max(self.cache_write_5m?);
            if one_hour {
                input_price = input_price.max(self.cache_write_1h?);
            }
        }
        let input =
            u128::from(input_tokens).checked_mul(u128::try_from(input_price.micros()).ok()?)?;
        let output =
            u128::from(output_tokens).checked_mul(u128::try_from(self.output.micros()).ok()?)?;
        micros(input.checked_add(output)?)
    }
}

/// `sum` micro-dollars per million tokens, as micro-dollars rounded up, within the limit.
fn micros(sum: u128) -> Option<Usd> {
    let rounded = sum.div_ceil(PER);
    if rounded > MAX_COST_MICROS {
        return None;
    }
    Usd::from_micros(i64::try_from(rounded).ok()?)
}

impl PriceTable {
    /// Checks every entry, and that no model (or glob) is listed twice.
    pub fn check(&self, provenance: bool) -> Vec<ConfigError> {
        check_entries(&self.models, self.vendor, "models", provenance)
    }
}

/// Checks a list of entries (a table's, or a policy's overrides) at field path `at`.
pub fn check_entries(
    entries: &[PriceEntry],
    vendor: Vendor,
    at: &str,
    provenance: bool,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let here = format!("{at}[{i}]");
        errors.extend(e.check(&here, vendor, provenance));
        if entries.iter().take(i).any(|o| o.model == e.model) {
            errors.push(ConfigError::new(
                format!("{here}.model"),
                format!("{:?} is listed twice", e.model),
            ));
        }
    }
    errors
}

/// Entries compiled for lookup.
#[derive(Clone, Debug, Default)]
pub struct PriceList {
    entries: Vec<(PriceEntry, Option<WildMatch>)>,
}

/// What a price list says about a model.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    Priced(&'a PriceEntry),
    /// Globs of the list match it with different prices.
    Ambiguous,
    Unlisted,
}

impl PriceList {
    pub fn new(entries: &[PriceEntry]) -> PriceList {
        PriceList {
            entries: entries
                .iter()
                .map(|e| {
                    let glob = is_glob(&e.model).then(|| WildMatch::new(&e.model));
                    (e.clone(), glob)
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn find(&self, model: &str) -> Found<'_> {
        if let Some((e, _)) = self
            .entries
            .iter()
            .find(|(e, glob)| glob.is_none() && e.model == model)
        {
            return Found::Priced(e);
        }
        let mut found: Option<&PriceEntry> = None;
        for (e, glob) in &self.entries {
            if glob.as_ref().is_some_and(|g| g.matches(model)) {
                match found {
                    Some(f) if !same_prices(f, e) => return Found::Ambiguous,
                    Some(_) => {}
                    None => found = Some(e),
                }
            }
        }
        found.map_or(Found::Unlisted, Found::Priced)
    }
}

fn same_prices(a: &PriceEntry, b: &PriceEntry) -> bool {
    (
        a.input,
        a.cached_input,
        a.cache_write_5m,
        a.cache_write_1h,
        a.output,
    ) == (
        b.input,
        b.cached_input,
        b.cache_write_5m,
        b.cache_write_1h,
        b.output,
    )
}

/// The price of `model`: the policy's own entries first, then the shipped table.
pub fn resolve<'a>(model: &str, policy: &'a PriceList, shipped: &'a PriceList) -> Found<'a> {
    match policy.find(model) {
        Found::Unlisted => shipped.find(model),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn entry(model: &str, input: &str, output: &str) -> PriceEntry {
        PriceEntry {
            model: model.into(),
            input: usd(input),
            cached_input: None,
            cache_write_5m: None,
            cache_write_1h: None,
            output: usd(output),
            checked: None,
            source: None,
        }
    }

    fn sonnet() -> PriceEntry {
        PriceEntry {
            cached_input: Some(usd("0.30")),
            cache_write_5m: Some(usd("3.75")),
            cache_write_1h: Some(usd("6")),
            ..entry("claude-sonnet-4-5", "3", "15")
        }
    }

    #[test]
    fn costs_are_exact_and_rounded_up_once() {
        let mini = PriceEntry {
            cached_input: Some(usd("0.075")),
            ..entry("gpt-4o-mini", "0.15", "0.60")
        };
        let usage = TokenUsage {
            input: 1_000,
            cached_input: 1_000,
            output: 1_000,
            ..TokenUsage::default()
        };
        // 150 + 75 + 600 µ$ per thousand: exactly 825 µ$.
        assert_eq!(mini.cost(&usage), Some(Usd::from_micros(825).unwrap()));
        // One input token is 0.15 µ$: rounded up to 1, once on the total.
        let one = TokenUsage {
            input: 1,
            ..TokenUsage::default()
        };
        assert_eq!(mini.cost(&one), Some(Usd::from_micros(1).unwrap()));
        let seven = TokenUsage {
            input: 7,
            ..TokenUsage::default()
        };
        // 7 × 0.15 = 1.05 → 2, not 7 × ceil(0.15) = 7.
        assert_eq!(mini.cost(&seven), Some(Usd::from_micros(2).unwrap()));
        assert_eq!(mini.cost(&TokenUsage::default()), Some(Usd::ZERO));
        // No cached price: cached tokens cost full input.
        let plain = entry("m", "1", "2");
        let cached = TokenUsage {
            cached_input: 1_000_000,
            ..TokenUsage::default()
        };
        assert_eq!(plain.cost(&cached), Some(usd("1")));
    }

    #[test]
    fn anthropic_cache_classes_are_priced_apart() {
        let usage = TokenUsage {
            input: 100,
            cached_input: 10_000,
            cache_write_5m: 2_000,
            cache_write_1h: 1_000,
            output: 500,
            reasoning: 0,
        };
        // 300 + 3000 + 7500 + 6000 + 7500 = 24300 µ$.
        assert_eq!(
            sonnet().cost(&usage),
            Some(Usd::from_micros(24_300).unwrap())
        );
        // A class without a price cannot be charged $0.
        let no_writes = entry("m", "3", "15");
        let write = TokenUsage {
            cache_write_5m: 1,
            ..TokenUsage::default()
        };
        assert_eq!(no_writes.cost(&write), None);
    }

    #[test]
    fn bounds_price_input_at_the_dearest_class_it_may_be() {
        let s = sonnet();
        assert_eq!(s.bound(1_000_000, InputClass::Fresh, 0), Some(usd("3")));
        assert_eq!(
            s.bound(1_000_000, InputClass::CacheWrites { one_hour: false }, 0),
            Some(usd("3.75"))
        );
        assert_eq!(
            s.bound(
                1_000_000,
                InputClass::CacheWrites { one_hour: true },
                1_000_000
            ),
            Some(usd("21"))
        );
        assert_eq!(
            entry("m", "3", "15").bound(1, InputClass::CacheWrites { one_hour: false }, 0),
            None
        );
        // Past a billion dollars: no bound.
        assert_eq!(s.bound(u64::MAX, InputClass::Fresh, u64::MAX), None);
        assert_eq!(s.bound(u64::MAX / 2, InputClass::Fresh, 0), None);
    }

    #[test]
    fn exact_names_win_over_globs_and_policies_over_tables() {
        let table = PriceList::new(&[
            entry("gpt-4o", "2.50", "10"),
            entry("gpt-4o-????-??-??", "2.50", "10"),
            entry("gpt-4o-2024-05-13", "5", "15"),
            entry("gpt-4o-mini", "0.15", "0.60"),
            entry("gpt-4o-mini-????-??-??", "0.15", "0.60"),
        ]);
        let price = |list: &PriceList, m: &str| match list.find(m) {
            Found::Priced(e) => Some(e.output.to_string()),
            _ => None,
        };
        assert_eq!(price(&table, "gpt-4o-2024-08-06").as_deref(), Some("10.00"));
        assert_eq!(price(&table, "gpt-4o-2024-05-13").as_deref(), Some("15.00"));
        assert_eq!(
            price(&table, "gpt-4o-mini-2024-07-18").as_deref(),
            Some("0.60")
        );
        // A glob of dated snapshots does not reach a different model.
        assert_eq!(table.find("gpt-4o-mini-search-preview"), Found::Unlisted);
        assert_eq!(table.find("gpt-4o-audio-preview"), Found::Unlisted);

        let overlapping = PriceList::new(&[entry("x-*", "1", "1"), entry("x-?", "2", "2")]);
        assert_eq!(overlapping.find("x-a"), Found::Ambiguous);
        assert!(matches!(overlapping.find("x-ab"), Found::Priced(_)));

        let policy = PriceList::new(&[entry("gpt-4o-mini", "0.10", "0.40")]);
        assert!(
            matches!(resolve("gpt-4o-mini", &policy, &table), Found::Priced(e) if e.output == usd("0.40"))
        );
        assert!(
            matches!(resolve("gpt-4o", &policy, &table), Found::Priced(e) if e.output == usd("10"))
        );
        assert_eq!(resolve("o9", &policy, &table), Found::Unlisted);
    }

    #[test]
    fn tables_are_checked() {
        let mut table = PriceTable {
            vendor: Vendor::Anthropic,
            models: vec![sonnet(), sonnet(), entry("bad name", "0", "1")],
        };
        table.models[0].checked = Some("2026-11-27".into());
        table.models[0].source =
            Some("https://docs.anthropic.com/en/docs/about-claude/pricing".into());
        let fields: Vec<String> = table.check(true).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "models[1].checked",
                "models[1].source",
                "models[1].model",
                "models[2].model",
                "models[2].input",
                "models[2].cache_write_5m",
                "models[2].cache_write_1h",
                "models[2].checked",
                "models[2].source",
            ]
        );
        // A policy's overrides need no provenance.
        assert!(check_entries(&[sonnet()], Vendor::Anthropic, "p", false).is_empty());
        let mut e = sonnet();
        e.checked = Some("27/11/2026".into());
        e.source = Some("http://example.com".into());
        let fields: Vec<String> = e
            .check("e", Vendor::Anthropic, false)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["e.checked", "e.source"]);
    }

    #[test]
    fn model_names() {
        assert!(check_model_name("ft:gpt-4o-mini-2024-07-18:acme:x:abc123", false).is_ok());
        assert!(check_model_name("claude-sonnet-4-5@20250929", false).is_ok());
        assert!(check_model_name("gpt-4o-*", false).is_err());
        assert!(check_model_name("gpt-4o-*", true).is_ok());
        assert!(check_model_name("", true).is_err());
        assert!(check_model_name("a b", true).is_err());
        assert!(check_model_name(&"m".repeat(257), true).is_err());
    }
}
