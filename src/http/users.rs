//! /users resource: create, fetch one, list (paged or streamed).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, FieldError};
use super::extract::NewUserJson;
use super::idempotency::{self, MaybeIdempotencyKey};
use super::user_json::UserJson;
use super::{request_id, routes};
use crate::domain::User;
use crate::store::{KeyedCreate, KeyedOutcome, StoredAnswer};

/// Largest page `?limit=` may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when `after` is given without `limit`.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(routes::USERS, get(list_users).post(create_user))
        .route(routes::USER, post(create_user))
        .route(routes::USER_BY_ID, get(get_user))
}

#[utoipa::path(
    post,
    path = "/user",
    tag = "users",
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes the create safe to send again (draft-ietf-httpapi-idempotency-key-header-07): \
            a structured-field string such as `\"8e03978e-40d5-43e8-bc93-6894a57f9324\"` (a bare value is \
            accepted too), 1–255 visible ASCII characters, scoped to the token's subject. The first definite \
            answer (201, or 400 `email_taken`) is stored with the user, in one transaction, for \
            `IDEMPOTENCY_RETENTION` (24 h by default); the same key with the same body gets it again, \
            with `Idempotent-Replayed: true`."),
    ),
    request_body(content = super::openapi::NewUserRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (or, with `Idempotent-Replayed: true`, the stored answer to an earlier request with this Idempotency-Key)", body = super::openapi::User,
            headers(
                ("Location" = String, description = "/users/{id} of the new user"),
                ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key"),
            )),
        (status = 400, description = "Invalid field, malformed JSON, email_taken, or a malformed Idempotency-Key (`invalid_idempotency_key`)", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks users:write", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_use`: a request with this Idempotency-Key is still being processed; nothing was done for this one; retry after Retry-After", body = super::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "seconds"))),
        (status = 413, description = "Body over 64 KiB", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content type is not JSON", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`idempotency_key_reused`: this Idempotency-Key was used for a different request (another body or path); nothing was done", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Nothing was stored: database unavailable, overloaded, or the write could not start before its deadline; retry after Retry-After", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 504, description = "`outcome_unknown`: the write reached the database but its commit got no answer; it may or may not be stored (no Retry-After). Check with GET before writing again, or resend with the same Idempotency-Key", body = super::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["users:write"]))
)]
pub(super) async fn create_user(
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    MaybeIdempotencyKey(key): MaybeIdempotencyKey,
    NewUserJson(new_user): NewUserJson,
) -> Result<Response, ApiError> {
    let Some(key) = key else {
        let user = state.store.create(new_user).await?;
        let location = HeaderValue::try_from(format!("/users/{}", user.id)).expect("an id is a valid header");
        return Ok(
            (StatusCode::CREATED, [(header::LOCATION, location)], json_body(created_body(&user))).into_response()
        );
    };
    let keyed = KeyedCreate {
        subject: key.subject,
        key: key.key,
        fingerprint: idempotency::fingerprint(route.as_str(), &new_user),
        created: (StatusCode::CREATED.as_u16(), created_body),
        taken: StoredAnswer {
            status: ApiError::EmailTaken.status().as_u16(),
            body: ApiError::EmailTaken.problem_json(request_id::current()),
            user_id: None,
        },
    };
    let outcome = state.store.create_keyed(new_user, keyed).await?;
    let label = match &outcome {
        KeyedOutcome::Fresh(_) => "stored",
        KeyedOutcome::Replayed(_) => "replayed",
        KeyedOutcome::KeyReused => "key_reused",
        KeyedOutcome::InFlight => "in_flight",
    };
    metrics::counter!("idempotent_requests_total", "outcome" => label).increment(1);
    match outcome {
        KeyedOutcome::Fresh(answer) => Ok(idempotency::respond(answer, false)),
        KeyedOutcome::Replayed(answer) => Ok(idempotency::respond(answer, true)),
        KeyedOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
        KeyedOutcome::InFlight => Err(ApiError::IdempotencyKeyInUse { retry_after_secs: 1 }),
    }
}

/// The body of a 201, as stored with an idempotency key (the same bytes the unkeyed path sends).
fn created_body(user: &User) -> Vec<u8> {
    UserJson::of(user).to_vec()
}

#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "User id (a positive integer); anything else is 404")),
    responses(
        (status = 200, description = "The user", body = super::openapi::User),
        (status = 401, description = "Missing or invalid bearer token", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks users:read", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = super::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["users:read"]))
)]
pub(super) async fn get_user(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    const MISSING: &str = "no user with this id";
    // Anything that is not a positive integer names no user.
    let id = id
        .ok()
        .and_then(|Path(raw)| raw.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or(ApiError::NotFound(MISSING))?;
    match state.store.get(id).await? {
        Some(user) => Ok(json_body(UserJson::of(&user).to_vec())),
        None => Err(ApiError::NotFound(MISSING)),
    }
}

#[derive(Deserialize)]
pub(super) struct ListParams {
    limit: Option<String>,
    after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    params(
        ("limit" = Option<String>, Query, description = "Page size, 1–1000 (default 100 when `after` is given). Without limit and after, the whole list is streamed."),
        ("after" = Option<String>, Query, description = "Return users with id greater than this (keyset paging)."),
    ),
    responses(
        (status = 200, description = "Users ordered by id", body = Vec<super::openapi::User>,
            headers(("Link" = String, description = "<…>; rel=\"next\" while more pages remain"))),
        (status = 400, description = "Bad limit or after", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks users:read", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or `MAX_LIST_STREAMS` full-list downloads already running (code `list_streams_busy`); with Retry-After", body = super::openapi::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["users:read"]))
)]
pub(super) async fn list_users(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::InvalidQuery(vec![FieldError::new("query", e.body_text())]))?;
    if params.limit.is_none() && params.after.is_none() {
        return super::list_stream::respond(state).await;
    }
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => raw.parse::<u32>().ok().filter(|n| (1..=MAX_PAGE_SIZE).contains(n)).ok_or_else(|| {
            ApiError::InvalidQuery(vec![FieldError::new(
                "limit",
                format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
            )])
        })?,
    };
    let after = match params.after.as_deref() {
        None => 0,
        Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::InvalidQuery(vec![FieldError::new("after", "must be a non-negative integer (a user id)")])
        })?,
    };

    // Each row is written into the body as it is read. One extra row tells whether another
    // page exists.
    let mut body = Vec::with_capacity(limit as usize * USER_JSON_BYTES + 2);
    body.push(b'[');
    let (mut written, mut last_id, mut more) = (0, 0, false);
    state
        .store
        .visit_page(after, limit + 1, |user| {
            if written == limit {
                more = true;
                return;
            }
            if written > 0 {
                body.push(b',');
            }
            UserJson(user).write_to(&mut body);
            written += 1;
            last_id = user.id;
        })
        .await?;
    body.push(b']');
    let mut response = json_body(body);
    if more {
        let link = format!("</users?limit={limit}&after={last_id}>; rel=\"next\"");
        response.headers_mut().insert(header::LINK, HeaderValue::from_str(&link).expect("ascii link"));
    }
    Ok(response)
}

/// About the length of one user in JSON: a page's body is allocated once.
const USER_JSON_BYTES: usize = 112;

fn json_body(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}
