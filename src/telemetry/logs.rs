use opentelemetry_sdk::trace::SdkTracer;
use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::json_lines::JsonLines;
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

/// Log lines that may wait for the writer thread (the crate's default, 128k, let a /health
/// flood queue 30 MB of lines).
const LOG_QUEUE_LINES: usize = 8 * 1024;

/// Installs the global subscriber; logs go to stdout, one line per event. A background thread
/// does the writing so that requests never wait on stdout; it blocks (rather than drops lines)
/// when it falls behind by LOG_QUEUE_LINES. Keep the guard until exit: dropping it flushes what is queued.
/// With `traces`, the spans of `SPAN_TARGET` go to it whatever the log level; without, they are off.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_logging(settings: &LogSettings, traces: Option<&TraceExport>) -> WorkerGuard {
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
    let lines =
        tracing_subscriber::fmt::layer().with_writer(writer).with_span_events(FmtSpan::NONE).with_ansi(is_terminal);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match settings.format {
        LineFormat::Json => registry.with(lines.event_format(JsonLines)).with(span_export(traces)).try_init(),
        LineFormat::Text => registry.with(lines).with(span_export(traces)).try_init(),
    };
    guard
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
