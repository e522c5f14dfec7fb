//! A rolling deploy loses nothing: three instances on one PostgreSQL behind the real nginx
//! (an upstream of the three, keep-alive on, `max_fails=0`: nginx never learns of a drain), 16
//! keep-alive clients mixing POST, GET by id and paged GETs, and every instance restarted in
//! turn (SIGTERM, wait for exit, start, wait for `/ready`) for three rounds: no transport
//! error, no 5xx, and every 201 readable afterwards.

mod kit;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kit::http::user_body;
use kit::load::report;
use kit::pg::PgSchema;
use kit::process::Server;
use nix::sys::signal::Signal;

const INSTANCES: usize = 3;
const ROUNDS: usize = 3;
const CLIENTS: usize = 16;
const GRACE_SECS: u64 = 10;

/// The nginx binary: `$NGINX`, else on the PATH or in /usr/sbin (scripts/test installs it).
fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .expect(
            "nginx is not installed (apt-get install nginx; scripts/test installs it): this is a failure, not a skip",
        )
}

/// nginx in front of the instances, as a load balancer that never hears of a drain: it keeps
/// routing to every instance and retries only what it may (a refused connection).
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream_ports: &[u16]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = kit::free_port();
        let servers: String =
            upstream_ports.iter().map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n")).collect();
        let d = dir.path().display();
        let config = format!(
            "daemon off;
master_process off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream api {{
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).expect("writing nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let nginx = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen within 10 s:\n{}", nginx.error_log());
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn error_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_instance(database_url: &str, port: u16) -> Server {
    let bind = format!("127.0.0.1:{port}");
    let grace = GRACE_SECS.to_string();
    Server::start(
        database_url,
        &[("BIND_ADDR", bind.as_str()), ("SHUTDOWN_GRACE_SECS", grace.as_str()), ("DATABASE_MAX_CONNECTIONS", "4")],
    )
}

async fn wait_ready(port: u16) {
    let client = kit::http::client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "instance on port {port} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Default)]
struct Tally {
    requests: usize,
    by_kind: [usize; 3],
    transport_errors: Vec<String>,
    server_errors: Vec<String>,
    other_statuses: Vec<String>,
    /// (id, email) of every 201.
    created: Vec<(i64, String)>,
}

/// One keep-alive client: POST, GET by id and a page in turn until `stop`.
async fn client_loop(base: String, worker: usize, tag: String, stop: Arc<AtomicBool>) -> Tally {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut tally = Tally::default();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let kind = n % 3;
        n += 1;
        let last_id = tally.created.last().map_or(1, |(id, _)| *id);
        let email = format!("{tag}.c{worker}.n{n}@rolling.test");
        let request = match kind {
            0 => client.post(format!("{base}/user")).json(&user_body("Rolling Deploy", &email)),
            1 => client.get(format!("{base}/users/{last_id}")),
            _ => client.get(format!("{base}/users?limit=20&after={}", (last_id - 10).max(0))),
        };
        tally.requests += 1;
        tally.by_kind[kind] += 1;
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                tally.transport_errors.push(format!("{kind}: {e:?}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                tally.transport_errors.push(format!("{kind}: status {status}, body cut: {e:?}"));
                continue;
            }
        };
        match (kind, status) {
            (0, 201) => {
                let user: serde_json::Value = serde_json::from_slice(&body).expect("a 201 carries the user");
                tally.created.push((user["id"].as_i64().expect("an id"), email));
            }
            (1 | 2, 200) => {}
            (_, 500..) => tally.server_errors.push(format!("{kind}: {status} {}", String::from_utf8_lossy(&body))),
            _ => tally.other_statuses.push(format!("{kind}: {status} {}", String::from_utf8_lossy(&body))),
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_instances_behind_nginx_loses_no_request() {
    let _serial = kit::load::serial().await;
    let schema = PgSchema::create().await;
    let url = schema.database_url();
    let ports: Vec<u16> = (0..INSTANCES).map(|_| kit::free_port()).collect();
    let mut instances: Vec<Option<Server>> = Vec::new();
    for &port in &ports {
        let url = url.clone();
        instances.push(Some(tokio::task::spawn_blocking(move || start_instance(&url, port)).await.unwrap()));
    }
    let nginx = Nginx::start(&ports);
    for &port in &ports {
        wait_ready(port).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tag = kit::random_tag();
    let clients: Vec<_> =
        (0..CLIENTS).map(|w| tokio::spawn(client_loop(nginx.url(""), w, tag.clone(), stop.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let mut exits = Vec::new();
    for _round in 0..ROUNDS {
        for (i, &port) in ports.iter().enumerate() {
            let mut old = instances[i].take().expect("instance running");
            let signalled = Instant::now();
            old.signal(Signal::SIGTERM);
            let (status, old) =
                tokio::task::spawn_blocking(move || (old.wait_exit(Duration::from_secs(GRACE_SECS + 5)), old))
                    .await
                    .unwrap();
            let status = status.unwrap_or_else(|| panic!("instance {i} still running after the grace period"));
            assert!(status.success(), "instance {i} exited with {status}\nlog:\n{}", old.logs());
            exits.push(signalled.elapsed());
            drop(old);
            let url = url.clone();
            instances[i] = Some(tokio::task::spawn_blocking(move || start_instance(&url, port)).await.unwrap());
            wait_ready(port).await;
            // Let the restarted instance take traffic before the next one goes.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let restarts_took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = Tally::default();
    for client in clients {
        let t = tokio::time::timeout(Duration::from_secs(60), client).await.expect("clients stop").expect("client");
        total.requests += t.requests;
        for k in 0..3 {
            total.by_kind[k] += t.by_kind[k];
        }
        total.transport_errors.extend(t.transport_errors);
        total.server_errors.extend(t.server_errors);
        total.other_statuses.extend(t.other_statuses);
        total.created.extend(t.created);
    }

    // Every acknowledged write is readable, through nginx, as it was acknowledged.
    let reader = kit::http::client();
    let mut unreadable = Vec::new();
    for (id, email) in &total.created {
        match reader.get(nginx.url(&format!("/users/{id}"))).send().await {
            Ok(r) if r.status() == 200 => {
                let user: serde_json::Value = r.json().await.expect("a user");
                if user["email"] != email.as_str() {
                    unreadable.push(format!("{id}: {user}"));
                }
            }
            Ok(r) => unreadable.push(format!("{id}: status {}", r.status())),
            Err(e) => unreadable.push(format!("{id}: {e}")),
        }
    }
    let (rows, duplicates) = schema.users_and_duplicates().await;
    let error_log = nginx.error_log();
    let slowest_exit = exits.iter().max().copied().unwrap_or_default();

    let figures = format!(
        "{} restarts in {:.1}s under {CLIENTS} keep-alive clients through nginx: {} requests (POST {}, GET by id {}, pages {}); \
         transport errors {}, 5xx {}, other unexpected {}; 201 {}, unreadable afterwards {}; rows {rows}, duplicate keys {duplicates}; \
         slowest exit after SIGTERM {:.2}s (grace {GRACE_SECS}s)",
        ROUNDS * INSTANCES,
        restarts_took.as_secs_f64(),
        total.requests,
        total.by_kind[0],
        total.by_kind[1],
        total.by_kind[2],
        total.transport_errors.len(),
        total.server_errors.len(),
        total.other_statuses.len(),
        total.created.len(),
        unreadable.len(),
        slowest_exit.as_secs_f64(),
    );
    let failures: Vec<&String> =
        total.transport_errors.iter().chain(&total.server_errors).chain(&total.other_statuses).take(10).collect();
    assert!(
        total.transport_errors.is_empty() && total.server_errors.is_empty() && total.other_statuses.is_empty(),
        "{figures}\nfirst failures: {failures:#?}\nnginx error log:\n{error_log}"
    );
    assert!(unreadable.is_empty(), "{figures}\nunreadable: {:?}", &unreadable[..unreadable.len().min(10)]);
    assert!(total.created.len() > 100, "too little load to mean anything: {figures}");
    assert_eq!(duplicates, 0);
    assert!(rows >= total.created.len() as i64, "{figures}");
    report("a_rolling_restart_of_three_instances_behind_nginx_loses_no_request", &figures);
    drop(instances);
    schema.cleanup().await;
}
