//! Pieces of JSON text written straight into a byte buffer, without serde: strings (escaped
//! only when they have to be) and RFC 3339 timestamps. Used where a line or a body is written
//! thousands of times a second (the access log, every user of a page).

use std::fmt::{self, Write as _};

use time::{OffsetDateTime, UtcOffset};

/// Appends `text` as a JSON string. Most text needs no escaping: checked in one pass the
/// compiler vectorises, then copied whole; only text with a quote, backslash or control
/// character goes through serde_json's escaper.
pub fn push_str(out: &mut Vec<u8>, text: &str) {
    if needs_escape(text.as_bytes()) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    } else {
        push_plain(out, text);
    }
}

/// Appends `text`, known to need no escaping, as a JSON string: an HTTP method (a token, which
/// excludes quotes, backslashes and controls) or a route label of our own.
pub fn push_plain(out: &mut Vec<u8>, text: &str) {
    debug_assert!(!needs_escape(text.as_bytes()), "{text:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// Appends `micros` as milliseconds, the text serde_json writes for `micros as f64 / 1000.0`
/// (shortest form, at least one decimal: `0.0`, `0.25`, `12.041`; below 10^15 µs, 31 years),
/// from integers: the float's formatting cost ~180 instructions an access line.
pub fn push_millis(out: &mut Vec<u8>, micros: u64) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &(micros / 1000));
    let fraction = (micros % 1000) as u16;
    let digits = [b'.', b'0' + (fraction / 100) as u8, b'0' + (fraction / 10 % 10) as u8, b'0' + (fraction % 10) as u8];
    let written = match fraction {
        f if f % 100 == 0 => 2,
        f if f % 10 == 0 => 3,
        _ => 4,
    };
    out.extend_from_slice(&digits[..written]);
}

/// Appends `value`'s `Display` text as a JSON string, formatted in place and escaped only
/// when it has to be.
pub fn push_display(out: &mut Vec<u8>, value: &dyn fmt::Display) {
    let start = out.len();
    out.push(b'"');
    let _ = write!(Append(out), "{value}");
    if needs_escape(&out[start + 1..]) {
        let text = out.split_off(start + 1);
        out.truncate(start);
        push_str(out, &String::from_utf8_lossy(&text));
    } else {
        out.push(b'"');
    }
}

/// What JSON requires escaped (serde_json escapes exactly these): `"`, `\` and controls.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\'))
}

struct Append<'a>(&'a mut Vec<u8>);

impl fmt::Write for Append<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `YYYY-MM-DDTHH:MM:SS`, the part of a timestamp shared by every instant of one second.
pub type SecondText = [u8; 19];

/// The whole second of `at`, in UTC. Years past 9999 (RFC 3339 has no room for them) are
/// written as 9999; before year 0, as 0000.
pub fn second_text(at: OffsetDateTime) -> SecondText {
    let at = at.to_offset(UtcOffset::UTC);
    let mut text = [0; 19];
    let mut digits = Digits(&mut text, 0);
    digits.put(at.year().clamp(0, 9999).unsigned_abs(), 4, b'-');
    digits.put(u32::from(u8::from(at.month())), 2, b'-');
    digits.put(u32::from(at.day()), 2, b'T');
    digits.put(u32::from(at.hour()), 2, b':');
    digits.put(u32::from(at.minute()), 2, b':');
    digits.put(u32::from(at.second()), 2, b' ');
    text
}

/// Appends `.ffffffZ`: the microseconds of a timestamp whose second was just written.
pub fn push_micros_z(out: &mut Vec<u8>, micros: u32) {
    let mut fraction = [b'.', 0, 0, 0, 0, 0, 0, b'Z'];
    Digits(&mut fraction, 1).put(micros, 6, b'Z');
    out.extend_from_slice(&fraction);
}

/// `at` in RFC 3339, UTC, exactly six fractional digits: `2026-01-02T03:04:05.123456Z`
/// (`time`'s formatter, through its format description, cost ~1,800 instructions a user).
pub fn push_timestamp_micros(out: &mut Vec<u8>, at: OffsetDateTime) {
    out.extend_from_slice(&second_text(at));
    push_micros_z(out, at.microsecond());
}

/// Zero-padded decimal fields written left to right, each followed by a separator.
struct Digits<'a>(&'a mut [u8], usize);

impl Digits<'_> {
    fn put(&mut self, mut value: u32, width: usize, separator: u8) {
        for slot in self.0[self.1..self.1 + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.1 += width;
        if self.1 < self.0.len() {
            self.0[self.1] = separator;
            self.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;

    use super::*;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let mut texts: Vec<String> = (0u8..=127).map(|b| format!("a{}b", b as char)).collect();
        texts.extend(["", "plain", "ünïcode ✓", "tab\tquote\"back\\slash"].map(String::from));
        for text in texts {
            let mut written = Vec::new();
            push_str(&mut written, &text);
            assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&text).unwrap(), "{text:?}");
            let mut displayed = Vec::new();
            push_display(&mut displayed, &text);
            assert_eq!(String::from_utf8(displayed).unwrap(), serde_json::to_string(&text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn milliseconds_are_what_serde_json_writes_for_the_float() {
        let wide = (0..64).map(|shift| (1u64 << shift) - 1).filter(|&m| m < 10u64.pow(15));
        for micros in (0..200_000).chain([999_999, 1_000_000, 123_456_789, 10u64.pow(15) - 1]).chain(wide) {
            let mut written = Vec::new();
            push_millis(&mut written, micros);
            let float = serde_json::to_string(&(micros as f64 / 1000.0)).unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), float, "{micros}");
        }
    }

    #[test]
    fn timestamps_are_what_times_own_formatter_writes() {
        let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
        let cases = [
            0i128,
            1_764_000_000_999_999,
            1_764_000_001_000_001,
            951_782_400_000_000,
            -1_000_000,
            253_402_257_600_999_999,
        ];
        for micros in cases {
            let at = OffsetDateTime::from_unix_timestamp_nanos(micros * 1000).unwrap();
            for offset in [UtcOffset::UTC, UtcOffset::from_hms(5, 30, 0).unwrap()] {
                let mut written = Vec::new();
                push_timestamp_micros(&mut written, at.to_offset(offset));
                let written = String::from_utf8(written).unwrap();
                assert_eq!(written, at.format(&format).unwrap(), "{micros}");
                assert_eq!(
                    OffsetDateTime::parse(&written, &Rfc3339).unwrap(),
                    at.replace_nanosecond(at.microsecond() * 1000).unwrap()
                );
            }
        }
    }
}
