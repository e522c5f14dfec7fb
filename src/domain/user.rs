use time::OffsetDateTime;

use super::{Email, UserName};

/// A user about to be created; both fields already parsed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: UserName,
    pub email: Email,
}

impl NewUser {
    /// The user as stored with `id` at `created_at`, keeping these strings.
    pub fn into_user(self, id: i64, created_at: OffsetDateTime) -> User {
        User { id, name: self.name.into_string(), email: self.email.into_address(), created_at }
    }
}

/// A stored user. How it is written on the wire is the HTTP layer's concern (`http::user_json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: OffsetDateTime,
}

/// A stored user borrowed from where it was read (a database row): no copy of its strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRef<'a> {
    pub id: i64,
    pub name: &'a str,
    pub email: &'a str,
    pub created_at: OffsetDateTime,
}

impl<'a> From<&'a User> for UserRef<'a> {
    fn from(user: &'a User) -> Self {
        Self { id: user.id, name: &user.name, email: &user.email, created_at: user.created_at }
    }
}
