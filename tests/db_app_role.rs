//! `users-api migrate` with DATABASE_APP_ROLE: the migration step (owner credentials) makes
//! the API's own role, which then serves reads and writes but can change no schema.

mod kit;

use kit::app::TestApp;
use kit::pg::PG_ADMIN_URL;

fn migrate(database_url: &str, role: &str, password: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_users-api"))
        .args(["migrate", "--database-url", database_url])
        .env("DATABASE_APP_ROLE", role)
        .env("DATABASE_APP_PASSWORD", password)
        .output()
        .unwrap()
}

async fn admin() -> tokio_postgres::Client {
    kit::pg::pg_connect(kit::pg::PG_HOST, kit::pg::PG_PORT, kit::pg::PG_DATABASE).await
}

async fn stored_password(admin: &tokio_postgres::Client, role: &str) -> String {
    admin.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_role_reads_and_writes_rows_but_changes_no_schema() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (schema, role) = (format!("t_{tag}"), format!("app_{tag}"));
    let admin = admin().await;
    admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let owner_url = format!("{PG_ADMIN_URL}?options=-csearch_path%3D{schema}");

    let out = migrate(&owner_url, &role, "first secret");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let first = stored_password(&admin, &role).await;
    assert!(first.starts_with("SCRAM-SHA-256$"), "a verifier, never the password: {first}");
    // Again, with a rotated password: idempotent, and the new password replaces the old.
    let out = migrate(&owner_url, &role, "second secret");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_ne!(stored_password(&admin, &role).await, first);

    // The API as that role (migrations are the owner's step): it serves reads and writes.
    let app_url = format!("postgres://{role}@127.0.0.1:5432/test?options=-csearch_path%3D{schema}");
    let config = kit::app::serve_config(&[
        "users-api",
        "--bind-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "off",
        "--skip-migrations",
        "--database-url",
        &app_url,
    ]);
    let app = TestApp::start(config).await;
    assert_eq!(app.create_user("Ada Lovelace", "ada@example.com").await.status(), 201);
    let listed: serde_json::Value = app.get("/users").await.json().await.unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // ...and nothing else: no new table, no dropped or altered one, no new role.
    let (client, connection) = tokio_postgres::connect(&app_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    for ddl in [
        format!("CREATE TABLE {schema}.intruder (id int)"),
        format!("DROP TABLE {schema}.users"),
        format!("ALTER TABLE {schema}.users ADD COLUMN intruder int"),
        format!("CREATE ROLE intruder_{tag}"),
    ] {
        let err = client.batch_execute(&ddl).await.expect_err(&ddl);
        let code = err.code().map(|c| c.code().to_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{ddl}: insufficient_privilege expected, got {err}");
    }
    drop(client);

    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE; DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}

#[test]
fn an_api_role_on_sqlite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let out = migrate(&url, "app", "secret");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("PostgreSQL only"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
