//! The request id: taken from `X-Request-Id` when sane, generated otherwise, echoed and logged.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

/// A request id. The caller's is kept as the header value hyper parsed (cloning it shares the
/// bytes); a generated one is kept as its text, copied by value, and becomes a header value
/// once, on the answer (a header value made from new bytes allocates again at its first clone).
#[derive(Clone, Debug)]
pub enum RequestId {
    Given(HeaderValue),
    Generated([u8; uuid::fmt::Hyphenated::LENGTH]),
}

impl RequestId {
    /// The caller's id when it is short printable ASCII (it ends up in logs), a new UUID otherwise.
    pub fn from_request(request: &Request) -> Self {
        request
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= MAX_LEN && v.as_bytes().iter().all(u8::is_ascii_graphic))
            .map_or_else(Self::generate, |v| Self::Given(v.clone()))
    }

    fn generate() -> Self {
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        Self::Generated(text)
    }

    pub fn as_str(&self) -> &str {
        // Only printable ASCII is ever held (checked or generated above).
        let text = match self {
            Self::Given(value) => value.as_bytes(),
            Self::Generated(text) => text,
        };
        std::str::from_utf8(text).unwrap_or("invalid")
    }

    pub fn header_value(&self) -> HeaderValue {
        match self {
            Self::Given(value) => value.clone(),
            Self::Generated(text) => HeaderValue::from_bytes(text).expect("a UUID is a valid header value"),
        }
    }
}

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request being handled by this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.as_str().to_owned()).ok()
}

/// Runs `fut` with `id` as the current request id. Not an async fn: that would keep `fut` twice.
pub fn scope<F: Future>(id: RequestId, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(id, fut)
}
