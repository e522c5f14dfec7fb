//! The connection's byte stream: reads mark activity (a head has begun), and the answers hyper
//! writes by itself for a head it could not parse (400, 414, 431 with an empty body) are
//! replaced by problem+json with a request id, logged like any other answer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::connection::Activity;
use crate::http::error::{ApiError, PROBLEM_JSON};

pub(super) struct ConnectionIo {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// Our answer in place of hyper's, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl ConnectionIo {
    pub fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self { stream, activity, replacement: None }
    }

    /// Writes the replacement; reports hyper's whole buffer as written once it is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>, claimed: usize) -> Poll<io::Result<usize>> {
        let Some((bytes, written)) = &mut self.replacement else { unreachable!("only called with a replacement") };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(claimed))
    }

    fn check_for_refusal(&mut self, first: &[u8]) {
        if self.replacement.is_none()
            && !self.activity.is_busy()
            && let Some(error) = parser_refusal(first)
        {
            self.replacement = Some(problem_response(&error));
        }
    }
}

/// hyper's own answer to an unparseable head: a 4xx/5xx written while no request is in flight,
/// without the request id every answer of ours carries.
fn parser_refusal(bytes: &[u8]) -> Option<ApiError> {
    let status = bytes.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    // Decided by the status first: every write of every answer passes here, and most are 2xx.
    let refusal = match status {
        b"431" => ApiError::HeaderFieldsTooLarge,
        b"414" => ApiError::UriTooLong,
        [b'4' | b'5', _, _] => ApiError::BadRequest,
        _ => return None,
    };
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(bytes.len());
    let ours = bytes[..head_end].windows(13).any(|w| w.eq_ignore_ascii_case(b"x-request-id:"));
    (!ours).then_some(refusal)
}

/// A whole HTTP/1.1 answer for `error`, closing the connection; logged with its request id.
pub(super) fn problem_response(error: &ApiError) -> (Vec<u8>, usize) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let status = error.status();
    tracing::info!(
        target: "users_api::access",
        request_id = request_id.as_str(),
        status = status.as_u16(),
        code = error.code(),
        "request refused before routing"
    );
    let body = error.problem_json(Some(request_id.clone()));
    let retry_after = match error {
        ApiError::Unavailable { retry_after_secs } => format!("retry-after: {retry_after_secs}\r\n"),
        _ => String::new(),
    };
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n{retry_after}connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    (bytes, 0)
}

impl AsyncRead for ConnectionIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.activity.on_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnectionIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_for_refusal(buf);
        if this.replacement.is_some() {
            return this.poll_replacement(cx, buf.len());
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.check_for_refusal(first);
        }
        if this.replacement.is_some() {
            return this.poll_replacement(cx, bufs.iter().map(|b| b.len()).sum());
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_hyper_refusals_and_leaves_our_answers_alone() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert!(matches!(parser_refusal(hyper_431), Some(ApiError::HeaderFieldsTooLarge)));
        assert!(matches!(parser_refusal(b"HTTP/1.1 414 URI Too Long\r\n\r\n"), Some(ApiError::UriTooLong)));
        assert!(matches!(parser_refusal(b"HTTP/1.1 400 Bad Request\r\n\r\n"), Some(ApiError::BadRequest)));
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/problem+json\r\nx-request-id: abc\r\n\r\n{}";
        assert!(parser_refusal(ours).is_none());
        assert!(parser_refusal(b"HTTP/1.1 100 Continue\r\n\r\n").is_none());
        assert!(parser_refusal(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(parser_refusal(b"{\"id\":1}").is_none());
    }

    #[test]
    fn the_replacement_is_a_complete_problem_answer() {
        let (bytes, _) = problem_response(&ApiError::HeaderFieldsTooLarge);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 431);
        assert_eq!(problem["code"], "header_fields_too_large");
        assert!(head.contains(&format!("x-request-id: {}", problem["request_id"].as_str().unwrap())));
    }
}
