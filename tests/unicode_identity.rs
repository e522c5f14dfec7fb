//! Unicode identity over a real socket, on both stores: one mailbox however its address is
//! spelled, no invisible or degenerate names, and the migration that rekeys rows stored under
//! the old (lowercase-only) rule, run by the real binary.

mod kit;

use kit::app::TestApp;
use kit::http::{client, expect_problem, list_users, user_body};
use kit::pg::PgSchema;
use kit::process::{BIN, Server};
use serde_json::json;

on_both_stores!(
    a_lookalike_of_a_stored_email_is_email_taken,
    addresses_are_shown_with_the_domain_in_unicode_and_the_local_part_as_sent,
    mixed_script_invisible_and_non_letter_input_is_refused_and_nothing_stored,
);

/// (stored first, its lookalike): the lookalike list of the hostile-input review, and kin.
const LOOKALIKES: &[(&str, &str)] = &[
    ("ada@example.com", "ada@ｅｘａｍｐｌｅ.com"),
    ("ada@bücher.de", "ada@xn--bcher-kva.de"),
    ("eve@xn--bcher-kva.de", "EVE@BÜCHER.DE"),
    ("kay@example.com", "\u{212A}ay@example.com"),
    ("\u{212A}im@example.com", "ＫＩＭ@example.com"),
    ("sam@example.org", "ſam@example.org"),
    ("fiona@example.org", "ﬁona@example.org"),
    ("strasse@example.org", "STRAßE@example.org"),
];

async fn a_lookalike_of_a_stored_email_is_email_taken(app: TestApp) {
    for (first, lookalike) in LOOKALIKES {
        let response = app.create_user("First Person", first).await;
        assert_eq!(response.status(), 201, "{first:?}: {}", response.text().await.unwrap());
        let body = expect_problem(app.create_user("Second Person", lookalike).await, 400, "email_taken").await;
        assert!(body["detail"].as_str().unwrap().contains("already exists"), "{body}");
    }
    let users = app.all_users().await;
    assert_eq!(users.len(), LOOKALIKES.len(), "no lookalike was stored beside its twin");
    assert!(users.iter().all(|u| u["name"] == "First Person"));
}

async fn addresses_are_shown_with_the_domain_in_unicode_and_the_local_part_as_sent(app: TestApp) {
    for (sent, shown) in [
        ("Ada@ＥＸＡＭＰＬＥ.com", "Ada@example.com"),
        ("kay@XN--BCHER-KVA.de", "kay@bücher.de"),
        ("\u{212A}elvin@example.com", "Kelvin@example.com"),
        ("ＦＵＬＬ@example.com", "ＦＵＬＬ@example.com"),
    ] {
        let response = app.create_user("Some Person", sent).await;
        assert_eq!(response.status(), 201, "{sent:?}");
        let created: serde_json::Value = response.json().await.unwrap();
        assert_eq!(created["email"], shown, "{sent:?} in the 201");
        let id = created["id"].as_i64().unwrap();
        let fetched: serde_json::Value = app.get(&format!("/users/{id}")).await.json().await.unwrap();
        assert_eq!(fetched["email"], shown, "{sent:?} read back");
    }
}

async fn mixed_script_invisible_and_non_letter_input_is_refused_and_nothing_stored(app: TestApp) {
    let a_with_49_accents = format!("A{}", "\u{0301}".repeat(49));
    let cases = [
        (json!({"name": "\u{3164}\u{3164}\u{3164}", "email": "filler@example.com"}), "name"),
        (json!({"name": a_with_49_accents, "email": "accents@example.com"}), "name"),
        (json!({"name": "Ali\u{200D}ce", "email": "zwj@example.com"}), "name"),
        (json!({"name": "A B", "email": "two@example.com"}), "name"),
        (json!({"name": "Bob Cyrillic", "email": "bob@ex\u{0430}mple.com"}), "email"),
        (json!({"name": "Bob Punycode", "email": "bob@xn--exmple-4nf.com"}), "email"),
        (json!({"name": "Bob Local", "email": "b\u{043E}b@example.com"}), "email"),
        (json!({"name": "Bob Filler", "email": "bob\u{3164}@example.com"}), "email"),
        (json!({"name": "Bob Digits", "email": "bob@example.c0m"}), "email"),
        (json!({"name": "Bob Broken", "email": "bob@xn--abc.com"}), "email"),
    ];
    for (body, field) in cases {
        let problem = expect_problem(app.post_json("/user", &body).await, 400, "invalid_field").await;
        let fields: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, [field], "{body}: {problem}");
    }
    assert!(app.all_users().await.is_empty(), "nothing refused was stored");
}

// ---------------------------------------------------------------------------------------------
// The rekey migration, on a database left by the previous release
// ---------------------------------------------------------------------------------------------

/// Rows as the previous release stored them: email NFC with the domain lowercased, and the key
/// the whole address lowercased. Rows 2 and 4 are lookalikes of rows 1 and 3.
const OLD_ROWS: &[(i64, &str, &str)] = &[
    (1, "Ada Lovelace", "Ada@example.com"),
    (2, "Ada Fullwidth", "ada@ｅｘａｍｐｌｅ.com"),
    (3, "Kay Kelvin", "Kay@bücher.de"),
    (4, "Kay Punycode", "kay@xn--bcher-kva.de"),
    (5, "Sam Plain", "sam@example.org"),
];

/// The keys after the migration: the earliest of each identity keeps it, the later is set apart.
const NEW_KEYS: &[(i64, &str)] = &[
    (1, "ada@example.com"),
    (2, "ada@example.com#2"),
    (3, "kay@xn--bcher-kva.de"),
    (4, "kay@xn--bcher-kva.de#4"),
    (5, "sam@example.org"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migration_rekeys_old_rows_and_keeps_lookalike_rows_apart() {
    use deadpool_sqlite::rusqlite::{Connection, params};
    let db = kit::sqlite::TempSqlite::new();
    let (path, url) = (db.path.clone(), db.url.clone());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);
             INSERT INTO schema_migrations VALUES (1, '2026-11-01T00:00:00.000000Z');",
        )
        .unwrap();
        conn.execute_batch(include_str!("../src/store/migrations/sqlite/0001_users.sql")).unwrap();
        for (id, name, email) in OLD_ROWS {
            conn.execute(
                "INSERT INTO users (id, name, email, email_key, created_at) VALUES (?1, ?2, ?3, ?4, '2026-11-01T00:00:00.000000Z')",
                params![id, name, email, email.to_lowercase()],
            )
            .unwrap();
        }
    }
    run_migrate(&url);
    let keys = || -> Vec<(i64, String)> {
        let conn = Connection::open(&path).unwrap();
        let mut select = conn.prepare("SELECT id, email_key FROM users ORDER BY id").unwrap();
        select.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    };
    assert_keys(&keys());
    serve_and_check_identities(&url).await;
    // Applied once: a second run leaves the keys as they are.
    run_migrate(&url);
    assert_keys(&keys()[..NEW_KEYS.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migration_rekeys_old_rows_and_keeps_lookalike_rows_apart() {
    let schema = PgSchema::create().await;
    let admin = schema.admin();
    admin
        .batch_execute(&format!(
            "SET search_path TO {};
             CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version) VALUES (1);
             {}",
            schema.schema,
            include_str!("../src/store/migrations/postgres/0001_users.sql")
        ))
        .await
        .unwrap();
    for (_, name, email) in OLD_ROWS {
        admin
            .execute(
                "INSERT INTO users (name, email, email_key) VALUES ($1, $2, $3)",
                &[name, email, &email.to_lowercase()],
            )
            .await
            .unwrap();
    }
    let url = schema.database_url();
    run_migrate(&url);
    let keys = async || -> Vec<(i64, String)> {
        let rows = admin.query("SELECT id, email_key FROM users ORDER BY id", &[]).await.unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    assert_keys(&keys().await);
    serve_and_check_identities(&url).await;
    // Applied once: a second run leaves the keys as they are.
    run_migrate(&url);
    assert_keys(&keys().await[..NEW_KEYS.len()]);
    schema.cleanup().await;
}

/// `users-api migrate`, the step an operator (or the ECS task before serving) runs.
fn run_migrate(database_url: &str) {
    let output = std::process::Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("LOG_LEVEL", "info")
        .output()
        .expect("users-api migrate runs");
    assert!(output.status.success(), "migrate failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn assert_keys(keys: &[(i64, String)]) {
    let expected: Vec<(i64, String)> = NEW_KEYS.iter().map(|(id, key)| (*id, (*key).to_owned())).collect();
    assert_eq!(keys, expected);
}

/// The migrated rows are all served unchanged, and their identities are taken.
async fn serve_and_check_identities(database_url: &str) {
    let server = Server::start(database_url, &[]);
    let client = client();
    let users = list_users(&client, &server.url("/users")).await;
    let listed: Vec<(i64, &str, &str)> = users
        .iter()
        .map(|u| (u["id"].as_i64().unwrap(), u["name"].as_str().unwrap(), u["email"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, OLD_ROWS, "the migration changes no stored name or email");
    for lookalike in ["ADA@ＥＸＡＭＰＬＥ.com", "\u{212A}AY@BÜCHER.de", "kay@xn--bcher-kva.de", "ſam@example.org"]
    {
        let response = client.post(server.url("/user")).json(&user_body("New Person", lookalike)).send().await.unwrap();
        expect_problem(response, 400, "email_taken").await;
    }
    let response =
        client.post(server.url("/user")).json(&user_body("New Person", "new@example.org")).send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(list_users(&client, &server.url("/users")).await.len(), OLD_ROWS.len() + 1);
}
