//! Request-body extraction with the contract's statuses (axum's `Json` would answer 422/415 its own way).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use http_body_util::BodyExt;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::{ApiError, FieldError};
use crate::domain::{Email, NewUser, UserName};
use crate::server::InFlight;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A refused body is read and dropped after the 413 is sent, whatever its size, for at most
/// `LINGER_TIME` and while bytes keep coming (`LINGER_STALL`): closing a connection with
/// unread bytes resets it, and the reset destroys the 413 before a client that sends its
/// whole body first reads it. nginx's lingering close (`lingering_time`, `lingering_timeout`).
const LINGER_TIME: Duration = Duration::from_secs(30);
const LINGER_STALL: Duration = Duration::from_secs(5);

/// A `NewUser` parsed from a JSON request body.
pub struct NewUserJson(pub NewUser);

impl<S: Send + Sync> FromRequest<S> for NewUserJson {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let declared_length = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let in_flight = InFlight::current();
        if declared_length.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            // A client waiting for `100 Continue` has sent nothing: it reads the 413 and stops.
            let expects_continue = request.headers().contains_key(header::EXPECT);
            if !expects_continue {
                linger(request.into_body(), in_flight);
            }
            return Err(ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES });
        }
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = read_limited(request.into_body(), in_flight).await?;
        parse_new_user(&bytes).map(Self)
    }
}

/// `application/json` or any `application/*+json`, parameters (charset) allowed.
fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    // What nearly every client sends, matched whole before the general parse (~550 instructions).
    if content_type.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json")) {
        return true;
    }
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let ends_with = |text: &str, suffix: &str| {
        text.len() >= suffix.len()
            && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    match essence.split_once('/') {
        Some((kind, subtype)) if kind.eq_ignore_ascii_case("application") => {
            subtype.eq_ignore_ascii_case("json") || ends_with(subtype, "+json")
        }
        _ => false,
    }
}

async fn read_limited(mut body: Body, in_flight: Option<InFlight>) -> Result<bytes::Bytes, ApiError> {
    // A body that arrives in one frame (nearly all) is kept as it came, without a copy.
    let mut first: Option<bytes::Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::MalformedJson("the request body could not be read".into()))?;
        let Ok(data) = frame.into_data() else { continue }; // trailers
        length += data.len();
        if length > MAX_BODY_BYTES {
            linger(body, in_flight);
            return Err(ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES });
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            earlier => {
                joined.extend_from_slice(&earlier.unwrap_or_default());
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// Reads and drops the rest of a refused body in the background, while the 413 goes out,
/// keeping the connection counted as busy (it is not idle: the client is still sending).
fn linger(mut body: Body, in_flight: Option<InFlight>) {
    tokio::spawn(async move {
        let _busy = in_flight;
        let give_up = tokio::time::Instant::now() + LINGER_TIME;
        loop {
            let stall = tokio::time::Instant::now() + LINGER_STALL;
            match tokio::time::timeout_at(stall.min(give_up), body.frame()).await {
                Ok(Some(Ok(_))) => {}
                _ => return,
            }
        }
    });
}

/// Parses a create-user body, reporting every invalid field at once.
pub fn parse_new_user(bytes: &[u8]) -> Result<NewUser, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_none() {
        return Err(ApiError::MalformedJson("the request body is empty".into()));
    }
    if first != Some(&b'{') {
        // Not an object: malformed, or well-formed JSON of another kind.
        serde_json::from_slice::<IgnoredAny>(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        return Err(ApiError::InvalidFields(vec![FieldError::new("body", "must be a JSON object")]));
    }
    let body: CreateBody<'_> = serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;

    let mut errors = Vec::new();
    let name = string_field(body.name, "name", &mut errors)
        .and_then(|raw| UserName::parse(&raw).map_err(|e| errors.push(FieldError::new("name", e.to_string()))).ok());
    let email = string_field(body.email, "email", &mut errors)
        .and_then(|raw| Email::parse(&raw).map_err(|e| errors.push(FieldError::new("email", e.to_string()))).ok());
    match (name, email) {
        (Some(name), Some(email)) => Ok(NewUser { name, email }),
        _ => Err(ApiError::InvalidFields(errors)),
    }
}

fn string_field<'a>(field: Option<FieldValue<'a>>, name: &str, errors: &mut Vec<FieldError>) -> Option<Cow<'a, str>> {
    match field {
        Some(FieldValue::Text(text)) => Some(text),
        Some(FieldValue::NotText) => {
            errors.push(FieldError::new(name, "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new(name, "is required"));
            None
        }
    }
}

/// The members of a create body that matter, read in place: no map of every member, and a
/// string without escapes is borrowed from the body (a `serde_json::Value` cost ~2,000
/// instructions of a POST /user). A repeated member counts as its last value, as in a `Value`.
#[derive(Default)]
struct CreateBody<'a> {
    name: Option<FieldValue<'a>>,
    email: Option<FieldValue<'a>>,
}

/// A member's value: the text of a string, or anything else (reported as "must be a string").
enum FieldValue<'a> {
    Text(Cow<'a, str>),
    NotText,
}

impl<'de> Deserialize<'de> for CreateBody<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = CreateBody<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Self::Value, A::Error> {
                let mut body = CreateBody::default();
                while let Some(member) = members.next_key::<Member>()? {
                    match member {
                        Member::Name => body.name = Some(members.next_value()?),
                        Member::Email => body.email = Some(members.next_value()?),
                        Member::Other => {
                            members.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(body)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// A member's name, matched without copying it.
enum Member {
    Name,
    Email,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = Member;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_str<E>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "name" => Member::Name,
                    "email" => Member::Email,
                    _ => Member::Other,
                })
            }
        }
        deserializer.deserialize_identifier(Key)
    }
}

impl<'de> Deserialize<'de> for FieldValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Field;
        impl<'de> Visitor<'de> for Field {
            type Value = FieldValue<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(FieldValue::Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(FieldValue::Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(FieldValue::Text(Cow::Owned(text)))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(FieldValue::NotText)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(FieldValue::NotText)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(FieldValue::NotText)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(FieldValue::NotText)
            }

            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(FieldValue::NotText)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                while items.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FieldValue::NotText)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Self::Value, A::Error> {
                while members.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FieldValue::NotText)
            }
        }
        deserializer.deserialize_any(Field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidFields(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_valid_body_and_ignores_unknown_fields() {
        let user = parse_new_user(br#"{"name":"Ada Lovelace","email":"ada@Example.com","admin":true}"#).unwrap();
        assert_eq!(user.name.as_str(), "Ada Lovelace");
        assert_eq!(user.email.as_str(), "ada@example.com");
    }

    #[test]
    fn reports_every_invalid_field() {
        assert_eq!(fields(parse_new_user(br#"{}"#).unwrap_err()), ["name", "email"]);
        assert_eq!(fields(parse_new_user(br#"{"name":1,"email":null}"#).unwrap_err()), ["name", "email"]);
        assert_eq!(fields(parse_new_user(br#"{"name":"Al","email":"x@y.z"}"#).unwrap_err()), ["name"]);
        assert_eq!(fields(parse_new_user(br#"[1,2]"#).unwrap_err()), ["body"]);
    }

    #[test]
    fn members_are_read_as_json_defines_them() {
        // Escapes in a member name and a value, a repeated member (the last counts), nested values.
        let user = parse_new_user(
            br#"{"name":"X","extra":{"a":[1,{"b":null}]},"n\u0061me":"\u0041da L\u00f6we","email":"ada@example.com"}"#,
        )
        .unwrap();
        assert_eq!(user.name.as_str(), "Ada Löwe");
        for value in ["null", "true", "1.5", "-3", "[\"Ada\"]", "{\"first\":\"Ada\"}"] {
            let body = format!(r#"{{"name":{value},"email":"ada@example.com"}}"#);
            match parse_new_user(body.as_bytes()) {
                Err(ApiError::InvalidFields(errors)) => {
                    assert_eq!((errors[0].field.as_str(), errors[0].message.as_str()), ("name", "must be a string"))
                }
                other => panic!("{value}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_and_empty_bodies_are_malformed_json() {
        for body in [&b""[..], b"  ", b"{", b"{\"name\":}", b"\xff\xfe", b"null x", b"{} x", b"[1,"] {
            assert!(matches!(parse_new_user(body), Err(ApiError::MalformedJson(_))), "{body:?}");
        }
    }

    #[test]
    fn json_content_types() {
        let check = |v: &str| is_json(Some(&header::HeaderValue::from_str(v).unwrap()));
        assert!(check("application/json"));
        assert!(check("Application/Json"));
        assert!(check("Application/JSON; charset=utf-8"));
        assert!(check("application/merge-patch+json"));
        assert!(check("APPLICATION/Problem+JSON"));
        assert!(!check("application/jsonx"));
        assert!(!check("application/json+x"));
        assert!(!check("application/+jsoń"));
        assert!(!check("text/plain"));
        assert!(!check("application/x-www-form-urlencoded"));
        assert!(!check("json"));
        assert!(check("\tapplication/json ; charset=utf-8"));
        assert!(!check("application /json"));
        // A byte that is not visible ASCII makes the value unreadable (`to_str`), whatever its media type.
        assert!(!is_json(Some(&header::HeaderValue::from_bytes(b"application/json; charset=\xff").unwrap())));
        assert!(!is_json(None));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_are_rejected_or_valid(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            match parse_new_user(&bytes) {
                Ok(user) => prop_assert!(UserName::parse(user.name.as_str()).is_ok()),
                Err(e) => prop_assert!(e.status().is_client_error()),
            }
        }

        #[test]
        fn arbitrary_field_values_never_panic(name in any::<String>(), email in any::<String>()) {
            let body = serde_json::json!({"name": name, "email": email}).to_string();
            match parse_new_user(body.as_bytes()) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.status().is_client_error()),
            }
        }
    }
}
