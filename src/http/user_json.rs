//! A user as the API writes it: `{"id", "name", "email", "created_at"}`, the timestamp in
//! RFC 3339, UTC, microseconds. The one place the wire format of a user is decided.

use std::fmt;

use serde::ser::{Serialize, SerializeStruct, Serializer};
use time::{OffsetDateTime, UtcOffset};

use crate::domain::UserRef;

/// Serialises a borrowed user (a `&User` or a row read in place) without copying its strings.
pub struct UserJson<'a>(pub UserRef<'a>);

impl<'a> UserJson<'a> {
    pub fn of(user: impl Into<UserRef<'a>>) -> Self {
        Self(user.into())
    }
}

impl Serialize for UserJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let user = &self.0;
        let mut fields = serializer.serialize_struct("User", 4)?;
        fields.serialize_field("id", &user.id)?;
        fields.serialize_field("name", &user.name)?;
        fields.serialize_field("email", &user.email)?;
        fields.serialize_field("created_at", &Rfc3339Micros(user.created_at))?;
        fields.end()
    }
}

/// Written straight into the serialiser's output, no `String` per timestamp.
struct Rfc3339Micros(OffsetDateTime);

impl fmt::Display for Rfc3339Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0.to_offset(UtcOffset::UTC);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}

impl Serialize for Rfc3339Micros {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
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
        let json = serde_json::to_string(&UserJson::of(&user)).unwrap();
        assert_eq!(
            json,
            r#"{"id":7,"name":"Niccolò Rossi","email":"n.rossi@example.it","created_at":"2026-01-02T03:04:05.123456Z"}"#
        );
    }
}
