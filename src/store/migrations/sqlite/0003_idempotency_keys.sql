-- Idempotency-Key: the answer of a keyed create, written in the user's own transaction.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    subject     TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    -- SHA-256 of the request as understood (route, normalised fields).
    fingerprint BLOB    NOT NULL,
    status      INTEGER NOT NULL,
    -- The exact response body sent the first time.
    body        BLOB    NOT NULL,
    user_id     INTEGER,
    -- Unix time in milliseconds: compared numerically against the retention.
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (subject, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);
