//! The proxy-wasm wire format of a header map, bounds-checked both ways:
//! `u32 count`, then `count` pairs of `u32 name_len, u32 value_len`, then each name and
//! value followed by a NUL byte. Lengths are little-endian.

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    let arr: [u8; 4] = b.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(arr)).ok()
}

/// Decodes a serialized map. `None` on any inconsistency: the caller fails closed.
pub fn decode(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    // Each pair needs at least 8 bytes of sizes and 2 NULs: refuse absurd counts up front.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let base = 4 + i * 8;
        sizes.push((read_u32(bytes, base)?, read_u32(bytes, base + 4)?));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (name_len, value_len) in sizes {
        let name = bytes.get(at..at.checked_add(name_len)?)?;
        at = at.checked_add(name_len)?;
        (bytes.get(at) == Some(&0)).then_some(())?;
        at = at.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(value_len)?)?;
        at = at.checked_add(value_len)?;
        (bytes.get(at) == Some(&0)).then_some(())?;
        at = at.checked_add(1)?;
        // Header names are tokens (ASCII) by HTTP's grammar; anything else is not a header
        // Bridle can reason about.
        let name = String::from_utf8(name.to_vec()).ok()?;
        out.push((name, value.to_vec()));
    }
    Some(out)
}

pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size: usize = 4 + pairs
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_including_non_utf8_values() {
        let encoded = encode(&[
            (":path", "/v1/x"),
            ("authorization", "Bearer a"),
            ("empty", ""),
        ]);
        let decoded = decode(&encoded).unwrap();
        assert_eq!(decoded[0], (":path".to_string(), b"/v1/x".to_vec()));
        assert_eq!(decoded[2], ("empty".to_string(), Vec::new()));
        let mut raw = encode(&[("x", "ab")]);
        let len = raw.len();
        raw[len - 3] = 0xff; // a value byte that is not UTF-8
        assert_eq!(decode(&raw).unwrap()[0].1, vec![0xff, b'b']);
    }

    #[test]
    fn truncated_or_lying_maps_are_refused() {
        let encoded = encode(&[("name", "value"), ("other", "v")]);
        for n in 1..encoded.len() {
            assert!(
                decode(&encoded[..n]).is_none(),
                "truncation at {n} accepted"
            );
        }
        let mut lying = encoded.clone();
        lying[0] = 0xff;
        assert!(decode(&lying).is_none());
        let mut huge = encoded;
        huge[4] = 0xff;
        huge[5] = 0xff;
        assert!(decode(&huge).is_none());
        assert_eq!(decode(&[]), Some(vec![]));
    }
}
