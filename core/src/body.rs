//! Request and response bodies, read strictly for cost rules.
//!
//! Two encodings are understood: `application/x-www-form-urlencoded`, exactly as Stripe's and
//! Twilio's SDKs write it (`metadata[order_id]=42`, `expand[]=x`, `items[0][price]=p`), and
//! JSON. Anything that could be read two ways is refused or reported as ambiguous, never
//! guessed at: a form key given twice, a JSON object with a duplicate key, invalid
//! percent-encoding, bytes that are not UTF-8. Bodies are attacker-controlled and up to about a
//! megabyte, so parsing is bounded (fields, values, nesting) and never panics.
//!
//! Fields are named in Stripe's bracket notation in both encodings: `amount`,
//! `transfer_data[amount]`, `items[0][price]`.
//!
//! A form body must also pass the body-ambiguity rule of `body_rules.rs`: no `;`, no raw
//! whitespace, and every key in plain bracket notation, so that a Rack-style parser reads
//! it exactly as Bridle does.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::body_rules;

/// The most fields a form body may have.
pub const MAX_FORM_FIELDS: usize = 10_000;
/// The deepest a JSON body may nest arrays and objects (the top level is depth 1).
pub const MAX_JSON_DEPTH: usize = 64;
/// The most values (scalars, arrays and objects together) a JSON body may hold.
pub const MAX_JSON_VALUES: usize = 100_000;
/// Field names and content types are cut to this many characters in error messages.
const SHOWN_CHARS: usize = 40;

/// How a body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
}

/// A body Bridle will not read, with a message safe to show the client: it names the problem
/// (and at most a short, truncated field name), never the body itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyError(pub String);

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyError {}

/// At most [`SHOWN_CHARS`] characters of `s`, quoted and escaped, for an error message.
pub(crate) fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(SHOWN_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// How a body with this `Content-Type` is encoded, or `None` for encodings Bridle does not read
/// (multipart, text/plain, a charset other than UTF-8...).
///
/// Form is `application/x-www-form-urlencoded`; JSON is `application/json` or any
/// `application/*+json`; parameters are allowed, but a `charset` must be UTF-8 (or ASCII).
/// Without a content type the body itself decides: empty or blank is an (empty) form, and a
/// body whose first non-blank byte is `{` or `[` is JSON, any other a form (but a body that
/// starts with a byte-order mark is neither: some JSON parsers skip it, others do not).
pub fn kind(content_type: Option<&[u8]>, body: &[u8]) -> Option<BodyKind> {
    let Some(content_type) = content_type else {
        if body.starts_with(b"\xEF\xBB\xBF") {
            return None;
        }
        return match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | Some(b'[') => Some(BodyKind::Json),
            _ => Some(BodyKind::Form),
        };
    };
    let content_type = std::str::from_utf8(content_type).ok()?;
    let mut parts = content_type.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let (name, value) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("charset") {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if !["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|c| value.eq_ignore_ascii_case(c))
            {
                return None;
            }
        }
    }
    if media == "application/x-www-form-urlencoded" {
        Some(BodyKind::Form)
    } else if media == "application/json"
        || media
            .strip_prefix("application/")
            .is_some_and(|sub| sub.len() > "+json".len() && sub.ends_with("+json"))
    {
        Some(BodyKind::Json)
    } else {
        None
    }
}

/// A body, parsed. Look fields up with [`Body::get`].
#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    inner: Inner,
}

#[derive(Clone, Debug, PartialEq)]
enum Inner {
    /// Decoded `(key, value)` pairs, in order, repeats kept.
    Form(Vec<(String, String)>),
    Json(Value),
    /// A body sent without a content type that looks like JSON. A server may read it as a form
    /// all the same (Rack does, for a POST without a content type: `{"amount":1,"x":"&amount=
    /// 99999&"}` then holds `amount=99999`), so a field is read from the JSON only when a
    /// lenient form reading of the same bytes does not name it too.
    Sniffed {
        json: Value,
        form: Vec<(String, String)>,
    },
}

/// One value found in a body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Item<'a> {
    /// A form value: always text.
    Text(&'a str),
    /// A JSON value. As [`Lookup::One`] it is never an array or an object; as an element of
    /// [`Lookup::List`] it may be anything.
    Json(&'a Value),
}

impl<'a> Item<'a> {
    /// The text of a form value or a JSON string.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Item::Text(s) => Some(s),
            Item::Json(v) => v.as_str(),
        }
    }
}

/// What a body holds under a field name.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup<'a> {
    /// Nothing.
    Absent,
    /// Exactly one scalar: a form value, or a JSON string, number, boolean or null.
    One(Item<'a>),
    /// A list: a JSON array, or form keys `f[]=a&f[]=b` or `f[0]=a&f[1]=b` (in index order).
    List(Vec<Item<'a>>),
    /// The field is given more than once (`amount=1&amount=2`), or both as a value and a list.
    Ambiguous,
    /// The field holds a structure: a JSON object, or form keys nested under it (`f[x]=1`).
    Nested,
}

impl Body {
    /// An empty body: every lookup is absent.
    pub fn empty() -> Body {
        Body {
            inner: Inner::Form(Vec::new()),
        }
    }

    /// Parses a body in a known encoding. A blank body is empty in either encoding.
    pub fn parse(kind: BodyKind, bytes: &[u8]) -> Result<Body, BodyError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Body::empty());
        }
        let inner = match kind {
            BodyKind::Form => Inner::Form(parse_form(bytes)?),
            BodyKind::Json => Inner::Json(parse_json(bytes)?),
        };
        Ok(Body { inner })
    }

    /// Parses a body by its `Content-Type` header value (see [`kind`]). A body without one that
    /// looks like JSON is read as JSON, but a field that a form reading of the same bytes also
    /// names is [`Lookup::Ambiguous`].
    pub fn read(content_type: Option<&[u8]>, bytes: &[u8]) -> Result<Body, BodyError> {
        match kind(content_type, bytes) {
            Some(BodyKind::Json) if content_type.is_none() => {
                let json = parse_json(bytes)?;
                let form = parse_form_lenient(bytes)?;
                Ok(Body {
                    inner: Inner::Sniffed { json, form },
                })
            }
            Some(k) => Body::parse(k, bytes),
            None => match content_type {
                Some(ct) => Err(BodyError(format!(
                    "a body of type {} cannot be read: send application/x-www-form-urlencoded or application/json (UTF-8)",
                    shown(String::from_utf8_lossy(ct).trim())
                ))),
                None => Err(BodyError(
                    "this body cannot be read without a content type: send Content-Type: application/x-www-form-urlencoded or application/json".into(),
                )),
            },
        }
    }

    /// The elements of a body that is a JSON array at the top level (a batch, such as
    /// Resend's `/emails/batch`); `None` for any other body. Fields read from the elements
    /// with [`json_get`] should also be looked up with [`Body::get`], which finds them absent
    /// unless a body sent without a content type also reads as a form naming them.
    pub fn batch(&self) -> Option<&[Value]> {
        match &self.inner {
            Inner::Json(Value::Array(items))
            | Inner::Sniffed {
                json: Value::Array(items),
                ..
            } => Some(items),
            _ => None,
        }
    }

    /// The whole body, when it was read as JSON (`None` for a form or an empty body).
    pub fn json(&self) -> Option<&Value> {
        match &self.inner {
            Inner::Json(v) | Inner::Sniffed { json: v, .. } => Some(v),
            Inner::Form(_) => None,
        }
    }

    /// Whether the body came without a content type and looks like JSON: a field its form
    /// reading names reads two ways ([`Lookup::Ambiguous`]).
    pub fn is_sniffed(&self) -> bool {
        matches!(self.inner, Inner::Sniffed { .. })
    }

    /// What the body holds under `field`, in bracket notation: `amount`,
    /// `transfer_data[amount]`, `items[0][price]`. A name that is not in that notation is
    /// never found.
    pub fn get(&self, field: &str) -> Lookup<'_> {
        match &self.inner {
            Inner::Form(pairs) => form_get(pairs, field),
            Inner::Json(root) => json_get(root, field),
            Inner::Sniffed { json, form } => match form_get(form, field) {
                Lookup::Absent => json_get(json, field),
                _ => Lookup::Ambiguous,
            },
        }
    }
}

/// What a JSON value holds under `field` (bracket notation), as [`Body::get`] does; for the
/// elements of a batch.
pub fn json_get<'a>(root: &'a Value, field: &str) -> Lookup<'a> {
    let Some(path) = split_field(field) else {
        return Lookup::Absent;
    };
    let mut current = root;
    for segment in path {
        let next = match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => index(segment).and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(v) => current = v,
            None => return Lookup::Absent,
        }
    }
    match current {
        Value::Object(_) => Lookup::Nested,
        Value::Array(items) => Lookup::List(items.iter().map(Item::Json).collect()),
        scalar => Lookup::One(Item::Json(scalar)),
    }
}

/// `transfer_data[amount]` → `["transfer_data", "amount"]`; `None` if not bracket notation.
fn split_field(field: &str) -> Option<Vec<&str>> {
    let head_end = field.find('[').unwrap_or(field.len());
    let (head, mut rest) = field.split_at_checked(head_end)?;
    if head.is_empty() || head.contains(']') {
        return None;
    }
    let mut path = vec![head];
    while !rest.is_empty() {
        let (key, after) = rest.strip_prefix('[')?.split_once(']')?;
        if key.is_empty() || key.contains('[') {
            return None;
        }
        path.push(key);
        rest = after;
    }
    Some(path)
}

/// A list index: ASCII digits, no sign, no leading zero (but `0` itself).
fn index(segment: &str) -> Option<usize> {
    let digits_only = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (segment.len() > 1 && segment.starts_with('0')) || segment.len() > 9 {
        return None;
    }
    segment.parse().ok()
}

fn form_get<'a>(pairs: &'a [(String, String)], field: &str) -> Lookup<'a> {
    let mut exact: Vec<&'a str> = Vec::new();
    let mut pushed: Vec<&'a str> = Vec::new();
    let mut indexed: Vec<(usize, &'a str)> = Vec::new();
    let mut nested = false;
    for (key, value) in pairs {
        if key == field {
            exact.push(value);
            continue;
        }
        let Some(rest) = key.strip_prefix(field) else {
            continue;
        };
        if !rest.starts_with('[') {
            continue;
        }
        if rest == "[]" {
            pushed.push(value);
        } else if let Some(i) = rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .and_then(index)
        {
            indexed.push((i, value));
        } else {
            nested = true;
        }
    }
    let shapes = [
        !exact.is_empty(),
        !pushed.is_empty(),
        !indexed.is_empty(),
        nested,
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if shapes == 0 {
        return Lookup::Absent;
    }
    if shapes > 1 {
        return Lookup::Ambiguous;
    }
    if let [one] = exact.as_slice() {
        return Lookup::One(Item::Text(one));
    }
    if !exact.is_empty() {
        return Lookup::Ambiguous;
    }
    if !pushed.is_empty() {
        return Lookup::List(pushed.into_iter().map(Item::Text).collect());
    }
    if !indexed.is_empty() {
        indexed.sort_by_key(|(i, _)| *i);
        if indexed.windows(2).any(|w| match w {
            [(a, _), (b, _)] => a == b,
            _ => false,
        }) {
            return Lookup::Ambiguous;
        }
        return Lookup::List(indexed.into_iter().map(|(_, v)| Item::Text(v)).collect());
    }
    Lookup::Nested
}

/// A form body read strictly, under the body-ambiguity rule (`body_rules.rs`): what it
/// accepts, a Rack-style parser reads the same way.
fn parse_form(bytes: &[u8]) -> Result<Vec<(String, String)>, BodyError> {
    body_rules::check_form_bytes(bytes)?;
    let pairs = form_pairs(bytes, b"&", decode)?;
    for (key, _) in &pairs {
        body_rules::check_form_key(key)?;
    }
    Ok(pairs)
}

/// The form a lenient server would read: `;` separating fields too, spaces after a separator
/// and brackets around a name dropped (Rack's reading), invalid percent-encoding kept as it
/// is, bytes that are not UTF-8 replaced.
fn parse_form_lenient(bytes: &[u8]) -> Result<Vec<(String, String)>, BodyError> {
    let pairs = form_pairs(bytes, &body_rules::RACK_SEPARATORS, |raw| {
        Ok(decode_lenient(raw))
    })?;
    Ok(pairs
        .into_iter()
        .map(|(k, v)| (body_rules::rack_key(k.trim_start_matches(' ')), v))
        .collect())
}

fn form_pairs(
    bytes: &[u8],
    separators: &[u8],
    decode: impl Fn(&[u8]) -> Result<String, BodyError>,
) -> Result<Vec<(String, String)>, BodyError> {
    let mut pairs = Vec::new();
    for piece in bytes.split(|b| separators.contains(b)) {
        if piece.is_empty() {
            continue;
        }
        if pairs.len() >= MAX_FORM_FIELDS {
            return Err(BodyError(format!(
                "the form body has more than {MAX_FORM_FIELDS} fields"
            )));
        }
        let (key, value) = match piece.iter().position(|b| *b == b'=') {
            Some(at) => (piece.get(..at), piece.get(at.saturating_add(1)..)),
            None => (Some(piece), Some(&[][..])),
        };
        let key = decode(key.unwrap_or_default())?;
        let value = decode(value.unwrap_or_default())?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Decodes one form key or value: `+` is a space, `%XX` a byte; the result must be UTF-8.
fn decode(raw: &[u8]) -> Result<String, BodyError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(|h| hex(*h));
                let lo = bytes.next().and_then(|l| hex(*l));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => {
                        return Err(BodyError(
                            "the form body has invalid percent-encoding: % must be followed by two hex digits".into(),
                        ))
                    }
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out)
        .map_err(|_| BodyError("the form body is not UTF-8 once percent-decoded".into()))
}

fn decode_lenient(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let escaped = match (
            b,
            raw.get(i.saturating_add(1)),
            raw.get(i.saturating_add(2)),
        ) {
            (b'%', Some(h), Some(l)) => hex(*h).zip(hex(*l)),
            _ => None,
        };
        match (b, escaped) {
            (_, Some((hi, lo))) => {
                out.push(hi << 4 | lo);
                i = i.saturating_add(3);
            }
            (b'+', None) => {
                out.push(b' ');
                i = i.saturating_add(1);
            }
            (b, None) => {
                out.push(b);
                i = i.saturating_add(1);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, BodyError> {
    let mut budget = MAX_JSON_VALUES;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict {
        depth: 0,
        budget: &mut budget,
    }
    .deserialize(&mut de)
    .map_err(|e| BodyError(format!("the JSON body is not valid: {e}")))?;
    de.end()
        .map_err(|e| BodyError(format!("the JSON body is not valid: {e}")))?;
    Ok(value)
}

/// Builds a [`Value`] like serde_json does, but refuses duplicate object keys, nesting deeper
/// than [`MAX_JSON_DEPTH`] and more than [`MAX_JSON_VALUES`] values.
struct Strict<'b> {
    /// How many arrays and objects enclose the value being read.
    depth: usize,
    /// How many more values may be read.
    budget: &'b mut usize,
}

impl Strict<'_> {
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        match self.budget.checked_sub(1) {
            Some(left) => {
                *self.budget = left;
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "more than {MAX_JSON_VALUES} values"
            ))),
        }
    }

    fn enter<E: de::Error>(&mut self) -> Result<usize, E> {
        self.count()?;
        match self.depth.checked_add(1) {
            Some(depth) if depth <= MAX_JSON_DEPTH => Ok(depth),
            _ => Err(E::custom(format_args!(
                "nested more than {MAX_JSON_DEPTH} levels deep"
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<Value, E> {
        self.count()?;
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number is not finite"))
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<Value, E> {
        self.count()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(mut self, v: String) -> Result<Value, E> {
        self.count()?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict {
            depth,
            budget: &mut *self.budget,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    shown(&key)
                )));
            }
            let value = map.next_value_seed(Strict {
                depth,
                budget: &mut *self.budget,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Body {
        Body::parse(BodyKind::Form, s.as_bytes()).unwrap()
    }

    fn json(s: &str) -> Body {
        Body::parse(BodyKind::Json, s.as_bytes()).unwrap()
    }

    fn text(l: Lookup<'_>) -> Option<String> {
        match l {
            Lookup::One(i) => i.as_str().map(str::to_string),
            _ => None,
        }
    }

    fn texts(l: Lookup<'_>) -> Vec<String> {
        match l {
            Lookup::List(items) => items
                .iter()
                .map(|i| i.as_str().unwrap().to_string())
                .collect(),
            other => panic!("not a list: {other:?}"),
        }
    }

    #[test]
    fn content_types() {
        let k = |ct: &str| kind(Some(ct.as_bytes()), b"x");
        assert_eq!(k("application/x-www-form-urlencoded"), Some(BodyKind::Form));
        assert_eq!(
            k("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
            Some(BodyKind::Form)
        );
        assert_eq!(k("application/json"), Some(BodyKind::Json));
        assert_eq!(
            k(" application/json ; charset=\"utf-8\""),
            Some(BodyKind::Json)
        );
        assert_eq!(k("application/vnd.api+json"), Some(BodyKind::Json));
        assert_eq!(k("application/json; charset=utf-16"), None);
        assert_eq!(
            k("application/x-www-form-urlencoded; charset=iso-8859-1"),
            None
        );
        assert_eq!(k("application/+json"), None);
        assert_eq!(k("text/json"), None);
        assert_eq!(k("multipart/form-data; boundary=x"), None);
        assert_eq!(k("text/plain"), None);
        assert_eq!(k(""), None);
        assert_eq!(k("application/json; garbage"), None);
        assert_eq!(kind(Some(b"application/json\xff"), b""), None);
    }

    #[test]
    fn a_missing_content_type_is_sniffed() {
        assert_eq!(kind(None, b""), Some(BodyKind::Form));
        assert_eq!(kind(None, b" \n{\"a\":1}"), Some(BodyKind::Json));
        assert_eq!(kind(None, b"[1]"), Some(BodyKind::Json));
        assert_eq!(kind(None, b"amount=1"), Some(BodyKind::Form));
        assert!(Body::read(None, b"").unwrap().get("amount") == Lookup::Absent);
        assert_eq!(
            text(
                Body::read(None, b"{\"amount\":\"5\"}")
                    .unwrap()
                    .get("amount")
            ),
            Some("5".into())
        );
    }

    #[test]
    fn a_sniffed_json_body_must_not_also_read_as_a_form() {
        let smuggled = br#"{"amount": 1, "x": "&amount=99999&", "currency": "usd"}"#;
        let b = Body::read(None, smuggled).unwrap();
        assert_eq!(b.get("amount"), Lookup::Ambiguous);
        assert_eq!(text(b.get("currency")), Some("usd".into()));
        // With its content type declared, the body is only JSON.
        let b = Body::read(Some(b"application/json"), smuggled).unwrap();
        assert_eq!(b.get("amount"), Lookup::One(Item::Json(&Value::from(1))));
        // Leniently decoded: invalid escapes do not hide the smuggled key.
        let b = Body::read(None, br#"{"a": "%zz&%61mount=5&b=%"}"#).unwrap();
        assert_eq!(b.get("amount"), Lookup::Ambiguous);
        let b = Body::read(None, br#"[{"to": "a"}, {"x": "&to=b&"}]"#).unwrap();
        assert_eq!(b.batch().unwrap().len(), 2);
        assert_eq!(b.get("to"), Lookup::Ambiguous);
        assert_eq!(b.get("cc"), Lookup::Absent);
        // A byte-order mark: JSON to some parsers, not to others.
        assert_eq!(kind(None, b"\xEF\xBB\xBF{}"), None);
        assert!(Body::read(None, b"\xEF\xBB\xBF{}").is_err());
        assert!(Body::read(Some(b"application/json"), b"\xEF\xBB\xBF{}").is_err());
    }

    #[test]
    fn unreadable_content_types_name_the_type_briefly() {
        let long = format!("text/{}", "x".repeat(10_000));
        let err = Body::read(Some(long.as_bytes()), b"x").unwrap_err().0;
        assert!(err.contains("text/xxx"), "{err}");
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn stripe_form_bodies() {
        let b = form("amount=2000&currency=usd&payment_method_types[]=card&metadata[order]=42&transfer_data[amount]=500&expand[]=a&expand[]=b");
        assert_eq!(text(b.get("amount")), Some("2000".into()));
        assert_eq!(text(b.get("currency")), Some("usd".into()));
        assert_eq!(texts(b.get("payment_method_types")), ["card"]);
        assert_eq!(text(b.get("metadata[order]")), Some("42".into()));
        assert_eq!(text(b.get("transfer_data[amount]")), Some("500".into()));
        assert_eq!(b.get("transfer_data"), Lookup::Nested);
        assert_eq!(b.get("metadata"), Lookup::Nested);
        assert_eq!(texts(b.get("expand")), ["a", "b"]);
        assert_eq!(b.get("amoun"), Lookup::Absent);
        assert_eq!(b.get("amount_x"), Lookup::Absent);
        assert_eq!(b.get("application_fee_amount"), Lookup::Absent);
    }

    #[test]
    fn stripe_python_percent_encodes_brackets() {
        // stripe-python: urlencode([("amount", 2000), ("payment_method_types[0]", "card"), ...])
        let b = form("amount=2000&currency=usd&payment_method_types%5B0%5D=card&payment_method_types%5B1%5D=link&items%5B0%5D%5Bprice%5D=price_1&metadata%5Border_id%5D=a+b%26c");
        assert_eq!(texts(b.get("payment_method_types")), ["card", "link"]);
        assert_eq!(text(b.get("items[0][price]")), Some("price_1".into()));
        assert_eq!(text(b.get("metadata[order_id]")), Some("a b&c".into()));
        assert_eq!(b.get("items"), Lookup::Nested);
    }

    #[test]
    fn form_decoding() {
        let b = form("amount=2%30%30&k%C3%A9y=%E2%82%AC&flag&empty=&=v&&&x=a=b");
        assert_eq!(text(b.get("amount")), Some("200".into()));
        assert_eq!(text(b.get("kéy")), Some("€".into()));
        assert_eq!(text(b.get("flag")), Some("".into()));
        assert_eq!(text(b.get("empty")), Some("".into()));
        assert_eq!(text(b.get("x")), Some("a=b".into()));
        for bad in ["a=%", "a=%4", "a=%zz", "%g0=1", "a=%FF", "a=\u{0}%C3"] {
            assert!(
                Body::parse(BodyKind::Form, bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        assert!(Body::parse(BodyKind::Form, b"a=\xff\xfe").is_err());
        assert!(Body::parse(BodyKind::Form, b"\xc3=1").is_err());
    }

    #[test]
    fn form_bodies_a_rack_parser_reads_differently_are_refused() {
        for bad in [
            "amount=100&currency=usd&[amount]=9999999",
            "amount=100&currency=usd&%5Bamount%5D=9999999",
            "amount=100&currency=usd&amount]=9999999",
            "amount=100&currency=usd;amount=9999999",
            "amount=100&currency=usd& amount=9999999",
            "amount=100&currency=usd\n",
            "amount=100&currency=usd&a[b]c=1",
        ] {
            let err = Body::parse(BodyKind::Form, bad.as_bytes()).unwrap_err();
            assert!(
                err.0.contains("bracket notation")
                    || err.0.contains("';'")
                    || err.0.contains("whitespace"),
                "{bad}: {err}"
            );
            // With no content type, a form is read just as strictly.
            assert!(Body::read(None, bad.as_bytes()).is_err(), "{bad}");
        }
        // Encoded, the same characters are plain values.
        let b = form("amount=100&currency=usd&metadata[note]=a%3Bb+c%5Bd%5D");
        assert_eq!(text(b.get("metadata[note]")), Some("a;b c[d]".into()));
    }

    #[test]
    fn a_sniffed_json_body_is_read_as_rack_would_read_a_form() {
        for smuggled in [
            &br#"{"amount": 1, "currency": "usd", "x": "&[amount]=99999"}"#[..],
            br#"{"amount": 1, "currency": "usd", "x": ";amount=99999"}"#,
            br#"{"amount": 1, "currency": "usd", "x": "& amount]=99999"}"#,
        ] {
            let b = Body::read(None, smuggled).unwrap();
            assert_eq!(
                b.get("amount"),
                Lookup::Ambiguous,
                "{}",
                String::from_utf8_lossy(smuggled)
            );
        }
    }

    #[test]
    fn repeated_form_keys_are_ambiguous() {
        let b = form("amount=1&amount=99999&to[]=a&to[]=b&cc[0]=a&cc[0]=b&x=1&x[]=2&y[1]=b&y[0]=a&z[]=1&z[0]=2&w[01]=a&w[1]=b");
        assert_eq!(b.get("amount"), Lookup::Ambiguous);
        assert_eq!(texts(b.get("to")), ["a", "b"]);
        assert_eq!(b.get("cc"), Lookup::Ambiguous);
        assert_eq!(b.get("x"), Lookup::Ambiguous);
        assert_eq!(texts(b.get("y")), ["a", "b"]);
        assert_eq!(b.get("z"), Lookup::Ambiguous);
        // A leading zero is not an index: w[01] is a nested key beside a list.
        assert_eq!(b.get("w"), Lookup::Ambiguous);
        // The same key spelled with and without percent-encoding is the same key.
        assert_eq!(form("amount=1&%61mount=2").get("amount"), Lookup::Ambiguous);
        assert_eq!(form("a[b]=1&a%5Bb%5D=2").get("a[b]"), Lookup::Ambiguous);
    }

    #[test]
    fn form_fields_are_bounded() {
        let many = "a=1&".repeat(MAX_FORM_FIELDS);
        assert!(Body::parse(BodyKind::Form, many.as_bytes()).is_ok());
        let too_many = "a=1&".repeat(100_000);
        let err = Body::parse(BodyKind::Form, too_many.as_bytes()).unwrap_err();
        assert!(err.0.contains("10000 fields"), "{err}");
        // A megabyte of separators is no field at all.
        let amps = vec![b'&'; 1 << 20];
        assert_eq!(
            Body::parse(BodyKind::Form, &amps).unwrap().get("amount"),
            Lookup::Absent
        );
        // One enormous key.
        let long = format!("{}=1&amount=5", "k".repeat(300_000));
        let b = Body::parse(BodyKind::Form, long.as_bytes()).unwrap();
        assert_eq!(text(b.get("amount")), Some("5".into()));
        let nested = format!("k{}=1&amount=5", "[k]".repeat(100_000));
        let b = Body::parse(BodyKind::Form, nested.as_bytes()).unwrap();
        assert_eq!(b.get("k"), Lookup::Nested);
        // Unbalanced brackets are refused, however many.
        let unbalanced = format!("{}=1&amount=5", "k[".repeat(300_000));
        assert!(Body::parse(BodyKind::Form, unbalanced.as_bytes()).is_err());
    }

    #[test]
    fn json_lookups() {
        let b = json(
            r#"{"amount": 2000, "s": "2000", "f": 20.5, "n": null, "t": true,
                "transfer_data": {"amount": 500}, "to": ["a", "b"], "items": [{"price": "p"}]}"#,
        );
        assert_eq!(b.get("amount"), Lookup::One(Item::Json(&Value::from(2000))));
        assert_eq!(text(b.get("s")), Some("2000".into()));
        assert_eq!(b.get("f"), Lookup::One(Item::Json(&Value::from(20.5))));
        assert_eq!(b.get("n"), Lookup::One(Item::Json(&Value::Null)));
        assert_eq!(
            b.get("transfer_data[amount]"),
            Lookup::One(Item::Json(&Value::from(500)))
        );
        assert_eq!(b.get("transfer_data"), Lookup::Nested);
        assert_eq!(texts(b.get("to")), ["a", "b"]);
        assert_eq!(text(b.get("items[0][price]")), Some("p".into()));
        assert_eq!(b.get("items[1][price]"), Lookup::Absent);
        assert_eq!(b.get("items[00][price]"), Lookup::Absent);
        assert_eq!(b.get("amount[x]"), Lookup::Absent);
        assert_eq!(b.get("missing"), Lookup::Absent);
        assert_eq!(b.get("to["), Lookup::Absent);
        assert_eq!(b.get(""), Lookup::Absent);
        assert!(b.batch().is_none());
        let batch = json(r#"[{"to": "a"}, {"to": ["b", "c"]}]"#);
        let items = batch.batch().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(text(json_get(&items[0], "to")), Some("a".into()));
        assert_eq!(batch.get("to"), Lookup::Absent);
    }

    #[test]
    fn json_duplicate_keys_are_refused_at_any_depth() {
        for bad in [
            r#"{"amount": 1, "amount": 99999}"#,
            r#"{"a": {"b": [{"c": 1, "c": 1}]}}"#,
            r#"[{"to": "a"}, {"to": "b", "to": "c"}]"#,
            r#"{"amount": 1, "\u0061mount": 2}"#,
        ] {
            let err = Body::parse(BodyKind::Json, bad.as_bytes()).unwrap_err();
            assert!(err.0.contains("duplicate key"), "{bad}: {err}");
        }
        // The same key in sibling objects is fine.
        json(r#"[{"to": "a"}, {"to": "b"}]"#);
    }

    #[test]
    fn json_depth_and_size_are_bounded() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        json(&ok);
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        let err = Body::parse(BodyKind::Json, deep.as_bytes()).unwrap_err();
        assert!(err.0.contains("levels deep"), "{err}");
        let bomb = "[".repeat(10_000);
        assert!(Body::parse(BodyKind::Json, bomb.as_bytes()).is_err());
        let objects = "{\"a\":".repeat(100_000);
        assert!(Body::parse(BodyKind::Json, objects.as_bytes()).is_err());
        let wide = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES));
        let err = Body::parse(BodyKind::Json, wide.as_bytes()).unwrap_err();
        assert!(err.0.contains("values"), "{err}");
    }

    #[test]
    fn malformed_json_is_refused_without_echoing_it() {
        let secret = "sk_live_very_secret_value";
        for bad in [
            format!("{{\"a\": \"{secret}\""),
            format!("{{\"a\": \"{secret}\"}} trailing"),
            format!("{{\"a\": {secret}}}"),
            "{\"a\": NaN}".into(),
            "{'a': 1}".into(),
        ] {
            let err = Body::parse(BodyKind::Json, bad.as_bytes()).unwrap_err();
            assert!(!err.0.contains(secret), "{err}");
        }
        assert!(Body::parse(BodyKind::Json, b"{\"a\": \"\xff\"}").is_err());
        let long_key = format!("{{\"{0}\": 1, \"{0}\": 2}}", "k".repeat(10_000));
        let err = Body::parse(BodyKind::Json, long_key.as_bytes()).unwrap_err();
        assert!(err.0.len() < 200, "{err}");
    }

    #[test]
    fn blank_bodies_are_empty() {
        for kind in [BodyKind::Form, BodyKind::Json] {
            assert_eq!(
                Body::parse(kind, b" \r\n").unwrap().get("amount"),
                Lookup::Absent
            );
        }
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let inputs: Vec<Vec<u8>> = vec![
            vec![0xff; 1 << 16],
            b"%".repeat(1 << 16),
            b"=".repeat(1 << 16),
            b"[[[[]]]]=1&a[=2&a]=3&]=[".to_vec(),
            "é%C3".repeat(1000).into_bytes(),
            b"{\"a\":1}".to_vec(),
            b"\"\\ud800\"".to_vec(),
        ];
        for bytes in inputs {
            for kind in [BodyKind::Form, BodyKind::Json] {
                if let Ok(b) = Body::parse(kind, &bytes) {
                    for f in ["a", "a[b]", "[", "]", "a[]", "a[0]", ""] {
                        let _ = b.get(f);
                    }
                }
            }
        }
    }
}
