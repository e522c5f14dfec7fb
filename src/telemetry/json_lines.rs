//! JSON log lines: `{"timestamp":…,"level":…,"target":…,"message":…,<fields>}`, the shape of
//! tracing-subscriber's flattened JSON. Written straight into one buffer: the stock formatter
//! re-validates and escapes every fragment through an adaptor (~17,000 instructions a line,
//! a third of a whole `GET /health` under callgrind; this one needs a fraction of it).

use std::cell::RefCell;
use std::fmt;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct JsonLines;

const MAX_KEPT_LINE: usize = 16 * 1024;

thread_local! {
    /// The line being written: one buffer per thread, reused, so a line allocates nothing.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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
            let written = line
                .write_event(event)
                .and_then(|()| writer.write_str(std::str::from_utf8(&line.0).map_err(|_| fmt::Error)?));
            // A rare long line (an error's chain) is not kept for the thread's lifetime.
            if line.0.capacity() <= MAX_KEPT_LINE {
                kept.replace(line.0);
            }
            written
        })
    }
}

impl JsonObject {
    fn write_event(&mut self, event: &Event<'_>) -> fmt::Result {
        self.0.extend_from_slice(b"{\"timestamp\":\"");
        time::OffsetDateTime::now_utc().format_into(&mut self.0, &Rfc3339).map_err(|_| fmt::Error)?;
        self.0.push(b'"');
        let metadata = event.metadata();
        self.entry("level", metadata.level().as_str());
        self.entry("target", metadata.target());
        event.record(self);
        self.0.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// An object being written; always has at least one entry before the fields are recorded.
struct JsonObject(Vec<u8>);

impl JsonObject {
    fn entry(&mut self, key: &str, value: impl Serialize) {
        self.0.push(b',');
        // Writing into a Vec cannot fail, and these values always serialise.
        let _ = serde_json::to_writer(&mut self.0, key);
        self.0.push(b':');
        let _ = serde_json::to_writer(&mut self.0, &value);
    }
}

/// A `Debug` value as a JSON string, escaped as it is formatted: no `String` per value.
struct DebugAsStr<'a>(&'a dyn fmt::Debug);

impl Serialize for DebugAsStr<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:?}", self.0))
    }
}

impl Visit for JsonObject {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field.name(), value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field.name(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field.name(), value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field.name(), value); // NaN and infinities become null
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field.name(), value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field.name(), DebugAsStr(value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
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
}
