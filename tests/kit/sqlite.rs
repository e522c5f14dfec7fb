//! Temporary SQLite databases, and the check an operator would run on one after a crash.

use std::path::{Path, PathBuf};

/// A SQLite file in a temporary directory, removed with this value.
pub struct TempSqlite {
    pub path: PathBuf,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TempSqlite {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("users.db");
        let url = format!("sqlite://{}", path.display());
        Self { path, url, _dir: dir }
    }
}

/// What an operator's look at a SQLite file found.
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

/// A disk whose `fsync` of SQLite's WAL fails on demand: a shared library preloaded into the
/// service (`fail_wal_sync.c`, built here with the machine's C compiler), armed by a flag file.
pub struct FailingWalSync {
    library: PathBuf,
    flag: PathBuf,
    _dir: tempfile::TempDir,
}

impl FailingWalSync {
    pub fn build() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let library = dir.path().join("libfail_wal_sync.so");
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kit/fail_wal_sync.c");
        let built = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(source)
            .arg("-ldl")
            .status()
            .expect("a C compiler (cc) builds the fsync fault library");
        assert!(built.success(), "building {source} failed");
        let flag = dir.path().join("fail-wal-sync");
        Self { library, flag, _dir: dir }
    }

    /// The service's environment: the library preloaded, reading this flag.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [("LD_PRELOAD", self.library.display().to_string()), ("FAIL_WAL_SYNC_FLAG", self.flag.display().to_string())]
    }

    /// From now on every `fsync` of a WAL fails with EIO.
    pub fn arm(&self) {
        std::fs::write(&self.flag, b"").expect("flag file");
    }

    pub fn disarm(&self) {
        std::fs::remove_file(&self.flag).expect("flag file removed");
    }
}
