//! One error type for every HTTP answer that is not a success, rendered as RFC 9457 problem+json.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::request_id;
use crate::auth::AuthError;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_owned(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("one or more fields are invalid")]
    InvalidFields(Vec<FieldError>),
    #[error("invalid query parameter")]
    InvalidQuery(Vec<FieldError>),
    #[error("a user with this email already exists")]
    EmailTaken,
    #[error("the request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be sent as application/json")]
    UnsupportedMediaType,
    #[error("the request could not be understood")]
    BadRequest,
    #[error("the Idempotency-Key header is malformed: {0}")]
    InvalidIdempotencyKey(&'static str),
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    IdempotencyKeyInUse { retry_after_secs: u32 },
    #[error("the request head is too large: too many or too long header fields")]
    HeaderFieldsTooLarge,
    #[error("the request target (URI) is too long")]
    UriTooLong,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    #[error("the service is temporarily unavailable; retry shortly")]
    Unavailable { retry_after_secs: u32 },
    #[error("too many full-list downloads are running; retry shortly, or read pages with ?limit=")]
    StreamsBusy { retry_after_secs: u32 },
    #[error(
        "the write reached the database but its outcome could not be confirmed; it may or may not be stored: check (GET) before writing again"
    )]
    OutcomeUnknown,
    #[error("the request took too long to process")]
    Timeout,
    /// `challenge` is the `WWW-Authenticate` value (RFC 6750 §3).
    #[error("{detail}")]
    Unauthorized { detail: String, challenge: &'static str },
    #[error("this operation needs the scope {scope}")]
    Forbidden { scope: &'static str },
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("an unexpected error occurred")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

/// What a client is told about one kind of error.
struct Shape {
    status: StatusCode,
    /// Stable, machine-readable identifier of the problem.
    code: &'static str,
    title: &'static str,
}

impl ApiError {
    /// The one place each error is given its status, code and title.
    fn shape(&self) -> Shape {
        let (status, code, title) = match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json", "Malformed JSON"),
            Self::InvalidFields(_) => (StatusCode::BAD_REQUEST, "invalid_field", "Invalid request body"),
            Self::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query", "Invalid query parameter"),
            Self::EmailTaken => (StatusCode::BAD_REQUEST, "email_taken", "Email already registered"),
            Self::BadRequest => (StatusCode::BAD_REQUEST, "bad_request", "Bad request"),
            Self::InvalidIdempotencyKey(_) => {
                (StatusCode::BAD_REQUEST, "invalid_idempotency_key", "Invalid Idempotency-Key")
            }
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "Idempotency-Key reused")
            }
            Self::IdempotencyKeyInUse { .. } => {
                (StatusCode::CONFLICT, "idempotency_key_in_use", "Idempotency-Key in use")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large"),
            Self::HeaderFieldsTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_fields_too_large",
                "Request header fields too large",
            ),
            Self::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long", "URI too long"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type")
            }
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "Service unavailable"),
            Self::StreamsBusy { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "list_streams_busy", "Too many full-list downloads")
            }
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout", "Request timed out"),
            Self::OutcomeUnknown => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", "Write outcome unknown"),
            Self::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden { .. } => (StatusCode::FORBIDDEN, "insufficient_scope", "Forbidden"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Internal server error"),
        };
        Shape { status, code, title }
    }

    pub fn status(&self) -> StatusCode {
        self.shape().status
    }

    /// Stable, machine-readable identifier of the problem.
    pub fn code(&self) -> &'static str {
        self.shape().code
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Self::Unauthorized { detail: e.to_string(), challenge: "Bearer realm=\"users-api\"" },
            AuthError::Invalid => Self::Unauthorized {
                detail: e.to_string(),
                challenge: "Bearer realm=\"users-api\", error=\"invalid_token\"",
            },
            // Nothing is wrong with the token: the service cannot check it yet.
            AuthError::KeysUnavailable => {
                tracing::warn!("JWKS signing keys unavailable");
                Self::Unavailable { retry_after_secs: 5 }
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                Self::Unavailable { retry_after_secs: 1 }
            }
            StoreError::Overloaded => {
                tracing::warn!("write queue full; shedding load");
                Self::Unavailable { retry_after_secs: 1 }
            }
            StoreError::OutcomeUnknown(reason) => {
                tracing::error!(%reason, "write outcome unknown");
                Self::OutcomeUnknown
            }
            StoreError::Internal(e) => Self::Internal(e),
        }
    }
}

impl ApiError {
    /// The problem+json document for this error.
    pub fn problem_json(&self, request_id: Option<String>) -> Vec<u8> {
        let errors = match self {
            Self::InvalidFields(errors) | Self::InvalidQuery(errors) => Some(errors.as_slice()),
            _ => None,
        };
        let Shape { status, code, title } = self.shape();
        let problem = Problem {
            kind: format!("/problems/{}", code.replace('_', "-")),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            code,
            errors,
            request_id,
        };
        serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let request_id = request_id::current();
        if let Self::Internal(cause) = &self {
            // The cause goes to the log, tied to the request id; the client gets a generic detail.
            tracing::error!(request_id = request_id.as_deref().unwrap_or("-"), error = ?cause, "internal error");
        }
        let body = self.problem_json(request_id);
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unavailable { retry_after_secs }
            | Self::StreamsBusy { retry_after_secs }
            | Self::IdempotencyKeyInUse { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::Unauthorized { challenge, .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            Self::Forbidden { scope } => {
                let challenge = format!("Bearer realm=\"users-api\", error=\"insufficient_scope\", scope=\"{scope}\"");
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&challenge).expect("ascii scope"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_map_to_a_challenge_or_to_retry_later() {
        let missing = ApiError::from(AuthError::Missing).into_response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"users-api\"");

        let invalid = ApiError::from(AuthError::Invalid).into_response();
        assert_eq!(invalid.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(invalid.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"users-api\", error=\"invalid_token\"");

        // The token may be fine: the client is told to retry, not that it is refused.
        let no_keys = ApiError::from(AuthError::KeysUnavailable);
        assert_eq!(no_keys.code(), "service_unavailable");
        let no_keys = no_keys.into_response();
        assert_eq!(no_keys.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(no_keys.headers()[header::RETRY_AFTER], "5");
        assert!(!no_keys.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
