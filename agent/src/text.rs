//! Text helpers shared by both sides of the agent.

/// Cuts `text` to at most `max` bytes on a character boundary (never inside a multi-byte
/// character: Kubernetes and webhook messages are any UTF-8, and `String::truncate` at a byte
/// index inside one panics). The one truncation of strings in the agent.
pub(crate) fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::truncate_utf8;

    #[test]
    fn cuts_before_a_multi_byte_character_across_the_limit() {
        // "é" is 2 bytes at 4..6, "€" 3 bytes at 6..9: cuts at 5, 7 and 8 fall inside them.
        let text = "abcdé€z";
        for (max, expected) in [
            (4, "abcd"),
            (5, "abcd"),
            (6, "abcdé"),
            (7, "abcdé"),
            (8, "abcdé"),
            (9, "abcdé€"),
        ] {
            let mut cut = text.to_owned();
            truncate_utf8(&mut cut, max);
            assert_eq!(cut, expected, "max {max}");
        }
        let mut short = "ok".to_owned();
        truncate_utf8(&mut short, 300);
        assert_eq!(short, "ok");
        let mut emoji = "🔑".repeat(100);
        truncate_utf8(&mut emoji, 299);
        assert_eq!(emoji.len(), 296);
        truncate_utf8(&mut emoji, 0);
        assert!(emoji.is_empty());
    }
}
