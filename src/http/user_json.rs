//! A user as the API writes it: `{"id", "name", "email", "created_at"}`, the timestamp in
//! RFC 3339, UTC, microseconds. The one place the wire format of a user is decided.

use crate::domain::UserRef;
use crate::json_text::{push_str, push_timestamp_micros};

/// A borrowed user (a `&User` or a row read in place), written without copying its strings.
pub struct UserJson<'a>(pub UserRef<'a>);

impl<'a> UserJson<'a> {
    pub fn of(user: impl Into<UserRef<'a>>) -> Self {
        Self(user.into())
    }

    /// Appends the user's JSON object to `out`. The keys and the timestamp need no escaping and
    /// are written as they are; the name and email are escaped when they need it. (Through
    /// serde's `Serialize`, every key and each piece of the timestamp went through the escaper:
    /// a fifth of a page's instructions.)
    pub fn write_to(&self, out: &mut Vec<u8>) {
        const VEC_WRITE: &str = "writing into a Vec cannot fail";
        let user = &self.0;
        out.extend_from_slice(b"{\"id\":");
        serde_json::to_writer(&mut *out, &user.id).expect(VEC_WRITE);
        out.extend_from_slice(b",\"name\":");
        push_str(out, user.name);
        out.extend_from_slice(b",\"email\":");
        push_str(out, user.email);
        out.extend_from_slice(b",\"created_at\":\"");
        push_timestamp_micros(out, user.created_at);
        out.extend_from_slice(b"\"}");
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::User;

    #[test]
    fn a_user_is_written_with_an_rfc3339_utc_microsecond_timestamp() {
        let user = User {
            id: 7,
            name: "Niccolò Rossi".into(),
            email: "n.rossi@example.it".into(),
            created_at: time::macros::datetime!(2026-01-02 04:04:05.123456789 +01:00),
        };
        let json = String::from_utf8(UserJson::of(&user).to_vec()).unwrap();
        assert_eq!(
            json,
            r#"{"id":7,"name":"Niccolò Rossi","email":"n.rossi@example.it","created_at":"2026-01-02T03:04:05.123456Z"}"#
        );
    }

    #[test]
    fn strings_are_escaped_and_a_whole_second_keeps_six_digits() {
        let user = User {
            id: 1,
            name: "Ada \"Q\" \\ L".into(),
            email: "a@b.c".into(),
            created_at: time::macros::datetime!(2026-01-02 03:04:05 UTC),
        };
        let json: serde_json::Value = serde_json::from_slice(&UserJson::of(&user).to_vec()).unwrap();
        assert_eq!(json["name"], "Ada \"Q\" \\ L");
        assert_eq!(json["created_at"], "2026-01-02T03:04:05.000000Z");
    }
}
