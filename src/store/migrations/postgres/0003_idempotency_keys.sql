-- Idempotency-Key: the answer of a keyed create, written in the user's own transaction.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    subject     TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    -- SHA-256 of the request as understood (route, normalised fields).
    fingerprint BYTEA       NOT NULL,
    status      INTEGER     NOT NULL,
    -- The exact response body sent the first time.
    body        BYTEA       NOT NULL,
    user_id     BIGINT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);
