//! PostgreSQL: a fresh schema per test in the shared server at 127.0.0.1:5432, and private
//! clusters (`PgCluster`) to stop, freeze and restart without touching the shared one.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{free_port, random_tag};

/// The shared PostgreSQL the suite needs (trust auth, database `test`).
pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const PG_DATABASE: &str = "test";
/// The shared server as its superuser.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Connects as the superuser; panics (fails the test, never skips) when PostgreSQL is unreachable.
pub async fn pg_connect(host: &str, port: u16, dbname: &str) -> tokio_postgres::Client {
    let conninfo = format!("host={host} port={port} user=postgres dbname={dbname} connect_timeout=10");
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {host}:{port} (database {dbname}) is unreachable: {e}. \
                 The tests need it (scripts/test starts it); this is a failure, not a skip."
        )
    });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh schema `test_<random>` in the shared database, dropped by `cleanup` (or on drop).
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
        let schema = format!("test_{tag}");
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
        let cluster = Self::empty();
        run_checked(
            cluster
                .pg_command("initdb")
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "-D"])
                .arg(&cluster.data),
            "initdb",
        );
        cluster.start();
        cluster
    }

    /// A hot-standby streaming replica of `primary` (`pg_basebackup -R`: initdb's defaults allow
    /// replication connections from 127.0.0.1), started on a port of its own. Call
    /// `wait_streaming` before relying on it.
    pub fn replica_of(primary: &PgCluster) -> Self {
        let replica = Self::empty();
        run_checked(
            replica
                .pg_command("pg_basebackup")
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres"])
                .args(["-X", "stream", "-R", "--no-sync", "-D"])
                .arg(&replica.data),
            "pg_basebackup",
        );
        replica.start();
        replica
    }

    /// Waits until this replica's WAL receiver streams from its primary; panics past `timeout`.
    pub async fn wait_streaming(&self, timeout: std::time::Duration) {
        let client = pg_connect("127.0.0.1", self.port, "postgres").await;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status: Option<String> = client
                .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
                .await
                .expect("reading pg_stat_wal_receiver")
                .map(|row| row.get(0));
            if status.as_deref() == Some("streaming") {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the replica is not streaming after {timeout:?}: {status:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A data directory in a fresh temp dir (owned by `postgres` when running as root) and a
    /// free port; nothing created or started yet.
    fn empty() -> Self {
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
        Self { port: free_port(), bindir, dir, data, run_as_postgres }
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
        let log = self.dir.path().join("server.log");
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .expect("running pg_ctl start");
        if !out.status.success() {
            // The server's own log says why it did not start.
            fail_with_output("pg_ctl start", &out, &std::fs::read_to_string(&log).unwrap_or_default());
        }
    }

    /// Stops the cluster the hard way (`-m immediate`: backends die, no checkpoint).
    pub fn stop_immediate(&self) {
        run_checked(
            self.pg_command("pg_ctl").arg("-D").arg(&self.data).args(["-w", "-t", "60", "-m", "immediate", "stop"]),
            "pg_ctl stop",
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

/// Runs a PostgreSQL tool to completion; panics with its output when it fails.
fn run_checked(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    if !out.status.success() {
        fail_with_output(what, &out, "");
    }
}

fn fail_with_output(what: &str, out: &std::process::Output, context: &str) -> ! {
    panic!("{what} failed: {}{}\n{context}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
