//! The body-ambiguity rule for form bodies: what Bridle refuses because a vendor's parser
//! could read it as something else.
//!
//! Bridle prices a form body by its own strict reading (`body.rs`). That reading is only as
//! good as its agreement with the vendor's parser, and vendors parse forms in the Rack
//! tradition (Stripe's parameter handling descends from it). Rack's `QueryParser`
//! (`rack/lib/rack/query_parser.rb`, `parse_nested_query` and `normalize_params`) shows
//! where a naive reading and Rack's part ways:
//!
//! - fields are split on `/[&] */` (Rack 2.2 and later) or `/[&;] */` (earlier releases and
//!   the `;` separator option): `;` may separate fields, and spaces after a separator are
//!   dropped, so `a=1; amount=5` holds `amount`;
//! - a key's name is `\A[\[\]]*([^\[\]]+)\]*`: brackets before the name and `]` right after it
//!   are ignored, so `[amount]=5` and `amount]=5` both set `amount` (Rack 3 reads `[amount]`
//!   literally: the two disagree, which is reason enough);
//! - what follows the name nests, whatever it is: `a[b]c=1` sets `a[b][c]`, and
//!   `a[b[c]]=1` sets `a[b][c]` too;
//! - keys are percent-decoded before any of this, so `%5Bamount%5D` is `[amount]`.
//!
//! So a form body Bridle reads must have no raw `;` and no raw whitespace (SDKs encode
//! both), and every key, once decoded, must be plain bracket notation: a name without
//! brackets, then any number of `[segment]` groups whose segments hold no bracket, and no
//! control characters anywhere. Such a key reads the same under every parser above; any
//! other body is refused, never guessed at. An empty key (`=x`) names nothing anywhere and
//! passes.
//!
//! For the opposite question, whether a body that Bridle reads as JSON could also be read as
//! a form naming a priced field (a body sent without a content type, which Rack reads as a
//! form), [`rack_key`] and [`RACK_SEPARATORS`] give the lenient Rack-style reading.

use crate::body::{shown, BodyError};

/// The bytes that may separate form fields in the Rack tradition.
pub const RACK_SEPARATORS: [u8; 2] = [b'&', b';'];

/// Refuses raw bytes of a form body that a Rack-style parser reads differently: `;` (a field
/// separator there) and whitespace (dropped after a separator there, and never written
/// unencoded by an SDK).
pub fn check_form_bytes(bytes: &[u8]) -> Result<(), BodyError> {
    if bytes.contains(&b';') {
        return Err(BodyError(
            "the form body contains ';', which some servers read as a field separator: percent-encode it (%3B)".into(),
        ));
    }
    if bytes.iter().any(u8::is_ascii_whitespace) {
        return Err(BodyError(
            "the form body contains raw whitespace, which some servers drop: encode spaces as + or %20".into(),
        ));
    }
    Ok(())
}

/// Refuses a decoded form key that is not plain bracket notation (`name`, `name[key]`,
/// `name[]`, `name[0][key]`...).
pub fn check_form_key(key: &str) -> Result<(), BodyError> {
    if key.is_empty() {
        return Ok(());
    }
    let refused = || {
        BodyError(format!(
            "form key {} is not plain bracket notation (name, name[key], name[]): a server may read it as another field",
            shown(key)
        ))
    };
    if key.chars().any(char::is_control) {
        return Err(refused());
    }
    let head_end = key.find('[').unwrap_or(key.len());
    let (head, mut rest) = key.split_at(head_end);
    if head.is_empty() || head.contains(']') {
        return Err(refused());
    }
    while !rest.is_empty() {
        let Some((segment, after)) = rest.strip_prefix('[').and_then(|r| r.split_once(']')) else {
            return Err(refused());
        };
        if segment.contains('[') {
            return Err(refused());
        }
        rest = after;
    }
    Ok(())
}

/// The key a Rack-style parser reads from a decoded key: brackets before the name dropped,
/// and `]` right after it. For lenient readings only.
pub fn rack_key(key: &str) -> String {
    let trimmed = key.trim_start_matches(['[', ']']);
    let head_end = trimmed.find(['[', ']']).unwrap_or(trimmed.len());
    let (head, rest) = trimmed.split_at(head_end);
    format!("{head}{}", rest.trim_start_matches(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bracket_notation_passes() {
        for key in [
            "",
            "amount",
            "transfer_data[amount]",
            "expand[]",
            "items[0][price]",
            "items[][price]",
            "metadata[order id]",
            "metadata[]",
            "kéy",
            "a b",
        ] {
            assert_eq!(check_form_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn keys_a_rack_parser_reads_differently_are_refused() {
        for key in [
            "[amount]",
            "]amount",
            "amount]",
            "amount[",
            "amount[x",
            "a[b]c",
            "a[b[c]]",
            "a[b]]",
            "a]b",
            "[",
            "[]",
            "amount\u{0}",
            "amount\n",
        ] {
            let e = check_form_key(key).unwrap_err();
            assert!(e.0.contains("bracket notation"), "{key}: {e}");
        }
    }

    #[test]
    fn raw_separators_and_whitespace_are_refused() {
        assert!(check_form_bytes(b"amount=1&currency=usd&metadata%5Bx%5D=a+b%3Bc").is_ok());
        for body in [
            &b"a=1;amount=5"[..],
            b"a=1& amount=5",
            b"amount=5\n",
            b"amount=5\r\n",
            b"a=1&\tamount=5",
        ] {
            assert!(
                check_form_bytes(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn rack_keys() {
        assert_eq!(rack_key("[amount]"), "amount");
        assert_eq!(rack_key("]]amount]]"), "amount");
        assert_eq!(rack_key("amount"), "amount");
        assert_eq!(rack_key("a[b]"), "a[b]");
        assert_eq!(rack_key("[a][b]"), "a[b]");
        assert_eq!(rack_key("[[]]"), "");
    }
}
