//! Setting top-level fields of a JSON request body, leaving every other value byte for byte
//! as the agent wrote it: only the top level is re-emitted. Used to write an output maximum
//! into a request that names none, and to ask a stream for its usage.
//!
//! The body has already been read strictly (no duplicate keys), so the fields kept are exactly
//! those the vendor would have read.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// The top-level entries of a JSON object, in order, each value kept as written.
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// `body` with each of `set` written at the top level: an existing field's value replaced in
/// place, a new one added at the end. `None` if the body is not a JSON object.
pub fn set_fields(body: &[u8], set: &[(&str, Value)]) -> Option<Vec<u8>> {
    let Entries(mut entries) = serde_json::from_slice(body).ok()?;
    for (key, value) in set {
        let raw = serde_json::value::to_raw_value(value).ok()?;
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = raw,
            None => entries.push((key.to_string(), raw)),
        }
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::to_string(key).ok()?.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_kept_byte_for_byte() {
        let body = br#" {"model" : "gpt-4o-mini", "temperature": 0.70, "messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00"}], "seed": 123456789012345678901234567890 }"#;
        let out = set_fields(body, &[("max_completion_tokens", json!(4096))]).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"gpt-4o-mini","temperature":0.70,"messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00"}],"seed":123456789012345678901234567890,"max_completion_tokens":4096}"#
        );
    }

    #[test]
    fn existing_fields_are_replaced_in_place() {
        let body = br#"{"stream":true,"stream_options":{"include_usage":false},"model":"m"}"#;
        let out = set_fields(body, &[("stream_options", json!({"include_usage": true}))]).unwrap();
        assert_eq!(
            out,
            br#"{"stream":true,"stream_options":{"include_usage":true},"model":"m"}"#
        );
        assert_eq!(set_fields(b"[1]", &[]), None);
        assert_eq!(set_fields(b"{", &[]), None);
        assert_eq!(
            set_fields(b"{}", &[("a", json!(1))]).unwrap(),
            br#"{"a":1}"#
        );
    }
}
