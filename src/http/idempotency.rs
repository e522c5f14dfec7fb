//! The `Idempotency-Key` request header (draft-ietf-httpapi-idempotency-key-header-07) on the
//! create operation: parsing, the request fingerprint, and the stored answer as a response.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::{ApiError, PROBLEM_JSON};
use crate::domain::NewUser;
use crate::store::StoredAnswer;

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer replayed from the store rather than produced by this request.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest key accepted, in characters (visible ASCII).
pub const MAX_KEY_LEN: usize = 255;
/// Whose keys they are when authentication is off: everyone shares one scope.
const ANONYMOUS: &str = "";

/// Who is sending the request: keys are scoped to it. Set by the authentication middleware.
#[derive(Debug, Clone)]
pub struct Subject(pub String);

/// The request's idempotency key and its scope, when the header is present.
pub struct IdempotencyKey {
    pub subject: String,
    pub key: String,
}

/// The optional `Idempotency-Key` header; a malformed one is refused with 400 before the body
/// is read.
pub struct MaybeIdempotencyKey(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeIdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(&IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else { return Ok(Self(None)) };
        if values.next().is_some() {
            return Err(ApiError::InvalidIdempotencyKey("the header must be sent once"));
        }
        let key = parse_key(value)?;
        let subject = parts.extensions.get::<Subject>().map_or(ANONYMOUS, |s| s.0.as_str()).to_owned();
        Ok(Self(Some(IdempotencyKey { subject, key })))
    }
}

/// The key: an sf-string (`"…"`, the draft's syntax) or, for clients that send it bare (most
/// send a UUID unquoted), the value itself when it holds no quote, backslash or whitespace.
/// Either way 1–255 visible ASCII characters.
fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    let raw = value.as_bytes();
    let key = if raw.first() == Some(&b'"') {
        let item = sfv::Parser::new(raw)
            .parse::<sfv::Item>()
            .map_err(|_| ApiError::InvalidIdempotencyKey("a quoted key must be a valid structured-field string"))?;
        // Parameters are not defined for this field: ignored, as RFC 9651 asks of unknown ones.
        item.bare_item
            .as_string()
            .map(|s| s.as_str().to_owned())
            .ok_or(ApiError::InvalidIdempotencyKey("the key must be a string"))?
    } else {
        let bare = std::str::from_utf8(raw).map_err(|_| ApiError::InvalidIdempotencyKey("the key must be ASCII"))?;
        if bare.bytes().any(|b| matches!(b, b'"' | b'\\')) {
            return Err(ApiError::InvalidIdempotencyKey("an unquoted key may not hold a quote or backslash"));
        }
        bare.to_owned()
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::InvalidIdempotencyKey("the key must be 1 to 255 characters"));
    }
    // Visible ASCII only; in a quoted key a space is part of sf-string, but it is refused too so
    // that every key has one spelling, bare or quoted.
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidIdempotencyKey("the key must be visible ASCII characters, without spaces"));
    }
    Ok(key)
}

/// A digest of the request as the service understood it: the route and the normalised fields
/// (two bodies that differ only in spelling, e.g. the email's domain case, are one request).
pub fn fingerprint(route: &str, user: &NewUser) -> Vec<u8> {
    let mut hash = Sha256::new();
    // NUL separators: none of the three can contain one.
    for part in [route, user.name.as_str(), user.email.as_str()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize().to_vec()
}

/// A stored answer as a response: its status and exact body, `Location` for a created user,
/// and `Idempotent-Replayed: true` when it answers an earlier request.
pub fn respond(answer: StoredAnswer, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() { "application/json" } else { PROBLEM_JSON };
    let mut response =
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], answer.body).into_response();
    let headers = response.headers_mut();
    if status == StatusCode::CREATED
        && let Some(id) = answer.user_id
    {
        headers
            .insert(header::LOCATION, HeaderValue::from_str(&format!("/users/{id}")).expect("an id is a valid header"));
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<String, ApiError> {
        parse_key(&HeaderValue::from_bytes(raw).unwrap())
    }

    #[test]
    fn quoted_and_bare_keys_name_the_same_key() {
        assert_eq!(
            parse(br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#).unwrap(),
            "8e03978e-40d5-43e8-bc93-6894a57f9324"
        );
        assert_eq!(parse(b"8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
        assert_eq!(parse(br#""a\"b""#).unwrap(), "a\"b");
        assert_eq!(parse(br#""abc";p=1"#).unwrap(), "abc");
        assert_eq!(parse(&[b'k'; MAX_KEY_LEN]).unwrap().len(), MAX_KEY_LEN);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let too_long = [b'k'; MAX_KEY_LEN + 1];
        let quoted_too_long = [&b"\""[..], &too_long[..], b"\""].concat();
        for raw in [
            &b""[..],
            b"\"\"",
            b"\"unterminated",
            b"\"a\" \"b\"",
            b"\"a b\"",
            b"a\"b",
            b"a b",
            b"\"\xc3\xa9\"",
            b"\xc3\xa9",
            b"a\tb",
            &too_long,
            &quoted_too_long,
        ] {
            assert!(matches!(parse(raw), Err(ApiError::InvalidIdempotencyKey(_))), "{raw:?}");
        }
    }
}
