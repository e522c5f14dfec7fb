use std::fmt;

use unicode_normalization::char::is_combining_mark;

pub const MIN_CHARS: usize = 3;
pub const MAX_CHARS: usize = 50;

/// A user's display name: NFC, trimmed, single spaces, 3–50 Unicode letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserNameError {
    #[error("must be between {MIN_CHARS} and {MAX_CHARS} characters")]
    Length,
    #[error("may contain only letters and single spaces (found {0:?})")]
    ForbiddenCharacter(char),
    #[error("must start with a letter")]
    StartsWithMark,
}

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, UserNameError> {
        let normalized = super::to_nfc(raw);
        let collapsed = collapse_spaces(normalized.trim());

        let length = collapsed.chars().count();
        if !(MIN_CHARS..=MAX_CHARS).contains(&length) {
            return Err(UserNameError::Length);
        }
        let mut previous: Option<char> = None;
        for c in collapsed.chars() {
            let allowed = if is_letter(c) {
                true
            } else if is_combining_mark(c) {
                // A mark must sit on a letter (or on another mark of that letter).
                match previous {
                    None => return Err(UserNameError::StartsWithMark),
                    Some(p) => p != ' ',
                }
            } else {
                c == ' '
            };
            if !allowed {
                return Err(UserNameError::ForbiddenCharacter(c));
            }
            previous = Some(c);
        }
        Ok(Self(collapsed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Letters in the Unicode sense, excluding letter-like numerals (Ⅻ).
fn is_letter(c: char) -> bool {
    c.is_alphabetic() && !c.is_numeric()
}

fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_was_space = false;
    for c in s.chars() {
        if c == ' ' {
            if !last_was_space {
                out.push(c);
            }
            last_was_space = true;
        } else {
            out.push(c);
            last_was_space = false;
        }
    }
    out
}

impl AsRef<str> for UserName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_accented_and_non_latin_names() {
        for ok in ["Niccolò Rossi", "Zoë", "José María", "山田太郎", "Ærøskøbing", "Ольга", "محمد علي"]
        {
            assert!(UserName::parse(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn normalises_to_nfc_trims_and_collapses_spaces() {
        let decomposed = "  Nicc\u{006F}\u{0300}lo    Rossi \n";
        assert_eq!(UserName::parse(decomposed).unwrap().as_str(), "Niccòlo Rossi");
    }

    #[test]
    fn counts_characters_not_bytes() {
        assert!(UserName::parse(&"é".repeat(50)).is_ok());
        assert_eq!(UserName::parse(&"é".repeat(51)), Err(UserNameError::Length));
        assert_eq!(UserName::parse("Al"), Err(UserNameError::Length));
        assert_eq!(UserName::parse("   "), Err(UserNameError::Length));
    }

    #[test]
    fn rejects_digits_punctuation_tabs_controls_and_bidi_overrides() {
        for bad in ["Bob1", "Bob!", "Bob\tSmith", "Bob\u{0000}x", "Bob\u{202E}xx", "Bo_b", "Ⅻ Bob", "Bob\u{200B}by"] {
            assert!(
                matches!(UserName::parse(bad), Err(UserNameError::ForbiddenCharacter(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn rejects_a_leading_or_floating_combining_mark() {
        assert_eq!(UserName::parse("\u{0301}Bob"), Err(UserNameError::StartsWithMark));
        assert!(UserName::parse("Bob \u{0301}Smith").is_err());
    }

    proptest! {
        #[test]
        fn a_parsed_name_is_stable_and_well_formed(raw in "\\PC{0,80}") {
            if let Ok(name) = UserName::parse(&raw) {
                let s = name.as_str();
                let n = s.chars().count();
                prop_assert!((MIN_CHARS..=MAX_CHARS).contains(&n));
                prop_assert_eq!(s.trim(), s);
                prop_assert!(!s.contains("  "));
                prop_assert!(s.chars().all(|c| c == ' ' || is_letter(c) || is_combining_mark(c)));
                // Parsing is idempotent.
                prop_assert_eq!(UserName::parse(s).unwrap(), name.clone());
            }
        }

        #[test]
        fn letters_and_single_spaces_in_range_are_accepted(words in prop::collection::vec("[a-zA-Zàáèéìíòóùúüñçø]{1,8}", 1..5)) {
            let raw = words.join(" ");
            let n = raw.chars().count();
            prop_assume!((MIN_CHARS..=MAX_CHARS).contains(&n));
            prop_assert!(UserName::parse(&raw).is_ok());
        }

        #[test]
        fn any_digit_is_refused(prefix in "[a-z]{2,10}", digit in "[0-9]") {
            let raw = format!("{prefix}{digit}");
            prop_assert!(UserName::parse(&raw).is_err());
        }
    }
}
