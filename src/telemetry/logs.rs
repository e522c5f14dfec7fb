use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use super::json_lines::JsonLines;
use crate::config::{LogConfig, LogFormat};

/// Log lines that may wait for the writer thread (the crate's default, 128k, let a /health
/// flood queue 30 MB of lines).
const LOG_QUEUE_LINES: usize = 8 * 1024;

/// Installs the global subscriber; logs go to stdout, one line per event. A background thread
/// does the writing so that requests never wait on stdout; it blocks (rather than drops lines)
/// when it falls behind by LOG_QUEUE_LINES. Keep the guard until exit: dropping it flushes what is queued.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_logging(config: &LogConfig) -> WorkerGuard {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|e| {
        eprintln!("invalid LOG_LEVEL {:?} ({e}); using info", config.log_level);
        EnvFilter::new("info")
    });
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Buffered: one write(2) carries every line queued while the previous one was written.
    // At most LOG_QUEUE_LINES (~2 MB) wait; beyond that a request waits for the writer.
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_ansi(is_terminal);
    let _ = match config.log_format {
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
