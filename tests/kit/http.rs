//! HTTP: clients with finite timeouts, raw exchanges over a socket, problem+json assertions,
//! list helpers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP client with finite timeouts (nothing in this suite may wait forever).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// A client that opens a new connection for every request.
pub fn fresh_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("reqwest client")
}

pub fn user_body(name: &str, email: &str) -> serde_json::Value {
    serde_json::json!({ "name": name, "email": email })
}

/// What one HTTP exchange produced.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
    pub latency: Duration,
}

impl Reply {
    pub async fn from_reqwest(response: reqwest::Response, started: Instant) -> Result<Self, reqwest::Error> {
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        let body = response.bytes().await?.to_vec();
        Ok(Self { status, content_type, retry_after, body, latency: started.elapsed() })
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Why this reply is not a well-formed problem+json document for its status, if it is not.
    pub fn problem_defect(&self, expect_body: bool) -> Option<String> {
        if !self.content_type.starts_with("application/problem+json") {
            return Some(format!("content type {:?}", self.content_type));
        }
        if !expect_body {
            return None;
        }
        let Some(problem) = self.json() else {
            return Some(format!("body is not JSON: {:?}", String::from_utf8_lossy(&self.body)));
        };
        problem_document_defect(self.status, &problem)
    }

    /// Why this 503 is not the contract's "unavailable" answer, if it is not.
    pub fn unavailable_defect(&self) -> Option<String> {
        if self.status != 503 {
            return Some(format!("status {}", self.status));
        }
        if self.retry_after.as_deref().and_then(|v| v.parse::<u64>().ok()).is_none() {
            return Some(format!("Retry-After missing or not seconds: {:?}", self.retry_after));
        }
        self.problem_defect(true)
    }
}

/// Why `problem` is not an RFC 9457 document for `status` with the members every answer of
/// this service carries, if it is not.
fn problem_document_defect(status: u16, problem: &serde_json::Value) -> Option<String> {
    if problem.get("status").and_then(serde_json::Value::as_u64) != Some(u64::from(status)) {
        return Some(format!("status member does not match: {problem}"));
    }
    for member in ["type", "title", "detail", "code"] {
        if !problem.get(member).is_some_and(serde_json::Value::is_string) {
            return Some(format!("member {member:?} missing: {problem}"));
        }
    }
    None
}

/// Asserts a problem+json answer with this status and code that carries the request id of its
/// `x-request-id` header; returns the body.
pub async fn expect_problem(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response.headers().get("content-type").expect("content type").to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    // A complete document with its length, never chunked (proxies and clients rely on it).
    let length = response.headers().get("content-length").expect("a problem is sent with its length");
    let length: usize = length.to_str().unwrap().parse().unwrap();
    let header_id = response.headers().get("x-request-id").expect("x-request-id").to_str().unwrap().to_owned();
    let bytes = response.bytes().await.expect("problem body");
    assert_eq!(bytes.len(), length, "Content-Length is the body's length");
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("problem body is JSON");
    assert_eq!(problem_document_defect(status, &body), None);
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["request_id"], header_id.as_str(), "problem carries the request id");
    body
}

/// GET the whole list at `url` (`…/users`).
pub async fn list_users(client: &reqwest::Client, url: &str) -> Vec<serde_json::Value> {
    let response = client.get(url).send().await.expect("GET /users");
    assert_eq!(response.status(), 200, "GET /users");
    response.json().await.expect("GET /users is a JSON array")
}

/// Sends raw bytes as one HTTP/1.1 exchange (the request should carry `Connection: close`) and
/// parses what comes back; `None` when the server closed without a status line.
///
/// `half_close` shuts our sending side after the request: for input that is not a complete
/// request, so that the server sees the end of it. (hyper closes a connection whose client
/// half-closed without answering, so complete requests are sent without it.)
pub async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    half_close: bool,
    timeout: Duration,
) -> std::io::Result<Option<RawReply>> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        // The server may answer (413, 400) and close before it read everything: not an error.
        let _ = stream.write_all(request).await;
        if half_close {
            let _ = stream.shutdown().await;
        }
        let mut buf = Vec::new();
        match stream.read_to_end(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !buf.is_empty() => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(RawReply::parse(&buf))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "raw exchange timed out"))?
}

#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&buf[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let raw_body = &buf[end + 4..];
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked { dechunk(raw_body) } else { raw_body.to_vec() };
        Some(Self { status, headers, body })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn as_reply(&self) -> Reply {
        Reply {
            status: self.status,
            content_type: self.header("content-type").unwrap_or_default().to_owned(),
            retry_after: self.header("retry-after").map(str::to_owned),
            body: self.body.clone(),
            latency: Duration::ZERO,
        }
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
            return out;
        };
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}
