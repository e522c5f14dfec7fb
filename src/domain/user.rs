use serde::Serialize;

use super::{Email, UserName};

/// A user about to be created; both fields already parsed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: UserName,
    pub email: Email,
}

/// A stored user as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    /// RFC 3339, UTC, microsecond precision.
    #[schema(format = DateTime)]
    pub created_at: String,
}
