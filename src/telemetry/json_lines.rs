//! JSON log lines: `{"timestamp":…,"level":…,"target":…,"message":…,<fields>}`, the shape of
//! tracing-subscriber's flattened JSON. Written straight into one buffer: the stock formatter
//! re-validates and escapes every fragment through an adaptor (~17,000 instructions a line,
//! a third of a whole `GET /health` under callgrind; this one needs a fraction of it).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::json_text::{self, SecondText, push_display, push_millis, push_plain, push_str};

pub struct JsonLines;

const MAX_KEPT_LINE: usize = 16 * 1024;

thread_local! {
    /// The line being written: one buffer per thread, reused, so a line allocates nothing.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The last second this thread formatted: a date is worked out once a second, not per line.
    static SECOND: Cell<(u64, SecondText)> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        LINE.with(|kept| {
            // Taken rather than borrowed: an event logged while formatting would get its own.
            let mut line = JsonObject(kept.take());
            line.0.clear();
            line.write_event(event);
            let written = writer.write_str(std::str::from_utf8(&line.0).map_err(|_| fmt::Error)?);
            // A rare long line (an error's chain) is not kept for the thread's lifetime.
            if line.0.capacity() <= MAX_KEPT_LINE {
                kept.replace(line.0);
            }
            written
        })
    }
}

/// One access-log line's fields, as the middleware has them.
pub struct AccessEntry<'a> {
    pub request_id: &'a str,
    /// An HTTP method: a token, never escaped.
    pub method: &'a str,
    /// A route label of the router's: never escaped.
    pub route: &'a str,
    pub status: u16,
    /// Written as `latency_ms`, to the microsecond.
    pub latency_micros: u64,
    pub trace_id: Option<&'a dyn fmt::Display>,
}

/// The line `tracing::info!(target: ACCESS_TARGET, …, "request")` would write through
/// `JsonLines`, byte for byte in the same shape, without the dispatch through the subscriber
/// and the field visitor (~3,000 instructions a request, an eighth of a whole `GET /health`).
pub fn write_access_line(out: &mut Vec<u8>, entry: &AccessEntry<'_>) {
    // The keys and the target are known here and need no escaping: written as they are.
    out.extend_from_slice(b"{\"timestamp\":\"");
    write_timestamp(out, SystemTime::now());
    out.extend_from_slice(
        b"\",\"level\":\"INFO\",\"target\":\"users_api::access\",\"message\":\"request\",\"request_id\":",
    );
    push_str(out, entry.request_id);
    out.extend_from_slice(b",\"method\":");
    push_plain(out, entry.method);
    out.extend_from_slice(b",\"route\":");
    push_plain(out, entry.route);
    out.extend_from_slice(b",\"status\":");
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &entry.status);
    out.extend_from_slice(b",\"latency_ms\":");
    push_millis(out, entry.latency_micros);
    if let Some(trace_id) = entry.trace_id {
        out.extend_from_slice(b",\"trace_id\":");
        push_display(out, trace_id);
    }
    out.extend_from_slice(b"}\n");
}

/// An object being written; always has at least one entry before the fields are recorded.
struct JsonObject(Vec<u8>);

impl JsonObject {
    fn write_event(&mut self, event: &Event<'_>) {
        self.0.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(&mut self.0, SystemTime::now());
        self.0.push(b'"');
        let metadata = event.metadata();
        self.key("level");
        push_str(&mut self.0, metadata.level().as_str());
        self.key("target");
        push_str(&mut self.0, metadata.target());
        event.record(self);
        self.0.extend_from_slice(b"}\n");
    }

    fn key(&mut self, key: &str) {
        self.0.push(b',');
        push_str(&mut self.0, key);
        self.0.push(b':');
    }

    /// A number or literal through serde_json (itoa, ryu; NaN and infinities become null).
    fn scalar(&mut self, key: &str, value: impl serde::Serialize) {
        self.key(key);
        // Writing into a Vec cannot fail, and these values always serialise.
        let _ = serde_json::to_writer(&mut self.0, &value);
    }
}

/// RFC 3339 in UTC with microseconds, `2026-11-29T04:08:06.123456Z`; the date and time of
/// day are worked out once a second per thread.
fn write_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != second {
        let at = i64::try_from(second).ok().and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
        text = json_text::second_text(at.unwrap_or(time::OffsetDateTime::UNIX_EPOCH));
        SECOND.set((second, text));
    }
    out.extend_from_slice(&text);
    json_text::push_micros_z(out, since_epoch.subsec_micros());
}

impl Visit for JsonObject {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field.name());
        push_str(&mut self.0, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.scalar(field.name(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.scalar(field.name(), value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.scalar(field.name(), value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.scalar(field.name(), value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field.name());
        push_display(&mut self.0, &format_args!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use time::format_description::well_known::Rfc3339;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    fn capture(emit: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt().with_writer(captured.clone()).event_format(JsonLines).finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).expect(l)).collect()
    }

    #[test]
    fn every_field_type_becomes_a_json_value_on_one_line() {
        let error = std::io::Error::other("disk \"full\"");
        let lines = capture(|| {
            tracing::warn!(
                target: "users_api::access",
                request_id = %"id-1",
                status = 201u16,
                delta = -3i64,
                latency_ms = 1.5,
                nan = f64::NAN,
                ok = true,
                route = ?"/user",
                error = &error as &(dyn std::error::Error + 'static),
                "line\nwith \"quotes\" and ünïcode"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "users_api::access");
        assert_eq!(line["message"], "line\nwith \"quotes\" and ünïcode");
        assert_eq!(line["request_id"], "id-1");
        assert_eq!(line["status"], 201);
        assert_eq!(line["delta"], -3);
        assert_eq!(line["latency_ms"], 1.5);
        assert_eq!(line["nan"], Value::Null);
        assert_eq!(line["ok"], true);
        assert_eq!(line["route"], "\"/user\"");
        assert_eq!(line["error"], "disk \"full\"");
        let timestamp = line["timestamp"].as_str().unwrap();
        time::OffsetDateTime::parse(timestamp, &Rfc3339).expect("an RFC 3339 timestamp");
    }

    #[test]
    fn timestamps_match_rfc3339_across_seconds_and_the_cached_date() {
        let cases = [0, 1_764_000_000_999_999, 1_764_000_000_000_001, 1_764_000_001_500_000, 951_782_400_000_000];
        for micros in cases {
            let at = UNIX_EPOCH + std::time::Duration::from_micros(micros);
            let mut written = Vec::new();
            write_timestamp(&mut written, at);
            let written = String::from_utf8(written).unwrap();
            let parsed = time::OffsetDateTime::parse(&written, &Rfc3339).expect(&written);
            let expected = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap();
            assert_eq!(parsed, expected, "{written}");
            assert_eq!(written.len(), "2026-11-29T04:08:06.123456Z".len(), "{written}");
        }
    }

    #[test]
    fn the_access_line_is_the_line_its_tracing_event_would_write() {
        let without_timestamp = |line: &str| line.split_once("\",\"level\"").expect(line).1.to_owned();
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let cases = [
            ("id-1", None, 250),
            ("quote\"and\\back", Some(trace_id), 41_213),
            ("id-2", None, 0),
            ("id-3", None, 12_345_000),
        ];
        for (request_id, trace, latency_micros) in cases {
            let captured = Captured::default();
            let subscriber = tracing_subscriber::fmt().with_writer(captured.clone()).event_format(JsonLines).finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(
                    target: "users_api::access",
                    request_id,
                    method = "GET",
                    route = "/users/{id}",
                    status = 200u16,
                    latency_ms = latency_micros as f64 / 1000.0,
                    trace_id = trace.map(tracing::field::display),
                    "request"
                );
            });
            let event = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            let mut direct = Vec::new();
            let entry = AccessEntry {
                request_id,
                method: "GET",
                route: "/users/{id}",
                status: 200,
                latency_micros,
                trace_id: trace.as_ref().map(|t| t as &dyn fmt::Display),
            };
            write_access_line(&mut direct, &entry);
            let direct = String::from_utf8(direct).unwrap();
            assert_eq!(without_timestamp(&direct), without_timestamp(&event));
            assert!(direct.contains(&format!("\"target\":\"{}\"", crate::telemetry::ACCESS_TARGET)));
            let parsed: Value = serde_json::from_str(&direct).unwrap();
            assert_eq!(parsed["request_id"], request_id);
        }
    }
}
