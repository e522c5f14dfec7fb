//! Bearer-token check in front of the users routes: users:read for reads, users:write for writes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::idempotency::Subject;
use crate::auth::{AuthError, Authenticator, SCOPE_READ, SCOPE_WRITE};

pub async fn require_scope(
    State(authenticator): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let needed = if matches!(*request.method(), Method::GET | Method::HEAD) { SCOPE_READ } else { SCOPE_WRITE };
    let token = bearer_token(&request).ok_or(AuthError::Missing)?;
    // The token itself is never logged; only the outcome is.
    let claims = authenticator.verify(token).await?;
    if !claims.has_scope(needed) {
        return Err(ApiError::Forbidden { scope: needed });
    }
    // Idempotency keys are the subject's own; an access token without `sub` (a client
    // credentials grant) is its client's. Prefixed so the two can never name the same scope.
    let subject = match (&claims.sub, &claims.client_id) {
        (Some(sub), _) => Some(format!("sub:{sub}")),
        (None, Some(client)) => Some(format!("client:{client}")),
        (None, None) => None,
    };
    if let Some(subject) = subject {
        request.extensions_mut().insert(Subject(subject));
    }
    Ok(next.run(request).await)
}

fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
