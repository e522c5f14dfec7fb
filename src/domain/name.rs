use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

pub const MIN_CHARS: usize = 3;
pub const MAX_CHARS: usize = 50;
/// Letters a name needs besides marks and spaces: "A" with 49 accents is not a name.
pub const MIN_LETTERS: usize = 3;
/// Combining marks one letter may carry after NFC; real scripts need at most three
/// (a Thai consonant with vowel and tone mark, a Devanagari conjunct), stacks beyond are abuse.
pub const MAX_MARKS_PER_LETTER: usize = 4;

/// A user's display name: NFC, trimmed, single spaces, 3–50 characters of which at least three
/// are visible letters.
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
    #[error("must not contain invisible or direction-changing characters (found U+{:04X})", *.0 as u32)]
    InvisibleCharacter(char),
    #[error("a letter may carry at most {MAX_MARKS_PER_LETTER} combining marks")]
    TooManyMarks,
    #[error("must contain at least {MIN_LETTERS} letters")]
    TooFewLetters,
}

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, UserNameError> {
        let normalized = super::to_nfc(raw);
        let collapsed = collapse_spaces(normalized.trim());

        let length = collapsed.chars().count();
        if !(MIN_CHARS..=MAX_CHARS).contains(&length) {
            return Err(UserNameError::Length);
        }
        let letters = if collapsed.is_ascii() { ascii_letters(&collapsed)? } else { unicode_letters(&collapsed)? };
        if letters < MIN_LETTERS {
            return Err(UserNameError::TooFewLetters);
        }
        Ok(Self(collapsed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The letters of an ASCII name, which has no invisible characters and no marks: every character
/// is a letter (A–Z, a–z) or a space (a test holds these facts to the general rules).
fn ascii_letters(name: &str) -> Result<usize, UserNameError> {
    if let Some(c) = name.chars().find(|&c| c != ' ' && !c.is_ascii_alphabetic()) {
        return Err(UserNameError::ForbiddenCharacter(c));
    }
    Ok(name.bytes().filter(u8::is_ascii_alphabetic).count())
}

fn unicode_letters(name: &str) -> Result<usize, UserNameError> {
    let mut previous: Option<char> = None;
    let mut letters = 0;
    for c in name.chars() {
        // Checked first: the Hangul filler is a letter to `is_alphabetic`, but shows nothing.
        if super::is_invisible(c) {
            return Err(UserNameError::InvisibleCharacter(c));
        }
        if is_combining_mark(c) {
            // A mark must sit on a letter (or on another mark of that letter).
            match previous {
                None => return Err(UserNameError::StartsWithMark),
                Some(' ') => return Err(UserNameError::ForbiddenCharacter(c)),
                Some(_) => {}
            }
        } else if is_letter(c) {
            letters += 1;
        } else if c != ' ' {
            return Err(UserNameError::ForbiddenCharacter(c));
        }
        previous = Some(c);
    }
    if most_marks_on_one_letter(name) > MAX_MARKS_PER_LETTER {
        return Err(UserNameError::TooManyMarks);
    }
    Ok(letters)
}

/// Letters in the Unicode sense, excluding letter-like numerals (Ⅻ) and the marks that Unicode
/// also calls alphabetic (U+0345): those count as marks, bounded per letter.
fn is_letter(c: char) -> bool {
    c.is_alphabetic() && !c.is_numeric() && !is_combining_mark(c)
}

/// Counted in the decomposed form, so a precomposed "ò" carries its grave like "o\u{300}" does.
fn most_marks_on_one_letter(name: &str) -> usize {
    let (mut most, mut run) = (0, 0);
    for c in name.nfd() {
        run = if is_combining_mark(c) { run + 1 } else { 0 };
        most = most.max(run);
    }
    most
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
    fn ascii_has_no_invisible_characters_nor_marks_and_its_letters_are_a_to_z() {
        for c in (0u8..=127).map(char::from) {
            assert!(!crate::domain::is_invisible(c) && !is_combining_mark(c), "{c:?}");
            assert_eq!(is_letter(c), c.is_ascii_alphabetic(), "{c:?}");
        }
    }

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
        for bad in ["Bob1", "Bob!", "Bob\tSmith", "Bob\u{0000}x", "Bo_b", "Ⅻ Bob", "Bob\u{2800}by"] {
            assert!(
                matches!(UserName::parse(bad), Err(UserNameError::ForbiddenCharacter(_))),
                "{bad:?} should be refused"
            );
        }
    }

    /// The lookalike and invisible names of the hostile-input review, and their honest neighbours.
    #[test]
    fn invisible_and_degenerate_names_are_refused_with_their_reason() {
        use UserNameError::*;
        let a_with_49_accents = format!("A{}", "\u{0301}".repeat(49));
        let cases: &[(&str, Result<&str, UserNameError>)] = &[
            ("\u{3164}\u{3164}\u{3164}", Err(InvisibleCharacter('\u{3164}'))),
            ("Bob\u{3164}", Err(InvisibleCharacter('\u{3164}'))),
            ("\u{115F}\u{1160}Kim", Err(InvisibleCharacter('\u{115F}'))),
            ("Ada\u{FFA0}Lovelace", Err(InvisibleCharacter('\u{FFA0}'))),
            ("Bob\u{200B}by", Err(InvisibleCharacter('\u{200B}'))),
            ("Jo\u{200D}hn", Err(InvisibleCharacter('\u{200D}'))),
            ("An\u{00AD}na", Err(InvisibleCharacter('\u{00AD}'))),
            ("Ev\u{034F}e", Err(InvisibleCharacter('\u{034F}'))),
            ("Bob\u{202E}xx", Err(InvisibleCharacter('\u{202E}'))),
            ("Bob\u{2067}xx", Err(InvisibleCharacter('\u{2067}'))),
            ("Bob\u{200F}xx", Err(InvisibleCharacter('\u{200F}'))),
            ("Ali\u{061C}ce", Err(InvisibleCharacter('\u{061C}'))),
            (&a_with_49_accents, Err(TooManyMarks)),
            ("Zalgo\u{0300}\u{0301}\u{0302}\u{0303}\u{0304}", Err(TooManyMarks)),
            ("A\u{0345}\u{0345}\u{0345}\u{0345}\u{0345}bc", Err(TooManyMarks)),
            ("A B", Err(TooFewLetters)),
            ("Bq\u{0301}\u{0301}", Err(TooFewLetters)),
            // Four marks on one letter, and several letters each with marks, are fine.
            ("Zalgo\u{0300}\u{0301}\u{0302}\u{0303}", Ok("Zalg\u{00F2}\u{0301}\u{0302}\u{0303}")),
            ("Nguyễn Thị Ánh", Ok("Nguyễn Thị Ánh")),
            ("Nguye\u{0302}\u{0303}n", Ok("Nguyễn")),
            ("สมชาย ใจดี", Ok("สมชาย ใจดี")),
            ("देवनागरी", Ok("देवनागरी")),
            ("Ana Lu", Ok("Ana Lu")),
            ("김민준", Ok("김민준")),
        ];
        for (raw, expected) in cases {
            let got = UserName::parse(raw);
            match expected {
                Ok(stored) => assert_eq!(got.as_ref().map(UserName::as_str), Ok(*stored), "{raw:?}"),
                Err(e) => assert_eq!(got.as_ref(), Err(e), "{raw:?}"),
            }
        }
    }

    #[test]
    fn the_error_names_the_invisible_character_by_code_point() {
        let error = UserName::parse("\u{3164}\u{3164}\u{3164}").unwrap_err();
        assert_eq!(error.to_string(), "must not contain invisible or direction-changing characters (found U+3164)");
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
                prop_assert!(!s.chars().any(crate::domain::is_invisible));
                prop_assert!(s.chars().filter(|c| is_letter(*c)).count() >= MIN_LETTERS);
                // Parsing is idempotent.
                prop_assert_eq!(UserName::parse(s).unwrap(), name.clone());
            }
        }

        #[test]
        fn letters_and_single_spaces_in_range_are_accepted(words in prop::collection::vec("[a-zA-Zàáèéìíòóùúüñçø]{1,8}", 1..5)) {
            let raw = words.join(" ");
            let n = raw.chars().count();
            prop_assume!((MIN_CHARS..=MAX_CHARS).contains(&n));
            prop_assume!(raw.chars().filter(|c| *c != ' ').count() >= MIN_LETTERS);
            prop_assert!(UserName::parse(&raw).is_ok());
        }

        #[test]
        fn an_invisible_character_anywhere_is_refused(
            before in "[a-zA-Zé]{0,6}",
            invisible in prop::sample::select(vec!['\u{3164}', '\u{115F}', '\u{FFA0}', '\u{200B}', '\u{200C}', '\u{2060}', '\u{FEFF}', '\u{202E}', '\u{2066}', '\u{061C}', '\u{180E}']),
            after in "[a-zA-Zé]{3,6}",
        ) {
            let raw = format!("{before}{invisible}{after}");
            prop_assert_eq!(UserName::parse(&raw), Err(UserNameError::InvisibleCharacter(invisible)));
        }

        #[test]
        fn marks_beyond_the_bound_on_one_letter_are_refused(
            letters in "[a-zA-Z]{3,10}",
            marks in prop::collection::vec(prop::sample::select(vec!['\u{0300}', '\u{0301}', '\u{0308}', '\u{0327}', '\u{0345}', '\u{20DD}']), 0..12),
        ) {
            let raw = format!("{letters}{}", marks.iter().collect::<String>());
            let parsed = UserName::parse(&raw);
            // Marks are counted decomposed: NFC folding one into its letter changes nothing.
            if marks.len() <= MAX_MARKS_PER_LETTER {
                prop_assert!(parsed.is_ok(), "{raw:?}: {parsed:?}");
            } else {
                prop_assert_eq!(parsed, Err(UserNameError::TooManyMarks));
            }
        }

        #[test]
        fn any_digit_is_refused(prefix in "[a-z]{2,10}", digit in "[0-9]") {
            let raw = format!("{prefix}{digit}");
            prop_assert!(UserName::parse(&raw).is_err());
        }
    }
}
