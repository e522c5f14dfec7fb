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
    #[error("the request took too long to process")]
    Timeout,
    #[error("{0}")]
    Unauthorized(AuthError),
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

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_)
            | Self::InvalidFields(_)
            | Self::InvalidQuery(_)
            | Self::EmailTaken
            | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable { .. } | Self::StreamsBusy { .. } | Self::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthorized(AuthError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Stable, machine-readable identifier of the problem.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidFields(_) => "invalid_field",
            Self::InvalidQuery(_) => "invalid_query",
            Self::EmailTaken => "email_taken",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadRequest => "bad_request",
            Self::HeaderFieldsTooLarge => "header_fields_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable { .. } => "service_unavailable",
            Self::StreamsBusy { .. } => "list_streams_busy",
            Self::Timeout => "timeout",
            Self::Internal(_) => "internal_error",
            Self::Unauthorized(AuthError::KeysUnavailable) => "service_unavailable",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden { .. } => "insufficient_scope",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "Malformed JSON",
            Self::InvalidFields(_) => "Invalid request body",
            Self::InvalidQuery(_) => "Invalid query parameter",
            Self::EmailTaken => "Email already registered",
            Self::PayloadTooLarge { .. } => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::BadRequest => "Bad request",
            Self::HeaderFieldsTooLarge => "Request header fields too large",
            Self::UriTooLong => "URI too long",
            Self::NotFound(_) => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unavailable { .. } => "Service unavailable",
            Self::StreamsBusy { .. } => "Too many full-list downloads",
            Self::Timeout => "Request timed out",
            Self::Internal(_) => "Internal server error",
            Self::Unauthorized(AuthError::KeysUnavailable) => "Service unavailable",
            Self::Unauthorized(_) => "Unauthorized",
            Self::Forbidden { .. } => "Forbidden",
            Self::RateLimited { .. } => "Too many requests",
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
        let code = self.code();
        let problem = Problem {
            kind: format!("/problems/{}", code.replace('_', "-")),
            title: self.title(),
            status: self.status().as_u16(),
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
            Self::Unavailable { retry_after_secs } | Self::StreamsBusy { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::Unauthorized(AuthError::KeysUnavailable) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5));
            }
            Self::Unauthorized(AuthError::Missing) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"users-api\""));
            }
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"users-api\", error=\"invalid_token\""),
                );
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
