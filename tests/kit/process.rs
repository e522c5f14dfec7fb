//! The `users-api` binary as a child process, to signal, kill -9 and watch from /proc.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_users-api");

/// How long a spawned server may take to print its listening address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines kept per server for failure messages.
const LOG_TAIL: usize = 400;

/// A running `users-api serve` child process, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Starts `users-api serve` on a free port with `DATABASE_URL=database_url` and the given
    /// extra environment, and waits until it listens (it migrates first).
    pub fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", database_url)
            .env("LOG_FORMAT", "json")
            // Warnings and errors, plus the "listening" line this helper reads the port from.
            .env("LOG_LEVEL", "warn,users_api::server=info")
            // Off: several instances run at once and must not fight over the metrics port.
            .env("METRICS_ADDR", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in [
            "AUTH_JWT_SECRET",
            "AUTH_JWT_SECRET_FILE",
            "AUTH_JWKS_URL",
            "AUTH_ISSUER",
            "AUTH_AUDIENCE",
            "RATE_LIMIT_PER_SECOND",
            "RATE_LIMIT_BURST",
            "TRUST_FORWARDED_FOR",
            "DATABASE_PASSWORD",
            "SKIP_MIGRATIONS",
            // Traces only where a test asks for them.
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            command.env_remove(var);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));

        let logs = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_log_reader(stdout, logs.clone(), Some(addr_tx));
        spawn_log_reader(stderr, logs.clone(), None);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            match addr_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("users-api exited during startup ({status}); log:\n{}", tail(&logs));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        panic!("users-api did not listen within {STARTUP_TIMEOUT:?}; log:\n{}", tail(&logs));
                    }
                }
            }
        };
        Self { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Peak resident set size (VmHWM) in KiB, from /proc.
    pub fn vm_hwm_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident set size (VmRSS) in KiB, from /proc.
    pub fn vm_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// The server's threads whose name starts with `prefix`, sorted by name, each with its
    /// voluntary context switches so far (it blocked: a thread that waits for work wakes once
    /// for each time it got some), from /proc.
    pub fn threads(&self, prefix: &str) -> Vec<(String, u64)> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).expect("the server's threads");
        let mut threads: Vec<(String, u64)> = tasks
            .filter_map(|task| {
                let task = task.ok()?.path();
                let name = std::fs::read_to_string(task.join("comm")).ok()?.trim().to_owned();
                name.starts_with(prefix)
                    .then(|| (name, status_number(&task.join("status"), "voluntary_ctxt_switches:")))
            })
            .collect();
        threads.sort();
        threads
    }

    /// The last log lines (stdout and stderr), for failure messages.
    pub fn logs(&self) -> String {
        let all = tail(&self.logs);
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_log_reader(
    stream: impl std::io::Read + Send + 'static,
    logs: Arc<Mutex<VecDeque<String>>>,
    addr_tx: Option<mpsc::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        let mut addr_tx = addr_tx;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if addr_tx.is_some()
                && let Some(addr) = listening_addr(&line)
            {
                let _ = addr_tx.take().expect("checked").send(addr);
            }
            let mut logs = logs.lock().unwrap_or_else(|p| p.into_inner());
            if logs.len() == LOG_TAIL {
                logs.pop_front();
            }
            logs.push_back(line);
        }
    });
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != "listening" {
        return None;
    }
    value.get("addr")?.as_str()?.parse().ok()
}

fn tail(logs: &Mutex<VecDeque<String>>) -> String {
    let logs = logs.lock().unwrap_or_else(|p| p.into_inner());
    logs.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// A size field of /proc/<pid>/status (`VmRSS:`, `VmHWM:`) in KiB; 0 when it cannot be read.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    status_number(Path::new(&format!("/proc/{pid}/status")), field)
}

/// The number after `field` in a /proc `status` file (0 when it cannot be read).
fn status_number(path: &Path, field: &str) -> u64 {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
