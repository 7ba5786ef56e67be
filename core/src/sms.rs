//! SMS segment counting, for pricing a text message per segment as carriers and Twilio bill it.
//!
//! A message whose every character is in the GSM 03.38 default alphabet (or its extension
//! table) is sent in GSM-7: 160 septets in one segment, or 153 per segment once split, an
//! extension character taking two septets. Any other message is sent in UCS-2: 70 UTF-16 code
//! units in one segment, or 67 per segment once split. When a message is split, an extension
//! character's two septets (or an emoji's two UTF-16 units) are never separated across
//! segments, so a character that does not fit starts the next segment: the count can exceed a
//! plain `ceil(length / 153)`, never fall short of it.

/// Septets in a single-segment GSM-7 message.
const GSM_SINGLE: u64 = 160;
/// Septets per segment of a split GSM-7 message (7 go to the concatenation header).
const GSM_PART: u64 = 153;
/// UTF-16 code units in a single-segment UCS-2 message.
const UCS2_SINGLE: u64 = 70;
/// UTF-16 code units per segment of a split UCS-2 message.
const UCS2_PART: u64 = 67;

/// The GSM 03.38 default alphabet, each character one septet.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: each character is an escape plus one septet.
const GSM_EXTENSION: &str = "\u{000C}^{}\\[~]|€";

/// How many septets `c` takes in GSM-7, or `None` if GSM-7 cannot carry it.
fn gsm_septets(c: char) -> Option<u64> {
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// How many segments `text` is sent in. An empty message is one segment.
pub fn segments(text: &str) -> u64 {
    let gsm: Option<Vec<u64>> = text.chars().map(gsm_septets).collect();
    match gsm {
        Some(widths) => pack(&widths, GSM_SINGLE, GSM_PART),
        None => {
            let widths: Vec<u64> = text.chars().map(|c| c.len_utf16() as u64).collect();
            pack(&widths, UCS2_SINGLE, UCS2_PART)
        }
    }
}

/// Segments for characters of the given widths: one if they all fit in `single`, else as many
/// `part`-sized segments as it takes without splitting a character.
fn pack(widths: &[u64], single: u64, part: u64) -> u64 {
    let total = widths.iter().fold(0u64, |sum, w| sum.saturating_add(*w));
    if total <= single {
        return 1;
    }
    let mut count: u64 = 1;
    let mut used: u64 = 0;
    for &w in widths {
        if used.saturating_add(w) > part {
            count = count.saturating_add(1);
            used = 0;
        }
        used = used.saturating_add(w);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabets_are_complete() {
        // 128 code points in the default alphabet, one of them the escape (not a character).
        assert_eq!(GSM_BASIC.chars().count(), 127);
        assert_eq!(GSM_EXTENSION.chars().count(), 10);
        for c in (' '..='~').filter(|c| *c != '`') {
            assert!(gsm_septets(c).is_some(), "{c:?} is GSM");
        }
        assert_eq!(gsm_septets('`'), None);
        assert_eq!(gsm_septets('\t'), None);
        assert_eq!(gsm_septets('ç'), None);
        assert_eq!(gsm_septets('€'), Some(2));
        assert_eq!(gsm_septets('é'), Some(1));
    }

    #[test]
    fn gsm_7_lengths() {
        for (n, expected) in [
            (0, 1),
            (1, 1),
            (160, 1),
            (161, 2),
            (306, 2),
            (307, 3),
            (459, 3),
            (460, 4),
        ] {
            assert_eq!(segments(&"a".repeat(n)), expected, "{n} × a");
        }
        // é, ü, Δ and friends are in the default alphabet: still GSM-7.
        assert_eq!(segments(&"é".repeat(160)), 1);
        assert_eq!(segments(&"Δ".repeat(161)), 2);
        assert_eq!(segments("hello"), 1);
    }

    #[test]
    fn extension_characters_take_two_septets() {
        assert_eq!(segments(&"€".repeat(80)), 1);
        assert_eq!(segments(&"€".repeat(81)), 2);
        assert_eq!(segments(&"{".repeat(81)), 2);
        assert_eq!(segments(&format!("{}[", "a".repeat(158))), 1);
        assert_eq!(segments(&format!("{}[", "a".repeat(159))), 2);
        // 152 septets then an escape pair: the pair cannot straddle the segment boundary.
        assert_eq!(
            segments(&format!("{}^{}", "a".repeat(152), "a".repeat(7))),
            2
        );
        // 152 + 2 + 152 = 306 septets: a plain ceil(306 / 153) says 2, but the ^ moves to the
        // second segment, pushing the last character into a third.
        assert_eq!(
            segments(&format!("{}^{}", "a".repeat(152), "a".repeat(152))),
            3
        );
    }

    #[test]
    fn ucs_2_lengths() {
        for (n, expected) in [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3)] {
            assert_eq!(segments(&"中".repeat(n)), expected, "{n} × 中");
        }
        // One character outside GSM makes the whole message UCS-2.
        assert_eq!(segments(&"a".repeat(70)), 1);
        assert_eq!(segments(&format!("{}ç", "a".repeat(69))), 1);
        assert_eq!(segments(&format!("{}ç", "a".repeat(70))), 2);
        assert_eq!(segments(&format!("{}`", "a".repeat(100))), 2);
    }

    #[test]
    fn emoji_take_two_utf16_units() {
        assert_eq!(segments("😀"), 1);
        assert_eq!(segments(&"😀".repeat(35)), 1);
        assert_eq!(segments(&"😀".repeat(36)), 2);
        // One emoji among GSM characters: UCS-2, 68 + 2 = 70 units.
        assert_eq!(segments(&format!("{}😀", "a".repeat(68))), 1);
        assert_eq!(segments(&format!("{}😀", "a".repeat(69))), 2);
        // 66 units then an emoji: the surrogate pair is not split, so it opens segment two.
        assert_eq!(
            segments(&format!("{}😀{}", "a".repeat(66), "a".repeat(66))),
            3
        );
    }

    #[test]
    fn long_messages_do_not_overflow() {
        let text = "😀".repeat(1 << 18);
        assert_eq!(segments(&text), (1u64 << 19).div_ceil(66));
    }
}
