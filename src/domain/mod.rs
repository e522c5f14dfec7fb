//! Domain types: every value that reaches a store has been parsed here.

mod email;
mod name;
mod user;

pub use email::{Email, EmailError, email_key};
pub use name::{UserName, UserNameError};
pub use user::{NewUser, User, UserRef};

use std::borrow::Cow;

use icu_properties::CodePointSetData;
use icu_properties::props::{BidiControl, DefaultIgnorableCodePoint};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// `text` in NFC. Most input already is: the quick check confirms it without rebuilding the
/// string through decomposition and recomposition (~6% of a POST under callgrind), nor copying it.
fn to_nfc(text: &str) -> Cow<'_, str> {
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => Cow::Borrowed(text),
        IsNormalized::No | IsNormalized::Maybe => Cow::Owned(text.nfc().collect()),
    }
}

/// Renders as nothing, or only steers the direction of text around it: such a character makes
/// two different strings look the same (Hangul filler, zero-width joiner, RLO).
fn is_invisible(c: char) -> bool {
    CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
        || CodePointSetData::new::<BidiControl>().contains(c)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use unicode_normalization::UnicodeNormalization;

    proptest! {
        #[test]
        fn the_quick_check_never_changes_the_result(text in "\\PC{0,40}|[a\u{301}e\u{308}\u{1100}\u{1161}\u{212b}\u{f900}]{0,12}") {
            prop_assert_eq!(super::to_nfc(&text), text.nfc().collect::<String>());
        }
    }
}
