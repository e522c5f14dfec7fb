//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDoc, PathItem};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::FieldError;

/// A user as the API returns it (written by `user_json::UserJson`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct User {
    id: i64,
    name: String,
    email: String,
    /// RFC 3339, UTC, microsecond precision.
    #[schema(format = DateTime)]
    created_at: String,
}

/// Body of POST /user.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewUserRequest {
    /// 3–50 characters after NFC normalisation and trimming: letters of any script, combining
    /// marks (at most 4 per letter) and single spaces, at least 3 letters; no invisible
    /// (default-ignorable) or bidi-control character.
    #[schema(example = "Niccolò Rossi", min_length = 1, max_length = 1000)]
    name: String,
    /// An address local@domain. The domain goes through UTS #46 (IDNA) and is stored in its
    /// Unicode form; labels mixing scripts and non-letter top-level labels are refused. Unique
    /// by a key ignoring case, width and compatibility spellings (NFKC casefold of the local
    /// part, the domain's punycode form): `Ada@ＥＸＡＭＰＬＥ.com` is `ada@example.com`.
    #[schema(example = "niccolo.rossi@example.it", min_length = 1, max_length = 1000)]
    email: String,
}

/// RFC 9457 problem details.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    #[schema(rename = "type", example = "/problems/invalid-field")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Machine-readable: invalid_field, email_taken, malformed_json, not_found, …
    #[schema(example = "invalid_field")]
    code: String,
    /// Present for invalid_field and invalid_query.
    errors: Option<Vec<FieldError>>,
    /// The X-Request-Id of the request, also in the service's log line.
    request_id: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Status {
    #[schema(example = "ok")]
    status: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "users-api", description = "Create and list users. Errors are application/problem+json (RFC 9457)."),
    paths(
        super::health::health,
        super::health::ready,
        super::users::list_users,
        super::users::get_user,
        super::users::create_user,
    ),
    components(schemas(User, NewUserRequest, Problem, FieldError, Status)),
    tags((name = "users", description = "Users"), (name = "probes", description = "Liveness and readiness")),
    modifiers(&AliasPostUsers),
)]
struct ApiDoc;

/// `POST /users` is the same operation as `POST /user`.
struct AliasPostUsers;

impl Modify for AliasPostUsers {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let Some(create) = openapi.paths.paths.get("/user").and_then(|item| item.post.clone()) else { return };
        let mut create = create;
        create.operation_id = Some("create_user_at_users".into());
        if let Some(item) = openapi.paths.paths.get_mut("/users") {
            item.post = Some(create);
        } else {
            let mut item = PathItem::default();
            item.post = Some(create);
            openapi.paths.paths.insert("/users".into(), item);
        }
    }
}

/// The document as served: security requirements only when authentication is on.
pub fn document(auth_enabled: bool) -> OpenApiDoc {
    let mut doc = ApiDoc::openapi();
    if auth_enabled {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    } else {
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.head].into_iter().flatten() {
                op.security = None;
                op.responses.responses.remove("401");
                op.responses.responses.remove("403");
            }
        }
    }
    doc
}
