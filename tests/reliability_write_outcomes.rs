//! Definite write outcomes (both stores): under 16 concurrent writers, a database that stops
//! answering for 6 s (PostgreSQL frozen with SIGSTOP, a cluster of the test's own; SQLite with
//! another process holding the write lock) never turns a stored write into a "retry" answer.
//! Every 201 is stored, no write answered 503 is stored, and a write whose commit got no answer
//! is 504 `outcome_unknown` without Retry-After. A SQLite commit whose WAL `fsync` fails is
//! 504 `outcome_unknown` too: whether the batch stays depends on what happens next.

mod kit;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kit::http::{client, expect_problem, list_users, user_body};
use kit::load::report;
use kit::pg::PgCluster;
use kit::process::Server;
use kit::sqlite::{FailingWalSync, TempSqlite, check_sqlite};

const WRITERS: usize = 16;
const FAULT: Duration = Duration::from_secs(6);
const DB_TIMEOUT_SECS: u64 = 2;
/// Every answer comes by the write's deadline plus the commit grace (0.75 s), with room for load.
const ANSWER_BOUND: Duration = Duration::from_secs(DB_TIMEOUT_SECS + 3);

#[derive(Debug)]
struct Outcome {
    email: String,
    status: u16,
    code: Option<String>,
    retry_after: bool,
    latency: Duration,
}

fn server_env() -> Vec<(&'static str, &'static str)> {
    vec![("DATABASE_TIMEOUT_SECS", "2"), ("DATABASE_MAX_CONNECTIONS", "4"), ("REQUEST_TIMEOUT_SECS", "10")]
}

/// `WRITERS` clients creating users with unique emails until `stop`.
fn start_writers(server: &Server, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    let tag = kit::random_tag();
    (0..WRITERS)
        .map(|w| {
            let (url, stop, tag) = (server.url("/user"), stop.clone(), tag.clone());
            tokio::spawn(async move {
                let http = client();
                let mut outcomes = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let email = format!("{tag}.w{w}.{n}@outcome.test");
                    let sent = Instant::now();
                    let response = http
                        .post(&url)
                        .json(&user_body("Outcome Writer", &email))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("POST for {email} got no answer: {e}"));
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    let code = body["code"].as_str().map(str::to_owned);
                    outcomes.push(Outcome { email, status, code, retry_after, latency: sent.elapsed() });
                    if status != 201 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                outcomes
            })
        })
        .collect()
}

/// Checks every outcome against what is stored; returns (201s, 503s, 504s, 504s stored).
fn check(outcomes: &[Outcome], stored: &HashSet<String>) -> (usize, usize, usize, usize) {
    let (mut created, mut unavailable, mut unknown, mut unknown_stored) = (0, 0, 0, 0);
    for o in outcomes {
        assert!(o.latency < ANSWER_BOUND, "{o:?}: slower than {ANSWER_BOUND:?}");
        match o.status {
            201 => {
                assert!(stored.contains(&o.email), "{o:?}: answered 201 but not stored");
                created += 1;
            }
            503 => {
                assert!(!stored.contains(&o.email), "{o:?}: answered 503 (retry) but stored");
                assert!(o.retry_after, "{o:?}: a 503 carries Retry-After");
                assert_eq!(o.code.as_deref(), Some("service_unavailable"), "{o:?}");
                unavailable += 1;
            }
            504 => {
                assert_eq!(o.code.as_deref(), Some("outcome_unknown"), "{o:?}");
                assert!(!o.retry_after, "{o:?}: an unknown outcome does not invite a blind retry");
                unknown += 1;
                unknown_stored += usize::from(stored.contains(&o.email));
            }
            _ => panic!("{o:?}: unexpected status"),
        }
    }
    (created, unavailable, unknown, unknown_stored)
}

async fn collect(handles: Vec<tokio::task::JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("writer task"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_frozen_under_writers_never_answers_503_for_a_stored_write() {
    let _serial = kit::load::serial().await;
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::init).await.expect("initdb"));
    let app = format!("users-api-outcome-{}", kit::random_tag());
    let server = Server::start(&cluster.database_url(&app), &server_env());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&server, stop.clone());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(cluster.freeze() > 1, "froze the postmaster and its children");
    tokio::time::sleep(FAULT).await;
    cluster.thaw();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = collect(writers).await;

    let admin = kit::pg::pg_connect("127.0.0.1", cluster.port, "postgres").await;
    let stored: HashSet<String> =
        admin.query("SELECT email FROM users", &[]).await.expect("stored emails").iter().map(|r| r.get(0)).collect();
    let (created, unavailable, unknown, unknown_stored) = check(&outcomes, &stored);
    assert!(unavailable > 0, "the freeze was felt (503s)");
    assert!(created > 0, "writes succeeded around the freeze");
    report(
        "postgres_frozen_under_writers_never_answers_503_for_a_stored_write",
        &format!(
            "{WRITERS} writers, frozen {FAULT:?}: {} POSTs, 201 ×{created} (all stored), 503 ×{unavailable} (none stored), \
             504 outcome_unknown ×{unknown} ({unknown_stored} of them stored); bound {ANSWER_BOUND:?}",
            outcomes.len()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_write_lock_held_by_another_process_never_answers_503_for_a_stored_write() {
    let _serial = kit::load::serial().await;
    let db = TempSqlite::new();
    let (path, url) = (db.path.clone(), db.url.clone());
    let server = Server::start(&url, &server_env());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&server, stop.clone());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Another process takes SQLite's write lock and keeps it for FAULT.
    let script = format!(
        "import sqlite3, sys, time\n\
         c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n\
         c.execute('BEGIN IMMEDIATE')\n\
         print('locked', flush=True)\n\
         time.sleep({})\n\
         c.execute('ROLLBACK')\n",
        FAULT.as_secs()
    );
    let mut locker = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (it holds the write lock from another process)");
    let stdout = locker.stdout.take().expect("piped");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("reader")
    .expect("locker output");
    assert_eq!(line.trim(), "locked", "the other process holds the write lock");
    let status = tokio::task::spawn_blocking(move || locker.wait()).await.expect("wait").expect("locker exit");
    assert!(status.success(), "the locker released the lock");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = collect(writers).await;

    let conn = deadpool_sqlite::rusqlite::Connection::open(&path).expect("open SQLite");
    let stored: HashSet<String> = conn
        .prepare("SELECT email FROM users")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("stored emails");
    let (created, unavailable, unknown, _) = check(&outcomes, &stored);
    assert!(unavailable > 0, "the held lock was felt (503s)");
    assert!(created > 0, "writes succeeded around the held lock");
    assert_eq!(unknown, 0, "a held lock leaves SQLite sure of every commit's outcome");
    report(
        "sqlite_write_lock_held_by_another_process_never_answers_503_for_a_stored_write",
        &format!(
            "{WRITERS} writers, write lock held {FAULT:?} by another process: {} POSTs, 201 ×{created} (all stored), \
             503 ×{unavailable} (none stored), 504 ×0; bound {ANSWER_BOUND:?}",
            outcomes.len()
        ),
    );
}

/// A `COMMIT` whose WAL `fsync` fails (EIO, from a preloaded library) has already written the
/// batch's frames, commit frame included. If the process lives on, its next commit overwrites
/// them: not stored. If it is killed first, recovery finds them whole: stored. 503 ("nothing
/// happened, retry") would be false in the second case, so both answer 504 `outcome_unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commit_whose_wal_fsync_fails_is_outcome_unknown_and_may_be_stored() {
    let db = TempSqlite::new();
    let disk = FailingWalSync::build();
    let faulty_env = disk.env();
    let faulty_env: Vec<(&str, &str)> = faulty_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Server::start(&db.url, &faulty_env);
    let http = client();
    let tag = kit::random_tag();
    let email = |what: &str| format!("{tag}.{what}@fsync.test");
    let post = |url: String, email: String| {
        let http = http.clone();
        async move { http.post(url).json(&user_body("Sync Fault", &email)).send().await.expect("an answer") }
    };
    let unknown = |response: reqwest::Response| async move {
        assert!(response.headers().get("retry-after").is_none(), "no Retry-After on outcome_unknown");
        expect_problem(response, 504, "outcome_unknown").await
    };

    assert_eq!(post(server.url("/user"), email("before")).await.status(), 201);
    disk.arm();
    unknown(post(server.url("/user"), email("overwritten")).await).await;
    disk.disarm();
    assert_eq!(post(server.url("/user"), email("after")).await.status(), 201, "the writer works on after the fault");

    disk.arm();
    unknown(post(server.url("/user"), email("recovered")).await).await;
    server.kill9();
    disk.disarm();
    let server = Server::start(&db.url, &[]);
    let stored: HashSet<String> = list_users(&http, &server.url("/users"))
        .await
        .iter()
        .map(|u| u["email"].as_str().expect("email").to_owned())
        .collect();
    assert!(stored.contains(&email("before")) && stored.contains(&email("after")), "every 201 is stored: {stored:?}");
    assert!(!stored.contains(&email("overwritten")), "the process lived on and overwrote the failed batch: {stored:?}");
    assert!(
        stored.contains(&email("recovered")),
        "killed before another commit, the failed batch was recovered: {stored:?}"
    );
    let check = check_sqlite(&db.path);
    assert_eq!((check.integrity.as_str(), check.rows, check.duplicate_email_keys), ("ok", 3, 0));
    report(
        "sqlite_commit_whose_wal_fsync_fails_is_outcome_unknown_and_may_be_stored",
        "WAL fsync failing (EIO): 504 outcome_unknown twice; lived on → not stored, killed → stored by recovery",
    );
}
