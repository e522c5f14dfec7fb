//! The request id: taken from `X-Request-Id` when sane, generated otherwise, echoed and logged.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

/// A request id, kept as the header value it is echoed in: the caller's is reused as hyper
/// parsed it and a generated one is encoded once, so cloning it (for the task-local, the
/// response header) never copies the text.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The caller's id when it is short printable ASCII (it ends up in logs), a new UUID otherwise.
    pub fn from_request(request: &Request) -> Self {
        request
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= MAX_LEN && v.as_bytes().iter().all(u8::is_ascii_graphic))
            .map_or_else(Self::generate, |v| Self(v.clone()))
    }

    fn generate() -> Self {
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        Self(HeaderValue::from_str(text).expect("a UUID is a valid header value"))
    }

    pub fn as_str(&self) -> &str {
        // Only printable ASCII is ever held (checked or generated above).
        self.0.to_str().unwrap_or("invalid")
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
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
