//! TLS to PostgreSQL as `DATABASE_CA_FILE` and `sslmode` promise it, against clusters of our
//! own: with a CA file the server is verified in full (chain and host name) and a server that
//! declines TLS is refused, never talked to in plain text.

mod kit;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kit::app::{TestApp, serve_config};
use kit::http::expect_problem;
use kit::pg::{PgCluster, pg_connect};

/// A CA and a server certificate it signed for 127.0.0.1, made with the openssl CLI.
struct Certificates {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn certificates() -> Certificates {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    // The server runs as `postgres` when the tests run as root: it must read its key, alone.
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres").unwrap().expect("a postgres user");
        for path in [d.to_path_buf(), d.join("server.pem"), d.join("server.key")] {
            std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    Certificates {
        ca: d.join("ca.pem"),
        server_cert: d.join("server.pem"),
        server_key: d.join("server.key"),
        _dir: dir,
    }
}

/// Turns TLS on in a running cluster and waits until new connections see it.
async fn enable_tls(cluster: &PgCluster, certs: &Certificates) {
    let admin = pg_connect("127.0.0.1", cluster.port, "postgres").await;
    // One statement at a time: ALTER SYSTEM refuses to run inside a transaction block.
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", certs.server_cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", certs.server_key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.simple_query(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = pg_connect("127.0.0.1", cluster.port, "postgres").await;
        let ssl: String = fresh.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if ssl == "on" {
            return;
        }
        assert!(Instant::now() < deadline, "ssl still {ssl} 10 s after the reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(url: &str, ca_file: Option<&Path>) -> users_api::config::ServeConfig {
    let mut args = vec!["users-api", "--bind-addr", "127.0.0.1:0", "--metrics-addr", "off", "--database-url", url];
    let ca = ca_file.map(|p| p.to_str().unwrap().to_owned());
    if let Some(ca) = &ca {
        args.extend(["--database-ca-file", ca, "--database-timeout-secs", "2"]);
    }
    serve_config(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_file_a_server_that_declines_tls_is_refused_not_talked_to_in_plain() {
    let cluster = PgCluster::init(); // initdb's default: ssl off
    let certs = certificates();
    let url = cluster.database_url("tls-downgrade");
    // Control: the server answers in plain text to a client that allows it.
    let plain = TestApp::start(config(&url, None)).await;
    assert_eq!(plain.get("/ready").await.status(), 200);
    plain.stop().await;

    // The same URL (sslmode left to the default, prefer) with a CA file: TLS or nothing.
    let mut args = vec!["users-api", "--bind-addr", "127.0.0.1:0", "--metrics-addr", "off", "--skip-migrations"];
    let ca = certs.ca.to_str().unwrap();
    args.extend(["--database-url", &url, "--database-ca-file", ca, "--database-timeout-secs", "2"]);
    let verified = TestApp::start(serve_config(&args)).await;
    expect_problem(verified.get("/ready").await, 503, "service_unavailable").await;
    let admin = pg_connect("127.0.0.1", cluster.port, "postgres").await;
    let sessions: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tls-downgrade'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 0, "no plain-text session was opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_verify_full_with_the_servers_ca_talks_verified_tls_and_without_a_ca_file_does_not_start() {
    let cluster = PgCluster::init();
    let certs = certificates();
    enable_tls(&cluster, &certs).await;
    let url = format!("{}&sslmode=verify-full", cluster.database_url("tls-verified"));

    let app = TestApp::start(config(&url, Some(&certs.ca))).await;
    assert_eq!(app.create_user("Verified Tls", "verified@example.com").await.status(), 201);
    let admin = pg_connect("127.0.0.1", cluster.port, "postgres").await;
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'tls-verified'",
            &[],
        )
        .await
        .unwrap();
    let (encrypted, total): (i64, i64) = (row.get(0), row.get(1));
    assert!(total >= 1 && encrypted == total, "{encrypted} of {total} connections use TLS");
    app.stop().await;

    let refused = users_api::server::Application::build(config(&url, None)).await;
    let error = format!("{:#}", refused.err().expect("verify-full without a CA file must not start"));
    assert!(error.contains("DATABASE_CA_FILE"), "{error}");
}
