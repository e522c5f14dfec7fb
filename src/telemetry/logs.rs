use std::cell::RefCell;
use std::io::Write as _;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracer;
use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
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

/// With JSON lines, access lines wait in buffers that a thread of their own writes to stdout: a
/// write to the log writer's queue per request woke its thread for each line and cost more than
/// the rest of a `GET /health`. nginx's `access_log … buffer= flush=`.
static ACCESS: OnceLock<&'static AccessBuffer> = OnceLock::new();
/// A full buffer wakes the access writer at once…
const ACCESS_BUFFER_BYTES: usize = 32 * 1024;
/// …and a line waits at most this long (plus a write) before it is written.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Beyond this much waiting in one buffer (stdout stalled), requests wait for the writer rather
/// than lines being dropped or memory growing without bound.
const ACCESS_MAX_WAITING_BYTES: usize = 2 * 1024 * 1024;
/// One buffer per thread that logs (tokio's workers: one per core), so that two cores never
/// append to the same memory; threads beyond this share them.
const ACCESS_SHARDS: usize = 8;

/// The lines of the threads that share it. Aligned apart, so that two shards never share a
/// cache line.
#[repr(align(128))]
struct Shard {
    lines: Mutex<Vec<u8>>,
    /// Wakes requests waiting for room.
    room: Condvar,
}

struct AccessBuffer {
    shards: [Shard; ACCESS_SHARDS],
    /// Set, with `full` notified, when a shard holds a buffer's worth.
    full_flag: Mutex<bool>,
    full: Condvar,
}

thread_local! {
    /// This thread's shard, handed out in turn at its first line.
    static SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % ACCESS_SHARDS
    };
}

impl AccessBuffer {
    fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| Shard { lines: Mutex::new(Vec::new()), room: Condvar::new() }),
            full_flag: Mutex::new(false),
            full: Condvar::new(),
        }
    }

    fn push(&self, line: &[u8]) {
        let shard = &self.shards[SHARD.with(|i| *i)];
        let mut lines = shard.lines.lock().unwrap_or_else(PoisonError::into_inner);
        while lines.len() >= ACCESS_MAX_WAITING_BYTES {
            lines = shard.room.wait(lines).unwrap_or_else(PoisonError::into_inner);
        }
        let before = lines.len();
        lines.extend_from_slice(line);
        if before < ACCESS_BUFFER_BYTES && lines.len() >= ACCESS_BUFFER_BYTES {
            drop(lines);
            *self.full_flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.full.notify_one();
        }
    }

    /// Waits until a shard holds a buffer's worth or the interval is over.
    fn wait(&self) {
        let mut full = self.full_flag.lock().unwrap_or_else(PoisonError::into_inner);
        if !*full {
            full = self.full.wait_timeout(full, ACCESS_FLUSH_INTERVAL).unwrap_or_else(PoisonError::into_inner).0;
        }
        *full = false;
    }

    /// The lines waiting in shard `i`, swapped with `spare` (empty), so that buffers are reused.
    fn take(&self, i: usize, spare: &mut Vec<u8>) {
        let shard = &self.shards[i];
        let mut lines = shard.lines.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *lines, spare);
        if spare.len() >= ACCESS_MAX_WAITING_BYTES {
            shard.room.notify_all();
        }
    }

    fn flush(&self) {
        for i in 0..ACCESS_SHARDS {
            let mut waiting = Vec::new();
            self.take(i, &mut waiting);
            write_lines(&waiting);
        }
    }
}

/// Whole lines, in one locked write: the log writer thread writes to stdout too.
fn write_lines(lines: &[u8]) {
    if !lines.is_empty() {
        let _ = std::io::stdout().lock().write_all(lines);
    }
}

thread_local! {
    static ACCESS_LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes one access-log line when the filter lets `ACCESS_TARGET` at INFO through. With JSON
/// lines (production) it goes to the access buffer, the same bytes `JsonLines` would write;
/// otherwise it is a tracing event like any other.
pub fn log_access(entry: &AccessEntry<'_>) {
    // Set only when the filter let access lines through at start-up; the filter is never
    // reloaded, and asking it again cost ~400 instructions a request.
    let Some(access) = ACCESS.get() else {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = entry.request_id,
            method = entry.method,
            route = entry.route,
            status = entry.status,
            latency_ms = entry.latency_micros as f64 / 1000.0,
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

/// Keep until exit: dropping it writes the waiting access lines, then flushes the log writer's
/// queue to stdout.
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
/// queued. Access lines (JSON) have a writer thread of their own (`start_access_writer`).
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
    let lines =
        tracing_subscriber::fmt::layer().with_writer(writer).with_span_events(FmtSpan::NONE).with_ansi(is_terminal);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match settings.format {
        LineFormat::Json => registry.with(lines.event_format(JsonLines)).with(span_export(traces)).try_init(),
        LineFormat::Text => registry.with(lines).with(span_export(traces)).try_init(),
    };
    let access_lines = tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO);
    if installed.is_ok() && settings.format == LineFormat::Json && access_lines {
        start_access_writer();
    }
    LogGuard { _writer: guard }
}

/// Writes the waiting access lines every ACCESS_FLUSH_INTERVAL, or as soon as 32 KiB wait, for
/// the life of the process. Without this thread, access lines stay tracing events (or, when the
/// filter drops them, are not written at all).
fn start_access_writer() {
    // Lives as long as the process, as the thread does.
    let access: &'static AccessBuffer = Box::leak(Box::new(AccessBuffer::new()));
    let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || {
        let mut spares: [Vec<u8>; ACCESS_SHARDS] = std::array::from_fn(|_| Vec::new());
        loop {
            access.wait();
            // Shard after shard: lines of different threads may be written up to an interval
            // out of order; each carries its timestamp.
            for (i, spare) in spares.iter_mut().enumerate() {
                access.take(i, spare);
                write_lines(spare);
                spare.clear();
                spare.shrink_to(2 * ACCESS_BUFFER_BYTES); // after a stall, give the backlog's room back
            }
        }
    });
    match spawned {
        Ok(_) => {
            let _ = ACCESS.set(access);
        }
        Err(e) => eprintln!("could not start the access log's writer ({e}); access lines go through the log writer"),
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn lines_pushed_from_several_threads_are_each_taken_once_and_whole() {
        const THREADS: usize = 4;
        const LINES: usize = 5_000;
        let access = AccessBuffer::new();
        let pushing = AtomicBool::new(true);
        let mut taken = Vec::new();
        std::thread::scope(|scope| {
            let pushers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let access = &access;
                    scope.spawn(move || {
                        for n in 0..LINES {
                            access.push(format!("{{\"thread\":{t},\"n\":{n}}}\n").as_bytes());
                        }
                    })
                })
                .collect();
            // The writer's side, taking while the lines arrive.
            let taker = scope.spawn(|| {
                let mut all = Vec::new();
                let mut spare = Vec::new();
                while pushing.load(Ordering::Relaxed) {
                    for i in 0..ACCESS_SHARDS {
                        access.take(i, &mut spare);
                        all.extend_from_slice(&spare);
                        spare.clear();
                    }
                }
                all
            });
            for pusher in pushers {
                pusher.join().unwrap();
            }
            pushing.store(false, Ordering::Relaxed);
            taken = taker.join().unwrap();
        });
        for i in 0..ACCESS_SHARDS {
            let mut rest = Vec::new();
            access.take(i, &mut rest);
            taken.extend_from_slice(&rest);
        }
        let text = String::from_utf8(taken).unwrap();
        let mut seen = HashSet::new();
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).expect(line);
            assert!(seen.insert((line["thread"].as_u64().unwrap(), line["n"].as_u64().unwrap())), "twice: {line}");
        }
        assert_eq!(seen.len(), THREADS * LINES);
    }
}
