//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header-07): what both stores keep with a
//! keyed create, in the same transaction as the user, and what a later request with the key gets.

use std::time::Duration;

use super::StoreError;
use crate::domain::User;

/// Expired keys deleted per statement: a purge never holds the write lock (SQLite) or many row
/// locks (PostgreSQL) for long.
pub(super) const PURGE_BATCH: usize = 500;

/// A create carrying an `Idempotency-Key`, and the answers to store with it.
pub struct KeyedCreate {
    /// Whose key it is (the token's subject; one fixed scope without authentication).
    pub subject: String,
    pub key: String,
    /// A digest of the request as understood (route and normalised fields): a second request
    /// with the key must match it to be answered with the stored response.
    pub fingerprint: Vec<u8>,
    /// Status of a created user's answer, and its body from the stored user.
    pub created: (u16, fn(&User) -> Vec<u8>),
    /// The answer when the email is taken (a definite answer: stored too).
    pub taken: StoredAnswer,
}

impl KeyedCreate {
    /// The answer to store for an insert's result; `None` for a failure, which stores nothing
    /// and leaves the key free for a retry.
    pub(super) fn answer(&self, result: &Result<User, StoreError>) -> Option<StoredAnswer> {
        match result {
            Ok(user) => {
                Some(StoredAnswer { status: self.created.0, body: (self.created.1)(user), user_id: Some(user.id) })
            }
            Err(StoreError::EmailTaken) => Some(self.taken.clone()),
            Err(_) => None,
        }
    }

    /// An advisory-lock id for (subject, key): the first 8 bytes of a SHA-256 of both.
    pub(super) fn lock_id(&self) -> i64 {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update((self.subject.len() as u64).to_be_bytes());
        hash.update(self.subject.as_bytes());
        hash.update(self.key.as_bytes());
        let digest = hash.finalize();
        i64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes"))
    }
}

/// A definite answer as stored: status, exact body, and the user it created (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    pub user_id: Option<i64>,
}

/// What a keyed create came to (failures that store nothing are `StoreError`s).
#[derive(Debug)]
pub enum KeyedOutcome {
    /// This request's own answer, stored with the key.
    Fresh(StoredAnswer),
    /// The answer stored for an earlier request with this key and the same fingerprint.
    Replayed(StoredAnswer),
    /// The key was used, within the retention, for a different request.
    KeyReused,
    /// A request with this key is being processed right now.
    InFlight,
}

impl KeyedOutcome {
    /// The stored row's verdict for a request with `fingerprint`.
    pub(super) fn from_stored(stored_fingerprint: &[u8], fingerprint: &[u8], answer: StoredAnswer) -> Self {
        if stored_fingerprint == fingerprint { Self::Replayed(answer) } else { Self::KeyReused }
    }
}

/// How often expired keys are purged: a tenth of the retention, between 1 s and 60 s.
pub(super) fn purge_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}
