use std::cell::RefCell;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracer;
use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::json_lines::{AccessEntry, JsonLines, write_access_line};
use super::traces::{SPAN_TARGET, TraceExport};

/// What the log lines look like and which of them are written.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// A level (info, debug…) or tracing directives (users_api=debug,tower_http=info).
    pub filter: String,
    pub format: LineFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    Text,
    Json,
}

/// The target of the access log's lines, one per request.
pub const ACCESS_TARGET: &str = "users_api::access";

/// With JSON lines, access lines wait in one shared buffer and reach the log writer together:
/// a write to the writer's queue per request woke its thread for each line and cost more than
/// the rest of a `GET /health`. nginx's `access_log … buffer= flush=`.
static ACCESS: OnceLock<AccessBuffer> = OnceLock::new();
/// A full buffer is handed to the writer at once…
const ACCESS_BUFFER_BYTES: usize = 32 * 1024;
/// …and a line waits at most this long (plus a write) before it is handed over.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_millis(50);

struct AccessBuffer {
    lines: Mutex<Vec<u8>>,
    writer: NonBlocking,
}

impl AccessBuffer {
    fn push(&self, line: &[u8]) {
        let full = {
            let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.extend_from_slice(line);
            (lines.len() >= ACCESS_BUFFER_BYTES)
                .then(|| std::mem::replace(&mut *lines, Vec::with_capacity(ACCESS_BUFFER_BYTES)))
        };
        if let Some(full) = full {
            self.hand_over(&full);
        }
    }

    fn flush(&self) {
        let waiting = std::mem::take(&mut *self.lines.lock().unwrap_or_else(PoisonError::into_inner));
        if !waiting.is_empty() {
            self.hand_over(&waiting);
        }
    }

    fn hand_over(&self, lines: &[u8]) {
        // One write is one message in the writer's queue, written whole.
        let _ = self.writer.clone().write_all(lines);
    }
}

thread_local! {
    static ACCESS_LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes one access-log line when the filter lets `ACCESS_TARGET` at INFO through. With JSON
/// lines (production) it goes to the access buffer, the same bytes `JsonLines` would write;
/// otherwise it is a tracing event like any other.
pub fn log_access(entry: &AccessEntry<'_>) {
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(access) = ACCESS.get() else {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = entry.request_id,
            method = entry.method,
            route = entry.route,
            status = entry.status,
            latency_ms = entry.latency_ms,
            trace_id = entry.trace_id.map(tracing::field::display),
            "request"
        );
        return;
    };
    ACCESS_LINE.with(|kept| {
        let mut line = kept.take();
        line.clear();
        write_access_line(&mut line, entry);
        access.push(&line);
        kept.replace(line);
    });
}

/// Keep until exit: dropping it hands the waiting access lines to the writer, then flushes
/// the writer's queue to stdout.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(access) = ACCESS.get() {
            access.flush();
        }
    }
}

/// Log lines that may wait for the writer thread (the crate's default, 128k, let a /health
/// flood queue 30 MB of lines).
const LOG_QUEUE_LINES: usize = 8 * 1024;

/// Installs the global subscriber; logs go to stdout, one line per event. A background thread
/// does the writing so that requests never wait on stdout; it blocks (rather than drops lines)
/// when it falls behind by LOG_QUEUE_LINES. Keep the guard until exit: dropping it flushes what is
/// queued. Access lines (JSON) are handed to that thread every ACCESS_FLUSH_INTERVAL or 32 KiB.
/// With `traces`, the spans of `SPAN_TARGET` go to it whatever the log level; without, they are off.
pub fn init_logging(settings: &LogSettings, traces: Option<&TraceExport>) -> LogGuard {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|e| {
        eprintln!("invalid LOG_LEVEL {:?} ({e}); using info", settings.filter);
        EnvFilter::new("info")
    });
    let spans = if traces.is_some() { "trace" } else { "off" };
    let filter = filter.add_directive(format!("{SPAN_TARGET}={spans}").parse().expect("a valid directive"));
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Buffered: one write(2) carries every line queued while the previous one was written.
    // At most LOG_QUEUE_LINES (~2 MB) wait; beyond that a request waits for the writer.
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let access_writer = writer.clone();
    let lines =
        tracing_subscriber::fmt::layer().with_writer(writer).with_span_events(FmtSpan::NONE).with_ansi(is_terminal);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match settings.format {
        LineFormat::Json => registry.with(lines.event_format(JsonLines)).with(span_export(traces)).try_init(),
        LineFormat::Text => registry.with(lines).with(span_export(traces)).try_init(),
    };
    if installed.is_ok() && settings.format == LineFormat::Json {
        let buffer = AccessBuffer { lines: Mutex::new(Vec::with_capacity(ACCESS_BUFFER_BYTES)), writer: access_writer };
        if ACCESS.set(buffer).is_ok() {
            start_access_flusher();
        }
    }
    LogGuard { _writer: guard }
}

/// Hands waiting access lines over every ACCESS_FLUSH_INTERVAL, for the life of the process.
fn start_access_flusher() {
    let spawned = std::thread::Builder::new().name("access-log-flush".into()).spawn(|| {
        loop {
            std::thread::sleep(ACCESS_FLUSH_INTERVAL);
            if let Some(access) = ACCESS.get() {
                access.flush();
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("could not start the access log's flusher ({e}); access lines are written when 32 KiB wait");
    }
}

fn span_export<S>(traces: Option<&TraceExport>) -> Option<OpenTelemetryLayer<S, SdkTracer>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Thread, source location and busy/idle time would cost clock reads and attributes on
    // every span for little: the span names and attributes say where the time went.
    traces.map(|traces| {
        tracing_opentelemetry::layer()
            .with_tracer(traces.tracer())
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
    })
}
