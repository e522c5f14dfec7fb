//! Bad input over the wire, property-based: arbitrary methods, paths, query strings, headers,
//! content types and bodies (bytes, JSON of any shape, huge, deeply nested, chunked) sent to a
//! live instance. No answer is ever a 5xx; every rejection is a 4xx problem+json; the service
//! logs no error and keeps answering. Bytes that are not HTTP at all get a 4xx or a closed
//! connection, never a 5xx, and the service keeps answering.
//!
//! The validators and the JSON extraction have their own property tests in src/domain and
//! src/http/extract.rs; slow and oversized requests through nginx are tested in tests/proxy.

mod kit;

use std::time::Duration;

use kit::http::{RawReply, raw_exchange};
use kit::load::report;
use kit::process::Server;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per property; `RELIABILITY_FUZZ_CASES` overrides.
const DEFAULT_CASES: u32 = 1500;
/// A fixed seed keeps the suite deterministic; `RELIABILITY_FUZZ_SEED` (any text) varies it.
const DEFAULT_SEED: &str = "users-api reliability fuzz";

fn runner(cases: u32) -> TestRunner {
    let seed_text = std::env::var("RELIABILITY_FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    let mut seed = [0u8; 32];
    for (i, b) in seed_text.bytes().enumerate() {
        seed[i % 32] = seed[i % 32].wrapping_mul(31).wrapping_add(b);
    }
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 300,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

fn cases() -> u32 {
    std::env::var("RELIABILITY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES)
}

/// Every byte outside the unreserved set percent-encoded: always a valid path or query part.
fn pct(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One request, as it goes on the wire.
#[derive(Clone)]
struct Case {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Chunk sizes when sent chunked (None: Content-Length).
    chunks: Option<Vec<usize>>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wire = self.to_bytes();
        let shown = String::from_utf8_lossy(&wire[..wire.len().min(1500)]).into_owned();
        write!(f, "{} bytes on the wire:\n{shown}", wire.len())
    }
}

impl Case {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n", self.method, self.target)
            .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        match &self.chunks {
            Some(sizes) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut rest = &self.body[..];
                for size in sizes.iter().copied().chain(std::iter::repeat(usize::MAX)) {
                    if rest.is_empty() {
                        break;
                    }
                    let take = size.clamp(1, rest.len());
                    out.extend_from_slice(format!("{take:x}\r\n").as_bytes());
                    out.extend_from_slice(&rest[..take]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[take..];
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                if !self.body.is_empty() || self.method == "POST" {
                    out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.body);
            }
        }
        out
    }
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("POST".to_owned()),
        4 => Just("GET".to_owned()),
        1 => Just("PUT".to_owned()),
        1 => Just("DELETE".to_owned()),
        1 => Just("PATCH".to_owned()),
        1 => Just("HEAD".to_owned()),
        1 => Just("OPTIONS".to_owned()),
        1 => "[A-Z]{1,12}".prop_filter("CONNECT needs an authority-form target", |m| m != "CONNECT"),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| pct(&b)),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => "[0-9]{19,40}",
        // Broken escapes and dot segments.
        1 => prop_oneof![Just("%".to_owned()), Just("%zz".to_owned()), Just("%F".to_owned()), Just("..".to_owned()), Just(".".to_owned())],
        1 => "[A-Za-z0-9._~!$&'()*+,;=:@-]{0,20}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "/users",
        "/user",
        "/users/",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/",
        "/",
        "//users",
    ]);
    prop_oneof![
        3 => known.prop_map(str::to_owned),
        3 => segment().prop_map(|s| format!("/users/{s}")),
        1 => segment().prop_map(|s| format!("/docs/{s}")),
        2 => prop::collection::vec(segment(), 1..5).prop_map(|s| format!("/{}", s.join("/"))),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        3 => prop::sample::select(vec!["limit", "after", "limit", "after", ""]).prop_map(str::to_owned),
        1 => segment(),
    ];
    let value = prop_oneof![
        2 => (0u32..2000).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec!["", "-1", "0", "1e3", "0x10", "+5", " 5", "NaN", "99999999999999999999"])
            .prop_map(|v| pct(v.as_bytes())),
        1 => segment(),
    ];
    prop_oneof![
        2 => Just(String::new()),
        3 => prop::collection::vec((key, value, any::<bool>()), 0..4).prop_map(|pairs| {
            let parts: Vec<String> =
                pairs.into_iter().map(|(k, v, eq)| if eq { format!("{k}={v}") } else { k }).collect();
            format!("?{}", parts.join("&"))
        }),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| format!("?{}", pct(&b))),
        // Raw characters a query may carry unencoded.
        1 => "[A-Za-z0-9=&;/?:@!$'()*+,._~-]{0,40}".prop_map(|q| format!("?{q}")),
    ]
}

/// Header values: visible ASCII and spaces, sometimes obs-text bytes.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[ -~]{0,80}".prop_map(|s| s.trim().as_bytes().to_vec()),
        1 => prop::collection::vec(prop_oneof![0x21u8..0x7f, 0x80u8..=0xff], 1..60),
    ]
}

fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        5 => prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/merge-patch+json",
            "application/problem+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin1; x=\"y\"",
            "json",
            "",
        ])
        .prop_map(|v| Some(v.as_bytes().to_vec())),
        1 => Just(None),
        1 => header_value().prop_map(Some),
    ]
}

fn extra_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let named = prop_oneof![
        prop::sample::select(vec![
            "X-Request-Id",
            "Accept",
            "Authorization",
            "X-Forwarded-For",
            "Accept-Encoding",
            "Origin",
            "Cookie",
            "Range",
            "If-None-Match",
            "Content-Encoding",
        ])
        .prop_map(str::to_owned),
        "X-[A-Za-z0-9-]{1,20}",
    ];
    prop::collection::vec((named, header_value()), 0..5)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("name".to_owned()), Just("email".to_owned()), any::<String>()],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..600),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        4 => (any::<String>(), any::<String>())
            .prop_map(|(name, email)| serde_json::json!({"name": name, "email": email}).to_string().into_bytes()),
        // Plausible users: some are created (201), some collide (400 email_taken), some are refused.
        3 => ("[A-Za-zÀ-ÿ]{2,12}( [A-Za-z]{1,12}){0,2}", "[A-Za-z0-9._%+-]{1,12}@[A-Za-z0-9-]{1,8}\\.[A-Za-z]{2,4}")
            .prop_map(|(name, email)| serde_json::json!({"name": name, "email": email, "extra": [1, {"x": null}]}).to_string().into_bytes()),
        1 => (1usize..60_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        1 => (65_000usize..70_000).prop_map(|n| format!("{{\"name\":\"{}\"}}", "a".repeat(n)).into_bytes()),
        1 => Just(b"{\"name\": \"Ada Lovelace\", \"email\": \"ada@example.com\"".to_vec()),
        1 => Just(b"\xef\xbb\xbf{\"name\":\"Ada Lovelace\",\"email\":\"bom@example.com\"}".to_vec()),
    ]
}

fn chunking() -> impl Strategy<Value = Option<Vec<usize>>> {
    prop_oneof![4 => Just(None), 1 => prop::collection::vec(1usize..2000, 1..8).prop_map(Some)]
}

/// Requests aimed at the service's own routes (creates and reads) half of the time, so that
/// the interesting code runs, and anything at all the other half.
fn case() -> impl Strategy<Value = Case> {
    let creates = (
        prop::sample::select(vec!["/users", "/user"]),
        query(),
        prop_oneof![4 => Just(Some(b"application/json".to_vec())), 1 => content_type()],
        extra_headers(),
        body(),
        chunking(),
    )
        .prop_map(|(path, query, ct, headers, body, chunks)| {
            ("POST".to_owned(), format!("{path}{query}"), ct, headers, body, chunks)
        });
    let reads = (
        prop_oneof![Just("/users".to_owned()), segment().prop_map(|s| format!("/users/{s}"))],
        query(),
        content_type(),
        extra_headers(),
        prop_oneof![3 => Just(Vec::new()), 1 => body()],
        chunking(),
    )
        .prop_map(|(path, query, ct, headers, body, chunks)| {
            ("GET".to_owned(), format!("{path}{query}"), ct, headers, body, chunks)
        });
    let anything = (method(), path(), query(), content_type(), extra_headers(), body(), chunking()).prop_map(
        |(method, path, query, ct, headers, body, chunks)| {
            (method, format!("{path}{query}"), ct, headers, body, chunks)
        },
    );
    prop_oneof![3 => creates, 2 => reads, 5 => anything].prop_map(
        |(method, target, content_type, mut headers, body, chunks)| {
            if let Some(ct) = content_type {
                headers.insert(0, ("Content-Type".to_owned(), ct));
            }
            Case { method, target, headers, body, chunks }
        },
    )
}

/// What is wrong with `reply` as the answer to `case`, if anything.
fn judge(case: &Case, reply: Option<&RawReply>) -> Result<(), String> {
    let Some(reply) = reply else {
        return Err("the server closed the connection without an answer".into());
    };
    if reply.status >= 500 {
        return Err(format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body)));
    }
    if reply.status >= 400 {
        let expect_body = case.method != "HEAD";
        if let Some(defect) = reply.as_reply().problem_defect(expect_body) {
            return Err(format!("{} is not problem+json: {defect}", reply.status));
        }
    }
    if reply.status == 201 {
        let user: serde_json::Value =
            serde_json::from_slice(&reply.body).map_err(|e| format!("201 body is not JSON: {e}"))?;
        if !user["id"].is_i64() {
            return Err(format!("201 body is not a user: {user}"));
        }
    }
    Ok(())
}

#[test]
fn arbitrary_requests_never_get_a_5xx_and_every_rejection_is_problem_json() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _serial = rt.block_on(kit::load::serial());
    let db = kit::sqlite::TempSqlite::new();
    let url = db.url.clone();
    let server = Server::start(&url, &[("LOG_LEVEL", "error,users_api::server=info")]);
    let addr = server.addr;
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let mut runner = runner(cases());
    let result = runner.run(&case(), |case| {
        let reply = rt
            .block_on(raw_exchange(addr, &case.to_bytes(), false, Duration::from_secs(15)))
            .map_err(|e| TestCaseError::fail(format!("exchange failed: {e}")))?;
        if let Some(r) = &reply {
            *statuses.borrow_mut().entry(r.status).or_default() += 1;
        }
        judge(&case, reply.as_ref()).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}\nlog:\n{}", server.logs());
    }

    let health = rt.block_on(raw_exchange(
        addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
        Duration::from_secs(5),
    ));
    assert_eq!(health.ok().flatten().map(|r| r.status), Some(200), "/health after the fuzzing");
    let errors: Vec<String> = server.logs().lines().filter(|l| l.contains("\"ERROR\"")).map(str::to_owned).collect();
    assert!(errors.is_empty(), "the service logged errors:\n{}", errors.join("\n"));
    let statuses = statuses.into_inner();
    let sent: usize = statuses.values().sum();
    report(
        "arbitrary_requests_never_get_a_5xx_and_every_rejection_is_problem_json",
        &format!("requests={sent} statuses={statuses:?} 5xx=0 non_problem_rejections=0 logged_errors=0"),
    );
}

/// Mutations of a valid request and plain garbage: not HTTP, or barely.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let valid = b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 44\r\nConnection: close\r\n\r\n{\"name\":\"Ada Lovelace\",\"email\":\"a@b.example\"}".to_vec();
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 1..2000),
        3 => (Just(valid.clone()), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)).prop_map(
            |(mut bytes, flips)| {
                for (i, b) in flips {
                    let at = i.index(bytes.len());
                    bytes[at] = b;
                }
                bytes
            }
        ),
        1 => (Just(valid), any::<prop::sample::Index>()).prop_map(|(bytes, cut)| bytes[..cut.index(bytes.len())].to_vec()),
        1 => "[ -~]{1,300}".prop_map(|s| format!("GET /{s} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()),
        1 => (1usize..200).prop_map(|n| format!("GET /health HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(n)).into_bytes()),
    ]
}

#[test]
fn bytes_that_are_not_http_never_get_a_5xx_and_the_service_keeps_answering() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _serial = rt.block_on(kit::load::serial());
    let db = kit::sqlite::TempSqlite::new();
    let url = db.url.clone();
    let server = Server::start(&url, &[("LOG_LEVEL", "error,users_api::server=info")]);
    let addr = server.addr;
    let answered = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let closed = std::cell::Cell::new(0usize);
    let mut runner = runner(cases() / 2);
    let result = runner.run(&garbage(), |bytes| {
        // Incomplete requests are answered only when the connection closes, or not at all.
        match rt.block_on(raw_exchange(addr, &bytes, true, Duration::from_secs(15))) {
            Ok(Some(reply)) => {
                *answered.borrow_mut().entry(reply.status).or_default() += 1;
                prop_assert!(reply.status < 500, "{} for {:?}", reply.status, String::from_utf8_lossy(&bytes));
            }
            Ok(None) => closed.set(closed.get() + 1),
            Err(e) => return Err(TestCaseError::fail(format!("exchange failed: {e}"))),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nlog:\n{}", server.logs());
    }
    let health = rt.block_on(raw_exchange(
        addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
        Duration::from_secs(5),
    ));
    assert_eq!(health.ok().flatten().map(|r| r.status), Some(200), "/health after the garbage");
    let errors: Vec<String> = server.logs().lines().filter(|l| l.contains("\"ERROR\"")).map(str::to_owned).collect();
    assert!(errors.is_empty(), "the service logged errors:\n{}", errors.join("\n"));
    let (answered, closed) = (answered.into_inner(), closed.get());
    report(
        "bytes_that_are_not_http_never_get_a_5xx_and_the_service_keeps_answering",
        &format!(
            "inputs={} answered={answered:?} closed_without_answer={closed} 5xx=0",
            answered.values().sum::<usize>() + closed
        ),
    );
}

/// The deterministic form of a case the fuzzing found: a path parameter that is not UTF-8
/// once percent-decoded, on a route whose extractor is not the service's own (the Swagger UI
/// under /docs), was answered by axum's plain-text 400 instead of problem+json.
#[test]
fn a_path_that_is_not_utf8_under_docs_is_refused_with_problem_json() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _serial = rt.block_on(kit::load::serial());
    let db = kit::sqlite::TempSqlite::new();
    let url = db.url.clone();
    let server = Server::start(&url, &[]);
    for target in ["/docs/%80", "/docs/%C3%28", "/users/%FF"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = rt
            .block_on(raw_exchange(server.addr, request.as_bytes(), false, Duration::from_secs(5)))
            .expect("exchange")
            .expect("an answer");
        assert!(reply.status < 500 && reply.status >= 400, "{target}: {}", reply.status);
        assert_eq!(reply.as_reply().problem_defect(true), None, "{target}: {} {:?}", reply.status, reply.headers);
    }
}
