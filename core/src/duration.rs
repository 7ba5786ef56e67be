//! Durations in configuration are human strings (`90s`, `15m`, `1h`, `24h`, `7d`), parsed by
//! `humantime`, and must be whole seconds: tokens and windows are counted in seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn parse(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write e.g. \"15m\", \"1h\", \"24h\"")
    })?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: durations are counted in whole seconds"));
    }
    if d.is_zero() {
        return Err(format!("{s:?}: a duration must be longer than zero"));
    }
    Ok(d)
}

pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// The same, for an optional field.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse("0s").is_err());
        assert!(parse("1500ms").is_err());
        assert!(parse("soon").is_err());
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(
            parse(&format(Duration::from_secs(86400))).unwrap(),
            Duration::from_secs(86400)
        );
    }
}
