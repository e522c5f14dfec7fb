//! Read replicas (`DATABASE_READ_URL`) on a real streaming pair the tests make themselves
//! (initdb, `pg_basebackup -R`, free ports): reads come from the replica, a user is never 404
//! right after its 201, a frozen primary leaves reads answering from the replica while writes
//! answer a bounded 503 that stored nothing, and a stopped or frozen replica sends reads back to
//! the primary. Under concurrent readers and writers, a freeze fails no read of a user the
//! replica had replayed and loses no acknowledged write; a user committed moments before the
//! freeze and not yet replayed (asynchronous replication's gap) reads 200 or a bounded 503,
//! never 404.

mod kit;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kit::http::{client, user_body};
use kit::load::report;
use kit::pg::{PgCluster, pg_connect};
use kit::process::Server;

const DB_TIMEOUT_SECS: u64 = 2;
/// What a read answered by the replica may take with the primary frozen (the bound).
const READ_BOUND: Duration = Duration::from_secs(2);
/// A write's 503 comes by its database timeout, with room for a loaded machine.
const WRITE_503_BOUND: Duration = Duration::from_millis(DB_TIMEOUT_SECS * 1000 + 1500);
const STREAMING_WITHIN: Duration = Duration::from_secs(60);

/// A primary, its streaming replica and a `users-api` reading from the replica, with metrics on.
struct Pair {
    primary: PgCluster,
    replica: PgCluster,
    server: Server,
    metrics_url: String,
    http: reqwest::Client,
}

impl Pair {
    async fn start(max_lag: &str) -> Self {
        let (primary, replica) = tokio::task::spawn_blocking(|| {
            let primary = PgCluster::init();
            let replica = PgCluster::replica_of(&primary);
            (primary, replica)
        })
        .await
        .expect("making the replication pair");
        replica.wait_streaming(STREAMING_WITHIN).await;
        let app = format!("users-api-replica-{}", kit::random_tag());
        let metrics_addr = format!("127.0.0.1:{}", kit::free_port());
        let timeout = DB_TIMEOUT_SECS.to_string();
        let server = Server::start(
            &primary.database_url(&app),
            &[
                ("DATABASE_READ_URL", &replica.database_url(&app)),
                ("DATABASE_READ_MAX_LAG", max_lag),
                ("DATABASE_TIMEOUT_SECS", &timeout),
                ("DATABASE_MAX_CONNECTIONS", "4"),
                ("REQUEST_TIMEOUT_SECS", "10"),
                ("METRICS_ADDR", &metrics_addr),
            ],
        );
        let pair =
            Self { primary, replica, server, metrics_url: format!("http://{metrics_addr}/metrics"), http: client() };
        pair.wait_for_metric("db_replica_usable", |v| v == 1.0, "the replica to be usable").await;
        pair
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.http.get(&self.metrics_url).send().await.expect("scrape").text().await.expect("metrics body");
        text.lines()
            .find(|line| line.split_once(' ').is_some_and(|(name, _)| name == series))
            .and_then(|line| line.rsplit_once(' '))
            .map(|(_, value)| value.parse().expect("a metric value"))
    }

    async fn wait_for_metric(&self, series: &str, ok: impl Fn(f64) -> bool, what: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(value) = self.metric(series).await
                && ok(value)
            {
                return value;
            }
            assert!(Instant::now() < deadline, "waited 15 s for {what} ({series}); log:\n{}", self.server.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a user; returns its JSON (the 201's body).
    async fn create(&self, email: &str) -> serde_json::Value {
        let response = self
            .http
            .post(self.server.url("/user"))
            .json(&user_body("Replica Reader", email))
            .send()
            .await
            .expect("POST answered");
        assert_eq!(response.status().as_u16(), 201, "creating {email}");
        response.json().await.expect("created user")
    }

    /// GET `path`: its status, body and latency.
    async fn get(&self, path: &str) -> (u16, serde_json::Value, Duration) {
        let sent = Instant::now();
        let response = self.http.get(self.server.url(path)).send().await.expect("GET answered");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or_default();
        (status, body, sent.elapsed())
    }

    async fn reads(&self, pool: &str) -> f64 {
        self.metric(&format!("db_reads_total{{pool=\"{pool}\"}}")).await.unwrap_or(0.0)
    }

    /// Waits until the replica holds `count` users.
    async fn wait_replicated(&self, count: i64) {
        let replica = pg_connect("127.0.0.1", self.replica.port, "postgres").await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let held: i64 = replica.query_one("SELECT count(*) FROM users", &[]).await.expect("count").get(0);
            if held == count {
                return;
            }
            assert!(Instant::now() < deadline, "the replica holds {held} of {count} users after 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_frozen_reads_answer_from_the_replica_and_writes_answer_503_storing_nothing() {
    let _serial = kit::load::serial().await;
    let pair = Pair::start("5s").await;
    let tag = kit::random_tag();
    let mut users = Vec::new();
    for n in 0..20 {
        users.push(pair.create(&format!("{tag}.{n}@frozen-primary.test")).await);
    }
    pair.wait_replicated(20).await;

    assert!(pair.primary.freeze() > 1, "froze the primary's postmaster and its children");
    let frozen_at = Instant::now();
    let (mut reads, mut slowest_read) = (0, Duration::ZERO);
    for user in &users {
        let (status, body, latency) = pair.get(&format!("/users/{}", user["id"])).await;
        assert_eq!(status, 200, "GET {} with the primary frozen: {body}", user["id"]);
        assert_eq!(&body, user, "the replica's copy is the created user");
        assert!(latency < READ_BOUND, "GET by id took {latency:?} with the primary frozen");
        (reads, slowest_read) = (reads + 1, slowest_read.max(latency));
    }
    for path in ["/users?limit=7", &format!("/users?limit=50&after={}", users[9]["id"]), "/users"] {
        let (status, body, latency) = pair.get(path).await;
        assert_eq!(status, 200, "GET {path} with the primary frozen: {body}");
        let listed = body.as_array().expect("a list of users").len();
        assert_eq!(
            listed,
            if path == "/users?limit=7" {
                7
            } else if path == "/users" {
                20
            } else {
                10
            },
            "{path}"
        );
        assert!(latency < READ_BOUND, "GET {path} took {latency:?} with the primary frozen");
        (reads, slowest_read) = (reads + 1, slowest_read.max(latency));
    }
    let (status, _, latency) = pair.get("/ready").await;
    assert_eq!(status, 200, "ready while reads are served by the replica");
    assert!(latency < READ_BOUND, "/ready took {latency:?}");

    let mut refused = HashSet::new();
    let mut slowest_write = Duration::ZERO;
    for n in 0..5 {
        let email = format!("{tag}.frozen.{n}@frozen-primary.test");
        let sent = Instant::now();
        let response = pair
            .http
            .post(pair.server.url("/user"))
            .json(&user_body("Never Stored", &email))
            .send()
            .await
            .expect("POST");
        let latency = sent.elapsed();
        assert_eq!(response.status().as_u16(), 503, "POST {email} with the primary frozen");
        assert!(response.headers().contains_key("retry-after"), "a 503 invites a retry");
        assert!(latency < WRITE_503_BOUND, "POST 503 took {latency:?}");
        slowest_write = slowest_write.max(latency);
        refused.insert(email);
    }
    let frozen_for = frozen_at.elapsed();
    pair.primary.thaw();

    // Whatever the frozen server had buffered is processed now: nothing of it may commit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let primary = pg_connect("127.0.0.1", pair.primary.port, "postgres").await;
    let stored: HashSet<String> =
        primary.query("SELECT email FROM users", &[]).await.expect("emails").iter().map(|r| r.get(0)).collect();
    assert_eq!(stored.len(), 20, "only the 20 users created before the freeze are stored");
    assert!(refused.is_disjoint(&stored), "a write answered 503 was stored");
    // Writes work again once the primary answers.
    pair.create(&format!("{tag}.after@frozen-primary.test")).await;
    report(
        "with_the_primary_frozen_reads_answer_from_the_replica_and_writes_answer_503_storing_nothing",
        &format!(
            "primary frozen {frozen_for:.1?}: {reads} reads 200 (0 failed, slowest {slowest_read:?}, bound {READ_BOUND:?}), \
             {} POSTs 503 (slowest {slowest_write:?}, bound {WRITE_503_BOUND:?}), 0 of them stored",
            refused.len()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_user_is_never_404_on_the_next_read() {
    let _serial = kit::load::serial().await;
    // A long lag bound keeps the replica in use while its replay is paused below.
    let pair = Pair::start("1h").await;
    let tag = kit::random_tag();
    const PAIRS: usize = 200;
    for n in 0..PAIRS {
        let created = pair.create(&format!("{tag}.{n}@read-your-writes.test")).await;
        let (status, body, _) = pair.get(&format!("/users/{}", created["id"])).await;
        assert_eq!(status, 200, "pair {n}: GET right after the 201: {body}");
        assert_eq!(body, created, "pair {n}");
    }
    let replica_reads = pair.reads("replica").await;
    let primary_reads = pair.reads("primary").await;
    assert_eq!(replica_reads + primary_reads, PAIRS as f64, "each read counted once, by the pool that answered");

    // Replay paused: every new user misses on the replica, and the primary must answer.
    let replica = pg_connect("127.0.0.1", pair.replica.port, "postgres").await;
    replica.batch_execute("SELECT pg_wal_replay_pause()").await.expect("pausing replay");
    const PAUSED_PAIRS: usize = 50;
    for n in 0..PAUSED_PAIRS {
        let created = pair.create(&format!("{tag}.paused.{n}@read-your-writes.test")).await;
        let (status, body, _) = pair.get(&format!("/users/{}", created["id"])).await;
        assert_eq!(status, 200, "paused pair {n}: GET right after the 201: {body}");
        assert_eq!(body, created, "paused pair {n}");
    }
    assert_eq!(
        pair.reads("primary").await - primary_reads,
        PAUSED_PAIRS as f64,
        "with replay paused, every read of a new user was answered by the primary"
    );
    assert_eq!(pair.reads("replica").await, replica_reads, "the paused replica answered none of them");
    // The lag is measured from the last replayed transaction while WAL waits unreplayed.
    let lag = pair.wait_for_metric("db_replica_lag_seconds", |v| v >= 1.0, "the lag to show the paused replay").await;
    replica.batch_execute("SELECT pg_wal_replay_resume()").await.expect("resuming replay");
    pair.wait_for_metric("db_replica_lag_seconds", |v| v == 0.0, "the lag to return to 0").await;
    report(
        "a_created_user_is_never_404_on_the_next_read",
        &format!(
            "{PAIRS} create-then-read pairs: 200 ×{PAIRS} (replica answered {replica_reads}, primary {primary_reads} after \
             a replica miss); replay paused: {PAUSED_PAIRS} pairs 200 ×{PAUSED_PAIRS}, all from the primary; lag gauge \
             {lag:.1} s while paused, 0 after resuming"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_the_primary_when_the_replica_is_frozen_or_stopped() {
    let _serial = kit::load::serial().await;
    let pair = Pair::start("5s").await;
    let tag = kit::random_tag();
    let mut users = Vec::new();
    for n in 0..10 {
        users.push(pair.create(&format!("{tag}.{n}@replica-down.test")).await);
    }
    pair.wait_replicated(10).await;

    // Frozen: at most the replica's attempt bound (1 s) is spent before the primary answers,
    // and only until the lag poll takes the replica out.
    assert!(pair.replica.freeze() > 1, "froze the replica");
    let mut slowest_frozen = Duration::ZERO;
    for user in &users {
        let (status, body, latency) = pair.get(&format!("/users/{}", user["id"])).await;
        assert_eq!(status, 200, "GET with the replica frozen: {body}");
        assert_eq!(&body, user);
        assert!(latency < READ_BOUND, "GET took {latency:?} with the replica frozen");
        slowest_frozen = slowest_frozen.max(latency);
    }
    pair.wait_for_metric("db_replica_usable", |v| v == 0.0, "the frozen replica to be taken out").await;
    pair.replica.thaw();
    pair.wait_for_metric("db_replica_usable", |v| v == 1.0, "the thawed replica to be back").await;

    pair.replica.stop_immediate();
    let primary_before = pair.reads("primary").await;
    let mut slowest_stopped = Duration::ZERO;
    for user in &users {
        let (status, body, latency) = pair.get(&format!("/users/{}", user["id"])).await;
        assert_eq!(status, 200, "GET with the replica stopped: {body}");
        assert_eq!(&body, user);
        slowest_stopped = slowest_stopped.max(latency);
    }
    let (status, body, _) = pair.get("/users?limit=100").await;
    assert_eq!(status, 200, "a page with the replica stopped: {body}");
    assert_eq!(body.as_array().expect("users").len(), 10);
    assert_eq!(pair.reads("primary").await - primary_before, 11.0, "the primary answered every read");
    pair.wait_for_metric("db_replica_usable", |v| v == 0.0, "the stopped replica to be taken out").await;
    let (status, _, _) = pair.get("/ready").await;
    assert_eq!(status, 200, "ready on the primary alone");
    report(
        "reads_fall_back_to_the_primary_when_the_replica_is_frozen_or_stopped",
        &format!(
            "10 GETs with the replica frozen: 200 ×10 (slowest {slowest_frozen:?}); with it stopped: 11 reads 200, all \
             from the primary (slowest {slowest_stopped:?})"
        ),
    );
}

/// One read under load: the user read (for a page, the newest acknowledged user then), when it
/// was sent, its status and latency.
struct ReadBack {
    id: i64,
    page: bool,
    sent: Instant,
    status: u16,
    latency: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_frozen_primary_fails_no_replicated_read_and_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const READERS: usize = 6;
    const WRITERS: usize = 4;
    const FAULT: Duration = Duration::from_secs(6);

    let _serial = kit::load::serial().await;
    let pair = Arc::new(Pair::start("5s").await);
    let tag = kit::random_tag();
    // Every user acknowledged with a 201, as (id, email): what the readers read back.
    let acknowledged: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    for n in 0..20 {
        let user = pair.create(&format!("{tag}.seed.{n}@load.test")).await;
        acknowledged.lock().unwrap().push((user["id"].as_i64().expect("id"), user["email"].as_str().unwrap().into()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (pair, stop, acknowledged, tag) = (pair.clone(), stop.clone(), acknowledged.clone(), tag.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let email = format!("{tag}.w{w}.{n}@load.test");
                    let sent = Instant::now();
                    let response = pair
                        .http
                        .post(pair.server.url("/user"))
                        .json(&user_body("Load Writer", &email))
                        .send()
                        .await
                        .expect("POST answered");
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    if status == 201 {
                        acknowledged.lock().unwrap().push((body["id"].as_i64().expect("id"), email.clone()));
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    outcomes.push((email, status, sent.elapsed()));
                }
                outcomes
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (pair, stop, acknowledged) = (pair.clone(), stop.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let mut reads = Vec::new();
                let mut n = r;
                while !stop.load(Ordering::Relaxed) {
                    // The newest acknowledged users first: read-your-writes is the hard case.
                    let id = {
                        let users = acknowledged.lock().unwrap();
                        users[users.len() - 1 - n % users.len().min(8)].0
                    };
                    n += 1;
                    let page = n % 5 == 0;
                    let path = if page { "/users?limit=20".to_owned() } else { format!("/users/{id}") };
                    let sent = Instant::now();
                    let (status, _, latency) = pair.get(&path).await;
                    reads.push(ReadBack { id, page, sent, status, latency });
                }
                reads
            })
        })
        .collect();

    // Replication is asynchronous: a user whose commit had not reached the replica when the
    // primary stopped cannot be read from anywhere until the thaw. What the replica holds is asked
    // just before the freeze and just after it, and when each answer came.
    let replica = pg_connect("127.0.0.1", pair.replica.port, "postgres").await;
    let replica_holds = async || -> (HashSet<i64>, Instant) {
        let rows = replica.query("SELECT id FROM users", &[]).await.expect("replayed ids");
        (rows.iter().map(|r| r.get(0)).collect(), Instant::now())
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (held_before, asked_before) = replica_holds().await;
    let freezing = Instant::now();
    assert!(pair.primary.freeze() > 1, "froze the primary");
    let (replayed, asked_after) = replica_holds().await;
    tokio::time::sleep(FAULT).await;
    // Every user acknowledged so far was committed before the freeze (nothing commits during it).
    let acknowledged_by_thaw: Vec<i64> = acknowledged.lock().unwrap().iter().map(|(id, _)| *id).collect();
    let thawing = Instant::now();
    pair.primary.thaw();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut writes = Vec::new();
    for writer in writers {
        writes.extend(writer.await.expect("writer"));
    }
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.await.expect("reader"));
    }

    // A read by id that overlapped the freeze is sure to find its user on the replica only when
    // it was sent after an answer listing that user; any other (a user not replayed, or replayed
    // around the freeze while the read was on its way, its own lookup perhaps earlier) is in the
    // replication gap. Pages take the replica's answer as it is: never in the gap.
    let found_on_replica = |r: &ReadBack| {
        (r.sent >= asked_before && held_before.contains(&r.id)) || (r.sent >= asked_after && replayed.contains(&r.id))
    };
    let in_gap = |r: &ReadBack| !r.page && r.sent < thawing && r.sent + r.latency >= freezing && !found_on_replica(r);
    let (gap_reads, replicated_reads): (Vec<&ReadBack>, Vec<&ReadBack>) = reads.iter().partition(|r| in_gap(r));
    let failed_reads: Vec<String> = replicated_reads
        .iter()
        .filter(|r| r.status != 200 || r.latency >= READ_BOUND)
        .map(|r| {
            format!("{} {}: {} in {:?}", if r.page { "page at newest user" } else { "user" }, r.id, r.status, r.latency)
        })
        .collect();
    assert!(
        failed_reads.is_empty(),
        "{} of {} reads outside the replication gap failed or were slow: {failed_reads:?}",
        failed_reads.len(),
        replicated_reads.len()
    );
    // In the gap: the primary's answer, or its bounded 503 (retry); never a 404.
    let failed_gap_reads: Vec<String> = gap_reads
        .iter()
        .filter(|r| !matches!(r.status, 200 | 503) || r.latency >= WRITE_503_BOUND)
        .map(|r| format!("user {}: {} in {:?}", r.id, r.status, r.latency))
        .collect();
    assert!(
        failed_gap_reads.is_empty(),
        "{} of {} reads in the replication gap answered other than 200 or a bounded 503: {failed_gap_reads:?}",
        failed_gap_reads.len(),
        gap_reads.len()
    );
    let gap_users = acknowledged_by_thaw.iter().filter(|id| !replayed.contains(id)).count();
    let gap_503 = gap_reads.iter().filter(|r| r.status == 503).count();
    let in_flight = gap_reads.iter().filter(|r| replayed.contains(&r.id)).count();
    let slowest_read = replicated_reads.iter().map(|r| r.latency).max().unwrap_or_default();
    let slowest_gap_read = gap_reads.iter().map(|r| r.latency).max().unwrap_or_default();
    let primary = pg_connect("127.0.0.1", pair.primary.port, "postgres").await;
    let stored: HashSet<String> =
        primary.query("SELECT email FROM users", &[]).await.expect("emails").iter().map(|r| r.get(0)).collect();
    let (mut created, mut refused, mut unknown) = (0, 0, 0);
    for (email, status, latency) in &writes {
        assert!(*latency < WRITE_503_BOUND + Duration::from_secs(1), "{email}: {status} after {latency:?}");
        match status {
            201 => created += 1,
            503 => {
                assert!(!stored.contains(email), "{email}: 503 but stored");
                refused += 1;
            }
            504 => unknown += 1,
            other => panic!("{email}: unexpected {other}"),
        }
    }
    // Every acknowledged write reads back, through the service, once the primary answers again.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut unreadable = 0;
    for (id, email) in &acknowledged {
        assert!(stored.contains(email), "{email}: 201 but not stored");
        let (status, body, _) = pair.get(&format!("/users/{id}")).await;
        unreadable += usize::from(status != 200 || body["email"] != email.as_str());
    }
    assert_eq!(unreadable, 0, "acknowledged writes that could not be read back");
    assert!(refused > 0, "the freeze was felt by the writers");
    report(
        "under_load_a_frozen_primary_fails_no_replicated_read_and_loses_no_acknowledged_write",
        &format!(
            "{READERS} readers, {WRITERS} writers, primary frozen {FAULT:?}: {} reads, 0 failed (slowest \
             {slowest_read:?}, bound {READ_BOUND:?}); replica had replayed {} users (max id {}) at the freeze, \
             {gap_users} acknowledged users not; {} gap reads ({} of those users, {in_flight} of users the replica \
             listed only after the read was sent): 200 ×{}, 503 ×{gap_503} (slowest {slowest_gap_read:?}, bound \
             {WRITE_503_BOUND:?}); {} POSTs: 201 ×{created}, 503 ×{refused} (none stored), 504 ×{unknown}; {} \
             acknowledged, 0 unreadable",
            replicated_reads.len(),
            replayed.len(),
            replayed.iter().max().copied().unwrap_or(0),
            gap_reads.len(),
            gap_reads.len() - in_flight,
            gap_reads.len() - gap_503,
            writes.len(),
            acknowledged.len()
        ),
    );
}
