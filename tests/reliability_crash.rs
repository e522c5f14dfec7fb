//! Crash safety: concurrent POSTs while the server is killed with SIGKILL, restarted, killed
//! again. Every write answered 201 must be there afterwards, under the id it was given; no email
//! is stored twice; the database opens cleanly.

mod kit;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kit::http::{client, list_users, user_body};
use kit::load::report;
use kit::pg::PgSchema;
use kit::process::Server;

const CYCLES: usize = 8;
const WORKERS: usize = 16;
/// Acknowledged writes to wait for in each cycle before the kill (so the kill lands under load).
const ACKS_BEFORE_KILL: u64 = 250;
/// Upper bound on a cycle's load phase, so a stuck server fails the test instead of hanging it.
const CYCLE_LOAD_LIMIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Ledger {
    /// Email (as sent) → id, for every POST answered 201.
    acked: HashMap<String, i64>,
    /// Sent, but the kill cut the connection before an answer: the write may or may not exist.
    unknown: HashSet<String>,
    /// Retried after a restart and refused as `email_taken`: written before the crash, unacknowledged.
    committed_unacked: HashSet<String>,
    /// Anything outside 201 / 503 / a cut connection.
    unexpected: Vec<String>,
    requests: u64,
    shed_503: u64,
    cut_by_kill: Vec<usize>,
    acked_per_cycle: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    Postgres,
}

async fn post(client: &reqwest::Client, server: &Server, email: &str) -> Result<reqwest::Response, reqwest::Error> {
    client.post(server.url("/user")).json(&user_body("Crash Tester", email)).send().await
}

/// Runs the kill/restart cycles against `database_url` and returns the ledger plus the final
/// list of users as the API reports it after one more restart.
async fn kill_restart_cycles(database_url: &str, store: Store) -> (Ledger, Vec<serde_json::Value>) {
    let tag = kit::random_tag();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let env = [("DATABASE_MAX_CONNECTIONS", "8")];

    for cycle in 0..CYCLES {
        let mut server = Server::start(database_url, &env);
        let http = client();

        // What the previous kill left undecided is decided now: either the write is there
        // (email_taken) or it was never committed (201 now).
        let undecided: Vec<String> = ledger.lock().unwrap().unknown.drain().collect();
        for email in undecided {
            let reply = post(&http, &server, &email).await.expect("retry after restart");
            let status = reply.status().as_u16();
            let body: serde_json::Value = reply.json().await.unwrap_or_default();
            let mut l = ledger.lock().unwrap();
            match status {
                201 => {
                    l.acked.insert(email, body["id"].as_i64().expect("201 has an id"));
                }
                400 if body["code"] == "email_taken" => {
                    l.committed_unacked.insert(email);
                }
                _ => l.unexpected.push(format!("retry of {email}: {status} {body}")),
            }
        }
        // Acknowledged writes of earlier cycles are still there, and uniqueness ignores case.
        let earlier: Vec<String> = ledger.lock().unwrap().acked.keys().take(20).cloned().collect();
        for email in earlier {
            let shouted = email.to_uppercase();
            let reply = post(&http, &server, &shouted).await.expect("case variant");
            let status = reply.status().as_u16();
            let body: serde_json::Value = reply.json().await.unwrap_or_default();
            if !(status == 400 && body["code"] == "email_taken") {
                ledger.lock().unwrap().unexpected.push(format!("{shouted} after restart: {status} {body}"));
            }
        }

        let stop = Arc::new(AtomicBool::new(false));
        let acked_now = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let (stop, acked_now, cut, ledger) = (stop.clone(), acked_now.clone(), cut.clone(), ledger.clone());
            let http = http.clone();
            let url = server.url("/user");
            let tag = tag.clone();
            workers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let email = format!("{tag}.c{cycle}.w{w}.n{n}@crash.test");
                    let outcome = http.post(&url).json(&user_body("Crash Tester", &email)).send().await;
                    let outcome = match outcome {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            r.json::<serde_json::Value>().await.map(|b| (status, b))
                        }
                        Err(e) => Err(e),
                    };
                    let mut l = ledger.lock().unwrap();
                    l.requests += 1;
                    match outcome {
                        Ok((201, body)) => {
                            l.acked.insert(email, body["id"].as_i64().expect("201 has an id"));
                            acked_now.fetch_add(1, Ordering::Relaxed);
                        }
                        // Shed or unavailable: not an acknowledgement, and (PostgreSQL timeout)
                        // possibly written: undecided.
                        Ok((503, _)) => {
                            l.shed_503 += 1;
                            l.unknown.insert(email);
                        }
                        Ok((status, body)) => l.unexpected.push(format!("{email}: {status} {body}")),
                        // Refused at connect: never reached a server (the kill already happened).
                        Err(e) if e.is_connect() => break,
                        Err(_) => {
                            cut.fetch_add(1, Ordering::Relaxed);
                            l.unknown.insert(email);
                        }
                    }
                }
            }));
        }

        let started = Instant::now();
        while acked_now.load(Ordering::Relaxed) < ACKS_BEFORE_KILL {
            assert!(
                started.elapsed() < CYCLE_LOAD_LIMIT,
                "{store:?} cycle {cycle}: only {} writes acknowledged in {CYCLE_LOAD_LIMIT:?}; log:\n{}",
                acked_now.load(Ordering::Relaxed),
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Vary the moment of the kill from cycle to cycle (deterministically).
        tokio::time::sleep(Duration::from_millis(37 * cycle as u64 % 150)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            tokio::time::timeout(Duration::from_secs(40), worker)
                .await
                .expect("workers stop once the server is gone")
                .expect("worker panicked");
        }
        let mut l = ledger.lock().unwrap();
        l.cut_by_kill.push(cut.load(Ordering::Relaxed) as usize);
        l.acked_per_cycle.push(acked_now.load(Ordering::Relaxed));
    }

    // One more start: decide the last cycle's undecided writes, then read everything back.
    let mut server = Server::start(database_url, &env);
    let http = client();
    let undecided: Vec<String> = ledger.lock().unwrap().unknown.drain().collect();
    for email in undecided {
        let reply = post(&http, &server, &email).await.expect("final retry");
        let status = reply.status().as_u16();
        let body: serde_json::Value = reply.json().await.unwrap_or_default();
        let mut l = ledger.lock().unwrap();
        match status {
            201 => {
                l.acked.insert(email, body["id"].as_i64().expect("id"));
            }
            400 if body["code"] == "email_taken" => {
                l.committed_unacked.insert(email);
            }
            _ => l.unexpected.push(format!("final retry of {email}: {status} {body}")),
        }
    }
    let users = list_users(&http, &server.url("/users")).await;
    // The database is checked after a crash, not after a clean close.
    server.kill9();
    let ledger = Arc::try_unwrap(ledger).ok().expect("workers done").into_inner().unwrap();
    (ledger, users)
}

/// The promises, checked against the final list; returns writes lost.
fn check(store: Store, ledger: &Ledger, users: &[serde_json::Value]) -> usize {
    assert!(
        ledger.unexpected.is_empty(),
        "{store:?}: unexpected answers: {:#?}",
        &ledger.unexpected[..ledger.unexpected.len().min(20)]
    );
    let by_email: HashMap<&str, i64> =
        users.iter().map(|u| (u["email"].as_str().expect("email"), u["id"].as_i64().expect("id"))).collect();
    let mut keys = HashSet::new();
    for user in users {
        let key = user["email"].as_str().unwrap().to_lowercase();
        assert!(keys.insert(key.clone()), "{store:?}: email {key} stored twice");
    }
    let lost: Vec<_> = ledger.acked.iter().filter(|(email, id)| by_email.get(email.as_str()) != Some(id)).collect();
    assert!(
        lost.is_empty(),
        "{store:?}: {} acknowledged writes lost or moved, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    for email in &ledger.committed_unacked {
        assert!(by_email.contains_key(email.as_str()), "{store:?}: {email} was refused as taken but is absent");
    }
    let ids: Vec<i64> = users.iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{store:?}: GET /users is not ordered by id");
    assert!(ledger.acked_per_cycle.iter().all(|n| *n >= ACKS_BEFORE_KILL), "every cycle ran under load");
    assert!(
        ledger.cut_by_kill.iter().sum::<usize>() > 0,
        "{store:?}: no request was in flight at any kill — the test did not test anything"
    );
    lost.len()
}

fn summary(store: Store, ledger: &Ledger, users: usize, lost: usize, elapsed: Duration) -> String {
    format!(
        "store={store:?} cycles={CYCLES} workers={WORKERS} requests={} acknowledged={} lost={lost} \
         unanswered_at_kill_per_cycle={:?} committed_but_unacknowledged={} shed_503={} rows_after={users} elapsed={:.1}s",
        ledger.requests,
        ledger.acked.len(),
        ledger.cut_by_kill,
        ledger.committed_unacked.len(),
        ledger.shed_503,
        elapsed.as_secs_f64()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_write_through_repeated_sigkill() {
    let _serial = kit::load::serial().await;
    let started = Instant::now();
    let db = kit::sqlite::TempSqlite::new();
    let (path, url) = (db.path.clone(), db.url.clone());
    let (ledger, users) = kill_restart_cycles(&url, Store::Sqlite).await;
    let lost = check(Store::Sqlite, &ledger, &users);

    let db = kit::sqlite::check_sqlite(&path);
    assert_eq!(db.integrity, "ok", "PRAGMA integrity_check after the last SIGKILL");
    assert_eq!(db.journal_mode, "wal", "the file is in WAL mode");
    assert_eq!(db.duplicate_email_keys, 0, "duplicate email keys in the file");
    assert_eq!(db.rows as usize, users.len(), "GET /users lists every row");
    report(
        "sqlite_keeps_every_acknowledged_write_through_repeated_sigkill",
        &format!(
            "{} integrity_check={}",
            summary(Store::Sqlite, &ledger, users.len(), lost, started.elapsed()),
            db.integrity
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_write_through_repeated_sigkill() {
    let _serial = kit::load::serial().await;
    let started = Instant::now();
    let schema = PgSchema::create().await;
    let (ledger, users) = kill_restart_cycles(&schema.database_url(), Store::Postgres).await;
    let lost = check(Store::Postgres, &ledger, &users);

    let (rows, duplicates) = schema.users_and_duplicates().await;
    assert_eq!(duplicates, 0, "duplicate email keys in the table");
    assert_eq!(rows as usize, users.len(), "GET /users lists every row");
    report(
        "postgres_keeps_every_acknowledged_write_through_repeated_sigkill",
        &summary(Store::Postgres, &ledger, users.len(), lost, started.elapsed()),
    );
    schema.cleanup().await;
}
