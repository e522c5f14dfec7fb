//! Helpers shared by the reliability tests (`tests/reliability_*.rs`): spawn the real
//! `users-api` binary as a child process, give it a fresh PostgreSQL schema or a throwaway
//! PostgreSQL cluster, send raw HTTP, and classify what came back.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BIN: &str = env!("CARGO_BIN_EXE_users-api");

/// How long a spawned server may take to print its listening address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines kept per server for failure messages.
const LOG_TAIL: usize = 400;

/// Held by each reliability test for its whole run, so that no two of them (in one test
/// binary or in several, as cargo-nextest runs them) share the two cores: their latency and
/// memory figures are their own. An flock on a file under the target directory.
pub struct Serial(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

pub async fn serial() -> Serial {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-suite.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let lock = tokio::task::spawn_blocking(move || nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive))
        .await
        .expect("lock task");
    Serial(lock.unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// The binary under test
// ---------------------------------------------------------------------------------------------

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

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding port 0").port()
}

/// A random lowercase hex tag, for unique schema names, emails and application names.
pub fn random_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A temporary SQLite URL (the directory lives as long as the returned guard).
pub fn sqlite_url() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("users.db");
    let url = format!("sqlite://{}", path.display());
    (dir, path, url)
}

/// Opens a SQLite file the way an operator would after a crash and checks it.
pub struct SqliteCheck {
    pub integrity: String,
    /// Persistent in the file: `wal` once the service has opened it.
    pub journal_mode: String,
    pub rows: i64,
    pub duplicate_email_keys: i64,
}

pub fn check_sqlite(path: &Path) -> SqliteCheck {
    use deadpool_sqlite::rusqlite::Connection;
    let conn = Connection::open(path).expect("SQLite file opens");
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check runs");
    let journal_mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("journal_mode runs");
    let rows = conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0)).expect("count runs");
    let duplicate_email_keys = conn
        .query_row(
            "SELECT count(*) FROM (SELECT email_key FROM users GROUP BY email_key HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .expect("duplicate query runs");
    SqliteCheck { integrity, journal_mode, rows, duplicate_email_keys }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// The shared PostgreSQL the suite needs (trust auth, database `test`).
pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const PG_DATABASE: &str = "test";

/// Connects as the superuser; panics (fails the test, never skips) when PostgreSQL is unreachable.
pub async fn pg_connect(host: &str, port: u16, dbname: &str) -> tokio_postgres::Client {
    let conninfo = format!("host={host} port={port} user=postgres dbname={dbname} connect_timeout=10");
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {host}:{port} (database {dbname}) is unreachable: {e}. \
                 The reliability suite needs it (scripts/test starts it); this is a failure, not a skip."
        )
    });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh schema `rel_<random>` in the shared database, dropped by `cleanup` (or on drop).
pub struct PgSchema {
    pub schema: String,
    /// The `application_name` the API's connections carry, so faults hit only this test.
    pub application_name: String,
    admin: tokio_postgres::Client,
    dropped: bool,
}

impl PgSchema {
    pub async fn create() -> Self {
        let tag = random_tag();
        let schema = format!("rel_{tag}");
        let admin = pg_connect(PG_HOST, PG_PORT, PG_DATABASE).await;
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("creating the test schema");
        Self { application_name: format!("users-api-{schema}"), schema, admin, dropped: false }
    }

    /// The API's DATABASE_URL: this schema first on the search path, our application name.
    pub fn database_url(&self) -> String {
        format!(
            "postgres://postgres@{PG_HOST}:{PG_PORT}/{PG_DATABASE}?options=-csearch_path%3D{}&application_name={}",
            self.schema, self.application_name
        )
    }

    pub fn admin(&self) -> &tokio_postgres::Client {
        &self.admin
    }

    /// Rows in this schema's users table and the number of email keys held more than once.
    pub async fn users_and_duplicates(&self) -> (i64, i64) {
        let rows: i64 = self
            .admin
            .query_one(&format!("SELECT count(*) FROM {}.users", self.schema), &[])
            .await
            .expect("count")
            .get(0);
        let duplicates: i64 = self
            .admin
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT email_key FROM {}.users GROUP BY email_key HAVING count(*) > 1) d",
                    self.schema
                ),
                &[],
            )
            .await
            .expect("duplicates")
            .get(0);
        (rows, duplicates)
    }

    /// Terminates every backend of this test's API instance; returns how many were hit.
    pub async fn terminate_api_connections(&self) -> i64 {
        self.admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = $2 AND pid <> pg_backend_pid()",
                &[&self.application_name, &PG_DATABASE],
            )
            .await
            .expect("pg_terminate_backend")
            .len() as i64
    }

    pub async fn cleanup(mut self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
            .expect("dropping the test schema");
        self.dropped = true;
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // A failed test: drop the schema from a thread of our own (we may be inside a runtime).
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                let conninfo =
                    format!("host={PG_HOST} port={PG_PORT} user=postgres dbname={PG_DATABASE} connect_timeout=5");
                if let Ok((client, connection)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL cluster of our own (initdb in a temp dir, a free port), to stop, freeze and
/// restart under load without touching the shared server.
pub struct PgCluster {
    pub port: u16,
    bindir: PathBuf,
    dir: tempfile::TempDir,
    data: PathBuf,
    run_as_postgres: bool,
}

impl PgCluster {
    pub fn init() -> Self {
        let bindir = pg_bindir();
        let dir = tempfile::tempdir().expect("temp dir");
        let run_as_postgres = nix::unistd::geteuid().is_root();
        if run_as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("running as root, a `postgres` user is needed to run a PostgreSQL cluster");
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .expect("chown of the cluster dir");
        }
        let data = dir.path().join("data");
        let cluster = Self { port: free_port(), bindir, dir, data, run_as_postgres };
        let out = cluster
            .pg_command("initdb")
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&cluster.data)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start();
        cluster
    }

    fn pg_command(&self, program: &str) -> Command {
        let program = self.bindir.join(program);
        if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    pub fn database_url(&self, application_name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?application_name={application_name}", self.port)
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Stops the cluster the hard way (`-m immediate`: backends die, no checkpoint).
    pub fn stop_immediate(&self) {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", "immediate", "stop"])
            .output()
            .expect("running pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The postmaster and all its children.
    fn processes(&self) -> Vec<i32> {
        let Ok(pidfile) = std::fs::read_to_string(self.data.join("postmaster.pid")) else {
            return Vec::new();
        };
        let Some(postmaster) = pidfile.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<i32>().ok());
                if ppid == Some(postmaster) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// SIGSTOP every process of the cluster: connections are accepted by the kernel but
    /// nothing answers — a hung database, the case only timeouts can handle.
    pub fn freeze(&self) -> usize {
        let pids = self.processes();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
        }
        pids.len()
    }

    pub fn thaw(&self) {
        for pid in self.processes() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.thaw();
        let _ = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The PostgreSQL server binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin.
fn pg_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, bin)| bin)
        .expect("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin; set PG_BINDIR")
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

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
        if problem.get("status").and_then(serde_json::Value::as_u64) != Some(u64::from(self.status)) {
            return Some(format!("status member does not match: {problem}"));
        }
        for member in ["type", "title", "detail", "code"] {
            if !problem.get(member).is_some_and(serde_json::Value::is_string) {
                return Some(format!("member {member:?} missing: {problem}"));
            }
        }
        None
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

/// GET /users, the whole list.
pub async fn list_users(client: &reqwest::Client, server: &Server) -> Vec<serde_json::Value> {
    let response = client.get(server.url("/users")).send().await.expect("GET /users");
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

/// Percentile (0–100) of a list of durations, in milliseconds.
pub fn percentile_ms(latencies: &mut [Duration], p: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort();
    let rank = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
    latencies[rank.min(latencies.len() - 1)].as_secs_f64() * 1000.0
}

/// One line a test prints for docs/RELIABILITY.md (grep `RELIABILITY` in the test output).
pub fn report(test: &str, figures: &str) {
    println!("RELIABILITY {test}: {figures}");
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// One request of a mixed load and what came of it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub kind: &'static str,
    /// A test-defined phase (healthy, outage, …) current when the request was sent.
    pub phase: u8,
    /// The phase current when the answer (or the failure) came back.
    pub phase_end: u8,
    pub outcome: Result<Reply, String>,
    /// For creates: the email sent.
    pub email: Option<String>,
}

impl Sample {
    pub fn status(&self) -> Option<u16> {
        self.outcome.as_ref().ok().map(|r| r.status)
    }

    /// Sent and answered within one phase `p`.
    pub fn within(&self, p: u8) -> bool {
        self.phase == p && self.phase_end == p
    }

    pub fn latency(&self) -> Option<Duration> {
        self.outcome.as_ref().ok().map(|r| r.latency)
    }
}

/// The request kinds of the mixed load, cycled by each worker.
pub const MIXED: &[&str] = &["create", "get", "create", "page", "ready", "create", "health", "list"];

/// Sends one request of `kind` to the server at `base` (`http://host:port`).
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    kind: &'static str,
    email: &str,
    id: i64,
) -> Result<Reply, String> {
    let started = Instant::now();
    let request = match kind {
        "create" => client.post(format!("{base}/user")).json(&user_body("Load Tester", email)),
        "get" => client.get(format!("{base}/users/{id}")),
        "page" => client.get(format!("{base}/users?limit=20&after={}", (id - 20).max(0))),
        "list" => client.get(format!("{base}/users")),
        "page1000" => client.get(format!("{base}/users?limit=1000")),
        "ready" => client.get(format!("{base}/ready")),
        "health" => client.get(format!("{base}/health")),
        other => panic!("unknown request kind {other}"),
    };
    match request.send().await {
        Ok(response) => Reply::from_reqwest(response, started).await.map_err(|e| format!("{BODY_ERROR}: {e:?}")),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// How a sample's error starts when the status came but the body broke off.
pub const BODY_ERROR: &str = "reading the body";

/// Probes of the two health endpoints.
pub const PROBES: &[&str] = &["ready", "health"];

/// `workers` loops sending requests of `kinds` (in turn) to `base` until `stop` is set, pausing
/// `pause` after each; each sample is tagged with the value of `phase` when its request was sent
/// and when its answer came.
#[allow(clippy::too_many_arguments)]
pub fn spawn_load(
    client: reqwest::Client,
    base: String,
    kinds: &'static [&'static str],
    pause: Duration,
    workers: usize,
    tag: String,
    phase: Arc<std::sync::atomic::AtomicU8>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    use std::sync::atomic::Ordering;
    (0..workers)
        .map(|w| {
            let (client, base, tag, phase, stop) =
                (client.clone(), base.clone(), tag.clone(), phase.clone(), stop.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut last_id = 1i64;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let kind = kinds[(n + w) % kinds.len()];
                    n += 1;
                    let email = format!("{tag}.w{w}.n{n}@load.test");
                    let current = phase.load(Ordering::Relaxed);
                    let outcome = send(&client, &base, kind, &email, last_id).await;
                    if kind == "create"
                        && let Ok(reply) = &outcome
                        && reply.status == 201
                        && let Some(id) = reply.json().and_then(|u| u["id"].as_i64())
                    {
                        last_id = id;
                    }
                    samples.push(Sample {
                        kind,
                        phase: current,
                        phase_end: phase.load(Ordering::Relaxed),
                        outcome,
                        email: (kind == "create").then_some(email),
                    });
                    tokio::time::sleep(pause).await;
                    // An unavailable service answers fast; do not spin the two cores on it.
                    if samples.last().and_then(Sample::status) != Some(201)
                        && samples.last().and_then(Sample::status) != Some(200)
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                samples
            })
        })
        .collect()
}

pub async fn collect(handles: Vec<tokio::task::JoinHandle<Vec<Sample>>>) -> Vec<Sample> {
    let mut all = Vec::new();
    for handle in handles {
        all.extend(
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .expect("load workers stop within 60 s")
                .expect("load worker panicked"),
        );
    }
    all
}
