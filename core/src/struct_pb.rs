//! Decodes a binary `google.protobuf.Struct` into JSON.
//!
//! Envoy hands a Wasm plugin its `configuration` as the raw bytes of the `Any`: text for a
//! `StringValue`, but the binary protobuf encoding for a `Struct`. A Struct is what people
//! write in a readable bootstrap, so the filter accepts both. This decoder is bounded in
//! depth and never trusts a length it has not checked against the input.

use serde_json::{Map, Number, Value};

const MAX_DEPTH: usize = 64;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let out = self.bytes.get(self.at..end).ok_or("truncated field")?;
        self.at = end;
        Ok(out)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
        self.take(n)
    }

    /// `(field number, wire type)`
    fn tag(&mut self) -> Result<(u64, u64), String> {
        let t = self.varint()?;
        Ok((t >> 3, t & 7))
    }

    fn skip(&mut self, wire_type: u64) -> Result<(), String> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.len_delimited().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            w => Err(format!("unsupported wire type {w}")),
        }
    }
}

/// Decodes a `Struct` message into a JSON object.
pub fn struct_to_json(bytes: &[u8]) -> Result<Value, String> {
    decode_struct(bytes, 0).map_err(|e| format!("not a google.protobuf.Struct: {e}"))
}

fn decode_struct(bytes: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    let mut r = Reader::new(bytes);
    let mut map = Map::new();
    while !r.done() {
        match r.tag()? {
            (1, 2) => {
                let (key, value) = decode_entry(r.len_delimited()?, depth)?;
                map.insert(key, value);
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(Value::Object(map))
}

fn decode_entry(bytes: &[u8], depth: usize) -> Result<(String, Value), String> {
    let mut r = Reader::new(bytes);
    let (mut key, mut value) = (String::new(), Value::Null);
    while !r.done() {
        match r.tag()? {
            (1, 2) => {
                key = String::from_utf8(r.len_delimited()?.to_vec())
                    .map_err(|_| "key is not UTF-8")?
            }
            (2, 2) => value = decode_value(r.len_delimited()?, depth + 1)?,
            (_, w) => r.skip(w)?,
        }
    }
    Ok((key, value))
}

fn decode_value(bytes: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    let mut r = Reader::new(bytes);
    let mut value = Value::Null;
    while !r.done() {
        value = match r.tag()? {
            (1, 0) => {
                r.varint()?;
                Value::Null
            }
            (2, 1) => {
                let raw: [u8; 8] = r.take(8)?.try_into().map_err(|_| "bad double")?;
                number(f64::from_le_bytes(raw))?
            }
            (3, 2) => Value::String(
                String::from_utf8(r.len_delimited()?.to_vec())
                    .map_err(|_| "string is not UTF-8")?,
            ),
            (4, 0) => Value::Bool(r.varint()? != 0),
            (5, 2) => decode_struct(r.len_delimited()?, depth + 1)?,
            (6, 2) => decode_list(r.len_delimited()?, depth + 1)?,
            (_, w) => {
                r.skip(w)?;
                continue;
            }
        };
    }
    Ok(value)
}

fn decode_list(bytes: &[u8], depth: usize) -> Result<Value, String> {
    let mut r = Reader::new(bytes);
    let mut items = Vec::new();
    while !r.done() {
        match r.tag()? {
            (1, 2) => items.push(decode_value(r.len_delimited()?, depth + 1)?),
            (_, w) => r.skip(w)?,
        }
    }
    Ok(Value::Array(items))
}

/// Struct numbers are doubles; whole numbers become JSON integers so that integer fields
/// (timeouts, limits) deserialize as written.
fn number(f: f64) -> Result<Value, String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if f.is_finite() && f.fract() == 0.0 && f.abs() <= EXACT {
        #[allow(clippy::cast_possible_truncation)]
        return Ok(Value::Number(Number::from(f as i64)));
    }
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| "number is not finite".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // A tiny encoder, the mirror image of the decoder, to build test inputs.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn field(n: u64, wire: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | wire, out);
        if wire == 2 {
            varint(payload.len() as u64, out);
        }
        out.extend_from_slice(payload);
    }
    fn encode_value(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        match v {
            Value::Null => field(1, 0, &[0], &mut out),
            Value::Number(n) => field(2, 1, &n.as_f64().unwrap().to_le_bytes(), &mut out),
            Value::String(s) => field(3, 2, s.as_bytes(), &mut out),
            Value::Bool(b) => field(4, 0, &[u8::from(*b)], &mut out),
            Value::Object(_) => field(5, 2, &encode_struct(v), &mut out),
            Value::Array(items) => {
                let mut list = Vec::new();
                for i in items {
                    field(1, 2, &encode_value(i), &mut list);
                }
                field(6, 2, &list, &mut out);
            }
        }
        out
    }
    /// A JSON object as a binary `Struct`, entries in key order.
    pub(crate) fn encode_struct(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            let mut entry = Vec::new();
            field(1, 2, k.as_bytes(), &mut entry);
            field(2, 2, &encode_value(v), &mut entry);
            field(1, 2, &entry, &mut out);
        }
        out
    }

    #[test]
    fn round_trips_every_value_kind() {
        let v = serde_json::json!({
            "vendor": "stripe",
            "timeout_ms": 500,
            "ratio": 0.25,
            "on": true,
            "none": null,
            "list": [1, "two", {"three": [3]}],
            "nested": {"a": {"b": {}}},
        });
        assert_eq!(struct_to_json(&encode_struct(&v)).unwrap(), v);
        assert_eq!(struct_to_json(&[]).unwrap(), serde_json::json!({}));
    }

    #[test]
    fn hostile_inputs_fail_cleanly() {
        let good = encode_struct(&serde_json::json!({"a": [1, 2, {"b": "c"}]}));
        for n in 1..good.len() {
            assert!(
                struct_to_json(&good[..n]).is_err(),
                "truncation at {n} accepted"
            );
        }
        assert!(struct_to_json(&[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .is_err());
        assert!(struct_to_json(&[0x0f]).is_err());
        assert!(struct_to_json(b"{\"json\": true}").is_err());
        // Nesting past the bound is refused rather than exhausting the stack.
        let mut deep = serde_json::json!({});
        for _ in 0..200 {
            deep = serde_json::json!({ "x": deep });
        }
        assert!(struct_to_json(&encode_struct(&deep))
            .unwrap_err()
            .contains("nested too deeply"));
    }
}
