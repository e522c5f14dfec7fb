use std::fmt;

pub const MAX_LOCAL_CHARS: usize = 64;
pub const MAX_TOTAL_CHARS: usize = 254;
const MAX_LABEL_CHARS: usize = 63;

/// An email address: trimmed, NFC, syntactically valid, domain lowercased.
///
/// `key()` is the case-insensitive identity used for uniqueness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_TOTAL_CHARS} characters")]
    TooLong,
    #[error("must contain exactly one '@' between a local part and a domain")]
    Shape,
    #[error("local part must be at most {MAX_LOCAL_CHARS} characters")]
    LocalTooLong,
    #[error("local part is not valid (letters, digits and !#$%&'*+/=?^_`{{|}}~- separated by single dots)")]
    InvalidLocal,
    #[error("domain must have at least two labels separated by dots")]
    DomainNeedsDot,
    #[error("domain label {0:?} is not valid (1–63 letters, digits or inner hyphens)")]
    InvalidLabel(String),
    #[error("top-level domain must not be all digits")]
    NumericTld,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let normalized = super::to_nfc(raw.trim());
        if normalized.is_empty() {
            return Err(EmailError::Empty);
        }
        if normalized.chars().count() > MAX_TOTAL_CHARS {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = normalized.rsplit_once('@').ok_or(EmailError::Shape)?;
        if local.is_empty() || domain.is_empty() {
            return Err(EmailError::Shape);
        }
        if local.chars().count() > MAX_LOCAL_CHARS {
            return Err(EmailError::LocalTooLong);
        }
        validate_local(local)?;
        let domain = domain.to_lowercase();
        validate_domain(&domain)?;
        Ok(Self(format!("{local}@{domain}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity two addresses share when they differ only by case.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// RFC 5322 dot-atom, widened to non-ASCII letters and digits as RFC 6531 allows.
fn validate_local(local: &str) -> Result<(), EmailError> {
    for atom in local.split('.') {
        if atom.is_empty() || !atom.chars().all(is_atext) {
            return Err(EmailError::InvalidLocal);
        }
    }
    Ok(())
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c) || (!c.is_ascii() && c.is_alphanumeric())
}

/// RFC 1035 labels (letters, digits, inner hyphens), letters may be Unicode (IDN U-labels).
fn validate_domain(domain: &str) -> Result<(), EmailError> {
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(EmailError::DomainNeedsDot);
    }
    for label in &labels {
        let valid = !label.is_empty()
            && label.chars().count() <= MAX_LABEL_CHARS
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if !valid {
            return Err(EmailError::InvalidLabel((*label).to_owned()));
        }
    }
    let tld = labels[labels.len() - 1];
    if tld.chars().all(|c| c.is_ascii_digit()) {
        return Err(EmailError::NumericTld);
    }
    Ok(())
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_common_addresses_and_lowercases_only_the_domain() {
        let email = Email::parse("  M.Rossi+tag@Example.IT ").unwrap();
        assert_eq!(email.as_str(), "M.Rossi+tag@example.it");
        assert_eq!(email.key(), "m.rossi+tag@example.it");
        for ok in
            ["a@b.co", "o'brien@mail.example.org", "user_1@sub-domain.example.com", "josé@exemple.fr", "用户@例子.广告"]
        {
            assert!(Email::parse(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn addresses_differing_by_case_share_a_key() {
        let a = Email::parse("M.Rossi@X.it").unwrap();
        let b = Email::parse("m.rossi@x.it").unwrap();
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn rejects_malformed_addresses() {
        let cases = [
            ("", EmailError::Empty),
            ("   ", EmailError::Empty),
            ("plainaddress", EmailError::Shape),
            ("@example.com", EmailError::Shape),
            ("user@", EmailError::Shape),
            ("a..b@example.com", EmailError::InvalidLocal),
            (".a@example.com", EmailError::InvalidLocal),
            ("a.@example.com", EmailError::InvalidLocal),
            ("a b@example.com", EmailError::InvalidLocal),
            ("a@b@example.com", EmailError::InvalidLocal),
            ("\"quoted\"@example.com", EmailError::InvalidLocal),
            ("user@localhost", EmailError::DomainNeedsDot),
            ("user@example..com", EmailError::InvalidLabel(String::new())),
            ("user@-example.com", EmailError::InvalidLabel("-example".into())),
            ("user@example-.com", EmailError::InvalidLabel("example-".into())),
            ("user@exa_mple.com", EmailError::InvalidLabel("exa_mple".into())),
            ("user@1.2.3.4", EmailError::NumericTld),
            ("user@[127.0.0.1]", EmailError::InvalidLabel("[127".into())),
        ];
        for (raw, expected) in cases {
            assert_eq!(Email::parse(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn enforces_length_limits() {
        let local64 = "a".repeat(64);
        assert!(Email::parse(&format!("{local64}@example.com")).is_ok());
        assert_eq!(Email::parse(&format!("a{local64}@example.com")), Err(EmailError::LocalTooLong));
        let label = "b".repeat(63);
        let long_domain = format!("{label}.{label}.{label}.{}", "c".repeat(58)); // 250 chars
        assert!(Email::parse(&format!("abc@{long_domain}")).is_ok());
        assert_eq!(Email::parse(&format!("abcd@{long_domain}")), Err(EmailError::TooLong));
        assert!(Email::parse(&format!("a@{}.com", "b".repeat(64))).is_err());
    }

    proptest! {
        #[test]
        fn a_parsed_email_is_stable_and_well_formed(raw in "\\PC{0,300}") {
            if let Ok(email) = Email::parse(&raw) {
                let s = email.as_str();
                prop_assert!(s.chars().count() <= MAX_TOTAL_CHARS);
                prop_assert_eq!(s.matches('@').count(), 1);
                let (_, domain) = s.split_once('@').unwrap();
                prop_assert_eq!(domain.to_lowercase(), domain);
                prop_assert!(domain.contains('.'));
                prop_assert_eq!(Email::parse(s).unwrap(), email.clone());
            }
        }

        #[test]
        fn generated_valid_addresses_are_accepted(
            local in "[a-zA-Z0-9_+-]{1,20}(\\.[a-zA-Z0-9_+-]{1,10}){0,2}",
            labels in prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", 1..4),
            tld in "[a-zA-Z]{2,6}",
        ) {
            let raw = format!("{local}@{}.{tld}", labels.join("."));
            let email = Email::parse(&raw).unwrap();
            prop_assert_eq!(email.key(), raw.to_lowercase());
        }

        #[test]
        fn case_variants_share_one_key(local in "[a-zA-Z]{1,12}", domain in "[a-zA-Z]{1,12}") {
            let lower = Email::parse(&format!("{}@{}.com", local.to_lowercase(), domain.to_lowercase())).unwrap();
            let upper = Email::parse(&format!("{}@{}.COM", local.to_uppercase(), domain.to_uppercase())).unwrap();
            prop_assert_eq!(lower.key(), upper.key());
        }
    }
}
