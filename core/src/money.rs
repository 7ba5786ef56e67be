//! Exact money. Caps, costs and spend are integer micro-dollars (1 USD = 1,000,000 µUSD):
//! exact for cents and fine enough for sub-cent per-call prices such as an SMS segment at
//! $0.0079. Vendor amounts arrive in the minor unit of their own currency (how many decimals
//! that is, is the vendor module's knowledge) and are converted with an explicit FX table,
//! rounding up, so that Bridle may overestimate spend but never underestimates it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MICROS_PER_USD: i64 = 1_000_000;
/// No single cap, cost or rate in a policy may exceed a billion dollars; this keeps every
/// sum of a few million of them far inside i64.
const MAX_USD: i64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoneyError {
    Malformed(String),
    TooLarge(String),
    UnknownCurrency(String),
    Overflow,
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoneyError::Malformed(s) => write!(
                f,
                "{s:?} is not an amount: write dollars as a decimal string such as \"12.50\" (at most 6 decimals, no sign or exponent)"
            ),
            MoneyError::TooLarge(s) => write!(f, "{s:?} is larger than the $1,000,000,000 limit"),
            MoneyError::UnknownCurrency(c) => {
                write!(f, "currency {c:?} has no rate in the policy's fx table")
            }
            MoneyError::Overflow => write!(f, "amount overflows"),
        }
    }
}

impl std::error::Error for MoneyError {}

/// An amount of US dollars, held as integer micro-dollars. Never negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(i64);

impl Usd {
    pub const ZERO: Usd = Usd(0);

    pub fn from_micros(micros: i64) -> Option<Usd> {
        (micros >= 0).then_some(Usd(micros))
    }

    pub fn from_cents(cents: i64) -> Option<Usd> {
        cents.checked_mul(10_000).and_then(Usd::from_micros)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// Parses a decimal dollar string: `"12"`, `"12.5"`, `"0.0079"`. No sign, no exponent,
    /// no thousands separators, at most six decimals.
    pub fn parse(s: &str) -> Result<Usd, MoneyError> {
        let malformed = || MoneyError::Malformed(s.to_string());
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, f),
            None => (s, ""),
        };
        if whole.is_empty()
            || whole.len() > 10
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 6
            || (s.contains('.') && frac.is_empty())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(malformed());
        }
        let whole: i64 = whole.parse().map_err(|_| malformed())?;
        if whole > MAX_USD {
            return Err(MoneyError::TooLarge(s.to_string()));
        }
        let mut frac_micros: i64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            let digit = i64::from(b - b'0');
            frac_micros += digit * 10_i64.pow(5 - i as u32);
        }
        let micros = whole * MICROS_PER_USD + frac_micros;
        if micros > MAX_USD * MICROS_PER_USD {
            return Err(MoneyError::TooLarge(s.to_string()));
        }
        Ok(Usd(micros))
    }

    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).map(Usd)
    }

    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0).max(0))
    }

    pub fn checked_mul(self, n: u64) -> Option<Usd> {
        i64::try_from(n)
            .ok()
            .and_then(|n| self.0.checked_mul(n))
            .map(Usd)
    }
}

impl fmt::Display for Usd {
    /// `12.5` dollars shows as `12.50`; sub-cent amounts keep their digits: `0.0079`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_USD;
        let frac = self.0 % MICROS_PER_USD;
        let mut digits = format!("{frac:06}");
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "{whole}.{digits}")
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Usd {
    /// Accepts a decimal string, or a whole number of dollars. A float is refused: `0.1` in
    /// YAML is already inexact before Bridle sees it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Usd;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dollar amount as a decimal string, such as \"12.50\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Usd, E> {
                Usd::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Usd, E> {
                Usd::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Usd, E> {
                Usd::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Usd, E> {
                Err(E::custom(format!(
                    "{v} is a float; write money as a quoted decimal string such as \"{v}\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A positive exchange rate: how many US dollars one whole unit of a currency buys, as an
/// exact decimal (`mantissa / 10^scale`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    mantissa: u64,
    scale: u32,
}

impl Rate {
    pub const ONE: Rate = Rate {
        mantissa: 1,
        scale: 0,
    };

    pub fn parse(s: &str) -> Result<Rate, MoneyError> {
        let malformed = || MoneyError::Malformed(s.to_string());
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty()
            || whole.len() > 9
            || frac.len() > 9
            || (s.contains('.') && frac.is_empty())
            || !whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return Err(malformed());
        }
        let digits = format!("{whole}{frac}");
        let mantissa: u64 = digits.parse().map_err(|_| malformed())?;
        if mantissa == 0 {
            return Err(malformed());
        }
        Ok(Rate {
            mantissa,
            scale: frac.len() as u32,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = format!("{:0width$}", self.mantissa, width = self.scale as usize + 1);
        let (whole, frac) = digits.split_at(digits.len() - self.scale as usize);
        if frac.is_empty() {
            write!(f, "{whole}")
        } else {
            write!(f, "{whole}.{frac}")
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(|e| serde::de::Error::custom(format!("fx rate: {e}")))
    }
}

/// Exchange rates to USD, by lowercase ISO currency code. USD itself is implicit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FxTable(pub BTreeMap<String, Rate>);

impl FxTable {
    pub fn rate(&self, currency: &str) -> Option<Rate> {
        if currency == "usd" {
            return Some(Rate::ONE);
        }
        self.0.get(currency).copied()
    }

    /// Converts `amount_minor` units of `currency` (e.g. 1999 for 19.99 EUR, 500 for ¥500) to
    /// dollars, rounding up to the next micro-dollar. `exponent` is how many decimals the
    /// minor unit has, as the vendor's API counts them (`Vendor::minor_unit_exponent`).
    pub fn to_usd(
        &self,
        amount_minor: u64,
        currency: &str,
        exponent: u32,
    ) -> Result<Usd, MoneyError> {
        let currency = currency.to_ascii_lowercase();
        let rate = self
            .rate(&currency)
            .ok_or_else(|| MoneyError::UnknownCurrency(currency.clone()))?;
        // micros = ceil(amount_minor * mantissa * 10^6 / (10^exponent * 10^scale))
        let numerator = u128::from(amount_minor)
            .checked_mul(u128::from(rate.mantissa))
            .and_then(|n| n.checked_mul(1_000_000))
            .ok_or(MoneyError::Overflow)?;
        let denominator = 10u128
            .checked_pow(exponent + rate.scale)
            .ok_or(MoneyError::Overflow)?;
        let micros = numerator.div_ceil(denominator);
        i64::try_from(micros)
            .ok()
            .and_then(Usd::from_micros)
            .ok_or(MoneyError::Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_dollars_exactly() {
        for (s, micros, shown) in [
            ("0", 0, "0.00"),
            ("12", 12_000_000, "12.00"),
            ("12.5", 12_500_000, "12.50"),
            ("0.0079", 7_900, "0.0079"),
            ("1000000000", 1_000_000_000_000_000, "1000000000.00"),
            ("0.000001", 1, "0.000001"),
        ] {
            let usd = Usd::parse(s).unwrap();
            assert_eq!(usd.micros(), micros, "{s}");
            assert_eq!(usd.to_string(), shown);
            assert_eq!(Usd::parse(&usd.to_string()).unwrap(), usd);
        }
    }

    #[test]
    fn refuses_ambiguous_amounts() {
        for s in [
            "",
            "-1",
            "+1",
            "1e3",
            "1,000",
            "1.",
            ".5",
            "0.0000001",
            "1 000",
            "NaN",
            "1000000001",
            "１",
        ] {
            assert!(Usd::parse(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn refuses_floats_in_config() {
        let err = serde_json::from_str::<Usd>("12.5").unwrap_err().to_string();
        assert!(err.contains("quoted decimal string"), "{err}");
        assert_eq!(
            serde_json::from_str::<Usd>("12").unwrap(),
            Usd::parse("12").unwrap()
        );
    }

    #[test]
    fn converts_zero_two_and_three_decimal_currencies() {
        let table: FxTable =
            serde_json::from_str(r#"{"jpy":"0.0067","eur":"1.08","kwd":"3.25"}"#).unwrap();
        let fx = |n: u64, c: &str| {
            let exponent = crate::vendor::Vendor::Stripe.minor_unit_exponent(&c.to_lowercase());
            table.to_usd(n, c, exponent)
        };
        // $19.99 is 19.99 dollars.
        assert_eq!(fx(1999, "usd").unwrap(), Usd::parse("19.99").unwrap());
        // ¥500 is a zero-decimal amount: 500 * 0.0067 = $3.35.
        assert_eq!(fx(500, "JPY").unwrap(), Usd::parse("3.35").unwrap());
        // €10.00 = 1000 minor units.
        assert_eq!(fx(1000, "eur").unwrap(), Usd::parse("10.80").unwrap());
        // 1.500 KWD = 1500 minor units (three decimals).
        assert_eq!(fx(1500, "kwd").unwrap(), Usd::parse("4.875").unwrap());
        assert_eq!(fx(1, "xyz"), Err(MoneyError::UnknownCurrency("xyz".into())));
    }

    #[test]
    fn conversion_rounds_up_never_down() {
        let fx: FxTable = serde_json::from_str(r#"{"jpy":"0.0066667"}"#).unwrap();
        // ¥1 = $0.0066667 = 6666.7 micros -> 6667.
        assert_eq!(fx.to_usd(1, "jpy", 0).unwrap().micros(), 6667);
    }

    #[test]
    fn rates_round_trip() {
        for s in ["1", "0.0067", "1.08", "123456789.123456789"] {
            assert_eq!(Rate::parse(s).unwrap().to_string(), s);
        }
        for s in ["0", "0.000", "-1", "1e2", "", "."] {
            assert!(Rate::parse(s).is_err(), "{s:?}");
        }
    }
}
