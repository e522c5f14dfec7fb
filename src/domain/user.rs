use time::OffsetDateTime;

use super::{Email, UserName};

/// A user about to be created; both fields already parsed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: UserName,
    pub email: Email,
}

/// A stored user. How it is written on the wire is the HTTP layer's concern (`http::user_json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: OffsetDateTime,
}
