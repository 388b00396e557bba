//! The free text operators store on keys and roles (owner, description,
//! label values, revocation reasons) and that `keywardctl` prints in tables
//! and backends receive from Validate.
//!
//! Besides a length bound, it must not hide anything from a reader: control
//! characters could rewrite a terminal, and invisible or bidirectional
//! formatting characters make two values that look identical differ (a
//! `tenant=acme` with a zero-width space matches no `revoke --label
//! tenant=acme`) or make a value read backwards in a table.

/// Why a text was refused; each message names the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadText {
    /// Over the field's byte limit.
    #[error("longer than {0} bytes")]
    TooLong(usize),
    /// A C0 or C1 control character (newline, escape, …).
    #[error("contains control characters")]
    Control,
    /// A zero-width, invisible or bidirectional formatting character.
    #[error("contains invisible or bidirectional formatting characters (e.g. U+200B, U+202E)")]
    Invisible,
}

/// Checks `text` against the rules above, with at most `max_bytes` bytes.
///
/// # Errors
/// The first rule `text` breaks.
pub fn check(text: &str, max_bytes: usize) -> Result<(), BadText> {
    if text.len() > max_bytes {
        return Err(BadText::TooLong(max_bytes));
    }
    if text.chars().any(char::is_control) {
        return Err(BadText::Control);
    }
    if text.chars().any(is_invisible) {
        return Err(BadText::Invisible);
    }
    Ok(())
}

/// Formatting characters that render as nothing, or that reorder the text
/// around them.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                   // soft hyphen
            | '\u{061C}'             // Arabic letter mark
            | '\u{115F}'..='\u{1160}' // Hangul fillers
            | '\u{180E}'             // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space, joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidirectional embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidirectional isolates
            | '\u{3164}'             // Hangul filler
            | '\u{FEFF}'             // zero-width no-break space (BOM)
            | '\u{FFA0}'             // halfwidth Hangul filler
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn visible_text_passes_and_hidden_text_is_refused() {
        for fine in ["", "payments", "Équipe paiements – prod", "日本語", "a=b c"] {
            assert_eq!(check(fine, 64), Ok(()), "{fine:?}");
        }
        assert_eq!(check("abcd", 3), Err(BadText::TooLong(3)));
        for control in ["line\nbreak", "esc\u{1b}[31m", "nul\0", "c1\u{85}"] {
            assert_eq!(check(control, 64), Err(BadText::Control), "{control:?}");
        }
        for hidden in [
            "acme\u{200B}",
            "\u{202E}emca",
            "ac\u{2066}me",
            "\u{FEFF}acme",
            "ac\u{00AD}me",
        ] {
            assert_eq!(check(hidden, 64), Err(BadText::Invisible), "{hidden:?}");
        }
    }

    proptest! {
        /// Text that passes is within the bound and shows everything it
        /// holds; any hiding character makes text fail, wherever it is.
        #[test]
        fn what_passes_hides_nothing(
            text in prop_oneof![any::<String>(), "[a-z \\x00-\\x1f\\x7f-\\x9f\u{200b}-\u{200f}\u{202a}-\u{202e}]{0,20}"],
            max in 0usize..64,
            hidden in prop_oneof![
                proptest::char::range('\0', '\u{1f}'),
                proptest::char::range('\u{7f}', '\u{9f}'),
                proptest::char::range('\u{202a}', '\u{202e}'),
                proptest::char::range('\u{2066}', '\u{2069}'),
                Just('\u{200b}'),
                Just('\u{feff}'),
            ],
            at in any::<proptest::sample::Index>(),
        ) {
            if check(&text, max).is_ok() {
                prop_assert!(text.len() <= max);
                prop_assert!(!text.chars().any(|c| c.is_control() || is_invisible(c)));
            }
            let mut spiked: Vec<char> = text.chars().collect();
            spiked.insert(at.index(spiked.len() + 1), hidden);
            let spiked: String = spiked.into_iter().collect();
            prop_assert!(check(&spiked, usize::MAX).is_err(), "{spiked:?} passed");
        }
    }
}
